"""The socket API's OpenAPI 3.1 document (`GET /v1/openapi.json`), built from the contract.

It describes every route api.py, api_turns.py and api_models.py serve: request bodies, query and path
parameters, the contract's objects (task, receipt, route, connectivity, status) and the error
object every 4xx/5xx carries. Tests validate it with openapi-spec-validator and fuzz the live
agent against it with schemathesis, so a route added without a description here shows up there.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from waystation import __version__, contract
from waystation.agent.api_models import ENDPOINT_HEADER as PULL_ENDPOINT_HEADER
from waystation.agent.api_models import TOKEN_HEADER as PULL_TOKEN_HEADER
from waystation.agent.connections import BODY_TIMEOUT_S
from waystation.agent.http_io import MAX_BODY_BYTES, MAX_LIST
from waystation.agent.openapi_schemas import ID_PATTERN, SCHEMAS, Schema, enum, ref
from waystation.agent.openapi_schemas.turns import OPENAI_RESPONSES


def _error(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


def _json(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema_name: str) -> Schema:
    return {
        "required": True,
        "description": f"a JSON object; a body over {MAX_BODY_BYTES} bytes is refused with 413",
        "content": {"application/json": {"schema": ref(schema_name)}},
    }


SSE = {"text/event-stream": {"schema": {"type": "string"}}}

COMMON_ERRORS = {"404": _error("no such thing"), "405": _error("method not allowed on this path")}
BODY_ERRORS = {
    "400": _error("malformed request (not JSON, not an object, or a bad field)"),
    "408": _error(f"the request body did not arrive within {BODY_TIMEOUT_S:g} s"),
    "413": _error(f"request body over {MAX_BODY_BYTES} bytes"),
}
TURN_ERRORS = {
    **BODY_ERRORS,
    "409": _error("the route refused the turn (fail-closed): a `refused` receipt was written"),
    "422": _error("the model could not be loaded"),
    "502": _error("the provider failed or rejected the turn"),
    "503": _error("the database is unavailable"),
    "504": _error("the turn timed out"),
}


def _op(summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {"summary": summary, "responses": {**responses, **COMMON_ERRORS}, **extra}


def _turn_op(summary: str, answer: str, schema_name: str, **extra: Any) -> Schema:
    """A turn: JSON, or Server-Sent Events when the request asks to stream."""
    content = {"application/json": {"schema": ref(schema_name)}, **SSE}
    return _op(summary, {"200": {"description": answer, "content": content}, **TURN_ERRORS}, **extra)


def _id_param(what: str) -> Schema:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": f"the {what}'s id",
        "schema": {"type": "string", "pattern": ID_PATTERN},
    }


def _query(name: str, schema: Schema, description: str) -> Schema:
    """An optional query parameter."""
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


LIMIT = _query(
    "limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIST}, "at most this many (default 100)"
)


def _header(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def _task_op(summary: str, extra_errors: dict[str, Schema]) -> Schema:
    return _op(
        summary,
        {"200": _json("the task", ref("Task")), **extra_errors},
        parameters=[_id_param("task")],
    )


PATHS: dict[str, Schema] = {
    "/v1/status": {
        "get": _op("the agent at a glance", {"200": _json("status", ref("Status"))}, operationId="status")
    },
    "/v1/connectivity": {
        "get": _op(
            "connectivity state and mode",
            {"200": _json("connectivity", ref("Connectivity"))},
            operationId="getConnectivity",
        ),
        "put": _op(
            "force connectivity online or offline, or back to auto",
            {"200": _json("connectivity", ref("Connectivity")), **BODY_ERRORS},
            operationId="setConnectivity",
            requestBody=_body("ConnectivityMode"),
        ),
    },
    "/v1/routes": {
        "get": _op(
            "every route, available or not, with the reason",
            {"200": _json("routes", {"type": "array", "items": ref("Route")})},
            operationId="routes",
        )
    },
    "/v1/tasks": {
        "post": _op(
            "park a tool call",
            {
                "201": _json("a new task", ref("Task")),
                "200": _json("the existing task with this idempotency key and equal args", ref("Task")),
                "409": _error("the idempotency key exists with other args"),
                "422": _error("unknown tool or bad args"),
                "503": _error("the database is unavailable"),
                **BODY_ERRORS,
            },
            operationId="createTask",
            requestBody=_body("NewTask"),
        ),
        "get": _op(
            "tasks, newest first",
            {
                "200": _json("tasks", {"type": "array", "items": ref("Task")}),
                "400": _error("bad state or limit"),
            },
            operationId="listTasks",
            parameters=[
                _query("state", enum(contract.TaskState), "only tasks in this state"),
                LIMIT,
            ],
        ),
    },
    "/v1/tasks/{id}": {"get": {**_task_op("one task", {}), "operationId": "getTask"}},
    "/v1/tasks/{id}/retry": {
        "post": {
            **_task_op("retry a dead, cancelled or expired task now", {"409": _error("not retryable")}),
            "operationId": "retryTask",
        }
    },
    "/v1/tasks/{id}/cancel": {
        "post": {
            **_task_op("cancel a pending task", {"409": _error("already settled")}),
            "operationId": "cancelTask",
        }
    },
    "/v1/flush": {
        "post": _op(
            "make every pending task due now (delivered once online)",
            {"202": _json("accepted", ref("FlushResult"))},
            operationId="flush",
        )
    },
    "/v1/turns": {
        "post": _turn_op(
            "one model turn (Server-Sent Events `token`, `done`, `error` when streaming)",
            "the turn",
            "TurnResult",
            operationId="turn",
            requestBody=_body("TurnRequest"),
        ),
        "get": _op(
            "turns, newest first",
            {
                "200": _json("turns", {"type": "array", "items": ref("Turn")}),
                "400": _error("bad state or limit"),
            },
            operationId="listTurns",
            parameters=[
                _query("state", enum(contract.TurnState), "only turns in this state"),
                LIMIT,
            ],
        ),
    },
    "/v1/turns/{id}": {
        "get": _op(
            "one turn: where it stands, its answer once ok, its calls and receipts",
            {"200": _json("the turn", ref("Turn"))},
            operationId="getTurn",
            parameters=[_id_param("turn")],
        )
    },
    "/v1/chat/completions": {
        "post": _turn_op(
            "OpenAI-compatible chat completions on the default route (plain and streaming); the"
            " client's tools come back as tool_calls for the client to run",
            "a completion",
            "ChatCompletion",
            operationId="chatCompletions",
            requestBody=_body("ChatCompletionRequest"),
        )
    },
    "/v1/responses": {
        "post": _turn_op(
            "OpenAI's Responses API, translated to a chat completion (JSON, or typed Server-Sent Events"
            " ending with response.completed); an unsupported field is a 400 naming it",
            "a response",
            "Response",
            operationId="responses",
            requestBody=_body("ResponsesRequest"),
        )
    },
    "/v1/models": {
        "get": _op(
            "the models a turn may name (OpenAI's list), the default first",
            {"200": _json("models", ref("ModelList"))},
            operationId="listModels",
        )
    },
    "/v1/models/loaded": {
        "get": _op(
            "the models in memory now, and when each unloads",
            {"200": _json("loaded models", {"type": "array", "items": ref("LoadedModel")})},
            operationId="loadedModels",
        )
    },
    "/v1/models/pull": {
        "post": _op(
            "download a model under a name: Server-Sent Events `progress`, then `done` (the model) "
            "or `error`; resumes a download that stopped",
            {
                "200": {"description": "the progress stream", "content": SSE},
                **BODY_ERRORS,
                "409": _error("the name is taken, or a pull of that name (or of the same file) is under way"),
                "422": _error("the hub's sha256 is not the one given"),
                "502": _error("the hub or server failed, or refused (e.g. a gated repository)"),
                "507": _error("the file's known size does not fit above `[model] keep_free_mb`"),
            },
            operationId="pullModel",
            requestBody=_body("PullRequest"),
            parameters=[
                _header(PULL_TOKEN_HEADER, "a Hugging Face token for this pull only (never stored)"),
                _header(
                    PULL_ENDPOINT_HEADER,
                    "the hub's URL for this pull (as HF_ENDPOINT); another than the agent's own gets no "
                    "token but the caller's",
                ),
            ],
        )
    },
    "/v1/models/{name}": {
        "delete": _op(
            "remove a named model (unloaded first)",
            {
                "200": _json("removed", ref("ModelDeleted")),
                "409": _error("the embedded model cannot be removed"),
            },
            operationId="deleteModel",
            parameters=[
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "description": "the model's name",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
                }
            ],
        )
    },
    "/v1/receipts": {
        "get": _op(
            "receipts in chain order, oldest first",
            {
                "200": _json("receipts", {"type": "array", "items": ref("Receipt")}),
                "400": _error("bad limit"),
            },
            operationId="listReceipts",
            parameters=[
                _query(
                    "after", {"type": "string"}, "start after the receipt with this id (404 if there is none)"
                ),
                LIMIT,
            ],
        )
    },
    "/v1/receipts/verify": {
        "get": _op(
            "check the hash chain, the Merkle tree, and consistency with the checkpoint the agent kept",
            {"200": _json("the verdict", ref("Verification"))},
            operationId="verifyReceipts",
        ),
        "post": _op(
            "the same, and prove the receipts extend the signed checkpoint given (RFC 6962 consistency)",
            {"200": _json("the verdict", ref("Verification")), **BODY_ERRORS},
            operationId="verifyReceiptsAgainst",
            requestBody=_body("CheckpointToVerify"),
        ),
    },
    "/v1/receipts/checkpoint": {
        "get": _op(
            "a signed checkpoint of the receipts' Merkle tree now (C2SP tlog-checkpoint)",
            {"200": _json("the checkpoint", ref("Checkpoint"))},
            operationId="receiptCheckpoint",
        )
    },
    "/v1/receipts/key": {
        "get": _op(
            "the verifier key of the checkpoints (C2SP note format)",
            {"200": _json("the key", ref("VerifierKey"))},
            operationId="receiptKey",
        )
    },
    "/v1/receipts/{id}": {
        "get": _op(
            "one receipt",
            {"200": _json("the receipt", ref("Receipt"))},
            operationId="getReceipt",
            parameters=[_id_param("receipt")],
        )
    },
    "/v1/receipts/{id}/proof": {
        "get": _op(
            "an inclusion proof of one receipt, with the signed checkpoint it leads to",
            {"200": _json("the proof", ref("ReceiptProof"))},
            operationId="proveReceipt",
            parameters=[_id_param("receipt")],
        )
    },
    "/v1/events": {
        "get": _op(
            "Server-Sent Events: connectivity, task, turn, receipt (never ends)",
            {"200": {"description": "the event stream", "content": SSE}, "400": _error("bad Last-Event-ID")},
            operationId="events",
            parameters=[
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": "resume after this event id",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            ],
        )
    },
    "/v1/openapi.json": {
        "get": _op(
            "this document",
            {"200": _json("the OpenAPI document", {"type": "object"})},
            operationId="openapi",
        )
    },
    "/mcp": {  # MCP's Streamable HTTP (README: "Waystation as an MCP server"); agent/mcp_http.py
        "post": _op(
            "MCP: one JSON-RPC 2.0 message (tools ask, queue_task, status; tasks/get, tasks/result)",
            {
                "200": _json("a JSON-RPC result or error", {"type": "object"}),
                "202": {"description": "a notification or response: accepted, no body"},
                "400": _json("not one JSON-RPC 2.0 message", {"type": "object"}),
                "408": BODY_ERRORS["408"],
                "413": BODY_ERRORS["413"],
            },
            operationId="mcp",
            requestBody={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        ),
        "delete": _op("end an MCP session", {"204": {"description": "ended"}}, operationId="mcpEnd"),
    },
    "/metrics": {
        "get": _op(
            "Prometheus text format",
            {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            operationId="metrics",
        )
    },
}


@functools.cache
def _document() -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Waystation agent socket API",
            "version": __version__,
            "description": (
                "HTTP/1.1 and JSON over the agent's Unix socket "
                "(`curl --unix-socket SOCK http://waystation/v1/status`). Errors are "
                '`{"error": {"code", "message"}}` with a 4xx/5xx status.'
            ),
        },
        "servers": [{"url": "http://waystation"}],
        "paths": PATHS,
        "components": {"schemas": {**SCHEMAS, **OPENAI_RESPONSES}},
    }


def openapi_document() -> Schema:
    """The document, as a fresh dict the caller may change."""
    return copy.deepcopy(_document())
