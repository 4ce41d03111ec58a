"""Scheduled housekeeping on apscheduler's asyncio scheduler: expiry, lease reaping, WAL checkpoints,
retention of settled tasks (rows compacted, receipts kept) and of finished turns (their
conversations dropped, rows and receipts kept), and signed checkpoints of the receipts
(every 1,000 receipts or 10 minutes, whichever comes first, and at start and stop).

Each job is a plain coroutine method so it can be tested without the scheduler; the scheduler
only decides when. Intervals are minutes apart: an idle agent should stay asleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from waystation import timeutil
from waystation.errors import DatabaseError
from waystation.queue import clock
from waystation.queue.clock import CLOCK_JUMP_S
from waystation.queue.flusher import Flusher
from waystation.station import Station
from waystation.station.ops import receipts, turns

log = structlog.get_logger(__name__)

EXPIRY_INTERVAL_S = 60
REAP_INTERVAL_S = 60
CHECKPOINT_INTERVAL_S = 600
COMPACT_INTERVAL_S = 6 * 3600
SIGN_INTERVAL_S = 600
RECEIPTS_PER_SIGNING = 1000


class ClockWatch:
    """Notices the wall clock being set (NTP reaching a board without a real-time clock that
    booted days behind): the difference between wall and monotonic time moves at once."""

    def __init__(
        self,
        wall: Callable[[], float] = lambda: timeutil.now(),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall, self._monotonic = wall, monotonic
        self._offset = wall() - monotonic()

    def jump(self) -> float:
        """Seconds the wall clock was set forward (negative: back) since the last look; 0 for
        the drift and slewing of a clock that was not set."""
        offset = self._wall() - self._monotonic()
        moved, self._offset = offset - self._offset, offset
        return moved if abs(moved) >= CLOCK_JUMP_S else 0.0


class Housekeeping:
    def __init__(self, station: Station, flusher: Flusher, clock: ClockWatch | None = None) -> None:
        self._station = station
        self._flusher = flusher
        self._clock = clock or ClockWatch()
        self._scheduler = AsyncIOScheduler()
        self._unsigned = 0  # receipts announced since the last signed checkpoint
        self._signing: asyncio.Task[int | None] | None = None

    def start(self) -> None:
        add = self._scheduler.add_job
        add(self.expire, "interval", seconds=EXPIRY_INTERVAL_S, id="expire", coalesce=True, max_instances=1)
        add(self.reap, "interval", seconds=REAP_INTERVAL_S, id="reap", coalesce=True, max_instances=1)
        add(self.checkpoint, "interval", seconds=CHECKPOINT_INTERVAL_S, id="checkpoint", coalesce=True)
        add(self.compact, "interval", seconds=COMPACT_INTERVAL_S, id="compact", coalesce=True)
        add(self.sign, "interval", seconds=SIGN_INTERVAL_S, id="sign", coalesce=True, max_instances=1)
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def expire(self) -> int:
        """Pending tasks past retention become `expired` with a tombstone receipt each; first,
        a wall clock that was set moves the deadlines of unsettled tasks with it, so time the
        agent did not live through neither expires work nor makes every retry due."""
        try:
            jump = self._clock.jump()
            # The mark, written each time, lets the next start see a clock set while it was stopped.
            moved = await clock.keep_mark(self._station.db, clock.read_mark(), jump)
            if jump:
                log.warning(
                    "the wall clock was set; deadlines moved with it", seconds=round(jump), tasks=moved
                )
                self._flusher.wake()
            expired = await self._station.store.expire_due()
        except DatabaseError as exc:
            log.error("expiry sweep failed", error=exc.message)
            return 0
        for task, receipt in expired:
            log.info("task expired", task_id=task.id)
            self._station.announcer.task_changed(task.to_json(), receipt)
        return len(expired)

    async def reap(self) -> int:
        """Leases that outlived their delivery are abandoned: those tasks go back to pending."""
        try:
            reclaimed = await self._station.store.recover(keep=self._flusher.held())
        except DatabaseError as exc:
            log.error("lease reaping failed", error=exc.message)
            return 0
        if reclaimed:
            log.warning("reclaimed abandoned leases", count=reclaimed)
            self._flusher.wake()
        return reclaimed

    async def checkpoint(self) -> None:
        try:
            await self._station.db.checkpoint()
        except DatabaseError as exc:
            log.error("WAL checkpoint failed", error=exc.message)

    async def compact(self) -> int:
        """Settled task rows older than the retention period are deleted, and finished turns'
        conversations dropped (each turn's row stays, as it shows); their receipts stay."""
        older_than_s = self._station.settings.queue.retention_days * 86400
        try:
            compacted = await self._station.store.compact_settled(older_than_s)
            compacted_turns = await turns.compact(self._station, older_than_s)
        except DatabaseError as exc:
            log.error("compaction of settled tasks and finished turns failed", error=exc.message)
            return 0
        log.info("compacted settled tasks and finished turns", tasks=compacted, turns=compacted_turns)
        return compacted + compacted_turns

    def receipt_written(self, _receipt: Mapping[str, Any]) -> None:
        """Listens for receipts announced: the 1,000th since the last checkpoint signs one."""
        self._unsigned += 1
        if self._unsigned >= RECEIPTS_PER_SIGNING and self._signing is None:
            self._signing = asyncio.create_task(self.sign(), name="sign-checkpoint")
            self._signing.add_done_callback(lambda _: setattr(self, "_signing", None))

    async def sign(self) -> int | None:
        """Sign the receipt tree and keep it as the state directory's checkpoint (the one signing
        function: ops.receipts.sign_checkpoint)."""
        self._unsigned = 0
        return await receipts.sign_checkpoint(self._station)
