"""Turns over the socket: `POST /v1/turns` (plain and SSE), `GET /v1/turns[/{id}]`, and
OpenAI-compatible chat completions.

A turn posted to /v1/turns is a resource: it runs in the agent's background, so a caller that
stops waiting (or goes away) leaves it running, and reads it back later. The answer's headers
name it before any of its body (`Location: /v1/turns/{id}`, `Waystation-Turn-Id`). A chat
completion belongs to its caller and stops when the caller goes.
Streaming answers are Server-Sent Events. A turn that fails after the stream began ends the
stream with an `error` event (the receipt is written either way); before that, it is a JSON error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from waystation import sse
from waystation.agent.http_io import json_body, query_int, station_of
from waystation.errors import MalformedRequest, WaystationError
from waystation.station.ops import turns
from waystation.station.turns.request import (
    MAX_TOKENS_LIMIT,
    TURN_ID_HEADER,
    TurnRequest,
    TurnResult,
    bounded_int,
    turn_request,
)


def add_turn_routes(app: web.Application) -> None:
    app.router.add_post("/v1/turns", post_turn)
    app.router.add_get("/v1/turns", list_turns)
    app.router.add_get("/v1/turns/{id}", get_turn)
    app.router.add_post("/v1/chat/completions", chat_completions)


async def post_turn(request: web.Request) -> web.StreamResponse:
    station = station_of(request)
    body = await json_body(request)
    turn = turn_request(body)
    if not body.get("stream"):
        turn_id, running = await turns.start(station, turn)
        # Shielded: a caller that goes away stops waiting, not the turn.
        result = await asyncio.shield(running)
        return web.json_response(result.to_json(), headers=_names(turn_id))
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()
    stages = StageFrames(frames)
    turn_id, running = await turns.start(
        station, turn, lambda piece: frames.put_nowait(sse.frame({"text": piece}, "token")), stages
    )
    return await _stream(
        request,
        running,
        frames,
        done=lambda result: sse.frame(result.to_json(), "done"),
        failed=lambda exc: sse.frame(exc.to_json()["error"], "error"),
        headers=_names(turn_id),
        detached=True,
    )


def _names(turn_id: str) -> dict[str, str]:
    """The headers that name the turn an answer is about, before any of its body."""
    return {"Location": f"/v1/turns/{turn_id}", TURN_ID_HEADER: turn_id}


class StageFrames:
    """`stage` events while a turn waits for the model: `waiting` (with how many generations are
    ahead) and `loading`, then `generating` once it runs. A turn that found the model free and
    loaded says nothing: its first token is the news."""

    def __init__(self, frames: asyncio.Queue[bytes | None]) -> None:
        self._frames = frames
        self._waited = False

    def __call__(self, stage: str, ahead: int) -> None:
        if stage == "generating" and not self._waited:
            return
        self._waited = stage != "generating"
        self._frames.put_nowait(sse.frame({"stage": stage, "ahead": ahead}, "stage"))


async def list_turns(request: web.Request) -> web.Response:
    station = station_of(request)
    limit = query_int(request, "limit", 100)
    return web.json_response(await turns.list_turns(station, request.query.get("state") or None, limit))


async def get_turn(request: web.Request) -> web.Response:
    return web.json_response(await turns.get(station_of(request), request.match_info["id"]))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI's Chat Completions on the default route: plain text chat, no tools of ours."""
    station = station_of(request)
    body = await json_body(request)
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = []
    texts = [_text_of(m) for m in messages]
    if not texts or any(t is None for t in texts):
        raise MalformedRequest("messages must be a non-empty list of {role, content} objects")
    temperature = body.get("temperature", 0.0)
    if not isinstance(temperature, int | float) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise MalformedRequest("temperature must be a number between 0 and 2")
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    turn = TurnRequest(
        prompt="",
        messages=[{"role": m["role"], "content": t} for m, t in zip(messages, texts, strict=True)],
        temperature=float(temperature),
        max_tokens=bounded_int({"max_tokens": limit}, "max_tokens", 256, MAX_TOKENS_LIMIT),
        tool_choice="none",
    )
    completion_id = f"chatcmpl-{int(time.time() * 1000):x}"
    created = int(time.time())
    model_name = str(body.get("model") or "waystation-local")

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        data = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return sse.frame(data)

    if not body.get("stream"):
        result = await turns.run(station, turn)
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(result),
                "waystation": {"turn_id": result.turn_id, "receipt_id": result.receipt_id},
            }
        )
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()
    running = asyncio.create_task(
        turns.run(station, turn, lambda piece: frames.put_nowait(chunk({"content": piece}, None)))
    )
    return await _stream(
        request,
        running,
        frames,
        done=lambda result: chunk({}, "stop") + sse.frame("[DONE]"),
        failed=lambda exc: sse.frame(exc.to_json()) + sse.frame("[DONE]"),
        first=chunk({"role": "assistant", "content": ""}, None),
    )


def _text_of(m: object) -> str | None:
    """A message's text: a string, or OpenAI's list of content parts (text parts joined)."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        return None
    content = m.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return None


def _usage(result: TurnResult) -> dict[str, int]:
    p, c = result.usage.prompt_tokens, result.usage.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _stream(
    request: web.Request,
    turn: asyncio.Task[TurnResult],
    frames: asyncio.Queue[bytes | None],
    *,
    done: Callable[[TurnResult], bytes],
    failed: Callable[[WaystationError], bytes],
    first: bytes = b"",
    headers: dict[str, str] | None = None,
    detached: bool = False,
) -> web.StreamResponse:
    """Write each frame of a running turn (its tokens) as it comes; the model never waits on a
    slow reader."""
    turn.add_done_callback(lambda _: frames.put_nowait(None))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **(headers or {})}
    )
    try:
        await response.prepare(request)
        if first:
            await response.write(first)
        while (frame := await frames.get()) is not None:
            await response.write(frame)
    except BaseException:
        # The client went away or the agent is stopping (the handler is cancelled). A detached
        # turn goes on (the agent's stop interrupts it); one that belongs to its caller stops at
        # the model's next token, and still writes its ("interrupted") receipt.
        if not detached:
            turn.cancel()
            await asyncio.wait({turn})
            if not turn.cancelled():
                turn.exception()  # it ended on its own meanwhile; nobody is left to tell
        raise
    try:
        result = await turn
    except WaystationError as exc:
        await response.write(failed(exc))
    else:
        await response.write(done(result))
    await response.write_eof()
    return response
