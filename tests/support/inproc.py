"""The in-process tier: the agent and the command line in the test's own interpreter.

A real agent process costs an interpreter, ~600 imported modules and a start-up; most tests only
talk to its socket API, so they get the same agent here instead:

- `InProcessAgent` runs the agent's own `serve()` (agent/daemon.py: `build_agent` on a fresh
  database, housekeeping, the socket API's aiohttp app on the real Unix socket with its peer check)
  on an event loop in a thread of the test process. It answers the same calls as
  `agentproc.Agent` that need no process (`socket`, `client()`, `api()`, `set_mode()`, `tasks()`,
  `counts()`), so a test moves by changing its fixture. Signals, `kill -9`, a second process on
  the same home, socket peers of another uid, systemd and namespaces stay with `agentproc.Agent`.
- `station_client()` is the agent station alone with its API on aiohttp's test server, for async
  tests that want to reach into the station as well as call the API.
- `run_cli()` runs one `waystation` command through the same `run_cli` as the console script,
  in-process (click's CliRunner isolation: the environment, stdin, stdout and stderr swapped for
  the call), and answers a `subprocess.CompletedProcess` like the subprocess runners did.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from structlog._config import BoundLoggerLazyProxy

from support.agentproc import (
    READY_TIMEOUT_S,
    AgentApi,
    agent_env,
    make_home,
    remove_home,
    status_code,
)
from waystation import logs
from waystation.agent.api import create_app
from waystation.config import Paths, Settings
from waystation.config_load import load_settings
from waystation.secrets import known_secrets
from waystation.station import AgentStation
from waystation.station.build import build_agent

# In-process agents running now: while one runs, its logging set-up (its log file) is in force.
RUNNING: set[InProcessAgent] = set()


class InProcessAgent(AgentApi):
    """An agent on a fresh home, served from a thread of this process (see the module's note)."""

    def __init__(self, home: Path, env: Mapping[str, str] | None = None) -> None:
        self.home = home
        self.extra_env: dict[str, str] = dict(env or {})
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._logging_before: tuple[dict[str, Any], Any] = ({}, None)
        self._log: Any = None

    def start(self, timeout: float = READY_TIMEOUT_S) -> InProcessAgent:
        """Settings and logging as `waystation run` sets them up (its lines go to `log_path`),
        then serve() on a thread; return once the socket is there."""
        assert self._thread is None, "agent already running"
        env = agent_env(self.home, self.extra_env)
        paths = Paths.resolve(env)
        settings = load_settings(paths, env)
        self._logging_before = (structlog.get_config(), logs._redactor)
        logs.configure(secrets=known_secrets(settings))
        self._log = self.log_path.open("a", buffering=1)
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(self._log))
        self._thread = threading.Thread(target=self._run, args=(paths, settings), daemon=True)
        self._thread.start()
        RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while status_code(self.socket) != 200:  # ready as a process is: the socket answers
            if not self._thread.is_alive() or time.monotonic() > deadline:
                failure = self._failure
                self.stop()
                raise AssertionError(f"the in-process agent did not start: {failure!r}")
            time.sleep(0.01)
        return self

    def _run(self, paths: Paths, settings: Settings) -> None:
        from waystation.agent.daemon import serve

        loop = asyncio.new_event_loop()
        # serve() stops on SIGTERM/SIGINT; signal handlers belong to the main thread, and this
        # agent is stopped by its event instead.
        loop.add_signal_handler = lambda *args, **kwargs: None  # type: ignore[method-assign]
        loop.remove_signal_handler = lambda *args: True  # type: ignore[method-assign]
        self._loop = loop

        async def main() -> None:
            self._stop = asyncio.Event()
            await serve(paths, settings, self._stop)

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported by start(), or by stop() once it has started
            self._failure = exc
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self, timeout: float = 15.0) -> int:
        """Stop as SIGTERM would (the stop event serve() waits on), wait for the thread; 0 as the
        process's exit code would be (a failure fails the test instead)."""
        if self._thread is None:
            return 0
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        self._thread = None
        RUNNING.discard(self)
        structlog.configure(**self._logging_before[0])
        logs._redactor = self._logging_before[1]
        forget_cached_loggers()
        self._log.close()
        assert not alive, "the in-process agent did not stop"
        if self._failure is not None:
            raise AssertionError(f"the in-process agent failed: {self._failure!r}") from self._failure
        return 0

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


@contextlib.contextmanager
def inprocess_agent(env: Mapping[str, str]) -> Iterator[InProcessAgent]:
    """An in-process agent in a fresh home for the length of the block; then stopped and removed."""
    home = make_home()
    agent = InProcessAgent(home, env)
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
        remove_home(home)


@contextlib.asynccontextmanager
async def station_client(
    home: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[AgentStation, TestClient[Any, Any]]]:
    """`build_agent` on a fresh database in `home`, its API app on aiohttp's test server."""
    full_env = agent_env(home, env)
    paths = Paths.resolve(full_env)
    async with contextlib.AsyncExitStack() as stack:
        station = await build_agent(stack, paths, load_settings(paths, full_env))
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(station)))
        await client.start_server()
        stack.push_async_callback(client.close)
        stack.callback(station.announcer.events.close)  # open event streams end before the server
        yield station, client


def run_cli(
    home: Path, *args: str, env: Mapping[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`waystation ARGS` in this process, with WAYSTATION_HOME=home: exit code, stdout, stderr.

    What a command changes for the whole process is put back afterwards, as the end of a process
    would: the logging set-up (commands point structlog at their stderr, warnings only) and the
    ResourceWarnings of sockets left to the collector, which a process's default filters ignore.
    """
    from waystation.cli.app import run_cli as waystation

    logging_before = (structlog.get_config(), logs._redactor)
    runner = CliRunner()
    try:
        with (
            runner.isolation(input=input, env=_env_changes(agent_env(home, env))) as (out, err, _),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                code = waystation(list(args))
            except SystemExit as exc:  # typer.Exit and click's own exits
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            gc.collect()
            sys.stdout.flush()
            sys.stderr.flush()
    finally:
        structlog.configure(**logging_before[0])
        logs._redactor = logging_before[1]
        forget_cached_loggers()
    return subprocess.CompletedProcess(
        ["waystation", *args], code, out.getvalue().decode(), err.getvalue().decode()
    )


def forget_cached_loggers() -> None:
    """Loggers cache their set-up on first use (cache_logger_on_first_use): drop what they cached
    while the command's set-up was in force, so they bind afresh under the restored one."""
    for obj in gc.get_objects():
        if isinstance(obj, BoundLoggerLazyProxy) and "bind" in vars(obj):
            del obj.bind


def _env_changes(wanted: Mapping[str, str]) -> dict[str, str | None]:
    """What to set and what to remove so that the environment is `wanted` (as for a child)."""
    import os

    changes: dict[str, str | None] = {name: None for name in os.environ if name not in wanted}
    changes.update(wanted)
    return changes
