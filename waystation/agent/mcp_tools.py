"""Waystation as an MCP server: the JSON-RPC methods and the three tools, over station ops.

The transport (agent/mcp_http.py: Streamable HTTP at `/mcp`; `waystation mcp serve` relays stdio
to it) hands each JSON-RPC request here with what its session declared. Tools:
- `ask` `{"prompt", "model"?}`: a turn (the turns op). A client that declared the tasks
  extension (`io.modelcontextprotocol/tasks`) gets a task whose `taskId` is the turn id once the
  turn parks or outlives ASK_WAIT_S; `tasks/get` and `tasks/result` read the turns table, so
  they answer after a restart (the turn's record is written before `ask` answers). Others wait
  for the answer, or get "parked: turn ID".
- `queue_task` `{"tool", "args", "idempotency_key"?}`: `POST /v1/tasks` (the tasks op).
- `status`: `GET /v1/status` (the status op).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from waystation import contract
from waystation.errors import NotFound, WaystationError
from waystation.station import AgentStation
from waystation.station.ops import status, tasks, turns
from waystation.station.turns.request import TurnResult, turn_request

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
CLIENT_CAPABILITIES_META = "io.modelcontextprotocol/clientCapabilities"
RELATED_TASK_META = "io.modelcontextprotocol/related-task"
PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
ASK_WAIT_S = 3.0  # how long `ask` waits for an answer before a tasks client gets a task
POLL_INTERVAL_MS = 2000  # suggested to task pollers: turns take seconds, parked ones hours
RESULT_POLL_S = 0.5  # how often a waiting `tasks/result` reads the turn again
WORKING = frozenset({"running", "parked", "resuming", "deferred"})
FAILED = frozenset({"error", "refused", "interrupted"})

# JSON-RPC error codes (the spec's), and MCP's "resource not found" for an unknown task.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _tool(
    name: str, title: str, description: str, properties: dict[str, Any], *required: str
) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": list(required)}
    return {"name": name, "title": title, "description": description, "inputSchema": schema}


def _string(description: str) -> dict[str, str]:
    return {"type": "string", "description": description}


TOOLS: list[dict[str, Any]] = [
    _tool(
        "ask",
        "Ask Waystation",
        "Run a turn on Waystation's model. Tool calls that need the network run at once when "
        "online and are parked until it is back when not; the turn then resumes.",
        {"prompt": _string("what to ask"), "model": _string("a model name (default: the route's)")},
        "prompt",
    )
    | {"execution": {"taskSupport": "optional"}},
    _tool(
        "queue_task",
        "Queue a network task",
        "Queue a network call (as POST /v1/tasks): delivered once, with its idempotency key, when "
        "the network is up; answers with the task record.",
        {
            "tool": _string("the task's tool, e.g. http_request"),
            "args": {"type": "object", "description": "the tool's arguments"},
            "idempotency_key": _string("the same key again is the same task"),
        },
        "tool",
        "args",
    ),
    _tool("status", "Waystation status", "Connectivity, queue counts, routes, turns (GET /v1/status).", {}),
]


def declares_tasks(capabilities: object) -> bool:
    """The client's capabilities name the tasks extension (2026: `extensions`; 2025-11-25: `tasks`)."""
    if not isinstance(capabilities, dict):
        return False
    extensions = capabilities.get("extensions")
    return (isinstance(extensions, dict) and TASKS_EXTENSION in extensions) or isinstance(
        capabilities.get("tasks"), dict
    )


def initialize_result(params: dict[str, Any], version: str) -> dict[str, Any]:
    asked = params.get("protocolVersion")
    return {
        "protocolVersion": asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[-1],
        "capabilities": {
            "tools": {"listChanged": False},
            "tasks": {"requests": {"tools": {"call": {}}}},
            "extensions": {TASKS_EXTENSION: {}},
        },
        "serverInfo": {"name": "waystation", "version": version},
        "instructions": "Waystation: ask a model (network calls park while offline), queue tasks, status.",
    }


async def call(station: AgentStation, method: str, params: dict[str, Any], tasks_ok: bool) -> dict[str, Any]:
    """The result of one JSON-RPC request (initialize is the transport's), or RpcError."""
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        meta = params.get("_meta")
        capabilities = meta.get(CLIENT_CAPABILITIES_META) if isinstance(meta, dict) else None
        augmented = isinstance(params.get("task"), dict) or declares_tasks(capabilities)
        return await call_tool(station, params, tasks_ok or augmented)
    if method == "tasks/get":
        return task_object(await _turn(station, params))
    if method == "tasks/result":
        return await task_result(station, params)
    raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")


async def call_tool(station: AgentStation, params: dict[str, Any], tasks_ok: bool) -> dict[str, Any]:
    name = params.get("name")
    arguments = params.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise RpcError(INVALID_PARAMS, "arguments must be an object")
    try:
        if name == "ask":
            return await ask(station, arguments, tasks_ok)
        if name == "queue_task":
            task, _ = await tasks.add_request(station, arguments)
            return _json_content(task)
        if name == "status":
            return _json_content(await status.status(station))
    except WaystationError as exc:  # the tool ran and said no: a tool error the model can read
        return _text(f"{exc.code}: {exc.message}", is_error=True)
    raise RpcError(INVALID_PARAMS, f"unknown tool: {name}")


async def ask(station: AgentStation, arguments: dict[str, Any], tasks_ok: bool) -> dict[str, Any]:
    request = turn_request({"prompt": arguments.get("prompt"), "model": arguments.get("model")})
    turn_id, running = await turns.start(station, request)
    if not tasks_ok:
        # Shielded, as POST /v1/turns: a client that goes away stops waiting, not the turn.
        return _answer(await asyncio.shield(running))
    await asyncio.wait({running}, timeout=ASK_WAIT_S)
    if running.done():
        result = running.result()
        if result.status != "parked":
            return _answer(result)
    # Running on, or parked: the turn's record exists (turns.start wrote it), so the task is
    # durably created; tasks/get reads the same record after any restart. The text beside the
    # task is for clients that read every tools/call answer as a CallToolResult (the Python
    # SDK 2.3 validates it so): they still learn which turn to ask about.
    task = task_object(await turns.get(station, turn_id))
    return {"task": task, **_text(f"{task['statusMessage']}: turn {turn_id}")}


def _answer(result: TurnResult) -> dict[str, Any]:
    if result.status == "parked":
        return _text(f"parked: turn {result.turn_id}")
    return _text(result.text, is_error=result.status != "ok")


async def _turn(station: AgentStation, params: dict[str, Any]) -> contract.Turn:
    task_id = params.get("taskId")
    if not isinstance(task_id, str):
        raise RpcError(INVALID_PARAMS, "taskId must be a string")
    try:
        return await turns.get(station, task_id)
    except NotFound:
        raise RpcError(INVALID_PARAMS, f"no task with id {task_id!r}") from None


def task_status(state: str) -> str:
    if state in WORKING:
        return "working"
    if state == "ok":
        return "completed"
    return "failed"  # error, refused, interrupted


def task_object(turn: contract.Turn) -> dict[str, Any]:
    state = turn["state"]
    task: dict[str, Any] = {
        "taskId": turn["turn_id"],
        "status": task_status(state),
        "statusMessage": state if turn["reason"] is None else f"{state}: {turn['reason']}",
        "createdAt": turn["created_at"],
        "lastUpdatedAt": turn["updated_at"],
        "ttl": None,  # kept as long as the turn is (retention_days)
    }
    if state in WORKING:
        task["pollInterval"] = POLL_INTERVAL_MS
    return task


async def task_result(station: AgentStation, params: dict[str, Any]) -> dict[str, Any]:
    """The tool result of a finished task; waits while it works (the spec's tasks/result)."""
    turn = await _turn(station, params)
    while turn["state"] in WORKING:
        await asyncio.sleep(RESULT_POLL_S)
        turn = await turns.get(station, turn["turn_id"])
    if turn["state"] in FAILED:
        result = _text(turn["reason"] or turn["text"] or turn["state"], is_error=True)
    else:
        result = _text(turn["text"] or "")
    result["_meta"] = {RELATED_TASK_META: {"taskId": turn["turn_id"]}}
    return result


def _text(text: str, *, is_error: bool = False) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


def _json_content(value: Any) -> dict[str, Any]:
    result = _text(json.dumps(value, ensure_ascii=False))
    if isinstance(value, dict):
        result["structuredContent"] = value
    return result
