"""`POST /v1/chat/completions`: OpenAI's Chat Completions on the default route, as OpenAI's own
clients (the `openai` SDK, langchain-openai) expect it; and `POST /v1/responses`, OpenAI's
Responses API, translated to a chat completion and back (responses_translate.py).

The client's `tools` are offered to the model (grammar-constrained on llama.cpp) and its calls come
back as `message.tool_calls` with `finish_reason: "tool_calls"`: the client runs them, as with
OpenAI, and sends their results back as `tool` messages. Nothing here calls or parks them. Each
completion is a turn with its receipt; `model` is the model that ran. A streamed answer starts
with its first token, so a request that fails before the model says anything (a schema the
grammar cannot express) is a JSON error with its status, as without `stream`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

from aiohttp import web

from waystation import contract, sse
from waystation.agent import responses_translate
from waystation.agent.api_openai_request import ChatRequest, chat_request
from waystation.agent.api_turns import stream_turn, whole_turn
from waystation.agent.http_io import json_body, station_of
from waystation.station import AgentStation
from waystation.station.ops import chat, turns
from waystation.station.turns.request import TurnRequest, TurnResult


def add_openai_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/responses", responses)


async def _turn_of(station: AgentStation, chat_req: ChatRequest) -> tuple[TurnRequest, str]:
    """The turn a chat request runs, on the model it picks, and that model's name."""
    chat.check(station, chat_req.turn)
    model, model_name = await chat.model_for(station, chat_req.turn.model)
    return dataclasses.replace(chat_req.turn, model=model), model_name


async def chat_completions(request: web.Request) -> web.StreamResponse:
    station = station_of(request)
    chat_req = chat_request(await json_body(request))
    turn, model_name = await _turn_of(station, chat_req)
    completion = Completion(f"chatcmpl-{int(time.time() * 1000):x}", int(time.time()), model_name)
    if not chat_req.stream:
        result = await whole_turn(request, asyncio.create_task(turns.run(station, turn)))
        return web.json_response(completion.whole(result))
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()
    running = asyncio.create_task(
        turns.run(station, turn, lambda piece: frames.put_nowait(completion.chunk({"content": piece})))
    )

    def done(result: TurnResult) -> bytes:
        tail = completion.ending(result)
        if chat_req.include_usage:
            tail += completion.frame([], usage=usage(result))
        return tail + sse.frame("[DONE]")

    return await stream_turn(
        request,
        running,
        frames,
        done=done,
        failed=lambda exc: sse.frame(exc.to_json()) + sse.frame("[DONE]"),
        first=completion.chunk({"role": "assistant", "content": ""}),
        head_waits=True,
    )


async def responses(request: web.Request) -> web.StreamResponse:
    """OpenAI's Responses API: the request translated to a chat completion's, its result back
    to a Response (responses_translate.py)."""
    station = station_of(request)
    body = await json_body(request)
    chat_req = chat_request(responses_translate.chat_body(body))
    turn, model_name = await _turn_of(station, chat_req)
    answer = responses_translate.ResponseBuilder(body, model_name)
    if not chat_req.stream:
        result = await whole_turn(request, asyncio.create_task(turns.run(station, turn)))
        return web.json_response(answer.response(result))
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()
    running = asyncio.create_task(
        turns.run(station, turn, lambda piece: frames.put_nowait(answer.delta(piece)))
    )
    return await stream_turn(
        request,
        running,
        frames,
        done=answer.ending,
        failed=answer.failed,
        first=answer.head(),
        head_waits=True,
    )


class Completion:
    """One completion's fixed fields, and its answer whole or as chunks."""

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.id, self.created, self.model = completion_id, created, model

    def whole(self, result: TurnResult) -> contract.ChatCompletion:
        calls = client_calls(result)
        message: dict[str, Any] = {"role": "assistant", "content": None if calls else result.text}
        if calls:
            message["tool_calls"] = calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": model_that_ran(result, self.model),
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish_reason(result), "logprobs": None}
            ],
            "usage": usage(result),
            "waystation": {"turn_id": result.turn_id, "receipt_id": result.receipt_id},
        }

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self.frame([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}])

    def frame(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse.frame(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **extra,
            }
        )

    def ending(self, result: TurnResult) -> bytes:
        """The calls as OpenAI streams them (a first delta with the id and name, then the
        arguments), and the chunk that says why the answer ended."""
        frames = b""
        for index, call in enumerate(client_calls(result)):
            head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
            frames += self.chunk({"tool_calls": [{"index": index, **head}]})
            arguments = {"arguments": call["function"]["arguments"]}
            frames += self.chunk({"tool_calls": [{"index": index, "function": arguments}]})
        return frames + self.chunk({}, finish_reason(result))


def client_calls(result: TurnResult) -> list[contract.ClientToolCall]:
    """The calls the model made to the client's tools, in OpenAI's shape."""
    return [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["tool"], "arguments": json.dumps(c["arguments"])},
        }
        for c in result.tool_calls
        if c.get("status") == "client"
    ]


def finish_reason(result: TurnResult) -> str:
    if client_calls(result):
        return "tool_calls"
    return "length" if result.finish_reason == "length" else "stop"


def model_that_ran(result: TurnResult, fallback: str) -> str:
    return result.model_answered or result.model or fallback


def usage(result: TurnResult) -> contract.CompletionUsage:
    p, c = result.usage.prompt_tokens, result.usage.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
