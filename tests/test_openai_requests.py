"""OpenAI parity, fast: how a Chat Completions body is read (tools, tool_choice, response_format,
refused parameters), how the engine runs a client's tools with the scripted model (calls returned,
never made or parked), and how calls are streamed. The real model and real clients are in
test_openai_tools.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from waystation.adapters.models.base import Generation, ToolCall, ToolSpec, parse_tool_reply, tool_call_schema
from waystation.adapters.models.reply_grammar import cut_answer
from waystation.adapters.models.scripted import ScriptedBackend
from waystation.adapters.routes import Router
from waystation.adapters.routes.local import LocalRoute
from waystation.adapters.tools import default_tools
from waystation.agent.api_openai import Completion
from waystation.agent.api_openai_request import chat_request
from waystation.config import ModelSettings, QueueSettings
from waystation.db import Database
from waystation.errors import EmptyPrompt, MalformedRequest, UnsupportedParameter
from waystation.queue.store import TaskStore
from waystation.receipts.chain import Usage
from waystation.station.ops import chat
from waystation.station.turns.calls import answered_calls, is_repeat
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.request import TurnRequest, TurnResult
from waystation.testing import FakeConnectivity, RecordingAnnouncer, ScriptedDelivery

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def body(**extra: Any) -> dict[str, Any]:
    return {"messages": ASK, **extra}  # no model: the ops layer picks it (test_openai_tools.py)


# --- reading the request ----------------------------------------------------------------------------


def test_tools_become_the_turns_client_tools() -> None:
    chat = chat_request(body(tools=[WEATHER]))
    function = WEATHER["function"]
    assert chat.turn.client_tools == [
        {"name": "get_weather", "description": function["description"], "parameters": function["parameters"]}
    ]
    assert chat.turn.tool_choice == "auto"
    forced = chat_request(
        body(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    )
    assert forced.turn.tool_choice == {"tool": "get_weather"}
    assert chat_request(body()).turn.tool_choice == "none"
    assert chat_request(body()).turn.client_tools == []


@pytest.mark.parametrize(
    ("tools", "named"),
    [
        ({"type": "function"}, "tools must be a list"),
        ([{"type": "function", "function": {"description": "no name"}}], "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "has space"}}], "tools[0].function.name"),
        ([{"type": "retrieval"}], "tools[0]"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": "x"}}],
            "tools[0].function.parameters",
        ),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], "parameters"),
        (
            [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"properties": {"a": {"type": "foo"}}}},
                }
            ],
            "tools[0].function.parameters.properties.a.type",
        ),
        ([WEATHER, WEATHER], "given twice"),
    ],
)
def test_malformed_tools_are_a_400_naming_them(tools: Any, named: str) -> None:
    with pytest.raises(MalformedRequest) as caught:
        chat_request(body(tools=tools))
    assert caught.value.http_status == 400 and named in caught.value.message


@pytest.mark.parametrize(
    ("choice", "tools"),
    [
        ("required", []),
        ({"type": "function", "function": {"name": "get_time"}}, [WEATHER]),
        ("sometimes", [WEATHER]),
    ],
)
def test_a_tool_choice_the_tools_cannot_meet_is_a_400(choice: Any, tools: Any) -> None:
    with pytest.raises(MalformedRequest, match="tool_choice"):
        chat_request(body(tools=tools, tool_choice=choice))


def test_n_above_one_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedParameter) as caught:
        chat_request(body(n=2))
    assert caught.value.parameter == "n" and caught.value.http_status == 400
    assert chat_request(body(n=1)).turn.max_tokens == 256


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_zero_is_a_400_as_openai_answers_it(name: str) -> None:
    """0 was read as "unset" and became 256 (issue 20, item 16)."""
    with pytest.raises(MalformedRequest, match=f"^{name} must be at least 1, not 0$"):
        chat_request(body(**{name: 0}))
    assert chat_request(body(**{name: 7})).turn.max_tokens == 7
    assert chat_request(body(max_completion_tokens=5, max_tokens=9)).turn.max_tokens == 5
    assert chat_request(body(max_completion_tokens=None, max_tokens=9)).turn.max_tokens == 9
    with pytest.raises(MalformedRequest, match="n must"):
        chat_request(body(n=0))


@pytest.mark.parametrize(
    "extra",
    [{"logprobs": True}, {"logit_bias": {"1": 5}}, {"functions": [{"name": "f"}]}],
)
def test_parameters_that_change_the_answer_are_refused(extra: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedParameter) as caught:
        chat_request(body(**extra))
    assert caught.value.parameter == next(iter(extra))


def test_harmless_parameters_are_accepted() -> None:
    chat = chat_request(
        body(user="u1", seed=3, top_p=0.9, store=False, stop=None, logprobs=False, parallel_tool_calls=False)
    )
    assert chat.turn.messages == ASK


def test_store_is_openais_keep_the_conversation_false_by_default() -> None:
    assert chat_request(body()).turn.store is False  # test_turn_storage.py: what a turn then keeps
    assert chat_request(body(store=True)).turn.store is True
    with pytest.raises(MalformedRequest, match="store must be true or false"):
        chat_request(body(store="yes"))


def test_stop_is_a_string_or_up_to_four() -> None:
    assert chat_request(body(stop="\n")).turn.stop == ["\n"]
    assert chat_request(body(stop=["Observation:", "END"])).turn.stop == ["Observation:", "END"]
    assert chat_request(body(stop=[])).turn.stop is None
    assert chat_request(body()).turn.stop is None
    with pytest.raises(MalformedRequest, match=r"^stop takes at most 4 sequences, not 5$"):
        chat_request(body(stop=["a", "b", "c", "d", "e"]))
    for bad in ("", [""], [1], {"a": 1}, ["a", None]):
        with pytest.raises(MalformedRequest, match=r"^stop must be"):
            chat_request(body(stop=bad))


def test_response_formats_become_a_schema() -> None:
    assert chat_request(body(response_format={"type": "text"})).turn.response_format is None
    assert chat_request(body(response_format={"type": "json_object"})).turn.response_format == {
        "type": "object"
    }
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    spec = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    assert chat_request(body(response_format=spec)).turn.response_format == schema
    for bad in (
        {"type": "yaml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "x"}},
    ):
        with pytest.raises(MalformedRequest, match="response_format"):
            chat_request(body(response_format=bad))


def test_the_clients_tool_calls_and_results_are_accepted() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "Sunny"}]},
    ]
    chat = chat_request(body(messages=messages))
    assert chat.turn.messages == [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "Sunny", "tool_call_id": "call_1"},
    ]
    for bad in (
        {"role": "tool", "content": "x"},  # no tool_call_id
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
        {"role": "user", "content": None},
        {"role": "wizard", "content": "x"},
    ):
        with pytest.raises(MalformedRequest, match="messages"):
            chat_request(body(messages=[*ASK, bad]))


# --- the grammar's schema and the reply -------------------------------------------------------------


def test_an_answer_format_is_held_inside_the_tool_schema() -> None:
    spec = ToolSpec("f", "F.", {"type": "object", "properties": {}})
    schema = tool_call_schema([spec], "auto", {"type": "object"})
    assert schema["anyOf"][1]["properties"]["answer"] == {"type": "object"}
    assert parse_tool_reply('{"answer": {"a": 1}}', "c", json_answer=True) == ('{"a": 1}', [])
    assert parse_tool_reply('{"answer": "hi"}', "c", json_answer=True) == ('"hi"', [])
    assert parse_tool_reply('{"answer": "hi"}', "c") == ("hi", [])
    assert cut_answer('{"answer": {"a": "x', json_answer=True) == ('{"a": "x', "length")


# --- the engine with the client's tools -------------------------------------------------------------


def engine(db: Database, backend: ScriptedBackend, model_file: Path) -> TurnEngine:
    local = LocalRoute(ModelSettings(path=str(model_file)), {str(model_file): backend})
    router = Router(local, "local", env={})
    connectivity = FakeConnectivity(state="online")
    deliver = ScriptedDelivery()
    store = TaskStore(db, QueueSettings())
    return TurnEngine(db, store, default_tools(), connectivity, deliver, router.resolve, RecordingAnnouncer())


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "scripted.gguf"
    path.write_bytes(b"GGUF")
    return path


async def test_client_tool_calls_come_back_uncalled(db: Database, model_file: Path) -> None:
    backend = ScriptedBackend([ToolCall("call_9", "get_weather", {"city": "Paris"})])
    chat = chat_request(body(tools=[WEATHER], response_format={"type": "json_object"}))
    result = await engine(db, backend, model_file).run(chat.turn)

    (asked,) = backend.requests
    assert [t.name for t in asked.tools] == ["get_weather"], "the client's tools, not ours"
    assert asked.tool_choice == "auto" and asked.response_format == {"type": "object"}
    assert result.status == "ok" and result.finish_reason == "tool_calls"
    assert result.tool_calls == [
        {"id": "call_9", "tool": "get_weather", "arguments": {"city": "Paris"}, "status": "client"}
    ]
    assert result.model == "scripted.gguf"
    assert await db.fetchall("SELECT id FROM tasks") == [], "nothing parked: the client runs it"
    (receipt,) = await db.fetchall("SELECT body FROM receipts WHERE turn_id = ?", (result.turn_id,))
    assert json.loads(receipt["body"])["status"] == "ok"


async def test_forced_function_offers_only_that_one(db: Database, model_file: Path) -> None:
    other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    backend = ScriptedBackend([ToolCall("c", "get_time", {})])
    choice = {"type": "function", "function": {"name": "get_time"}}
    await engine(db, backend, model_file).run(
        chat_request(body(tools=[WEATHER, other], tool_choice=choice)).turn
    )
    (asked,) = backend.requests
    assert [t.name for t in asked.tools] == ["get_time"] and asked.tool_choice == "required"


async def test_a_conversation_ending_in_tool_results_is_answered(db: Database, model_file: Path) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
    ]
    backend = ScriptedBackend([Generation("It is sunny.", completion_tokens=4, finish_reason="stop")])
    result = await engine(db, backend, model_file).run(chat_request(body(messages=messages)).turn)
    assert result.text == "It is sunny." and result.tool_calls == []
    assert backend.requests[0].messages[-1] == {"role": "tool", "content": "Sunny", "tool_call_id": "call_1"}
    # Our own turns still need the user to have said something.
    with pytest.raises(EmptyPrompt):
        await engine(db, ScriptedBackend([]), model_file).run(TurnRequest(prompt="", messages=messages))


WEATHER_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},  # as a client sends it
}
ANSWERED = [
    *ASK,
    {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees"},
]


def test_answered_calls_are_those_a_later_tool_message_answers() -> None:
    unanswered = {**WEATHER_CALL, "id": "call_2", "function": {"name": "get_time", "arguments": ""}}
    messages = [
        {"role": "tool", "tool_call_id": "call_2", "content": "before the call: answers nothing"},
        *ANSWERED,
        {"role": "assistant", "content": None, "tool_calls": [unanswered]},
    ]
    answered = answered_calls(messages)
    assert is_repeat(ToolCall("c", "get_weather", {"city": "Paris"}), answered), "compared as JSON"
    assert not is_repeat(ToolCall("c", "get_weather", {"city": "Rome"}), answered)
    assert not is_repeat(ToolCall("c", "get_time", {}), answered), "its result never came"
    later = [*messages, {"role": "tool", "tool_call_id": "call_2", "content": "noon"}]
    assert is_repeat(ToolCall("c", "get_time", {}), answered_calls(later)), '"" is no arguments'


@pytest.mark.parametrize(
    "choice", ["auto", "required", {"type": "function", "function": {"name": "get_weather"}}]
)
async def test_a_repeated_call_is_answered_from_its_result_instead(
    db: Database, model_file: Path, choice: Any
) -> None:
    backend = ScriptedBackend(
        [
            ToolCall("call_2", "get_weather", {"city": "Paris"}),
            Generation("Sunny in Paris.", finish_reason="stop"),
        ]
    )
    chat = chat_request(body(messages=ANSWERED, tools=[WEATHER], tool_choice=choice))
    tokens: list[str] = []
    result = await engine(db, backend, model_file).run(chat.turn, tokens.append)

    assert result.text == "Sunny in Paris." == "".join(tokens) and result.tool_calls == []
    assert result.finish_reason == "stop"
    first, again = backend.requests
    assert [t.name for t in first.tools] == ["get_weather"]
    assert again.tools == () and again.tool_choice == "none", "an answer from the results, even when forced"
    (receipt,) = await db.fetchall("SELECT body FROM receipts WHERE turn_id = ?", (result.turn_id,))
    assert json.loads(receipt["body"])["reason"].startswith("answered from the results")


async def test_of_several_calls_only_the_repeated_ones_are_dropped(db: Database, model_file: Path) -> None:
    calls = [
        ToolCall("call_2", "get_weather", {"city": "Paris"}),
        ToolCall("call_3", "get_weather", {"city": "Rome"}),
    ]
    backend = ScriptedBackend([Generation("", tool_calls=calls, finish_reason="tool_calls")])
    result = await engine(db, backend, model_file).run(
        chat_request(body(messages=ANSWERED, tools=[WEATHER])).turn
    )
    assert result.tool_calls == [
        {"id": "call_3", "tool": "get_weather", "arguments": {"city": "Rome"}, "status": "client"}
    ]
    assert len(backend.requests) == 1


async def test_a_new_call_after_results_still_goes_to_the_client(db: Database, model_file: Path) -> None:
    backend = ScriptedBackend([ToolCall("call_2", "get_weather", {"city": "Rome"})])
    result = await engine(db, backend, model_file).run(
        chat_request(body(messages=ANSWERED, tools=[WEATHER])).turn
    )
    assert [c["arguments"] for c in result.tool_calls] == [{"city": "Rome"}]


def test_seed_is_an_integer_or_a_400() -> None:
    assert chat_request(body(seed=7)).turn.seed == 7
    assert chat_request(body()).turn.seed is None
    for bad in ("7", 1.5, True, [7]):
        with pytest.raises(MalformedRequest, match=r"^seed must be an integer$"):
            chat_request(body(seed=bad))


async def test_seed_reaches_the_model(db: Database, model_file: Path) -> None:
    backend = ScriptedBackend([Generation("Paris.")])
    await engine(db, backend, model_file).run(chat_request(body(seed=42, temperature=0.9)).turn)
    assert (backend.requests[0].seed, backend.requests[0].temperature) == (42, 0.9)


SAMPLING_RANGES = {
    "top_p": "a number greater than 0 and at most 1",
    "frequency_penalty": "a number between -2 and 2",
    "presence_penalty": "a number between -2 and 2",
}


@pytest.mark.parametrize("name", SAMPLING_RANGES)
def test_top_p_and_the_penalties_are_in_openais_ranges_or_a_400(name: str) -> None:
    low, high = (0.01, 1) if name == "top_p" else (-2, 2)
    for value in (low, high, 0.5):
        assert getattr(chat_request(body(**{name: value})).turn, name) == value
    asked_for_nothing = chat_request(body(**{name: None})).turn
    assert getattr(asked_for_nothing, name) == (None if name == "top_p" else 0.0)
    outside = [0, -0.1, 1.01] if name == "top_p" else [-2.01, 2.5, -100]
    for bad in [*outside, "0.5", True, [0.5], {"v": 1}, float("nan"), float("inf")]:
        with pytest.raises(MalformedRequest, match=rf"^{name} must be {SAMPLING_RANGES[name]}$"):
            chat_request(body(**{name: bad}))


async def test_top_p_and_the_penalties_reach_the_model(db: Database, model_file: Path) -> None:
    backend = ScriptedBackend([Generation("Paris."), Generation("Rome.")])
    asked = body(top_p=0.5, frequency_penalty=1.5, presence_penalty=-0.5, temperature=0.7)
    await engine(db, backend, model_file).run(chat_request(asked).turn)
    await engine(db, backend, model_file).run(chat_request(body()).turn)
    sampling = [(r.top_p, r.frequency_penalty, r.presence_penalty) for r in backend.requests]
    assert sampling == [(0.5, 1.5, -0.5), (None, 0.0, 0.0)]


async def test_stop_reaches_the_model_and_ends_the_answer(db: Database, model_file: Path) -> None:
    backend = ScriptedBackend([Generation("Paris. Then more words.", finish_reason="length")])
    tokens: list[str] = []
    result = await engine(db, backend, model_file).run(chat_request(body(stop=".")).turn, tokens.append)
    assert backend.requests[0].stop == (".",)
    assert result.text == "Paris" == "".join(tokens) and result.finish_reason == "stop"


# --- streaming the calls ----------------------------------------------------------------------------


def test_calls_stream_as_openai_streams_them() -> None:
    call = {"id": "call_1", "tool": "get_weather", "arguments": {"city": "Paris"}, "status": "client"}
    result = TurnResult("turn_1", "", "local", "r_1", "ok", tool_calls=[call], usage=Usage(5, 3))
    frames = Completion("chatcmpl-1", 1, "m.gguf").ending(result).decode().split("\n\n")
    chunks = [json.loads(f.removeprefix("data: ")) for f in frames if f]
    first, arguments, last = (c["choices"][0] for c in chunks)
    assert first["delta"]["tool_calls"] == [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    ]
    assert arguments["delta"]["tool_calls"] == [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]
    assert last["finish_reason"] == "tool_calls" and last["delta"] == {}
    assert {c["model"] for c in chunks} == {"m.gguf"}


# --- which model runs, and what the route cannot honour ---------------------------------------------


def station_on(default_route: str, model_file: Path, backends: dict[str, Any]) -> Any:
    local = LocalRoute(ModelSettings(path=str(model_file)), backends)
    return SimpleNamespace(router=Router(local, default_route, env={}))


async def test_the_request_model_picks_a_local_model_only_when_the_route_knows_it(
    tmp_path: Path, model_file: Path
) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    backends: dict[str, Any] = {str(model_file): ScriptedBackend([]), str(other): ScriptedBackend([])}
    station = station_on("local", model_file, backends)
    assert await chat.model_for(station, str(other)) == (str(other), "other.gguf")
    for name in ("gpt-4o", "default", None):
        assert await chat.model_for(station, name) == (None, "scripted.gguf")
    # On another default route the request's model names nothing of ours.
    assert (await chat.model_for(station_on("openai", model_file, backends), str(other)))[0] is None


def test_response_format_off_the_local_route_is_refused(model_file: Path) -> None:
    turn = chat_request(body(response_format={"type": "json_object"})).turn
    chat.check(station_on("local", model_file, {}), turn)
    with pytest.raises(UnsupportedParameter) as caught:
        chat.check(station_on("openai", model_file, {}), turn)
    assert caught.value.parameter == "response_format"
