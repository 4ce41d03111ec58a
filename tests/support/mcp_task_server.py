"""A Streamable HTTP MCP server that answers `tools/call` with tasks (the tasks extension,
`io.modelcontextprotocol/tasks`), written on the official SDK's MCPServer: its extension surface
advertises the extension, and a server middleware (the SDK's seam for methods outside the core
tables) declares `tasks` for `tools/call` in its initialize result and serves the task-augmented
`tools/call`, `tasks/get`, `tasks/result` and `tasks/cancel`. The tool itself runs through the
SDK's own `call_tool` once the test lets it (`finish`).

Like a server that honours idempotency keys, a second `tools/call` with a key it has seen answers
with the task it made for that key; `runs` counts the tool's executions per key.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mcp.server.extension import Extension
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import ToolListChangedNotification

from support.mcp_servers import RemoteServer, remote_server

STAMP = "2026-12-06T00:00:00Z"


class TasksExtension(Extension):
    identifier = "io.modelcontextprotocol/tasks"


@dataclass
class TaskServer:
    remote: RemoteServer
    poll_interval_ms: int | None = 100  # what the server asks its pollers for
    go: threading.Event = field(default_factory=threading.Event)  # set: the tools run and finish
    hang: threading.Event = field(default_factory=threading.Event)  # set: tasks/get never answers
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    runs: collections.Counter[str] = field(default_factory=collections.Counter)
    cancelled: list[str] = field(default_factory=list)
    status_override: dict[str, Any] | None = None  # a malformed server: what tasks/get answers

    @property
    def url(self) -> str:
        return self.remote.url

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.remote.requests if m == method)

    def finish(self) -> None:
        self.go.set()

    def forget(self) -> None:
        """The server lost its tasks (a restart without state)."""
        self.tasks.clear()


def _app(found: dict[str, TaskServer]) -> MCPServer:
    app = MCPServer("slowtracker", extensions=[TasksExtension()])
    app.middleware.append(_middleware(app, found))

    @app.tool()
    def open_ticket(title: str) -> dict[str, Any]:
        """Open a ticket with a title (slowly: as a task)."""
        return {"number": 42, "title": title}

    @app.tool()
    def big_report(size: int) -> str:
        """A report of `size` characters."""
        return "r" * size

    @app.tool()
    async def grow(ctx: Context) -> str:
        """Add a tool, and tell the client its tools changed."""

        def close_ticket(number: int) -> str:
            """Close a ticket."""
            return f"closed {number}"

        app.add_tool(close_ticket)
        # On this call's own stream, ahead of its result: sent on the standalone stream (the
        # SDK's send_tool_list_changed), it is dropped when that stream is not open yet, and
        # the client's session may be gone before it arrives.
        await ctx.session.send_notification(ToolListChangedNotification(), related_request_id=ctx.request_id)
        return "grown"

    return app


def _middleware(app: MCPServer, found: dict[str, TaskServer]) -> Any:
    async def middleware(ctx: Any, call_next: Any) -> Any:
        server = found["server"]
        params = dict(ctx.params or {})
        if ctx.method == "initialize":
            result = await call_next(ctx)
            result.setdefault("capabilities", {})["tasks"] = {
                "requests": {"tools": {"call": {}}},
                "cancel": {},
            }
            return result
        if ctx.method == "tools/call" and isinstance(params.get("task"), dict):
            if params.get("name") == "grow":
                return await call_next(ctx)
            key = ctx.request.headers.get("idempotency-key") if ctx.request is not None else None
            if key and key in server.by_key and server.by_key[key] in server.tasks:
                return {"task": _shown(server.tasks[server.by_key[key]], server)}
            task_id = uuid.uuid4().hex
            task: dict[str, Any] = {
                "taskId": task_id,
                "status": "working",
                "createdAt": STAMP,
                "lastUpdatedAt": STAMP,
                "ttl": None,
            }
            server.tasks[task_id] = task
            if key:
                server.by_key[key] = task_id
            task["job"] = asyncio.get_running_loop().create_task(
                _run(app, server, task, str(params["name"]), params.get("arguments") or {}, key)
            )
            return {"task": _shown(task, server)}
        if ctx.method in ("tasks/get", "tasks/result", "tasks/cancel"):
            asked = server.tasks.get(str(params.get("taskId")))
            if asked is None:
                raise MCPError(code=-32602, message=f"no task {params.get('taskId')!r}")
            if ctx.method == "tasks/get":
                while server.hang.is_set():  # noqa: ASYNC110 (a thread's event: the test's)
                    await asyncio.sleep(0.05)
                return server.status_override or _shown(asked, server)
            if ctx.method == "tasks/cancel":
                server.cancelled.append(asked["taskId"])
                asked["job"].cancel()
                asked["status"] = "cancelled"
                return _shown(asked, server)
            while asked["status"] == "working":  # noqa: ASYNC110 (tasks/result waits for the end)
                await asyncio.sleep(0.05)
            return asked["result"]
        return await call_next(ctx)

    return middleware


async def _run(
    app: MCPServer, server: TaskServer, task: dict[str, Any], name: str, arguments: Any, key: str | None
) -> None:
    while not server.go.is_set():  # noqa: ASYNC110 (a thread's event: the test's)
        await asyncio.sleep(0.02)
    server.runs[key or task["taskId"]] += 1
    result = await app.call_tool(name, dict(arguments))
    task["result"] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    task["status"] = "completed"


def _shown(task: dict[str, Any], server: TaskServer) -> dict[str, Any]:
    shown = {k: v for k, v in task.items() if k not in ("job", "result")}
    if server.poll_interval_ms is not None and task["status"] == "working":
        shown["pollInterval"] = server.poll_interval_ms
    return shown


@contextmanager
def task_server(poll_interval_ms: int | None = 100) -> Iterator[TaskServer]:
    found: dict[str, TaskServer] = {}
    with remote_server(_app(found)) as remote:
        found["server"] = TaskServer(remote, poll_interval_ms)
        yield found["server"]
