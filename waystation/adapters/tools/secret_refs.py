"""A header that names a secret instead of holding it: `{"secret": "NAME"}`.

The task's row, its idempotency comparison and every output keep the reference; the value is
looked up (Secrets, built at the composition root) when the task is added, so a name set nowhere
is refused at once rather than hours later, and again when it is delivered, so the value sent is
the one current then. A secret gone by then kills the task with its name: nothing is sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

from waystation.config import SECRET_NAME
from waystation.errors import InvalidArguments

# Visible ASCII, space and tab. httpx encodes str header values as ASCII, so anything else would
# fail at delivery time instead of when it is checked.
HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_SHAPE = 'a secret reference is {"secret": "NAME"}'


class Secrets(Protocol):
    def resolve(self, name: str) -> str | None:
        """The secret's value now; None when it is set nowhere."""
        ...

    def unset(self, name: str) -> str:
        """Why `name` resolves nowhere, and where to put it."""
        ...


def checked_reference(
    tool: str, header: str, ref: Mapping[Any, Any], secrets: Secrets | None
) -> dict[str, str]:
    """The normalized reference; with `secrets`, its value must be set and fit a header now.
    Without (the command line adding a task while no agent runs: it cannot see the service's
    environment or credentials), the delivery alone finds out."""
    name = ref.get("secret")
    if set(ref) != {"secret"} or not isinstance(name, str):
        keys = ", ".join(sorted(map(str, ref))) or "no keys"
        raise InvalidArguments(tool, f"header {header!r}: {_SHAPE} and nothing else, not an object of {keys}")
    if not SECRET_NAME.fullmatch(name):
        raise InvalidArguments(
            tool,
            f"header {header!r}: secret name {name[:130]!r} must be a letter or _, then up to 127 "
            "letters, digits, _ . or -",
        )
    if secrets is not None:
        value(tool, name, secrets)
    return {"secret": name}


def resolved(tool: str, headers: Mapping[str, Any], secrets: Secrets | None) -> dict[str, str]:
    """`headers` with each reference replaced by its secret's value, for sending."""
    return {
        name: text if isinstance(text, str) else value(tool, text["secret"], _present(tool, secrets))
        for name, text in headers.items()
    }


def value(tool: str, name: str, secrets: Secrets) -> str:
    found = secrets.resolve(name)
    if found is None:
        raise InvalidArguments(tool, secrets.unset(name))
    # The value itself is never part of a message: it is the secret.
    found = found.strip(" \t")  # HTTP ignores surrounding whitespace, and h11 refuses to send it
    if not HEADER_VALUE.fullmatch(found):
        raise InvalidArguments(
            tool, f"secret {name} is not a valid header value: it must be printable ASCII, with no CR or LF"
        )
    return found


def _present(tool: str, secrets: Secrets | None) -> Secrets:
    if secrets is None:  # the agent always has them; a bare tool (a test's) does not
        raise InvalidArguments(tool, "secret references cannot be resolved here")
    return secrets
