"""What the socket API's handlers share: the station key, body and query parsing, error bodies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from waystation.agent.connections import BODY_TIMEOUT_S
from waystation.errors import MalformedRequest, RequestTimeout, error_body
from waystation.station import AgentStation

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_LIST = 1000
STATION: web.AppKey[AgentStation] = web.AppKey("station", AgentStation)


def error_response(
    status: int, code: str, message: str, details: Mapping[str, Any] | None = None
) -> web.Response:
    return web.json_response(error_body(code, message, details), status=status)


def client_left(request: web.Request) -> bool:
    """Whether the request's client closed its connection (aiohttp runs a handler to its end
    after its client left, unless it writes)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def read_body(request: web.Request) -> bytes:
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            return await request.read()  # aiohttp enforces client_max_size here (413)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {BODY_TIMEOUT_S:g} s") from None


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request)
    try:
        body = json.loads(raw)
        # A lone surrogate ("\\ud800") is valid JSON but not Unicode: nothing could store or send it.
        json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, UnicodeError) as exc:  # JSONDecodeError, an integer of 4,300+ digits
        raise MalformedRequest(f"request body is not valid JSON: {_first_line(exc)}") from None
    except RecursionError:
        raise MalformedRequest("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise MalformedRequest("request body must be a JSON object")
    return body


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def query_int(request: web.Request, name: str, default: int, maximum: int = MAX_LIST) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise MalformedRequest(f"query parameter {name} must be an integer") from None
    if not 1 <= value <= maximum:
        raise MalformedRequest(f"query parameter {name} must be between 1 and {maximum}")
    return value


def optional_str(body: dict[str, Any], name: str, max_len: int = 255) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise MalformedRequest(f"{name} must be a non-empty string of at most {max_len} characters")
    return value


def station_of(request: web.Request) -> AgentStation:
    return request.app[STATION]
