"""What an HTTP tool call's arguments may be: the method, the URL, the headers (and the secrets
they reference), the body or JSON, and the schemas a model's call is constrained by. Checked when the
call is made, before anything is stored, so a bad call is refused by the tool that would send it."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

from waystation import __version__
from waystation.adapters.tools.secret_refs import HEADER_VALUE, Secrets, checked_reference
from waystation.errors import InvalidArguments

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


def shown(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    return names.get(type(value), type(value).__name__)


def check_keys(tool: str, args: object, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(args, Mapping):
        raise InvalidArguments(tool, f"arguments must be a JSON object, not {json_type(args)}")
    unknown = sorted(str(key) for key in args if key not in allowed)
    if unknown:
        raise InvalidArguments(
            tool, f"unknown argument(s) {', '.join(unknown)}; {tool} takes {', '.join(allowed)}"
        )
    return args


def check_url(tool: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArguments(tool, f"url is required and must be a string, not {json_type(value)}")
    problem = f"url must be an absolute http:// or https:// URL with a host, not {shown(value)}"
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


def check_headers(tool: str, value: object, refs: bool, secrets: Secrets | None) -> dict[str, Any]:
    """Lower-cased names to values: text, or (with `refs`) a reference {"secret": NAME}."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArguments(tool, f"headers must be an object of strings, not {json_type(value)}")
    headers: dict[str, Any] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise InvalidArguments(
                tool, f"header name {shown(name)} is not a valid HTTP header name (no space, colon, CR, LF)"
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
            raise InvalidArguments(tool, f"header {name!r} must have a string value, not {json_type(text)}")
        if "\r" in text or "\n" in text:
            raise InvalidArguments(tool, f"header {name!r} value must not contain CR or LF")
        if not HEADER_VALUE.fullmatch(text):
            raise InvalidArguments(tool, f"header {name!r} value must be printable ASCII")
        # HTTP ignores surrounding whitespace, and h11 refuses to send it.
        headers[lowered] = text.strip(" \t")
    return headers


def check_size(tool: str, what: str, encoded: bytes) -> None:
    if len(encoded) > MAX_REQUEST_BODY_BYTES:
        raise InvalidArguments(
            tool, f"{what} is {len(encoded)} bytes; the limit is {MAX_REQUEST_BODY_BYTES} bytes (1 MiB)"
        )


def encode_json(value: object) -> bytes:
    # The same encoding httpx uses for json=, done here so the size check measures what is sent.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def host_of_url(url_text: str) -> str:
    url = httpx.URL(url_text)
    host = f"[{url.host}]" if ":" in url.host else url.host  # an IPv6 literal keeps its brackets
    return host if url.port is None else f"{host}:{url.port}"


@functools.lru_cache(maxsize=256)
def parsed_url(url_text: str) -> httpx.URL:
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
# to the objects the user wrote, as it pins `url` (reply_grammar._pin_json). What a model produces is
# validated against `parameters` and then gated (station/turns/writes.py); a task posted to the
# API may still use any method, and `body`.
READ_CALL: dict[str, object] = {
    "type": "object",
    "properties": {"method": {"enum": ["GET", "HEAD"]}, "url": URL_SCHEMA},
    "required": ["method", "url"],
}
WRITE_CALL: dict[str, object] = {
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
WRITE_CALL_WITHOUT_JSON: dict[str, object] = {
    "type": "object",
    "properties": {"method": {"enum": list(WRITE_METHODS)}, "url": URL_SCHEMA},
    "required": ["method", "url"],
}
