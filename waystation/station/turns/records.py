"""Turns as rows: what a parked turn keeps so it can resume, and claiming it for resumption.

A turn row holds the request, the conversation so far and which tasks it waits on. Its state:
parked (waiting on tasks), resuming (claimed by one resumption), deferred (the whole turn is a
task), ok, refused or error.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from waystation import timeutil
from waystation.db import Database

Message = dict[str, Any]


def save_turn(
    conn: sqlite3.Connection,
    turn_id: str,
    request: dict[str, Any],
    messages: list[Message],
    deferred: dict[str, str],
    steps: int,
    state: str,
) -> None:
    """Insert or update the turn's row; call inside the write that commits its receipt."""
    now = timeutil.now()
    conn.execute(
        "INSERT INTO turns (id, state, request, messages, deferred, steps, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
        " messages = excluded.messages, deferred = excluded.deferred, steps = excluded.steps,"
        " updated_at = excluded.updated_at",
        (turn_id, state, json.dumps(request), json.dumps(messages), json.dumps(deferred), steps, now, now),
    )


def claim_for_resume(
    conn: sqlite3.Connection, turn_id: str
) -> tuple[dict[str, Any], list[Message], dict[str, str]] | None:
    """Parked -> resuming, only once every parked task has settled (one resumption per turn).
    Returns the turn's request, conversation and parked calls; None if not (yet) resumable."""
    row = conn.execute("SELECT * FROM turns WHERE id = ? AND state = 'parked'", (turn_id,)).fetchone()
    if row is None:
        return None
    deferred: dict[str, str] = json.loads(row["deferred"])
    if deferred:
        marks = ",".join("?" * len(deferred))
        unsettled = conn.execute(
            f"SELECT COUNT(*) FROM tasks WHERE id IN ({marks}) AND state IN ('pending', 'running')",
            tuple(deferred),
        ).fetchone()[0]
        if unsettled:
            return None
    conn.execute(
        "UPDATE turns SET state = 'resuming', updated_at = ? WHERE id = ?", (timeutil.now(), turn_id)
    )
    return json.loads(row["request"]), json.loads(row["messages"]), deferred


async def reclaim_interrupted_resumptions(db: Database) -> int:
    """At start: a resumption cut short (crash, SIGTERM) leaves its turn `resuming`; park it again
    so it resumes. Safe then, since the single-instance lock means no other agent holds it."""

    def op(conn: sqlite3.Connection) -> int:
        return conn.execute("UPDATE turns SET state = 'parked' WHERE state = 'resuming'").rowcount

    return await db.write(op)


async def parked_turns_ready(db: Database) -> list[str]:
    """Parked turns whose tasks have all settled (e.g. while the agent was down)."""
    rows = await db.fetchall(
        "SELECT id FROM turns WHERE state = 'parked' AND NOT EXISTS (SELECT 1 FROM tasks"
        " WHERE tasks.turn_id = turns.id AND tasks.state IN ('pending', 'running'))"
    )
    return [r[0] for r in rows]
