"""The agent's error answers as WaystationErrors: the class an answer's code names (so `except
NotFound` works on the command line as in the agent), or RemoteError for a code this client does
not know and for a transport that failed (AgentTimeout, AgentUnreachable)."""

from __future__ import annotations

from typing import Any

import httpx

from waystation import errors
from waystation.errors import WaystationError


class RemoteError(WaystationError):
    """An error answer whose code names no class here (an agent newer than this client)."""

    def __init__(
        self,
        code: str,
        message: str,
        http_status: int = 500,
        exit_code: int = 1,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        # Instance values shadow the class-level defaults for this one error.
        self.code = code  # type: ignore[misc]
        self.http_status = http_status  # type: ignore[misc]
        self.exit_code = exit_code  # type: ignore[misc]
        self.remote_details = dict(details or {})

    def details(self) -> dict[str, Any]:
        """The details the agent sent, as they were."""
        return dict(self.remote_details)


class AgentTimeout(RemoteError):
    """The agent did not answer in time (it may still be working on the request)."""


class AgentUnreachable(RemoteError):
    """The connection to the agent failed or broke off (it may still be working on the request)."""


def _error_classes() -> dict[str, type[WaystationError]]:
    """Each code of errors.py and its class: the class that defines the code, where subclasses
    share it (RouteOffline answers as RouteRefused's route_refused)."""
    found: dict[str, type[WaystationError]] = {}
    todo: list[type[WaystationError]] = [WaystationError]
    while todo:
        cls = todo.pop()
        # errors.py, or the package it may become (one module per domain)
        in_errors = cls.__module__ == errors.__name__ or cls.__module__.startswith(errors.__name__ + ".")
        if in_errors and "code" in vars(cls):
            found.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return found


def rebuild_error(code: str, message: str, http_status: int, details: object = None) -> WaystationError:
    """The error an agent answered, as the class its code names (so `except NotFound` works),
    built through its constructor from the details (so NotFound.ident is there): see
    WaystationError.from_json. An unknown code gives a RemoteError with the answer's status."""
    cls = _error_classes().get(code)
    if cls is None:
        return RemoteError(code, message, http_status, details=details if isinstance(details, dict) else None)
    return cls.from_json(message, details)


def error_from(response: httpx.Response) -> WaystationError:
    try:
        detail = response.json()["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        text = response.text.strip().splitlines()
        hint = f": {text[0][:200]}" if text else ""
        return RemoteError(
            f"http_{response.status_code}",
            f"the agent answered HTTP {response.status_code}{hint}",
            response.status_code,
        )
    return rebuild_error(code, message, response.status_code, detail.get("details"))


def os_cause(exc: BaseException) -> OSError | None:
    """The OSError under a transport error (a missing or refused socket), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
