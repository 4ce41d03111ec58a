"""Task operations: park a tool call, read the queue, steer a task. Each is written once and
serves the socket API and the command line's direct mode alike; answers are the contract's
task objects."""

from __future__ import annotations

from typing import Any

from waystation import timeutil
from waystation.errors import InvalidArguments, MalformedRequest
from waystation.ports import idempotency_key_problem
from waystation.queue.policy import TaskState
from waystation.queue.tasks import NewTask
from waystation.station.build import AgentStation, Station


async def add(
    station: Station, tool_name: str, args: object, key: str | None = None, expires_at: float | None = None
) -> tuple[dict[str, Any], bool]:
    """(task, created): an existing task when the key exists with equal arguments."""
    tool = station.tools.get(tool_name)
    valid = tool.validate(args, allow_secrets=True)  # a model's calls never name secrets; a client may
    if key is not None and (problem := idempotency_key_problem(key)) is not None:
        raise InvalidArguments(tool.name, problem)
    if expires_at is not None and expires_at <= timeutil.now():
        raise InvalidArguments(
            tool.name, f"expires_at {timeutil.iso(expires_at)} is in the past: it would never be sent"
        )
    new = NewTask(
        tool=tool.name,
        args=valid,
        host=tool.destination_host(valid),
        idempotency_key=key,
        expires_at=expires_at,
    )
    task, created = await station.store.enqueue(new)
    if created:
        station.announcer.task_changed(task.to_json())
        station.wake_flusher()
    return task.to_json(), created


def state_of(text: str | None) -> TaskState | None:
    """A task state named by a caller, or MalformedRequest listing the states."""
    if not text:
        return None
    try:
        return TaskState(text)
    except ValueError:
        raise MalformedRequest(f"state must be one of {', '.join(TaskState)}") from None


async def list_tasks(station: Station, state: str | None, limit: int) -> list[dict[str, Any]]:
    return [t.to_json() for t in await station.store.list(state_of(state), limit)]


async def get(station: Station, task_id: str) -> dict[str, Any]:
    return (await station.store.get(task_id)).to_json()


async def retry(station: Station, task_id: str) -> dict[str, Any]:
    task = (await station.store.retry(task_id)).to_json()
    station.announcer.task_changed(task)
    station.wake_flusher()
    return task


async def cancel(station: Station, task_id: str) -> dict[str, Any]:
    """A pending task, or a running one whose delivery has not been answered yet (it is stopped)."""
    current = await station.store.get(task_id)
    stopped = current.state == TaskState.RUNNING and await station.stop_delivery(task_id)
    task, receipt = await station.store.cancel(task_id, abandoned=stopped)
    answer = task.to_json()
    station.announcer.task_changed(answer, receipt)
    return answer


async def flush(station: AgentStation) -> dict[str, Any]:
    """Make every pending task due now and deliver (the agent only: it holds the flusher)."""
    due = await station.store.make_due()
    station.flusher.flush_everything()  # an explicit flush sends what a metered connection holds back
    state = station.monitor.state
    note = "delivering now" if state == "online" else f"connectivity is {state}: will deliver when online"
    return {"pending": due, "connectivity": state, "metered": station.monitor.metered, "message": note}
