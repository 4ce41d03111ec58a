"""The listener's bearer token (`[agent] listen`): `api.token` in the state directory, 0600.

Other tools reach the agent over TCP, where no peer credentials say who connects, so every
request there carries `Authorization: Bearer <token>`. The token is made at the agent's first
start (or by `waystation token` when none exists) and replaced by `waystation token --rotate`.
A running agent reads the file again whenever its modification time or size changes, so a rotated
token is honoured at the next request and the old one refused, without a restart.
The comparison is in constant time (`hmac.compare_digest`), as a token compared byte by byte
leaks its prefix through timing.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
from pathlib import Path

from waystation import durable

TOKEN_FILE = "api.token"
TOKEN_PREFIX = "ws-"  # says what it is when it turns up in a shell history or a config file


def token_path(state_dir: Path) -> Path:
    return state_dir / TOKEN_FILE


def read_or_create(state_dir: Path) -> str:
    """The token, made (0600, written whole before it is visible) when there is none yet."""
    path = token_path(state_dir)
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text().strip()
        if token:
            return token
    return rotate(state_dir)


def rotate(state_dir: Path) -> str:
    """A new token replaces the old one at once (rename over it): the old one stops working."""
    durable.make_dirs(state_dir)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    durable.write_atomic(token_path(state_dir), token + "\n", 0o600)  # 0600 whatever the umask
    return token


class TokenCheck:
    """Whether a request's `Authorization` header holds the current token, the file re-read only
    when it changed (a stat per request, not a read)."""

    def __init__(self, state_dir: Path) -> None:
        self._path = token_path(state_dir)
        self._seen: tuple[int, int, int] | None = None
        self._token = b""
        read_or_create(state_dir)

    def current(self) -> bytes:
        try:
            st = self._path.stat()
        except FileNotFoundError:  # removed by hand: nothing is accepted until one is made again
            self._seen, self._token = None, b""
            return b""
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen != self._seen:
            self._token = self._path.read_text().strip().encode()
            self._seen = seen
        return self._token

    def allows(self, authorization: str | None) -> bool:
        scheme, _, given = (authorization or "").partition(" ")
        token = self.current()
        # compare_digest takes the same time whatever the bytes, for the same lengths.
        return (
            bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)
        )
