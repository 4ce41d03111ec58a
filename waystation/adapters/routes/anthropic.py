"""Anthropic Messages (`anthropic`), and the body and replies Claude on Vertex AI shares with it.

The engine's OpenAI-style conversation becomes Anthropic's: system messages move to `system`,
an assistant's `tool_calls` become `tool_use` blocks, and `tool` messages become `tool_result`
blocks in a user message (consecutive ones together, as the API wants all results of one turn in
one message). The API refuses `tool_use`/`tool_result` blocks in a request that offers no
tools, and the engine offers none on a turn's last step, so then that history is told as text.
`temperature` is not sent: the API deprecated the sampling parameters (newer models answer 400
to them, and the official SDK no longer takes them), so Claude samples at its default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from waystation.adapters.models.base import Generation, GenerationRequest, TokenSink, ToolCall
from waystation.adapters.routes.http_common import (
    HttpRoute,
    as_int,
    json_arguments,
    loads_object,
    read_object,
    sse_events,
    telemetry,
    text_of,
)
from waystation.errors import ProviderError

API_VERSION = "2023-06-01"
BASE_URL = "https://api.anthropic.com"
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
TOOL_CHOICES = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}
# Error types the API reports inside a stream, and the HTTP status each stands for.
STREAM_ERRORS = {"overloaded_error": 529, "api_error": 500, "rate_limit_error": 429, "timeout_error": 504}


class AnthropicBackend(HttpRoute):
    def __init__(
        self,
        route: str = "anthropic",
        base_url: str = BASE_URL,
        api_key: str = "",
        model: str = "",
        client: httpx.AsyncClient | None = None,
        *,
        credential_hint: str = "ANTHROPIC_API_KEY",
    ) -> None:
        super().__init__(
            route=route,
            provider="anthropic",
            model=model,
            client=client,
            credential_hint=credential_hint,
            auth_lane="api_key",
            cost_lane="byok",
            secrets=[api_key],
        )
        self._url = base_url.rstrip("/") + "/v1/messages"
        self._headers = {"x-api-key": api_key, "anthropic-version": API_VERSION}

    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        stream = on_token is not None
        body = {"model": self.model_path, **messages_body(request), "stream": stream}
        headers = {**self._headers, "accept": "text/event-stream" if stream else "application/json"}
        async with self.post(self._url, body, headers) as response:
            return await read_reply(self, response, stream, on_token)


def messages_body(request: GenerationRequest) -> dict[str, Any]:
    """The Messages API body for a request, without `model` and `stream`."""
    with_tools = bool(request.tools)
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in request.messages:
        role = message.get("role")
        if role == "system":
            system.append(text_of(message.get("content")))
        elif role == "tool":
            result = text_of(message.get("content"))
            if with_tools:
                block = {
                    "type": "tool_result",
                    "tool_use_id": str(message.get("tool_call_id")),
                    "content": result,
                }
            else:
                block = {
                    "type": "text",
                    "text": f"[result of tool call {message.get('tool_call_id')}: {result}]",
                }
            _append(turns, "user", [block])
        elif role == "assistant":
            blocks = _text_blocks(message.get("content"))
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                name, arguments = str(function.get("name")), json_arguments(function.get("arguments"))
                if with_tools:
                    blocks.append(
                        {"type": "tool_use", "id": str(call.get("id")), "name": name, "input": arguments}
                    )
                else:
                    text = f"[called tool {name} (call {call.get('id')}) with {json.dumps(arguments)}]"
                    blocks.append({"type": "text", "text": text})
            _append(turns, "assistant", blocks)
        else:
            _append(turns, "user", _text_blocks(message.get("content")))
    body: dict[str, Any] = {
        "messages": [_simplified(t) for t in turns],
        "max_tokens": request.max_tokens,
    }
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if system:
        body["system"] = "\n\n".join(system)
    if with_tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
            for t in request.tools
        ]
        body["tool_choice"] = TOOL_CHOICES[request.tool_choice]
    return body


def _text_blocks(content: Any) -> list[dict[str, Any]]:
    text = text_of(content)
    return [{"type": "text", "text": text}] if text else []  # the API refuses empty text blocks


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _simplified(turn: dict[str, Any]) -> dict[str, Any]:
    blocks = turn["content"]
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return {"role": turn["role"], "content": blocks[0]["text"]}
    return turn


async def read_reply(
    route: HttpRoute, response: httpx.Response, stream: bool, on_token: TokenSink | None
) -> Generation:
    """A Messages reply, whole (a Message) or as its event stream, as a Generation."""
    seen = telemetry(response.headers)
    if not stream:
        return from_message(await read_object(route, response), seen)
    reply = _StreamedMessage()
    async for event, data in sse_events(response):
        if event == "message_stop":
            break
        reply.add(route, loads_object(route, data), on_token)
    return reply.generation(seen)


def from_message(data: dict[str, Any], seen: dict[str, str]) -> Generation:
    text, calls = [], []
    for block in data.get("content") or []:
        if block.get("type") == "text":
            text.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            calls.append(
                ToolCall(str(block.get("id")), str(block.get("name")), json_arguments(block.get("input")))
            )
    usage = data.get("usage") or {}
    return Generation(
        text="".join(text),
        tool_calls=calls,
        prompt_tokens=_prompt_tokens(usage),
        completion_tokens=as_int(usage.get("output_tokens")),
        finish_reason=STOP_REASONS.get(str(data.get("stop_reason")), str(data.get("stop_reason") or "stop")),
        model_answered=data.get("model"),
        telemetry=seen,
    )


def _prompt_tokens(usage: dict[str, Any]) -> int:
    # `input_tokens` leaves out what was written to or read from the prompt cache.
    return sum(
        as_int(usage.get(k))
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


@dataclass
class _StreamedMessage:
    text: list[str] = field(default_factory=list)
    blocks: dict[int, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    stop_reason: str | None = None

    def add(self, route: HttpRoute, event: dict[str, Any], on_token: TokenSink | None) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.model = message.get("model")
            self.usage.update(message.get("usage") or {})
        elif kind == "content_block_start":
            block = dict(event.get("content_block") or {})
            block["partial"] = []
            self.blocks[as_int(event.get("index"))] = block
            if block.get("type") == "text" and block.get("text"):
                self._text(str(block["text"]), on_token)
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                self._text(str(delta.get("text", "")), on_token)
            elif delta.get("type") == "input_json_delta":
                block = self.blocks.setdefault(as_int(event.get("index")), {"partial": []})
                block["partial"].append(str(delta.get("partial_json", "")))
        elif kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
        elif kind == "error":
            error = event.get("error") or {}
            status = STREAM_ERRORS.get(str(error.get("type")))
            if status is not None:
                raise ProviderError(route.route, status)
            raise route.rejected(200, str(error.get("message") or error.get("type")))

    def _text(self, text: str, on_token: TokenSink | None) -> None:
        self.text.append(text)
        if on_token is not None and text:
            on_token(text)

    def generation(self, seen: dict[str, str]) -> Generation:
        calls = [
            ToolCall(
                str(b.get("id")),
                str(b.get("name")),
                json_arguments("".join(b["partial"])) if b["partial"] else json_arguments(b.get("input")),
            )
            for _, b in sorted(self.blocks.items())
            if b.get("type") == "tool_use"
        ]
        stop = self.stop_reason or ("tool_use" if calls else "end_turn")
        return Generation(
            text="".join(self.text),
            tool_calls=calls,
            prompt_tokens=_prompt_tokens(self.usage),
            completion_tokens=as_int(self.usage.get("output_tokens")),
            finish_reason=STOP_REASONS.get(stop, stop),
            model_answered=self.model,
            telemetry=seen,
        )
