"""What the provider routes share: one httpx client shape, error translation, SSE and NDJSON.

A provider route is a `ModelBackend` that talks HTTP. Everything it can meet on the wire is
translated here, by exception type and status code, into the one exception tree:

    401, 403                         RouteRefused    the credential (named by its variable) is refused
    408, 425, 429, 5xx               ProviderError   may pass; carries the provider's retry hint
    other 3xx/4xx                    ProviderRejected the request itself is wrong (model, body)
    connect, DNS, timeout, reset     NetworkUnreachable

No error text carries a credential: request headers are never shown, a provider's message is
scrubbed of anything that overlaps the key before it is kept, and an httpx error's own text is
dropped where it could quote a header (h11 quotes an illegal header value in full).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx

from waystation import __version__, timeutil
from waystation.adapters.models.base import Generation, GenerationRequest, TokenSink, ToolSpec
from waystation.contract import AuthLane, CostLane
from waystation.errors import (
    NetworkUnreachable,
    ProviderError,
    ProviderRejected,
    RouteRefused,
    WaystationError,
)
from waystation.sse import SseParser

USER_AGENT = f"waystation/{__version__}"
# Per operation: a long silent read is a model thinking, not a dead link; the turn engine's
# wall-clock limit bounds the whole turn.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=30.0, pool=10.0)
ERROR_BODY_LIMIT = 64 * 1024
DETAIL_CHARS = 300
TELEMETRY_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "ratelimit-")
TELEMETRY_NAMES = ("retry-after", "retry-after-ms")
TRANSIENT_STATUSES = frozenset({408, 425, 429})
SECRET_WINDOW = 6  # a shown text never shares this many consecutive characters with a secret
_SECRET_PATTERNS = re.compile(
    r"(?i)(bearer\s+\S+|\b(?:sk|xai|pk|ya29|aiza|key)[-_.][-_.a-z0-9*]{6,})",
)
_WORD = re.compile(r"[^\s\"'`,;()\[\]{}<>]+")
_CODE = re.compile(r"^[A-Za-z_]{1,64}$")


def new_client() -> httpx.AsyncClient:
    """A client for one provider: no redirects (a 3xx from an API is a misconfigured base URL)."""
    return httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, headers={"user-agent": USER_AGENT})


def function_tools(tools: Iterable[ToolSpec]) -> list[dict[str, Any]]:
    """Tools in the OpenAI function shape, which Ollama's chat API takes as well."""
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": dict(t.parameters)},
        }
        for t in tools
    ]


def sampling_asked(request: GenerationRequest) -> dict[str, float]:
    """OpenAI's top_p and penalties, by the names OpenAI-compatible APIs and Ollama's options
    share, where the client asked for them (the rest stay the provider's defaults)."""
    asked = {
        "top_p": request.top_p,
        "frequency_penalty": request.frequency_penalty or None,
        "presence_penalty": request.presence_penalty or None,
    }
    return {name: value for name, value in asked.items() if value is not None}


def new_call_id() -> str:
    """For providers whose tool calls carry no id (Ollama, Gemini): the engine needs one."""
    return f"call_{uuid.uuid4().hex[:24]}"


def text_of(content: Any) -> str:
    """An OpenAI message's content as text: a string, None, or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content)
    return json.dumps(content)


def json_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as a dict, whether sent as an object or as a JSON string."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw.strip():
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` without anything that looks like a credential or overlaps one of `secrets`."""
    grams = {
        secret[i : i + SECRET_WINDOW]
        for secret in secrets
        if len(secret) >= SECRET_WINDOW
        for i in range(len(secret) - SECRET_WINDOW + 1)
    }

    def word(match: re.Match[str]) -> str:
        token = match.group(0)
        if any(token[i : i + SECRET_WINDOW] in grams for i in range(len(token) - SECRET_WINDOW + 1)):
            return "[redacted]"
        return token

    cleaned = _SECRET_PATTERNS.sub("[redacted]", text)
    cleaned = _WORD.sub(word, cleaned)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= DETAIL_CHARS else cleaned[: DETAIL_CHARS - 1] + "…"


def error_fields(body: bytes) -> tuple[str, str]:
    """(message, code) from a provider's error body: OpenAI, Anthropic, Ollama and Google shapes."""
    try:
        data: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace").strip()
        return (text.splitlines()[0] if text else ""), ""
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return str(data), ""
    error = data.get("error", data)
    if isinstance(error, str):
        return error, ""
    if not isinstance(error, dict):
        return json.dumps(error), ""
    message = error.get("message")
    code = error.get("type") or error.get("status") or error.get("code") or ""
    return (str(message) if message is not None else ""), str(code)


def retry_after_s(headers: httpx.Headers) -> float | None:
    """The provider's retry hint: `retry-after-ms` (OpenAI's, finer) before `Retry-After`."""
    millis = timeutil.retry_after_seconds(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    return timeutil.retry_after_seconds(headers.get("retry-after"))


def telemetry(headers: httpx.Headers) -> dict[str, str]:
    """Rate-limit and quota headers, as the provider sent them."""
    return {
        name.lower(): value
        for name, value in headers.items()
        if name.lower().startswith(TELEMETRY_PREFIXES) or name.lower() in TELEMETRY_NAMES
    }


def host_of(url: str) -> str:
    """The host[:port] of a URL, for messages: never the path or query, which can carry secrets."""
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or url


class HttpRoute:
    """The shared half of a provider backend: identity, the client, sending and failing well.

    `route` is the route name (openai, deepseek, compatible, ...), `name` the provider it names
    in receipts. `credential_hint` is what to tell the user to check when the provider refuses
    the credential (an environment variable's name, never its value); `secrets` are scrubbed
    from any provider text shown.
    """

    def __init__(
        self,
        *,
        route: str,
        provider: str,
        model: str,
        client: httpx.AsyncClient | None,
        credential_hint: str,
        auth_lane: AuthLane,
        cost_lane: CostLane,
        secrets: Iterable[str] = (),
    ) -> None:
        self.route = route
        self.name = provider
        self.model_path = model
        self.auth_lane = auth_lane
        self.cost_lane = cost_lane
        self.credential_hint = credential_hint
        self._secrets = [s for s in secrets if s]
        self._client = client if client is not None else new_client()

    @property
    def loaded(self) -> bool:
        return True  # nothing to load on this host: the model lives at the provider

    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        """One assistant message; text deltas go to `on_token`, which also asks for streaming."""
        raise NotImplementedError

    async def unload(self) -> None:
        return None

    async def close(self) -> None:
        await self._client.aclose()

    def add_secret(self, secret: str) -> None:
        """A credential obtained later (an OAuth access token) that must never be shown."""
        if secret and secret not in self._secrets:
            # Tokens rotate (hourly for Google's): keep the last few, not every one ever seen.
            self._secrets = [*self._secrets, secret][-8:]

    @asynccontextmanager
    async def post(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[httpx.Response]:
        """POST `body` as JSON; yield the response (streaming) once its status says success.

        Network failures while the body is read, inside the `async with`, are translated too.
        """
        request = self._client.build_request("POST", url, json=body, headers=headers)
        host = host_of(url)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._translate(exc, host) from None
        try:
            if not 200 <= response.status_code < 300:
                body_bytes = await _read_limited(response)
                raise self.status_error(response.status_code, response.headers, body_bytes)
            yield response
        except httpx.HTTPError as exc:
            raise self._translate(exc, host) from None
        finally:
            await response.aclose()

    def _translate(self, exc: httpx.HTTPError, host: str) -> WaystationError:
        # By type, never by message text; and the message is not kept where it could quote a
        # header (LocalProtocolError) or a URL with a query.
        if isinstance(exc, httpx.TimeoutException):
            return NetworkUnreachable(
                f"route {self.route!r}: {host}: no answer in time ({type(exc).__name__})"
            )
        if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError | httpx.ProxyError):
            return NetworkUnreachable(f"route {self.route!r}: {host}: {type(exc).__name__}")
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return self.refused(f"the provider URL for {host} cannot be used ({type(exc).__name__})")
        if isinstance(exc, httpx.LocalProtocolError):
            return self.refused(
                f"the request cannot be sent ({type(exc).__name__}): check {self.credential_hint} "
                "for stray characters"
            )
        return ProviderRejected(self.route, 0, f"{host}: {type(exc).__name__}")

    def refused(self, reason: str) -> RouteRefused:
        return RouteRefused(
            self.route, reason, provider=self.name, auth_lane=self.auth_lane, cost_lane=self.cost_lane
        )

    def status_error(self, status: int, headers: httpx.Headers, body: bytes) -> WaystationError:
        """The error for a non-2xx answer."""
        message, code = error_fields(body)
        if status in (401, 403):
            # Nothing of the provider's text: some echo part of the key they were sent.
            kind = f", {code}" if _CODE.match(code) else ""
            return self.refused(
                f"the provider refused the credential (HTTP {status}{kind}): check {self.credential_hint}"
            )
        if status in TRANSIENT_STATUSES or status >= 500:
            return ProviderError(self.route, status, retry_after_s(headers))
        if 300 <= status < 400:
            where = host_of(headers.get("location", "")) or "elsewhere"
            return self.rejected(status, f"redirected to {where}: check the route's base URL")
        return self.rejected(status, message or code or "no detail given")

    def rejected(self, status: int, detail: str) -> ProviderRejected:
        return ProviderRejected(self.route, status, redact(detail, self._secrets))

    def malformed(self, what: str) -> ProviderRejected:
        return ProviderRejected(self.route, 200, f"the provider sent {what} this route cannot read")


async def _read_limited(response: httpx.Response) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= ERROR_BODY_LIMIT:
            break
    return bytes(data[:ERROR_BODY_LIMIT])


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs from a text/event-stream body."""
    parser = SseParser()
    async for line in response.aiter_lines():
        for found in parser.feed(line):
            yield found.event, found.data
    for found in parser.end():
        yield found.event, found.data


def loads_object(route: HttpRoute, text: str | bytes) -> dict[str, Any]:
    """A JSON object from the provider, or ProviderRejected saying the answer was unreadable."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise route.malformed("JSON") from None
    if not isinstance(value, dict):
        raise route.malformed("a JSON value that is not an object")
    return value


async def read_object(route: HttpRoute, response: httpx.Response) -> dict[str, Any]:
    return loads_object(route, await response.aread())


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
