"""Reading an OpenAI Chat Completions request into a turn: messages (with the client's tool calls
and results), its function tools, tool_choice, response_format, stop, and the parameters we refuse.

A parameter that would change the answer and that we cannot honour is a 400 naming it, never
silently dropped (a client asking for two choices must not get one). Parameters that only tag
the request (`user`, `metadata`, ...) are ignored, as other local OpenAI-compatible servers
ignore them; unknown ones too, so a newer SDK keeps working. `store` is OpenAI's: false (the
default) keeps no copy of the conversation once the answer is given; true keeps it with the turn
until `retention_days`. `seed`, `top_p`, `frequency_penalty` and `presence_penalty` are the
sampler's, with OpenAI's ranges (out of them, a 400): the same seed gives the same sampled answer
again from the same model and settings; the penalties work as llama-server's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from waystation.adapters.models import schema_limits
from waystation.adapters.models.base import Message
from waystation.errors import MalformedRequest, TooManyItems, UnsupportedParameter
from waystation.station.turns.request import (
    MAX_TOKENS_LIMIT,
    TurnRequest,
    bounded_int,
    keep_alive,
    tool_choice,
)

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
MAX_STOP = 4  # OpenAI's limit on stop sequences
# OpenAI's limits on the lists of a request (its `array_above_max_length`). More messages than
# this cannot fit a local model's context anyway (each costs tokens of the template), and one
# request of 40,000 held the model for minutes before it was refused.
MAX_MESSAGES = 2048
MAX_TOOLS = 128

# Parameters we refuse unless they hold the value that asks for nothing (None, False, empty).
REFUSED: dict[str, str] = {
    "logprobs": "log probabilities are not returned",
    "top_logprobs": "log probabilities are not returned",
    "logit_bias": "logit bias is not supported",
    "functions": "the deprecated functions are not supported; use tools",
    "function_call": "the deprecated function_call is not supported; use tool_choice",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
}


@dataclass(frozen=True)
class ChatRequest:
    turn: TurnRequest
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage


def chat_request(body: Mapping[str, Any]) -> ChatRequest:
    """The turn an OpenAI Chat Completions body asks for, or a 400 naming what is wrong."""
    for name, problem in REFUSED.items():
        if body.get(name) not in (None, False, "", [], {}):
            raise UnsupportedParameter(name, problem)
    modalities = body.get("modalities")
    if modalities not in (None, ["text"]):
        raise UnsupportedParameter("modalities", "only text is generated")
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise MalformedRequest("n must be a positive integer")
    if n is not None and n > 1:
        raise UnsupportedParameter("n", f"only one choice is generated; n must be 1, not {n}")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise MalformedRequest("model must be a string")
    temperature = _number(body, "temperature", 0, 2, "a number between 0 and 2") or 0.0
    # OpenAI's newer name wins; 0 is a 400 as OpenAI answers it, never read as "unset" (it was 256).
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    tools = _tools(body.get("tools"))
    choice = tool_choice(body.get("tool_choice", "auto" if tools else "none"))
    if choice != "none" and not tools and choice != "auto":
        raise MalformedRequest("tool_choice asks for a tool call, and tools names none")
    if isinstance(choice, dict) and choice["tool"] not in {t["name"] for t in tools}:
        raise MalformedRequest(f"tool_choice names {choice['tool']!r}, which is not one of the tools")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise MalformedRequest("stream must be true or false")
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        raise MalformedRequest("store must be true or false")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise MalformedRequest("seed must be an integer")
    top_p = _number(body, "top_p", 0, 1, "a number greater than 0 and at most 1", above_low=True)
    frequency = _number(body, "frequency_penalty", -2, 2, "a number between -2 and 2")
    presence = _number(body, "presence_penalty", -2, 2, "a number between -2 and 2")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise MalformedRequest("stream_options must be an object")
    turn = TurnRequest(
        prompt="",
        model=model,
        messages=_messages(body.get("messages")),
        temperature=temperature,
        seed=seed,
        top_p=top_p,
        frequency_penalty=frequency or 0.0,
        presence_penalty=presence or 0.0,
        max_tokens=bounded_int(body, limit, 256, MAX_TOKENS_LIMIT),
        tool_choice=choice if tools else "none",
        client_tools=tools,
        response_format=_response_schema(body.get("response_format")),
        keep_alive=keep_alive(body.get("keep_alive")),  # Ollama's, through the SDK's extra_body
        stop=_stop(body.get("stop")),
        store=bool(store),
    )
    return ChatRequest(turn, bool(stream), bool((options or {}).get("include_usage")))


def _number(
    body: Mapping[str, Any], name: str, low: float, high: float, range_: str, *, above_low: bool = False
) -> float | None:
    """A sampling parameter within OpenAI's range, or None when it is not asked for (absent or null)."""
    value = body.get(name)
    if value is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not low <= value <= high  # (NaN and the infinities JSON may carry are not)
        or (above_low and value == low)
    ):
        raise MalformedRequest(f"{name} must be {range_}")
    return float(value)


def _stop(raw: Any) -> list[str] | None:
    """OpenAI's `stop`: a string, or a list of up to 4 (none: null or an empty list)."""
    stop = [raw] if isinstance(raw, str) else raw
    if stop is None or stop == []:
        return None
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise MalformedRequest(f"stop must be a non-empty string or a list of up to {MAX_STOP} of them")
    if len(stop) > MAX_STOP:
        raise MalformedRequest(f"stop takes at most {MAX_STOP} sequences, not {len(stop)}")
    return stop


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise MalformedRequest("messages must be a non-empty list of {role, content} objects")
    if len(raw) > MAX_MESSAGES:
        raise TooManyItems("messages", len(raw), MAX_MESSAGES)
    return [_message(m, i) for i, m in enumerate(raw)]


def _message(m: Any, i: int) -> Message:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise MalformedRequest(f"{where} must be an object whose role is one of {', '.join(ROLES)}")
    role = ROLES[m["role"]]
    calls = m.get("tool_calls") if role == "assistant" else None
    content = _text_of(m.get("content"))
    if content is None and not (role == "assistant" and m.get("content") is None):
        raise MalformedRequest(f"{where}.content must be a string or a list of content parts")
    message: Message = {"role": role, "content": content if content is not None or calls else ""}
    if calls:
        message["tool_calls"] = _calls(calls, where)
    if role == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise MalformedRequest(f"{where}.tool_call_id must be a string: the id of the call it answers")
        message["tool_call_id"] = m["tool_call_id"]
    return message


def _text_of(content: Any) -> str | None:
    """A message's text: a string, or OpenAI's list of content parts (text parts joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return None


def _calls(raw: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's tool calls, as the client got them from us (or from OpenAI)."""
    problem = f"{where}.tool_calls must be a list of {{id, type: function, function: {{name, arguments}}}}"
    if not isinstance(raw, list):
        raise MalformedRequest(problem)
    calls = []
    for call in raw:
        function = call.get("function") if isinstance(call, dict) else None
        if not (
            isinstance(function, dict)
            and isinstance(call.get("id"), str)
            and isinstance(function.get("name"), str)
            and isinstance(function.get("arguments"), str)
        ):
            raise MalformedRequest(problem)
        calls.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": function["arguments"]},
            }
        )
    return calls


def _tools(raw: Any) -> list[dict[str, Any]]:
    """The client's function tools as {name, description, parameters}."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise MalformedRequest('tools must be a list of {"type": "function", "function": {...}} objects')
    if len(raw) > MAX_TOOLS:
        raise TooManyItems("tools", len(raw), MAX_TOOLS)
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise MalformedRequest(f'{where} must be {{"type": "function", "function": {{"name", ...}}}}')
        name = function.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            raise MalformedRequest(f"{where}.function.name must be 1-64 letters, digits, _ or -")
        if name in {t["name"] for t in tools}:
            raise MalformedRequest(f"{where}.function.name {name!r} is given twice")
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise MalformedRequest(f"{where}.function.description must be a string")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        _check_object_schema(parameters, f"{where}.function.parameters")
        schema_limits.check_schema(parameters, f"{where}.function.parameters")
        tools.append({"name": name, "description": description or "", "parameters": parameters})
    return tools


def _response_schema(raw: Any) -> dict[str, Any] | None:
    """The JSON Schema the answer must match: json_object is any object; text is no schema."""
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise MalformedRequest('response_format.json_schema must be {"name", "schema", "strict"?}')
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise MalformedRequest("response_format.json_schema.schema must be a JSON Schema object")
        _check_schema(schema, "response_format.json_schema.schema")
        schema_limits.check_schema(schema, "response_format.json_schema")
        return schema
    raise MalformedRequest("response_format.type must be text, json_object or json_schema")


def _check_object_schema(schema: Any, where: str) -> None:
    """A function's parameters: a JSON Schema of an object (what a call's arguments are)."""
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise MalformedRequest(f'{where} must be a JSON Schema object with "type": "object"')
    _check_schema(schema, where)


def _check_schema(schema: Mapping[str, Any], where: str) -> None:
    """The shape of the keywords a grammar is built from; what the converter cannot express it
    names when the model runs (adapters/models/llamacpp.py json_grammar)."""
    checks: dict[str, Callable[[Any], bool]] = {
        "type": lambda v: all(t in JSON_TYPES for t in (v if isinstance(v, list) else [v])),
        "properties": lambda v: isinstance(v, dict) and all(isinstance(p, dict | bool) for p in v.values()),
        "required": lambda v: isinstance(v, list) and all(isinstance(r, str) for r in v),
        "enum": lambda v: isinstance(v, list),
        "items": lambda v: isinstance(v, dict | bool),
    }
    for keyword, ok in checks.items():
        if keyword in schema and not ok(schema[keyword]):
            raise MalformedRequest(f"{where}.{keyword} is not valid JSON Schema")
    for name, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, dict):
            _check_schema(sub, f"{where}.properties.{name}")
    if isinstance(schema.get("items"), dict):
        _check_schema(schema["items"], f"{where}.items")
