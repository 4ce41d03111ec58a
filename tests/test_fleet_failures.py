"""nats-py's failures become ours by type alone (adapters/fleet/failures.py), and nothing else is
caught: cancellation, Ctrl-C, our own errors and a bug go through as they are."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest

from waystation.adapters.fleet.failures import CONNECTING, map_exceptions
from waystation.errors import FleetError, FleetRefused, FleetUnavailable


@pytest.mark.parametrize(
    ("raised", "ours"),
    [
        (nats.js.errors.ServiceUnavailableError(), FleetRefused),
        (nats.errors.NoRespondersError(), FleetRefused),
        (nats.errors.AuthorizationError(), FleetRefused),
        (nats.errors.TimeoutError(), FleetUnavailable),
        (nats.errors.ConnectionReconnectingError(), FleetUnavailable),
        (ConnectionRefusedError(111, "refused"), FleetUnavailable),
        (nats.errors.Error("nats: something"), FleetUnavailable),
        (ValueError("bad url"), FleetError),
    ],
)
def test_each_foreign_type_becomes_ours_saying_what_we_did(raised: Exception, ours: type[FleetError]) -> None:
    with pytest.raises(ours) as caught, map_exceptions("doing this"):
        raise raised
    assert type(caught.value) is ours and "doing this" in caught.value.message


@pytest.mark.parametrize(
    "raised", [asyncio.CancelledError(), KeyboardInterrupt(), FleetRefused("ours"), KeyError("a bug")]
)
def test_cancellation_interrupts_our_errors_and_bugs_go_through(raised: BaseException) -> None:
    with pytest.raises(type(raised)) as caught, map_exceptions("doing this"):
        raise raised
    assert caught.value is raised


def test_the_hubs_answer_to_connect_is_a_refusal_and_a_denied_request_unanswered_too() -> None:
    with (
        pytest.raises(FleetRefused, match="authorization refused"),
        map_exceptions("connect", mapping=CONNECTING),
    ):
        raise nats.errors.Error("nats: 'Authorization Violation'")
    with pytest.raises(FleetUnavailable), map_exceptions("connect", mapping=CONNECTING):
        raise nats.errors.NoServersError()
    denied = "nats: permissions violation for publish"
    with (
        pytest.raises(FleetRefused, match="permissions violation"),
        map_exceptions("publish", refusal=denied),
    ):
        raise nats.errors.TimeoutError()
