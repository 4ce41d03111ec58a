"""Parked turns resume in the background once every task they parked has settled.

The agent listens for settled tasks (`task_changed`), and at start picks up turns whose tasks
settled while it was down or whose resumption a stop cut short. A resumption writes its own
receipt (the engine announces it); stopping cancels the ones running, and each still writes
its "interrupted" receipt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import structlog

from waystation.db import Database
from waystation.errors import WaystationError
from waystation.queue.policy import SETTLED
from waystation.station.background import Background
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.records import parked_turns_ready, recover_turns

log = structlog.get_logger(__name__)

# Resumptions running at once. A returning network settles many parked turns together, and each
# resumed turn's time limit starts when it resumes: 24 resumed at once behind one model timed out
# waiting for it. Two keep the model busy (one generating, the next ready) while the rest stay
# `parked`, their time not yet counting.
RESUMING_AT_ONCE = 2


class Resumptions:
    def __init__(self, turns: TurnEngine, background: Background) -> None:
        self._turns = turns
        self._background = background
        self._slots = asyncio.Semaphore(RESUMING_AT_ONCE)

    def task_changed(self, task: Mapping[str, Any]) -> None:
        """A listener for announced tasks: the last settled task of a turn resumes it."""
        turn_id = task.get("turn_id")
        if turn_id and task.get("state") in SETTLED:
            self.resume_soon(str(turn_id))

    async def start(self, db: Database) -> None:
        """Settle what the last run left (cut-short resumptions are parked again, turns it was
        running are interrupted), then resume the turns whose tasks have settled."""
        await recover_turns(db)
        for turn_id in await parked_turns_ready(db):
            self.resume_soon(turn_id)

    def resume_soon(self, turn_id: str) -> None:
        self._background.spawn(self._resume(turn_id), name=f"resume-{turn_id}")

    async def _resume(self, turn_id: str) -> None:
        try:
            async with self._slots:
                await self._turns.resume(turn_id)  # the engine announces it
        except WaystationError as exc:
            log.warning("resumed turn failed", turn_id=turn_id, error=exc.message)
