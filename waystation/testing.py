"""Test doubles for every port, shipped with the package as httpx ships MockTransport and
structlog ships capture_logs: fast, deterministic stand-ins for the network, the destinations and
the rest of the agent, so the queue and the turn engine can be tested alone.

    FakeConnectivity     ports.Connectivity: a state you set, network errors counted
    ScriptedDelivery     ports.Deliver: answers you script, calls recorded, deliveries you can hold
    RecordingAnnouncer   ports.Announce: everything announced, kept in lists
    ScriptedBackend      the model port (adapters.models.base.ModelBackend): scripted replies
    MemoryHub            ports.FleetHub: streams in memory, de-duplicated by message id in a window

The real implementations get their own tests on real things (loopback servers, real models).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from waystation import contract
from waystation.adapters.models.scripted import ScriptedBackend
from waystation.errors import FleetUnavailable
from waystation.ports import Delivery, Outcome, PubAck
from waystation.queue.policy import classify

__all__ = [
    "FakeConnectivity",
    "MemoryHub",
    "RecordingAnnouncer",
    "ScriptedBackend",
    "ScriptedDelivery",
    "delivered",
    "until",
]


@dataclass
class FakeConnectivity:
    state: str = "online"
    metered: bool = False
    network_errors: int = 0

    def report_network_error(self) -> None:
        self.network_errors += 1


def delivered(status: int = 200, body: str = "ok") -> Delivery:
    """What a destination that answered `status` comes to (as station/delivery.py reports it)."""
    result = {"status": status, "headers": {}, "body": body, "truncated": False}
    return Delivery(classify(status), status=status, result=result)


@dataclass(frozen=True)
class Call:
    tool: str
    args: Mapping[str, Any]
    idempotency_key: str
    remote_task: str | None = None  # set when the delivery asks after a destination's own task


Answer = Delivery | Callable[[Call], Delivery]


class ScriptedDelivery:
    """Answers each delivery with the next scripted answer (a Delivery, or a function of the
    call), then with `default` once the script runs out. `hold()` keeps deliveries waiting for
    their destination until `release()`: the way to see what is in flight."""

    def __init__(self, *script: Answer, default: Answer | None = None) -> None:
        self.script: list[Answer] = list(script)
        self.default: Answer = default if default is not None else delivered()
        self.calls: list[Call] = []
        self.in_flight = 0
        self._open = asyncio.Event()
        self._open.set()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    @property
    def keys(self) -> list[str]:
        return [c.idempotency_key for c in self.calls]

    async def __call__(
        self, tool: str, args: Mapping[str, Any], idempotency_key: str, remote_task: str | None = None
    ) -> Delivery:
        call = Call(tool, dict(args), idempotency_key, remote_task)
        self.calls.append(call)
        self.in_flight += 1
        try:
            await self._open.wait()
        finally:
            self.in_flight -= 1
        answer = self.script.pop(0) if self.script else self.default
        return answer(call) if callable(answer) else answer


@dataclass
class RecordingAnnouncer:
    tasks: list[tuple[dict[str, Any], dict[str, Any] | None]] = field(default_factory=list)
    deliveries: list[tuple[Outcome, bool]] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)  # of each delivery, in seconds
    turns: list[tuple[dict[str, Any], dict[str, Any] | None, bool]] = field(default_factory=list)

    def task_changed(self, task: contract.Task, receipt: contract.Receipt | None = None) -> None:
        self.tasks.append((dict(task), None if receipt is None else dict(receipt)))

    def delivered(self, outcome: Outcome, repeated: bool, seconds: float) -> None:
        self.deliveries.append((outcome, repeated))
        self.durations.append(seconds)

    def turn_finished(
        self, turn: Mapping[str, Any], receipt: Mapping[str, Any] | None = None, resumed: bool = False
    ) -> None:
        self.turns.append((dict(turn), None if receipt is None else dict(receipt), resumed))

    def states(self, task_id: str) -> list[str]:
        """The states announced for one task, in order."""
        return [t["state"] for t, _ in self.tasks if t["id"] == task_id]


async def until(predicate: Callable[[], object], within: float = 3.0) -> float:
    """Wait until predicate() is true (checking every 10 ms); the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@dataclass
class MemoryHub:
    """ports.FleetHub in memory, with JetStream's de-duplication: a message whose id was seen
    within `window_s` is not stored again (`window_s=0` turns it off, to show what a resend would
    do beyond the window). `lose_ack_at(n)` stores the n-th publish and then fails it, as a link
    that broke before the ack came back; `down = True` fails every call."""

    window_s: float = 86400.0
    clock: Callable[[], float] = time.monotonic
    down: bool = False
    streams: dict[str, list[tuple[dict[str, str], bytes]]] = field(default_factory=dict)
    _seen: dict[str, float] = field(default_factory=dict)
    _publishes: int = 0
    _lose_at: int | None = None

    def lose_ack_at(self, publish_number: int) -> None:
        self._lose_at = publish_number

    def held(self, subject: str) -> list[tuple[dict[str, str], bytes]]:
        return self.streams.get(subject, [])

    async def publish(
        self, subject: str, data: bytes, msg_id: str, headers: dict[str, str] | None = None
    ) -> PubAck:
        if self.down:
            raise FleetUnavailable("memory hub: down")
        self._publishes += 1
        now = self.clock()
        seen = self._seen.get(msg_id)
        duplicate = seen is not None and now - seen < self.window_s
        if not duplicate:
            self._seen[msg_id] = now
            self.streams.setdefault(subject, []).append(({"Nats-Msg-Id": msg_id, **(headers or {})}, data))
        if self._publishes == self._lose_at:
            self.down = True
            raise FleetUnavailable("memory hub: the link broke before the ack")
        return PubAck(sum(len(v) for v in self.streams.values()), duplicate)

    async def last_headers(self, stream: str, subject: str) -> dict[str, str] | None:
        if self.down:
            raise FleetUnavailable("memory hub: down")
        held = self.streams.get(subject)
        return dict(held[-1][0]) if held else None
