"""Which work from the hub a host takes (issue 20): the hub is a trust boundary, so a message on
`waystation.<host>.work` is only a request until it proves who sent it and asks for no more than
`[fleet]` allows.

- Signed: the header `Waystation-Signature` holds one C2SP signed-note signature line
  (`— NAME BASE64`) by a key `[fleet] work_keys` lists, over the note whose text is the message
  body plus one newline (checkpoints.py checks it: the same code as the receipts' checkpoints).
- Its secrets: every `{"secret": NAME}` it holds is a name `[fleet] work_secrets` lists.
- Its destination: a host `[fleet] work_hosts` lists, or (none listed) any public host; loopback,
  link-local and private addresses only when listed (as Smokescreen's default deny list).

Pure functions: the body, the header, the destination and what it resolves to come in; a reason
to refuse (text for the log) or None comes out. The agent resolves names (station/fleet.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from waystation.addresses import is_public, literal_address
from waystation.errors import BadCheckpoint, MalformedRequest
from waystation.receipts.checkpoints import SigningKey, VerifierKey

SIGNATURE_HEADER = "Waystation-Signature"
# A task body nests a few levels (the body, its args, a JSON body inside those); far deeper is an
# attack on the parser, refused before parsing.
MAX_WORK_DEPTH = 64


def work_body(data: bytes) -> dict[str, Any]:
    """A work message's body as a `POST /v1/tasks` body, or MalformedRequest saying why not. The
    nesting is bounded before parsing: json.loads recurses once per level."""
    if too_deep(data, MAX_WORK_DEPTH):
        raise MalformedRequest(f"not a task: JSON nested over {MAX_WORK_DEPTH} levels deep")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, an integer of 4,300+ digits
        raise MalformedRequest(f"not a task: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedRequest("not a task: the body is not a JSON object")
    return body


# Brackets, and strings (whose brackets do not count), in a JSON text.
_NESTING = re.compile(rb'[\[{]|[\]}]|"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def too_deep(data: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays and objects over `limit` deep; cheap (stops at the first
    level over), and loose on invalid JSON, which the parser refuses anyway."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for token in _NESTING.finditer(data):
        first = token[0][:1]
        if first in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif first in (b"]", b"}"):
            depth -= 1
    return False


def note_text(body: bytes) -> str:
    """The signed note's text for a message body (UnicodeDecodeError when it is not UTF-8)."""
    return body.decode("utf-8") + "\n"


def sign_work(body: bytes, key: SigningKey) -> dict[str, str]:
    """The header that makes `body` work a host with `key`'s verifier in work_keys takes."""
    return {SIGNATURE_HEADER: key.signature_line(note_text(body))}


def signature_refusal(body: bytes, signature: str | None, keys: Sequence[VerifierKey]) -> str | None:
    """Why the message is not signed by a trusted key; None when it is."""
    if not signature:
        return f"unsigned (no {SIGNATURE_HEADER} header)"
    if not keys:
        return "signed, but [fleet] work_keys lists no key: this host takes no work"
    try:
        text = note_text(body)
    except UnicodeDecodeError:
        return "the body is not UTF-8 text"
    problems = []
    for key in keys:
        try:
            key.check(text, [signature])
        except BadCheckpoint as exc:
            problems.append(exc.message)
            continue
        return None
    mismatch = [p for p in problems if "does not match" in p]
    return f"bad signature: {mismatch[0]}" if mismatch else "signed by no key [fleet] work_keys lists"


def referenced_secrets(args: Any) -> set[str]:
    """Every secret name the arguments reference (`{"secret": NAME}`, at any depth)."""
    found: set[str] = set()
    stack = [args]
    while stack:  # a loop, not recursion: the arguments' depth is the sender's choice
        value = stack.pop()
        if isinstance(value, dict):
            name = value.get("secret")
            if len(value) == 1 and isinstance(name, str):
                found.add(name)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


def secrets_refusal(args: Any, allowed: Iterable[str]) -> str | None:
    unlisted = sorted(referenced_secrets(args) - set(allowed))
    if not unlisted:
        return None
    return f"names secret {', '.join(unlisted)}, which [fleet] work_secrets does not list"


def inner_address(host: str) -> bool:
    """Whether a host name or address is not the public internet's: `localhost` and
    `*.localhost` (RFC 6761), or an address waystation/addresses.py does not call public
    (loopback, link-local cloud metadata, private, ...). Another name is judged by what it resolves to."""
    bare = host.strip("[]").lower().rstrip(".")
    if bare == "localhost" or bare.endswith(".localhost"):
        return True
    address = literal_address(bare)
    return address is not None and not is_public(address)


def split_destination(destination: str) -> tuple[str, int | None]:
    """`host[:port]` (an IPv6 address in brackets) as (host, port)."""
    host, colon, port = destination.rpartition(":")
    if colon and port.isdigit() and (not host.startswith("[") or host.endswith("]")):
        return host.lower(), int(port)
    return destination.lower(), None


def destination_refusal(
    destination: str, default_port: int | None, addresses: Iterable[str], allowed: Sequence[str]
) -> str | None:
    """Why work may not reach `destination` (`host[:port]`, as a tool names it), which resolves to
    `addresses` now; None when it may. A listed host may be anything; with none listed, any host
    that is not (and does not resolve to) an inner address."""
    host, port = split_destination(destination)
    if allowed:
        written = {host, f"{host}:{port or default_port}"}
        if written & {entry.lower() for entry in allowed}:
            return None
        return f"reaches {destination}, which [fleet] work_hosts does not list"
    inner = [a for a in (host, *addresses) if inner_address(a)]
    if inner:
        return (
            f"reaches {destination} ({inner[0]}), a loopback, link-local or private address: "
            "list it in [fleet] work_hosts to allow it"
        )
    return None
