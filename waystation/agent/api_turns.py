"""Turns over the socket: `POST /v1/turns` (plain and SSE) and OpenAI-compatible chat completions.

Streaming answers are Server-Sent Events. A turn that fails after the stream began ends the
stream with an `error` event (the receipt is written either way); before that, it is a JSON error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from waystation.agent.http_common import SERVICES, json_body
from waystation.agent.turns import MAX_STEPS, TurnRequest, TurnResult
from waystation.errors import MalformedRequest, WaystationError

MAX_TOKENS_LIMIT = 8192


def add_turn_routes(app: web.Application) -> None:
    app.router.add_post("/v1/turns", post_turn)
    app.router.add_post("/v1/chat/completions", chat_completions)


def turn_request(body: dict[str, Any]) -> TurnRequest:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise MalformedRequest("prompt must be a string")
    for name in ("route", "model", "system"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise MalformedRequest(f"{name} must be a string")
    if not isinstance(body.get("defer", False), bool):
        raise MalformedRequest("defer must be true or false")
    choice = body.get("tool_choice", "auto")
    if choice not in ("auto", "required", "none"):
        raise MalformedRequest("tool_choice must be one of auto, required, none")
    return TurnRequest(
        prompt=prompt,
        route=body.get("route"),
        model=body.get("model"),
        system=body.get("system"),
        max_tokens=_bounded_int(body, "max_tokens", 256, MAX_TOKENS_LIMIT),
        tool_choice=choice,
        max_steps=_bounded_int(body, "max_steps", MAX_STEPS, 16),
        defer=bool(body.get("defer", False)),
    )


def _bounded_int(body: dict[str, Any], name: str, default: int, maximum: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise MalformedRequest(f"{name} must be an integer between 1 and {maximum}")
    return value


async def post_turn(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    body = await json_body(request)
    turn = turn_request(body)
    if not body.get("stream"):
        result = await services.turns.run(turn)
        return web.json_response(result.to_json())

    def event(kind: str, data: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

    return await _stream(
        request,
        lambda on_token: services.turns.run(turn, on_token),
        token=lambda piece: event("token", {"text": piece}),
        done=lambda result: event("done", result.to_json()),
        failed=lambda exc: event("error", {"code": exc.code, "message": exc.message}),
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI's Chat Completions on the default route: plain text chat, no tools of ours."""
    services = request.app[SERVICES]
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
        max_tokens=_bounded_int({"max_tokens": limit}, "max_tokens", 256, MAX_TOKENS_LIMIT),
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
        return f"data: {json.dumps(data)}\n\n".encode()

    if not body.get("stream"):
        result = await services.turns.run(turn)
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
    return await _stream(
        request,
        lambda on_token: services.turns.run(turn, on_token),
        token=lambda piece: chunk({"content": piece}, None),
        done=lambda result: chunk({}, "stop") + b"data: [DONE]\n\n",
        failed=lambda exc: f"data: {json.dumps(exc.to_json())}\n\n".encode() + b"data: [DONE]\n\n",
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
    run: Callable[[Callable[[str], None]], Coroutine[Any, Any, TurnResult]],
    *,
    token: Callable[[str], bytes],
    done: Callable[[TurnResult], bytes],
    failed: Callable[[WaystationError], bytes],
    first: bytes = b"",
) -> web.StreamResponse:
    """Run a turn, writing each token as it comes; the model never waits on a slow reader."""
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    turn = asyncio.create_task(run(pieces.put_nowait))
    turn.add_done_callback(lambda _: pieces.put_nowait(None))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await response.prepare(request)
        if first:
            await response.write(first)
        while (piece := await pieces.get()) is not None:
            await response.write(token(piece))
    except BaseException:
        # The client went away or the agent is stopping (the handler is cancelled): the turn stops
        # with it, at the model's next token, and still writes its ("interrupted") receipt.
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
