"""nats-py's failures as ours: one mapping from its exception types to the fleet's errors, and the
one context manager that applies it (the model is httpcore's `_exceptions.map_exceptions`).

Matched by type alone, never by the text of a message. Only the listed types are caught: our own
errors, a bug (any exception not listed), cancellation and Ctrl-C go through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import nats.errors
import nats.js.errors

from waystation.errors import FleetError, FleetRefused, FleetUnavailable

# A foreign exception type -> what makes ours of it, given the exception and what we were doing.
Mapping = dict[type[Exception], Callable[[Exception, str], FleetError]]


def _no_jetstream(exc: Exception, doing: str) -> FleetError:
    return FleetRefused(f"fleet hub: {doing}: no JetStream answers (is the server run with -js?)")


def _api_refusal(exc: Exception, doing: str) -> FleetError:
    description = exc.description if isinstance(exc, nats.js.errors.APIError) else None
    return FleetRefused(f"fleet hub: {doing}: {description or exc}")


def _unauthorized(exc: Exception, doing: str) -> FleetError:
    return FleetRefused(f"fleet hub: {doing}: authorization refused (check [fleet] creds)")


def _link_down(exc: Exception, doing: str) -> FleetError:
    return FleetUnavailable(f"fleet hub: {doing}: the link is down; reconnecting")


def _unanswered(exc: Exception, doing: str) -> FleetError:
    return FleetUnavailable(f"fleet hub: {doing}: {type(exc).__name__} {exc}".strip())


def _said_at_connect(exc: Exception, doing: str) -> FleetError:
    """nats-py raises the hub's answer to CONNECT (an -ERR: authorization violation, an
    authentication timeout, a credential expired) as a bare Error: the hub refused us. Its
    subclasses (no servers, a stale or closed connection) are only the link."""
    if type(exc) is nats.errors.Error:
        return FleetRefused(f"fleet hub: {doing}: authorization refused (check [fleet] creds): {exc}")
    return _unanswered(exc, doing)


def _misused(exc: Exception, doing: str) -> FleetError:
    return FleetError(f"fleet hub: {doing}: {exc}")


# nats-py's exceptions (and the socket's) as ours, by type alone: the first that matches wins, so a
# subclass comes before its base (ServiceUnavailableError is an APIError, NoRespondersError and
# nats' TimeoutError are nats Errors). Only these are caught: our own errors, a bug (any other
# exception), cancellation and Ctrl-C go through untouched.
FOREIGN: Mapping = {
    nats.js.errors.ServiceUnavailableError: _no_jetstream,
    nats.errors.NoRespondersError: _no_jetstream,
    nats.js.errors.APIError: _api_refusal,
    nats.errors.AuthorizationError: _unauthorized,
    nats.errors.InvalidUserCredentialsError: _unauthorized,
    nats.errors.OutboundBufferLimitError: _link_down,
    nats.errors.ConnectionReconnectingError: _link_down,
    asyncio.TimeoutError: _unanswered,
    nats.errors.Error: _unanswered,
    OSError: _unanswered,
    ValueError: _misused,  # nats-py's word for a URL or a name it cannot use
}


# Connecting: the same, but what the hub says to CONNECT is its refusal.
CONNECTING: Mapping = {**FOREIGN, nats.errors.Error: _said_at_connect}


@contextlib.contextmanager
def map_exceptions(doing: str, refusal: str | None = None, mapping: Mapping = FOREIGN) -> Iterator[None]:
    """Raise nats-py's exceptions inside as ours (FOREIGN), saying what we were doing; the model
    is httpcore's `_exceptions.map_exceptions`. `refusal`: what the hub last said refusing us, which
    makes a request left unanswered a refusal (the hub answers a permission it denies with an
    error of the connection's, and never answers the request itself)."""
    try:
        yield
    except tuple(mapping) as exc:
        if refusal is not None and isinstance(exc, asyncio.TimeoutError):
            raise FleetRefused(f"fleet hub: {doing}: {refusal}") from None
        translate = next(ours for foreign, ours in mapping.items() if isinstance(exc, foreign))
        raise translate(exc, doing) from None
