"""What the socket API serves from: the agent's running components, gathered in one place."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from waystation import __version__
from waystation.adapters.routes import Router
from waystation.adapters.tools import ToolRegistry
from waystation.agent.connectivity import ConnectivityMonitor
from waystation.agent.events import EventBus
from waystation.agent.metrics import Metrics
from waystation.agent.turns import TurnEngine, TurnResult
from waystation.config import Paths, Settings
from waystation.db import Database
from waystation.errors import WaystationError
from waystation.queue.flusher import Flusher
from waystation.queue.policy import SETTLED
from waystation.queue.store import TaskStore
from waystation.queue.tasks import Task

log = structlog.get_logger(__name__)


@dataclass
class Services:
    paths: Paths
    settings: Settings
    db: Database
    store: TaskStore
    tools: ToolRegistry
    events: EventBus
    monitor: ConnectivityMonitor
    flusher: Flusher
    turns: TurnEngine
    router: Router
    started: float = field(default_factory=time.monotonic)
    version: str = __version__
    metrics: Metrics = field(default_factory=Metrics)
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    _connectivity_seen: str | None = None

    def task_changed(self, task: Task, receipt: dict[str, Any] | None = None) -> None:
        """Announce a task's new state (and its receipt, if it wrote one) on the event stream."""
        self.events.publish("task", task.to_json())
        if receipt is not None:
            self.events.publish("receipt", receipt)
        if task.turn_id and task.state in SETTLED and self.settings.agent.resume == "auto":
            self.resume_soon(task.turn_id)

    async def close(self) -> None:
        """Cancel background resumptions; each still writes its "interrupted" receipt."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def __post_init__(self) -> None:
        if self.turns is not None:
            self.turns.on_finished = self.turn_finished
        if self.flusher is not None:
            self.flusher.on_delivered = self.metrics.delivered
        if self.monitor is not None:
            self._connectivity_seen = self.monitor.state

    def connectivity_changed(self, snapshot: dict[str, object]) -> None:
        """Count a transition when the state differs from the last one seen (mode-only changes
        and repeated notices of one change count nothing)."""
        state = str(snapshot.get("state"))
        if state != self._connectivity_seen:
            self._connectivity_seen = state
            self.metrics.connectivity_transitions.inc(to=state)

    def turn_finished(
        self, result: TurnResult, receipt: dict[str, Any] | None = None, resumed: bool = False
    ) -> None:
        """Announce a finished turn (whatever its status) and its receipt on the event stream."""
        if result.model_answered and self.router is not None:
            self.router.last_answered[result.route] = result.model_answered
        self.metrics.turn_finished(
            result.route, result.status, result.usage.prompt_tokens, result.usage.completion_tokens
        )
        cold_load_ms = receipt.get("cold_load_ms") if receipt is not None else None
        if isinstance(cold_load_ms, int | float) and not isinstance(cold_load_ms, bool):
            self.metrics.model_loaded(cold_load_ms / 1000)
        self.events.publish("turn", {**result.to_json(), "resumed": resumed})
        if receipt is not None:
            self.events.publish("receipt", receipt)

    def resume_soon(self, turn_id: str) -> None:
        """Resume a parked turn in the background once all its tasks have settled."""
        task = asyncio.create_task(self._resume(turn_id), name=f"resume-{turn_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _resume(self, turn_id: str) -> None:
        try:
            await self.turns.resume(turn_id)  # the engine announces it (turn_finished)
        except WaystationError as exc:
            log.warning("resumed turn failed", turn_id=turn_id, error=exc.message)
