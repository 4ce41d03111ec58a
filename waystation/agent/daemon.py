"""The agent's wiring and lifecycle: one AsyncExitStack, each component registering its own cleanup.

Start-up order is the order of dependence (lock, database, recovery, monitor, flusher, socket),
and the stack unwinds it in reverse, so on SIGTERM the socket stops accepting first, in-flight
deliveries go back to `pending`, and the database closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import structlog
from aiohttp import web

from waystation import __version__
from waystation.agent.api import create_app, create_metrics_app
from waystation.agent.connections import (
    HEAD_TIMEOUT_S,
    METRICS_CONNECTIONS,
    SHARES,
    CappedTCPSite,
    ConnectionCap,
    QuietResourceErrors,
    connection_cap,
    first_reserved_file,
)
from waystation.agent.peer import (
    PeerCheckedUnixSite,
    SocketError,
    bind_unix_socket,
    prepare_socket_dir,
    socket_gid,
)
from waystation.agent.systemd import Notifier, StatusReporter
from waystation.api_token import TokenCheck, token_path
from waystation.config import Paths, Settings, check_fleet_creds
from waystation.station import AgentStation
from waystation.station.background import cancel
from waystation.station.build import build_agent

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve(paths: Paths, settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT (or `stop` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    loop.set_exception_handler(QuietResourceErrors())
    if settings.fleet.url:
        check_fleet_creds(settings.fleet)  # before anything starts: one line naming fleet.creds
    async with contextlib.AsyncExitStack() as stack:
        notifier = Notifier()  # takes NOTIFY_SOCKET out of the environment children inherit
        if notifier.watchdog_s is not None:
            pinging = asyncio.create_task(notifier.watchdog_pings(notifier.watchdog_s), name="sd-watchdog")
            stack.push_async_callback(cancel, pinging)
        gid = socket_gid(settings.agent.socket_group)
        prepare_socket_dir(paths.socket, gid)
        stack.enter_context(single_instance(paths.socket))
        # The station, its housekeeping and, with [fleet] url set, the fleet: all built there.
        station = await build_agent(stack, paths, settings)

        # A short grace for open requests at shutdown keeps the whole stop inside 10 s. aiohttp's
        # keep-alive timer closes a connection still waiting for a whole request: the head timeout.
        runner = web.AppRunner(
            create_app(station),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=2.0,
            keepalive_timeout=HEAD_TIMEOUT_S,
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        sock = bind_unix_socket(paths.socket, gid)
        stack.callback(_unlink, paths.socket)
        await PeerCheckedUnixSite(runner, sock, paths.socket, gid).start()
        # Shut streams before the runner waits on open connections (it would wait on SSE forever).
        stack.callback(station.announcer.events.close)
        if settings.agent.metrics_listen:
            await serve_metrics(stack, station, settings.agent.metrics_listen)
        if settings.agent.listen:
            await serve_listener(stack, station, settings.agent.listen, paths.state)

        log.info("agent ready", socket=str(paths.socket), database=str(paths.database), version=__version__)
        notifier.send("READY=1")
        if notifier.active:
            status = StatusReporter(notifier, station)
            reporting = asyncio.create_task(status.run(), name="sd-status")
            stack.push_async_callback(cancel, reporting)
        await stop.wait()
        log.info("agent stopping")
        notifier.send("STOPPING=1")
    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)


async def serve_metrics(stack: contextlib.AsyncExitStack, station: AgentStation, listen: str) -> None:
    """GET /metrics alone, on TCP `host:port` (a bracketed IPv6 host allowed): METRICS_CONNECTIONS at
    once, the socket's head timeout, and no descriptor of those kept back (connections.py)."""
    cap = ConnectionCap(METRICS_CONNECTIONS, "the metrics port", first_reserved_file())
    await serve_tcp(stack, create_metrics_app(station), listen, cap, "agent.metrics_listen")
    log.info("metrics served", listen=listen)


async def serve_listener(
    stack: contextlib.AsyncExitStack, station: AgentStation, listen: str, state: Path
) -> None:
    """`[agent] listen`: the model API for other tools on TCP, each request with the bearer token
    (api_token.py, made here at first start), the socket's caps and timeouts. Loopback is what it
    is for; another address is served, as asked, with a warning: anyone who can reach it and has
    the token can run turns."""
    token = TokenCheck(state)
    # A quarter of the socket's connections, none in the descriptors kept back: a flood of the
    # listener must leave the socket (the owner's status, queue, stop) answering.
    cap = ConnectionCap(connection_cap() // SHARES, "the listener", first_reserved_file())
    await serve_tcp(stack, create_app(station, token), listen, cap, "agent.listen")
    host = listen.rpartition(":")[0].strip("[]")
    if not _loopback(host):
        log.warning("the listener is reachable from other machines", listen=listen)
    log.info("listener served", listen=listen, token_file=str(token_path(state)))


async def serve_tcp(
    stack: contextlib.AsyncExitStack, app: web.Application, listen: str, cap: ConnectionCap, key: str
) -> None:
    """`app` on TCP `host:port` (a bracketed IPv6 host allowed), with `cap` and the head timeout."""
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=1.0,
        keepalive_timeout=HEAD_TIMEOUT_S,  # aiohttp's default keeps a half-sent request an hour
    )
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        await CappedTCPSite(runner, host.strip("[]") or "127.0.0.1", int(port), cap).start()
    except (OSError, ValueError) as exc:
        raise SocketError(f"cannot serve on {listen!r} ([{key.replace('.', '] ')}): {exc}") from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: whatever it resolves to, it is not obviously this machine alone
        return False


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
        _remove_stale_socket(socket_path)  # its agent is gone, since we hold the lock
        yield
    finally:
        os.close(fd)


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket an agent left behind, and nothing else: a file or a directory that
    happens to have that name is someone's data, so start-up stops and says so."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode) else "a file"
        raise SocketError(
            f"{path} is {kind}, not a socket: it is left as it is; move it away, or set "
            "WAYSTATION_SOCKET to another path"
        )
    path.unlink()


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
