"""An MCP server's own task for a call (the tasks extension, `io.modelcontextprotocol/tasks`):
asked after with `tasks/get` until it ends, its result then read with `tasks/result` (the
`tools/call` result the server would have answered), and `tasks/cancel` when its Waystation task
is cancelled. Each is one short session, like a call's (session.py), so a poll survives the
server's restarts and ours: all it needs is the task id, which the queue keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from waystation.adapters.mcp.session import ListChanged, McpRefused, call_result, open_session, translated
from waystation.config import McpServerSettings

WORKING = frozenset({"working", "input_required"})
ENDED_WITH_RESULT = frozenset({"completed", "failed"})  # tasks/result has the call's result


@dataclass(frozen=True)
class RemoteTask:
    """What `tasks/get` said of a task (and, once it ended, what `tasks/result` gave)."""

    status: str  # working | input_required | completed | failed | cancelled
    message: str | None
    poll_s: float | None  # the server's pollInterval, in seconds
    result: dict[str, Any] | None = None  # the call's result, once completed or failed


def task_state(task: Mapping[str, Any]) -> RemoteTask:
    """A task object (tasks/get's answer, or CreateTaskResult's `task`), checked."""
    status = task.get("status")
    if not isinstance(status, str) or status not in WORKING | ENDED_WITH_RESULT | {"cancelled"}:
        raise McpRefused(-32603, f"the server's task has no known status ({str(status)[:40]!r})")
    poll = task.get("pollInterval")
    poll_s = poll / 1000 if isinstance(poll, int | float) and not isinstance(poll, bool) else None
    message = task.get("statusMessage")
    return RemoteTask(status, message[:300] if isinstance(message, str) else None, poll_s)


async def ask_after(
    name: str,
    server: McpServerSettings,
    task_id: str,
    headers: Mapping[str, str],
    timeout_s: float,
    list_changed: ListChanged | None = None,
) -> RemoteTask:
    """`tasks/get`, and `tasks/result` when the task ended with one."""

    async def ask() -> RemoteTask:
        async with open_session(server, headers, list_changed) as opened:
            state = task_state(await opened.request("tasks/get", {"taskId": task_id}))
            if state.status not in ENDED_WITH_RESULT:
                return state
            result = call_result(await opened.request("tasks/result", {"taskId": task_id}))
            if "task" in result:
                raise McpRefused(-32603, "tasks/result answered with a task, not the call's result")
            return RemoteTask(state.status, state.message, state.poll_s, result)

    return cast(RemoteTask, await translated(name, ask, timeout_s))


async def cancel(
    name: str, server: McpServerSettings, task_id: str, headers: Mapping[str, str], timeout_s: float
) -> None:
    """`tasks/cancel` (McpRefused: the server said no, e.g. the task had ended already)."""

    async def ask() -> None:
        async with open_session(server, headers) as opened:
            await opened.request("tasks/cancel", {"taskId": task_id})

    await translated(name, ask, timeout_s)
