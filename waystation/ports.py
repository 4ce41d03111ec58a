"""The ports the core needs, declared once: what the queue and the turn engine call out through.

Each port is a `typing.Protocol` with a real implementation in an adapter or the station and a
test double in `waystation.testing`. The queue imports these and nothing of the adapters, so a
delivery, the network's state and what the agent announces can be swapped without touching it.

    Connectivity   the network's state as the connectivity monitor sees it (adapters/connectivity)
    Deliver        send one task once -> a Delivery (station/delivery.py: tools and deferred turns)
    Announce       say what happened: tasks changed, turns finished (station/announce.py)

Data crosses these ports as plain values (JSON objects, enums), never as a layer's own records.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from waystation import contract

# What an idempotency key may be: it travels as the Idempotency-Key header of every delivery,
# so printable ASCII (spaces inside allowed), not blank, at most 255 characters.
_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def idempotency_key_problem(key: str) -> str | None:
    """Why `key` cannot be an idempotency key (None when it can)."""
    if _KEY.fullmatch(key) and key.strip():
        return None
    return f"idempotency key {key!r} must be 1-255 printable ASCII characters, not all spaces"


class Outcome(StrEnum):
    """What one delivery attempt came to; the queue's policy decides the task's fate from it."""

    DONE = "done"  # the destination accepted it
    RETRY = "retry"  # the destination answered "not now"
    DEAD = "dead"  # the destination answered "never", or the task can never be sent
    UNREACHABLE = "unreachable"  # no answer at all: connection, DNS, timeout, route offline
    # The destination took the call as a task of its own (an MCP server's task), still working:
    # the task stays running and is polled (Delivery.remote_task) after retry_after_s.
    WAITING = "waiting"


@dataclass(frozen=True)
class Delivery:
    """The result of sending a task once."""

    outcome: Outcome
    status: int | None = None  # the destination's HTTP status, when it answered over HTTP
    result: Mapping[str, Any] | None = None  # kept as the task's result
    retry_after_s: float | None = None  # the destination asked for this pause
    error: str | None = None  # why it did not succeed, in words (never a credential)
    remote_task: str | None = None  # the destination's id for the call it took as a task (WAITING)


class Deliver(Protocol):
    async def __call__(
        self, tool: str, args: Mapping[str, Any], idempotency_key: str, remote_task: str | None = None
    ) -> Delivery:
        """Send validated args once (or, given the `remote_task` the destination made of them
        before, ask after that task instead). Never raises for the destination's answer or its
        absence: both are a Delivery."""
        ...


class Connectivity(Protocol):
    @property
    def state(self) -> str:
        """online | offline | portal | unknown: deliveries happen only while `online`."""
        ...

    @property
    def metered(self) -> bool:
        """The link costs per byte: large tasks wait for an unmetered one (or an explicit flush)."""
        ...

    def report_network_error(self) -> None:
        """A delivery got no answer: probe at once rather than at the next scheduled time."""
        ...


class Announce(Protocol):
    """What the core tells the rest of the agent (event stream, metrics, turn resumption)."""

    def task_changed(self, task: contract.Task, receipt: contract.Receipt | None = None) -> None:
        """A task (the contract's task object) changed state; `receipt` if it wrote one."""
        ...

    def delivered(self, outcome: Outcome, repeated: bool, seconds: float) -> None:
        """A delivery's answer was recorded; `repeated` when it was not the task's first try;
        `seconds` it took."""
        ...

    def turn_finished(
        self, turn: Mapping[str, Any], receipt: Mapping[str, Any] | None = None, resumed: bool = False
    ) -> None:
        """A turn ended a run (ok, parked, refused, error) and its receipt committed."""
        ...


@dataclass(frozen=True)
class PubAck:
    """A stream's acknowledgement: the message is stored (or was already, within its window)."""

    seq: int  # the stream's sequence
    duplicate: bool  # the hub had this Nats-Msg-Id already


class FleetHub(Protocol):
    """What the fleet's outbox needs of its hub (adapters/fleet/hub.py is the NATS JetStream one)."""

    async def publish(
        self, subject: str, data: bytes, msg_id: str, headers: dict[str, str] | None = None
    ) -> PubAck:
        """Store one message, de-duplicated by `msg_id`; FleetError when it cannot be known stored."""
        ...

    async def last_headers(self, stream: str, subject: str) -> dict[str, str] | None:
        """The headers of the last message `stream` holds on `subject`; None when it holds none."""
        ...
