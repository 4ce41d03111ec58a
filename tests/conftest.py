"""Shared fixtures: real agent processes, a real loopback receiver, a real database file."""

from __future__ import annotations

import atexit
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/ is not a package: make the shared helpers importable as `support.*`.
sys.path.insert(0, str(Path(__file__).parent))

import importlib

from support import agentproc, alone, markers
from support.agentproc import Agent, Receiver, ip, make_home, remove_home
from support.inproc import InProcessAgent
from support.powercut.disk import LazyDisk
from support.powercut.disk import unavailable as powercut_unavailable

from waystation.db import Database

# A model in a test's own process gets this worker's share of the cores, as the agents the tests
# start do: llama.cpp runs as many threads as OpenMP grants it, and OpenMP reads its limit when
# llama.cpp's library loads (no test module has imported it yet).
if (_cores := agentproc.worker_cores()) is not None:
    os.environ.setdefault("OMP_THREAD_LIMIT", str(_cores))

# Commands under test write to a pipe, as in CI; a terminal size handed down (pytest-xdist's
# workers get COLUMNS=80) would make rich wrap the tables the tests read.
for _size in ("COLUMNS", "LINES"):
    os.environ.pop(_size, None)

# Every agent and command a test starts imports a few hundred of the package's modules; where
# PYTHONDONTWRITEBYTECODE is set (as on CI) each process compiled them all from source again
# (a fifth of its start). The run's processes share compiled modules in a directory of their own
# instead (never beside the sources), removed at the end by the process that made it.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) and "PYTHONPYCACHEPREFIX" not in os.environ:
    os.environ["PYTHONPYCACHEPREFIX"] = PYCACHE = tempfile.mkdtemp(prefix="ws-pyc-")
    atexit.register(shutil.rmtree, PYCACHE, ignore_errors=True)

# The helpers' old top-level names (`from agentproc import Agent`), for test files written before
# they moved into tests/support/: the same module objects, so a monkeypatch reaches both names.
for _old in ("agentproc", "fleetproc", "floods", "fakehub", "providers", "npm_clis"):
    sys.modules.setdefault(_old, importlib.import_module(f"support.{_old}"))


@pytest.fixture(autouse=True)
def fresh_logging() -> None:
    """Each test starts with structlog's defaults: a set-up left in force by an agent or command
    run in this process caches loggers on first use, and structlog.testing.capture_logs then sees
    nothing from them. Checked cheaply; the loggers are forgotten only when one was left, and
    never while an in-process agent runs (its set-up sends its log to its own file)."""
    import structlog
    from support import inproc

    if structlog.get_config().get("cache_logger_on_first_use") and not inproc.RUNNING:
        from support.inproc import forget_cached_loggers

        structlog.reset_defaults()
        forget_cached_loggers()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by what it starts (`process`, `model`, `netns`, `soak`): support/markers.py;
    the costliest files first."""
    registered = {line.split(":")[0].strip() for line in config.getini("markers")}
    markers.add_marks(items, markers.Reach(), registered.__contains__)
    items[:] = alone.costliest_files_first(items)


RUN_LOCK = pytest.StashKey[alone.RunLock]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """On a pytest-xdist worker, a test runs beside another only when neither is `alone`."""
    workerinput = getattr(item.config, "workerinput", None)
    if workerinput is None:
        yield
        return
    if RUN_LOCK not in item.config.stash:
        item.config.stash[RUN_LOCK] = alone.RunLock(workerinput["testrunuid"])
    lock = item.config.stash[RUN_LOCK]
    by_itself = item.get_closest_marker("alone") is not None
    lock.before(by_itself)
    try:
        yield
    finally:
        lock.after(by_itself, nextitem is not None and nextitem.get_closest_marker("alone") is not None)


@pytest.fixture
def home() -> Iterator[Path]:
    """A fresh WAYSTATION_HOME (make_home: short, since a socket path must fit in 108 bytes),
    removed afterwards. A module whose tests want another kind of home defines its own."""
    path = make_home()
    try:
        yield path
    finally:
        remove_home(path)


@pytest.fixture
def lazy_disk() -> Iterator[LazyDisk]:
    """A mounted power-cut disk (support/powercut): `cut()` loses what was not fsynced. Skips
    where FUSE cannot be used."""
    reason = powercut_unavailable()
    if reason is not None:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="ws-lazy-"))
    disk = LazyDisk(base).mount()
    try:
        yield disk
    finally:
        disk.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def agent_factory() -> Iterator[Callable[..., Agent]]:
    """Make agents in fresh homes; every process is killed and every home removed at teardown."""
    made: list[Agent] = []

    def make(env: dict[str, str] | None = None) -> Agent:
        agent = Agent(make_home(), env)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()
        remove_home(agent.home)


@pytest.fixture
def inprocess_agent_factory() -> Iterator[Callable[..., InProcessAgent]]:
    """Agents served from this process (support/inproc.py) in fresh homes, started; each is
    stopped and its home removed at teardown."""
    made: list[InProcessAgent] = []

    def make(env: dict[str, str] | None = None) -> InProcessAgent:
        agent = InProcessAgent(make_home(), env)
        made.append(agent)
        return agent.start()

    yield make
    for agent in made:
        agent.stop()
        remove_home(agent.home)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A real, empty, migrated database file for one test."""
    database = await Database.open(tmp_path / "waystation.db")
    try:
        yield database
    finally:
        await database.close()


# --- soak runs -------------------------------------------------------------------------------
# Fault-injection and soak tests (marked `soak`) run a bounded version by default, which is what
# CI runs, and the full length with WAYSTATION_SOAK=long. Their figures (rounds, delays,
# latencies) are not pass/fail thresholds: they are printed in a "soak figures" section at the end
# of the run so a reader can see what was exercised.

SOAK_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def soak_length() -> Callable[[int, int], int]:
    """soak_length(bounded, long): rounds (or seconds) to run; `long` with WAYSTATION_SOAK=long."""
    full = os.environ.get("WAYSTATION_SOAK", "").lower() == "long"
    return lambda bounded, long: long if full else bounded


@pytest.fixture
def soak_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record one line for the "soak figures" section of the terminal summary."""
    figures = request.config.stash.setdefault(SOAK_FIGURES, [])

    def report(line: str) -> None:
        figures.append(f"{request.node.name}: {line}")

    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On a pytest-xdist worker: hand this worker's figures to the controller, which prints them."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["soak_figures"] = session.config.stash.get(SOAK_FIGURES, [])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """On the pytest-xdist controller: gather a finished worker's figures."""
    figures = getattr(node, "workeroutput", {}).get("soak_figures", [])
    node.config.stash.setdefault(SOAK_FIGURES, []).extend(figures)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    figures = config.stash.get(SOAK_FIGURES, [])
    if figures:
        terminalreporter.section("soak figures")
        for line in figures:
            terminalreporter.write_line(line)


@pytest.fixture
def agent_namespace(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, str]]:
    """(namespace, its veth end, the host's address on the other end), removed afterwards.

    Agents the test starts run in the namespace (`ip netns exec` execs the agent, so the pid the
    test kills at teardown is the agent's own); the receiver stays in the test's own namespace, listening on
    the host end of the veth pair, so the test reads its records directly and the agent talks to
    the test over its Unix socket (a file, not bound to any network namespace).
    """
    tag = secrets.token_hex(3)
    ns, veth_host, veth_agent = f"wsk{tag}", f"wkh{tag}", f"wka{tag}"
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, timeout=10).stdout
    subnet = next(
        f"10.{a}.{b}"
        for a, b in ((random.randrange(64, 250), random.randrange(256)) for _ in range(100))
        if f"10.{a}.{b}." not in routes
    )
    try:
        ip("netns", "add", ns)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
    try:
        ip("link", "add", veth_host, "type", "veth", "peer", "name", veth_agent)
        ip("link", "set", veth_agent, "netns", ns)
        ip("addr", "add", f"{subnet}.1/30", "dev", veth_host)
        ip("link", "set", veth_host, "up")
        ip("-n", ns, "addr", "add", f"{subnet}.2/30", "dev", veth_agent)
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "set", veth_agent, "up")
        monkeypatch.setattr(agentproc, "AGENT_COMMAND", ["ip", "netns", "exec", ns, *agentproc.AGENT_COMMAND])
        yield ns, veth_agent, f"{subnet}.1"
    finally:
        # Deleting the namespace destroys the veth end inside it, and with it the host end.
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", veth_host], capture_output=True, timeout=10)
