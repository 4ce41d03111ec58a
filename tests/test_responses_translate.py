"""The Responses API's translation to a chat completion and back (agent/responses_translate.py),
without a model: what each field becomes, what is refused by name, and the Response and its events
from a turn's result. tests/test_listener.py drives the same through the `openai` SDK."""

from __future__ import annotations

import json
from typing import Any

import pytest

from waystation import sse
from waystation.agent.api_openai_request import chat_request
from waystation.agent.daemon import _loopback
from waystation.agent.responses_translate import ResponseBuilder, chat_body
from waystation.errors import MalformedRequest, UnsupportedParameter
from waystation.receipts.chain import Usage
from waystation.station.turns.request import TurnResult

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def test_a_whole_request_becomes_the_chat_request() -> None:
    body = {
        "model": "local",
        "instructions": "Be terse.",
        "input": [
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "Weather "}, {"type": "input_text", "text": "?"}],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "rain"}],
            },
        ],
        "tools": [
            {
                "type": "function",
                "name": "w",
                "parameters": {"type": "object", "properties": {}},
                "strict": True,
            }
        ],
        "tool_choice": {"type": "function", "name": "w"},
        "text": {"format": {"type": "json_schema", "name": "x", "schema": SCHEMA, "strict": True}},
        "max_output_tokens": 7,
        "metadata": {"k": "v"},
        "top_p": 0.5,
    }
    chat = chat_body(body)
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool"]
    assert chat["messages"][1]["content"] == "Weather ?"
    assert [c["id"] for c in chat["messages"][2]["tool_calls"]] == ["c1", "c2"]  # one message
    assert chat["messages"][4]["content"] == "rain"
    request = chat_request(chat)  # the chat parser accepts what the translation made
    assert request.turn.max_tokens == 7
    assert request.turn.tool_choice == {"tool": "w"}
    assert request.turn.response_format == SCHEMA
    assert request.turn.top_p == 0.5  # (the Responses API has no penalties)
    assert chat_request(chat_body({"input": "hi"})).turn.messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
    ],
)
def test_what_cannot_be_done_is_refused_by_name(extra: dict[str, Any], named: str) -> None:
    with pytest.raises(UnsupportedParameter) as caught:
        chat_body({"input": "hi", **extra})
    assert caught.value.parameter == named


def test_malformed_input_is_400() -> None:
    for bad in (
        None,
        [],
        5,
        [{"role": "robot", "content": "x"}],
        [{"type": "function_call_output", "output": "x"}],
    ):
        with pytest.raises(MalformedRequest):
            chat_body({"input": bad})


def result(text: str = "", calls: list[dict[str, Any]] | None = None, finish: str = "stop") -> TurnResult:
    return TurnResult(
        "turn_1",
        text,
        "local",
        "r_1",
        "ok",
        tool_calls=calls or [],
        usage=Usage(3, 4),
        model="m",
        finish_reason=finish,
    )


def test_the_response_whole() -> None:
    answer = ResponseBuilder({"input": "hi", "max_output_tokens": 4}, "m").response(
        result("Paris", finish="length")
    )
    assert answer["object"] == "response" and answer["status"] == "incomplete"
    assert answer["incomplete_details"] == {"reason": "max_output_tokens"}
    (message,) = answer["output"]
    assert message["content"][0]["text"] == "Paris"
    assert answer["usage"]["total_tokens"] == 7
    call = {"id": "call_1", "tool": "w", "arguments": {"city": "Paris"}, "status": "client"}
    (item,) = ResponseBuilder({"input": "hi"}, "m").response(result(calls=[call]))["output"]
    assert item["type"] == "function_call" and item["call_id"] == "call_1"
    assert json.loads(item["arguments"]) == {"city": "Paris"}


def events(frames: bytes) -> list[dict[str, Any]]:
    parser = sse.SseParser()
    found = []
    for line in frames.decode().split("\n"):
        found += [e.json() for e in parser.feed(line)]
    return found


def test_the_stream_of_a_call_after_text() -> None:
    builder = ResponseBuilder({"input": "hi"}, "m")
    call = {"id": "call_1", "tool": "w", "arguments": {}, "status": "client"}
    frames = (
        builder.head() + builder.delta("Let ") + builder.delta("me see") + builder.ending(result("x", [call]))
    )
    kinds = [e["type"] for e in events(frames)]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-8:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events(frames)[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "Let me see"
    assert [e["sequence_number"] for e in events(frames)] == list(range(len(kinds)))


def test_a_stream_cut_off_by_max_output_tokens_ends_incomplete() -> None:
    builder = ResponseBuilder({"input": "hi", "max_output_tokens": 2}, "m")
    frames = builder.head() + builder.delta("Par") + builder.ending(result("Par", finish="length"))
    final = events(frames)[-1]
    assert final["type"] == "response.incomplete"  # was response.completed: the SDK took it as whole
    assert final["response"]["status"] == "incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_loopback_addresses() -> None:
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("192.168.1.2") and not _loopback("example.org")
