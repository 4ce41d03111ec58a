"""The schemas of the error body, tasks, routes and receipts (contract/tasks.py's objects)."""

from __future__ import annotations

from waystation import contract
from waystation.agent.openapi_schemas.primitives import (
    ANY_JSON,
    TIMESTAMP,
    Schema,
    enum,
    nullable,
    object_schema,
    ref,
)

TASK_SCHEMAS: dict[str, Schema] = {
    "Error": object_schema(
        {
            "error": object_schema(
                {
                    "code": {"type": "string", "pattern": "^[a-z0-9_]+$", "description": "snake_case"},
                    "message": {"type": "string"},
                }
            )
        }
    ),
    "Task": object_schema(
        {
            "id": {"type": "string"},
            "tool": {"type": "string"},
            "args": {"type": "object"},
            "idempotency_key": {"type": "string"},
            "state": enum(contract.TaskState),
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt_at": nullable("string", description="when a pending task is due"),
            "last_error": nullable("string"),
            "result": ANY_JSON,
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
            "expires_at": nullable("string"),
            "turn_id": nullable("string"),
        },
        optional=("expires_at",),
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
    "RouteInfo": object_schema(
        {
            "name": {"type": "string"},
            "provider": {"type": "string"},
            "auth_lane": enum(contract.AuthLane),
            "cost_lane": enum(contract.CostLane),
            "model": nullable("string"),
        },
        required=["name", "provider", "auth_lane", "cost_lane"],
    ),
    "Route": object_schema(
        {
            "name": {"type": "string"},
            "provider": {"type": "string"},
            "auth_lane": {"type": "string"},
            "cost_lane": {"type": "string"},
            "model": nullable("string"),
            "available": {"type": "boolean"},
            "reason": nullable("string", description="why the route cannot run now"),
            "model_answered": nullable("string", description="the model its provider said answered last"),
        },
        optional=("model_answered",),
    ),
    "Usage": object_schema({"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}}),
    "Receipt": object_schema(
        {
            "id": {"type": "string"},
            "kind": enum(contract.ReceiptKind),
            "created_at": TIMESTAMP,
            "status": enum(contract.ReceiptStatus),
            "reason": nullable("string"),
            "route": ref("RouteInfo"),
            "usage": ref("Usage"),
            "credits_used": {"type": "number"},
            "duration_ms": {"type": "integer"},
            "turn_id": nullable("string"),
            "task_id": nullable("string"),
            "deferred_task_ids": {"type": "array", "items": {"type": "string"}},
            "cold_load_ms": nullable("integer", description="how long loading the turn's model took"),
            "model_answered": nullable("string", description="the model the provider says answered"),
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
    "Verification": object_schema(
        {
            "ok": {"type": "boolean"},
            "count": {"type": "integer", "minimum": 0},
            "first_broken_id": nullable("string"),
            "reason": nullable("string"),
            "checkpoint": {
                "oneOf": [
                    {"type": "null"},
                    object_schema(
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
    "CheckpointToVerify": object_schema({"checkpoint": {"type": "string", "minLength": 1}}),
    "Checkpoint": object_schema(
        {
            "origin": {"type": "string", "description": "waystation/<host>"},
            "size": {"type": "integer", "minimum": 0},
            "root_hash": {"type": "string", "description": "RFC 6962 root, base64"},
            "note": {"type": "string", "description": "the whole signed note (C2SP signed-note)"},
        }
    ),
    "VerifierKey": object_schema({"key": {"type": "string", "description": "NAME+KEYID+BASE64"}}),
    "ReceiptProof": object_schema(
        {
            "receipt": ref("Receipt"),
            "leaf_index": {"type": "integer", "minimum": 0},
            "tree_size": {"type": "integer", "minimum": 1},
            "inclusion_proof": {"type": "array", "items": {"type": "string"}},
            "checkpoint": {"type": "string"},
        }
    ),
}
