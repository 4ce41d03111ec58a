"""The shape a constrained reply is held to on llama.cpp, and what is left of one cut short.

A reply with tools offered is sampled under a grammar made from a JSON Schema: "a call to one of
these tools (or an answer)", made grammar-safe (annotations and free-form optional properties
dropped), with `url` pinned to the URLs the conversation names and `json` to the objects the user
wrote. A schema the converter or llama.cpp's parser cannot take is refused by name
(UnsupportedParameter), never sampled without a grammar.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from waystation.adapters.models import fast_grammar, schema_limits
from waystation.adapters.models.base import GenerationRequest, ToolChoice, ToolSpec, tool_call_schema
from waystation.errors import UnsupportedParameter


def cut_answer(text: str, json_answer: bool = False) -> tuple[str, str]:
    """A constrained reply that max_tokens cut short: an answer keeps what it had said
    ("length"), a JSON answer the JSON it had begun (as OpenAI's does); a tool call has nothing
    to give ("cut_off")."""
    head = '{"answer": "'
    compact = text.replace('{ "answer"', '{"answer"').replace('"answer" :', '"answer":')
    if json_answer and compact.startswith('{"answer":'):
        return compact[len('{"answer":') :].lstrip(), "length"
    if compact.startswith(head):
        try:
            return json.loads(compact + '"}')["answer"], "length"
        except (ValueError, KeyError):
            return compact[len(head) :], "length"
    return "", "cut_off"


# What llama-cpp-python's JSON Schema converter raises on a schema it cannot express.
_SCHEMA_ERRORS = (AssertionError, ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError)


def json_grammar(schema: Any, request: GenerationRequest, llm: Any = None) -> Any:
    """The grammar for a reply's JSON Schema, or UnsupportedParameter naming the part of the
    request (a tool's parameters, the response format) that the converter refused, that asks more
    of the grammar than llama.cpp enforces (schema_limits.py), or, with `llm`, whose grammar
    llama.cpp's parser refuses (it would sample with no grammar at all)."""
    from llama_cpp.llama_grammar import LlamaGrammar

    def refusal(part: Any) -> BaseException | None:
        try:
            LlamaGrammar.from_json_schema(json.dumps(part), verbose=False)
        except _SCHEMA_ERRORS as exc:
            return exc
        return None

    # Each part as it went into the grammar: a tool's parameters grammar-safe, the format whole.
    parts = [
        (f"tools: function {t.name!r} parameters", _grammar_safe(t.grammar or t.parameters))
        for t in request.tools
    ]
    if request.response_format is not None:
        parts.append(("response_format", request.response_format))
    for part_name, part in parts:
        schema_limits.check_schema(part, part_name)
    whole = "response_format" if not request.tools or request.tool_choice == "none" else "tools"
    try:
        grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except _SCHEMA_ERRORS as exc:
        problem: BaseException = exc
    else:
        schema_limits.check_grammar(grammar._grammar, whole)
        if llm is not None and not fast_grammar.parses(llm, grammar):
            raise UnsupportedParameter(whole, "llama.cpp refuses the grammar this JSON Schema makes")
        return grammar
    name = "tools"  # the tools together, when no part alone is refused
    for part_name, part in parts:
        if (refused := refusal(part)) is not None:
            name, problem = part_name, refused
            break
    raise UnsupportedParameter(name, f"cannot constrain to this JSON Schema: {_why(problem)}")


def _why(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def reply_schema(
    tools: Sequence[ToolSpec],
    choice: ToolChoice,
    answer: Mapping[str, Any] | None,
    urls: list[str],
    objects: list[dict[str, Any]],
) -> Any:
    """The JSON Schema a constrained reply is held to: a call to one of the tools (or an answer),
    made grammar-safe, its `url` pinned to `urls` and its `json` to `objects`, the user's JSON
    (last: the objects are data, which `_grammar_safe` and `_pin_urls` would read as schema, an
    object's "title" key as an annotation)."""
    schema = _grammar_safe(tool_call_schema(tools, choice, answer))
    return _pin_json(_pin_urls(schema, urls), objects)


def _pin_urls(schema: Any, urls: list[str]) -> Any:
    """Where the conversation names URLs, a `url` argument may only be one of them.

    A 135M model otherwise miscopies them (https for http, a dropped port or path) about a third
    of the time; choosing among exact strings it cannot get wrong.
    """
    if not urls:
        return schema
    if isinstance(schema, list):
        return [_pin_urls(v, urls) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _pin_urls(v, urls) for k, v in schema.items()}
    properties = out.get("properties")
    if isinstance(properties, dict) and isinstance(properties.get("url"), dict):
        properties["url"] = {"enum": urls}
    return out


def _pin_json(schema: Any, objects: list[dict[str, Any]]) -> Any:
    """Where the user's messages hold JSON objects, a `json` argument may only be one of them.

    A write carries JSON the user gave (station/turns/writes.py refuses any other); asked to
    "POST the JSON {...}", a 135M model otherwise fills in something of its own. Each object is
    a constant the converter writes as `json.dumps` does, so the model copies it exactly, and
    what it sends parses equal to what the user wrote.
    """
    if not objects:
        return schema
    if isinstance(schema, list):
        return [_pin_json(v, objects) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _pin_json(v, objects) for k, v in schema.items()}
    properties = out.get("properties")
    if not isinstance(properties, dict):
        return out
    given = properties.get("json")
    if isinstance(given, dict) and given.get("type", "object") == "object":  # a client's string stays
        properties["json"] = {"enum": objects}
    return out


def _grammar_safe(schema: Any) -> Any:
    """The schema the grammar is built from: annotations the converter rejects on untyped
    schemas are dropped (they constrain nothing), and so are optional free-form properties.

    A small model offered an optional `headers` object or `body` string fills it with rambling
    until max_tokens; required arguments and optional enums (like `method`) are what it needs.
    A repetition past what llama.cpp enforces (an MCP server's `maxLength: 5000`) is left out
    too: a looser grammar (schema_limits.py). The tool still validates the arguments it receives
    against its full schema.
    """
    if isinstance(schema, list):
        return [_grammar_safe(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        k: _grammar_safe(v)
        for k, v in schema.items()
        if k not in ("description", "default", "title") and not schema_limits.past_bound(k, v)
    }
    if isinstance(schema.get("properties"), dict):
        required = set(schema.get("required", []))
        out["properties"] = {
            name: _grammar_safe(prop)
            for name, prop in schema["properties"].items()
            if name in required or "enum" in prop or "const" in prop
        }
    return out
