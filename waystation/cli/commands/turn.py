"""`waystation turn`: one turn, through the agent when it runs, else in this process; and the
turns you come back to (`turn show ID`, `turn wait ID`).

Through the agent a turn runs in the agent: if this command stops waiting (its --timeout, a
lost connection) the turn goes on, and the command prints its id and exits 5 instead of
reporting a failure. In-process turns use the same database, so a tool call parked here is
delivered by the agent when it next runs. On a terminal the reply streams as it is generated,
and while nothing has come yet a spinner on stderr says what is happening: "waiting for the model
(N ahead)" behind other turns, "loading model…" while it loads, else "thinking…"; never with
--json or when stderr is not a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from typing import Annotated, Any

import typer

from waystation.cli.common import JsonFlag, Progress, progress, stderr_is_terminal, waystation
from waystation.config import Paths, Settings, load_settings
from waystation.errors import AgentNotRunning, WaystationError

# Exit codes of a turn's final state (the contract's): 5 = still going when we stopped waiting.
EXIT_FOR_STATE = {"ok": 0, "error": 1, "interrupted": 1, "refused": 4}
STILL_GOING = 5
WAITING = ("running", "parked", "resuming", "deferred")


def turn(
    words: Annotated[
        list[str],
        typer.Argument(
            metavar="PROMPT | show TURN_ID | wait TURN_ID",
            help="What the turn should do; or `show`/`wait` and a turn's id.",
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
    as_json: JsonFlag = False,
) -> None:
    """Run one model turn. Network tool calls made while offline are parked and resume the turn
    once delivered. Exit 4 when the route refuses (it never falls back to another); exit 5 when
    the turn is still going as this command stops waiting (it prints the turn's id).

    ```
    waystation turn "Summarize https://example.org/ in one line" --wait
    waystation turn "Hello" --route local --json
    waystation turn show turn_1a2b3c
    waystation turn wait turn_1a2b3c --timeout 600 --json
    ```
    """
    if words[0] in ("show", "wait") and len(words) == 2:
        raise typer.Exit(
            _show(words[1], as_json) if words[0] == "show" else _wait(words[1], timeout, as_json)
        )
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
    deadline = None if timeout is None else time.monotonic() + timeout
    stream = sys.stdout.isatty() and not as_json
    show = stderr_is_terminal() and not as_json
    with waystation() as ws, progress("thinking…", show) as shown:
        try:
            result = _through_agent(ws.agent, body, stream, shown, deadline)
        except AgentNotRunning:
            settings = load_settings(ws.paths)
            result = asyncio.run(_in_process(ws.paths, settings, body, stream, shown))
    if isinstance(result, str):  # we stopped waiting: say where it stands
        raise typer.Exit(_wait(result, 0.0, as_json))
    if wait and result.get("status") == "parked":
        if stream:
            sys.stdout.write("\n")
        raise typer.Exit(_wait(result["turn_id"], _left(deadline), as_json))
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    if not stream:
        sys.stdout.write(result["text"] + "\n")
    else:
        sys.stdout.write("\n")
    for task_id in result.get("deferred_task_ids", []):
        sys.stderr.write(f"parked: task {task_id} (the turn resumes once it is delivered)\n")
    if result.get("status") == "parked":
        sys.stderr.write(f"turn {result['turn_id']} parked; receipt {result['receipt_id']}\n")


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _still_going(turn: dict[str, Any], as_json: bool) -> int:
    """We stop waiting; the turn goes on: its id (or object), and how to come back to it."""
    sys.stdout.write((json.dumps(turn) if as_json else turn["turn_id"]) + "\n")
    turn_id = turn["turn_id"]
    sys.stderr.write(
        f"turn {turn_id} is still {turn['state']}; `waystation turn wait {turn_id}` gets its answer\n"
    )
    return STILL_GOING


def _show(turn_id: str, as_json: bool) -> int:
    from waystation.cli import render

    with waystation() as ws:
        found = ws.get_turn(turn_id)
    render.output(found, as_json, render.turn_detail)
    return 0


def _wait(turn_id: str, timeout: float | None, as_json: bool) -> int:
    """Poll the turn (through the agent, or the database while none runs) until it ends."""
    from waystation.cli import render

    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.1
    told = False
    with waystation() as ws:
        while True:
            try:
                found = ws.get_turn(turn_id)
            except AgentNotRunning:  # it stopped under us: read the database until one runs again
                ws.via_agent = None
                continue
            if found["state"] not in WAITING:
                break
            if not ws.via_agent and not told:
                told = True
                sys.stderr.write(
                    f"turn {turn_id} is {found['state']}; it goes on once an agent runs (`waystation run`)\n"
                )
            if deadline is not None and time.monotonic() >= deadline:
                return _still_going(found, as_json)
            time.sleep(min(pause, _left(deadline) or pause))
            pause = min(pause * 2, 1.0)
    render.output(found, as_json, render.turn_detail)
    return EXIT_FOR_STATE.get(found["state"], 1)


def _stage_text(stage: str, ahead: int) -> str:
    """What the spinner says while a turn waits for its model."""
    if stage == "waiting":
        return f"waiting for the model ({ahead} ahead)"
    return "loading model…" if stage == "loading" else "thinking…"


def _through_agent(
    agent: Any, body: dict[str, Any], stream: bool, shown: Progress, deadline: float | None
) -> dict[str, Any] | str:
    """The turn's result; or its id when we stop waiting while it goes on in the agent."""
    from waystation.cli.client import AgentTimeout, AgentUnreachable, rebuild_error
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
                return dict(data)
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
) -> dict[str, Any]:
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
