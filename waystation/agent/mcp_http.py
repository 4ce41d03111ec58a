"""MCP's Streamable HTTP transport at `/mcp`: JSON-RPC over POST, answered as JSON.

The official SDK's server transport is ASGI (Starlette); this is the part of the spec a tool
server needs, in aiohttp: `initialize` answers with an `Mcp-Session-Id`, notifications and
responses are 202 with no body, a request is answered with `application/json`, DELETE ends a
session; GET (a server-to-client stream) is not routed (405): this server sends nothing unasked.

A session holds one thing, whether the client declared the tasks extension, and it is written
into the session id itself ("t." or "p." + random): no session table, so a session survives the
agent's restart as the tasks it was given do.

`add_mcp_routes(app)` mounts it on any app that holds the station under `http_io.STATION`: the
socket's (api.py) and the loopback listener's alike.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import structlog
from aiohttp import web

from waystation import __version__
from waystation.agent.http_io import read_body, station_of
from waystation.agent.mcp_tools import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    RpcError,
    call,
    declares_tasks,
    initialize_result,
)

log = structlog.get_logger(__name__)

MCP_PATH = "/mcp"
SESSION_HEADER = "Mcp-Session-Id"
_WITH_TASKS, _PLAIN = "t.", "p."


def add_mcp_routes(app: web.Application) -> None:
    app.router.add_post(MCP_PATH, post_mcp)
    app.router.add_delete(MCP_PATH, delete_mcp)


def new_session(tasks_ok: bool) -> str:
    return (_WITH_TASKS if tasks_ok else _PLAIN) + secrets.token_hex(16)


def session_declares_tasks(session_id: str | None) -> bool:
    return session_id is not None and session_id.startswith(_WITH_TASKS)


async def post_mcp(request: web.Request) -> web.Response:
    try:
        message = json.loads(await read_body(request))
    except (ValueError, UnicodeError, RecursionError):
        return _error(None, PARSE_ERROR, "the body is not JSON", status=400)
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return _error(None, INVALID_REQUEST, "one JSON-RPC 2.0 message per POST (no batches)", 400)
    if "method" not in message:  # a response to a request we never send, or a notification
        return web.Response(status=202)
    method = message["method"]
    params = message.get("params") or {}
    request_id = message.get("id")
    if "id" not in message:  # a notification (notifications/initialized, cancelled, ...)
        return web.Response(status=202)
    if not isinstance(method, str) or not isinstance(params, dict):
        return _error(request_id, INVALID_REQUEST, "method must be a string and params an object", 400)
    session = request.headers.get(SESSION_HEADER)
    headers: dict[str, str] = {}
    try:
        if method == "initialize":
            session = new_session(declares_tasks(params.get("capabilities")))
            headers[SESSION_HEADER] = session
            result = initialize_result(params, __version__)
        else:
            result = await call(station_of(request), method, params, session_declares_tasks(session))
    except RpcError as exc:
        return _error(request_id, exc.code, exc.message)
    except Exception:
        log.exception("MCP request failed", method=method)
        return _error(request_id, INTERNAL_ERROR, "unexpected error; see the agent's log")
    return web.json_response({"jsonrpc": "2.0", "id": request_id, "result": result}, headers=headers)


async def delete_mcp(request: web.Request) -> web.Response:
    return web.Response(status=204)  # nothing is held per session


def _error(request_id: Any, code: int, message: str, status: int = 200) -> web.Response:
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return web.json_response(body, status=status)
