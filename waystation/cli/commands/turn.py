"""`waystation turn`: one turn, through the agent when it runs, else in this process.

In-process turns use the same database, so a tool call parked here is delivered by the agent
when it next runs. On a terminal the reply streams as it is generated, and while nothing has come
yet a spinner on stderr says what is happening ("loading model…" when the local model is not in
memory yet, else "thinking…"); it never shows with --json or when stderr is not a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from typing import Annotated, Any

import typer

from waystation.cli.common import JsonFlag, Progress, progress, stderr_is_terminal, waystation
from waystation.config import Paths, Settings, load_settings
from waystation.errors import AgentNotRunning, WaystationError


def turn(
    prompt: Annotated[str, typer.Argument(help="What the turn should do.")],
    route: Annotated[
        str | None, typer.Option("--route", help="The route to run on (default: agent.default_route).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="A GGUF file or MLX model dir for this turn.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt.")] = None,
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
    as_json: JsonFlag = False,
) -> None:
    """Run one model turn. Network tool calls made while offline are parked and resume the turn
    once delivered. Exit 4 when the route refuses (it never falls back to another).

    ```
    waystation turn "Summarize https://example.org/ in one line"
    waystation turn "Hello" --route local --json
    ```
    """
    if tool_choice not in ("auto", "required", "none"):
        raise typer.BadParameter("use auto, required or none", param_hint="--tools")
    body = {
        "prompt": prompt,
        "route": route,
        "model": model,
        "system": system,
        "max_tokens": max_tokens,
        "tool_choice": tool_choice,
        "defer": defer,
    }
    stream = sys.stdout.isatty() and not as_json
    show = stderr_is_terminal() and not as_json
    with waystation() as ws:
        try:
            label = _label(ws.agent, _is_local(ws.paths, route), model) if show else ""
            with progress(label, show) as shown:
                result = _through_agent(ws.agent, body, stream, shown)
        except AgentNotRunning:
            settings = load_settings(ws.paths)
            local = (route or settings.agent.default_route) == "local"
            with progress("loading model…" if local else "thinking…", show) as shown:
                result = asyncio.run(_in_process(ws.paths, settings, body, stream, shown))
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


def _is_local(paths: Paths, route: str | None) -> bool:
    if route is not None:
        return route == "local"
    try:
        return load_settings(paths).agent.default_route == "local"
    except WaystationError:
        return True  # the agent has its own settings; only the spinner's words depend on this


def _label(agent: Any, local: bool, model: str | None) -> str:
    """What the spinner says: the local model loads lazily on the first turn, which for a big
    model takes a while; anything else is the model at work."""
    if not local:
        return "thinking…"
    if model is not None:
        return "loading model…"
    answer = agent.request("GET", "/v1/status")  # AgentNotRunning: the caller runs in process
    loaded = isinstance(answer, dict) and bool((answer.get("model") or {}).get("loaded"))
    return "thinking…" if loaded else "loading model…"


def _through_agent(agent: Any, body: dict[str, Any], stream: bool, shown: Progress) -> dict[str, Any]:
    if not stream:
        answer: dict[str, Any] = agent.request("POST", "/v1/turns", json=body)
        return answer
    for event, data in agent.stream_sse("POST", "/v1/turns", {**body, "stream": True}):
        shown.stop()  # the first sign of the reply ends the wait
        if event == "token":
            sys.stdout.write(data["text"])
            sys.stdout.flush()
        elif event == "done":
            return dict(data)
        elif event == "error":
            from waystation.cli.client import rebuild_error

            raise rebuild_error(data["code"], data["message"], 400, data.get("details"))
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

    request = turn_request({k: v for k, v in body.items() if v is not None})
    async with contextlib.AsyncExitStack() as stack:
        station = await build_in_process(stack, paths, settings)
        result = await turns.run(station, request, echo if stream else None)
        return result.to_json()
