"""The agent at a glance: status, routes, connectivity (read and forced), metrics."""

from __future__ import annotations

import time
from typing import cast, get_args

from waystation import contract, timeutil
from waystation.adapters.connectivity.monitor import Mode
from waystation.errors import MalformedRequest
from waystation.station import AgentStation, TurnStation
from waystation.station.metrics import render_metrics
from waystation.station.turns import records


async def status(station: TurnStation) -> contract.Status:
    return {
        "version": station.version,
        "uptime_s": round(time.monotonic() - station.started, 3),
        "connectivity": station.monitor.snapshot(),
        "queue": cast(contract.QueueCounts, await station.store.counts()),  # one count per state
        "turns": await records.count_turns(station.db),
        "model": station.router.local.model_status(),
        "routes": await station.router.statuses(),
        "signing": _signing(station),
        "listen": station.settings.agent.listen or None,
    }


def _signing(station: TurnStation) -> contract.Signing:
    """Whether checkpoints are signed and kept; the reason when they are not."""
    error = station.signing_error or station.checkpoint_error
    return {"ok": error is None, "error": error}


async def routes(station: TurnStation) -> list[contract.Route]:
    return await station.router.statuses()


def connectivity(station: TurnStation) -> contract.Connectivity:
    return station.monitor.snapshot()


def set_connectivity(station: TurnStation, mode: object) -> contract.Connectivity:
    """Force online/offline ("airplane mode"), or follow the network again (auto)."""
    modes = get_args(Mode)
    if mode not in modes:
        raise MalformedRequest(f"mode must be one of {', '.join(modes)}")
    station.monitor.set_mode(cast(Mode, mode))
    return station.monitor.snapshot()


async def metrics(station: AgentStation) -> str:
    """The Prometheus exposition text, queue depth and connectivity read at scrape time."""
    oldest = await station.store.oldest_pending_at()
    waited = 0.0 if oldest is None else max(0.0, timeutil.now() - oldest)
    return render_metrics(
        await station.store.counts(),
        station.monitor.state,
        station.announcer.metrics,
        waited,
        station.router.local.drafts(),
        station.router.local.saved_states(),
    )
