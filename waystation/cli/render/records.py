"""The records a person lists and opens: tasks, turns and receipts, as tables and as details."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from waystation.cli.render.cells import ago, cell, due, new_table, pairs_grid, state_cell, when
from waystation.cli.render.output import console, emit_json, say

if TYPE_CHECKING:
    from waystation import contract


def tasks_table(tasks: list[contract.Task]) -> None:
    if not tasks:
        say("no tasks")
        return
    table = new_table("id", "tool", "state", "attempts", "next attempt / last error", "created")
    for t in tasks:
        note = t.get("last_error") or ""
        if t.get("state") == "pending":
            note = due(t.get("next_attempt_at")) + (f" · {note}" if note else "")
        table.add_row(
            cell(t.get("id")),
            cell(t.get("tool")),
            state_cell(t.get("state")),
            cell(t.get("attempts")),
            cell(note),
            cell(ago(t.get("created_at"))),
        )
    console().print(table)


def waiting(task: Mapping[str, Any], connectivity: str | None) -> str | None:
    """Why a pending task has not gone out yet (None in any other state): the agent, the
    network, or its last failure and when it is tried next. `connectivity` is the monitor's
    state, None when no agent runs."""
    if task.get("state") != "pending":
        return None
    if connectivity is None:
        return "for the agent: it goes out once `waystation run` is up"
    if connectivity != "online":
        return f"for the network ({connectivity})"
    next_try = due(task.get("next_attempt_at"))
    next_try = next_try if next_try == "due now" else f"next try {next_try}"
    last_error = task.get("last_error")
    return f"{last_error}; {next_try}" if last_error else next_try


def task_detail(task: Mapping[str, Any], waiting: str | None = None) -> None:
    """One task; `waiting` says why a pending one has not gone out yet (see waiting())."""
    rows: list[tuple[str, object]] = [
        ("id", task.get("id")),
        ("tool", task.get("tool")),
        ("state", state_cell(task.get("state"))),
        *([("waiting", waiting)] if waiting else []),
        ("attempts", task.get("attempts")),
        ("idempotency key", task.get("idempotency_key")),
        ("next attempt", when(task.get("next_attempt_at")) if task.get("next_attempt_at") else None),
        ("last error", task.get("last_error")),
        ("created", when(task.get("created_at"))),
        ("updated", when(task.get("updated_at"))),
    ]
    if task.get("expires_at"):
        rows.append(("expires", when(task.get("expires_at"))))
    if task.get("turn_id"):
        rows.append(("turn", task.get("turn_id")))
    console().print(pairs_grid(rows))
    say("args:")
    emit_json(task.get("args"))
    if task.get("result") is not None:
        say("result:")
        emit_json(task.get("result"))


# --- turns -------------------------------------------------------------------------------------


def parked_calls(turn: Mapping[str, Any]) -> int:
    """How many of the turn's calls still wait in the queue for the network."""
    return sum(
        1
        for call in turn.get("tool_calls") or []
        if call.get("task_id") and call.get("task_state") in ("pending", "running")
    )


def n_calls(n: int) -> str:
    return f"{n} call{'' if n == 1 else 's'}"


def _start(text: object, width: int) -> str:
    """The beginning of a text on one line, cut with an ellipsis."""
    line = " ".join(str(text or "").split())
    return line if len(line) <= width else line[: width - 1] + "…"


def turn_outcome(turn: Mapping[str, Any]) -> str:
    """In a few words how the turn ended, or what it waits for."""
    if turn.get("state") == "ok":
        return str(turn.get("text") or "")
    if turn.get("state") == "parked" and parked_calls(turn):
        return f"waiting on {n_calls(parked_calls(turn))}"
    return str(turn.get("reason") or "")


def turns_table(turns: list[contract.Turn]) -> None:
    if not turns:
        say("no turns")
        return
    table = new_table("id", "state", "route", "age", "prompt", "answer / reason")
    for t in turns:
        table.add_row(
            cell(t.get("turn_id")),
            state_cell(t.get("state")),
            cell(t.get("route")),
            cell(ago(t.get("created_at"))),
            cell(_start(t.get("prompt"), 40)),
            cell(_start(turn_outcome(t), 60)),
        )
    console().print(table)


def turn_detail(turn: Mapping[str, Any]) -> None:
    """A turn: its answer when it has one, else where it stands; then its calls."""
    rows: list[tuple[str, object]] = [
        ("turn", turn.get("turn_id")),
        ("state", state_cell(turn.get("state"))),
        ("route", turn.get("route")),
        ("model", turn.get("model")),
        ("reason", turn.get("reason")),
        ("created", when(turn.get("created_at"))),
        ("updated", when(turn.get("updated_at"))),
        ("compacted", when(turn.get("compacted_at")) if turn.get("compacted_at") else None),
    ]
    console().print(pairs_grid((k, v) for k, v in rows if v))
    for call in turn.get("tool_calls") or []:
        task = f" task {call['task_id']} {call.get('task_state') or ''}" if call.get("task_id") else ""
        url = (call.get("arguments") or {}).get("url", "")
        got = f" -> {call['result']}" if call.get("result") else ""
        say(f"call {call.get('tool')} {url} {call.get('status')}{task}{got}".rstrip())
    if turn.get("state") == "ok":
        say("")
        say(str(turn.get("text") or ""))


# --- receipts ----------------------------------------------------------------------------------


def _route(route: object) -> str:
    if not isinstance(route, Mapping):
        return str(route or "-")
    name, provider = route.get("name") or "-", route.get("provider")
    return f"{name} → {provider}" if provider and provider != name else str(name)


def receipts_table(items: list[contract.Receipt]) -> None:
    if not items:
        say("no receipts")
        return
    table = new_table("id", "kind", "status", "route", "reason", "created")
    for r in items:
        table.add_row(
            cell(r.get("id")),
            cell(r.get("kind")),
            state_cell(r.get("status")),
            cell(_route(r.get("route"))),
            cell(r.get("reason")),
            cell(ago(r.get("created_at"))),
        )
    console().print(table)


def receipt_detail(r: Mapping[str, Any]) -> None:
    route = r.get("route") if isinstance(r.get("route"), Mapping) else {}
    usage = r.get("usage") if isinstance(r.get("usage"), Mapping) else {}
    assert isinstance(route, Mapping) and isinstance(usage, Mapping)
    lanes = f"auth {route.get('auth_lane') or '-'} · cost {route.get('cost_lane') or '-'}"
    rows: list[tuple[str, object]] = [
        ("id", r.get("id")),
        ("kind", r.get("kind")),
        ("status", state_cell(r.get("status"))),
        ("reason", r.get("reason")),
        ("route", _route(route) + (f" ({route['model']})" if route.get("model") else "")),
        ("lanes", lanes),
        ("usage", f"{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion"),
        ("credits used", r.get("credits_used")),
        ("duration", f"{r.get('duration_ms', 0)} ms"),
        ("turn", r.get("turn_id")),
        ("task", r.get("task_id")),
        ("deferred tasks", ", ".join(r.get("deferred_task_ids") or []) or None),
        ("created", when(r.get("created_at"))),
        ("prev hash", r.get("prev_hash")),
        ("hash", r.get("hash")),
    ]
    console().print(pairs_grid(rows))


# --- agent -------------------------------------------------------------------------------------
