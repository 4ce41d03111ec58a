"""The task store's reads: one task, a listing, the counts, when the next task falls due. Kept
apart from the writes (store.py), which lease, settle and recover tasks under the write lock; these
only query, through the database's readers, and never change a row."""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Collection
from typing import Any

from waystation.db import Database
from waystation.errors import NotFound
from waystation.queue.policy import TaskState
from waystation.queue.tasks import SUMMARY_COLUMNS, Task

# Tools whose transfer size cannot be known ahead (a download): held back on a metered connection.
UNSIZED_TOOLS = ("web_fetch",)


# Tasks a flusher may take: pending ones, and running ones whose destination holds them as its
# own task (remote_task) that no delivery holds now (no lease): they wait to be asked after.
DUE = "(state = 'pending' OR (state = 'running' AND remote_task IS NOT NULL AND lease_expires_at IS NULL))"
# Of those, the ones waiting on their destination's own task.
WAITING_REMOTE = "state = 'running' AND remote_task IS NOT NULL AND lease_expires_at IS NULL"


def hold_back(hold_back_bytes: int | None) -> tuple[str, tuple[Any, ...]]:
    """A WHERE fragment excluding unsized tasks and those with args over `hold_back_bytes` bytes."""
    if hold_back_bytes is None:
        return "", ()
    marks = ", ".join("?" for _ in UNSIZED_TOOLS)
    sql = f" AND tool NOT IN ({marks}) AND length(CAST(args AS BLOB)) <= ?"
    return sql, (*UNSIZED_TOOLS, hold_back_bytes)


def load_task(conn: sqlite3.Connection, task_id: str) -> Task:
    """One task read inside a write transaction (NotFound when there is none)."""
    row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        raise NotFound("task", task_id)
    return Task.from_row(row)


class TaskReads:
    """The queries of TaskStore, which subclasses this with the writes."""

    db: Database

    async def get(self, task_id: str) -> Task:
        row = await self.db.fetchone("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if row is None:
            raise NotFound("task", task_id)
        return Task.from_row(row)

    async def list(self, state: TaskState | None = None, limit: int = 100) -> list[Task]:
        """Tasks as lists show them, newest first: their args and result cut to the listed
        fields in SQL (`get` has the whole task)."""
        where, params = ("WHERE state = ?", (str(state),)) if state is not None else ("", ())
        rows = await self.db.fetchall(
            f"SELECT {SUMMARY_COLUMNS} FROM tasks {where} ORDER BY created_at DESC LIMIT ?", (*params, limit)
        )
        return [Task.from_summary_row(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        rows = await self.db.fetchall("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        counts = {str(s): 0 for s in TaskState}
        counts.update({state: n for state, n in rows})
        return counts

    async def next_due_at(
        self, *, hold_back_bytes: int | None = None, skip_hosts: Collection[str] = ()
    ) -> float | None:
        """When the next pending task falls due, ignoring those `hold_back_bytes` holds back and
        those bound for `skip_hosts` (hosts the flusher is leaving alone for now)."""
        held_sql, held_params = hold_back(hold_back_bytes)
        skip_sql = f" AND host NOT IN ({', '.join('?' for _ in skip_hosts)})" if skip_hosts else ""
        soonest: list[float] = []
        for which in ("state = 'pending'", WAITING_REMOTE):  # each its own MIN: an index's first row
            row = await self.db.fetchone(
                f"SELECT MIN(next_attempt_at) FROM tasks WHERE {which}{held_sql}{skip_sql}",
                (*held_params, *skip_hosts),
            )
            if row is not None and row[0] is not None:
                soonest.append(row[0])
        return min(soonest, default=None)

    async def oldest_pending_at(self) -> float | None:
        """When the oldest pending task was created (None when none is pending)."""
        row = await self.db.fetchone("SELECT MIN(created_at) FROM tasks WHERE state = 'pending'")
        return row[0] if row else None

    async def for_turn(self, turn_id: str) -> builtins.list[Task]:
        rows = await self.db.fetchall("SELECT * FROM tasks WHERE turn_id = ? ORDER BY created_at", (turn_id,))
        return [Task.from_row(r) for r in rows]
