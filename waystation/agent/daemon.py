"""The agent's wiring and lifecycle: one AsyncExitStack, each component registering its own cleanup.

Start-up order is the order of dependence (lock, database, recovery, monitor, flusher, socket),
and the stack unwinds it in reverse, so on SIGTERM the socket stops accepting first, in-flight
deliveries go back to `pending`, and the database closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import structlog
from aiohttp import web

from waystation import __version__
from waystation.adapters.connectivity.monitor import ConnectivityMonitor
from waystation.agent.api import create_app
from waystation.agent.jobs import Housekeeping
from waystation.agent.peer import (
    PeerCheckedUnixSite,
    SocketError,
    bind_unix_socket,
    prepare_socket_dir,
    socket_gid,
)
from waystation.config import Paths, Settings
from waystation.queue.store import TaskStore
from waystation.station.build import build_agent, cancel
from waystation.station.events import EventBus

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve(paths: Paths, settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT (or `stop` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        watchdog = watchdog_interval()
        if watchdog is not None:  # pings from the loop itself: a hung loop stops them
            pinging = asyncio.create_task(_watchdog_pings(watchdog), name="sd-watchdog")
            stack.push_async_callback(cancel, pinging)
        gid = socket_gid(settings.agent.socket_group)
        prepare_socket_dir(paths.socket, gid)
        stack.enter_context(single_instance(paths.socket))
        station = await build_agent(stack, paths, settings)

        housekeeping = Housekeeping(station, station.flusher)
        housekeeping.start()
        stack.callback(housekeeping.stop)
        await housekeeping.expire()

        # A short grace for open requests at shutdown keeps the whole stop inside 10 s.
        runner = web.AppRunner(
            create_app(station), handle_signals=False, access_log=None, shutdown_timeout=2.0
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        sock = bind_unix_socket(paths.socket, gid)
        stack.callback(_unlink, paths.socket)
        await PeerCheckedUnixSite(runner, sock, paths.socket, gid).start()
        # Shut streams before the runner waits on open connections (it would wait on SSE forever).
        stack.callback(station.announcer.events.close)

        log.info("agent ready", socket=str(paths.socket), database=str(paths.database), version=__version__)
        sd_notify("READY=1")
        if os.environ.get("NOTIFY_SOCKET"):
            status = StatusReporter(station.monitor, station.store, station.announcer.events)
            reporting = asyncio.create_task(status.run(), name="sd-status")
            stack.push_async_callback(cancel, reporting)
        await stop.wait()
        log.info("agent stopping")
        sd_notify("STOPPING=1")
    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)


@contextlib.contextmanager
def single_instance(socket_path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the socket for the agent's life.

    The lock, not the socket file, says whether an agent runs: a socket left by a crash is
    removed safely, and a second agent on the same home refuses instead of stealing the socket.
    """
    lock_path = socket_path.with_name(socket_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SocketError(f"another agent is already running on {socket_path}") from None
    try:
        _unlink(socket_path)  # stale: its agent is gone, since we hold the lock
        yield
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def sd_notify(message: str) -> None:
    """Tell systemd about our state when it started us with Type=notify; a no-op otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


# --- systemd: STATUS= lines and watchdog pings ------------------------------------------------

STATUS_MIN_INTERVAL_S = 5.0  # queue changes update STATUS= at most this often


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not watched."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or not env.get("NOTIFY_SOCKET") or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000


async def _watchdog_pings(interval: float) -> None:
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


class StatusReporter:
    """Keeps systemd's STATUS= line current: connectivity at once, queue depth rate-limited.

    It sleeps on the event stream while nothing happens (no polling).
    """

    def __init__(self, monitor: ConnectivityMonitor, store: TaskStore, events: EventBus) -> None:
        self._monitor = monitor
        self._store = store
        self._events = events
        self._dirty = asyncio.Event()
        self._urgent = asyncio.Event()

    async def run(self) -> None:
        following = asyncio.create_task(self._follow(), name="sd-status-follow")
        try:
            self._dirty.set()
            self._urgent.set()
            last = -math.inf
            while True:
                await self._dirty.wait()
                wait = STATUS_MIN_INTERVAL_S - (time.monotonic() - last)
                if wait > 0 and not self._urgent.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._urgent.wait(), wait)
                self._dirty.clear()
                self._urgent.clear()
                sd_notify(f"STATUS={await self.line()}")
                last = time.monotonic()
        finally:
            await cancel(following)

    async def line(self) -> str:
        counts = await self._store.counts()
        queue = ", ".join(f"{counts.get(state, 0)} {state}" for state in ("pending", "running", "dead"))
        return f"connectivity {self._monitor.state} (mode {self._monitor.mode}); queue: {queue}"

    async def _follow(self) -> None:
        while True:  # a dropped subscriber (too slow) subscribes again
            async for event in self._events.subscribe():
                if event.kind == "connectivity":
                    self._urgent.set()
                    self._dirty.set()
                elif event.kind == "task":
                    self._dirty.set()
