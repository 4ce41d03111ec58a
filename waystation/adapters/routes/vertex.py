"""Vertex AI (`vertex`): Claude through `rawPredict`, Gemini through `generateContent`.

Both take a Google OAuth access token (application-default credentials) as a bearer token.
Claude on Vertex speaks the Anthropic Messages body with `anthropic_version` in place of the
model, which is in the URL. Gemini has its own shape: `contents` of `parts`, `functionCall` /
`functionResponse` parts for tools, and `usageMetadata`; its streaming form is Server-Sent
Events when asked with `alt=sse`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from waystation.adapters.models.base import Generation, GenerationRequest, TokenSink, ToolCall
from waystation.adapters.routes.anthropic import messages_body, read_reply
from waystation.adapters.routes.http_common import (
    HttpRoute,
    as_int,
    json_arguments,
    loads_object,
    new_call_id,
    read_object,
    sse_events,
    telemetry,
    text_of,
)
from waystation.errors import NetworkUnreachable, ProviderError, RouteRefused, WaystationError

ANTHROPIC_VERSION = "vertex-2023-10-16"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
NO_ADC = (
    "no Google application-default credentials: run `gcloud auth application-default login` "
    "or set GOOGLE_APPLICATION_CREDENTIALS"
)
CREDENTIAL_HINT = "the Google application-default credentials (`gcloud auth application-default login`)"
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}
MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
# Gemini 3 refuses a replayed functionCall without the thoughtSignature it came with; for one
# whose signature this process never saw (a turn resumed after a restart), Google documents
# this value to skip the check.
SKIP_SIGNATURE = "skip_thought_signature_validator"
GENERATED_ID = "call_"  # our ids for Gemini calls that came without one: not sent back

TokenProvider = Callable[[], Awaitable[str]]


def vertex_host(region: str) -> str:
    return (
        "https://aiplatform.googleapis.com"
        if region == "global"
        else f"https://{region}-aiplatform.googleapis.com"
    )


class VertexBackend(HttpRoute):
    def __init__(
        self,
        project: str,
        region: str,
        model: str,
        token_provider: TokenProvider,
        client: httpx.AsyncClient | None = None,
        *,
        base_url: str | None = None,
        route: str = "vertex",
    ) -> None:
        super().__init__(
            route=route,
            provider="google-vertex",
            model=model,
            client=client,
            credential_hint=CREDENTIAL_HINT,
            auth_lane="oauth",
            cost_lane="byok",
        )
        self.claude = model.startswith("claude")
        publisher = "anthropic" if self.claude else "google"
        host = (base_url or vertex_host(region)).rstrip("/")
        self._model_url = (
            f"{host}/v1/projects/{project}/locations/{region}/publishers/{publisher}/models/{model}"
        )
        self._token_provider = token_provider
        self._signatures: dict[str, str] = {}  # Gemini call id -> its thoughtSignature

    async def _headers(self, stream: bool) -> dict[str, str]:
        try:
            token = await self._token_provider()
        except RouteRefused as exc:  # say which route and lanes refused, for the receipt
            raise self.refused(exc.reason) from None
        self.add_secret(token)
        return {
            "authorization": f"Bearer {token}",
            "accept": "text/event-stream" if stream else "application/json",
        }

    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        stream = on_token is not None
        headers = await self._headers(stream)
        if self.claude:
            url = self._model_url + (":streamRawPredict" if stream else ":rawPredict")
            body = {"anthropic_version": ANTHROPIC_VERSION, **messages_body(request), "stream": stream}
            async with self.post(url, body, headers) as response:
                return await read_reply(self, response, stream, on_token)
        url = self._model_url + (":streamGenerateContent?alt=sse" if stream else ":generateContent")
        async with self.post(url, self.gemini_body(request), headers) as response:
            reply = _GeminiReply(self)
            if not stream:
                reply.add(await read_object(self, response), None)
            else:
                async for _event, data in sse_events(response):
                    reply.add(loads_object(self, data), on_token)
            return reply.generation(telemetry(response.headers))

    def status_error(self, status: int, headers: httpx.Headers, body: bytes) -> WaystationError:
        error = super().status_error(status, headers, body)
        if isinstance(error, ProviderError) and error.retry_after_s is None:
            delay = _retry_delay(body)  # Google puts its hint in the body (google.rpc.RetryInfo)
            if delay is not None:
                return ProviderError(self.route, status, delay)
        return error

    def gemini_body(self, request: GenerationRequest) -> dict[str, Any]:
        with_tools = bool(request.tools)
        names: dict[str, str] = {}
        system: list[str] = []
        contents: list[dict[str, Any]] = []
        for message in request.messages:
            role = message.get("role")
            if role == "system":
                system.append(text_of(message.get("content")))
            elif role == "assistant":
                text = text_of(message.get("content"))
                parts: list[dict[str, Any]] = [{"text": text}] if text else []
                for index, call in enumerate(message.get("tool_calls") or []):
                    function = call.get("function") or {}
                    call_id, name = str(call.get("id")), str(function.get("name"))
                    names[call_id] = name
                    arguments = json_arguments(function.get("arguments"))
                    if with_tools:
                        parts.append(self._call_part(call_id, name, arguments, first=index == 0))
                    else:
                        parts.append(
                            {"text": f"[called tool {name} (call {call_id}) with {json.dumps(arguments)}]"}
                        )
                _append(contents, "model", parts)
            elif role == "tool":
                call_id, result = str(message.get("tool_call_id")), text_of(message.get("content"))
                if with_tools:
                    answer: dict[str, Any] = {
                        "name": names.get(call_id, ""),
                        "response": _response_object(result),
                    }
                    if not call_id.startswith(GENERATED_ID):
                        answer["id"] = call_id
                    _append(contents, "user", [{"functionResponse": answer}])
                else:
                    _append(contents, "user", [{"text": f"[result of tool call {call_id}: {result}]"}])
            else:
                _append(contents, "user", [{"text": text_of(message.get("content"))}])
        body: dict[str, Any] = {
            "contents": contents,
            "generationConfig": {"maxOutputTokens": request.max_tokens, "temperature": request.temperature},
        }
        if request.stop:
            body["generationConfig"]["stopSequences"] = list(request.stop)
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        if with_tools:
            declarations = [
                {"name": t.name, "description": t.description, "parametersJsonSchema": dict(t.parameters)}
                for t in request.tools
            ]
            body["tools"] = [{"functionDeclarations": declarations}]
            body["toolConfig"] = {"functionCallingConfig": {"mode": MODES[request.tool_choice]}}
        return body

    def _call_part(self, call_id: str, name: str, arguments: dict[str, Any], first: bool) -> dict[str, Any]:
        call: dict[str, Any] = {"name": name, "args": arguments}
        if not call_id.startswith(GENERATED_ID):
            call["id"] = call_id
        part: dict[str, Any] = {"functionCall": call}
        signature = self._signatures.get(call_id)
        if signature is None and first and self.model_path.startswith("gemini-3"):
            signature = SKIP_SIGNATURE
        if signature is not None:
            part["thoughtSignature"] = signature
        return part

    def _gemini_error(self, chunk: dict[str, Any]) -> WaystationError:
        error = chunk["error"] if isinstance(chunk["error"], dict) else {}
        status = as_int(error.get("code")) or 500
        return self.status_error(status, httpx.Headers(), json.dumps(chunk).encode())


@dataclass
class _GeminiReply:
    """A generateContent answer, whole or chunk by chunk; each chunk's text goes out at once."""

    backend: VertexBackend
    text: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    finish: str | None = None

    def add(self, chunk: dict[str, Any], on_token: TokenSink | None) -> None:
        if "error" in chunk:
            raise self.backend._gemini_error(chunk)
        self.usage = chunk.get("usageMetadata") or self.usage
        self.model = chunk.get("modelVersion") or self.model
        for candidate in (chunk.get("candidates") or [])[:1]:
            self.finish = candidate.get("finishReason") or self.finish
            for part in (candidate.get("content") or {}).get("parts") or []:
                if part.get("thought"):
                    continue  # the model's reasoning summary is not its answer
                if "functionCall" in part:
                    function = part["functionCall"] or {}
                    call_id = str(function.get("id") or new_call_id())
                    if part.get("thoughtSignature"):
                        self.backend._signatures[call_id] = str(part["thoughtSignature"])
                    arguments = json_arguments(function.get("args"))
                    self.calls.append(ToolCall(call_id, str(function.get("name")), arguments))
                elif part.get("text"):
                    self.text.append(str(part["text"]))
                    if on_token is not None:
                        on_token(str(part["text"]))

    def generation(self, seen: dict[str, str]) -> Generation:
        finish = str(self.finish or "STOP")
        return Generation(
            text="".join(self.text),
            tool_calls=self.calls,
            prompt_tokens=as_int(self.usage.get("promptTokenCount")),
            # Thinking tokens are billed as output: they count as completion.
            completion_tokens=as_int(self.usage.get("candidatesTokenCount"))
            + as_int(self.usage.get("thoughtsTokenCount")),
            finish_reason="tool_calls" if self.calls else FINISH_REASONS.get(finish, finish.lower()),
            model_answered=self.model,
            telemetry=seen,
        )


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _response_object(result: str) -> dict[str, Any]:
    """A tool result as the JSON object `functionResponse.response` must be."""
    try:
        value = json.loads(result)
    except json.JSONDecodeError:
        return {"output": result}
    return value if isinstance(value, dict) else {"output": value}


def _retry_delay(body: bytes) -> float | None:
    try:
        data: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    data = data[0] if isinstance(data, list) and data else data
    error = data.get("error") if isinstance(data, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None


async def adc_token() -> str:
    """An access token from Google application-default credentials, fetched now.

    `google.auth` is optional: without it, or without credentials, the route is refused with
    what to do. Refreshing is blocking I/O (google.auth uses `requests`), so it runs in a thread.
    """
    return await GoogleAdc()()


class GoogleAdc:
    """A token provider that keeps the credentials and refreshes the token only when it is stale."""

    def __init__(self) -> None:
        self._credentials: Any = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        async with self._lock:
            return await asyncio.to_thread(self._token)

    def _token(self) -> str:
        try:
            auth = importlib.import_module("google.auth")
            exceptions = importlib.import_module("google.auth.exceptions")
            transport = importlib.import_module("google.auth.transport.requests")
        except ImportError:
            raise RouteRefused("vertex", NO_ADC + " (and install google-auth)") from None
        try:
            if self._credentials is None:
                self._credentials, _project = auth.default(scopes=SCOPES)
            if not self._credentials.valid:
                self._credentials.refresh(transport.Request())
        except exceptions.DefaultCredentialsError:
            raise RouteRefused("vertex", NO_ADC) from None
        except exceptions.TransportError as exc:
            raise NetworkUnreachable(
                f"route 'vertex': Google's token endpoint: {type(exc).__name__}"
            ) from None
        except exceptions.RefreshError:
            self._credentials = None
            raise RouteRefused(
                "vertex",
                "Google refused to refresh the application-default credentials: "
                "run `gcloud auth application-default login` again",
            ) from None
        token = self._credentials.token
        if not isinstance(token, str) or not token:
            raise RouteRefused("vertex", NO_ADC)
        return token
