"""The wall clock the queue's deadlines are written in, and noticing that it was set.

A task's next attempt, expiry and lease are wall-clock times. A wall clock that is *set* (NTP
reaching a board with no real-time clock that booted days behind, an operator correcting a clock
that ran days ahead) would expire work, or hold its retries, for time nobody lived through. Setting
the clock does not move the kernel's monotonic clock, so a set shows as a change of the offset
between the two; the deadlines move with it.

While the agent runs, station/housekeeping.py's ClockWatch compares that offset each minute. Across a stop,
the database keeps a mark: the wall time, the monotonic time and the boot they belong to, written
with every sweep and at stop (as journald stamps each entry with its realtime and monotonic times
and the boot id, so times can be compared across clock changes). At the next start, on the same
boot, the offset's change since the mark is the set. After a reboot monotonic time started again,
so only a wall clock found *behind* the last mark is known to have been set, back by at least that
much; a clock ahead of it may only show real downtime, and is taken as such.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from waystation import timeutil
from waystation.db import Database

CLOCK_JUMP_S = 120.0  # wall time moved this much more (or less) than time passed: it was set
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")  # Linux: a new one at every boot


@dataclass(frozen=True)
class ClockMark:
    wall: float  # epoch seconds
    monotonic: float  # seconds since boot, suspended time included where the kernel counts it
    boot: str | None  # the boot both belong to; None where the system does not say


def read_mark() -> ClockMark:
    """The clocks now."""
    try:
        boot: str | None = BOOT_ID.read_text().strip() or None
    except OSError:
        boot = None
    # CLOCK_BOOTTIME goes on while the machine sleeps: a laptop suspended while the agent was
    # stopped lived through that time, and work that expired meanwhile did expire.
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    monotonic = time.clock_gettime(boottime) if boottime is not None else time.monotonic()
    return ClockMark(timeutil.now(), monotonic, boot if boottime is not None else None)


def set_while_away(then: ClockMark, now: ClockMark) -> float:
    """Seconds the wall clock was set forward (negative: back) between two marks; 0 when it was
    not, or when that cannot be known."""
    if then.boot is not None and then.boot == now.boot:
        moved = (now.wall - now.monotonic) - (then.wall - then.monotonic)
    else:  # another boot: monotonic time restarted; a wall clock behind the mark was surely set
        moved = min(0.0, now.wall - then.wall)
    return moved if abs(moved) >= CLOCK_JUMP_S else 0.0


async def keep_mark(db: Database, mark: ClockMark, moved: float = 0.0) -> int:
    """Record `mark`; with `moved` (a set seen while running), move the deadlines by as much in the
    same transaction, so the mark always says which clock the deadlines are in. Tasks moved."""

    def op(conn: sqlite3.Connection) -> int:
        count = _shift(conn, moved) if moved else 0
        _store(conn, mark)
        return count

    return await db.write(op)


async def rebase_after_stop(db: Database, now: ClockMark) -> tuple[float, int]:
    """At start: the wall clock set while no agent ran moves the deadlines with it; (seconds, tasks
    moved). The first start has no mark: nothing to compare, nothing moved."""

    def op(conn: sqlite3.Connection) -> tuple[float, int]:
        row = conn.execute("SELECT wall, monotonic, boot FROM clock_mark WHERE id = 1").fetchone()
        moved = set_while_away(ClockMark(*row), now) if row else 0.0
        count = _shift(conn, moved) if moved else 0
        _store(conn, now)
        return moved, count

    return await db.write(op)


def _shift(conn: sqlite3.Connection, seconds: float) -> int:
    """Move the retry time, expiry and lease of every unsettled task by `seconds`."""
    return conn.execute(
        "UPDATE tasks SET next_attempt_at = next_attempt_at + ?, expires_at = expires_at + ?,"
        " lease_expires_at = lease_expires_at + ? WHERE state IN ('pending', 'running')",
        (seconds, seconds, seconds),
    ).rowcount


def _store(conn: sqlite3.Connection, mark: ClockMark) -> None:
    conn.execute(
        "INSERT INTO clock_mark (id, wall, monotonic, boot) VALUES (1, ?, ?, ?) ON CONFLICT (id) DO"
        " UPDATE SET wall = excluded.wall, monotonic = excluded.monotonic, boot = excluded.boot",
        (mark.wall, mark.monotonic, mark.boot),
    )
