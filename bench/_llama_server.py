"""llama.cpp's own `llama-server`, built from the source the installed llama-cpp-python vendors.

The baseline the agent's local turns are measured against: the same llama.cpp commit as the
agent's (the sdist of the installed llama-cpp-python version carries it in vendor/llama.cpp), built
with the flags install.sh builds the agent's copy with. The build takes minutes, so it happens once
into a cache directory, and says so. The sdist's gguf-py (llama.cpp's GGUF writer) is kept there
too, for the bench's tiny random-weight model.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from _harness import BENCH_DIR, progress

READY_TIMEOUT_S = 120.0
# What the agent's build has no use for and llama-server can do without: no network at build time
# (the web UI's assets would be downloaded), no OpenSSL, no tests or examples. Static, so the
# cached binary needs nothing from the build tree.
SERVER_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
]


def version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "waystation-bench" / f"llama-server-{version()}"


def install_flags() -> list[str]:
    """The CMake flags install.sh builds llama-cpp-python with (its --cmake-args)."""
    out = subprocess.run(
        ["bash", str(BENCH_DIR.parent / "install.sh"), "--cmake-args"],
        capture_output=True,
        text=True,
        check=True,
    )
    return shlex.split(out.stdout)


def ensure_built() -> Path:
    """The cached llama-server binary, built first when it is not there yet."""
    cache = cache_dir()
    binary = cache / "bin" / "llama-server"
    if binary.exists() and (cache / "gguf-py").is_dir():
        return binary
    flags = install_flags() + SERVER_FLAGS
    progress(f"building llama-server {version()} into {cache} (once; this takes several minutes) ...")
    started = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as work:
        source = _vendored_source(Path(work))
        build = Path(work) / "build"
        nice = ["nice", "-n", "10"] if shutil.which("nice") else []
        jobs = str(os.cpu_count() or 1)
        _run(["cmake", "-S", str(source), "-B", str(build), *flags], build.parent / "configure.log")
        _run(
            [*nice, "cmake", "--build", str(build), "--target", "llama-server", "-j", jobs],
            build.parent / "build.log",
        )
        (cache / "bin").mkdir(exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", binary)
        shutil.rmtree(cache / "gguf-py", ignore_errors=True)
        shutil.copytree(source / "gguf-py", cache / "gguf-py")
    seconds = time.monotonic() - started
    record = {"version": version(), "cmake_flags": flags, "build_s": round(seconds), "built_at": time.time()}
    (cache / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    progress(f"built llama-server in {seconds / 60:.1f} min: {binary}")
    return binary


def build_record() -> dict[str, object]:
    path = cache_dir() / "build.json"
    return json.loads(path.read_text()) if path.exists() else {}


def build_note() -> str:
    """How the cached llama-server was built, for a report's notes."""
    build = build_record()
    flags = build.get("cmake_flags")
    return (
        f"llama-server {build.get('version', '?')} built from the sdist's vendor/llama.cpp with "
        f"`{' '.join(map(str, flags if isinstance(flags, list) else []))}` in {build.get('build_s', '?')} s, "
        f"cached in {cache_dir()}"
    )


def _vendored_source(work: Path) -> Path:
    """vendor/llama.cpp of the installed version's sdist, downloaded from the package index."""
    progress(f"downloading the llama-cpp-python {version()} sdist")
    _run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
         "--dest", str(work), f"llama-cpp-python=={version()}"],
        work / "download.log",
    )  # fmt: skip
    (archive,) = work.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    (source,) = work.glob("llama_cpp_python-*/vendor/llama.cpp")
    return source


def _run(command: list[str], log: Path) -> None:
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{shlex.join(command[:4])} ... failed ({done.returncode}):\n{tail}")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    command: list[str]


@contextlib.contextmanager
def running(binary: Path, model: Path, args: list[str], log: Path) -> Iterator[Server]:
    """llama-server on a free loopback port with `args`, until it answers /health."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not answer within {READY_TIMEOUT_S:g}s")
            time.sleep(0.1)
        yield Server(proc, url, command)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def threads_in_log(log: Path) -> str:
    """What llama-server says it runs with at start: its threads ("n_threads = 2") and slots."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        for key in ("n_threads = ", "n_slots = "):
            if key in line and not any(f.startswith(key) for f in found):
                found.append(line[line.index(key) :].strip())
    return "; ".join(found) or "?"


if __name__ == "__main__":  # build (or find) it: python bench/_llama_server.py
    print(ensure_built())
