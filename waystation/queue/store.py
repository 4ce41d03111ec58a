"""SQLite persistence of tasks: enqueue, lease, settle, recover (its reads: store_reads.py). It only
persists; policy decides.

Every state change that ends a task (done, dead, cancelled, expired) writes the task's receipt in
the same transaction, so a settled task without its receipt, or the reverse, cannot exist.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from waystation import contract, timeutil
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.errors import IdempotencyConflict, InvalidTransition
from waystation.queue.policy import CANCELLABLE, RETRYABLE, SETTLED, Decision, TaskState, take_per_host
from waystation.queue.store_reads import DUE, WAITING_REMOTE, TaskReads, hold_back, load_task
from waystation.queue.tasks import NewTask, Task
from waystation.receipts import chain
from waystation.receipts.chain import ReceiptDraft

# A lease outlives the delivery timeout by this margin before it counts as abandoned.
LEASE_MARGIN_S = 30.0
# A task's args as stored: compact, and in the order given (chain.canonical_json sorts keys).
_ARGS_AS_GIVEN = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class TaskStore(TaskReads):
    def __init__(self, db: Database, settings: QueueSettings) -> None:
        self.db = db
        self.settings = settings
        self._pending_hosts: set[str] | None = None  # see _hosts_with_pending

    # --- writes -------------------------------------------------------------------------------

    async def enqueue(self, new: NewTask) -> tuple[Task, bool]:
        """Park a task; (task, created). Same key and args: the existing task, created False."""
        return await self.db.write(lambda conn: self.insert(conn, new))

    def insert(self, conn: sqlite3.Connection, new: NewTask) -> tuple[Task, bool]:
        """The enqueue itself, for callers that commit it together with other writes (a turn)."""
        now = timeutil.now()
        task_id = new.task_id or chain.new_id("t")
        key = new.idempotency_key or f"waystation-{task_id}"
        # Kept as given, key order and all: a JSON body is delivered as the caller (or the user
        # whose JSON a model's write carries) wrote it, byte for byte where written compact.
        args = _ARGS_AS_GIVEN.encode(new.args)
        expires_at = new.expires_at or now + self.settings.retention_days * 86400
        values = {
            "id": task_id,
            "tool": new.tool,
            "args": args,
            "idempotency_key": key,
            "host": new.host,
            "state": "pending" if new.remote_task is None else "running",  # running: waiting on it
            "net_failures": new.net_failures,
            "last_error": new.last_error,
            "next_attempt_at": now + new.first_poll_in_s,
            "remote_task": new.remote_task,
            "created_at": now,
            "updated_at": now,
            "expires_at": expires_at,
            "turn_id": new.turn_id,
        }
        cursor = conn.execute(
            f"INSERT INTO tasks ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})"
            " ON CONFLICT (idempotency_key) DO NOTHING",
            tuple(values.values()),
        )
        if cursor.rowcount == 1:
            if self._pending_hosts is not None:
                self._pending_hosts.add(new.host)
            return load_task(conn, task_id), True
        row = conn.execute("SELECT * FROM tasks WHERE idempotency_key = ?", (key,)).fetchone()
        assert row is not None  # the conflict that stopped the insert is this row
        existing = Task.from_row(row)
        # The same args in another key order are the same task.
        same_args = chain.canonical_json(existing.args) == chain.canonical_json(new.args)
        if existing.tool != new.tool or not same_args:
            raise IdempotencyConflict(key, existing.id)
        return existing, False

    async def lease(
        self, limit: int, in_flight: Mapping[str, int], per_host: int, *, hold_back_bytes: int | None = None
    ) -> list[Task]:
        """Mark up to `limit` due tasks running, at most `per_host` in flight to any one host.

        `hold_back_bytes` (a metered connection): skip web_fetch tasks and tasks whose stored
        arguments are longer than this many bytes; they stay pending.
        """
        held_sql, held_params = hold_back(hold_back_bytes)

        def op(conn: sqlite3.Connection) -> list[Task]:
            now = timeutil.now()
            window = limit * 8
            # Only what choosing needs (id, host); the full rows are read for the chosen alone.
            # A task past its expires_at is never sent, even before the expiry job tombstones it.
            rows = _due(conn, now, held_sql, held_params, window)
            counts = dict(in_flight)
            chosen = take_per_host(rows, limit, counts, per_host)
            if len(chosen) < limit and len(rows) == window:
                # The window was all saturated hosts: look past them, host by host, so one
                # host's backlog cannot starve the others (the point of the per-host limit).
                for host in sorted(self._hosts_with_pending(conn)):
                    room = per_host - counts.get(host, 0)
                    if len(chosen) == limit:
                        break
                    if room <= 0:
                        continue
                    more = _due(conn, now, held_sql, held_params, room, host)
                    taken = set(chosen)
                    chosen += take_per_host(
                        [r for r in more if r[0] not in taken], limit - len(chosen), counts, per_host
                    )
            if not chosen:
                return []
            marks = ", ".join("?" for _ in chosen)
            full = {r["id"]: r for r in conn.execute(f"SELECT * FROM tasks WHERE id IN ({marks})", chosen)}
            lease_until = now + self.settings.delivery_timeout_s + LEASE_MARGIN_S
            conn.executemany(
                "UPDATE tasks SET state = 'running', lease_expires_at = ?, updated_at = ? WHERE id = ?",
                [(lease_until, now, task_id) for task_id in chosen],
            )
            return [
                dataclasses.replace(
                    Task.from_row(full[task_id]), state=TaskState.RUNNING, lease_expires_at=lease_until
                )
                for task_id in chosen
            ]

        return await self.db.write(op)

    def _hosts_with_pending(self, conn: sqlite3.Connection) -> set[str]:
        """Destination hosts that have pending tasks, kept in memory after one read.

        Used only on the writer thread (inside write ops). Insert and retry add to it; a host
        leaves it when a look finds no pending task for it.
        """
        if self._pending_hosts is None:
            rows = conn.execute("SELECT DISTINCT host FROM tasks WHERE state = 'pending'").fetchall()
            self._pending_hosts = {r[0] for r in rows}
        for host in list(self._pending_hosts):
            if (
                conn.execute(
                    "SELECT 1 FROM tasks WHERE host = ? AND state = 'pending' LIMIT 1", (host,)
                ).fetchone()
                is None
            ):
                self._pending_hosts.discard(host)
        return set(self._pending_hosts)

    async def settle(
        self, task: Task, decision: Decision, result: Mapping[str, Any] | None, duration_ms: int
    ) -> tuple[Task, contract.Receipt | None]:
        """Record a delivery's decision; a final state commits with its task receipt."""

        def op(conn: sqlite3.Connection) -> tuple[Task, contract.Receipt | None]:
            now = timeutil.now()
            cursor = conn.execute(
                "UPDATE tasks SET state = ?, attempts = ?, net_failures = ?, next_attempt_at = ?,"
                " lease_expires_at = NULL, last_error = ?, result = COALESCE(?, result), updated_at = ?,"
                " remote_task = COALESCE(?, remote_task) WHERE id = ? AND state = 'running' RETURNING *",
                (
                    str(decision.state),
                    decision.attempts,
                    decision.net_failures,
                    decision.next_attempt_at,
                    decision.error,
                    chain.canonical_json(result) if result is not None else None,
                    now,
                    decision.remote_task,
                    task.id,
                ),
            )
            rows = cursor.fetchall()  # the updated row itself: no second read
            if len(rows) != 1:
                # Cancelled or reclaimed while in flight: the delivery still happened, so keep
                # its answer, but the task's state is no longer ours to change.
                return load_task(conn, task.id), None
            settled = Task.from_row(rows[0])
            receipt = None
            if settled.state in SETTLED:
                receipt = chain.append(conn, _task_receipt(settled, duration_ms))
            return settled, receipt

        return await self.db.write(op)

    async def release(self, task_ids: list[str]) -> int:
        """Give leased tasks back (shutdown): they go to pending, due at once, nothing counted
        (one its destination holds as its own task stays running, to be asked after)."""

        def op(conn: sqlite3.Connection) -> int:
            cursor = conn.executemany(
                f"UPDATE tasks SET state = {_BACK}, lease_expires_at = NULL, next_attempt_at = ?,"
                " updated_at = ? WHERE id = ? AND state = 'running'",
                [(timeutil.now(), timeutil.now(), i) for i in task_ids],
            )
            return cursor.rowcount

        return await self.db.write(op)

    async def recover(self, *, all_running: bool = False, keep: frozenset[str] = frozenset()) -> int:
        """Reclaim abandoned leases (all running tasks at start: no other agent can hold one).

        `keep`: tasks this process still holds (a long delivery, a deferred turn), not abandoned.
        """

        def op(conn: sqlite3.Connection) -> int:
            now = timeutil.now()
            rows = conn.execute(
                "SELECT id FROM tasks WHERE state = 'running' AND (? OR lease_expires_at <= ?)"
                f" AND NOT ({WAITING_REMOTE})",  # held by none: waiting for its next poll already
                (all_running, now),
            ).fetchall()
            abandoned = [(now, now, r[0]) for r in rows if r[0] not in keep]
            conn.executemany(
                f"UPDATE tasks SET state = {_BACK}, lease_expires_at = NULL, next_attempt_at = ?,"
                " updated_at = ? WHERE id = ?",
                abandoned,
            )
            return len(abandoned)

        return await self.db.write(op)

    async def make_due(self, *, unreachable_only: bool = False) -> int:
        """Pending tasks become due now: all of them (a flush), or only those that lacked a network
        (connectivity is back: they should not sit out a backoff meant for an unreachable host)."""

        def op(conn: sqlite3.Connection) -> int:
            now = timeutil.now()
            cursor = conn.execute(
                f"UPDATE tasks SET next_attempt_at = ? WHERE {DUE} AND next_attempt_at > ?"
                " AND (net_failures > 0 OR NOT ?)",
                (now, now, unreachable_only),
            )
            return cursor.rowcount

        return await self.db.write(op)

    async def retry(self, task_id: str) -> Task:
        """Due now, attempts from zero: for dead, cancelled or expired tasks, or to hurry one."""

        def op(conn: sqlite3.Connection) -> Task:
            task = load_task(conn, task_id)
            if task.state not in RETRYABLE:
                raise InvalidTransition(task.id, task.state, "retry")
            now = timeutil.now()
            conn.execute(
                "UPDATE tasks SET state = 'pending', attempts = 0, net_failures = 0, next_attempt_at = ?,"
                " expires_at = MAX(expires_at, ?), updated_at = ?, remote_task = NULL WHERE id = ?",
                (now, now + self.settings.retention_days * 86400, now, task_id),
            )
            if self._pending_hosts is not None:
                self._pending_hosts.add(task.host)
            return load_task(conn, task_id)

        return await self.db.write(op)

    async def cancel(self, task_id: str, *, abandoned: bool = False) -> tuple[Task, contract.Receipt]:
        """Pending -> cancelled, with its receipt; also running, when the flusher has let go of it
        (`abandoned`: its delivery was stopped before any answer), or when it waits on its
        destination's own task with no delivery asking after it now."""

        def op(conn: sqlite3.Connection) -> tuple[Task, contract.Receipt]:
            task = load_task(conn, task_id)
            waiting = task.remote_task is not None and task.lease_expires_at is None
            running = task.state == TaskState.RUNNING and (abandoned or waiting)
            if task.state not in CANCELLABLE and not running:
                raise InvalidTransition(task.id, task.state, "cancel")
            _set_state(conn, task_id, TaskState.CANCELLED, "cancelled by request")
            task = load_task(conn, task_id)
            return task, chain.append(conn, _task_receipt(task, 0))

        return await self.db.write(op)

    async def expire_due(self) -> list[tuple[Task, contract.Receipt]]:
        """Pending tasks past their expiry become `expired`, each with a tombstone receipt; so do
        those still waiting on their destination's own task then (a server task that never ends)."""

        def op(conn: sqlite3.Connection) -> list[tuple[Task, contract.Receipt]]:
            rows = (
                conn.execute(
                    f"SELECT id, remote_task FROM tasks WHERE {DUE} AND expires_at <= ? LIMIT 1000",
                    (timeutil.now(),),
                )
            ).fetchall()
            expired = []
            for task_id, remote_task in rows:
                why = "expired before it could be delivered"
                if remote_task is not None:
                    why = f"expired while its destination's task {remote_task} was still running"
                _set_state(conn, task_id, TaskState.EXPIRED, why)
                task = load_task(conn, task_id)
                expired.append((task, chain.append(conn, _task_receipt(task, 0))))
            return expired

        return await self.db.write(op)

    async def compact_settled(self, older_than_s: float, limit: int = 5000) -> int:
        """Delete settled task rows (done, dead, cancelled, expired) last changed `older_than_s` ago.

        Retention of the queue, not of the audit: receipts are never deleted here. Each settled
        task already wrote its receipt in the transaction that settled it, and the receipt chain is
        the record of what happened, so it outlives the task row. Pending and running rows are
        never touched. One write op, at most `limit` rows, so a large backlog is compacted over
        several calls instead of holding the writer in one long transaction.
        """
        settled = sorted(str(s) for s in SETTLED)
        marks = ", ".join("?" for _ in settled)

        def op(conn: sqlite3.Connection) -> int:
            cutoff = timeutil.now() - older_than_s
            cursor = conn.execute(
                f"DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE state IN ({marks})"
                " AND updated_at < ? LIMIT ?)",
                (*settled, cutoff, limit),
            )
            return cursor.rowcount

        return await self.db.write(op)


def _due(
    conn: sqlite3.Connection,
    now: float,
    held_sql: str,
    held_params: tuple[Any, ...],
    limit: int,
    host: str | None = None,
) -> list[tuple[str, str]]:
    """(id, host) of up to `limit` due tasks, soonest first: pending ones, and running ones
    waiting on their destination's own task. One query each, so each walks its index in order
    (one query with OR sorted every due task in a temporary B-tree: 10,000 of them per lease)."""
    host_sql, host_params = (" AND host = ?", (host,)) if host is not None else ("", ())
    rows: list[tuple[str, str, float]] = []
    for which in ("state = 'pending'", WAITING_REMOTE):
        rows += conn.execute(
            f"SELECT id, host, next_attempt_at FROM tasks WHERE {which}{host_sql} AND next_attempt_at <= ?"
            f" AND expires_at > ?{held_sql} ORDER BY next_attempt_at LIMIT ?",
            (*host_params, now, now, *held_params, limit),
        ).fetchall()
    rows.sort(key=lambda row: row[2])
    return [(row[0], row[1]) for row in rows[:limit]]


# Where a task given back goes: pending, unless its destination holds it as its own task.
_BACK = "CASE WHEN remote_task IS NULL THEN 'pending' ELSE 'running' END"


def _set_state(conn: sqlite3.Connection, task_id: str, state: TaskState, error: str) -> None:
    conn.execute(
        "UPDATE tasks SET state = ?, last_error = ?, lease_expires_at = NULL, updated_at = ? WHERE id = ?",
        (str(state), error, timeutil.now(), task_id),
    )


def _task_receipt(task: Task, duration_ms: int) -> ReceiptDraft:
    if task.state == TaskState.DONE:
        status, reason = "ok", f"delivered after {task.attempts} attempt(s)"
    elif task.state == TaskState.CANCELLED:  # its owner chose not to send it: no failure
        status, reason = "refused", f"cancelled: {task.last_error}"
    else:
        status, reason = "error", f"{task.state}: {task.last_error}"
    return ReceiptDraft(
        kind="task",
        status=status,  # type: ignore[arg-type]
        reason=reason,
        route=task.route,
        duration_ms=duration_ms,
        task_id=task.id,
        turn_id=task.turn_id,
    )
