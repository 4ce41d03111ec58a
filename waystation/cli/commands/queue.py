"""`waystation queue ...`: inspect and steer the queue of parked tool calls.

Everything but `flush` works straight on the database when no agent runs.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any, get_args

import typer

from waystation import contract
from waystation.cli.common import JsonFlag, progress, stderr_is_terminal, typer_app, waystation

FOLLOW_INTERVAL_S = 0.5
STATES = get_args(contract.TaskState)

queue_app = typer_app(help="Inspect and steer the queue of parked tool calls.", no_args_is_help=True)


def _parse_args(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON ({exc})", param_hint="'--args'") from None
    if not isinstance(value, dict):
        example = '{"url": "https://..."}'
        raise typer.BadParameter(f"must be a JSON object, e.g. '{example}'", param_hint="'--args'")
    return value


@queue_app.command("add")
def queue_add(
    tool: Annotated[
        str, typer.Argument(metavar="TOOL", help="The tool to call: http_request, web_fetch or mcp.")
    ],
    args: Annotated[
        str, typer.Option("--args", metavar="JSON", help="The tool's arguments as a JSON object.")
    ],
    key: Annotated[
        str | None,
        typer.Option("--key", help="Idempotency key: adding the same key again answers the same task."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Park a tool call in the queue; it is delivered when connectivity is online.

    Works without the agent: the task is then written straight to the database and goes out
    once `waystation run` is up. The same `--key` with the same args answers the existing task;
    with other args it is an error (exit 1). Bad JSON in `--args` is a usage error (exit 2).

    ```
    waystation queue add web_fetch --args '{"url": "https://example.com/"}'
    waystation queue add http_request --key order-42 \\
        --args '{"method": "POST", "url": "https://example.com/hook", "json": {"a": 1}}'
    waystation queue add mcp --args '{"server": "tracker", "tool": "open_ticket", "arguments": {}}'
    ```
    """
    from waystation.cli import render

    arguments = _parse_args(args)
    with waystation() as ws:
        task, created = ws.add_task(tool, arguments, key)
        direct = ws.via_agent is False
    if as_json:
        render.emit_json(task)
        return
    if created:
        render.say(f"queued task {task['id']} ({task['tool']}, {task['state']})")
    else:
        render.say(f"task {task['id']} already has key {task['idempotency_key']!r} ({task['state']})")
    if direct and created:
        sys.stderr.write("note: the agent is not running; the task is saved and goes out once it runs\n")


def _check_state(value: str | None) -> str | None:
    if value is not None and value not in STATES:
        raise typer.BadParameter(f"{value!r} is not a task state; use one of {', '.join(STATES)}")
    return value


@queue_app.command("ls")
def queue_ls(
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            metavar="STATE",
            callback=_check_state,
            help=f"Only tasks in this state: {', '.join(STATES)}.",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="At most this many (up to 1000), newest first.")
    ] = 100,
    as_json: JsonFlag = False,
) -> None:
    """List tasks, newest first.

    ```
    waystation queue ls --state dead
    ```
    """
    from waystation.cli import render

    with waystation() as ws:
        tasks = ws.list_tasks(state, limit)
    render.output(tasks, as_json, render.tasks_table)


@queue_app.command("show")
def queue_show(task_id: Annotated[str, typer.Argument(metavar="ID")], as_json: JsonFlag = False) -> None:
    """Show one task: state, why a pending one waits, attempts, next attempt, last error, args
    and result."""
    from waystation.cli import render

    with waystation() as ws:
        task = ws.get_task(task_id)
        network: str | None = None  # as the agent's monitor sees it; None when no agent runs
        if task.get("state") == "pending" and not as_json:
            network = ws.either(
                lambda agent: str(agent.request("GET", "/v1/connectivity")["state"]), lambda _: None
            )
    render.output(task, as_json, lambda shown: render.task_detail(shown, render.waiting(shown, network)))


@queue_app.command("retry")
def queue_retry(task_id: Annotated[str, typer.Argument(metavar="ID")], as_json: JsonFlag = False) -> None:
    """Make a task due now with its attempts reset (dead, cancelled, expired or pending tasks)."""
    with waystation() as ws:
        task = ws.retry_task(task_id)
    _steered(task, as_json, "task {id} is {state} again, due now")


@queue_app.command("cancel")
def queue_cancel(task_id: Annotated[str, typer.Argument(metavar="ID")], as_json: JsonFlag = False) -> None:
    """Cancel a pending task (or a running one not yet answered, or one waiting on an MCP
    server's task: the server is sent tasks/cancel); its receipt records the cancellation."""
    with waystation() as ws:
        task = ws.cancel_task(task_id)
    _steered(task, as_json, "cancelled task {id}")


def _steered(task: contract.Task, as_json: bool, line: str) -> None:
    """What a steered task now is: the task object, or one line about it."""
    from waystation.cli import render

    if as_json:
        render.emit_json(task)
    else:
        render.say(line.format(**task))


@queue_app.command("flush")
def queue_flush(
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="Follow the delivery until the queue is empty (default: on a terminal, not when piped).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Deliver due tasks now instead of waiting (only while online). Needs the running agent.

    On a terminal it then follows the delivery (pending, running, done) until nothing is left
    or connectivity is not online; Ctrl-C stops following, the agent keeps delivering.
    """
    from waystation.cli import render

    if wait is None:
        wait = not as_json and sys.stdout.isatty() and stderr_is_terminal()
    with waystation() as ws:
        answer = ws.need_agent("POST", "/v1/flush")
        if as_json:
            render.emit_json(answer)
        elif isinstance(answer, dict) and "pending" in answer:
            count = answer["pending"]
            note = f": {answer['message']}" if answer.get("message") else ""
            render.say(f"{count} pending task{'' if count == 1 else 's'} due now{note}")
        else:
            render.say("flush started")
        if wait:
            _follow(ws, quiet=as_json)


def _follow(ws: Any, quiet: bool) -> None:
    """Poll the queue counts until nothing is pending or running, or connectivity is not online.
    The counts show on a spinner line (stderr, terminal only); the outcome is one line."""
    from waystation.cli import render

    def finish(text: str) -> None:
        if not quiet:
            render.say(text)

    with progress("flushing…", enabled=stderr_is_terminal() and not quiet) as shown:
        try:
            while True:
                status = ws.need_agent("GET", "/v1/status")
                counts = status.get("queue") or {}
                pending, running = int(counts.get("pending", 0)), int(counts.get("running", 0))
                shown.update(f"pending {pending}, running {running}, done {int(counts.get('done', 0))}")
                state = (status.get("connectivity") or {}).get("state")
                if pending + running == 0:
                    shown.stop()
                    finish("flush done: nothing pending or running")
                    return
                if state != "online":
                    shown.stop()
                    plural = "" if pending + running == 1 else "s"
                    finish(
                        f"connectivity is {state}: the agent delivers the {pending + running} "
                        f"remaining task{plural} when online"
                    )
                    return
                time.sleep(FOLLOW_INTERVAL_S)
        except KeyboardInterrupt:
            shown.stop()
            finish("stopped following; the agent keeps delivering")
