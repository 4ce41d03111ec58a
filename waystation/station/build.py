"""The one composition root: every component is constructed here, and only here.

Three ways to run need three sets of components, each built by extending the last:

    build_direct      the command line with no agent: the database, the queue store, the tools
    build_in_process  one turn in the command line's own process: + a connectivity monitor that
                      probes once (no OS events), the routes and the turn engine
    build_agent       the long-running agent: + OS events, the flusher, turn resumption, the
                      housekeeping jobs and, with `[fleet] url` set, the fleet
    build_fleet_console  a fleet command (`fleet`, `doctor`): a hub for one command, and the tools

Each component registers its own cleanup on the caller's AsyncExitStack as it is built, so the
stack unwinds in reverse order of dependence (deliveries stop before the database closes).
Nothing refers to a component that does not exist yet: listeners register once both sides exist
(see station/announce.py). An operation says in its signature which station it needs, so asking
a direct station for a turn is a type error, not a runtime surprise (the types are the
station's, in station/__init__.py). Only the entry points import this module: agent/daemon.py,
cli/direct.py and the in-process turn (cli/commands/turn.py); pyproject's import contracts keep it so.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from waystation.adapters.mcp import McpCallTool
from waystation.adapters.models.store import ModelStore
from waystation.adapters.tools import default_tools
from waystation.config import Paths, Settings
from waystation.db import Database
from waystation.errors import ConfigError, DatabaseError
from waystation.queue.store import TaskStore
from waystation.station import AgentStation, FleetConsole, Station, TurnStation
from waystation.station.announce import Announcer
from waystation.station.events import EventBus
from waystation.station.mcp_catalog import McpCatalog
from waystation.station.metrics import Metrics

if TYPE_CHECKING:
    from waystation.station.delivery import Deliveries

# What only a turn, the agent or a fleet command uses is imported where it is built, so that a
# command run without an agent (`queue ls`) loads none of it: the routes and the models' runtime,
# the flusher, the scheduler, NATS.

log = structlog.get_logger(__name__)

Stack = contextlib.AsyncExitStack


async def build_direct(stack: Stack, paths: Paths, settings: Settings) -> Station:
    db = await _database(stack, paths, check=False)
    # No secrets: this process cannot see the service's environment or credentials, so a task's
    # reference is checked for shape only, and the agent finds its value when it delivers.
    store = TaskStore(db, settings.queue)
    models = ModelStore(paths.models)
    tools = default_tools()
    tools.add(McpCallTool(settings.mcp_servers, None))  # `queue add mcp ...` without the agent
    return Station(paths, settings, db, store, tools, _announcer(stack), models=models)


async def build_in_process(stack: Stack, paths: Paths, settings: Settings) -> TurnStation:
    db = await _database(stack, paths, check=False)
    station, _, catalog = _turn_station(stack, paths, settings, db, watch_os_events=False)
    monitor = await stack.enter_async_context(station.monitor)
    with contextlib.suppress(TimeoutError):  # one probe decides: deliver now, or park
        await asyncio.wait_for(monitor.wait_known(), settings.connectivity.probe_timeout_s + 0.5)
    if catalog.servers:
        await catalog.load()
        await catalog.refresh(online=monitor.state == "online")
    return station


async def build_agent(stack: Stack, paths: Paths, settings: Settings) -> AgentStation:
    from waystation.queue import clock
    from waystation.queue.flusher import Flusher
    from waystation.station.background import Background, cancel
    from waystation.station.ops import receipts
    from waystation.station.turns.resume import Resumptions

    db = await _database(stack, paths, check=True)
    # The receipts are signed once more at stop, after the last settles and before the database
    # closes: this slot in the stack's order is kept now and filled once the station exists.
    at_stop = Stack()
    stack.push_async_callback(at_stop.aclose)
    base, deliveries, catalog = _turn_station(stack, paths, settings, db, watch_os_events=True)
    # Before anything reads a deadline: a wall clock set while no agent ran moves them with it, as
    # a set seen while running does (station/housekeeping.py), instead of expiring work or holding retries.
    # A full disk must not stop the agent here: it starts to read work and frees room as it can.
    try:
        moved, tasks = await clock.rebase_after_stop(db, clock.read_mark())
    except DatabaseError as exc:
        log.error("cannot compare the clock with the last run's; deadlines not moved", error=exc.message)
    else:
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
    # Made at first start and signed now; a damaged key stops the signing, never the queue: the
    # agent runs on and says why in `status` and `doctor`, rather than crash-looping under its service.
    await receipts.sign_checkpoint(station)
    at_stop.push_async_callback(receipts.sign_checkpoint, station)
    await stack.enter_async_context(station.monitor)
    flushing = asyncio.create_task(flusher.run(), name="flusher")
    stack.push_async_callback(cancel, flushing)
    await resumptions.start(db)
    await _mcp_listing(stack, station, catalog)
    await _housekeeping(stack, station)
    if settings.fleet.url:
        await _fleet(stack, station)
    return station


async def _mcp_listing(stack: Stack, station: AgentStation, catalog: McpCatalog) -> None:
    """Offer the MCP servers' tools as last listed at once, then list them again in the
    background: now (stdio servers, and remote ones when online) and each time we come online."""
    from waystation.station.background import cancel

    if not catalog.servers:
        return
    await catalog.load()

    async def refresh(online: bool) -> None:
        await catalog.refresh(online=online)

    def listing(online: bool) -> None:
        task = asyncio.create_task(refresh(online), name="mcp listing")
        stack.push_async_callback(cancel, task)

    listing(station.monitor.state == "online")
    station.announcer.listen(
        "connectivity", lambda change: listing(True) if change["state"] == "online" else None
    )


async def _housekeeping(stack: Stack, station: AgentStation) -> None:
    from waystation.station.housekeeping import Housekeeping

    housekeeping = Housekeeping(station, station.flusher)
    housekeeping.start()
    stack.callback(housekeeping.stop)
    station.announcer.listen("receipt", housekeeping.receipt_written)
    await housekeeping.expire()


async def _fleet(stack: Stack, station: AgentStation) -> None:
    """The outbox, the host's status and its work, over one hub connection (station/fleet.py)."""
    from waystation.adapters.fleet.hub import Hub
    from waystation.adapters.fleet.outbox import Outbox
    from waystation.config import fleet_host
    from waystation.station.fleet import Fleet

    host = fleet_host(station.settings.fleet)
    hub = Hub(station.settings.fleet, name=f"waystation {host}", inbox=f"_INBOX_{host}")
    fleet = Fleet(station, hub, Outbox(station.db, hub, host), host)
    hub.on_reconnect = fleet.reconnected
    announcer = station.announcer
    announcer.listen("connectivity", fleet.connectivity_changed)
    announcer.listen("receipt", fleet.receipt_written)
    announcer.listen("task", fleet.task_changed)
    await fleet.start()
    stack.push_async_callback(fleet.stop)  # before the database closes


async def build_fleet_console(stack: Stack, paths: Paths, settings: Settings, name: str) -> FleetConsole:
    """What a fleet command needs, with no agent and no database: a quiet hub for this one command
    (closed with the stack) and the tools, to check work as the hosts will."""
    from waystation.adapters.fleet.hub import Hub
    from waystation.config import check_fleet_creds

    if not settings.fleet.url:
        raise ConfigError("fleet.url", "no hub is set: set [fleet] url (or WAYSTATION_FLEET__URL)")
    check_fleet_creds(settings.fleet)
    hub = Hub(settings.fleet, name=name, quiet=True)
    stack.push_async_callback(hub.close)
    return FleetConsole(paths, settings, hub, default_tools())


async def _mark_at_stop(db: Database) -> None:
    """The clocks at stop, after the last task settled: what the next start compares against."""
    from waystation.queue import clock

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
) -> tuple[TurnStation, Deliveries, McpCatalog]:
    """The components a turn needs (the monitor not yet started), and the tools' deliveries."""
    from waystation import logs
    from waystation.adapters.connectivity.monitor import ConnectivityMonitor
    from waystation.adapters.routes import Router
    from waystation.adapters.routes.local import LocalRoute
    from waystation.adapters.tools import new_client
    from waystation.secrets import SecretResolver
    from waystation.station.delivery import Deliveries
    from waystation.station.turns.engine import TurnEngine

    monitor = ConnectivityMonitor(settings.connectivity, watch_os_events=watch_os_events)
    announcer = _announcer(stack, connectivity=monitor.state)
    monitor.listen(announcer.connectivity_changed)
    client = new_client()
    stack.push_async_callback(client.aclose)
    secrets = SecretResolver(settings, paths.config_file, found=logs.redact_too)
    tools = default_tools(secrets, settings.tools.allow_hosts)
    mcp_calls = McpCallTool(settings.mcp_servers, secrets)
    tools.add(mcp_calls)
    catalog = McpCatalog(db, tools, mcp_calls)
    deliveries = Deliveries(tools, client, settings.queue.delivery_timeout_s)
    models = ModelStore(paths.models)
    router = Router(
        LocalRoute(settings.model, models=models, states_dir=paths.model_state),
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
    return station, deliveries, catalog
