"""The contract's objects as JSON Schemas, for the OpenAPI document (openapi.py).

The document is kept by hand for what types cannot say (descriptions, patterns, bounds); its
enums come from waystation/contract.py's Literals, and tests/test_openapi_contract.py checks
every schema's properties, required fields and enums against contract.py's TypedDicts both ways.
"""

from __future__ import annotations

from typing import Any, get_args

from waystation import contract

Schema = dict[str, Any]


def enum(vocabulary: Any) -> Schema:
    """A string schema whose values are a contract Literal's."""
    return {"type": "string", "enum": list(get_args(vocabulary))}


def _nullable(type_name: str, **extra: Any) -> Schema:
    return {"type": [type_name, "null"], **extra}


# Ollama's keep_alive, on a turn and a chat completion alike.
KEEP_ALIVE: Schema = {
    "oneOf": [
        {"type": "number", "maximum": 315360000},
        {
            "type": "string",
            "pattern": r"^[+-]?(\d+(\.\d*)?|\.\d+)((ms|s|m|h)((\d+(\.\d*)?|\.\d+)(ms|s|m|h))*)?$",
        },
    ],
    "description": "how long a local model stays loaded after this request: seconds, or a duration"
    ' such as "30s", "5m", "1h30m"; 0 unloads it at once, a negative value keeps it loaded;'
    " unset: [model] idle_unload_s",
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(
    properties: dict[str, Schema], required: list[str] | None = None, optional: tuple[str, ...] = ()
) -> Schema:
    """An object with these properties (all required unless named, or but the `optional` ones),
    more allowed: the agent may add fields (clients must ignore what they do not know)."""
    if required is None:
        required = [name for name in properties if name not in optional]
    return {"type": "object", "properties": properties, "required": required}


ID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
TIMESTAMP = {"type": "string", "description": "ISO 8601, UTC"}
ANY_JSON: Schema = {}

SCHEMAS: dict[str, Schema] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "code": {"type": "string", "pattern": "^[a-z0-9_]+$", "description": "snake_case"},
                    "message": {"type": "string"},
                }
            )
        }
    ),
    "Task": _object(
        {
            "id": {"type": "string"},
            "tool": {"type": "string"},
            "args": {"type": "object"},
            "idempotency_key": {"type": "string"},
            "state": enum(contract.TaskState),
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt_at": _nullable("string", description="when a pending task is due"),
            "last_error": _nullable("string"),
            "result": ANY_JSON,
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
            "expires_at": _nullable("string"),
            "turn_id": _nullable("string"),
        },
        required=[
            "id",
            "tool",
            "args",
            "idempotency_key",
            "state",
            "attempts",
            "next_attempt_at",
            "last_error",
            "result",
            "created_at",
            "updated_at",
            "turn_id",
        ],
    ),
    "NewTask": {
        "type": "object",
        "properties": {
            "tool": {"type": "string", "description": "a tool's name, e.g. http_request or web_fetch"},
            "args": {
                "type": "object",
                "description": (
                    "the tool's arguments. An http_request header's value may name a secret instead "
                    'of holding it, {"secret": "NAME"}: the task keeps the reference, and the agent '
                    "sends the value it finds at delivery in $CREDENTIALS_DIRECTORY/NAME, the "
                    "environment variable NAME when [agent] env_secrets lists it, or [secrets] NAME "
                    "of its config file, in that order (422 when it is set nowhere when the task is "
                    "added)"
                ),
            },
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 255},
            "expires_at": {"type": "string", "format": "date-time"},
        },
        "required": ["tool", "args"],
    },
    "RouteInfo": _object(
        {
            "name": {"type": "string"},
            "provider": {"type": "string"},
            "auth_lane": enum(contract.AuthLane),
            "cost_lane": enum(contract.CostLane),
            "model": _nullable("string"),
        },
        required=["name", "provider", "auth_lane", "cost_lane"],
    ),
    "Route": _object(
        {
            "name": {"type": "string"},
            "provider": {"type": "string"},
            "auth_lane": {"type": "string"},
            "cost_lane": {"type": "string"},
            "model": _nullable("string"),
            "available": {"type": "boolean"},
            "reason": _nullable("string", description="why the route cannot run now"),
            "model_answered": _nullable("string", description="the model its provider said answered last"),
        },
        optional=("model_answered",),
    ),
    "Usage": _object({"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}}),
    "Receipt": _object(
        {
            "id": {"type": "string"},
            "kind": enum(contract.ReceiptKind),
            "created_at": TIMESTAMP,
            "status": enum(contract.ReceiptStatus),
            "reason": _nullable("string"),
            "route": ref("RouteInfo"),
            "usage": ref("Usage"),
            "credits_used": {"type": "number"},
            "duration_ms": {"type": "integer"},
            "turn_id": _nullable("string"),
            "task_id": _nullable("string"),
            "deferred_task_ids": {"type": "array", "items": {"type": "string"}},
            "cold_load_ms": _nullable("integer", description="how long loading the turn's model took"),
            "model_answered": _nullable("string", description="the model the provider says answered"),
            "telemetry": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "the provider's rate-limit headers, as it sent them",
            },
            "prev_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "hash": {
                "type": "string",
                "pattern": "^[0-9a-f]{64}$",
                "description": "SHA-256 of the canonical JSON without `hash`",
            },
        },
        optional=("cold_load_ms", "model_answered", "telemetry"),  # receipts written before them lack them
    ),
    "Verification": _object(
        {
            "ok": {"type": "boolean"},
            "count": {"type": "integer", "minimum": 0},
            "first_broken_id": _nullable("string"),
            "reason": _nullable("string"),
            "checkpoint": {
                "oneOf": [
                    {"type": "null"},
                    _object(
                        {
                            "origin": {"type": "string"},
                            "size": {"type": "integer", "minimum": 0},
                            "root_hash": {"type": "string"},
                        }
                    ),
                ],
                "description": "the checkpoint the receipts were checked against, if any",
            },
        }
    ),
    "CheckpointToVerify": _object({"checkpoint": {"type": "string", "minLength": 1}}),
    "Checkpoint": _object(
        {
            "origin": {"type": "string", "description": "waystation/<host>"},
            "size": {"type": "integer", "minimum": 0},
            "root_hash": {"type": "string", "description": "RFC 6962 root, base64"},
            "note": {"type": "string", "description": "the whole signed note (C2SP signed-note)"},
        }
    ),
    "VerifierKey": _object({"key": {"type": "string", "description": "NAME+KEYID+BASE64"}}),
    "ReceiptProof": _object(
        {
            "receipt": ref("Receipt"),
            "leaf_index": {"type": "integer", "minimum": 0},
            "tree_size": {"type": "integer", "minimum": 1},
            "inclusion_proof": {"type": "array", "items": {"type": "string"}},
            "checkpoint": {"type": "string"},
        }
    ),
    "Probe": _object(
        {
            "at": TIMESTAMP,
            "ok": {"type": "boolean"},
            "status": _nullable("integer"),
            "error": _nullable("string"),
            "duration_ms": {"type": "integer"},
        },
        required=["at", "ok"],
    ),
    "Connectivity": _object(
        {
            "state": enum(contract.ConnectivityState),
            "mode": enum(contract.ConnectivityMode),
            "since": _nullable("string"),
            "last_probe": {"oneOf": [ref("Probe"), {"type": "null"}]},
            "metered": {"type": "boolean"},
        }
    ),
    "ConnectivityMode": {
        "type": "object",
        "properties": {"mode": enum(contract.ConnectivityMode)},
        "required": ["mode"],
    },
    "QueueCounts": _object(
        {state: {"type": "integer", "minimum": 0} for state in get_args(contract.TaskState)}
    ),
    "ModelStatus": _object(
        {
            "backend": {"type": "string"},
            "path": {"type": "string"},
            "loaded": {"type": "boolean"},
            "threads": _nullable("integer"),
        },
        ["backend", "path", "loaded"],
    ),
    "Status": _object(
        {
            "version": {"type": "string"},
            "uptime_s": {"type": "number"},
            "connectivity": ref("Connectivity"),
            "queue": ref("QueueCounts"),
            "model": ref("ModelStatus"),
            "routes": {"type": "array", "items": ref("Route")},
            "turns": {
                "type": "object",
                "additionalProperties": {"type": "integer", "minimum": 0},
                "description": "turns by state",
            },
            "signing": _object(
                {
                    "ok": {"type": "boolean", "description": "the receipts' checkpoints are signed"},
                    "error": _nullable("string", description="why not: a damaged receipts.key"),
                }
            ),
        },
        required=["version", "uptime_s", "connectivity", "queue", "model", "routes", "turns"],
    ),
    "ModelDetails": _object(
        {
            "name": {"type": "string"},
            "path": {"type": "string"},
            "format": enum(contract.ModelFormat),
            "size": {"type": "integer", "minimum": 0, "description": "bytes on disk"},
            "sha256": _nullable("string", description="of the GGUF file, when a pull recorded it"),
            "source": _nullable("string", description="hf:OWNER/REPO/FILE or the URL (no credentials)"),
            "pulled_at": _nullable("string"),
            "verified": {"type": "boolean", "description": "sha256 checked against the source's"},
            "embedded": {"type": "boolean", "description": "the model the package ships"},
            "default": {"type": "boolean", "description": "what a turn naming no model runs"},
        }
    ),
    "Model": _object(
        {
            "id": {"type": "string", "description": "the name a turn's `model` may give"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
            "waystation": ref("ModelDetails"),
        },
        required=["id", "object", "created", "owned_by"],
    ),
    "ModelList": _object(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": ref("Model")},
            "waystation": _object(
                {"partial": {"type": "array", "items": ref("PartialDownload")}},
            ),
        },
        required=["object", "data"],
    ),
    "PartialDownload": _object(
        {
            "name": _nullable("string", description="the name it will be installed under"),
            "source": _nullable("string"),
            "size": {"type": "integer", "description": "bytes so far"},
            "path": {"type": "string"},
        }
    ),
    "ModelDeleted": _object(
        {"id": {"type": "string"}, "object": {"const": "model"}, "deleted": {"const": True}}
    ),
    "LoadedModel": _object(
        {
            "name": {"type": "string", "description": "its name, `embedded`, or its path"},
            "path": {"type": "string"},
            "backend": {"type": "string"},
            "size": {"type": "integer", "description": "bytes of its weights (mapped whole)"},
            "memory": {
                "type": "integer",
                "description": "bytes it takes as the memory budget counts them: weights and KV cache",
            },
            "loaded_at": _nullable("string"),
            "unloads_at": _nullable("string", description="null: never, or generating now"),
            "until": {
                "type": "string",
                "description": 'when it unloads: unloads_at, "busy" (generating) or "forever"',
            },
            "busy": {"type": "boolean"},
        }
    ),
    "PullRequest": {
        "type": "object",
        "properties": {
            "source": {
                "type": "string",
                "minLength": 1,
                "maxLength": 2048,
                "description": "hf:OWNER/REPO/FILE (Hugging Face) or an http(s) URL",
            },
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
            "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
        },
        "required": ["source"],
    },
    "FlushResult": _object(
        {
            "pending": {"type": "integer", "minimum": 0},
            "connectivity": {"type": "string"},
            "metered": {"type": "boolean"},
            "message": {"type": "string"},
        }
    ),
    "TurnRequest": {
        "type": "object",
        "properties": {
            "prompt": {"type": "string"},
            "route": {"type": "string"},
            "model": {"type": "string"},
            "system": {"type": "string"},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 8192},
            "max_steps": {"type": "integer", "minimum": 1, "maximum": 16},
            "tool_choice": {
                "oneOf": [
                    enum(contract.ToolChoiceMode),
                    _object({"tool": {"type": "string", "minLength": 1}}),
                ]
            },
            "defer": {"type": "boolean"},
            "stream": {"type": "boolean", "description": "answer with Server-Sent Events"},
            "keep_alive": KEEP_ALIVE,
        },
        "required": ["prompt"],
    },
    "TurnResult": _object(
        {
            "turn_id": {"type": "string"},
            "text": {"type": "string"},
            "route": {"type": "string"},
            "receipt_id": {"type": "string"},
            "status": enum(contract.ReceiptStatus),
            "tool_calls": {"type": "array", "items": {"type": "object"}},
            "deferred_task_ids": {"type": "array", "items": {"type": "string"}},
            "usage": ref("Usage"),
            "model": _nullable("string", description="the model asked for"),
            "model_answered": _nullable("string", description="the model the provider says answered"),
            "finish_reason": {
                "type": "string",
                "description": "the last generation's: stop, length, tool_calls",
            },
        }
    ),
    "Turn": _object(
        {
            "turn_id": {"type": "string"},
            "state": enum(contract.TurnState),
            "route": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
            "prompt": {"type": "string"},
            "text": {"type": ["string", "null"], "description": "the final answer once the turn is ok"},
            "reason": {"type": ["string", "null"]},
            "tool_calls": {
                "type": "array",
                "items": _object(
                    {
                        "id": {"type": ["string", "null"]},
                        "tool": {"type": ["string", "null"]},
                        "arguments": {},
                        "status": {"type": ["string", "null"]},
                        "task_id": {"type": ["string", "null"]},
                        "task_state": {"type": ["string", "null"]},
                        "result": {
                            "type": ["string", "null"],
                            "description": "what the call got, in one line (null while it has no answer)",
                        },
                    }
                ),
            },
            "receipt_ids": {"type": "array", "items": {"type": "string"}},
            "created_at": {"type": "string"},
            "updated_at": {"type": "string"},
            "compacted_at": {
                "type": ["string", "null"],
                "description": "when retention_days dropped the finished turn's conversation (null: not yet)",
            },
        },
        required=[
            "turn_id",
            "state",
            "route",
            "model",
            "prompt",
            "text",
            "reason",
            "tool_calls",
            "receipt_ids",
            "created_at",
            "updated_at",
        ],
    ),
    "ChatMessage": {
        "type": "object",
        "properties": {
            "role": enum(contract.ChatRole),
            "content": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "object"}},
                    {"type": "null"},
                ],
                "description": "null only on an assistant message with tool_calls",
            },
            "tool_calls": {"type": "array", "items": {"type": "object"}},
            "tool_call_id": {"type": "string", "description": "on a tool message: the call it answers"},
        },
        "required": ["role"],
    },
    "ChatCompletionRequest": {
        "type": "object",
        "properties": {
            "model": {"type": "string"},
            "messages": {"type": "array", "items": ref("ChatMessage"), "minItems": 1, "maxItems": 2048},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 8192},
            "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 8192},
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
            "tools": {
                "type": "array",
                "items": {"type": "object"},
                "maxItems": 128,
                "description": "OpenAI function tools",
            },
            "tool_choice": {"oneOf": [enum(contract.ToolChoiceMode), {"type": "object"}]},
            "response_format": {"type": "object", "description": "text, json_object or json_schema"},
            "n": {"type": "integer", "const": 1},
            "stop": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
                ],
                "description": "the answer ends before the first of these, which it never contains",
            },
            "keep_alive": KEEP_ALIVE,
            "store": {
                "type": "boolean",
                "description": "OpenAI's: keep the conversation until retention_days (default false)",
            },
        },
        "required": ["messages"],
    },
    "ChatCompletion": _object(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": _object(
                {
                    "prompt_tokens": {"type": "integer"},
                    "completion_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"},
                }
            ),
            "waystation": _object({"turn_id": {"type": "string"}, "receipt_id": {"type": "string"}}),
        },
        optional=("waystation",),
    ),
}
