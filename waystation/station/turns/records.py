"""Turns as rows: a turn is a resource you can come back to, and what a parked turn keeps so it
can resume.

A row is written when the turn starts (`running`) and again whenever it stops: `parked` (waiting
on tasks), `resuming` (claimed by one resumption), `deferred` (the whole turn is a task), `ok`,
`refused`, `error`, or `interrupted` (cut short: its process stopped or died). It keeps which
tasks it waits on, what ran (route, model), its prompt to show, the answer and every tool call
it made. Calls' task states (and what they got) and the turn's receipts are read live, so the
turn object never goes stale.

The conversation is kept once (in `messages`; `request` keeps only the settings, not the prompt,
system or messages again) and only where `keeps_conversation` says: always while the turn is
parked (it resumes from it, after a restart too); once it finished, when it was asked to store it
(`POST /v1/turns`; a chat completion only with `store: true`, OpenAI's default being false);
never for a refused turn. `compact_finished` drops what a finished turn kept after
`retention_days`: the row stays, with its state, route, model, prompt, answer and calls (its
receipts stay too), and says since when (`compacted_at`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from waystation import contract, timeutil
from waystation.db import Database
from waystation.errors import NotFound
from waystation.station.turns.results import result_summary

Message = dict[str, Any]

TURN_STATES = get_args(contract.TurnState)
WAITING = frozenset({"running", "parked", "resuming", "deferred"})  # not finished yet
FINISHED = ("ok", "refused", "error", "interrupted")
PROMPT_SHOWN = 1000  # characters of its prompt a turn keeps to show (the conversation has it whole)
# What a listed (and a looked-up) turn reads: never the request or the conversation.
_SHOWN = "id, state, route, model, prompt, text, reason, tool_calls, created_at, updated_at, compacted_at"


def keeps_conversation(state: str, store: bool) -> bool:
    """Whether a turn's row keeps its conversation: a parked (or resuming) turn must, to resume;
    a finished one when it was asked to store it; a running one need not (a crash interrupts it,
    never resumes it), nor a deferred one (its task holds the request), nor a refused one."""
    if state in ("parked", "resuming"):
        return True
    return store and state in ("ok", "error", "interrupted")


def shown_prompt(request: Mapping[str, Any]) -> str:
    """The prompt a turn shows: the request's, or its conversation's last user message, cut."""
    prompt = str(request.get("prompt") or "") or _last_user_text(request)
    return prompt if len(prompt) <= PROMPT_SHOWN else prompt[:PROMPT_SHOWN] + "…"


def _settings(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request without what the conversation holds (it is the same text, kept once)."""
    return {**request, "prompt": "", "system": None, "messages": None}


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
    """Insert or update the turn's row; call inside the write that commits its receipt. What it
    keeps of the conversation is `keeps_conversation`'s to say; its prompt is written once."""
    now = timeutil.now()
    keep = keeps_conversation(row.state, bool(row.request.get("store", True)))
    conn.execute(
        "INSERT INTO turns (id, state, request, messages, deferred, steps, route, model, text, reason,"
        " tool_calls, prompt, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET state = excluded.state, request = excluded.request,"
        " messages = excluded.messages, deferred = excluded.deferred, steps = excluded.steps,"
        " route = coalesce(excluded.route, route), model = coalesce(excluded.model, model),"
        " text = excluded.text, reason = excluded.reason, tool_calls = excluded.tool_calls,"
        " updated_at = excluded.updated_at",
        (
            turn_id,
            row.state,
            json.dumps(_settings(row.request) if keep else {}),
            json.dumps(row.messages if keep else []),
            json.dumps(row.deferred),
            row.steps,
            row.route,
            row.model,
            row.text,
            row.reason,
            json.dumps(row.tool_calls),
            shown_prompt(row.request),
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


async def turn_object(db: Database, row: sqlite3.Row) -> contract.Turn:
    """The contract's turn object for one row (of `_SHOWN`), with its calls' task states and
    receipts read now."""
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
    compacted_at = row["compacted_at"]
    return {
        "turn_id": row["id"],
        "state": row["state"],
        "route": row["route"],
        "model": row["model"],
        "prompt": row["prompt"] or "",
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
        "compacted_at": timeutil.iso(compacted_at) if compacted_at is not None else None,
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


async def get_turn(db: Database, turn_id: str) -> contract.Turn:
    row = await db.fetchone(f"SELECT {_SHOWN} FROM turns WHERE id = ?", (turn_id,))
    if row is None:
        raise NotFound("turn", turn_id)
    return await turn_object(db, row)


async def list_turns(db: Database, state: str | None, limit: int) -> list[contract.Turn]:
    """Newest first."""
    where, params = ("WHERE state = ?", [state]) if state else ("", [])
    rows = await db.fetchall(
        f"SELECT {_SHOWN} FROM turns {where} ORDER BY created_at DESC, rowid DESC LIMIT ?", (*params, limit)
    )
    return [await turn_object(db, row) for row in rows]


async def count_turns(db: Database) -> dict[str, int]:
    """Turns by state, every state named (0 where none)."""
    rows = await db.fetchall("SELECT state, COUNT(*) FROM turns GROUP BY state")
    counts = dict.fromkeys(TURN_STATES, 0)
    counts.update({r[0]: r[1] for r in rows})
    return counts


async def compact_finished(db: Database, older_than_s: float, limit: int = 5000) -> int:
    """Finished turns last written more than `older_than_s` ago keep only what they show: their
    conversation and request go (a parked turn's never: it has not finished). How many."""
    cutoff = timeutil.now() - older_than_s
    marks = ", ".join("?" for _ in FINISHED)

    def op(conn: sqlite3.Connection) -> int:
        return conn.execute(
            "UPDATE turns SET request = '{}', messages = '[]', compacted_at = ? WHERE id IN (SELECT id"
            f" FROM turns WHERE state IN ({marks}) AND updated_at < ? AND compacted_at IS NULL LIMIT ?)",
            (timeutil.now(), *FINISHED, cutoff, limit),
        ).rowcount

    return await db.write(op)
