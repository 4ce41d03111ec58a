"""What outputs show of a task: credentials stay in the stored row (0600), never in what the API,
the command line or the event stream show."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

REDACTED = "[redacted]"
# A shorter value is too common to tell from other text (and is no credential worth the name).
MIN_SECRET_CHARS = 6
# A header or query parameter whose name says it may hold a credential: any name holding one of the
# words (api_key, X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, access_token,
# client_secret, password, ...), or one of the short names that are credentials on their own:
# Azure's SAS `sig` (OpenTelemetry's url.query conventions redact it, with AWS's `Signature` and
# `AWSAccessKeyId`), OAuth's authorization `code` (RFC 6749, 4.1.2), `pwd` and `pass`.
CREDENTIAL_NAME = re.compile(
    r".*(key|token|secret|auth|cookie|passw|signature|credential|session).*|sig|code|pwd|pass",
    re.IGNORECASE,
)


def shown_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """A task's arguments as every output shows them (the API, the command line, events): header
    values and URL parts that may be credentials replaced by [redacted]. The stored row (0600)
    keeps them, since the delivery needs them. A reference to a secret ({"secret": "NAME"}) is
    shown as is: it names the secret, and holds nothing of it."""
    shown = dict(args)
    if isinstance(shown.get("url"), str):
        shown["url"] = shown_url(shown["url"])
    headers = shown.get("headers")
    if isinstance(headers, Mapping):
        shown["headers"] = {
            k: REDACTED if isinstance(v, str) and CREDENTIAL_NAME.fullmatch(k) else v
            for k, v in headers.items()
        }
    return shown


def shown_url(url: str) -> str:
    """`url` without the password of its userinfo and the values of credential-named parameters,
    in its query or its fragment (OAuth's implicit flow puts `access_token` there)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{REDACTED}@{host}" if ":" in user else f"{REDACTED}@{host}"
    query, fragment = _shown_params(parts.query), _shown_params(parts.fragment)
    shown = (netloc, query, fragment)
    if shown == (parts.netloc, parts.query, parts.fragment):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=fragment))


def _shown_params(text: str) -> str:
    """`name=value&...` with credential-named values redacted; as given when none is."""
    if "=" not in text:
        return text
    pairs = parse_qsl(text, keep_blank_values=True)
    if not any(CREDENTIAL_NAME.fullmatch(name) for name, _ in pairs):
        return text
    return urlencode([(n, REDACTED if CREDENTIAL_NAME.fullmatch(n) else v) for n, v in pairs])


def hidden_values(url: str, headers: Mapping[str, Any], secret_headers: Collection[str] = ()) -> list[str]:
    """The values a request's outputs hide (shown_args), and those a secret reference gave, as a
    destination's answer may echo them: whole, a credential header's token without its scheme
    (`Bearer ...`), a URL parameter as written and decoded, each also as a JSON string escapes it."""
    values = [
        v
        for k, v in headers.items()
        if isinstance(v, str) and (k in secret_headers or CREDENTIAL_NAME.fullmatch(k))
    ]
    values += [v.partition(" ")[2] for v in values if " " in v]
    parts = urlsplit(url)
    if parts.password:
        values.append(parts.password)
    for text in (parts.query, parts.fragment):
        for pair in text.split("&"):
            name, _, raw = pair.partition("=")
            if CREDENTIAL_NAME.fullmatch(unquote_plus(name)):
                values += [raw, unquote_plus(raw)]
    values += [json.dumps(v)[1:-1] for v in values]
    return [v for v in dict.fromkeys(values) if len(v) >= MIN_SECRET_CHARS]


def without_values(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each secret value replaced by [redacted]: what a destination
    answers may echo a header it was sent (an echo service, an error page quoting the request)."""
    for secret in sorted(secrets, key=len, reverse=True):  # a longer one first: it may hold another
        if len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, REDACTED)
    return text
