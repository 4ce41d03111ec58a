"""`waystation turn`: one turn, through the agent when it runs, else in this process; and the
turns you come back to (`turn ls`, `turn show ID`, `turn wait ID`, in turn_comeback.py).

Through the agent a turn runs in the agent: if this command stops waiting (its --timeout, a
lost connection) the turn goes on, and the command prints its id and exits 5 instead of
reporting a failure. In-process turns use the same database, so a tool call parked here is
delivered by the agent when it next runs. On a terminal the reply streams as it is generated,
and while nothing has come yet a spinner on stderr says what is happening: "waiting for the model
(N ahead)" behind other turns, "loading model…" while it loads, else "thinking…"; never with
--json or when stderr is not a terminal. A turn that ends parked says on stderr how to get its
answer later; a prompt naming a web address without http(s):// gets a hint that it will not be
fetched (cli/schemeless.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
from typing import Annotated, Any

import typer

from waystation import contract
from waystation.cli.commands.turn_comeback import check_state, list_turns, show_turn, wait_for_turn
from waystation.cli.common import JsonFlag, Progress, progress, stderr_is_terminal, usage_error, waystation
from waystation.config import Paths, Settings
from waystation.config_load import load_settings
from waystation.errors import AgentNotRunning, WaystationError

# What a turn id looks like on the command line: `show`/`wait` before one of these is the
# subcommand; before any other word it starts a prompt ("show me a haiku").
TURN_ID = re.compile(r"turn_[A-Za-z0-9]+")
LS_LIMIT = 100


def read_words(words: list[str]) -> tuple[str, str | None]:
    """What the words ask for: ("ls", None); ("show" or "wait", the turn id, or None when it
    is missing); or ("prompt", None). Only whole arguments count, so a quoted prompt is always a
    prompt: `waystation turn "show turn_1a2b"` asks the model."""
    first, rest = words[0], words[1:]
    if first == "ls" and not rest:
        return "ls", None
    if first in ("show", "wait") and not rest:
        return first, None
    if first in ("show", "wait") and len(rest) == 1 and TURN_ID.fullmatch(rest[0]):
        return first, rest[0]
    return "prompt", None


def turn(
    ctx: typer.Context,
    words: Annotated[
        list[str],
        typer.Argument(
            metavar="PROMPT | ls | show TURN_ID | wait TURN_ID",
            help="What the turn should do; or `ls`, or `show`/`wait` and a turn's id.",
        ),
    ],
    route: Annotated[
        str | None, typer.Option("--route", help="The route to run on (default: agent.default_route).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="A name from `waystation models ls`, or a GGUF file or MLX model dir, for this turn.",
        ),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt.")] = None,
    keep_alive: Annotated[
        str | None,
        typer.Option(
            "--keep-alive",
            help='How long a local model stays loaded after it: "5m", "30s", 0 (unload now), -1 (forever).',
        ),
    ] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, max=8192, help="Reply length limit.")
    ] = 256,
    tool_choice: Annotated[
        str, typer.Option("--tools", help="auto (the model decides), required (must call one), none.")
    ] = "auto",
    defer: Annotated[
        bool,
        typer.Option(
            "--defer", help="Offline on a cloud route: park the whole turn until the network is back."
        ),
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the turn ends, parked calls delivered and resumed.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="Stop waiting after this many seconds (exit 5; it goes on)."),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            metavar="STATE",
            callback=check_state,
            help="`turn ls`: only turns in this state: running, parked, resuming, deferred, ok, "
            "refused, error or interrupted.",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, max=1000, help=f"`turn ls`: at most this many (default {LS_LIMIT})."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run one model turn. Network tool calls made while offline are parked and resume the turn
    once delivered. Exit 4 when the route refuses (it never falls back to another); exit 5 when
    the turn is still going as this command stops waiting (it prints the turn's id).

    `ls` lists turns, newest first. `show TURN_ID` prints one; `wait TURN_ID` waits until it ends
    (exit 0 ok, 1 error, 4 refused, 5 still going at --timeout). Only `ls` alone, and `show` or
    `wait` followed by one turn id (`turn_...`), are these commands; `show` and `wait` without an
    id are usage errors; any other words are a prompt. Quote a prompt to be sure:
    `waystation turn "show turn_1a2b"` asks the model.

    A web address needs its `https://` to be fetched: a prompt naming `example.com/news` gets a
    hint on stderr, and the turn runs without fetching it.

    ```
    waystation turn "Summarize https://example.org/ in one line" --wait
    waystation turn "Hello" --route local --json
    waystation turn ls --state parked
    waystation turn show turn_1a2b3c
    waystation turn wait turn_1a2b3c --timeout 600 --json
    ```
    """
    action, turn_id = read_words(words)
    if action != "ls" and (state is not None or limit is not None):
        raise usage_error("--state and --limit are for `waystation turn ls`", ctx)
    if action == "ls":
        raise typer.Exit(list_turns(state, LS_LIMIT if limit is None else limit, as_json))
    if action in ("show", "wait") and turn_id is None:
        options = "[--json]" if action == "show" else "[--timeout S] [--json]"
        raise usage_error(f"turn {action} needs a turn id: waystation turn {action} TURN_ID {options}", ctx)
    if action == "show":
        raise typer.Exit(show_turn(str(turn_id), as_json))
    if action == "wait":
        raise typer.Exit(wait_for_turn(str(turn_id), timeout, as_json))
    if tool_choice not in ("auto", "required", "none"):
        raise typer.BadParameter("use auto, required or none", param_hint="--tools")
    body = {
        "prompt": " ".join(words),
        "route": route,
        "model": model,
        "system": system,
        "max_tokens": max_tokens,
        "tool_choice": tool_choice,
        "defer": defer,
        "keep_alive": keep_alive,
    }
    raise typer.Exit(_new_turn(body, wait, timeout, as_json))


def _new_turn(body: dict[str, Any], wait: bool, timeout: float | None, as_json: bool) -> int:
    from waystation.cli.schemeless import hint, schemeless_links

    if not as_json:
        for link in schemeless_links(body["prompt"]):
            sys.stderr.write(hint(link) + "\n")
    deadline = None if timeout is None else time.monotonic() + timeout
    stream = sys.stdout.isatty() and not as_json
    show = stderr_is_terminal() and not as_json
    in_process = False
    with waystation() as ws, progress("thinking…", show) as shown:
        try:
            result = _through_agent(ws.agent, body, stream, shown, deadline)
        except AgentNotRunning:
            in_process = True
            settings = load_settings(ws.paths)
            result = asyncio.run(_in_process(ws.paths, settings, body, stream, shown))
    if isinstance(result, str):  # we stopped waiting: say where it stands
        return wait_for_turn(result, 0.0, as_json)
    if wait and result.get("status") == "parked":
        if stream:
            sys.stdout.write("\n")
        return wait_for_turn(result["turn_id"], _left(deadline), as_json)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    if not stream:
        sys.stdout.write(result["text"] + "\n")
    else:
        sys.stdout.write("\n")
    if result.get("status") == "parked":
        sys.stderr.write(parked_note(result, in_process) + "\n")
    return 0


def parked_note(result: contract.TurnResult, in_process: bool) -> str:
    """The next step for a turn that ended parked: how its answer is got later."""
    from waystation.cli.render import n_calls

    calls = sum(1 for call in result.get("tool_calls") or [] if call.get("status") == "deferred")
    parked = f"parked {n_calls(calls)}" if calls else "deferred the turn"
    until = "the agent runs (`waystation run`) and " if in_process else ""
    return (
        f"{parked} until {until}the network is back; "
        f"see the answer with: waystation turn wait {result['turn_id']}"
    )


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _stage_text(stage: str, ahead: int) -> str:
    """What the spinner says while a turn waits for its model."""
    if stage == "waiting":
        return f"waiting for the model ({ahead} ahead)"
    return "loading model…" if stage == "loading" else "thinking…"


def _through_agent(
    agent: Any, body: dict[str, Any], stream: bool, shown: Progress, deadline: float | None
) -> contract.TurnResult | str:
    """The turn's result; or its id when we stop waiting while it goes on in the agent."""
    from waystation.cli.remote_errors import AgentTimeout, AgentUnreachable, rebuild_error
    from waystation.station.turns.request import TURN_ID_HEADER

    turn_id: str | None = None

    def opened(headers: Any) -> None:
        nonlocal turn_id
        turn_id = headers.get(TURN_ID_HEADER)

    stream_body = {**body, "stream": True}
    try:
        for event, data in agent.stream_sse("POST", "/v1/turns", stream_body, _left(deadline), opened):
            if event == "stage":
                shown.update(_stage_text(data["stage"], data["ahead"]))
                continue
            shown.stop()  # the first sign of the reply ends the wait
            if event == "token" and stream:
                sys.stdout.write(data["text"])
                sys.stdout.flush()
            elif event == "done":
                done: contract.TurnResult = data  # the agent's `done` event is the turn's result
                return done
            elif event == "error":
                raise rebuild_error(data["code"], data["message"], 400, data.get("details"))
            if deadline is not None and time.monotonic() >= deadline and turn_id is not None:
                return turn_id
    except (AgentTimeout, AgentUnreachable):
        if turn_id is None:
            raise
        return turn_id  # the connection broke off or went quiet: the turn goes on in the agent
    if turn_id is not None:
        return turn_id
    raise WaystationError("the agent closed the stream before the turn finished")


async def _in_process(
    paths: Paths, settings: Settings, body: dict[str, Any], stream: bool, shown: Progress
) -> contract.TurnResult:
    from waystation import logs
    from waystation.station.build import build_in_process
    from waystation.station.ops import turns
    from waystation.station.turns.request import turn_request

    logs.configure(logging.WARNING)  # this is a command's output, not an agent's log

    def echo(piece: str) -> None:
        shown.stop()
        sys.stdout.write(piece)
        sys.stdout.flush()

    def staged(stage: str, ahead: int) -> None:
        shown.update(_stage_text(stage, ahead))

    request = turn_request({k: v for k, v in body.items() if v is not None})
    async with contextlib.AsyncExitStack() as stack:
        station = await build_in_process(stack, paths, settings)
        result = await turns.run(station, request, echo if stream else None, staged)
        return result.to_json()
