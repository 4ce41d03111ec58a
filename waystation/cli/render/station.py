"""The station's state for a person: connectivity, the routes and the status screen."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from waystation.cli.render.cells import (
    STATE_STYLE,
    ago,
    cell,
    duration,
    new_table,
    pairs_grid,
    state_cell,
    when,
)
from waystation.cli.render.output import console, say

if TYPE_CHECKING:
    from rich.text import Text

    from waystation import contract


def connectivity_line(c: Mapping[str, Any]) -> Text:
    from rich.text import Text

    line = Text()
    line.append_text(state_cell(c.get("state") or "unknown"))
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


def routes_table(routes: list[contract.Route]) -> None:
    if not routes:
        say("no routes")
        return
    table = new_table("route", "provider", "auth lane", "cost lane", "model", "available", "reason")
    for r in routes:
        ok = r.get("available")
        table.add_row(
            cell(r.get("name"), "bold"),
            cell(r.get("provider")),
            cell(r.get("auth_lane")),
            cell(r.get("cost_lane")),
            cell(r.get("model")),
            cell("yes" if ok else "no", "green" if ok else "red"),
            cell(r.get("reason")),
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
    if s.get("listen"):
        rows.append(("listener", f"http://{s['listen']}/v1 (token: waystation token)"))
    routes = s.get("routes")
    table = isinstance(routes, list) and bool(routes) and all(isinstance(r, Mapping) for r in routes)
    if not table:
        listed = ", ".join(map(str, routes)) if isinstance(routes, list) else ""
        rows.append(("routes", listed or "none"))
    out.print(pairs_grid(rows))
    if table:
        assert isinstance(routes, list)
        out.print()
        routes_table(routes)
