"""The `waystation` commands (typer): a thin client of the agent's socket API, plus `run`.

Commands that only read or steer stored data (`queue ...` but flush, `receipts ...`) work
straight on the database when no agent runs; `status`, `routes`, `connectivity` and
`queue flush` need the agent and exit 3 without it. Every failure is one `error: ...` line on
stderr; exit codes are the contract's (0 ok, 1 error, 2 usage, 3 agent not running, 4 refused).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Annotated

import typer

from waystation import __version__
from waystation.cli_common import JsonFlag, fail, typer_app, waystation
from waystation.cli_ops import doctor, events
from waystation.cli_queue import queue_app
from waystation.cli_receipts import receipts_app
from waystation.cli_service import service_app
from waystation.cli_turn import turn
from waystation.errors import WaystationError

DEBUG_ENV = "WAYSTATION_DEBUG"


MODES = ("auto", "online", "offline")


app = typer_app(name="waystation", no_args_is_help=True, add_completion=True)
connectivity_app = typer_app(invoke_without_command=True)
app.add_typer(queue_app, name="queue")
app.add_typer(receipts_app, name="receipts")
app.add_typer(connectivity_app, name="connectivity")
app.add_typer(service_app, name="service")
app.command()(turn)
app.command()(events)
app.command()(doctor)


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


# --- the agent ---------------------------------------------------------------------------------


@app.command()
def run() -> None:
    """Run the agent in the foreground (what systemd and launchd start).

    It is ready once `GET /v1/status` answers on the socket. SIGTERM or SIGINT stops it within
    10 s; tasks in flight go back to pending, nothing is lost. Example, forced offline:

    ```
    WAYSTATION_CONNECTIVITY__MODE=offline waystation run
    ```
    """
    from waystation.agent.runner import run_agent

    code = run_agent()
    if code:
        raise typer.Exit(code)


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """Show the agent at a glance: connectivity, queue counts, model and routes.

    Needs the running agent (exit 3 without it).

    ```
    waystation status --json
    ```
    """
    from waystation import cli_render as render

    with waystation() as ws:
        answer = ws.need_agent("GET", "/v1/status")
    render.output(answer, as_json, render.status_screen)


@app.command()
def routes(as_json: JsonFlag = False) -> None:
    """List every route, available or not, with the reason.

    Needs the running agent (exit 3 without it).
    """
    from waystation import cli_render as render

    with waystation() as ws:
        answer = ws.need_agent("GET", "/v1/routes")
    render.output(answer, as_json, render.routes_table)


@connectivity_app.callback()
def connectivity_show(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show connectivity (online, offline, portal, unknown) and the forced mode; `set` forces it.

    Needs the running agent (exit 3 without it).

    ```
    waystation connectivity --json
    waystation connectivity set offline
    ```
    """
    if ctx.invoked_subcommand is not None:
        return
    from waystation import cli_render as render

    with waystation() as ws:
        answer = ws.need_agent("GET", "/v1/connectivity")
    render.output(answer, as_json, render.connectivity)


def _check_mode(value: str) -> str:
    if value not in MODES:
        raise typer.BadParameter(f"{value!r} is not a mode; use one of {', '.join(MODES)}")
    return value


@connectivity_app.command("set")
def connectivity_set(
    mode: Annotated[
        str,
        typer.Argument(
            metavar="MODE",
            callback=_check_mode,
            help="auto (follow the network), or online/offline (forced).",
        ),
    ],
    as_json: JsonFlag = False,
) -> None:
    """Force connectivity online or offline ("airplane mode"), or go back to auto.

    Needs the running agent (exit 3 without it).

    ```
    waystation connectivity set offline
    ```
    """
    from waystation import cli_render as render

    with waystation() as ws:
        answer = ws.need_agent("PUT", "/v1/connectivity", {"mode": mode})
    render.output(answer, as_json, render.connectivity)


# --- entry point -------------------------------------------------------------------------------


def _click_exceptions() -> ModuleType:
    # Recent typer vendors click as typer._click; older releases use the click package.
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def run_cli(argv: list[str] | None = None) -> int:
    """Run one command; its exit code. Failures print one line on stderr, never a traceback."""
    click_errors = _click_exceptions()
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
