"""Scheduled housekeeping on a real database: expiry, lease reaping, WAL checkpoints, compaction.

Each job is called directly (the scheduler only decides when), on a station holding a real
database and store, the shipped RecordingAnnouncer, and a stand-in flusher (`held()`, `wake()`).
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from waystation import timeutil
from waystation.adapters.models.store import ModelStore
from waystation.adapters.tools import default_tools
from waystation.config import Paths, QueueSettings, Settings
from waystation.db import Database
from waystation.queue import clock as clock_module
from waystation.queue.clock import ClockMark, set_while_away
from waystation.queue.flusher import Flusher
from waystation.queue.policy import Decision, TaskState, classify, decide
from waystation.queue.store import LEASE_MARGIN_S, TaskStore
from waystation.queue.tasks import NewTask, Task
from waystation.receipts.chain import verify_database
from waystation.station import Station
from waystation.station import housekeeping as jobs
from waystation.station.announce import Announcer
from waystation.station.housekeeping import Housekeeping
from waystation.station.turns.records import TurnRow, save_turn
from waystation.testing import RecordingAnnouncer

SETTINGS = QueueSettings()
RETENTION_S = SETTINGS.retention_days * 86400
T0 = 1_800_000_000.0


class StubFlusher:
    """What the reaper asks of the flusher: the task ids it still holds, and a nudge."""

    def __init__(self, held: frozenset[str] = frozenset()) -> None:
        self.holding = held
        self.wakes = 0

    def held(self) -> frozenset[str]:
        return self.holding

    def wake(self) -> None:
        self.wakes += 1


@pytest.fixture
def announced() -> RecordingAnnouncer:
    return RecordingAnnouncer()


@pytest.fixture
def station(db: Database, tmp_path: Path, announced: RecordingAnnouncer) -> Station:
    """What the jobs touch, real (database, store, settings), announcing to a recorder."""
    paths = Paths.resolve({"WAYSTATION_HOME": str(tmp_path)})
    return Station(
        paths,
        Settings(),
        db,
        TaskStore(db, SETTINGS),
        default_tools(),
        cast(Announcer, announced),
        models=ModelStore(paths.models),
    )


@pytest.fixture
def flusher() -> StubFlusher:
    return StubFlusher()


@pytest.fixture
def housekeeping(station: Station, flusher: StubFlusher) -> Housekeeping:
    # These tests move the wall clock to stand for time passing, so the clock watch is told that
    # monotonic time passes with it (a wall clock that was *set* is the test at the end).
    steady = jobs.ClockWatch(wall=lambda: timeutil.now(), monotonic=lambda: timeutil.now())
    return Housekeeping(station, cast(Flusher, flusher), steady)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A wall clock the test moves by hand: clock[0] is now."""
    now = [T0]
    monkeypatch.setattr(timeutil, "now", lambda: now[0])
    return now


def _new(n: int, **kw: Any) -> NewTask:
    host = "api.example.test"
    args = {"method": "POST", "url": f"https://{host}/hook/{n}", "json": {"n": n}}
    return NewTask(tool="http_request", args=args, host=host, **kw)


def _decision(task: Task, status: int, now: float) -> Decision:
    return decide(
        outcome=classify(status),
        status=status,
        attempts=task.attempts,
        net_failures=task.net_failures,
        now=now,
        settings=SETTINGS,
        rng=random.Random(1),
    )


async def _lease(store: TaskStore, *ids: str) -> dict[str, Task]:
    leased = {t.id: t for t in await store.lease(1000, {}, 1000)}
    assert set(ids) <= set(leased)
    others = [i for i in leased if i not in ids]
    if others:
        await store.release(others)
    return {i: leased[i] for i in ids}


async def _states(db: Database) -> dict[str, str]:
    return {r[0]: r[1] for r in await db.fetchall("SELECT id, state FROM tasks")}


async def _receipt_task_ids(db: Database) -> list[str]:
    rows = await db.fetchall("SELECT task_id FROM receipts WHERE task_id IS NOT NULL ORDER BY seq")
    return [r[0] for r in rows]


def _size(path: Path) -> int:
    """A file's size (0 if missing), outside the async tests so the event loop rule holds."""
    return path.stat().st_size if path.exists() else 0


# --- expire ---------------------------------------------------------------------------------------


async def test_expire_tombstones_overdue_pending_tasks(
    housekeeping: Housekeeping,
    station: Station,
    announced: RecordingAnnouncer,
    db: Database,
    clock: list[float],
) -> None:
    store = station.store
    soon_a, _ = await store.enqueue(_new(1, expires_at=T0 + 60))
    soon_b, _ = await store.enqueue(_new(2, expires_at=T0 + 90))
    later, _ = await store.enqueue(_new(3, expires_at=T0 + 3600))
    running, _ = await store.enqueue(_new(4, expires_at=T0 + 60))
    await _lease(store, running.id)

    assert await housekeeping.expire() == 0
    clock[0] = T0 + 120
    assert await housekeeping.expire() == 2

    states = await _states(db)
    assert states == {
        soon_a.id: "expired",
        soon_b.id: "expired",
        later.id: "pending",
        running.id: "running",  # only pending tasks expire; a delivery in flight is left alone
    }
    # One tombstone receipt per expired task, announced with it; the chain still verifies.
    assert sorted(await _receipt_task_ids(db)) == sorted([soon_a.id, soon_b.id])
    assert {t["id"] for t, _ in announced.tasks} == {soon_a.id, soon_b.id}
    for task, receipt in announced.tasks:
        assert task["state"] == "expired"
        assert receipt is not None and receipt["task_id"] == task["id"] and receipt["status"] == "error"
    verification = await verify_database(db)
    assert verification.ok and verification.count == 2

    # A second sweep finds nothing new: no duplicate tombstones.
    assert await housekeeping.expire() == 0
    assert len(await _receipt_task_ids(db)) == 2


# --- reap -----------------------------------------------------------------------------------------


async def test_reap_reclaims_expired_leases_but_keeps_held_ones(
    housekeeping: Housekeeping, station: Station, flusher: StubFlusher, db: Database, clock: list[float]
) -> None:
    store = station.store
    a, _ = await store.enqueue(_new(1))
    b, _ = await store.enqueue(_new(2))
    held, _ = await store.enqueue(_new(3))
    await _lease(store, a.id, b.id, held.id)
    flusher.holding = frozenset({held.id})

    # Leases still live: nothing is abandoned, and the flusher is not woken.
    assert await housekeeping.reap() == 0
    assert flusher.wakes == 0

    clock[0] = T0 + SETTINGS.delivery_timeout_s + LEASE_MARGIN_S + 1
    assert await housekeeping.reap() == 2
    assert flusher.wakes == 1
    assert await _states(db) == {a.id: "pending", b.id: "pending", held.id: "running"}
    reclaimed = await store.get(a.id)
    assert reclaimed.lease_expires_at is None and reclaimed.next_attempt_at == clock[0]

    assert await housekeeping.reap() == 0
    assert flusher.wakes == 1


# --- checkpoint -----------------------------------------------------------------------------------


async def test_checkpoint_truncates_the_wal(
    housekeeping: Housekeeping, station: Station, db: Database
) -> None:
    wal = Path(f"{db.path}-wal")
    for n in range(50):
        await station.store.enqueue(_new(n))
    assert _size(wal) > 0

    await housekeeping.checkpoint()
    assert _size(wal) == 0
    # The data is all in the main file now, and the database keeps working after it.
    assert (await station.store.counts())["pending"] == 50
    await station.store.enqueue(_new(1000))
    assert _size(wal) > 0
    await housekeeping.checkpoint()
    assert _size(wal) == 0


# --- compact --------------------------------------------------------------------------------------


async def test_compact_removes_only_old_settled_rows_and_keeps_receipts(
    housekeeping: Housekeeping, station: Station, db: Database, clock: list[float]
) -> None:
    store = station.store
    done, _ = await store.enqueue(_new(1))
    dead, _ = await store.enqueue(_new(2))
    cancelled, _ = await store.enqueue(_new(3))
    expired, _ = await store.enqueue(_new(4, expires_at=T0 + 1))
    pending, _ = await store.enqueue(_new(5, expires_at=T0 + 100 * RETENTION_S))
    running, _ = await store.enqueue(_new(6, expires_at=T0 + 100 * RETENTION_S))
    leased = await _lease(store, done.id, dead.id, running.id)
    await store.settle(leased[done.id], _decision(leased[done.id], 200, T0), {"status": 200}, 5)
    await store.settle(leased[dead.id], _decision(leased[dead.id], 404, T0), {"status": 404}, 5)
    await store.cancel(cancelled.id)
    clock[0] = T0 + 2
    assert await housekeeping.expire() == 1

    # Past retention for those, but one task settles just now: it is recent and stays.
    clock[0] = T0 + RETENTION_S + 60
    recent, _ = await store.enqueue(_new(7))
    await store.cancel(recent.id)
    receipts_before = await _receipt_task_ids(db)
    assert sorted(receipts_before) == sorted([done.id, dead.id, cancelled.id, expired.id, recent.id])

    assert await housekeeping.compact() == 4
    assert await _states(db) == {pending.id: "pending", running.id: "running", recent.id: "cancelled"}
    # Receipts are the audit: every one stays, and the chain still verifies.
    assert await _receipt_task_ids(db) == receipts_before
    verification = await verify_database(db)
    assert verification.ok and verification.count == 5

    assert await housekeeping.compact() == 0
    # Much later still, the recent one goes too; pending and running rows never do.
    clock[0] += RETENTION_S + 60
    assert await housekeeping.compact() == 1
    assert await _states(db) == {pending.id: "pending", running.id: "running"}
    assert await _receipt_task_ids(db) == receipts_before


async def test_compact_drops_old_finished_turns_conversations_not_parked_ones(
    housekeeping: Housekeeping, db: Database, clock: list[float]
) -> None:
    conversation = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    for turn_id, state in (("turn_done", "ok"), ("turn_parked", "parked")):
        row = TurnRow(state, {"prompt": "hello"}, conversation, text="hi")
        await db.write(lambda conn, i=turn_id, r=row: save_turn(conn, i, r))
    clock[0] = T0 + RETENTION_S + 60
    assert await housekeeping.compact() == 1  # issue 20, item 12: turns too, not only tasks
    kept = {r["id"]: r["messages"] for r in await db.fetchall("SELECT id, messages FROM turns")}
    assert kept == {"turn_done": "[]", "turn_parked": json.dumps(conversation)}


async def test_compact_settled_is_bounded_per_call(station: Station, clock: list[float]) -> None:
    store = station.store
    ids = []
    for n in range(5):
        task, _ = await store.enqueue(_new(n))
        await store.cancel(task.id)
        ids.append(task.id)
    clock[0] = T0 + 3600
    assert await store.compact_settled(60, limit=2) == 2
    assert await store.compact_settled(60, limit=2) == 2
    assert await store.compact_settled(60, limit=2) == 1
    assert await store.compact_settled(60, limit=2) == 0
    assert await store.counts() == {str(s): 0 for s in TaskState}


async def test_compact_uses_the_configured_retention(
    housekeeping: Housekeeping, station: Station, clock: list[float]
) -> None:
    station.settings = Settings(queue=QueueSettings(retention_days=1.0))
    task, _ = await station.store.enqueue(_new(1))
    await station.store.cancel(task.id)
    clock[0] = T0 + 86400 - 60
    assert await housekeeping.compact() == 0
    clock[0] = T0 + 86400 + 60
    assert await housekeeping.compact() == 1


# --- the scheduler --------------------------------------------------------------------------------


async def test_start_registers_jobs_and_stop_shuts_down(housekeeping: Housekeeping) -> None:
    scheduler = housekeeping._scheduler
    housekeeping.start()
    try:
        assert scheduler.running
        scheduled = {job.id: job for job in scheduler.get_jobs()}
        assert set(scheduled) == {"expire", "reap", "checkpoint", "compact", "sign"}
        intervals = {i: job.trigger.interval.total_seconds() for i, job in scheduled.items()}
        assert intervals == {
            "expire": jobs.EXPIRY_INTERVAL_S,
            "reap": jobs.REAP_INTERVAL_S,
            "checkpoint": jobs.CHECKPOINT_INTERVAL_S,
            "compact": jobs.COMPACT_INTERVAL_S,
            "sign": jobs.SIGN_INTERVAL_S,
        }
        assert scheduled["compact"].func == housekeeping.compact
        # Nothing is due right away: an idle agent stays asleep until the first interval passes.
        started = datetime.now(UTC)
        for job_id, job in scheduled.items():
            assert job.next_run_time > started + timedelta(seconds=intervals[job_id] - 5)
        await asyncio.sleep(0)
    finally:
        housekeeping.stop()
    # AsyncIOScheduler shuts down on the loop's next turn (call_soon_threadsafe), not in stop().
    await asyncio.sleep(0)
    assert not scheduler.running
    assert getattr(scheduler, "_timeout", None) is None  # its wakeup timer is cancelled
    housekeeping.stop()  # a second stop is harmless
    await asyncio.sleep(0)  # the loop keeps running normally afterwards


# --- the wall clock being set ---------------------------------------------------------------------


async def test_a_wall_clock_set_days_forward_moves_deadlines_instead_of_expiring_work(
    station: Station, flusher: StubFlusher, clock: list[float]
) -> None:
    """A board without a real-time clock boots days behind, parks work, then NTP sets the time:
    the time the agent did not live through expires nothing and makes no retry due."""
    monotonic = [100.0]
    watch = jobs.ClockWatch(wall=lambda: clock[0], monotonic=lambda: monotonic[0])
    housekeeping = Housekeeping(station, cast(Flusher, flusher), watch)
    task, _ = await station.store.enqueue(_new(1))
    days = 10 * 86400.0
    clock[0] += days + 1.0  # NTP: ten days forward at once, one second after the last look
    monotonic[0] += 1.0
    assert await housekeeping.expire() == 0
    after = await station.store.get(task.id)
    assert after.state == TaskState.PENDING and after.expires_at == task.expires_at + days
    assert after.next_attempt_at == task.next_attempt_at + days and flusher.wakes == 1
    # Time that really passes still counts: past retention, it expires.
    clock[0] += RETENTION_S + 1
    monotonic[0] += RETENTION_S + 1
    assert await housekeeping.expire() == 1


# --- the wall clock set while the agent was stopped ------------------------------------------------

DAY = 86400.0


async def _park_and_stop(station: Station, clock: list[float], boot: str = "boot-1") -> list[Task]:
    """Three tasks parked, one of them waiting out a backoff; then the agent stops (its mark)."""
    tasks = [(await station.store.enqueue(_new(n)))[0] for n in range(3)]
    (leased,) = (await _lease(station.store, tasks[0].id)).values()
    await station.store.settle(leased, _decision(leased, 503, clock[0]), None, 5)
    clock[0] += 10.0
    await clock_module.keep_mark(station.db, ClockMark(clock[0], 5000.0, boot))
    return [await station.store.get(t.id) for t in tasks]


async def _start(station: Station, housekeeping: Housekeeping, now: ClockMark, clock: list[float]) -> int:
    """The next start, its clock at `now`: the re-base, then the first expiry sweep."""
    clock[0] = now.wall
    await clock_module.rebase_after_stop(station.db, now)
    return await housekeeping.expire()


async def test_a_clock_set_forward_while_stopped_expires_nothing_at_the_next_start(
    station: Station, housekeeping: Housekeeping, clock: list[float]
) -> None:
    """Parked under a clock days behind, the agent stopped, NTP set the clock, the agent started:
    3 of 3 tasks expired at once. The wall clock moved 10 days more than the minute that passed."""
    parked = await _park_and_stop(station, clock)
    set_by = RETENTION_S + 3 * DAY
    now = ClockMark(clock[0] + set_by + 60.0, 5060.0, "boot-1")
    assert await _start(station, housekeeping, now, clock) == 0
    for before in parked:
        after = await station.store.get(before.id)
        assert after.state == TaskState.PENDING and after.expires_at == before.expires_at + set_by
        assert after.next_attempt_at == before.next_attempt_at + set_by  # no retry made due early
    # The mark is now this start's: a second start in the same minute moves nothing again.
    assert await clock_module.rebase_after_stop(station.db, now) == (0.0, 0)


async def test_a_clock_set_back_while_stopped_holds_no_retry_for_the_difference(
    station: Station, housekeeping: Housekeeping, clock: list[float]
) -> None:
    """Parked under a clock a month ahead, then corrected: a backoff of seconds must not become a
    wait of a month, nor retention a month longer."""
    parked = await _park_and_stop(station, clock)
    now = ClockMark(clock[0] - 30 * DAY + 60.0, 5060.0, "boot-1")
    assert await _start(station, housekeeping, now, clock) == 0
    waiting = await station.store.get(parked[0].id)
    assert waiting.next_attempt_at == parked[0].next_attempt_at - 30 * DAY
    assert waiting.next_attempt_at - clock[0] < SETTINGS.backoff_max_s


async def test_after_a_reboot_only_a_clock_found_behind_is_known_to_be_set(
    station: Station, housekeeping: Housekeeping, clock: list[float]
) -> None:
    """Monotonic time restarts at boot: a clock ahead of the mark may be real downtime (work past
    retention expires); a clock behind it was set back, by at least the difference."""
    parked = await _park_and_stop(station, clock)
    behind = ClockMark(clock[0] - 2 * DAY, 30.0, "boot-2")
    assert await clock_module.rebase_after_stop(station.db, behind) == (-2 * DAY, 3)
    assert (await station.store.get(parked[1].id)).expires_at == parked[1].expires_at - 2 * DAY
    ahead = ClockMark(behind.wall + RETENTION_S, 30.0, "boot-3")
    assert await _start(station, housekeeping, ahead, clock) == 3  # a real week away


def test_marks_on_one_boot_tell_a_set_from_time_passing() -> None:
    then = ClockMark(T0, 100.0, "b")
    assert set_while_away(then, ClockMark(T0 + 30 * DAY, 100.0 + 30 * DAY, "b")) == 0.0  # it passed
    assert set_while_away(then, ClockMark(T0 + 60.5, 160.0, "b")) == 0.0  # drift, not a set
    assert set_while_away(then, ClockMark(T0 + DAY, 160.0, "b")) == DAY - 60.0
    assert set_while_away(then, ClockMark(T0 + DAY, 5.0, None)) == 0.0  # unknown boot, ahead
    assert set_while_away(ClockMark(T0, 100.0, None), ClockMark(T0 - DAY, 5.0, None)) == -DAY


def test_a_clock_that_only_drifts_is_not_a_jump() -> None:
    wall, monotonic = [1000.0], [5.0]
    watch = jobs.ClockWatch(wall=lambda: wall[0], monotonic=lambda: monotonic[0])
    wall[0] += 60.5
    monotonic[0] += 60.0
    assert watch.jump() == 0.0
    wall[0] -= 3600
    assert watch.jump() == -3600


async def test_a_checkpoint_is_signed_every_thousand_receipts(station: Station) -> None:
    housekeeping = Housekeeping(station, cast(Flusher, StubFlusher()))
    kept = station.paths.state / "receipts.checkpoint"
    for _ in range(jobs.RECEIPTS_PER_SIGNING - 1):
        housekeeping.receipt_written({})
    await asyncio.sleep(0)
    assert not kept.exists()
    housekeeping.receipt_written({})
    for _ in range(100):  # the signing runs as its own task
        await asyncio.sleep(0.01)
        if kept.exists():
            break
    assert kept.read_text().startswith("waystation/")
