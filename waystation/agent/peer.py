"""The status socket: a Unix socket that only the agent's own user may use.

Two locks on the door: the file is 0600 inside a 0700 directory, and every accepted connection's
peer credentials (SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS) are checked against our uid
before a byte of it is read. The second lock still holds when the first is loosened by mistake.

With `[agent] socket_group` set (the system-wide service), members of that group may use the
socket too: the file is 0660 and the directory 0750, both of that group, and a peer is accepted
when its uid is ours or the group is among its groups (its gid from the peer credentials, or its
supplementary groups: /proc/PID/status on Linux, the credentials themselves on macOS).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import socket
import stat
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from waystation.agent.connections import Admit, ConnectionCap, Gated, Peer, refuse
from waystation.errors import WaystationError

log = structlog.get_logger(__name__)


class SocketError(WaystationError):
    code = "socket_error"


@dataclass(frozen=True)
class PeerCredentials:
    pid: int | None
    uid: int
    gids: frozenset[int]  # the primary gid and, where the OS says, the supplementary groups


def peer_credentials(sock: Any) -> PeerCredentials | None:
    """Who is at the other end of a Unix socket, or None if the OS won't say."""
    try:
        if sys.platform.startswith("linux"):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", creds)
            return PeerCredentials(int(pid), int(uid), frozenset({int(gid)}))
        if sys.platform == "darwin":
            sol_local, local_peercred, local_peerpid = 0, 1, 2
            creds = sock.getsockopt(sol_local, local_peercred, struct.calcsize("IIh16I"))
            _version, uid, ngroups, *groups = struct.unpack("IIh16I", creds)
            pid: int | None = None
            with contextlib.suppress(OSError):  # the pid, for each process's share of the socket
                pid = struct.unpack("i", sock.getsockopt(sol_local, local_peerpid, 4))[0]
            return PeerCredentials(pid, int(uid), frozenset(int(g) for g in groups[: max(ngroups, 0)]))
    except OSError:
        return None
    return None


def peer_uid(sock: Any) -> int | None:
    """The uid of the process at the other end of a Unix socket, or None if the OS won't say."""
    creds = peer_credentials(sock)
    return None if creds is None else creds.uid


def _supplementary_gids(pid: int) -> frozenset[int]:
    """The peer process's supplementary groups from /proc (Linux); empty if unreadable."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return frozenset(int(g) for g in line.split()[1:])
    return frozenset()


def peer_allowed(creds: PeerCredentials | None, uid: int, gid: int | None) -> bool:
    """Our own uid always; members of the socket group when one is configured; nobody else."""
    if creds is None:
        return False
    if creds.uid == uid:
        return True
    if gid is None:
        return False
    if gid in creds.gids:
        return True
    if creds.pid is not None and gid in _supplementary_gids(creds.pid):
        return True
    return _member_by_name(creds.uid, gid)  # /proc hidden (hidepid): the group database


def _member_by_name(uid: int, gid: int) -> bool:
    try:
        return pwd.getpwuid(uid).pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def socket_gid(group: str) -> int | None:
    """The gid of `[agent] socket_group` (a name or a number); None when it is empty."""
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise SocketError(f"agent.socket_group: no group named {group!r} on this host") from None


def prepare_socket_dir(path: Path, gid: int | None = None) -> None:
    """Create the socket's directory 0700 (0750 of the socket group), or refuse an open one, or a
    path no Unix socket can have (checked first: nothing is created for an agent that cannot run)."""
    size = len(os.fsencode(path))
    if size > SOCKET_PATH_MAX:
        raise SocketError(
            f"cannot listen on {path}: the path is {size} bytes and a Unix socket's may be at most "
            f"{SOCKET_PATH_MAX}; set WAYSTATION_SOCKET (or WAYSTATION_HOME) to a shorter one"
        )
    directory = path.parent
    directory.mkdir(mode=0o700 if gid is None else 0o750, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise SocketError(f"socket directory {directory} belongs to uid {info.st_uid}, not to us")
    mode = stat.S_IMODE(info.st_mode)
    if gid is None:
        if mode & 0o077:
            raise SocketError(
                f"socket directory {directory} is open to others (mode {mode:o}); "
                f"run `chmod 700 {directory}` or set WAYSTATION_SOCKET to a private path"
            )
        return
    if mode & 0o027:
        raise SocketError(
            f"socket directory {directory} is open to others (mode {mode:o}); "
            f"run `chmod 750 {directory}` or set WAYSTATION_SOCKET to a private path"
        )
    try:
        if info.st_gid != gid:
            os.chown(directory, -1, gid)
        if mode != 0o750:
            os.chmod(directory, 0o750)  # group members need to reach the socket
    except OSError as exc:
        raise SocketError(
            f"cannot give socket directory {directory} to group {gid} (agent.socket_group): {exc.strerror}"
        ) from None


# sun_path holds 108 bytes on Linux (104 on macOS and the BSDs), its terminating NUL included.
SOCKET_PATH_MAX = 107 if sys.platform.startswith("linux") else 103


def bind_unix_socket(path: Path, gid: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # The directory is 0700 (or 0750 of the socket group), so nobody else can connect meanwhile.
        if gid is None:
            os.chmod(path, 0o600)
        else:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SocketError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    return sock


def _peer_checked(uid: int, gid: int | None, cap: ConnectionCap) -> Admit:
    """The socket's admission: a peer of another user is cut off without a word (abort); one of
    ours past the cap, or past its share of it, is answered 503 and closed."""

    def admit(transport: asyncio.Transport) -> Callable[[], None] | None:
        creds = peer_credentials(transport.get_extra_info("socket"))
        if creds is None or not peer_allowed(creds, uid, gid):
            log.warning(
                "refused a socket peer of another user",
                peer_uid=None if creds is None else creds.uid,
                peer_gids=None if creds is None else sorted(creds.gids),
            )
            transport.abort()
            return None
        peer = Peer(creds.pid or None, creds.uid, own_user=creds.uid == uid)  # pid 0: not in our namespace
        answer = cap.admit(peer)
        if answer is not None:
            refuse(transport, answer)
            return None
        return lambda: cap.release(peer)

    return admit


class PeerCheckedUnixSite(web.BaseSite):
    """aiohttp's UnixSite, with our socket permissions, the peer check on every connection, a cap
    on how many are open and each peer's share of it."""

    def __init__(
        self, runner: web.BaseRunner, sock: socket.socket, path: Path, gid: int | None = None
    ) -> None:
        super().__init__(runner)
        self._sock = sock
        self._path = path
        self._gid = gid

    @property
    def name(self) -> str:
        return f"http://unix:{self._path}:"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        uid = os.getuid()
        admit = _peer_checked(uid, self._gid, ConnectionCap())
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: Gated(server(), admit), sock=self._sock, backlog=self._backlog
        )
