"""The status socket: a Unix socket that only the agent's own user may use.

Two locks on the door: the file is 0600 inside a 0700 directory, and every accepted connection's
peer credentials (SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS) are checked against our uid
before a byte of it is read. The second lock still holds when the first is loosened by mistake.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
import sys
import typing
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from waystation.errors import WaystationError

log = structlog.get_logger(__name__)


class SocketError(WaystationError):
    code = "socket_error"


def peer_uid(sock: Any) -> int | None:
    """The uid of the process at the other end of a Unix socket, or None if the OS won't say."""
    try:
        if sys.platform.startswith("linux"):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            return int(uid)
        if sys.platform == "darwin":
            sol_local, local_peercred = 0, 1
            creds = sock.getsockopt(sol_local, local_peercred, struct.calcsize("IIh16I"))
            _version, uid = struct.unpack_from("II", creds)
            return int(uid)
    except OSError:
        return None
    return None


def prepare_socket_dir(path: Path) -> None:
    """Create the socket's directory 0700, or refuse one that others could reach into."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise SocketError(f"socket directory {directory} belongs to uid {info.st_uid}, not to us")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise SocketError(
            f"socket directory {directory} is open to others (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run `chmod 700 {directory}` or set WAYSTATION_SOCKET to a private path"
        )


def bind_unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)  # the directory is 0700, so nobody else can connect meanwhile
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SocketError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock


class _PeerChecked(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol; a refused peer never reaches it."""

    def __init__(self, inner: asyncio.Protocol, uid: int) -> None:
        self._inner = inner
        self._uid = uid
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = peer_uid(transport.get_extra_info("socket"))
        if peer != self._uid:
            self._refused = True
            log.warning("refused a socket peer of another user", peer_uid=peer)
            typing.cast(asyncio.Transport, transport).abort()
            return
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._refused:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class PeerCheckedUnixSite(web.BaseSite):
    """aiohttp's UnixSite, with our socket permissions and the peer check on every connection."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, path: Path) -> None:
        super().__init__(runner)
        self._sock = sock
        self._path = path

    @property
    def name(self) -> str:
        return f"http://unix:{self._path}:"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        uid = os.getuid()
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _PeerChecked(server(), uid), sock=self._sock, backlog=self._backlog
        )
