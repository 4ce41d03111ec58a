"""How one value is shown to a person: times as ages and durations, states in their colour, and
the cells, tables and key-value grids the records and the status screen are drawn with."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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


def cell(value: object, style: str = "") -> Text:
    from rich.text import Text

    if value is None or value == "":
        return Text("-", style="dim")
    return Text(str(value), style=style)


def state_cell(value: object) -> Text:
    return cell(value, STATE_STYLE.get(str(value), ""))


def new_table(*columns: str) -> Table:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in columns:
        no_wrap = name in ("id", "created", "state", "status")
        table.add_column(name, no_wrap=no_wrap, overflow="fold")
    return table


def pairs_grid(rows: Iterable[tuple[str, object]]) -> Table:
    from rich.console import ConsoleRenderable
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value if isinstance(value, ConsoleRenderable) else cell(value))
    return grid
