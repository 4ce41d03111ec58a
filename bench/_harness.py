"""Shared pieces of the benchmarks: a real agent process, helper servers, a socket client, tables.

Not a test helper and not part of the package: the benchmarks start real processes and measure
them from the outside, the way a user's client would see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
SERVERS = BENCH_DIR / "_servers.py"
READY_TIMEOUT_S = 30.0

# The fallback when the console entry point is not there (yet): the daemon's own entry point.
SERVE_SNIPPET = (
    "import asyncio\n"
    "from waystation.config import Paths\n"
    "from waystation.config_load import load_settings\n"
    "from waystation.agent.daemon import serve\n"
    "try:\n"
    "    from waystation.logs import configure\n"
    "    configure()\n"
    "except ImportError:\n"
    "    pass\n"
    "p = Paths.resolve()\n"
    "asyncio.run(serve(p, load_settings(p)))\n"
)


def uds_client(socket_path: Path | str, connections: int = 1) -> httpx.AsyncClient:
    """An httpx client on a Unix socket with a pool big enough for `connections` callers."""
    transport = httpx.AsyncHTTPTransport(
        uds=str(socket_path),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )
    return httpx.AsyncClient(transport=transport, base_url="http://waystation", timeout=60.0)


async def wait_for_socket(socket_path: Path, proc: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with uds_client(socket_path) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode} before answering")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(path)).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"no answer on {socket_path} within {READY_TIMEOUT_S:g}s")


@dataclass
class Agent:
    """A running agent: its process, home, socket and how it was started."""

    proc: subprocess.Popen[bytes]
    home: Path
    socket: Path
    command: list[str]
    env: dict[str, str]
    fallback_reason: str = ""  # why `python -m waystation run` was not used, when it was not

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def how(self) -> str:
        """The reproducing command line, environment overrides included."""
        shown = {**self.env, "WAYSTATION_HOME": "$(mktemp -d)"}
        overrides = " ".join(f"{k}={v}" for k, v in shown.items() if k.startswith("WAYSTATION_"))
        if self.command[1:3] == ["-m", "waystation"]:
            return f"{overrides} python -m waystation run"
        why = f" [fallback: {self.fallback_reason}]" if self.fallback_reason else ""
        return f"{overrides} python -c '<serve(Paths.resolve(), load_settings(...))>'{why}"


def _agent_commands() -> list[list[str]]:
    commands = []
    if importlib.util.find_spec("waystation.cli") is not None:
        commands.append([sys.executable, "-m", "waystation", "run"])
    commands.append([sys.executable, "-c", SERVE_SNIPPET])
    return commands


@contextlib.asynccontextmanager
async def running_agent(
    mode: str = "offline",
    extra_env: Mapping[str, str] | None = None,
    prepare: Callable[[Path], Awaitable[None]] | None = None,
) -> AsyncIterator[Agent]:
    """Start an agent in a fresh WAYSTATION_HOME (`prepare` fills it first); stop it with SIGTERM
    on the way out."""
    home = Path(tempfile.mkdtemp(prefix="waystation-bench-"))
    os.chmod(home, 0o700)
    if prepare is not None:
        await prepare(home)
    env = {"WAYSTATION_HOME": str(home), "WAYSTATION_CONNECTIVITY__MODE": mode, **(extra_env or {})}
    socket_path = home / "waystation.sock"
    failures = []
    agent = None
    try:
        for command in _agent_commands():
            proc = spawn(command, env, home / "agent.log")
            try:
                await wait_for_socket(socket_path, proc, "/v1/status")
            except RuntimeError as exc:
                failures.append(f"{' '.join(command[:3])}: {exc}")
                _stop(proc)
                continue
            agent = Agent(proc, home, socket_path, command, env, "; ".join(failures))
            break
        if agent is None:
            tail = (home / "agent.log").read_text(errors="replace")[-2000:]
            raise RuntimeError("the agent did not start: " + "; ".join(failures) + "\n" + tail)
        yield agent
    finally:
        if agent is not None:
            _stop(agent.proc)
        shutil.rmtree(home, ignore_errors=True)


def spawn(command: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a process with `env` added and its output appended to `log` (Popen does not wait)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def helper_server(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run bench/_servers.py with `args`; yield the process and the address it printed."""
    proc = subprocess.Popen(
        [sys.executable, str(SERVERS), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"helper server {args} did not start (exit {proc.wait()})")
        yield proc, line
    finally:
        _stop(proc)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (/proc/PID/stat utime + stime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict of its fields."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def progress(message: str) -> None:
    """A running commentary on stderr; stdout carries only the Markdown report."""
    print(f"  {message}", file=sys.stderr, flush=True)


def print_notes(*lines: str) -> None:
    print()
    for line in lines:
        print(f"- {line}")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table, so the output pastes straight into RESULTS.md."""
    cells = [[str(c) for c in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)
