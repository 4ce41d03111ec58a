"""The HTTP tools: http_request (a method, headers, a body or JSON) and web_fetch (GET a URL)."""

from __future__ import annotations

import codecs
import contextlib
import functools
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from waystation import __version__, timeutil
from waystation.adapters.tools.base import (
    MAX_RESULT_BYTES,
    DeliveryResult,
    kept_headers,
)
from waystation.adapters.tools.client import DeliveryClient
from waystation.adapters.tools.deadline import Deadline
from waystation.adapters.tools.reach import REACH, public_only
from waystation.adapters.tools.redirects import MAX_REDIRECTS, redirected
from waystation.adapters.tools.secret_refs import HEADER_VALUE, Secrets, checked_reference, resolved
from waystation.errors import DeliveryError, InvalidArguments, NetworkUnreachable
from waystation.ports import idempotency_key_problem
from waystation.redact import hidden_values, without_values

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# The methods a model writes with: its call carries a JSON object the user gave, or is refused
# (station/turns/writes.py holds the rule).
WRITE_METHODS = ("POST", "PUT", "PATCH")
USER_AGENT = f"waystation/{__version__}"

# Args are stored in the task row, echoed by the API and compared byte for byte when a client
# re-submits an idempotency key, and a parked task may wait days; a bounded body keeps all of that
# cheap and well under the socket API's 8 MiB request limit. A bigger body from a model is almost
# certainly a mistake, and it is better refused when the call is made than when it is delivered.
MAX_REQUEST_BODY_BYTES = 1024 * 1024

# RFC 9110 token: what a header name may be. Anything else (spaces, colons, CR/LF) could split
# or smuggle headers, and httpx/h11 would refuse it only at delivery time.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers the agent owns: the task's key must be the one the queue chose (that is the point of
# it), the User-Agent says who is calling, and the framing headers are computed from the body.
_RESERVED_HEADERS = {
    "idempotency-key": "is set by waystation from the task's idempotency key",
    "user-agent": f"is set by waystation ({USER_AGENT})",
    "content-length": "is computed from the body",
    "transfer-encoding": "is chosen by the HTTP client",
}


def _shown(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    return names.get(type(value), type(value).__name__)


def _check_keys(tool: str, args: object, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(args, Mapping):
        raise InvalidArguments(tool, f"arguments must be a JSON object, not {_json_type(args)}")
    unknown = sorted(str(key) for key in args if key not in allowed)
    if unknown:
        raise InvalidArguments(
            tool, f"unknown argument(s) {', '.join(unknown)}; {tool} takes {', '.join(allowed)}"
        )
    return args


def _check_url(tool: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArguments(tool, f"url is required and must be a string, not {_json_type(value)}")
    problem = f"url must be an absolute http:// or https:// URL with a host, not {_shown(value)}"
    # httpx quietly percent-encodes spaces (even in the host), so a URL with whitespace would be
    # delivered somewhere other than what it says.
    if any(ch <= " " or ch == "\x7f" for ch in value):
        raise InvalidArguments(tool, f"{problem} (it contains whitespace or control characters)")
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise InvalidArguments(tool, f"{problem} ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidArguments(tool, problem)
    if url.port is not None and not 0 < url.port < 65536:
        raise InvalidArguments(tool, f"{problem} (port {url.port} is out of range)")
    return value


def _check_headers(tool: str, value: object, refs: bool, secrets: Secrets | None) -> dict[str, Any]:
    """Lower-cased names to values: text, or (with `refs`) a reference {"secret": NAME}."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArguments(tool, f"headers must be an object of strings, not {_json_type(value)}")
    headers: dict[str, Any] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise InvalidArguments(
                tool, f"header name {_shown(name)} is not a valid HTTP header name (no space, colon, CR, LF)"
            )
        # Names are case-insensitive: lower case makes equal calls normalize equal.
        lowered = name.lower()
        if lowered in _RESERVED_HEADERS:
            raise InvalidArguments(tool, f"header {name!r} cannot be given: it {_RESERVED_HEADERS[lowered]}")
        if lowered in headers:
            raise InvalidArguments(tool, f"header {name!r} is given twice (header names ignore case)")
        if refs and isinstance(text, Mapping):
            headers[lowered] = checked_reference(tool, name, text, secrets)
            continue
        if not isinstance(text, str):
            raise InvalidArguments(tool, f"header {name!r} must have a string value, not {_json_type(text)}")
        if "\r" in text or "\n" in text:
            raise InvalidArguments(tool, f"header {name!r} value must not contain CR or LF")
        if not HEADER_VALUE.fullmatch(text):
            raise InvalidArguments(tool, f"header {name!r} value must be printable ASCII")
        # HTTP ignores surrounding whitespace, and h11 refuses to send it.
        headers[lowered] = text.strip(" \t")
    return headers


def _check_size(tool: str, what: str, encoded: bytes) -> None:
    if len(encoded) > MAX_REQUEST_BODY_BYTES:
        raise InvalidArguments(
            tool, f"{what} is {len(encoded)} bytes; the limit is {MAX_REQUEST_BODY_BYTES} bytes (1 MiB)"
        )


def _encode_json(value: object) -> bytes:
    # The same encoding httpx uses for json=, done here so the size check measures what is sent.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _destination_host(url_text: str) -> str:
    url = httpx.URL(url_text)
    host = f"[{url.host}]" if ":" in url.host else url.host  # an IPv6 literal keeps its brackets
    return host if url.port is None else f"{host}:{url.port}"


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
        content = _encode_json(request_args["json"])
        headers.setdefault("content-type", "application/json")
    elif request_args.get("body") is not None:
        content = request_args["body"].encode()
    # Built as is, not through a client: no default headers, cookies or base URL are merged in.
    request = httpx.Request(
        request_args.get("method", "GET"),
        _parsed_url(url),
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
        raise NetworkUnreachable(f"{_destination_host(url)}: no answer within {timeout_s:g}s") from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        # The host only, never the URL: a URL can carry credentials, and this text is stored.
        raise NetworkUnreachable(f"{_destination_host(url)}: {type(exc).__name__}: {exc}") from exc
    except (httpx.LocalProtocolError, httpx.UnsupportedProtocol) as exc:
        # Validation should have caught it; retrying would fail the same way.
        raise InvalidArguments(tool, f"the request cannot be sent: {exc}") from exc
    except httpx.TooManyRedirects as exc:
        raise DeliveryError(f"{_destination_host(url)}: too many redirects") from exc

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


@functools.lru_cache(maxsize=256)
def _parsed_url(url_text: str) -> httpx.URL:
    """httpx.URL is immutable, and a queue's tasks mostly go to a few URLs: parse each once."""
    return httpx.URL(url_text)


# The pattern also shapes a model's constrained output: a small model otherwise fills `url` with
# whatever word is nearest (a tool name, say) instead of the URL in its prompt.
URL_SCHEMA: dict[str, object] = {
    "type": "string",
    "description": "absolute http:// or https:// URL",
    "pattern": "^https?://[^ ]+$",
}


# What a grammar-constrained model fills in: no DELETE (a 135M model picked it for "fetch"), and a
# write's body only as a JSON object in `json` (sent as application/json): given a free `body`
# string, a small model asked to "POST the JSON {...}" posted the URL as an octet-stream. The
# object is bounded, so a small model cannot ramble to max_tokens, and the model backend pins it
# to the objects the user wrote, as it pins `url` (llamacpp._pin_json). What a model produces is
# validated against `parameters` and then gated (station/turns/writes.py); a task posted to the
# API may still use any method, and `body`.
_READ_CALL: dict[str, object] = {
    "type": "object",
    "properties": {"method": {"enum": ["GET", "HEAD"]}, "url": URL_SCHEMA},
    "required": ["method", "url"],
}
_WRITE_CALL: dict[str, object] = {
    "type": "object",
    "properties": {
        "method": {"enum": list(WRITE_METHODS)},
        "url": URL_SCHEMA,
        "json": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 100}},
    },
    "required": ["method", "url", "json"],
}
# With no JSON to send, a write has nothing to carry, and is always refused; it is still offered,
# so that a model asked to "POST to ..." says so, and is told why not, instead of being held to a
# GET of the same URL that nobody asked for (measured: reads still come out as GET).
_WRITE_CALL_WITHOUT_JSON: dict[str, object] = {
    "type": "object",
    "properties": {"method": {"enum": list(WRITE_METHODS)}, "url": URL_SCHEMA},
    "required": ["method", "url"],
}


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
    grammar_parameters: dict[str, object] = {"anyOf": [_READ_CALL, _WRITE_CALL]}
    # When the user gave no JSON object (and [tools] allow_writes lists no host), a write could
    # only carry what the model made up: there is no `json` to fill (and the write is refused).
    grammar_parameters_without_json: dict[str, object] = {"anyOf": [_READ_CALL, _WRITE_CALL_WITHOUT_JSON]}
    _keys = ("method", "url", "headers", "body", "json")

    def __init__(self, secrets: Secrets | None = None, allow_hosts: Sequence[str] = ()) -> None:
        self._secrets = secrets  # where header references resolve (None: nowhere, in this process)
        self._allow_hosts = tuple(allow_hosts)  # [tools] allow_hosts: any address, on any hop

    def validate(self, args: object, *, allow_secrets: bool = False) -> dict[str, Any]:
        given = _check_keys(self.name, args, self._keys)
        method = given.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise InvalidArguments(self.name, f"method {_shown(method)} is not one of {', '.join(METHODS)}")
        normalized: dict[str, Any] = {
            "method": method.upper(),
            "url": _check_url(self.name, given.get("url")),
            "headers": _check_headers(self.name, given.get("headers"), allow_secrets, self._secrets),
        }
        # null counts as absent for both: models often send every optional key.
        body, payload = given.get("body"), given.get("json")
        if body is not None and payload is not None:
            raise InvalidArguments(self.name, "give body or json, not both")
        if body is not None:
            if not isinstance(body, str):
                raise InvalidArguments(
                    self.name, f"body must be a string, not {_json_type(body)} (use json for a JSON value)"
                )
            _check_size(self.name, "body", body.encode())
            normalized["body"] = body
        elif payload is not None:
            try:
                encoded = _encode_json(payload)
            except (TypeError, ValueError):
                raise InvalidArguments(self.name, "json must be a JSON value (no NaN or Infinity)") from None
            _check_size(self.name, "json", encoded)
            normalized["json"] = json.loads(encoded)  # plain JSON types only, detached from the caller's
        return normalized

    def destination_host(self, args: Mapping[str, Any]) -> str:
        return _destination_host(args["url"])

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
        given = _check_keys(self.name, args, ("url",))
        return {"url": _check_url(self.name, given.get("url"))}

    def destination_host(self, args: Mapping[str, Any]) -> str:
        return _destination_host(args["url"])

    async def deliver(
        self, client: DeliveryClient, args: Mapping[str, Any], idempotency_key: str, timeout_s: float
    ) -> DeliveryResult:
        request_args = {"method": "GET", "url": args["url"], REACH: args.get(REACH)}
        return await _send(
            self.name, client, request_args, idempotency_key, timeout_s, allow_hosts=self._allow_hosts
        )
