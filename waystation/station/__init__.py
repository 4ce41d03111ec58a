"""The station: what a way of running holds (the types below), the one operations layer (ops/),
and the one composition root (build.py) that makes them.

The types live here, not in the root, so that an operation says in its signature which station it
needs (asking a direct station for a turn is a type error, not a runtime surprise) without
importing the module that constructs everything. Their components are named for the type checker
only: importing the station (an op, the command line's direct mode) loads none of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from waystation import __version__

if TYPE_CHECKING:
    from waystation.adapters.connectivity.monitor import ConnectivityMonitor
    from waystation.adapters.fleet.hub import Hub
    from waystation.adapters.models.store import ModelStore
    from waystation.adapters.routes import Router
    from waystation.adapters.tools import ToolRegistry
    from waystation.config import Paths, Settings
    from waystation.db import Database
    from waystation.queue.flusher import Flusher
    from waystation.queue.store import TaskStore
    from waystation.station.announce import Announcer
    from waystation.station.background import Background
    from waystation.station.turns.engine import TurnEngine


@dataclass
class Station:
    """What every way of running has: operations on tasks and receipts need no more."""

    paths: Paths
    settings: Settings
    db: Database
    store: TaskStore
    tools: ToolRegistry  # what models and `POST /v1/tasks` may use
    announcer: Announcer
    models: ModelStore = field(kw_only=True)  # the named models in the state directory
    started: float = field(default_factory=time.monotonic, kw_only=True)
    version: str = field(default=__version__, kw_only=True)
    # Why the receipts' checkpoints cannot be signed now (a damaged receipts.key); None when they can.
    signing_error: str | None = field(default=None, kw_only=True)
    # Why the last signed checkpoint was not kept (receipts.checkpoint of another origin, or one the
    # receipts do not extend); None when it was.
    checkpoint_error: str | None = field(default=None, kw_only=True)

    async def stop_delivery(self, task_id: str) -> bool:
        """Stop sending a task (a cancel); True when nothing sends it any more. With no agent
        running, nothing does."""
        return False


@dataclass
class TurnStation(Station):
    """+ what a turn needs: the network's state, the routes and the turn engine."""

    monitor: ConnectivityMonitor
    router: Router
    turns: TurnEngine


@dataclass
class AgentStation(TurnStation):
    """+ what only the long-running agent has: the flusher, and work in the background."""

    flusher: Flusher
    background: Background

    async def stop_delivery(self, task_id: str) -> bool:
        return await self.flusher.abort(task_id)


@dataclass
class FleetConsole:
    """What a fleet command has (`fleet status`, `fleet submit`, `doctor`), with no agent and no
    database: a hub for the one command, and the tools, to check work as a host will check it."""

    paths: Paths
    settings: Settings
    hub: Hub
    tools: ToolRegistry
