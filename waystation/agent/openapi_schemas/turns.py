"""The schemas of turns and the OpenAI-compatible endpoint (contract/turns.py's objects)."""

from __future__ import annotations

from waystation import contract
from waystation.agent.openapi_schemas.primitives import (
    Schema,
    enum,
    nullable,
    object_schema,
    ref,
)

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


TURN_SCHEMAS: dict[str, Schema] = {
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
                    object_schema({"tool": {"type": "string", "minLength": 1}}),
                ]
            },
            "defer": {"type": "boolean"},
            "stream": {"type": "boolean", "description": "answer with Server-Sent Events"},
            "keep_alive": KEEP_ALIVE,
        },
        "required": ["prompt"],
    },
    "TurnResult": object_schema(
        {
            "turn_id": {"type": "string"},
            "text": {"type": "string"},
            "route": {"type": "string"},
            "receipt_id": {"type": "string"},
            "status": enum(contract.ReceiptStatus),
            "tool_calls": {"type": "array", "items": {"type": "object"}},
            "deferred_task_ids": {"type": "array", "items": {"type": "string"}},
            "usage": ref("Usage"),
            "model": nullable("string", description="the model asked for"),
            "model_answered": nullable("string", description="the model the provider says answered"),
            "finish_reason": {
                "type": "string",
                "description": "the last generation's: stop, length, tool_calls",
            },
        }
    ),
    "Turn": object_schema(
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
                "items": object_schema(
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
        optional=("compacted_at",),
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
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
            "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
            "seed": {"type": "integer", "description": "the same seed gives the same sampled answer"},
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
    "ChatCompletion": object_schema(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": object_schema(
                {
                    "prompt_tokens": {"type": "integer"},
                    "completion_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"},
                }
            ),
            "waystation": object_schema({"turn_id": {"type": "string"}, "receipt_id": {"type": "string"}}),
        },
        optional=("waystation",),
    ),
}

# OpenAI's own objects, documented by OpenAI (no TypedDict of ours: responses_translate.py builds them).
OPENAI_RESPONSES: dict[str, Schema] = {
    "ResponsesRequest": {
        "type": "object",
        "properties": {
            "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}
        },
        "required": ["input"],
        "description": "OpenAI's: input, instructions, tools, tool_choice, text, max_output_tokens, stream",
    },
    "Response": {"type": "object", "properties": {"object": {"type": "string", "const": "response"}}},
}
