"""OpenAI parity with real clients: the official `openai` SDK and langchain-openai's ChatOpenAI,
against a real agent running the packaged SmolLM2 GGUF on llama.cpp.

The client's tools come back as `tool_calls` for the client to run (plain and streamed as OpenAI
streams them), the client's results lead to an answer, `tool_choice` is obeyed, `response_format`
constrains the answer to JSON (an object, or one matching a schema), what cannot be honoured is a
400 naming it, and `model` is the model that ran. Every completion writes its turn receipt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel
from support.inproc import InProcessAgent, inprocess_agent

from waystation.adapters.models.embedded import default_model_path

MAX_TOKENS = 48
WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current time in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def agent() -> Iterator[InProcessAgent]:
    with inprocess_agent({"WAYSTATION_CONNECTIVITY__MODE": "offline"}) as a:
        yield a


@pytest.fixture(scope="module")
def http_client(agent: InProcessAgent) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(agent.socket)), timeout=120.0) as c:
        yield c


@pytest.fixture(scope="module")
def client(http_client: httpx.Client) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url="http://waystation/v1", api_key="unused", http_client=http_client, max_retries=0
    ) as c:
        yield c


@pytest.fixture(scope="module")
def chat_model(http_client: httpx.Client) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o",
        base_url="http://waystation/v1",
        api_key="unused",  # type: ignore[arg-type]
        http_client=http_client,
        max_retries=0,
        temperature=0,
        max_completion_tokens=MAX_TOKENS,
    )


def turn_receipts(agent: InProcessAgent) -> list[dict[str, Any]]:
    response = agent.api("GET", "/v1/receipts", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [r for r in response.json() if r["kind"] == "turn"]


def model_file() -> str:
    return default_model_path().name


# --- the official SDK ---------------------------------------------------------------------------


def test_tools_come_back_as_tool_calls_and_the_result_leads_to_an_answer(
    client: openai.OpenAI, agent: InProcessAgent
) -> None:
    before = len(turn_receipts(agent))
    completion = client.chat.completions.create(
        model="gpt-4o", messages=ASK, tools=[WEATHER, TIME], max_tokens=MAX_TOKENS
    )
    assert completion.model == model_file(), "the model that ran, not the request's echo"
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.usage is not None and completion.usage.completion_tokens > 0

    # The client runs the call and sends the result back, as with OpenAI.
    messages: list[ChatCompletionMessageParam] = [
        *ASK,
        choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees Celsius"},
    ]
    answer = client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=MAX_TOKENS)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.tool_calls is None
    assert "21" in (answer.choices[0].message.content or "")  # from the result: "Sunny, 21 degrees"

    receipts = turn_receipts(agent)
    assert len(receipts) == before + 2, "a receipt for each completion"
    assert all(r["status"] == "ok" for r in receipts[before:])


CONVERT: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "convert_currency",
        "description": "Convert an amount of money from one currency to another.",
        "parameters": {
            "type": "object",
            "properties": {"amount": {"type": "number"}, "to": {"type": "string"}},
            "required": ["amount", "to"],
        },
    },
}
# Each question with the one function that answers it, and what running it gave.
ROUND_TRIPS = [
    ("What is the weather in Paris?", WEATHER, "Sunny, 21 degrees Celsius"),
    ("What time is it in Tokyo?", TIME, "14:05"),
    ("How much is 10 dollars in euros?", CONVERT, "9.20 EUR"),
]
REQUEST_LIMIT = 4  # an agent's request limit (pydantic-ai's and LangGraph's are higher)


@pytest.mark.timeout(300)  # up to a dozen generations on a CPU shared with other tests
def test_a_tool_result_sent_back_with_the_tools_still_offered_leads_to_an_answer(
    client: openai.OpenAI, agent: InProcessAgent
) -> None:
    """As agent frameworks loop: every request offers the tools (the first demands a call, so
    that each question makes one); the client runs each call it gets and sends the result back,
    until an answer. A call is never asked for twice (SmolLM2 asked for it again every time)."""
    requests_per_answer = {}
    for question, function, result in ROUND_TRIPS:
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": question}]
        calls: list[tuple[str, Any]] = []
        requests = 0
        while requests < REQUEST_LIMIT:
            requests += 1
            completion = client.chat.completions.create(
                model="gpt-4o",
                messages=messages,
                tools=[function],
                tool_choice="required" if requests == 1 else "auto",
                max_tokens=MAX_TOKENS,
            )
            message = completion.choices[0].message
            if not message.tool_calls:
                break
            for call in message.tool_calls:
                asked = (call.function.name, json.loads(call.function.arguments))
                assert asked not in calls, f"{question}: {asked} asked for again after its result"
                calls.append(asked)
            messages.append(message.model_dump(exclude_none=True))  # type: ignore[arg-type]
            messages += [
                {"role": "tool", "tool_call_id": c.id, "content": result} for c in message.tool_calls
            ]
        assert not message.tool_calls, f"{question}: no answer in {REQUEST_LIMIT} requests: {calls}"
        assert (message.content or "").strip() and completion.choices[0].finish_reason in ("stop", "length")
        requests_per_answer[question] = requests
    assert all(n >= 2 for n in requests_per_answer.values()), requests_per_answer


def test_a_tool_call_is_never_cut_by_stop_strings(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o", messages=ASK, tools=[WEATHER], stop=["Paris", "{", '"'], max_tokens=MAX_TOKENS
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {"city": "Paris"}, "stop is for the answer's text"


def test_tool_calls_stream_as_openai_streams_them(client: openai.OpenAI, agent: InProcessAgent) -> None:
    before = len(turn_receipts(agent))
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=ASK,
            tools=[WEATHER],
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1
    assert {c.model for c in chunks} == {model_file()}
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    first = deltas[0]
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function is not None and first.function.name == "get_weather"
    arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "Paris"}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and not any(finishes[:-1])
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None and usage.completion_tokens > 0
    assert len(turn_receipts(agent)) == before + 1


def test_tool_choice_none_gives_text(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=16
    )
    choice = completion.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert (choice.message.content or "").strip()


def test_a_forced_function_is_the_one_called(client: openai.OpenAI) -> None:
    for name in ("get_time", "get_weather"):
        completion = client.chat.completions.create(
            model="gpt-4o",
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": name}},
            max_tokens=MAX_TOKENS,
        )
        (call,) = completion.choices[0].message.tool_calls or []
        assert call.function.name == name
        assert isinstance(json.loads(call.function.arguments), dict)


def test_required_makes_a_call(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Hello there."}],
        tools=[TIME],
        tool_choice="required",
        max_tokens=MAX_TOKENS,
    )
    assert completion.choices[0].finish_reason == "tool_calls"


def test_json_object_answers_parse(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Give me a person with a name and an age."}],
        response_format={"type": "json_object"},
        max_tokens=MAX_TOKENS,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


class Colors(BaseModel):
    colors: list[str]


def test_a_parsed_list_ends_without_repeating_an_item(client: openai.OpenAI) -> None:
    """SmolLM2 lists five colours, then cycles through them until max_tokens (and `parse` raises
    LengthFinishReasonError): the first repeat closes the list instead."""
    ask: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name some colors."}]
    completion = client.chat.completions.parse(
        model="gpt-4o", messages=ask, response_format=Colors, max_tokens=64
    )
    colors = completion.choices[0].message.parsed
    assert colors is not None and len(colors.colors) >= 2
    assert len(set(colors.colors)) == len(colors.colors), colors
    # Streamed, what went out is the same JSON: a repeat is cut before it is sent.
    with client.chat.completions.stream(
        model="gpt-4o", messages=ask, response_format=Colors, max_tokens=64
    ) as stream:
        streamed = "".join(e.delta for e in stream if e.type == "content.delta")
    assert Colors.model_validate_json(streamed) == colors


def test_json_schema_answers_match_it(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Invent a person."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON, "strict": True},
            },
            max_tokens=MAX_TOKENS,
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    person = json.loads(text)
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


def test_n_above_one_is_a_400_naming_n(client: openai.OpenAI, agent: InProcessAgent) -> None:
    before = len(turn_receipts(agent))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=ASK, n=2, max_tokens=MAX_TOKENS)
    assert caught.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
    assert caught.value.body["details"]["parameter"] == "n"  # type: ignore[index]
    assert caught.value.body["message"].startswith("n:")  # type: ignore[index]
    assert len(turn_receipts(agent)) == before, "refused before any turn ran"
    assert client.chat.completions.create(model="gpt-4o", messages=ASK, n=1, max_tokens=4).choices


@pytest.mark.parametrize(
    ("tools", "named"),
    [
        ({"type": "function", "function": {"name": "f"}}, "tools must be a list"),
        ([{"type": "function", "function": {"description": "nameless"}}], "tools[0].function.name"),
        (
            [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object", "properties": 3}},
                }
            ],
            "tools[0].function.parameters.properties",
        ),
    ],
)
def test_malformed_tools_are_a_400(client: openai.OpenAI, tools: Any, named: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=ASK, tools=tools, max_tokens=MAX_TOKENS)
    assert named in caught.value.body["message"]  # type: ignore[index]


def test_a_schema_the_grammar_cannot_express_is_a_400_naming_it(
    client: openai.OpenAI, agent: InProcessAgent
) -> None:
    unanchored = {"type": "string", "pattern": "[a-z]+"}  # llama.cpp's converter wants ^...$
    tools: list[ChatCompletionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"code": unanchored}, "required": ["code"]},
            },
        }
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=ASK, tools=tools, max_tokens=MAX_TOKENS)
    assert caught.value.body["details"]["parameter"] == "tools: function 'lookup' parameters"  # type: ignore[index]
    assert "Pattern" in caught.value.body["message"]  # type: ignore[index]
    # Streamed: still a 400 before any chunk, not an error inside a stream that began.
    schema = {"type": "object", "properties": {"code": unanchored}, "required": ["code"]}
    assert refused_format(client, schema, stream=True)["details"]["parameter"] == "response_format"
    assert agent.api("GET", "/v1/status").status_code == 200


def refused_format(client: openai.OpenAI, schema: dict[str, Any], **extra: Any) -> Any:
    """The 400's body for an answer held to `schema`."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt-4o",
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
            max_tokens=MAX_TOKENS,
            **extra,
        )
    return caught.value.body


def test_a_schema_past_what_the_grammar_enforces_is_a_400_and_the_agent_lives(
    client: openai.OpenAI, agent: InProcessAgent
) -> None:
    """maxLength 20,000 made llama.cpp's grammar parser overflow its stack: SIGSEGV, the agent
    gone; 1,500 made it refuse the grammar and answer with none (issue 20, item 8)."""
    for length in (20_000, 1_500):
        schema = {"type": "object", "properties": {"x": {"type": "string", "maxLength": length}}}
        body = refused_format(client, schema)
        assert body["details"]["parameter"] == "response_format.json_schema"
        assert f"maxLength {length} at $.properties.x exceeds 1000" in body["message"]
    assert agent.running()
    assert agent.api("GET", "/v1/status").status_code == 200


# --- langchain-openai ---------------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny in {city}, 21 degrees Celsius"


def test_langchain_bind_tools_round_trip(chat_model: ChatOpenAI) -> None:
    with_tools = chat_model.bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    reply = with_tools.invoke([question])
    assert isinstance(reply, AIMessage)
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"} and call["id"]
    assert reply.response_metadata["model_name"] == model_file()
    assert reply.response_metadata["finish_reason"] == "tool_calls"

    result = get_weather.invoke(call["args"])
    final = chat_model.invoke([question, reply, ToolMessage(result, tool_call_id=call["id"])])
    assert not getattr(final, "tool_calls", None)
    assert "21" in str(final.content)  # from the result: "Sunny in Paris, 21 degrees"


def test_langchain_agent_loop_with_one_tool_ends_within_its_limit(chat_model: ChatOpenAI) -> None:
    """An agent's loop as LangGraph's prebuilt agent runs it: the tools bound on every request,
    each call run and its result sent back, until the model answers."""
    with_tools = chat_model.bind_tools([get_weather])
    messages: list[BaseMessage] = [HumanMessage("What is the weather in Rome?")]
    for _ in range(REQUEST_LIMIT):
        reply = with_tools.invoke(messages)
        messages.append(reply)
        if not isinstance(reply, AIMessage) or not reply.tool_calls:
            break
        messages += [
            ToolMessage(get_weather.invoke(c["args"]), tool_call_id=c["id"]) for c in reply.tool_calls
        ]
    calls = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    assert [c["args"] for c in calls] == [{"city": "Rome"}]
    assert isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls
    assert str(messages[-1].content).strip()


def test_langchain_streams_tool_calls(chat_model: ChatOpenAI) -> None:
    with_tools = chat_model.bind_tools([get_weather], tool_choice="get_weather")
    merged: AIMessageChunk | None = None
    for piece in with_tools.stream("Weather in Rome?"):
        assert isinstance(piece, AIMessageChunk)
        merged = piece if merged is None else merged + piece
    assert merged is not None
    (call,) = merged.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) == {"city"}


class Person(BaseModel):
    name: str
    age: int


def test_langchain_structured_output_with_json_schema(chat_model: ChatOpenAI) -> None:
    person = chat_model.with_structured_output(Person, method="json_schema").invoke("Invent a person.")
    assert isinstance(person, Person) and person.name
