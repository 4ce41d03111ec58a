"""Task operations: park a tool call, read the queue, steer a task. Each is written once and
serves the socket API and the command line's direct mode alike; answers are the contract's
task objects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from waystation import contract, timeutil
from waystation.adapters.tools import Resumable
from waystation.errors import InvalidArguments, MalformedRequest, WaystationError
from waystation.ports import idempotency_key_problem
from waystation.queue.policy import TaskState
from waystation.queue.tasks import NewTask, Task
from waystation.station import AgentStation, Station, TurnStation

log = structlog.get_logger(__name__)

CANCEL_TOLD_S = 10.0  # how long a cancel waits for a destination to hear of it (tasks/cancel)

if TYPE_CHECKING:
    from waystation.adapters.tools import ToolRegistry

# Checks a caller adds before a task is committed (the fleet's, on work from the hub): called with
# the tool's name, the validated arguments and the destination host; it raises to refuse.
Admit = Callable[[str, Mapping[str, Any], str], Awaitable[None]]


async def add(
    station: Station,
    tool_name: str,
    args: object,
    key: str | None = None,
    expires_at: float | None = None,
    admit: Admit | None = None,
) -> tuple[contract.Task, bool]:
    """(task, created): an existing task when the key exists with equal arguments."""
    return await _enqueue(station, new_task(station.tools, tool_name, args, key, expires_at), admit)


def new_task(
    tools: ToolRegistry, tool_name: str, args: object, key: str | None = None, expires_at: float | None = None
) -> NewTask:
    """The task a call asks for, its arguments validated by its tool; InputError when it is not one."""
    tool = tools.get(tool_name)
    valid = tool.validate(args, allow_secrets=True)  # a model's calls never name secrets; a client may
    if key is not None and (problem := idempotency_key_problem(key)) is not None:
        raise InvalidArguments(tool.name, problem)
    if expires_at is not None and expires_at <= timeutil.now():
        raise InvalidArguments(
            tool.name, f"expires_at {timeutil.iso(expires_at)} is in the past: it would never be sent"
        )
    return NewTask(
        tool=tool.name,
        args=valid,
        host=tool.destination_host(valid),
        idempotency_key=key,
        expires_at=expires_at,
    )


async def add_request(
    station: Station, body: dict[str, Any], key: str | None = None, admit: Admit | None = None
) -> tuple[contract.Task, bool]:
    """A `POST /v1/tasks` body as a task (the API's and the fleet's work alike); `key` when the
    body names no idempotency_key (the fleet gives its message id)."""
    return await _enqueue(station, request_task(station.tools, body, key), admit)


async def _enqueue(station: Station, new: NewTask, admit: Admit | None) -> tuple[contract.Task, bool]:
    if admit is not None:
        await admit(new.tool, new.args, new.host)
    task, created = await station.store.enqueue(new)
    if created:
        station.announcer.task_changed(task.to_json())  # the agent's flusher hears it and wakes
    return task.to_json(), created


def request_task(tools: ToolRegistry, body: dict[str, Any], key: str | None = None) -> NewTask:
    """A `POST /v1/tasks` body checked as the API checks it: what `fleet submit` checks work with
    before it is sent, so that work a host would refuse is refused where it is written."""
    tool = body.get("tool")
    if not isinstance(tool, str):
        raise MalformedRequest("tool must be a string naming a tool")
    expires_at = body.get("expires_at")
    if expires_at is not None:
        try:
            expires_at = timeutil.parse_iso(expires_at) if isinstance(expires_at, str) else None
        except ValueError:
            expires_at = None
        if expires_at is None:
            raise MalformedRequest("expires_at must be an ISO 8601 timestamp")
    given = body.get("idempotency_key")
    if given is not None and not (isinstance(given, str) and 0 < len(given) <= MAX_KEY_LEN):
        raise MalformedRequest(
            f"idempotency_key must be a non-empty string of at most {MAX_KEY_LEN} characters"
        )
    return new_task(tools, tool, body.get("args", {}), given or key, expires_at)


MAX_KEY_LEN = 255


def state_of(text: str | None) -> TaskState | None:
    """A task state named by a caller, or MalformedRequest listing the states."""
    if not text:
        return None
    try:
        return TaskState(text)
    except ValueError:
        raise MalformedRequest(f"state must be one of {', '.join(TaskState)}") from None


async def list_tasks(station: Station, state: str | None, limit: int) -> list[contract.Task]:
    return [t.to_json() for t in await station.store.list(state_of(state), limit)]


async def get(station: Station, task_id: str) -> contract.Task:
    return (await station.store.get(task_id)).to_json()


async def retry(station: Station, task_id: str) -> contract.Task:
    task = (await station.store.retry(task_id)).to_json()
    station.announcer.task_changed(task)  # due now: the agent's flusher hears it and wakes
    return task


async def cancel(station: Station, task_id: str) -> contract.Task:
    """A pending task, or a running one whose delivery has not been answered yet (it is stopped),
    or one waiting on its destination's own task (an MCP server's), which is then asked to cancel
    that task: best effort, after the cancel is committed (the answer's last_error says whether
    the server was told; an offline agent does not try)."""
    current = await station.store.get(task_id)
    stopped = current.state == TaskState.RUNNING and await station.stop_delivery(task_id)
    task, receipt = await station.store.cancel(task_id, abandoned=stopped)
    answer = task.to_json()
    if current.state == TaskState.RUNNING and task.remote_task is not None:
        answer["last_error"] = f"{answer['last_error']}; {await _tell_destination(station, task)}"
    station.announcer.task_changed(answer, receipt)
    return answer


async def _tell_destination(station: Station, task: Task) -> str:
    """Ask the destination to cancel its own task for `task`; what came of it, in words."""
    assert task.remote_task is not None
    state = station.monitor.state if isinstance(station, TurnStation) else "unknown"
    if state in ("offline", "portal"):
        note = f"the server was not told (connectivity is {state}): its task {task.remote_task} may run on"
    else:
        try:
            tool = station.tools.get(task.tool)
            if isinstance(tool, Resumable):
                await tool.cancel_remote(task.args, task.remote_task, CANCEL_TOLD_S)
                return f"the server was asked to cancel its task {task.remote_task}"
            reason = f"{task.tool} cannot cancel a destination's task"
        except WaystationError as exc:
            reason = exc.message
        note = f"the server could not be told ({reason}): its task {task.remote_task} may run on"
    log.warning("a cancelled task's destination was not told", task_id=task.id, note=note)
    return note


async def flush(station: AgentStation) -> contract.FlushResult:
    """Make every pending task due now and deliver (the agent only: it holds the flusher)."""
    due = await station.store.make_due()
    station.flusher.flush_everything()  # an explicit flush sends what a metered connection holds back
    state = station.monitor.state
    note = "delivering now" if state == "online" else f"connectivity is {state}: will deliver when online"
    return {"pending": due, "connectivity": state, "metered": station.monitor.metered, "message": note}
