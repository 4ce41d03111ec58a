"""OpenAI Chat Completions, and every API that speaks it: `openai`, `deepseek`, `xai`, `compatible`.

The engine's messages are already in this shape, so requests pass them through (minus keys the
API does not know). Replies stream as Server-Sent Events when a token sink is given: text
deltas go to the sink, tool-call fragments are joined by their `index`, and the last chunk
carries `usage` because the request asks for it (`stream_options.include_usage`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from waystation.adapters.models.base import (
    Generation,
    GenerationRequest,
    Message,
    TokenSink,
    ToolCall,
    discard,
)
from waystation.adapters.models.stop import StopStream, cut_at_stop
from waystation.adapters.routes.http_common import (
    HttpRoute,
    as_int,
    function_tools,
    json_arguments,
    loads_object,
    new_call_id,
    read_object,
    sampling_asked,
    sse_events,
    telemetry,
    text_of,
)

BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "xai": "https://api.x.ai/v1",
}
KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "deepseek": "DEEPSEEK_API_KEY", "xai": "XAI_API_KEY"}
PROVIDERS = {"openai": "openai", "deepseek": "deepseek", "xai": "xai", "compatible": "openai-compatible"}
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")
# OpenAI's reasoning models take `max_completion_tokens`, only the default temperature, no `stop`,
# no top_p or penalties.
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")


class OpenAICompatBackend(HttpRoute):
    def __init__(
        self,
        route: str = "openai",
        base_url: str | None = None,
        api_key: str = "",
        model: str = "",
        client: httpx.AsyncClient | None = None,
        *,
        credential_hint: str | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(
            route=route,
            provider=provider or PROVIDERS.get(route, route),
            model=model,
            client=client,
            credential_hint=credential_hint or KEY_VARIABLES.get(route, f"the api_key of [routes.{route}]"),
            auth_lane="api_key",
            cost_lane="byok",
            secrets=[api_key],
        )
        base = base_url or BASE_URLS.get(route)
        if not base:
            raise self.refused("no base URL is configured for this route")
        self._url = base.rstrip("/") + "/chat/completions"
        self._headers = {"accept": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    def body(self, request: GenerationRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_path,
            "messages": [_message(m) for m in request.messages],
            "stream": stream,
        }
        if self.route == "openai":
            body["max_completion_tokens"] = request.max_tokens
        else:
            body["max_tokens"] = request.max_tokens
        if not self._reasoning():  # (which refuse the sampling parameters)
            body["temperature"] = request.temperature
            body.update(sampling_asked(request))
        if request.stop and not self._reasoning():
            body["stop"] = list(request.stop)
        if request.tools:
            body["tools"] = function_tools(request.tools)
            body["tool_choice"] = request.tool_choice
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _reasoning(self) -> bool:
        return self.route == "openai" and bool(_REASONING_MODEL.match(self.model_path))

    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        if not (request.stop and self._reasoning()):
            return await self._generate(request, on_token)
        # OpenAI's reasoning models refuse `stop`: their answer is cut here, streamed or whole.
        held = StopStream(request.stop, on_token or discard)
        generation = await self._generate(request, held.feed if on_token is not None else None)
        text, stopped = cut_at_stop(generation.text, request.stop)
        held.finish()
        return dataclasses.replace(
            generation, text=text, finish_reason="stop" if stopped else generation.finish_reason
        )

    async def _generate(self, request: GenerationRequest, on_token: TokenSink | None) -> Generation:
        stream = on_token is not None
        headers = {**self._headers, "accept": "text/event-stream"} if stream else self._headers
        async with self.post(self._url, self.body(request, stream), headers) as response:
            # Some compatible servers answer a streaming request with one JSON completion.
            if not stream or response.headers.get("content-type", "").startswith("application/json"):
                generation = _from_completion(await read_object(self, response), telemetry(response.headers))
                if on_token is not None and generation.text:
                    on_token(generation.text)
                return generation
            reply = _StreamedReply()
            async for _event, data in sse_events(response):
                if data.strip() == "[DONE]":
                    break
                reply.add(self, loads_object(self, data), on_token)
            return reply.generation(telemetry(response.headers))


def _message(message: Message) -> Message:
    out = {k: v for k, v in message.items() if k in MESSAGE_KEYS}
    if out.get("role") == "tool":
        out["content"] = text_of(out.get("content"))
    return out


def _tool_calls(raw: Any) -> list[ToolCall]:
    calls = []
    for item in raw or []:
        function = item.get("function") or {}
        calls.append(
            ToolCall(
                str(item.get("id") or new_call_id()),
                str(function.get("name", "")),
                json_arguments(function.get("arguments")),
            )
        )
    return calls


def _from_completion(data: dict[str, Any], seen: dict[str, str]) -> Generation:
    choices = data.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    usage = data.get("usage") or {}
    calls = _tool_calls(message.get("tool_calls"))
    return Generation(
        text=text_of(message.get("content")),
        tool_calls=calls,
        prompt_tokens=as_int(usage.get("prompt_tokens")),
        completion_tokens=as_int(usage.get("completion_tokens")),
        finish_reason=str(choice.get("finish_reason") or ("tool_calls" if calls else "stop")),
        model_answered=data.get("model"),
        telemetry=seen,
    )


@dataclass
class _StreamedReply:
    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    finish_reason: str | None = None

    def add(self, route: HttpRoute, chunk: dict[str, Any], on_token: TokenSink | None) -> None:
        if "error" in chunk:  # some servers report a failure mid-stream as a chunk
            error = chunk["error"]
            detail = error.get("message") if isinstance(error, dict) else error
            raise route.rejected(200, str(detail))
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.text.append(content)
                if on_token is not None:
                    on_token(content)
            for fragment in delta.get("tool_calls") or []:
                call = self.calls.setdefault(as_int(fragment.get("index")), {"arguments": []})
                function = fragment.get("function") or {}
                if fragment.get("id"):
                    call["id"] = fragment["id"]
                if function.get("name"):
                    call["name"] = function["name"]
                if function.get("arguments"):
                    call["arguments"].append(function["arguments"])
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def generation(self, seen: dict[str, str]) -> Generation:
        calls = [
            ToolCall(
                str(c.get("id") or new_call_id()),
                str(c.get("name", "")),
                json_arguments("".join(c["arguments"])),
            )
            for _, c in sorted(self.calls.items())
        ]
        return Generation(
            text="".join(self.text),
            tool_calls=calls,
            prompt_tokens=as_int(self.usage.get("prompt_tokens")),
            completion_tokens=as_int(self.usage.get("completion_tokens")),
            finish_reason=self.finish_reason or ("tool_calls" if calls else "stop"),
            model_answered=self.model,
            telemetry=seen,
        )
