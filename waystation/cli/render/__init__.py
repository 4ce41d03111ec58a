"""How the command line shows things: rich tables for people, plain JSON for programs.

    output.py   where output goes: JSON documents and lines, plain lines, the rich console
    cells.py    one value for a person: ages, durations, states in colour, cells and tables
    records.py  tasks, turns and receipts, listed and opened
    station.py  connectivity, the routes, the status screen

Commands call `render.<name>` on this package; each name is defined once in one of the above.
"""

from __future__ import annotations

from waystation.cli.render.cells import ago, due, duration, when
from waystation.cli.render.output import console, emit_json, emit_json_lines, output, say
from waystation.cli.render.records import (
    n_calls,
    parked_calls,
    receipt_detail,
    receipts_table,
    task_detail,
    tasks_table,
    turn_detail,
    turn_outcome,
    turns_table,
    waiting,
)
from waystation.cli.render.station import connectivity, connectivity_line, routes_table, status_screen

__all__ = [
    "ago",
    "connectivity",
    "connectivity_line",
    "console",
    "due",
    "duration",
    "emit_json",
    "emit_json_lines",
    "n_calls",
    "output",
    "parked_calls",
    "receipt_detail",
    "receipts_table",
    "routes_table",
    "say",
    "status_screen",
    "task_detail",
    "tasks_table",
    "turn_detail",
    "turn_outcome",
    "turns_table",
    "waiting",
    "when",
]
