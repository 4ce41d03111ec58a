"""What the command modules share: the app factory, the --json flag, the way to the data."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from waystation.client import Waystation

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print one JSON document (the HTTP API's objects) instead of a table.")
]


def typer_app(**options: Any) -> typer.Typer:
    """A command group with the house settings: -h as well as --help, Markdown help text
    (paragraphs reflow, `code` shows as code, fenced blocks are examples), no rich tracebacks."""
    return typer.Typer(
        context_settings={"help_option_names": ["-h", "--help"]},
        rich_markup_mode="markdown",
        pretty_exceptions_enable=False,
        add_completion=False,
        **options,
    )


def waystation() -> Waystation:
    """The operations behind the commands, through the agent or direct (see client.py)."""
    from waystation.client import Waystation
    from waystation.config import Paths

    return Waystation(Paths.resolve())


def fail(message: str) -> None:
    """The one line a failure prints on stderr."""
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.stderr.flush()
