"""The schemas of the station's state and its models (contract/station.py's objects)."""

from __future__ import annotations

from typing import get_args

from waystation import contract
from waystation.agent.openapi_schemas.primitives import (
    TIMESTAMP,
    Schema,
    enum,
    nullable,
    object_schema,
    ref,
)

STATION_SCHEMAS: dict[str, Schema] = {
    "Probe": object_schema(
        {
            "at": TIMESTAMP,
            "ok": {"type": "boolean"},
            "status": nullable("integer"),
            "error": nullable("string"),
            "duration_ms": {"type": "integer"},
        },
        required=["at", "ok"],
    ),
    "Connectivity": object_schema(
        {
            "state": enum(contract.ConnectivityState),
            "mode": enum(contract.ConnectivityMode),
            "since": nullable("string"),
            "last_probe": {"oneOf": [ref("Probe"), {"type": "null"}]},
            "metered": {"type": "boolean"},
        }
    ),
    "ConnectivityMode": {
        "type": "object",
        "properties": {"mode": enum(contract.ConnectivityMode)},
        "required": ["mode"],
    },
    "QueueCounts": object_schema(
        {state: {"type": "integer", "minimum": 0} for state in get_args(contract.TaskState)}
    ),
    "ModelStatus": object_schema(
        {
            "backend": {"type": "string"},
            "path": {"type": "string"},
            "loaded": {"type": "boolean"},
            "threads": nullable("integer"),
        },
        ["backend", "path", "loaded"],
    ),
    "Status": object_schema(
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
            "signing": object_schema(
                {
                    "ok": {"type": "boolean", "description": "the receipts' checkpoints are signed"},
                    "error": nullable("string", description="why not: a damaged receipts.key"),
                }
            ),
            "listen": nullable("string", description="[agent] listen: the listener for other tools, or null"),
        },
        required=["version", "uptime_s", "connectivity", "queue", "model", "routes", "turns"],
    ),
    "ModelDetails": object_schema(
        {
            "name": {"type": "string"},
            "path": {"type": "string"},
            "format": enum(contract.ModelFormat),
            "size": {"type": "integer", "minimum": 0, "description": "bytes on disk"},
            "sha256": nullable("string", description="of the GGUF file, when a pull recorded it"),
            "source": nullable("string", description="hf:OWNER/REPO/FILE or the URL (no credentials)"),
            "pulled_at": nullable("string"),
            "verified": {"type": "boolean", "description": "sha256 checked against the source's"},
            "embedded": {"type": "boolean", "description": "the model the package ships"},
            "default": {"type": "boolean", "description": "what a turn naming no model runs"},
        }
    ),
    "Model": object_schema(
        {
            "id": {"type": "string", "description": "the name a turn's `model` may give"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
            "waystation": ref("ModelDetails"),
        },
        required=["id", "object", "created", "owned_by"],
    ),
    "ModelList": object_schema(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": ref("Model")},
            "waystation": object_schema(
                {"partial": {"type": "array", "items": ref("PartialDownload")}},
            ),
        },
        required=["object", "data"],
    ),
    "PartialDownload": object_schema(
        {
            "name": nullable("string", description="the name it will be installed under"),
            "source": nullable("string"),
            "size": {"type": "integer", "description": "bytes so far"},
            "path": {"type": "string"},
        }
    ),
    "ModelDeleted": object_schema(
        {"id": {"type": "string"}, "object": {"const": "model"}, "deleted": {"const": True}}
    ),
    "LoadedModel": object_schema(
        {
            "name": {"type": "string", "description": "its name, `embedded`, or its path"},
            "path": {"type": "string"},
            "backend": {"type": "string"},
            "size": {"type": "integer", "description": "bytes of its weights (mapped whole)"},
            "memory": {
                "type": "integer",
                "description": "bytes it takes as the memory budget counts them: weights and KV cache",
            },
            "loaded_at": nullable("string"),
            "unloads_at": nullable("string", description="null: never, or generating now"),
            "until": {
                "type": "string",
                "description": 'when it unloads: unloads_at, "busy" (generating) or "forever"',
            },
            "busy": {"type": "boolean"},
            "sequences": {"type": "integer", "description": "sequences it generates now"},
            "waiting": {
                "type": "integer",
                "description": "requests waiting for a sequence (serial: for the one generating)",
            },
            "parallel": {
                "type": "integer",
                "description": "sequences it may generate at once ([model] parallel); 0: one at a time",
            },
            "saved_state": {
                "oneOf": [ref("SavedState"), {"type": "null"}],
                "description": "parked turns' model state on disk; null: not kept (off, or serial)",
            },
        }
    ),
    "SavedState": object_schema(
        {
            "entries": {"type": "integer", "description": "this model's saved prefixes"},
            "bytes": {"type": "integer", "description": "their size on disk"},
            "limit_bytes": {
                "type": "integer",
                "description": "[model] saved_state_mb, for every model's saved state together",
            },
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
    "FlushResult": object_schema(
        {
            "pending": {"type": "integer", "minimum": 0},
            "connectivity": {"type": "string"},
            "metered": {"type": "boolean"},
            "message": {"type": "string"},
        }
    ),
}
