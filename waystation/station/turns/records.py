"""Turns as rows: a turn is a resource you can come back to, and what a parked turn keeps so it
can resume.

A row is written when the turn starts (`running`) and again whenever it stops: `parked` (waiting
on tasks), `resuming` (claimed by one resumption), `deferred` (the whole turn is a task), `ok`,
`refused`, `error`, or `interrupted` (cut short: its process stopped or died). It keeps the
request, the conversation so far, which tasks it waits on, what ran (route, model), the answer
and every tool call it made. Calls' task states (and what they got) and the turn's receipts are
read live, so the turn object never goes stale.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from waystation import timeutil
from waystation.db import Database
from waystation.errors import NotFound
from waystation.station.turns.results import result_summary

Message = dict[str, Any]

TURN_STATES = ("running", "parked", "resuming", "deferred", "ok", "refused", "error", "interrupted")
WAITING = frozenset({"running", "parked", "resuming", "deferred"})  # not finished yet


@dataclass
class TurnRow:
    """What one write of a turn's row says; `None` fields keep what the row had."""

    state: str
    request: Mapping[str, Any]
    messages: list[Message]
    deferred: dict[str, str] = field(default_factory=dict)  # parked task id -> tool call id
    steps: int = 0
    route: str | None = None
    model: str | None = None
    text: str | None = None
    reason: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def save_turn(conn: sqlite3.Connection, turn_id: str, row: TurnRow) -> None:
    """Insert or update the turn's row; call inside the write that commits its receipt."""
    now = timeutil.now()
    conn.execute(
        "INSERT INTO turns (id, state, request, messages, deferred, steps, route, model, text, reason,"
        " tool_calls, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET state = excluded.state, messages = excluded.messages,"
        " deferred = excluded.deferred, steps = excluded.steps,"
        " route = coalesce(excluded.route, route), model = coalesce(excluded.model, model),"
        " text = excluded.text, reason = excluded.reason, tool_calls = excluded.tool_calls,"
        " updated_at = excluded.updated_at",
        (
            turn_id,
            row.state,
            json.dumps(dict(row.request)),
            json.dumps(row.messages),
            json.dumps(row.deferred),
            row.steps,
            row.route,
            row.model,
            row.text,
            row.reason,
            json.dumps(row.tool_calls),
            now,
            now,
        ),
    )


@dataclass(frozen=True)
class Resumable:
    request: dict[str, Any]
    messages: list[Message]
    deferred: dict[str, str]
    tool_calls: list[dict[str, Any]]


def claim_for_resume(conn: sqlite3.Connection, turn_id: str) -> Resumable | None:
    """Parked -> resuming, only once every parked task has settled (one resumption per turn).
    Returns what the turn kept; None if it is not (yet) resumable."""
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
    return Resumable(
        json.loads(row["request"]), json.loads(row["messages"]), deferred, json.loads(row["tool_calls"])
    )


async def recover_turns(db: Database) -> int:
    """At the agent's start, for turns its last run left unfinished: a resumption cut short goes
    back to `parked` so it resumes; a turn that was running is `interrupted` (its model run is
    gone). Safe then, since the single-instance lock means no other agent holds them."""

    def op(conn: sqlite3.Connection) -> int:
        now = timeutil.now()
        parked = conn.execute(
            "UPDATE turns SET state = 'parked', updated_at = ? WHERE state = 'resuming'", (now,)
        ).rowcount
        stopped = conn.execute(
            "UPDATE turns SET state = 'interrupted', reason = ?, updated_at = ? WHERE state = 'running'",
            ("interrupted: the agent stopped while the turn ran", now),
        ).rowcount
        return int(parked + stopped)

    return await db.write(op)


async def parked_turns_ready(db: Database) -> list[str]:
    """Parked turns whose tasks have all settled (e.g. while the agent was down)."""
    rows = await db.fetchall(
        "SELECT id FROM turns WHERE state = 'parked' AND NOT EXISTS (SELECT 1 FROM tasks"
        " WHERE tasks.turn_id = turns.id AND tasks.state IN ('pending', 'running'))"
    )
    return [r[0] for r in rows]


# --- reading turns back --------------------------------------------------------------------------


async def turn_object(db: Database, row: sqlite3.Row) -> dict[str, Any]:
    """The contract's turn object for one row, with its calls' task states and receipts read now."""
    calls: list[dict[str, Any]] = json.loads(row["tool_calls"])
    task_ids = [c["task_id"] for c in calls if c.get("task_id")]
    tasks: dict[str, Any] = {}
    if task_ids:
        marks = ",".join("?" * len(task_ids))
        found = await db.fetchall(
            f"SELECT id, state, result, last_error FROM tasks WHERE id IN ({marks})", task_ids
        )
        tasks = {r["id"]: r for r in found}
    receipts = await db.fetchall("SELECT id FROM receipts WHERE turn_id = ? ORDER BY seq", (row["id"],))
    request = json.loads(row["request"])
    return {
        "turn_id": row["id"],
        "state": row["state"],
        "route": row["route"] or request.get("route"),
        "model": row["model"] or request.get("model"),
        "prompt": request.get("prompt") or _last_user_text(request),
        "text": row["text"] if row["state"] == "ok" else None,
        "reason": row["reason"],
        "tool_calls": [
            {
                "id": c.get("id"),
                "tool": c.get("tool"),
                "arguments": c.get("arguments"),
                "status": c.get("status"),
                "task_id": c.get("task_id"),
                "task_state": tasks[c["task_id"]]["state"] if c.get("task_id") in tasks else None,
                "result": _summary(tasks.get(c.get("task_id") or "")) or c.get("result_summary"),
            }
            for c in calls
        ],
        "receipt_ids": [r[0] for r in receipts],
        "created_at": timeutil.iso(row["created_at"]),
        "updated_at": timeutil.iso(row["updated_at"]),
    }


def _summary(task: Any) -> str | None:
    """What a settled task's call got, in one line (None while it has no answer)."""
    if task is None or task["state"] in ("pending", "running"):
        return None
    return result_summary(json.loads(task["result"]) if task["result"] else None, task["last_error"])


def _last_user_text(request: Mapping[str, Any]) -> str:
    for message in reversed(request.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


async def get_turn(db: Database, turn_id: str) -> dict[str, Any]:
    row = await db.fetchone("SELECT * FROM turns WHERE id = ?", (turn_id,))
    if row is None:
        raise NotFound("turn", turn_id)
    return await turn_object(db, row)


async def list_turns(db: Database, state: str | None, limit: int) -> list[dict[str, Any]]:
    """Newest first."""
    where, params = ("WHERE state = ?", [state]) if state else ("", [])
    rows = await db.fetchall(
        f"SELECT * FROM turns {where} ORDER BY created_at DESC, rowid DESC LIMIT ?", (*params, limit)
    )
    return [await turn_object(db, row) for row in rows]


async def count_turns(db: Database) -> dict[str, int]:
    """Turns by state, every state named (0 where none)."""
    rows = await db.fetchall("SELECT state, COUNT(*) FROM turns GROUP BY state")
    counts = dict.fromkeys(TURN_STATES, 0)
    counts.update({r[0]: r[1] for r in rows})
    return counts
