"""Turn operations: run a turn on its route, read turns back, wait for one to finish.

In the agent a turn runs in the background, so the caller may stop waiting (or go away) and
the turn goes on; its record says how it ended (`GET /v1/turns/{id}`, `waystation turn show`).
"""

from __future__ import annotations

import asyncio

from waystation import contract
from waystation.adapters.models.base import StageSink, TokenSink
from waystation.errors import MalformedRequest
from waystation.receipts.chain import new_id
from waystation.station import AgentStation, Station, TurnStation
from waystation.station.turns import records
from waystation.station.turns.request import TurnRequest, TurnResult


async def run(
    station: TurnStation,
    request: TurnRequest,
    on_token: TokenSink | None = None,
    on_stage: StageSink | None = None,
) -> TurnResult:
    """One turn, to its end; refused, failed and parked turns end in a receipt too."""
    return await station.turns.run(request, on_token, on_stage=on_stage)


async def start(
    station: AgentStation,
    request: TurnRequest,
    on_token: TokenSink | None = None,
    on_stage: StageSink | None = None,
) -> tuple[str, asyncio.Task[TurnResult]]:
    """Begin a turn (its record exists when this returns) and run it in the background."""
    turn_id = new_id("turn")
    progress = await station.turns.begin(turn_id, request)
    progress.on_stage = on_stage
    running = station.background.spawn(
        station.turns.drive(turn_id, request, progress, on_token), name=f"turn-{turn_id}"
    )
    return turn_id, running


async def get(station: Station, turn_id: str) -> contract.Turn:
    return await records.get_turn(station.db, turn_id)


async def list_turns(station: Station, state: str | None, limit: int) -> list[contract.Turn]:
    """Newest first."""
    if state is not None and state not in records.TURN_STATES:
        raise MalformedRequest(f"state must be one of {', '.join(records.TURN_STATES)}")
    return await records.list_turns(station.db, state, limit)


async def compact(station: Station, older_than_s: float) -> int:
    """Finished turns older than that keep what they show, not their conversation (records.py)."""
    return await records.compact_finished(station.db, older_than_s)


async def counts(station: Station) -> dict[str, int]:
    return await records.count_turns(station.db)
