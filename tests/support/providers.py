"""Loopback servers speaking the providers' wire formats, checked against their official SDK types.

One aiohttp server on 127.0.0.1 answers all four formats at their real paths:

    POST /v1/chat/completions                     OpenAI Chat Completions (JSON or SSE)
    POST /v1/messages                             Anthropic Messages (JSON or SSE events)
    POST /api/chat                                Ollama (JSON or NDJSON)
    POST /v1/projects/P/locations/R/publishers/anthropic/models/M:rawPredict|streamRawPredict
    POST /v1/projects/P/locations/R/publishers/google/models/M:generateContent|streamGenerateContent

Each request is recorded and answered with the next scripted `Reply`. Both what the server
receives and what it sends are validated with the SDKs' own types (`openai`, `anthropic`,
`ollama`, `google-genai`) where installed; any mismatch lands in `server.problems`, which the
tests assert is empty. Error replies are shaped as each provider shapes them, and echo the
credential the request carried, as real providers partly do, so the tests can prove the routes
never pass it on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pydantic
from aiohttp import web

from waystation.adapters.models.base import ToolCall

HAVE = {
    name: importlib.util.find_spec(module) is not None
    for name, module in {
        "openai": "openai",
        "anthropic": "anthropic",
        "ollama": "ollama",
        "genai": "google.genai",
    }.items()
}


@dataclass
class Reply:
    """One scripted answer. `model` None: the server says the model asked for answered."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    model: str | None = None
    prompt_tokens: int = 11
    completion_tokens: int = 7
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    signature: str | None = None  # Gemini's thoughtSignature on the first function call
    hang: bool = False  # never answer (for timeouts)
    stream_error: str | None = None  # an error type sent mid-stream (Anthropic's `error` event)
    cut: bool = False  # drop the connection in the middle of a streamed answer
    no_stream: bool = False  # answer one JSON document even when a stream was asked for
    # Streams only: after the first text, wait for this (the client sets it when it sees that
    # text), so a client that buffers the stream instead of passing tokens on is caught.
    gate: asyncio.Event | None = None


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


def pieces(text: str) -> list[str]:
    """Text as a stream would deliver it: word by word, spaces kept."""
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words) if w or i < len(words) - 1]


class ProviderServer:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[Seen] = []
        self.problems: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def __aenter__(self) -> ProviderServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/api/chat", self._ollama)
        app.router.add_post(
            "/v1/projects/{project}/locations/{region}/publishers/{publisher}/models/{rest}", self._vertex
        )
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        assert self._runner is not None
        await self._runner.cleanup()

    # --- plumbing ---------------------------------------------------------------------------------

    async def _take(self, request: web.Request) -> tuple[dict[str, Any], Reply]:
        body = await request.json()
        self.requests.append(
            Seen(
                request.path,
                dict(request.query),
                {k.lower(): v for k, v in request.headers.items()},
                body,
            )
        )
        if not self.replies:
            self.problems.append(f"no reply scripted for request {len(self.requests)} to {request.path}")
            return body, Reply(status=500)
        reply = self.replies.pop(0)
        if reply.hang:
            await self._release.wait()
        return body, reply

    def check(self, what: str, validate: Any, value: Any) -> None:
        try:
            _consume(validate(value))
        except (pydantic.ValidationError, ValueError, TypeError) as exc:
            self.problems.append(f"{what}: {exc}\n{json.dumps(value)[:2000]}")

    def check_keys(self, what: str, value: dict[str, Any], allowed: Any) -> None:
        extra = set(value) - set(allowed)
        if extra:
            self.problems.append(f"{what}: keys the SDK type does not know: {sorted(extra)}")

    @staticmethod
    def _credential(request: web.Request) -> str:
        return request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix(
            "Bearer "
        )

    async def _hold(self, reply: Reply, written: int, first_text: int) -> None:
        if reply.gate is None or written != first_text:
            return
        try:
            await asyncio.wait_for(reply.gate.wait(), 5)
        except TimeoutError:
            self.problems.append("the client did not pass on the first token while the stream was open")

    async def _stream(self, request: web.Request, reply: Reply, content_type: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": content_type, **reply.headers})
        await response.prepare(request)
        return response

    # --- OpenAI -----------------------------------------------------------------------------------

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body, reply = await self._take(request)
        if HAVE["openai"]:
            from openai.types.chat import completion_create_params as params

            kind = (
                params.CompletionCreateParamsStreaming
                if body.get("stream")
                else params.CompletionCreateParamsNonStreaming
            )
            self.check("openai request", pydantic.TypeAdapter(kind).validate_python, body)
            self.check_keys("openai request", body, _typed_dict_keys(kind))
        if reply.status != 200:
            key = self._credential(request)
            error = {
                "message": f"Incorrect API key provided: {key}.",
                "type": "invalid_request_error",
                "code": None,
            }
            return web.json_response({"error": error}, status=reply.status, headers=reply.headers)
        model = reply.model or body["model"]
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
        calls: list[dict[str, Any]] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in reply.tool_calls
        ]
        finish = "tool_calls" if calls else "stop"
        usage = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        }
        if not body.get("stream") or reply.no_stream:
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if calls:
                message["tool_calls"] = calls
            completion = {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": usage,
            }
            self._check_openai_sent("ChatCompletion", completion)
            return web.json_response(completion, headers=reply.headers)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice],
            }

        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": p}) for p in pieces(reply.text)]
        for index, call in enumerate(calls):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            chunks.append(chunk({"tool_calls": [head]}))
            for fragment in (arguments[:half], arguments[half:]):
                chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
        chunks.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**chunk({}), "choices": [], "usage": usage})
        response = await self._stream(request, reply, "text/event-stream")
        for number, item in enumerate(chunks):
            self._check_openai_sent("ChatCompletionChunk", item)
            await response.write(f"data: {json.dumps(item)}\n\n".encode())
            await self._hold(reply, number, 1)
            if reply.cut and number == len(chunks) // 2:
                assert request.transport is not None
                request.transport.close()
                return response
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _check_openai_sent(self, kind: str, value: dict[str, Any]) -> None:
        if HAVE["openai"]:
            from openai.types import chat

            self.check(f"openai {kind}", getattr(chat, kind).model_validate, value)

    # --- Anthropic (direct and on Vertex) -----------------------------------------------------------

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body, reply = await self._take(request)
        self._check_anthropic_request(body)
        return await self._anthropic_answer(request, body, body["model"], reply)

    def _check_anthropic_request(self, body: dict[str, Any]) -> None:
        if HAVE["anthropic"]:
            from anthropic.types import message_create_params as params

            kind = (
                params.MessageCreateParamsStreaming
                if body.get("stream")
                else params.MessageCreateParamsNonStreaming
            )
            self.check("anthropic request", pydantic.TypeAdapter(kind).validate_python, body)
            self.check_keys("anthropic request", body, _typed_dict_keys(kind))

    async def _anthropic_answer(
        self, request: web.Request, body: dict[str, Any], asked: str, reply: Reply
    ) -> web.StreamResponse:
        if reply.status != 200:
            kinds = {
                401: "authentication_error",
                403: "permission_error",
                429: "rate_limit_error",
                529: "overloaded_error",
            }
            error = {
                "type": kinds.get(
                    reply.status, "api_error" if reply.status >= 500 else "invalid_request_error"
                ),
                "message": f"invalid x-api-key {self._credential(request)}",
            }
            return web.json_response(
                {"type": "error", "error": error}, status=reply.status, headers=reply.headers
            )
        model = reply.model or asked
        content: list[dict[str, Any]] = (
            [{"type": "text", "text": reply.text, "citations": None}] if reply.text else []
        )
        content += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in reply.tool_calls
        ]
        stop = "tool_use" if reply.tool_calls else "end_turn"
        usage = {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens}
        message = {
            "id": f"msg_{uuid.uuid4().hex[:20]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            self._check_anthropic_sent("Message", message)
            return web.json_response(message, headers=reply.headers)
        events: list[dict[str, Any]] = [
            {
                "type": "message_start",
                "message": {
                    **message,
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": 1},
                },
            },
            {"type": "ping"},
        ]
        for index, block in enumerate(content):
            if block["type"] == "text":
                events.append(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    }
                )
                events += [
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": p},
                    }
                    for p in pieces(block["text"])
                ]
            else:
                start = {**block, "input": {}}
                events.append({"type": "content_block_start", "index": index, "content_block": start})
                arguments = json.dumps(block["input"])
                half = len(arguments) // 2
                events += [
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": f},
                    }
                    for f in (arguments[:half], arguments[half:])
                ]
            events.append({"type": "content_block_stop", "index": index})
        if reply.stream_error:  # the API sends the error event and ends the stream there
            events = [
                *events[:3],
                {"type": "error", "error": {"type": reply.stream_error, "message": "Overloaded"}},
            ]
        else:
            events.append(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": reply.completion_tokens},
                }
            )
            events.append({"type": "message_stop"})
        response = await self._stream(request, reply, "text/event-stream")
        for number, event in enumerate(events):
            if event["type"] not in ("error", "ping"):  # the SDK's stream-event union leaves these out
                self._check_anthropic_sent("RawMessageStreamEvent", event)
            await response.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
            await self._hold(reply, number, 3)  # message_start, ping, content_block_start, text
        await response.write_eof()
        return response

    def _check_anthropic_sent(self, kind: str, value: dict[str, Any]) -> None:
        if HAVE["anthropic"]:
            from anthropic import types

            self.check(f"anthropic {kind}", pydantic.TypeAdapter(getattr(types, kind)).validate_python, value)

    # --- Ollama -------------------------------------------------------------------------------------

    async def _ollama(self, request: web.Request) -> web.StreamResponse:
        body, reply = await self._take(request)
        if HAVE["ollama"]:
            from ollama import Message, Options
            from ollama._types import ChatRequest

            self.check("ollama request", ChatRequest.model_validate, body)
            self.check_keys("ollama request", body, ChatRequest.model_fields)
            self.check_keys("ollama options", body.get("options") or {}, Options.model_fields)
            for message in body.get("messages", []):
                self.check_keys("ollama message", message, Message.model_fields)
        if reply.status != 200:
            return web.json_response(
                {"error": f"unauthorized {self._credential(request)}"},
                status=reply.status,
                headers=reply.headers,
            )
        model = reply.model or body["model"]
        now = "2026-01-01T00:00:00.000000Z"
        calls = [{"function": {"name": c.name, "arguments": c.arguments}} for c in reply.tool_calls]
        final = {
            "model": model,
            "created_at": now,
            "done": True,
            "done_reason": "stop",
            "total_duration": 1000,
            "load_duration": 10,
            "prompt_eval_count": reply.prompt_tokens,
            "prompt_eval_duration": 100,
            "eval_count": reply.completion_tokens,
            "eval_duration": 500,
        }
        if not body.get("stream", True):
            whole: dict[str, Any] = {"role": "assistant", "content": reply.text}
            if calls:
                whole["tool_calls"] = calls
            answer = {**final, "message": whole}
            self._check_ollama_sent(answer)
            return web.json_response(answer, headers=reply.headers)
        lines = [
            {"model": model, "created_at": now, "message": {"role": "assistant", "content": p}, "done": False}
            for p in pieces(reply.text)
        ]
        if calls:
            lines.append(
                {
                    "model": model,
                    "created_at": now,
                    "done": False,
                    "message": {"role": "assistant", "content": "", "tool_calls": calls},
                }
            )
        lines.append({**final, "message": {"role": "assistant", "content": ""}})
        response = await self._stream(request, reply, "application/x-ndjson")
        for number, line in enumerate(lines):
            self._check_ollama_sent(line)
            await response.write(json.dumps(line).encode() + b"\n")
            await self._hold(reply, number, 0)
        await response.write_eof()
        return response

    def _check_ollama_sent(self, value: dict[str, Any]) -> None:
        if HAVE["ollama"]:
            from ollama import ChatResponse

            self.check("ollama ChatResponse", ChatResponse.model_validate, value)

    # --- Vertex AI ----------------------------------------------------------------------------------

    async def _vertex(self, request: web.Request) -> web.StreamResponse:
        model, _, action = request.match_info["rest"].partition(":")
        publisher = request.match_info["publisher"]
        body, reply = await self._take(request)
        if publisher == "anthropic":
            if body.get("anthropic_version") != "vertex-2023-10-16" or "model" in body:
                self.problems.append(f"vertex claude body: anthropic_version/model wrong: {sorted(body)}")
            if (action == "streamRawPredict") != bool(body.get("stream")):
                self.problems.append(f"vertex claude: {action} with stream={body.get('stream')}")
            check = {k: v for k, v in body.items() if k != "anthropic_version"}
            self._check_anthropic_request({**check, "model": model})
            return await self._anthropic_answer(request, body, model, reply)
        if action == "streamGenerateContent" and request.query.get("alt") != "sse":
            self.problems.append("gemini: streamGenerateContent without alt=sse")
        self._check_gemini_request(body)
        return await self._gemini_answer(request, model, action == "streamGenerateContent", reply)

    def _check_gemini_request(self, body: dict[str, Any]) -> None:
        self.check_keys(
            "gemini request",
            body,
            ("contents", "systemInstruction", "tools", "toolConfig", "generationConfig"),
        )
        if not HAVE["genai"]:
            return
        from google.genai import types

        for content in body.get("contents", []):
            self.check("gemini Content", types.Content.model_validate, content)
        if "systemInstruction" in body:
            self.check("gemini systemInstruction", types.Content.model_validate, body["systemInstruction"])
        for tool in body.get("tools", []):
            self.check("gemini Tool", types.Tool.model_validate, tool)
        if "toolConfig" in body:
            self.check("gemini ToolConfig", types.ToolConfig.model_validate, body["toolConfig"])
        self.check(
            "gemini GenerationConfig", types.GenerationConfig.model_validate, body.get("generationConfig", {})
        )

    async def _gemini_answer(
        self, request: web.Request, asked: str, stream: bool, reply: Reply
    ) -> web.StreamResponse:
        if reply.status != 200:
            statuses = {
                401: "UNAUTHENTICATED",
                403: "PERMISSION_DENIED",
                429: "RESOURCE_EXHAUSTED",
                500: "INTERNAL",
            }
            error: dict[str, Any] = {
                "code": reply.status,
                "status": statuses.get(reply.status, "INVALID_ARGUMENT"),
                "message": f"bad token {self._credential(request)}",
            }
            if reply.status == 429:
                error["details"] = [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}
                ]
            answer: Any = [{"error": error}] if stream else {"error": error}
            return web.json_response(answer, status=reply.status, headers=reply.headers)
        model = reply.model or asked
        usage = {
            "promptTokenCount": reply.prompt_tokens,
            "candidatesTokenCount": reply.completion_tokens,
            "totalTokenCount": reply.prompt_tokens + reply.completion_tokens,
        }
        call_parts = []
        for index, call in enumerate(reply.tool_calls):
            part: dict[str, Any] = {"functionCall": {"name": call.name, "args": call.arguments}}
            if index == 0 and reply.signature:
                part["thoughtSignature"] = reply.signature
            call_parts.append(part)

        def chunk(parts: list[dict[str, Any]], last: bool) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
            out: dict[str, Any] = {"candidates": [candidate], "modelVersion": model, "responseId": "r-1"}
            if last:
                candidate["finishReason"] = "STOP"
                out["usageMetadata"] = usage
            return out

        if not stream:
            text_parts = [{"text": reply.text}] if reply.text else []
            answer = chunk(text_parts + call_parts, True)
            self._check_gemini_sent(answer)
            return web.json_response(answer, headers=reply.headers)
        chunks = [chunk([{"text": p}], False) for p in pieces(reply.text)]
        chunks.append(chunk(call_parts, True))
        response = await self._stream(request, reply, "text/event-stream")
        for number, item in enumerate(chunks):
            self._check_gemini_sent(item)
            await response.write(f"data: {json.dumps(item)}\r\n\r\n".encode())
            await self._hold(reply, number, 0)
        await response.write_eof()
        return response

    def _check_gemini_sent(self, value: dict[str, Any]) -> None:
        if HAVE["genai"]:
            from google.genai import types

            self.check("gemini GenerateContentResponse", types.GenerateContentResponse.model_validate, value)


def _typed_dict_keys(kind: Any) -> frozenset[str]:
    return frozenset(kind.__required_keys__) | frozenset(kind.__optional_keys__)


def _consume(value: Any) -> None:
    """pydantic validates `Iterable` fields lazily: walk the result so every item is checked."""
    if isinstance(value, dict):
        for item in value.values():
            _consume(item)
    elif isinstance(value, list | tuple | Iterator):
        for item in value:
            _consume(item)
