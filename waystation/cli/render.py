"""How the command line shows things: rich tables for people, plain JSON for programs.

JSON never goes through rich (it would wrap, truncate or colour it); it is written to stdout as
UTF-8 bytes, one document per command (or one per line for JSON Lines).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

STATE_STYLE = {
    "pending": "yellow",
    "running": "cyan",
    "done": "green",
    "dead": "red",
    "cancelled": "dim",
    "expired": "magenta",
    "ok": "green",
    "parked": "yellow",
    "resuming": "cyan",
    "deferred": "yellow",
    "interrupted": "magenta",
    "refused": "red",
    "error": "red",
    "online": "green",
    "offline": "red",
    "portal": "yellow",
    "unknown": "dim",
}


def emit_json(value: object) -> None:
    _write_bytes(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def output(value: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """`--json`: the value as one JSON document; otherwise the human rendering of it."""
    if as_json:
        emit_json(value)
    else:
        human(value)


def emit_json_lines(values: Iterable[object]) -> int:
    """Canonical JSON (sorted keys, no whitespace), one value per line; how many were written."""
    from waystation.receipts.chain import canonical_json

    count = 0
    for value in values:
        _write_bytes(canonical_json(value) + "\n")
        count += 1
    return count


def _write_bytes(text: str) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()


def say(text: str) -> None:
    """One plain line on stdout."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def console() -> Console:
    from rich.console import Console

    # Piped into grep or a file, rich would assume 80 columns and wrap every long row.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=200 if wide else None)


# --- values ------------------------------------------------------------------------------------


def _parse(ts: object) -> datetime | None:
    if not isinstance(ts, str) or not ts:
        return None
    try:
        parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    seconds = round(abs(seconds))  # whole seconds first: 599.6 is 10m00s, never 9m60s
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d{seconds % 86400 // 3600:02.0f}h"


def ago(ts: object) -> str:
    """'3m12s ago', 'in 5s', or '-'."""
    when = _parse(ts)
    if when is None:
        return "-"
    delta = (datetime.now(UTC) - when).total_seconds()
    if abs(delta) < 1:
        return "now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(delta)}"


def due(ts: object) -> str:
    """'due now' or 'in 5s' for a next-attempt time."""
    at = _parse(ts)
    if at is None or at <= datetime.now(UTC):
        return "due now"
    return f"in {duration((at - datetime.now(UTC)).total_seconds())}"


def when(ts: object) -> str:
    """Local wall-clock time with its relative age, e.g. '2026-05-01 14:03:07 (3m12s ago)'."""
    parsed = _parse(ts)
    if parsed is None:
        return "-"
    return f"{parsed.astimezone().strftime('%Y-%m-%d %H:%M:%S')} ({ago(ts)})"


def _text(value: object, style: str = "") -> Text:
    from rich.text import Text

    if value is None or value == "":
        return Text("-", style="dim")
    return Text(str(value), style=style)


def _styled(value: object) -> Text:
    return _text(value, STATE_STYLE.get(str(value), ""))


def _table(*columns: str) -> Table:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in columns:
        no_wrap = name in ("id", "created", "state", "status")
        table.add_column(name, no_wrap=no_wrap, overflow="fold")
    return table


def _pairs(rows: Iterable[tuple[str, object]]) -> Table:
    from rich.console import ConsoleRenderable
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value if isinstance(value, ConsoleRenderable) else _text(value))
    return grid


# --- tasks -------------------------------------------------------------------------------------


def tasks_table(tasks: list[dict[str, Any]]) -> None:
    if not tasks:
        say("no tasks")
        return
    table = _table("id", "tool", "state", "attempts", "next attempt / last error", "created")
    for t in tasks:
        note = t.get("last_error") or ""
        if t.get("state") == "pending":
            note = due(t.get("next_attempt_at")) + (f" · {note}" if note else "")
        table.add_row(
            _text(t.get("id")),
            _text(t.get("tool")),
            _styled(t.get("state")),
            _text(t.get("attempts")),
            _text(note),
            _text(ago(t.get("created_at"))),
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
        ("state", _styled(task.get("state"))),
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
    console().print(_pairs(rows))
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


def turns_table(turns: list[dict[str, Any]]) -> None:
    if not turns:
        say("no turns")
        return
    table = _table("id", "state", "route", "age", "prompt", "answer / reason")
    for t in turns:
        table.add_row(
            _text(t.get("turn_id")),
            _styled(t.get("state")),
            _text(t.get("route")),
            _text(ago(t.get("created_at"))),
            _text(_start(t.get("prompt"), 40)),
            _text(_start(turn_outcome(t), 60)),
        )
    console().print(table)


def turn_detail(turn: Mapping[str, Any]) -> None:
    """A turn: its answer when it has one, else where it stands; then its calls."""
    rows: list[tuple[str, object]] = [
        ("turn", turn.get("turn_id")),
        ("state", _styled(turn.get("state"))),
        ("route", turn.get("route")),
        ("model", turn.get("model")),
        ("reason", turn.get("reason")),
        ("created", when(turn.get("created_at"))),
        ("updated", when(turn.get("updated_at"))),
        ("compacted", when(turn.get("compacted_at")) if turn.get("compacted_at") else None),
    ]
    console().print(_pairs((k, v) for k, v in rows if v))
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


def receipts_table(items: list[dict[str, Any]]) -> None:
    if not items:
        say("no receipts")
        return
    table = _table("id", "kind", "status", "route", "reason", "created")
    for r in items:
        table.add_row(
            _text(r.get("id")),
            _text(r.get("kind")),
            _styled(r.get("status")),
            _text(_route(r.get("route"))),
            _text(r.get("reason")),
            _text(ago(r.get("created_at"))),
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
        ("status", _styled(r.get("status"))),
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
    console().print(_pairs(rows))


# --- agent -------------------------------------------------------------------------------------


def connectivity_line(c: Mapping[str, Any]) -> Text:
    from rich.text import Text

    line = Text()
    line.append_text(_styled(c.get("state") or "unknown"))
    mode = c.get("mode")
    line.append(f"  mode {mode}" + (" (forced)" if mode in ("online", "offline") else ""))
    if c.get("since"):
        line.append(f"  since {when(c.get('since'))}")
    probe = c.get("last_probe")
    if isinstance(probe, Mapping):
        if probe.get("ok"):
            summary = "ok"
        else:
            summary = probe.get("error") or (f"HTTP {probe['status']}" if probe.get("status") else "failed")
        line.append(f"  last probe {ago(probe.get('at'))}: {summary}", style="dim")
    elif probe:
        line.append(f"  last probe {ago(probe)}", style="dim")
    return line


def connectivity(c: Mapping[str, Any]) -> None:
    console().print(connectivity_line(c))


def routes_table(routes: list[dict[str, Any]]) -> None:
    if not routes:
        say("no routes")
        return
    table = _table("route", "provider", "auth lane", "cost lane", "model", "available", "reason")
    for r in routes:
        ok = r.get("available")
        table.add_row(
            _text(r.get("name"), "bold"),
            _text(r.get("provider")),
            _text(r.get("auth_lane")),
            _text(r.get("cost_lane")),
            _text(r.get("model")),
            _text("yes" if ok else "no", "green" if ok else "red"),
            _text(r.get("reason")),
        )
    console().print(table)


def _counts(by_state: Mapping[str, Any]) -> Text:
    """`pending 2 · running 0 · ...`, the states with none dimmed."""
    from rich.text import Text

    counts = Text()
    for i, (state, n) in enumerate(by_state.items()):
        if i:
            counts.append(" · ", style="dim")
        counts.append(f"{state} ", style=STATE_STYLE.get(str(state), "") if n else "dim")
        counts.append(str(n), style="bold" if n else "dim")
    return counts


def status_screen(s: Mapping[str, Any]) -> None:
    from rich.text import Text

    out = console()
    uptime = s.get("uptime_s")
    header = Text(f"Waystation {s.get('version', '?')}", style="bold")
    up = f", up {duration(float(uptime))}" if isinstance(uptime, int | float) else ""
    header.append(f"  agent running{up}", "green")
    out.print(header)
    queue = s.get("queue") if isinstance(s.get("queue"), Mapping) else {}
    turns = s.get("turns") if isinstance(s.get("turns"), Mapping) else {}
    assert isinstance(queue, Mapping) and isinstance(turns, Mapping)
    model = s.get("model") if isinstance(s.get("model"), Mapping) else {}
    assert isinstance(model, Mapping)
    model_line = Text(f"{model.get('backend') or '-'}  {model.get('path') or '(embedded default)'}  ")
    loaded = bool(model.get("loaded"))
    model_line.append("loaded" if loaded else "not loaded", "green" if loaded else "dim")
    if isinstance(model.get("threads"), int):
        model_line.append(f"  {model['threads']} CPU threads", "dim")
    conn = s.get("connectivity")
    rows: list[tuple[str, object]] = [
        ("connectivity", connectivity_line(conn) if isinstance(conn, Mapping) else conn),
        ("queue", _counts(queue) if queue else None),
        ("turns", _counts(turns) if any(turns.values()) else None),
        ("model", model_line),
    ]
    signing = s.get("signing")
    if isinstance(signing, Mapping) and signing.get("error"):
        rows.append(("receipts", Text(f"not signed: {signing['error']}", "red")))
    routes = s.get("routes")
    table = isinstance(routes, list) and bool(routes) and all(isinstance(r, Mapping) for r in routes)
    if not table:
        listed = ", ".join(map(str, routes)) if isinstance(routes, list) else ""
        rows.append(("routes", listed or "none"))
    out.print(_pairs(rows))
    if table:
        assert isinstance(routes, list)
        out.print()
        routes_table(routes)
