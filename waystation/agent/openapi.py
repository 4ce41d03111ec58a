"""The socket API's OpenAPI 3.1 document (`GET /v1/openapi.json`), built from the contract.

It describes every route api.py, api_turns.py and api_models.py serve: request bodies, query and path
parameters, the contract's objects (task, receipt, route, connectivity, status) and the error
object every 4xx/5xx carries. Tests validate it with openapi-spec-validator and fuzz the live
agent against it with schemathesis, so a route added without a description here shows up there.
"""

from __future__ import annotations

import copy
import functools

from waystation import __version__, contract
from waystation.agent.api_models import ENDPOINT_HEADER as PULL_ENDPOINT_HEADER
from waystation.agent.api_models import TOKEN_HEADER as PULL_TOKEN_HEADER
from waystation.agent.openapi_parts import (
    BODY_ERRORS,
    LIMIT,
    SSE,
    error,
    header_param,
    id_param,
    json_body,
    json_content,
    operation,
    query_param,
    task_operation,
    turn_operation,
)
from waystation.agent.openapi_schemas import SCHEMAS, Schema, enum, ref
from waystation.agent.openapi_schemas.turns import OPENAI_RESPONSES

PATHS: dict[str, Schema] = {
    "/v1/status": {
        "get": operation(
            "the agent at a glance", {"200": json_content("status", ref("Status"))}, operationId="status"
        )
    },
    "/v1/connectivity": {
        "get": operation(
            "connectivity state and mode",
            {"200": json_content("connectivity", ref("Connectivity"))},
            operationId="getConnectivity",
        ),
        "put": operation(
            "force connectivity online or offline, or back to auto",
            {"200": json_content("connectivity", ref("Connectivity")), **BODY_ERRORS},
            operationId="setConnectivity",
            requestBody=json_body("ConnectivityMode"),
        ),
    },
    "/v1/routes": {
        "get": operation(
            "every route, available or not, with the reason",
            {"200": json_content("routes", {"type": "array", "items": ref("Route")})},
            operationId="routes",
        )
    },
    "/v1/tasks": {
        "post": operation(
            "park a tool call",
            {
                "201": json_content("a new task", ref("Task")),
                "200": json_content(
                    "the existing task with this idempotency key and equal args", ref("Task")
                ),
                "409": error("the idempotency key exists with other args"),
                "422": error("unknown tool or bad args"),
                "503": error("the database is unavailable"),
                **BODY_ERRORS,
            },
            operationId="createTask",
            requestBody=json_body("NewTask"),
        ),
        "get": operation(
            "tasks, newest first",
            {
                "200": json_content("tasks", {"type": "array", "items": ref("Task")}),
                "400": error("bad state or limit"),
            },
            operationId="listTasks",
            parameters=[
                query_param("state", enum(contract.TaskState), "only tasks in this state"),
                LIMIT,
            ],
        ),
    },
    "/v1/tasks/{id}": {"get": {**task_operation("one task", {}), "operationId": "getTask"}},
    "/v1/tasks/{id}/retry": {
        "post": {
            **task_operation("retry a dead, cancelled or expired task now", {"409": error("not retryable")}),
            "operationId": "retryTask",
        }
    },
    "/v1/tasks/{id}/cancel": {
        "post": {
            **task_operation("cancel a pending task", {"409": error("already settled")}),
            "operationId": "cancelTask",
        }
    },
    "/v1/flush": {
        "post": operation(
            "make every pending task due now (delivered once online)",
            {"202": json_content("accepted", ref("FlushResult"))},
            operationId="flush",
        )
    },
    "/v1/turns": {
        "post": turn_operation(
            "one model turn (Server-Sent Events `token`, `done`, `error` when streaming)",
            "the turn",
            "TurnResult",
            operationId="turn",
            requestBody=json_body("TurnRequest"),
        ),
        "get": operation(
            "turns, newest first",
            {
                "200": json_content("turns", {"type": "array", "items": ref("Turn")}),
                "400": error("bad state or limit"),
            },
            operationId="listTurns",
            parameters=[
                query_param("state", enum(contract.TurnState), "only turns in this state"),
                LIMIT,
            ],
        ),
    },
    "/v1/turns/{id}": {
        "get": operation(
            "one turn: where it stands, its answer once ok, its calls and receipts",
            {"200": json_content("the turn", ref("Turn"))},
            operationId="getTurn",
            parameters=[id_param("turn")],
        )
    },
    "/v1/chat/completions": {
        "post": turn_operation(
            "OpenAI-compatible chat completions on the default route (plain and streaming); the"
            " client's tools come back as tool_calls for the client to run",
            "a completion",
            "ChatCompletion",
            operationId="chatCompletions",
            requestBody=json_body("ChatCompletionRequest"),
        )
    },
    "/v1/responses": {
        "post": turn_operation(
            "OpenAI's Responses API, translated to a chat completion (JSON, or typed Server-Sent Events"
            " ending with response.completed, or response.incomplete when cut off by max_output_tokens);"
            " an unsupported field is a 400 naming it",
            "a response",
            "Response",
            operationId="responses",
            requestBody=json_body("ResponsesRequest"),
        )
    },
    "/v1/models": {
        "get": operation(
            "the models a turn may name (OpenAI's list), the default first",
            {"200": json_content("models", ref("ModelList"))},
            operationId="listModels",
        )
    },
    "/v1/models/loaded": {
        "get": operation(
            "the models in memory now, and when each unloads",
            {"200": json_content("loaded models", {"type": "array", "items": ref("LoadedModel")})},
            operationId="loadedModels",
        )
    },
    "/v1/models/pull": {
        "post": operation(
            "download a model under a name: Server-Sent Events `progress`, then `done` (the model) "
            "or `error`; resumes a download that stopped",
            {
                "200": {"description": "the progress stream", "content": SSE},
                **BODY_ERRORS,
                "409": error("the name is taken, or a pull of that name (or of the same file) is under way"),
                "422": error("the hub's sha256 is not the one given"),
                "502": error("the hub or server failed, or refused (e.g. a gated repository)"),
                "507": error("the file's known size does not fit above `[model] keep_free_mb`"),
            },
            operationId="pullModel",
            requestBody=json_body("PullRequest"),
            parameters=[
                header_param(PULL_TOKEN_HEADER, "a Hugging Face token for this pull only (never stored)"),
                header_param(
                    PULL_ENDPOINT_HEADER,
                    "the hub's URL for this pull (as HF_ENDPOINT); another than the agent's own gets no "
                    "token but the caller's",
                ),
            ],
        )
    },
    "/v1/models/{name}": {
        "delete": operation(
            "remove a named model (unloaded first)",
            {
                "200": json_content("removed", ref("ModelDeleted")),
                "409": error("the embedded model cannot be removed"),
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
        "get": operation(
            "receipts in chain order, oldest first",
            {
                "200": json_content("receipts", {"type": "array", "items": ref("Receipt")}),
                "400": error("bad limit"),
            },
            operationId="listReceipts",
            parameters=[
                query_param(
                    "after", {"type": "string"}, "start after the receipt with this id (404 if there is none)"
                ),
                LIMIT,
            ],
        )
    },
    "/v1/receipts/verify": {
        "get": operation(
            "check the hash chain, the Merkle tree, and consistency with the checkpoint the agent kept",
            {"200": json_content("the verdict", ref("Verification"))},
            operationId="verifyReceipts",
        ),
        "post": operation(
            "the same, and prove the receipts extend the signed checkpoint given (RFC 6962 consistency)",
            {"200": json_content("the verdict", ref("Verification")), **BODY_ERRORS},
            operationId="verifyReceiptsAgainst",
            requestBody=json_body("CheckpointToVerify"),
        ),
    },
    "/v1/receipts/checkpoint": {
        "get": operation(
            "a signed checkpoint of the receipts' Merkle tree now (C2SP tlog-checkpoint)",
            {"200": json_content("the checkpoint", ref("Checkpoint"))},
            operationId="receiptCheckpoint",
        )
    },
    "/v1/receipts/key": {
        "get": operation(
            "the verifier key of the checkpoints (C2SP note format)",
            {"200": json_content("the key", ref("VerifierKey"))},
            operationId="receiptKey",
        )
    },
    "/v1/receipts/{id}": {
        "get": operation(
            "one receipt",
            {"200": json_content("the receipt", ref("Receipt"))},
            operationId="getReceipt",
            parameters=[id_param("receipt")],
        )
    },
    "/v1/receipts/{id}/proof": {
        "get": operation(
            "an inclusion proof of one receipt, with the signed checkpoint it leads to",
            {"200": json_content("the proof", ref("ReceiptProof"))},
            operationId="proveReceipt",
            parameters=[id_param("receipt")],
        )
    },
    "/v1/events": {
        "get": operation(
            "Server-Sent Events: connectivity, task, turn, receipt (never ends)",
            {"200": {"description": "the event stream", "content": SSE}, "400": error("bad Last-Event-ID")},
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
        "get": operation(
            "this document",
            {"200": json_content("the OpenAPI document", {"type": "object"})},
            operationId="openapi",
        )
    },
    "/mcp": {  # MCP's Streamable HTTP (README: "Waystation as an MCP server"); agent/mcp_http.py
        "post": operation(
            "MCP: one JSON-RPC 2.0 message (tools ask, queue_task, status; tasks/get, tasks/result)",
            {
                "200": json_content("a JSON-RPC result or error", {"type": "object"}),
                "202": {"description": "a notification or response: accepted, no body"},
                "400": json_content("not one JSON-RPC 2.0 message", {"type": "object"}),
                "408": BODY_ERRORS["408"],
                "413": BODY_ERRORS["413"],
            },
            operationId="mcp",
            requestBody={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        ),
        "delete": operation("end an MCP session", {"204": {"description": "ended"}}, operationId="mcpEnd"),
    },
    "/metrics": {
        "get": operation(
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
