"""The one composition root: every component is constructed here, and only here.

Three ways to run need three sets of components, built by one code path:

    direct      the command line with no agent: the database, the queue store, the tools
    in_process  one turn in the command line's process: + a connectivity monitor that probes
                once (no OS events), the routes and the turn engine
    agent       the long-running agent: + OS events, the flusher, turn resumption, housekeeping

Each component registers its own cleanup on the caller's AsyncExitStack as it is built, so the
stack unwinds in reverse order of dependence (deliveries stop before the database closes).
Components are built in order of dependence and nothing refers to one that does not exist yet:
listeners register once both sides exist (see station/announce.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import structlog

from waystation import __version__
from waystation.adapters.connectivity.monitor import ConnectivityMonitor
from waystation.adapters.routes import Router
from waystation.adapters.routes.local import LocalRoute
from waystation.adapters.tools import ToolRegistry, default_tools, new_client
from waystation.config import Paths, Settings
from waystation.db import Database
from waystation.errors import WaystationError
from waystation.queue.flusher import Flusher
from waystation.queue.store import TaskStore
from waystation.station.announce import Announcer
from waystation.station.delivery import Deliveries
from waystation.station.events import EventBus
from waystation.station.metrics import Metrics
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.resume import Resumptions

log = structlog.get_logger(__name__)

Mode = Literal["direct", "in_process", "agent"]
T = TypeVar("T")


class NotBuilt(WaystationError):
    """An operation asked for a component this way of running does not build (a bug)."""


@dataclass
class Station:
    """The components of one process; operations (station/ops) take it as their first argument."""

    mode: Mode
    paths: Paths
    settings: Settings
    db: Database
    store: TaskStore
    tools: ToolRegistry  # what models and `POST /v1/tasks` may use
    announcer: Announcer
    monitor_: ConnectivityMonitor | None = None
    router_: Router | None = None
    turns_: TurnEngine | None = None
    flusher_: Flusher | None = None
    started: float = field(default_factory=time.monotonic)
    version: str = __version__

    @property
    def monitor(self) -> ConnectivityMonitor:
        return _built(self.monitor_, "connectivity monitor", self.mode)

    @property
    def router(self) -> Router:
        return _built(self.router_, "router", self.mode)

    @property
    def turns(self) -> TurnEngine:
        return _built(self.turns_, "turn engine", self.mode)

    @property
    def flusher(self) -> Flusher:
        return _built(self.flusher_, "flusher", self.mode)

    def wake_flusher(self) -> None:
        """Something is due now (a task added or retried): the agent's flusher looks at once; with
        no agent running, it is delivered when one starts."""
        if self.flusher_ is not None:
            self.flusher_.wake()


def _built(component: T | None, name: str, mode: Mode) -> T:
    if component is None:
        raise NotBuilt(f"the {name} is not built for {mode} use")
    return component


async def build(stack: contextlib.AsyncExitStack, paths: Paths, settings: Settings, mode: Mode) -> Station:
    """The station for `mode`, its components' cleanups registered on `stack`."""
    db = await Database.open(paths.database, check=mode == "agent")
    stack.push_async_callback(db.close)
    store = TaskStore(db, settings.queue)
    if mode == "agent":
        recovered = await store.recover(all_running=True)
        if recovered:
            log.info("returned tasks left running by the last run to pending", count=recovered)
    events = EventBus()
    stack.callback(events.close)
    tools = default_tools()
    if mode == "direct":
        return Station(mode, paths, settings, db, store, tools, Announcer(events, Metrics()))

    monitor = ConnectivityMonitor(settings.connectivity, watch_os_events=mode == "agent")
    announcer = Announcer(events, Metrics(), connectivity=monitor.state)
    monitor.listen(announcer.connectivity_changed)
    client = new_client()
    stack.push_async_callback(client.aclose)
    router = Router(
        LocalRoute(settings.model), settings.agent.default_route, settings=settings, connectivity=monitor
    )
    stack.push_async_callback(router.close)
    announcer.listen("turn", router.answered)
    timeout_s = settings.queue.delivery_timeout_s
    turns = TurnEngine(
        db, store, tools, monitor, Deliveries(tools, client, timeout_s), router.resolve, announcer
    )
    station = Station(mode, paths, settings, db, store, tools, announcer, monitor, router, turns)
    if mode == "in_process":
        await stack.enter_async_context(monitor)
        with contextlib.suppress(TimeoutError):  # one probe decides: deliver now, or park
            await asyncio.wait_for(monitor.wait_known(), settings.connectivity.probe_timeout_s + 0.5)
        return station

    # The flusher also delivers whole turns deferred while offline.
    flusher = Flusher(store, Deliveries(tools, client, timeout_s, turns), monitor, settings.queue, announcer)
    announcer.listen("connectivity", lambda snapshot: flusher.connectivity_changed(str(snapshot["state"])))
    resumptions = Resumptions(turns)
    stack.push_async_callback(resumptions.close)  # background resumptions stop before the model closes
    if settings.agent.resume == "auto":
        announcer.listen("task", resumptions.task_changed)
    await stack.enter_async_context(monitor)
    flushing = asyncio.create_task(flusher.run(), name="flusher")
    stack.push_async_callback(cancel, flushing)
    station.flusher_ = flusher
    await resumptions.start(db)
    return station


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
