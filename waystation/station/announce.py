"""The Announce port as the agent implements it: what happened goes to the event stream and the
metrics, then to whoever listens for it (the flusher hears connectivity, turn resumption hears
settled tasks, the router hears which model answered).

Listeners register after the components they call exist, so nothing is wired backwards; they
run synchronously on the event loop and must only note the change or schedule work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog

from waystation import contract
from waystation.ports import Outcome
from waystation.queue.tasks import listed
from waystation.station.events import EventBus
from waystation.station.metrics import Metrics

log = structlog.get_logger(__name__)

Listener = Callable[[Mapping[str, Any]], None]


def slim(task: Mapping[str, Any]) -> dict[str, Any]:
    """A task as its event carries it: as a list shows it, where it goes and how it stands, not
    its body, headers or the answer's body (`GET /v1/tasks/{id}` has those). Events are kept and
    sent to every subscriber; a task's payload can be megabytes, and its headers credentials."""
    return listed(dict(task))


class Announcer:
    def __init__(self, events: EventBus, metrics: Metrics, connectivity: str = "unknown") -> None:
        self.events = events
        self.metrics = metrics
        self._listeners: dict[str, list[Listener]] = {
            "task": [],
            "turn": [],
            "connectivity": [],
            "receipt": [],
        }
        self._connectivity_seen = connectivity  # the monitor's state when it was built

    def listen(self, kind: str, listener: Listener) -> None:
        """Call `listener(data)` for each `kind` ("task", "turn", "connectivity", "receipt") announced."""
        self._listeners[kind].append(listener)

    def _tell(self, kind: str, data: Mapping[str, Any]) -> None:
        for listener in self._listeners[kind]:
            try:
                listener(data)
            except Exception:  # one broken listener must not stop the others or the caller
                log.exception("listener failed", kind=kind)

    # --- ports.Announce --------------------------------------------------------------------------

    def task_changed(self, task: contract.Task, receipt: contract.Receipt | None = None) -> None:
        self.events.publish("task", slim(task))
        if receipt is not None:
            self._receipt(receipt)
        self._tell("task", task)

    def delivered(self, outcome: Outcome, repeated: bool, seconds: float) -> None:
        self.metrics.delivered(str(outcome), repeated, seconds)

    def turn_finished(
        self, turn: Mapping[str, Any], receipt: Mapping[str, Any] | None = None, resumed: bool = False
    ) -> None:
        usage = turn.get("usage") or {}
        self.metrics.turn_finished(
            str(turn["route"]),
            str(turn["status"]),
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
        )
        took_ms = receipt.get("duration_ms") if receipt is not None else None
        if isinstance(took_ms, int | float) and not isinstance(took_ms, bool):
            self.metrics.turn_took(took_ms / 1000)
        cold_load_ms = receipt.get("cold_load_ms") if receipt is not None else None
        if isinstance(cold_load_ms, int | float) and not isinstance(cold_load_ms, bool):
            self.metrics.model_loaded(cold_load_ms / 1000)
        self.events.publish("turn", {**turn, "resumed": resumed})
        if receipt is not None:
            self._receipt(receipt)
        self._tell("turn", turn)

    def _receipt(self, receipt: Mapping[str, Any]) -> None:
        self.events.publish("receipt", dict(receipt))
        self._tell("receipt", receipt)

    # --- the connectivity monitor's on_change -----------------------------------------------------

    def connectivity_changed(self, snapshot: contract.Connectivity) -> None:
        """A transition counts when the state differs from the last one seen (mode-only changes
        and repeated notices of one change count nothing)."""
        state = str(snapshot.get("state"))
        if state != self._connectivity_seen:
            self._connectivity_seen = state
            self.metrics.connectivity_entered(state)
        self.events.publish("connectivity", snapshot)
        self._tell("connectivity", snapshot)
