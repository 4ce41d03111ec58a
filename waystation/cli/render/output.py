"""Where the command line's output goes: plain JSON for programs, lines and a rich console for
people. JSON never goes through rich (it would wrap, truncate or colour it); it is written to stdout
as UTF-8 bytes, one document per command (or one per line for JSON Lines).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


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
