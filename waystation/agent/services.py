"""What the socket API serves from: the agent's running components, gathered in one place."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from waystation import __version__
from waystation.adapters.tools import ToolRegistry
from waystation.agent.connectivity import ConnectivityMonitor
from waystation.agent.events import EventBus
from waystation.config import Paths, Settings
from waystation.db import Database
from waystation.queue.flusher import Flusher
from waystation.queue.store import Task, TaskStore


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
    started: float = field(default_factory=time.monotonic)
    version: str = __version__

    def task_changed(self, task: Task, receipt: dict[str, Any] | None = None) -> None:
        """Announce a task's new state (and its receipt, if it wrote one) on the event stream."""
        self.events.publish("task", task.to_json())
        if receipt is not None:
            self.events.publish("receipt", receipt)
