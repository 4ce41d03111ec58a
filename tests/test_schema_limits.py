"""What a JSON Schema may ask of llama.cpp's grammar (adapters/models/schema_limits.py), fast: the
bounds are pure, and a Chat Completions body past one is a 400 naming the keyword, where it is
and the limit, before any turn starts. The real agent's side (a schema that used to crash it) is
in test_openai_tools.py."""

from __future__ import annotations

from typing import Any

import pytest

from waystation.adapters.models import schema_limits
from waystation.adapters.models.base import GenerationRequest, ToolSpec
from waystation.adapters.models.reply_grammar import json_grammar, reply_schema
from waystation.agent.api_openai_request import chat_request
from waystation.errors import UnsupportedParameter

ASK = [{"role": "user", "content": "Answer in JSON."}]


def with_property(**keywords: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"x": {"type": "string", **keywords}}, "required": ["x"]}


def refusal(schema: Any) -> str:
    with pytest.raises(UnsupportedParameter) as caught:
        schema_limits.check_schema(schema, "response_format.json_schema")
    return str(caught.value)


@pytest.mark.parametrize("keyword", ["maxLength", "minLength"])
def test_a_string_length_over_the_bound_is_refused_naming_it(keyword: str) -> None:
    message = refusal(with_property(**{keyword: 20_000}))
    assert message.startswith(f"response_format.json_schema: {keyword} 20000 at $.properties.x exceeds 1000")
    schema_limits.check_schema(with_property(**{keyword: 1_000}), "response_format.json_schema")


@pytest.mark.parametrize("keyword", ["maxItems", "minItems"])
def test_an_array_length_over_the_bound_is_refused(keyword: str) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, keyword: 1_001}
    assert f"{keyword} 1001 at $.anyOf[1] exceeds 1000" in refusal({"anyOf": [{"type": "null"}, schema]})


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("^a{0,20000}$", "pattern repeats 20000 times at $.properties.x; at most 1000"),
        ("^(a{0,30}){0,30}$", "pattern nests repetitions 900 times over at $.properties.x; at most 100"),
    ],
)
def test_a_pattern_that_repeats_too_much_is_refused(pattern: str, problem: str) -> None:
    assert problem in refusal(with_property(pattern=pattern))


@pytest.mark.parametrize(
    "pattern",
    [
        r"^([0-9]{1,3}\.){3}[0-9]{1,3}$",
        r"^\d{4}-\d{2}(-\d{2})?$",
        r"^([a-z0-9-]+\.)+[a-z]+$",
        r"^\{a{999}\}$",
    ],
)
def test_everyday_patterns_pass(pattern: str) -> None:
    schema_limits.check_schema(with_property(pattern=pattern), "response_format.json_schema")


def test_nesting_and_counts_have_openais_kind_of_limits() -> None:
    deep: dict[str, Any] = {"type": "integer"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"a": deep}}
    assert "33 levels of nesting" in refusal(deep)
    enum = {"type": "object", "properties": {"x": {"enum": list(range(1_001))}}}
    assert "more than 1000 enum values in all" in refusal(enum)
    wide = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(5_001)}}
    assert "more than 5000 properties in all" in refusal(wide)
    names = {"type": "object", "properties": {"x": {"enum": ["v" * 60_001, "w" * 60_000]}}}
    assert "over 120000 characters" in refusal(names)


def test_a_grammar_nested_too_deep_is_refused_whatever_wrote_it() -> None:
    nested = "root ::= " + "(" * 2_001 + '"a"' + ")?" * 2_001
    with pytest.raises(UnsupportedParameter, match="nests 2001 groups deep; at most 2000"):
        schema_limits.check_grammar(nested, "tools")
    # Parentheses inside strings and character classes are not groups.
    schema_limits.check_grammar('root ::= "' + "(" * 3_000 + '" [(]' * 3_000, "tools")


def test_a_chat_completion_past_a_bound_is_a_400_before_any_turn() -> None:
    answer = {"name": "x", "schema": with_property(maxLength=20_000)}
    body = {"messages": ASK, "response_format": {"type": "json_schema", "json_schema": answer}}
    with pytest.raises(UnsupportedParameter) as caught:
        chat_request(body)
    assert caught.value.parameter == "response_format.json_schema"
    assert caught.value.http_status == 400
    tool = {"type": "function", "function": {"name": "f", "parameters": with_property(maxItems=50_000)}}
    with pytest.raises(UnsupportedParameter) as caught:
        chat_request({"messages": ASK, "tools": [tool]})
    assert caught.value.parameter == "tools[0].function.parameters"


def test_where_the_grammar_is_built_a_format_is_refused_and_a_tools_grammar_loosened() -> None:
    """What never passed through a chat body is bounded where the grammar is built: a response
    format past a bound is refused; an MCP server's tool (not the caller's to fix) gets a grammar
    without the keyword, and the tool checks its arguments itself."""
    answer = GenerationRequest(messages=ASK, response_format=with_property(maxLength=20_000))
    with pytest.raises(UnsupportedParameter, match=r"^response_format: maxLength 20000 at \$\.properties\.x"):
        json_grammar(answer.response_format, answer)
    spec = ToolSpec(
        name="srv__lookup", description="", parameters=with_property(maxLength=20_000, minLength=2)
    )
    call = GenerationRequest(messages=ASK, tools=[spec], tool_choice="required")
    grammar = json_grammar(reply_schema([spec], "required", None, [], []), call)
    assert "char{0,20000}" not in grammar._grammar and "(char (char" not in grammar._grammar
    assert "char char" in grammar._grammar  # minLength 2 stays
