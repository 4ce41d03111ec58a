"""One MCP session with one server, opened for what it is asked and closed after: the official
SDK's ClientSession over stdio (the server's process started with its `command`) or over
Streamable HTTP (its `url`, with its headers and the call's `Idempotency-Key`).

A session per request keeps no process or connection alive between a model's calls (a server
that died is simply started again), and the SDK's errors are translated here, at the edge: no
answer (a process that will not start, a refused connection, a timeout) is NetworkUnreachable; an
error the server answered with (JSON-RPC) is McpRefused.

Each session declares the tasks extension, and `tools/call` is sent raw and checked here
(`call_result`): a server that declared tasks may answer it with a task instead of a result
(remote_tasks.py asks after it). A `notifications/tools/list_changed` that arrives during any
session is passed to the caller's `list_changed`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO, cast

import anyio

from waystation.config import McpServerSettings
from waystation.errors import NetworkUnreachable


class McpRefused(Exception):
    """The server answered the request with a JSON-RPC error (an unknown tool, bad arguments)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (JSON-RPC error {code})")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ListedTool:
    name: str
    description: str
    input_schema: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "inputSchema": self.input_schema}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ListedTool:
        return cls(str(data["name"]), str(data.get("description") or ""), dict(data.get("inputSchema") or {}))


# The tasks extension (spec 2025-11-25's tasks, an extension since 2026-07-28): declared by this
# client, so that a server may answer a long `tools/call` with a task to poll.
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
ListChanged = Callable[[], None]


@dataclass
class Opened:
    """A session, initialized: typed requests through `session`, raw ones through `request`
    (the SDK validates a `tools/call` answer as a CallToolResult, and a task is not one)."""

    session: Any
    dispatcher: Any
    version: str
    capabilities: dict[str, Any]

    async def request(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        opts = {"headers": {"mcp-protocol-version": self.version}}
        answer: dict[str, Any] = await self.dispatcher.send_raw_request(method, dict(params), opts)
        return answer

    @property
    def takes_tasks(self) -> bool:
        """The server declared tasks for `tools/call` (2025-11-25), or the tasks extension."""
        tasks = self.capabilities.get("tasks") or {}
        call = ((tasks.get("requests") or {}).get("tools") or {}).get("call")
        return call is not None or TASKS_EXTENSION in (self.capabilities.get("extensions") or {})


@contextlib.asynccontextmanager
async def open_session(
    server: McpServerSettings, headers: Mapping[str, str], list_changed: ListChanged | None = None
) -> AsyncIterator[Opened]:
    import httpx2
    import mcp_types
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher

    async def notified(message: Any) -> None:
        # A server whose tools changed says so on any session it holds: its list is read anew.
        if list_changed is not None and isinstance(message, mcp_types.ToolListChangedNotification):
            list_changed()

    async with contextlib.AsyncExitStack() as stack:
        if server.url:
            client = await stack.enter_async_context(httpx2.AsyncClient(headers=dict(headers)))
            streams = await stack.enter_async_context(streamable_http_client(server.url, http_client=client))
        else:
            params = StdioServerParameters(
                command=server.command, args=list(server.args), env=dict(server.env) or None
            )
            errlog = _quiet_stderr(stack)
            streams = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        dispatcher = JSONRPCDispatcher(streams[0], streams[1])
        session = await stack.enter_async_context(
            ClientSession(dispatcher=dispatcher, extensions={TASKS_EXTENSION: {}}, message_handler=notified)
        )
        hello = await session.initialize()
        capabilities = hello.capabilities.model_dump(by_alias=True, mode="json", exclude_none=True)
        yield Opened(session, dispatcher, hello.protocol_version, capabilities)


def _quiet_stderr(stack: contextlib.AsyncExitStack) -> TextIO:
    """Where a stdio server's stderr goes: its logging is not ours to show, and a server that
    writes much there must never block on a full pipe. On POSIX the child gets /dev/null itself
    (anyio.open_process takes subprocess's DEVNULL): no file of ours that a session abandoned
    mid-way would leave to the garbage collector; elsewhere a file the session's stack closes."""
    if sys.platform != "win32":
        return cast(TextIO, subprocess.DEVNULL)
    return stack.enter_context(open(os.devnull, "w"))


async def list_tools(
    name: str, server: McpServerSettings, headers: Mapping[str, str], timeout_s: float
) -> list[ListedTool]:
    """The server's tools (every page of `tools/list`)."""

    async def ask() -> list[ListedTool]:
        from mcp_types import PaginatedRequestParams

        found: list[ListedTool] = []
        async with open_session(server, headers) as opened:
            cursor: str | None = None
            while True:
                params = PaginatedRequestParams(cursor=cursor) if cursor else None
                page = await opened.session.list_tools(params=params)
                found += [
                    ListedTool(t.name, t.description or "", dict(t.input_schema or {})) for t in page.tools
                ]
                cursor = page.next_cursor
                if not cursor:
                    return found

    return cast(list[ListedTool], await translated(name, ask, timeout_s))


async def call_tool(
    name: str,
    server: McpServerSettings,
    tool: str,
    arguments: Mapping[str, Any],
    headers: Mapping[str, str],
    timeout_s: float,
    list_changed: ListChanged | None = None,
) -> dict[str, Any]:
    """One `tools/call`: its result as JSON (`content`, `structuredContent`, `isError`), or, from
    a server that took the call as a task, `{"task": {"taskId", "status", "pollInterval", ...}}`
    (asked for, `task` in the params, where the server declared tasks)."""

    async def ask() -> dict[str, Any]:
        async with open_session(server, headers, list_changed) as opened:
            params: dict[str, Any] = {"name": tool, "arguments": dict(arguments)}
            if opened.takes_tasks:
                params["task"] = {}
            return call_result(await opened.request("tools/call", params))

    return cast(dict[str, Any], await translated(name, ask, timeout_s))


def call_result(answer: Mapping[str, Any]) -> dict[str, Any]:
    """A `tools/call` answer checked: a task (a `task` object with a string `taskId`), or a
    CallToolResult (what is neither is the server's error: McpRefused)."""
    from mcp_types import CallToolResult
    from pydantic import ValidationError

    task = answer.get("task")
    if isinstance(task, Mapping) and isinstance(task.get("taskId"), str) and task["taskId"]:
        return {"task": dict(task)}
    try:
        result = CallToolResult.model_validate(answer, by_name=False)
    except ValidationError:
        raise McpRefused(-32603, "the server's answer is neither a tool result nor a task") from None
    data: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return data


async def translated(name: str, ask: Any, timeout_s: float) -> Any:
    """Run `ask` within the time allowed, the SDK's errors translated (see the module's doc)."""
    from mcp.shared.exceptions import MCPError

    try:
        with anyio.fail_after(timeout_s):
            return await ask()
    except MCPError as exc:
        raise McpRefused(exc.code, exc.message) from None
    except TimeoutError:
        raise NetworkUnreachable(f"MCP server {name}: no answer within {timeout_s:g} s") from None
    except Exception as exc:  # the SDK's transports raise many kinds (and groups of them)
        refused = _first(exc, MCPError)
        if refused is not None:
            raise McpRefused(refused.code, refused.message) from None
        raise NetworkUnreachable(f"MCP server {name}: {_reason(exc)}") from None


def _first(exc: BaseException, kind: type[Any]) -> Any:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first(inner, kind)
            if found is not None:
                return found
    return None


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:300]
