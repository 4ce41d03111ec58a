"""The pieces the OpenAPI document is built of (agent/openapi.py): operations, parameters, bodies
and the error answers every route shares, so each path there says only what is its own."""

from __future__ import annotations

from typing import Any

from waystation.agent.connections import BODY_TIMEOUT_S
from waystation.agent.http_io import MAX_BODY_BYTES, MAX_LIST
from waystation.agent.openapi_schemas import ID_PATTERN, Schema, ref


def error(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


def json_content(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def json_body(schema_name: str) -> Schema:
    return {
        "required": True,
        "description": f"a JSON object; a body over {MAX_BODY_BYTES} bytes is refused with 413",
        "content": {"application/json": {"schema": ref(schema_name)}},
    }


SSE = {"text/event-stream": {"schema": {"type": "string"}}}

COMMON_ERRORS = {"404": error("no such thing"), "405": error("method not allowed on this path")}
BODY_ERRORS = {
    "400": error("malformed request (not JSON, not an object, or a bad field)"),
    "408": error(f"the request body did not arrive within {BODY_TIMEOUT_S:g} s"),
    "413": error(f"request body over {MAX_BODY_BYTES} bytes"),
}
TURN_ERRORS = {
    **BODY_ERRORS,
    "409": error("the route refused the turn (fail-closed): a `refused` receipt was written"),
    "422": error("the model could not be loaded"),
    "502": error("the provider failed or rejected the turn"),
    "503": error("the database is unavailable"),
    "504": error("the turn timed out"),
}


def operation(summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {"summary": summary, "responses": {**responses, **COMMON_ERRORS}, **extra}


def turn_operation(summary: str, answer: str, schema_name: str, **extra: Any) -> Schema:
    """A turn: JSON, or Server-Sent Events when the request asks to stream."""
    content = {"application/json": {"schema": ref(schema_name)}, **SSE}
    return operation(summary, {"200": {"description": answer, "content": content}, **TURN_ERRORS}, **extra)


def id_param(what: str) -> Schema:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": f"the {what}'s id",
        "schema": {"type": "string", "pattern": ID_PATTERN},
    }


def query_param(name: str, schema: Schema, description: str) -> Schema:
    """An optional query parameter."""
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


LIMIT = query_param(
    "limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIST}, "at most this many (default 100)"
)


def header_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def task_operation(summary: str, extra_errors: dict[str, Schema]) -> Schema:
    return operation(
        summary,
        {"200": json_content("the task", ref("Task")), **extra_errors},
        parameters=[id_param("task")],
    )
