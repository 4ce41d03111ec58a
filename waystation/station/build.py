"""The one composition root: every component is constructed here, and only here.

Three ways to run need three sets of components, each built by extending the last:

    build_direct      the command line with no agent: the database, the queue store, the tools
    build_in_process  one turn in the command line's own process: + a connectivity monitor that
                      probes once (no OS events), the routes and the turn engine
    build_agent       the long-running agent: + OS events, the flusher, turn resumption

Each component registers its own cleanup on the caller's AsyncExitStack as it is built, so the
stack unwinds in reverse order of dependence (deliveries stop before the database closes).
Nothing refers to a component that does not exist yet: listeners register once both sides exist
(see station/announce.py). An operation says in its signature which station it needs, so asking
a direct station for a turn is a type error, not a runtime surprise.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import structlog

from waystation import __version__, logs
from waystation.adapters.connectivity.monitor import ConnectivityMonitor
from waystation.adapters.models.store import ModelStore
from waystation.adapters.routes import Router
from waystation.adapters.routes.local import LocalRoute
from waystation.adapters.tools import ToolRegistry, default_tools, new_client
from waystation.config import Paths, Settings
from waystation.db import Database
from waystation.errors import DatabaseError, SigningKeyUnusable, WaystationError
from waystation.queue import clock
from waystation.queue.flusher import Flusher
from waystation.queue.store import TaskStore
from waystation.receipts.checkpoints import SigningKey
from waystation.receipts.proofs import keep_checkpoint
from waystation.secrets import SecretResolver
from waystation.station.announce import Announcer
from waystation.station.background import Background
from waystation.station.delivery import Deliveries
from waystation.station.events import EventBus
from waystation.station.metrics import Metrics
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.resume import Resumptions

log = structlog.get_logger(__name__)

Stack = contextlib.AsyncExitStack


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


async def build_direct(stack: Stack, paths: Paths, settings: Settings) -> Station:
    db = await _database(stack, paths, check=False)
    # No secrets: this process cannot see the service's environment or credentials, so a task's
    # reference is checked for shape only, and the agent finds its value when it delivers.
    store = TaskStore(db, settings.queue)
    models = ModelStore(paths.models)
    return Station(paths, settings, db, store, default_tools(), _announcer(stack), models=models)


async def build_in_process(stack: Stack, paths: Paths, settings: Settings) -> TurnStation:
    db = await _database(stack, paths, check=False)
    station, _ = _turn_station(stack, paths, settings, db, watch_os_events=False)
    monitor = await stack.enter_async_context(station.monitor)
    with contextlib.suppress(TimeoutError):  # one probe decides: deliver now, or park
        await asyncio.wait_for(monitor.wait_known(), settings.connectivity.probe_timeout_s + 0.5)
    return station


async def build_agent(stack: Stack, paths: Paths, settings: Settings) -> AgentStation:
    db = await _database(stack, paths, check=True)
    # Made at first start; the receipts are signed once more at stop, after the last settles and
    # before the database closes. A damaged key stops the signing, never the queue: the agent runs
    # on and says why in `status` and `doctor`, rather than crash-looping under its service.
    signing_error = None
    try:
        key = SigningKey.load_or_create(paths.state, settings.fleet.host)
    except SigningKeyUnusable as exc:
        log.error("checkpoints of the receipts will not be signed", error=exc.message)
        signing_error = exc.message
    else:
        stack.push_async_callback(_sign_at_stop, db, key, paths)
    base, deliveries = _turn_station(stack, paths, settings, db, watch_os_events=True)
    base.signing_error = signing_error
    # Before anything reads a deadline: a wall clock set while no agent ran moves them with it, as
    # a set seen while running does (agent/jobs.py), instead of expiring work or holding retries.
    moved, tasks = await clock.rebase_after_stop(db, clock.read_mark())
    if moved:
        log.warning(
            "the wall clock was set while the agent was stopped; deadlines moved with it",
            seconds=round(moved),
            tasks=tasks,
        )
    stack.push_async_callback(_mark_at_stop, db)
    recovered = await base.store.recover(all_running=True)
    if recovered:
        log.info("returned tasks left running by the last run to pending", count=recovered)
    # The flusher delivers the tools' tasks and also runs whole turns deferred while offline.
    flusher = Flusher(
        base.store, deliveries.with_turns(base.turns), base.monitor, settings.queue, base.announcer
    )
    background = Background()
    stack.push_async_callback(background.close)  # turns still running stop before the model closes
    station = AgentStation(**vars(base), flusher=flusher, background=background)
    station.announcer.listen(
        "connectivity", lambda change: flusher.connectivity_changed(str(change["state"]))
    )
    # Every committed task is announced (the API, the fleet's work, a turn's parked calls, a
    # retry): hearing it here is what wakes the flusher, whichever way the task came.
    station.announcer.listen("task", flusher.task_changed)
    resumptions = Resumptions(station.turns, background)
    if settings.agent.resume == "auto":
        station.announcer.listen("task", resumptions.task_changed)
    await stack.enter_async_context(station.monitor)
    flushing = asyncio.create_task(flusher.run(), name="flusher")
    stack.push_async_callback(cancel, flushing)
    await resumptions.start(db)
    return station


async def _sign_at_stop(db: Database, key: SigningKey, paths: Paths) -> None:
    try:
        await keep_checkpoint(db, key, paths.state)
    except (WaystationError, OSError) as exc:
        log.error("cannot sign a checkpoint of the receipts", error=str(exc))


async def _mark_at_stop(db: Database) -> None:
    """The clocks at stop, after the last task settled: what the next start compares against."""
    try:
        await clock.keep_mark(db, clock.read_mark())
    except DatabaseError as exc:
        log.error("cannot record the clock at stop", error=exc.message)


async def _database(stack: Stack, paths: Paths, *, check: bool) -> Database:
    db = await Database.open(paths.database, check=check)
    stack.push_async_callback(db.close)
    return db


def _announcer(stack: Stack, connectivity: str = "unknown") -> Announcer:
    events = EventBus()
    stack.callback(events.close)
    return Announcer(events, Metrics(), connectivity)


def _turn_station(
    stack: Stack, paths: Paths, settings: Settings, db: Database, *, watch_os_events: bool
) -> tuple[TurnStation, Deliveries]:
    """The components a turn needs (the monitor not yet started), and the tools' deliveries."""
    monitor = ConnectivityMonitor(settings.connectivity, watch_os_events=watch_os_events)
    announcer = _announcer(stack, connectivity=monitor.state)
    monitor.listen(announcer.connectivity_changed)
    client = new_client()
    stack.push_async_callback(client.aclose)
    secrets = SecretResolver(settings, paths.config_file, found=logs.redact_too)
    tools = default_tools(secrets, settings.tools.allow_hosts)
    deliveries = Deliveries(tools, client, settings.queue.delivery_timeout_s)
    models = ModelStore(paths.models)
    router = Router(
        LocalRoute(settings.model, models=models),
        settings.agent.default_route,
        settings=settings,
        connectivity=monitor,
    )
    stack.push_async_callback(router.close)
    announcer.listen("turn", router.answered)
    store = TaskStore(db, settings.queue)
    turns = TurnEngine(
        db,
        store,
        tools,
        monitor,
        deliveries,
        router.resolve,
        announcer,
        allow_hosts=settings.tools.allow_hosts,
        allow_writes=settings.tools.allow_writes,
    )
    station = TurnStation(paths, settings, db, store, tools, announcer, monitor, router, turns, models=models)
    return station, deliveries


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
