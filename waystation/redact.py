"""What outputs show of a task: credentials stay in the stored row (0600), never in what the API,
the command line or the event stream show."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "[redacted]"
# A header or query parameter whose name says it may hold a credential.
CREDENTIAL_NAME = re.compile(r".*(key|token|secret|auth|cookie|passw|signature).*", re.IGNORECASE)


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
    """`url` without the password of its userinfo and the values of credential-named query parameters."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{REDACTED}@{host}" if ":" in user else f"{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(CREDENTIAL_NAME.fullmatch(name) for name, _ in pairs):
            query = urlencode([(n, REDACTED if CREDENTIAL_NAME.fullmatch(n) else v) for n, v in pairs])
    return (
        urlunsplit(parts._replace(netloc=netloc, query=query))
        if (netloc, query) != (parts.netloc, parts.query)
        else url
    )
