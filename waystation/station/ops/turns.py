"""Turn operations: run one turn on its route (through the agent, or in the command line's own
process when no agent runs)."""

from __future__ import annotations

from waystation.adapters.models.base import TokenSink
from waystation.station.build import TurnStation
from waystation.station.turns.request import TurnRequest, TurnResult


async def run(station: TurnStation, request: TurnRequest, on_token: TokenSink | None = None) -> TurnResult:
    """One turn; refused, failed and parked turns end in a receipt too (see TurnEngine.run)."""
    return await station.turns.run(request, on_token)
