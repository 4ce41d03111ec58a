"""Test setup for the seat routes: the real provider CLIs from the npm registry, and fake ones.

`installed_clis()` installs `@openai/codex` and `@anthropic-ai/claude-code` with npm into a cache
directory once (`$WAYSTATION_TEST_NPM_DIR`, else `~/.cache/waystation-test-npm`) and reuses it
while it holds the same packages; it raises `CliUnavailable` with a reason to skip on when npm is
missing, the install fails, or an installed CLI does not run here. The packages are pinned to the
versions these tests were written against; `$WAYSTATION_TEST_NPM_PACKAGES` (space-separated npm
specs) tries others.

`fake_cli_dir()` copies the tiny shell-script CLIs in tests/fake_bin into a directory to put on a
test's PATH; `alive()`, `processes_with()` and `wait_for()` watch the processes they start.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("@openai/codex@0.169.0", "@anthropic-ai/claude-code@2.1.197")
INSTALL_TIMEOUT_S = 900
FAKE_BIN = Path(__file__).parent.parent / "fake_bin"


class CliUnavailable(Exception):
    """The real CLIs cannot be had here; the message says why (a skip reason)."""


@dataclass(frozen=True)
class NpmClis:
    bin_dir: Path  # node_modules/.bin: `codex` and `claude`
    node_dir: Path  # where `node` is: codex's entry point is a Node script
    versions: dict[str, str]

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """An environment for a CLI run: this HOME, a PATH with the CLIs and node, nothing else
        (no provider keys from the outer environment)."""
        path = os.pathsep.join(dict.fromkeys([str(self.bin_dir), str(self.node_dir), "/usr/bin", "/bin"]))
        return {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8", **extra}


def cache_dir() -> Path:
    configured = os.environ.get("WAYSTATION_TEST_NPM_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "waystation-test-npm"


def packages() -> tuple[str, ...]:
    configured = os.environ.get("WAYSTATION_TEST_NPM_PACKAGES", "").split()
    return tuple(configured) or PACKAGES


def installed_clis() -> NpmClis:
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise CliUnavailable("npm/node not found on PATH: cannot install the real seat CLIs")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    wanted = "\n".join(packages())
    marker = root / "installed.txt"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time across test processes
        if not (marker.exists() and marker.read_text() == wanted and _has_bins(root)):
            marker.unlink(missing_ok=True)
            _install(npm, root)
            marker.write_text(wanted)
    clis = NpmClis(root / "node_modules" / ".bin", Path(node).parent, {})
    return NpmClis(clis.bin_dir, clis.node_dir, _versions(clis))


def _has_bins(root: Path) -> bool:
    return all((root / "node_modules" / ".bin" / name).exists() for name in ("codex", "claude"))


def _install(npm: str, root: Path) -> None:
    command = [npm, "install", "--prefix", str(root), "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        result = subprocess.run(
            [*command, *packages()], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise CliUnavailable(f"npm install took over {INSTALL_TIMEOUT_S} s: {' '.join(packages())}") from None
    if result.returncode != 0 or not _has_bins(root):
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise CliUnavailable(f"npm install of {' '.join(packages())} failed ({result.returncode}): {last}")


def _versions(clis: NpmClis) -> dict[str, str]:
    versions = {}
    with tempfile.TemporaryDirectory() as home:
        for name in ("codex", "claude"):
            try:
                result = subprocess.run(
                    [str(clis.bin_dir / name), "--version"],
                    env=clis.env(Path(home)),
                    capture_output=True,
                    text=True,
                    timeout=60,
                    stdin=subprocess.DEVNULL,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise CliUnavailable(f"the installed {name} CLI does not run here: {exc}") from None
            if result.returncode != 0:
                raise CliUnavailable(f"the installed {name} CLI does not run here: exit {result.returncode}")
            versions[name] = result.stdout.strip()
    return versions


def fake_cli_dir(target: Path) -> Path:
    """tests/fake_bin's CLIs, executable, in `target` (made if missing)."""
    target.mkdir(parents=True, exist_ok=True)
    for script in FAKE_BIN.iterdir():
        copy = target / script.name
        shutil.copyfile(script, copy)
        copy.chmod(copy.stat().st_mode | stat.S_IXUSR | stat.S_IRUSR)
    return target


def exists(path: str | Path) -> bool:
    return Path(path).exists()


def written(path: Path) -> bool:
    return path.exists() and bool(path.read_text().strip())


async def wait_for(path: Path, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not written(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.02)


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds `marker` (Linux)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (entry / "environ").read_bytes() and alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is not)."""
    proc_stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            return proc_stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
