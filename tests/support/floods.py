"""Hostile clients of the agent's listeners, each in a child process of its own (so its own pid,
and another uid where the tests run as root), for tests/test_listener_floods.py and
bench/listener_flood.py.

- `hold`: opens COUNT connections to the status socket (a path) or a TCP port, sends each half a
  request head, and holds them until told to stop: a stuck script, or a slowloris;
- `idle`: the same, sending nothing;
- `reconnect`: keeps as many half-sent connections open to the socket as the agent lets it,
  opening a new one as soon as the agent closes one (or answers it, a 503 included).

The child says how many connections it made (the agent may have refused some at once) once it
has made its first COUNT tries; the parent closes a pipe to stop it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import socket
from collections.abc import Iterator
from pathlib import Path

HALF_HEAD = b"GET /v1/status HTTP/1.1\r\nHost: w\r\n"
NOBODY = 65534


def _connect(target: str, first_bytes: bytes = HALF_HEAD) -> tuple[bool, socket.socket | None]:
    """One half-sent request to `target` (a socket path, or a TCP port on 127.0.0.1): whether the
    connection was made, and the socket while it is still open (None when the agent refused it
    before the bytes were sent, or the connection was not made)."""
    family = socket.AF_INET if target.isdigit() else socket.AF_UNIX
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(0.2)
    try:
        sock.connect(("127.0.0.1", int(target)) if target.isdigit() else target)
    except OSError:  # backlog full, refused: try again later
        sock.close()
        return False, None
    try:
        sock.sendall(first_bytes)
    except OSError:  # answered and closed already: the agent's share held, as it should
        sock.close()
        return True, None
    sock.setblocking(False)
    return True, sock


def _raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _main(mode: str, target: str, count: int, stop: int, ready: int) -> None:
    _raise_open_files()
    held = selectors.DefaultSelector()
    held.register(stop, selectors.EVENT_READ)  # closed by the parent: time to go
    made = 0
    for _ in range(count):
        connected, sock = _connect(target, b"" if mode == "idle" else HALF_HEAD)
        made += connected
        if sock is not None:
            held.register(sock, selectors.EVENT_READ)
    os.write(ready, f"{made}\n".encode())
    while True:
        for key, _ in held.select(timeout=None if mode != "reconnect" else 0.001):
            if key.fileobj == stop:
                return
            if mode == "reconnect":  # answered or closed: this slot is free again, take it
                done = key.fileobj
                assert isinstance(done, socket.socket)
                held.unregister(done)
                done.close()
        if mode == "reconnect":
            _connected, sock = _connect(target)
            if sock is not None:
                held.register(sock, selectors.EVENT_READ)


@contextlib.contextmanager
def flooding(mode: str, target: Path | int, count: int, other_uid: bool = False) -> Iterator[int]:
    """A `hold`, `idle` or `reconnect` child for the length of the block; yields how many
    connections its first tries made.

    A fork, not a new interpreter: quick, and as nobody (`other_uid`, only possible as root) it
    need not read the virtual environment. The same uid where we are not root."""
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        code = 0
        try:
            os.close(ready_r)
            os.close(stop_w)
            if other_uid and os.getuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            _main(mode, str(target), count, stop_r, ready_w)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(stop_r)
    try:
        with os.fdopen(ready_r) as ready:
            line = ready.readline()
        assert line.strip().isdigit(), f"flooder did not start: {line!r}"
        yield int(line)
    finally:
        os.close(stop_w)
        os.waitpid(child, 0)
