"""How many clients a listener serves at once, how many of them one peer may hold, and how long a
request may take to arrive.

A client that opens connections and never finishes a request (a stuck script, a slowloris) must
not take the socket from everyone else, nor keep the agent alive but deaf where the watchdog
cannot see it. So, as PostgreSQL does with `max_connections` and `authentication_timeout` and Go's
http.Server with ReadHeaderTimeout:
- a request's head must arrive within HEAD_TIMEOUT_S of the connection opening (or of the previous
  response), and its body within BODY_TIMEOUT_S; an idle keep-alive connection closes then too;
- past the cap a new connection is answered `503 too_many_connections` and closed at once, before
  it can hold a file descriptor, and the refusals are logged once a minute, not once each.

A cap alone is won by whoever connects fastest: one process reconnecting as soon as it is closed
took every slot of the socket, and its owner's status calls got 503 (issue 20). So each peer gets
a share, as nginx's `limit_conn` keys connections by client and PostgreSQL keeps
`reserved_connections` back from ordinary roles: one process (SO_PEERCRED's pid) may hold a
quarter of the socket's connections, and so may one user other than the agent's, and the last
quarter is kept for the agent's own user. A peer past its share is refused as past the cap.

The metrics port serves Prometheus, not people: at most METRICS_CONNECTIONS at once
(node_exporter's `--web.max-requests`), with the same head timeout, and none in the descriptors
kept back for the socket's sake: 1,100 half-sent connections there once took every descriptor
the agent had and the socket API went deaf.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 4096
# node_exporter's default `--web.max-requests`: a scrape or two at a time is what Prometheus needs.
METRICS_CONNECTIONS = 40
# Descriptors kept back for what is not a socket client: the database and its journal, the model
# file, outgoing deliveries, child processes' pipes, and the metrics port, which may use no more
# than lies below them.
RESERVED_FILES = 256
# One peer's share of a listener's connections: a quarter (1,024 of 4,096 on the socket).
SHARES = 4
LOG_EVERY_S = 60.0

Refusal = Literal["full", "process", "user", "reserved", "descriptors"]


@dataclass(frozen=True)
class Peer:
    """Who holds a connection: its process and user (SO_PEERCRED), None where the OS won't say."""

    pid: int | None
    uid: int | None
    own_user: bool


def connection_cap() -> int:
    """MAX_CONNECTIONS, or fewer where the open-file limit could not be raised that far."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft - RESERVED_FILES))


def first_reserved_file() -> int | None:
    """The lowest descriptor number among the RESERVED_FILES below the open-file limit; None when
    there is no limit. Descriptors are numbered lowest-free-first, so a connection given this number
    or a higher one means the process has at least that many files open."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft - RESERVED_FILES


def refusal(open_total: int, cap: int, pid_open: int, uid_open: int, own_user: bool) -> Refusal | None:
    """Why one more connection from this peer may not be served now, or None: it may."""
    share = max(1, cap // SHARES)
    if open_total >= cap:
        return "full"
    if pid_open >= share:
        return "process"
    if not own_user and uid_open >= share:
        return "user"
    if not own_user and open_total >= cap - share:
        return "reserved"
    return None


def _messages(listener: str, cap: int) -> dict[Refusal, str]:
    share = max(1, cap // SHARES)
    return {
        "full": f"{listener} is serving {cap} connections already; try again shortly",
        "process": f"this process holds {share} of the {cap} connections {listener} serves, its "
        "share; finish or close some, or try again shortly",
        "user": f"this user holds {share} of the {cap} connections {listener} serves, its share; "
        "finish or close some, or try again shortly",
        "reserved": f"the last {share} of the {cap} connections {listener} serves are kept for its "
        "own user; try again shortly",
        "descriptors": f"{listener} is short of file descriptors; try again shortly",
    }


def _answer(message: str) -> bytes:
    body = json.dumps({"error": {"code": "too_many_connections", "message": message}}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionCap:
    """Counts a listener's open connections, by peer where peers are known; `admit` says whether
    one more may be served (None) or the answer that refuses it."""

    def __init__(
        self, cap: int | None = None, listener: str = "the agent", reserved_from: int | None = None
    ) -> None:
        self.cap = connection_cap() if cap is None else cap
        self.open = 0
        self._listener = listener
        self._reserved_from = reserved_from  # a connection on this descriptor number or above is refused
        self._messages = _messages(listener, self.cap)
        self._answers = {reason: _answer(message) for reason, message in self._messages.items()}
        self._by_pid: Counter[int] = Counter()
        self._by_uid: Counter[int] = Counter()
        self._refused_since_log: Counter[Refusal] = Counter()
        self._logged_at: dict[Refusal, float] = {}

    def admit(self, peer: Peer | None = None, fileno: int = -1) -> bytes | None:
        why = refusal(
            self.open,
            self.cap,
            self._by_pid[peer.pid] if peer and peer.pid is not None else 0,
            self._by_uid[peer.uid] if peer and peer.uid is not None else 0,
            peer is None or peer.own_user,
        )
        if why is None and self._reserved_from is not None and fileno >= self._reserved_from:
            why = "descriptors"
        if why is not None:
            self._log_refusal(why, peer)
            return self._answers[why]
        self.open += 1
        if peer is not None:
            if peer.pid is not None:
                self._by_pid[peer.pid] += 1
            if peer.uid is not None:
                self._by_uid[peer.uid] += 1
        return None

    def release(self, peer: Peer | None = None) -> None:
        self.open -= 1
        if peer is not None:
            for counts, key in ((self._by_pid, peer.pid), (self._by_uid, peer.uid)):
                if key is not None:
                    counts[key] -= 1
                    if counts[key] <= 0:
                        del counts[key]  # a peer gone leaves nothing behind

    def _log_refusal(self, why: Refusal, peer: Peer | None) -> None:
        self._refused_since_log[why] += 1
        now = time.monotonic()
        if now - self._logged_at.get(why, -LOG_EVERY_S) < LOG_EVERY_S:
            return
        log.warning(
            "refusing connections",
            listener=self._listener,
            why=self._messages[why].split(";")[0],
            cap=self.cap,
            refused=self._refused_since_log.pop(why),
            peer_pid=None if peer is None else peer.pid,
            peer_uid=None if peer is None else peer.uid,
        )
        self._logged_at[why] = now


Admit = Callable[[asyncio.Transport], Callable[[], None] | None]


class Gated(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: `admit` looks at a new connection before a byte of
    it is read and gives back how to release its slot, or None when it has refused it (answered
    it and closed it itself); a refused connection never reaches the inner protocol."""

    def __init__(self, inner: asyncio.Protocol, admit: Admit) -> None:
        self._inner = inner
        self._admit = admit
        self._release: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._release = self._admit(typing.cast(asyncio.Transport, transport))
        if self._release is not None:
            self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._release is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._release is None else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._release is not None:
            self._release()
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def refuse(transport: asyncio.Transport, answer: bytes) -> None:
    """Answer a connection that may not be served and close it, without reading a byte of it."""
    transport.write(answer)
    transport.close()


def capped(cap: ConnectionCap) -> Admit:
    """The admission of a listener whose peers are not told apart (TCP): the cap, and no
    descriptor at or above `cap`'s reserved_from."""

    def admit(transport: asyncio.Transport) -> Callable[[], None] | None:
        sock = transport.get_extra_info("socket")
        answer = cap.admit(None, -1 if sock is None else sock.fileno())
        if answer is not None:
            refuse(transport, answer)
            return None
        return cap.release

    return admit


class CappedTCPSite(web.TCPSite):
    """aiohttp's TCPSite with `capped` admission on every connection."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, cap: ConnectionCap) -> None:
        super().__init__(runner, host, port)
        self._admit = capped(cap)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # TCPSite.start would serve the runner's protocol unwrapped
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Gated(server(), self._admit), self._host, self._port, backlog=self._backlog
        )


class QuietResourceErrors:
    """The loop's exception handler, with asyncio's "out of system resource" (EMFILE on accept)
    said once a minute: asyncio logs it with a traceback at every retry, which filled 54 MB of log
    in a minute when descriptors ran out."""

    def __init__(self) -> None:
        self._logged_at = -LOG_EVERY_S
        self._repeats = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "out of system resource" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        self._repeats += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.error(
                "cannot accept socket connections: out of file descriptors",
                error=str(context.get("exception")),
                times=self._repeats,
            )
            self._logged_at, self._repeats = now, 0
