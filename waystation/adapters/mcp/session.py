"""One MCP session with one server, opened for what it is asked and closed after: the official
SDK's ClientSession over stdio (the server's process started with its `command`) or over
Streamable HTTP (its `url`, with its headers and the call's `Idempotency-Key`).

A session per request keeps no process or connection alive between a model's calls (a server
that died is simply started again), and the SDK's errors are translated here, at the edge: no
answer (a process that will not start, a refused connection, a timeout) is NetworkUnreachable; an
error the server answered with (JSON-RPC) is McpRefused.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
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


@contextlib.asynccontextmanager
async def _session(server: McpServerSettings, headers: Mapping[str, str]) -> AsyncIterator[Any]:
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client

    async with contextlib.AsyncExitStack() as stack:
        if server.url:
            client = await stack.enter_async_context(httpx2.AsyncClient(headers=dict(headers)))
            streams = await stack.enter_async_context(streamable_http_client(server.url, http_client=client))
        else:
            params = StdioServerParameters(
                command=server.command, args=list(server.args), env=dict(server.env) or None
            )
            errlog = stack.enter_context(_devnull())
            streams = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        session = await stack.enter_async_context(ClientSession(streams[0], streams[1]))
        await session.initialize()
        yield session


def _devnull() -> TextIO:
    """Where a stdio server's stderr goes: its logging is not ours to show, and a server that
    writes much there must never block on a full pipe."""
    return open(os.devnull, "w")  # closed by the caller's stack


async def list_tools(
    name: str, server: McpServerSettings, headers: Mapping[str, str], timeout_s: float
) -> list[ListedTool]:
    """The server's tools (every page of `tools/list`)."""

    async def ask() -> list[ListedTool]:
        from mcp_types import PaginatedRequestParams

        found: list[ListedTool] = []
        async with _session(server, headers) as session:
            cursor: str | None = None
            while True:
                params = PaginatedRequestParams(cursor=cursor) if cursor else None
                page = await session.list_tools(params=params)
                found += [
                    ListedTool(t.name, t.description or "", dict(t.input_schema or {})) for t in page.tools
                ]
                cursor = page.next_cursor
                if not cursor:
                    return found

    return cast(list[ListedTool], await _translated(name, ask, timeout_s))


async def call_tool(
    name: str,
    server: McpServerSettings,
    tool: str,
    arguments: Mapping[str, Any],
    headers: Mapping[str, str],
    timeout_s: float,
) -> dict[str, Any]:
    """One `tools/call`: its result as JSON (`content`, `structuredContent`, `isError`)."""

    async def ask() -> dict[str, Any]:
        async with _session(server, headers) as session:
            result = await session.call_tool(tool, dict(arguments))
            data: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
            return data

    return cast(dict[str, Any], await _translated(name, ask, timeout_s))


async def _translated(name: str, ask: Any, timeout_s: float) -> Any:
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
