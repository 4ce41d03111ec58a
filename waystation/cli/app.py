"""The `waystation` commands (typer): a thin client of the agent's socket API, plus `run`.

Commands that only read or steer stored data (`queue ...` but flush, `receipts ...`, `models
...` but ps) work straight on the database or the state directory when no agent runs; `status`,
`routes`, `connectivity`, `queue flush` and `models ps` need the agent and exit 3 without it.
Every failure is one `error: ...` line on stderr; exit codes are the contract's (0 ok, 1 error,
2 usage, 3 agent not running, 4 refused).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from waystation import __version__
from waystation.cli.commands.agent import connectivity_app, routes, run, status, token
from waystation.cli.commands.doctor import doctor
from waystation.cli.commands.events import events
from waystation.cli.commands.fleet import fleet_app
from waystation.cli.commands.mcp import mcp_app
from waystation.cli.commands.models import models_app
from waystation.cli.commands.queue import queue_app
from waystation.cli.commands.receipts import receipts_app
from waystation.cli.commands.service import service_app
from waystation.cli.commands.turn import turn
from waystation.cli.common import click_exceptions, fail, typer_app
from waystation.errors import WaystationError

DEBUG_ENV = "WAYSTATION_DEBUG"


app = typer_app(name="waystation", no_args_is_help=True, add_completion=True)
app.add_typer(queue_app, name="queue")
app.add_typer(models_app, name="models")
app.add_typer(receipts_app, name="receipts")
app.add_typer(connectivity_app, name="connectivity")
app.add_typer(service_app, name="service")
app.add_typer(fleet_app, name="fleet")
app.add_typer(mcp_app, name="mcp")
app.command()(turn)
app.command()(events)
app.command()(doctor)
app.command()(run)
app.command()(status)
app.command()(routes)
app.command()(token)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"waystation {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Waystation: an edge agent that runs model turns on this host, parks network tool calls
    in a durable queue while offline, and writes a tamper-evident receipt for each.

    State lives in `WAYSTATION_HOME` when it is set; `WAYSTATION_SOCKET` overrides the socket
    alone. Exit codes: 0 ok, 1 error, 2 usage, 3 agent not running, 4 route refused.
    """


# --- entry point -------------------------------------------------------------------------------


def run_cli(argv: list[str] | None = None) -> int:
    """Run one command; its exit code. Failures print one line on stderr, never a traceback."""
    click_errors = click_exceptions()
    try:
        result = app(args=argv, prog_name="waystation", standalone_mode=False)
    except WaystationError as exc:
        fail(exc.message)
        return exc.exit_code
    except click_errors.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            if exc.format_message().strip():  # rich already printed the help otherwise
                exc.show()
            return int(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        fail(f"{exc.format_message()}{hint}")
        return int(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        fail("interrupted")
        return 130
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        fail(f"unexpected {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)")
        return 1
    return result if isinstance(result, int) else 0
