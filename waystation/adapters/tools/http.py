"""The HTTP tools: http_request (a method, headers, a body or JSON) and web_fetch (GET a URL)."""

from __future__ import annotations

import codecs
import contextlib
import functools
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from waystation import timeutil
from waystation.adapters.tools.base import (
    MAX_RESULT_BYTES,
    DeliveryResult,
    kept_headers,
)
from waystation.adapters.tools.client import DeliveryClient
from waystation.adapters.tools.deadline import Deadline
from waystation.adapters.tools.http_args import (
    METHODS,
    READ_CALL,
    URL_SCHEMA,
    USER_AGENT,
    WRITE_CALL,
    WRITE_CALL_WITHOUT_JSON,
    check_headers,
    check_keys,
    check_size,
    check_url,
    encode_json,
    host_of_url,
    json_type,
    parsed_url,
    shown,
)
from waystation.adapters.tools.reach import REACH, public_only
from waystation.adapters.tools.redirects import MAX_REDIRECTS, redirected
from waystation.adapters.tools.secret_refs import Secrets, resolved
from waystation.errors import DeliveryError, InvalidArguments, NetworkUnreachable
from waystation.ports import idempotency_key_problem
from waystation.redact import hidden_values, without_values


async def _send(
    tool: str,
    client: DeliveryClient,
    request_args: Mapping[str, Any],
    idempotency_key: str,
    timeout_s: float,
    secret_headers: frozenset[str] = frozenset(),
    allow_hosts: Sequence[str] = (),
) -> DeliveryResult:
    """One HTTP exchange. No answer raises NetworkUnreachable; any answer is a DeliveryResult. A
    model's call (`reach` in its args) is held to public addresses where reach.py says, on every
    hop; one that would connect elsewhere raises DestinationRefused."""
    problem = idempotency_key_problem(idempotency_key)
    if problem is not None:  # refused at enqueue; a task stored by an older version may have one
        raise InvalidArguments(tool, problem)
    url = request_args["url"]
    headers = {**request_args.get("headers", {}), "idempotency-key": idempotency_key}
    headers["user-agent"] = USER_AGENT
    content: bytes | None = None
    if request_args.get("json") is not None:
        content = encode_json(request_args["json"])
        headers.setdefault("content-type", "application/json")
    elif request_args.get("body") is not None:
        content = request_args["body"].encode()
    # Built as is, not through a client: no default headers, cookies or base URL are merged in.
    request = httpx.Request(
        request_args.get("method", "GET"),
        parsed_url(url),
        headers=headers,
        content=content,
        # No timeout per operation (connect, each read): one deadline bounds the whole delivery, so
        # a server trickling a byte at a time cannot hold a queue slot forever, and a pause of the
        # agent does not turn an answer that came meanwhile into a timeout (see deadline.py).
        extensions={"timeout": httpx.Timeout(None).as_dict()},
    )
    deadline = Deadline(timeout_s)
    started = time.monotonic()
    reach = request_args.get(REACH)
    try:
        async with deadline.bound():
            called = request.url
            response = await client.send(request, public_only=public_only(reach, called, allow_hosts))
            for _ in range(MAX_REDIRECTS):
                follow = redirected(request, response, secret_headers)
                if follow is None:
                    break
                await response.aclose()
                request = follow
                held = public_only(reach, request.url, allow_hosts, called)
                response = await client.send(request, public_only=held)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise NetworkUnreachable(f"{host_of_url(url)}: no answer within {timeout_s:g}s") from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        # The host only, never the URL: a URL can carry credentials, and this text is stored.
        raise NetworkUnreachable(f"{host_of_url(url)}: {type(exc).__name__}: {exc}") from exc
    except (httpx.LocalProtocolError, httpx.UnsupportedProtocol) as exc:
        # Validation should have caught it; retrying would fail the same way.
        raise InvalidArguments(tool, f"the request cannot be sent: {exc}") from exc
    except httpx.TooManyRedirects as exc:
        raise DeliveryError(f"{host_of_url(url)}: too many redirects") from exc

    data = bytearray()
    truncated = False
    try:
        async with deadline.bound():
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_RESULT_BYTES:
                    truncated = True
                    break
    except (TimeoutError, httpx.TransportError, httpx.DecodingError):
        # The status and headers are in: the destination has answered, and the queue must settle
        # on that answer. Calling it unreachable now would re-deliver a request that has already
        # taken effect. What we got of the body is kept and marked as incomplete.
        truncated = True
    finally:
        with contextlib.suppress(httpx.TransportError):
            await response.aclose()
    # The answer is stored, shown and read by models: a destination echoing a credential it was
    # sent (an echo service, an error page quoting the request) must not echo it there.
    hidden = hidden_values(url, request_args.get("headers", {}), secret_headers)
    body = _decode(bytes(data[:MAX_RESULT_BYTES]), response.headers.get("content-type"), final=not truncated)
    return DeliveryResult(
        status=response.status_code,
        headers={k: without_values(v, hidden) for k, v in kept_headers(response.headers).items()},
        body=without_values(body, hidden),
        truncated=truncated,
        retry_after_s=timeutil.retry_after_seconds(response.headers.get("retry-after")),
        duration_ms=round((time.monotonic() - started) * 1000),
    )


def _decode(data: bytes, content_type: str | None, *, final: bool) -> str:
    encoding = _encoding_of(content_type)
    # Not final when cut short: a character split by the cut is dropped rather than garbled.
    return codecs.getincrementaldecoder(encoding)(errors="replace").decode(data, final=final)


@functools.lru_cache(maxsize=64)
def _encoding_of(content_type: str | None) -> str:
    """The codec a Content-Type's charset names (utf-8 when none or unknown).

    Cached: parsing the header through email.message (as httpx does) is a visible share of a
    delivery's CPU, and a queue's answers mostly repeat a handful of content types.
    """
    charset = httpx.Response(200, headers={"content-type": content_type or ""}).charset_encoding
    if charset:
        with contextlib.suppress(LookupError):
            return codecs.lookup(charset).name
    return "utf-8"


class HttpRequestTool:
    name = "http_request"
    description = (
        "Send an HTTP request. Delivered now when online, otherwise queued and delivered once with "
        "an Idempotency-Key header when connectivity returns."
    )
    needs_network = True
    parameters: dict[str, object] = {
        "type": "object",
        "properties": {
            "method": {"type": "string", "enum": list(METHODS), "default": "GET"},
            "url": URL_SCHEMA,
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {
                "type": "string",
                "description": "request body as text (tasks only: a model writes json)",
            },
            "json": {
                "type": "object",
                "description": "for POST, PUT, PATCH: a JSON object the user gave, sent as application/json",
            },
        },
        "required": ["url"],
        "additionalProperties": False,
    }
    grammar_parameters: dict[str, object] = {"anyOf": [READ_CALL, WRITE_CALL]}
    # When the user gave no JSON object (and [tools] allow_writes lists no host), a write could
    # only carry what the model made up: there is no `json` to fill (and the write is refused).
    grammar_parameters_without_json: dict[str, object] = {"anyOf": [READ_CALL, WRITE_CALL_WITHOUT_JSON]}
    _keys = ("method", "url", "headers", "body", "json")

    def __init__(self, secrets: Secrets | None = None, allow_hosts: Sequence[str] = ()) -> None:
        self._secrets = secrets  # where header references resolve (None: nowhere, in this process)
        self._allow_hosts = tuple(allow_hosts)  # [tools] allow_hosts: any address, on any hop

    def validate(self, args: object, *, allow_secrets: bool = False) -> dict[str, Any]:
        given = check_keys(self.name, args, self._keys)
        method = given.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise InvalidArguments(self.name, f"method {shown(method)} is not one of {', '.join(METHODS)}")
        normalized: dict[str, Any] = {
            "method": method.upper(),
            "url": check_url(self.name, given.get("url")),
            "headers": check_headers(self.name, given.get("headers"), allow_secrets, self._secrets),
        }
        # null counts as absent for both: models often send every optional key.
        body, payload = given.get("body"), given.get("json")
        if body is not None and payload is not None:
            raise InvalidArguments(self.name, "give body or json, not both")
        if body is not None:
            if not isinstance(body, str):
                raise InvalidArguments(
                    self.name, f"body must be a string, not {json_type(body)} (use json for a JSON value)"
                )
            check_size(self.name, "body", body.encode())
            normalized["body"] = body
        elif payload is not None:
            try:
                encoded = encode_json(payload)
            except (TypeError, ValueError):
                raise InvalidArguments(self.name, "json must be a JSON value (no NaN or Infinity)") from None
            check_size(self.name, "json", encoded)
            normalized["json"] = json.loads(encoded)  # plain JSON types only, detached from the caller's
        return normalized

    def destination_host(self, args: Mapping[str, Any]) -> str:
        return host_of_url(args["url"])

    async def deliver(
        self, client: DeliveryClient, args: Mapping[str, Any], idempotency_key: str, timeout_s: float
    ) -> DeliveryResult:
        headers = args.get("headers", {})
        secret_headers = frozenset(name for name, text in headers.items() if not isinstance(text, str))
        if secret_headers:
            args = {**args, "headers": resolved(self.name, headers, self._secrets)}
        return await _send(
            self.name, client, args, idempotency_key, timeout_s, secret_headers, self._allow_hosts
        )


class WebFetchTool:
    name = "web_fetch"
    description = "Fetch a web page (HTTP GET) and return its text, up to 64 KiB."
    needs_network = True
    # It only reads, as http_request's GET does: a turn where the user gave JSON to send does not
    # offer it (station/turns/calls.offer), since a small model picks it for "POST the JSON {...}".
    reads_only = True
    parameters: dict[str, object] = {
        "type": "object",
        "properties": {"url": URL_SCHEMA},
        "required": ["url"],
        "additionalProperties": False,
    }

    def __init__(self, allow_hosts: Sequence[str] = ()) -> None:
        self._allow_hosts = tuple(allow_hosts)  # [tools] allow_hosts: any address, on any hop

    def validate(self, args: object, *, allow_secrets: bool = False) -> dict[str, Any]:
        given = check_keys(self.name, args, ("url",))
        return {"url": check_url(self.name, given.get("url"))}

    def destination_host(self, args: Mapping[str, Any]) -> str:
        return host_of_url(args["url"])

    async def deliver(
        self, client: DeliveryClient, args: Mapping[str, Any], idempotency_key: str, timeout_s: float
    ) -> DeliveryResult:
        request_args = {"method": "GET", "url": args["url"], REACH: args.get(REACH)}
        return await _send(
            self.name, client, request_args, idempotency_key, timeout_s, allow_hosts=self._allow_hosts
        )
