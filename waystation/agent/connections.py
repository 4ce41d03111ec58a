"""How many clients the status socket serves at once, and how long a request may take to arrive.

A client that opens connections and never finishes a request (a stuck script, a slowloris) must
not take the socket from everyone else, nor keep the agent alive but deaf where the watchdog
cannot see it. So, as PostgreSQL does with `max_connections` and `authentication_timeout` and Go's
http.Server with ReadHeaderTimeout:
- a request's head must arrive within HEAD_TIMEOUT_S of the connection opening (or of the previous
  response), and its body within BODY_TIMEOUT_S; an idle keep-alive connection closes then too;
- past the cap a new connection is answered `503 too_many_connections` and closed at once, before
  it can hold a file descriptor, and the refusals are logged once a minute, not once each.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from typing import Any

import structlog

log = structlog.get_logger(__name__)

HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 4096
# Descriptors kept back for what is not a client: the database and its journal, the model file,
# outgoing deliveries, the metrics port, child processes' pipes.
RESERVED_FILES = 256
LOG_EVERY_S = 60.0


def connection_cap() -> int:
    """MAX_CONNECTIONS, or fewer where the open-file limit could not be raised that far."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft - RESERVED_FILES))


def _refusal(cap: int) -> bytes:
    body = json.dumps(
        {
            "error": {
                "code": "too_many_connections",
                "message": f"the agent is serving {cap} connections already; try again shortly",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionCap:
    """Counts the socket's open connections; `admit` says whether one more may be served."""

    def __init__(self, cap: int | None = None) -> None:
        self.cap = connection_cap() if cap is None else cap
        self.open = 0
        self.refusal = _refusal(self.cap)
        self._refused_since_log = 0
        self._logged_at = -LOG_EVERY_S

    def admit(self) -> bool:
        if self.open < self.cap:
            self.open += 1
            return True
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.warning(
                "refusing socket connections: too many open",
                cap=self.cap,
                refused=self._refused_since_log,
            )
            self._logged_at, self._refused_since_log = now, 0
        return False

    def release(self) -> None:
        self.open -= 1


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
