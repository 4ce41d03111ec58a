"""The OpenAI-compatible endpoint, driven by the official `openai` client over the agent's socket.

One real agent (real llama.cpp, the packaged model) serves the module. Each call, plain or
streaming, must look like OpenAI's Chat Completions to the client and write a turn receipt.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import (
    ChatCompletionContentPartParam,
    ChatCompletionContentPartTextParam,
    ChatCompletionMessageParam,
)
from support.inproc import InProcessAgent, inprocess_agent

from waystation.adapters.models.embedded import default_model_path

MAX_TOKENS = 16


@pytest.fixture(scope="module")
def agent() -> Iterator[InProcessAgent]:
    with inprocess_agent({"WAYSTATION_CONNECTIVITY__MODE": "offline"}) as a:
        yield a


@pytest.fixture(scope="module")
def client(agent: InProcessAgent) -> Iterator[openai.OpenAI]:
    http_client = httpx.Client(transport=httpx.HTTPTransport(uds=str(agent.socket)), timeout=120.0)
    with openai.OpenAI(
        base_url="http://waystation/v1", api_key="unused", http_client=http_client, max_retries=0
    ) as c:
        yield c
    http_client.close()


def turn_receipts(agent: InProcessAgent) -> list[dict[str, Any]]:
    response = agent.api("GET", "/v1/receipts", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [r for r in response.json() if r["kind"] == "turn"]


def test_plain_completion_has_content_and_usage(client: openai.OpenAI, agent: InProcessAgent) -> None:
    before = turn_receipts(agent)
    completion = client.chat.completions.create(
        model="local",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=MAX_TOKENS,
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == default_model_path().name  # the model that ran, not "local"
    (choice,) = completion.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.message.tool_calls is None  # no tools of ours on this endpoint, nor the client's
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    after = turn_receipts(agent)
    assert len(after) == len(before) + 1
    receipt = after[-1]
    assert receipt["status"] == "ok"
    assert receipt["route"]["name"] == "local" and receipt["route"]["auth_lane"] == "none"
    assert receipt["route"]["cost_lane"] == "local" and receipt["credits_used"] == 0
    assert receipt["usage"] == {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
    }
    extra = completion.model_extra or {}
    assert extra["waystation"]["receipt_id"] == receipt["id"]
    assert extra["waystation"]["turn_id"] == receipt["turn_id"]


def test_streaming_deltas_join_into_the_text(client: openai.OpenAI, agent: InProcessAgent) -> None:
    before = turn_receipts(agent)
    stream = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Write one short sentence about the sea."}],
        max_tokens=MAX_TOKENS,
        stream=True,
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip()
    content_chunks = [c for c in chunks if c.choices[0].delta.content]
    assert 1 < len(content_chunks) <= MAX_TOKENS, "streamed piece by piece"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])

    after = turn_receipts(agent)
    assert len(after) == len(before) + 1
    receipt = after[-1]
    assert receipt["status"] == "ok" and receipt["credits_used"] == 0
    assert receipt["usage"]["completion_tokens"] >= len(content_chunks)


def test_a_conversation_with_history(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="waystation-local",
        messages=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": "What is my name?"},
        ],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    assert completion.choices[0].message.content


def test_bad_requests_are_openai_style_errors(client: openai.OpenAI, agent: InProcessAgent) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="local", messages=[], max_tokens=MAX_TOKENS)
    assert caught.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "  "}], max_tokens=MAX_TOKENS
        )
    assert caught.value.body["code"] == "empty_prompt"  # type: ignore[index]
    # Still serving.
    assert agent.api("GET", "/v1/status").status_code == 200


def test_receipts_verify(agent: InProcessAgent) -> None:
    verification = agent.api("GET", "/v1/receipts/verify").json()
    assert verification["ok"] is True, verification
    assert verification["count"] >= 3


def test_content_parts_are_joined_into_the_prompt(client: openai.OpenAI, agent: InProcessAgent) -> None:
    """OpenAI's list-of-parts content: the text parts, joined, are what the turn runs on."""
    question: list[ChatCompletionContentPartTextParam] = [
        {"type": "text", "text": "What is the capital "},
        {"type": "text", "text": "of Italy?"},
    ]
    as_parts = client.chat.completions.create(
        model="local",
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
            {"role": "user", "content": question},
        ],
        max_tokens=MAX_TOKENS,
        store=True,  # kept, to be read below (OpenAI's default, false, keeps no conversation)
    )
    assert as_parts.choices[0].message.content and as_parts.choices[0].message.content.strip()
    extra = (as_parts.model_extra or {})["waystation"]
    with contextlib.closing(sqlite3.connect(f"file:{agent.database}?mode=ro", uri=True)) as db:
        (kept,) = db.execute("SELECT messages FROM turns WHERE id = ?", (extra["turn_id"],)).fetchone()
    assert json.loads(kept)[:2] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of Italy?"},
    ]
    # The same conversation as plain strings is the same prompt, token for token.
    as_string = client.chat.completions.create(
        model="local",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of Italy?"},
        ],
        max_tokens=MAX_TOKENS,
    )
    assert as_parts.usage is not None and as_string.usage is not None
    assert as_parts.usage.prompt_tokens == as_string.usage.prompt_tokens > 0
    (receipt,) = [r for r in turn_receipts(agent) if r["id"] == extra["receipt_id"]]
    assert receipt["status"] == "ok"
    assert receipt["usage"]["prompt_tokens"] == as_parts.usage.prompt_tokens


def test_content_parts_without_text_are_an_empty_prompt(client: openai.OpenAI) -> None:
    image_only: list[ChatCompletionContentPartParam] = [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": image_only}],
            max_tokens=MAX_TOKENS,
        )
    assert caught.value.body["code"] == "empty_prompt"  # type: ignore[index]


def test_streamed_content_parts(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
        max_tokens=MAX_TOKENS,
        stream=True,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


OUT_OF_RANGE = [
    ("temperature", 5),
    ("temperature", -0.5),
    ("temperature", 2.01),
    ("top_p", 0),
    ("frequency_penalty", 2.5),
    ("presence_penalty", -3),
]


@pytest.mark.parametrize(("name", "value"), OUT_OF_RANGE)
def test_sampling_out_of_range_is_a_400(
    client: openai.OpenAI, agent: InProcessAgent, name: str, value: float
) -> None:
    before = len(turn_receipts(agent))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=MAX_TOKENS,
            extra_body={name: value},
        )
    assert caught.value.status_code == 400
    assert caught.value.body["code"] == "malformed_request"  # type: ignore[index]
    assert caught.value.body["message"].startswith(f"{name} must be a number")  # type: ignore[index]
    assert len(turn_receipts(agent)) == before  # refused before any turn ran
    assert agent.api("GET", "/v1/status").status_code == 200


def test_temperature_in_range_is_accepted(client: openai.OpenAI) -> None:
    for temperature in (0, 0.8, 2):
        completion = client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "Name a fruit."}],
            max_tokens=4,
            temperature=temperature,
        )
        # OpenAI's finish reasons: "length" when max_tokens ended the answer.
        assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 4
        expected = "length" if completion.usage.completion_tokens == 4 else "stop"
        assert completion.choices[0].finish_reason == expected


# --- stop --------------------------------------------------------------------------------------------

COUNT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Count from 1 to 10, separated by commas."}
]  # SmolLM2 writes "1, 2, 3, 4, 5, ..."


def test_stop_ends_the_answer_before_the_first_stop_string(client: openai.OpenAI) -> None:
    for stop, before in (("4", "1, 2, 3"), (["7", "3, 4"], "1, 2")):
        completion = client.chat.completions.create(
            model="local", messages=COUNT, max_tokens=MAX_TOKENS, stop=stop
        )
        (choice,) = completion.choices
        assert choice.finish_reason == "stop"
        assert (choice.message.content or "").rstrip(", ") == before, stop


def test_a_streamed_answer_never_shows_a_stop_string_spanning_pieces(client: openai.OpenAI) -> None:
    # "3, 4" is four pieces ("3", ",", " ", "4"): the "3" is held back until it is known to begin it.
    chunks = list(
        client.chat.completions.create(
            model="local", messages=COUNT, max_tokens=MAX_TOKENS, stop=["3, 4"], stream=True
        )
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces).rstrip(", ") == "1, 2" and not any("3" in p for p in pieces)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_more_than_four_stop_strings_is_a_400_naming_stop(
    client: openai.OpenAI, agent: InProcessAgent
) -> None:
    before = len(turn_receipts(agent))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="local", messages=COUNT, max_tokens=MAX_TOKENS, stop=["a", "b", "c", "d", "e"]
        )
    assert caught.value.body["message"] == "stop takes at most 4 sequences, not 5"  # type: ignore[index]
    assert len(turn_receipts(agent)) == before, "refused before any turn ran"


NUMBERS = "Write the numbers from 1 to 3000 separated by commas: 1, 2, 3, 4,"
GOING_AWAY = {
    "whole": ("chat/completions", {"messages": [{"role": "user", "content": NUMBERS}], "max_tokens": 2000}),
    "streamed": (
        "chat/completions",
        {"messages": [{"role": "user", "content": NUMBERS}], "max_tokens": 2000, "stream": True},
    ),
    "response": ("responses", {"input": NUMBERS, "max_output_tokens": 2000}),
}


@pytest.mark.parametrize("kind", GOING_AWAY)
def test_a_caller_that_goes_away_stops_its_completion(agent: InProcessAgent, kind: str) -> None:
    """A chat completion (or a Response) belongs to its caller: one whose client closes the
    connection stops (an interrupted receipt) instead of holding the model for its 2,000 tokens,
    answered whole or streamed, as llama-server and Ollama stop on a disconnect."""
    before = {r["id"] for r in turn_receipts(agent)}
    path, body = GOING_AWAY[kind]
    url = f"http://waystation/v1/{path}"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(agent.socket)), timeout=1.0) as http:
        if body.get("stream"):
            with http.stream("POST", url, json={"model": "local", **body}) as response:
                next(response.iter_lines())  # the first chunk, then the client goes
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post(url, json={"model": "local", **body})
    deadline = time.monotonic() + 10
    while not (ended := [r for r in turn_receipts(agent) if r["id"] not in before]):
        assert time.monotonic() < deadline, "the completion went on after its caller left"
        time.sleep(0.1)
    assert ended[0]["reason"].startswith("interrupted"), ended[0]
    assert ended[0]["usage"]["completion_tokens"] < 2000, ended[0]["usage"]
