"""What the command modules share: the app factory, the --json flag, the way to the data, and
the progress line shown on a terminal while something slow runs."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from waystation.cli.client import Waystation

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print one JSON document (the HTTP API's objects) instead of a table.")
]


def click_exceptions() -> ModuleType:
    """click's exceptions module as typer uses it: recent typer vendors click as typer._click,
    older releases use the click package (a UsageError from the other one would not be caught)."""
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def usage_error(message: str, ctx: Any = None) -> Exception:
    """A usage error (exit 2) saying `message`, to raise."""
    error: Exception = click_exceptions().UsageError(message, ctx)
    return error


def typer_app(**options: Any) -> typer.Typer:
    """A command group with the house settings: -h as well as --help, Markdown help text
    (paragraphs reflow, `code` shows as code, fenced blocks are examples), no rich tracebacks.
    Shell completion (`--install-completion`, `--show-completion`) only where asked for: the
    root app passes add_completion=True."""
    options.setdefault("add_completion", False)
    return typer.Typer(
        context_settings={"help_option_names": ["-h", "--help"]},
        rich_markup_mode="markdown",
        pretty_exceptions_enable=False,
        **options,
    )


class Progress:
    """A spinner with a line of text on stderr; `update` changes the text, `stop` erases it.
    Inert (prints nothing) when stderr is not a terminal."""

    def __init__(self, text: str, enabled: bool) -> None:
        self._live: Any = None
        self._spinner: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.live import Live
        from rich.spinner import Spinner

        self._spinner = Spinner("dots", text)
        # No stdout/stderr redirection: stdout may be a pipe, and must get only the output.
        self._live = Live(
            self._spinner,
            console=Console(stderr=True),
            transient=True,
            refresh_per_second=12.5,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start(refresh=True)

    @property
    def active(self) -> bool:
        return self._live is not None

    def update(self, text: str) -> None:
        if self._live is not None:
            self._spinner.update(text=text)
            self._live.refresh()

    def note(self, line: str) -> None:
        """A line on stderr that stays: printed above the spinner while one shows (a plain write
        would be overdrawn by its next refresh)."""
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def stop(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress(text: str, enabled: bool | None = None) -> Iterator[Progress]:
    """Show `text` with a spinner on stderr while the block runs (only on a terminal)."""
    shown = Progress(text, stderr_is_terminal() if enabled is None else enabled)
    try:
        yield shown
    finally:
        shown.stop()


def waystation() -> Waystation:
    """The operations behind the commands, through the agent or direct (see cli/client.py)."""
    from waystation.cli.client import Waystation
    from waystation.config import Paths

    return Waystation(Paths.resolve())


def fail(message: str) -> None:
    """The one line a failure prints on stderr."""
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.stderr.flush()
