"""Ollama's native chat API (`/api/chat`) at `OLLAMA_HOST`: newline-delimited JSON when streaming.

Ollama tool calls carry their arguments as an object and (in older servers) no id; a tool's
result names the tool (`tool_name`) rather than the call, so the call's name is looked up from
the assistant message that made it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any
from urllib.parse import urlsplit

import httpx

from waystation.adapters.models.base import Generation, GenerationRequest, Message, TokenSink, ToolCall
from waystation.adapters.routes.http_common import (
    HttpRoute,
    as_int,
    function_tools,
    json_arguments,
    loads_object,
    new_call_id,
    read_object,
    sampling_asked,
    telemetry,
    text_of,
)

DEFAULT_PORT = 11434


def ollama_base_url(value: str | None = None) -> str:
    """The server's URL from an `OLLAMA_HOST`-style value, the way Ollama's own clients read it:
    the scheme defaults to http, the host to 127.0.0.1, the port to 11434 (80/443 when a scheme
    is given), and 0.0.0.0 (a listen address) means this host."""
    raw = (value if value is not None else os.environ.get("OLLAMA_HOST", "")).strip()
    scheme, sep, rest = raw.partition("://")
    port = DEFAULT_PORT
    if not sep:
        scheme, rest = "http", raw
    elif scheme == "http":
        port = 80
    elif scheme == "https":
        port = 443
    parts = urlsplit(f"{scheme}://{rest}")
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    with contextlib.suppress(ValueError):  # an unreadable port: keep the default
        port = parts.port or port
    path = parts.path.strip("/")
    return f"{scheme}://{host}:{port}" + (f"/{path}" if path else "")


class OllamaBackend(HttpRoute):
    def __init__(
        self,
        base_url: str | None = None,
        model: str = "",
        client: httpx.AsyncClient | None = None,
        *,
        route: str = "ollama",
        api_key: str = "",
    ) -> None:
        super().__init__(
            route=route,
            provider="ollama",
            model=model,
            client=client,
            credential_hint="OLLAMA_API_KEY"
            if api_key
            else "OLLAMA_HOST: the server there wants a credential",
            auth_lane="none",
            cost_lane="local",
            secrets=[api_key],
        )
        # ollama.com (and proxies in front of a server) take a bearer key; a local server none.
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = ollama_base_url(base_url)
        self._url = self.base_url + "/api/chat"

    def body(self, request: GenerationRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_path,
            "messages": _messages(request.messages),
            "stream": stream,
            "options": {
                "temperature": request.temperature,
                "num_predict": request.max_tokens,
                **sampling_asked(request),
            },
        }
        if request.stop:
            body["options"]["stop"] = list(request.stop)
        if request.tools and request.tool_choice != "none":
            body["tools"] = function_tools(request.tools)
        return body

    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        stream = on_token is not None
        async with self.post(self._url, self.body(request, stream), self._headers) as response:
            seen = telemetry(response.headers)
            if not stream:
                return self._generation([await read_object(self, response)], seen)
            chunks = []
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                chunk = loads_object(self, line)
                self._check(chunk)
                content = (chunk.get("message") or {}).get("content")
                if content and on_token is not None:
                    on_token(content)
                chunks.append(chunk)
                if chunk.get("done"):
                    break
            return self._generation(chunks, seen)

    def _check(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk:
            raise self.rejected(200, str(chunk["error"]))

    def _generation(self, chunks: list[dict[str, Any]], seen: dict[str, str]) -> Generation:
        text, calls = [], []
        for chunk in chunks:
            self._check(chunk)
            message = chunk.get("message") or {}
            text.append(str(message.get("content") or ""))
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                calls.append(
                    ToolCall(
                        str(call.get("id") or new_call_id()),
                        str(function.get("name", "")),
                        json_arguments(function.get("arguments")),
                    )
                )
        last = chunks[-1] if chunks else {}
        reason = str(last.get("done_reason") or "stop")
        return Generation(
            text="".join(text),
            tool_calls=calls,
            prompt_tokens=as_int(last.get("prompt_eval_count")),
            completion_tokens=as_int(last.get("eval_count")),
            finish_reason="tool_calls" if calls else reason,
            model_answered=last.get("model"),
            telemetry=seen,
        )


def _messages(messages: Any) -> list[Message]:
    names: dict[str, str] = {}
    out: list[Message] = []
    for message in messages:
        role = message.get("role")
        converted: Message = {"role": role, "content": text_of(message.get("content"))}
        if role == "assistant" and message.get("tool_calls"):
            converted["tool_calls"] = []
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                names[str(call.get("id"))] = str(function.get("name", ""))
                converted["tool_calls"].append(
                    {
                        "function": {
                            "name": function.get("name"),
                            "arguments": json_arguments(function.get("arguments")),
                        }
                    }
                )
        if role == "tool":
            call_id = str(message.get("tool_call_id"))
            if call_id in names:
                converted["tool_name"] = names[call_id]
        out.append(converted)
    return out
