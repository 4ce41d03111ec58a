"""The agent's own commands: `run` (the agent in the foreground), `status`, `routes`,
`connectivity` (show, or `set` to force a mode) and `token` (the listener's bearer token). All but
`run` and `token` need the running agent and exit 3 without it."""

from __future__ import annotations

from typing import Annotated, get_args

import typer

from waystation import contract
from waystation.cli.common import JsonFlag, typer_app, waystation

MODES = get_args(contract.ConnectivityMode)

connectivity_app = typer_app(invoke_without_command=True)


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


def status(as_json: JsonFlag = False) -> None:
    """Show the agent at a glance: connectivity, queue counts, model and routes.

    Needs the running agent (exit 3 without it).

    ```
    waystation status --json
    ```
    """
    from waystation.cli import render

    with waystation() as ws:
        answer = ws.need_agent("GET", "/v1/status")
    render.output(answer, as_json, render.status_screen)


def routes(as_json: JsonFlag = False) -> None:
    """List every route, available or not, with the reason.

    Needs the running agent (exit 3 without it).
    """
    from waystation.cli import render

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
    from waystation.cli import render

    with waystation() as ws:
        answer = ws.need_agent("GET", "/v1/connectivity")
    render.output(answer, as_json, render.connectivity)


def token(
    rotate: Annotated[
        bool,
        typer.Option("--rotate", help="Replace the token; the old one is refused from the next request."),
    ] = False,
) -> None:
    """Print the bearer token of the listener (`[agent] listen`) that other tools send.

    Kept in the state directory as api.token (0600); made now if there is none yet (the agent
    makes it too, when it starts with `listen` set). A running agent honours a rotated token at
    once. `waystation status` and `doctor` show the listener's address.

    ```
    OPENAI_BASE_URL=http://127.0.0.1:11435/v1 OPENAI_API_KEY=$(waystation token) some-tool
    waystation token --rotate
    ```
    """
    import sys

    from waystation.api_token import read_or_create
    from waystation.api_token import rotate as rotate_token
    from waystation.config import Paths

    state = Paths.resolve().state
    sys.stdout.write((rotate_token(state) if rotate else read_or_create(state)) + "\n")


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
    from waystation.cli import render

    with waystation() as ws:
        answer = ws.need_agent("PUT", "/v1/connectivity", {"mode": mode})
    render.output(answer, as_json, render.connectivity)
