"""The write gate: a model writes only JSON the user gave, or to a host `[tools] allow_writes` lists.

A model's write (`http_request` with POST, PUT or PATCH) carries a JSON object in `json`, sent as
application/json, and goes out only when the user's messages contain that object (compared as
parsed JSON) or its host is listed; otherwise it is refused with a tool result saying why, and
never sent nor parked, online or offline. This is the URL gate's rule (calls.refusal) applied to
bodies: a 135M model asked to "POST the JSON {...}" with a free body to fill posted the URL as an
octet-stream, and the turn ended ok. Pure functions over plain data, as calls.refusal is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from waystation.adapters.tools.http_args import WRITE_METHODS
from waystation.adapters.tools.reach import host_listed


def is_write(args: Mapping[str, Any]) -> bool:
    """Whether a call writes: a write method, or a body of any kind (on whatever method)."""
    return args.get("method") in WRITE_METHODS or args.get("body") is not None or "json" in args


def write_refusal(
    args: Mapping[str, Any], objects: Sequence[Mapping[str, Any]], allow_writes: Sequence[str]
) -> str | None:
    """Why a model's call may not write what it carries (None when it may, or does not write)."""
    if not is_write(args):
        return None
    method = args.get("method", "GET")
    content_type = args.get("headers", {}).get("content-type", "application/json")
    if args.get("body") is not None:
        problem = f"a model's {method} carries a JSON object in json, not a body string"
    elif not isinstance(args.get("json"), dict):
        problem = f"a model's {method} carries a JSON object in json, and this one has none"
    elif not content_type.lower().startswith("application/json"):
        problem = f"a model's write is sent as application/json, not {content_type}"
    elif users_own(args["json"], objects) is not None or host_listed(args["url"], allow_writes):
        return None
    else:
        host = httpx.URL(args["url"]).host
        problem = (
            f"this JSON is not an object the user's messages contain (nor is {host} on [tools] allow_writes)"
        )
    return f"refused: {problem}; write only JSON the user gave (or list the host in [tools] allow_writes)"


def as_the_user_wrote(args: dict[str, Any], objects: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The call with its `json` replaced by the user's own equal object, when there is one: what
    is sent is then what the user wrote (their key order, 7 and not 7.0), whatever order or
    spelling the model copied it in."""
    payload = args.get("json")
    own = users_own(payload, objects) if isinstance(payload, dict) else None
    return args if own is None else {**args, "json": own}


def users_own(payload: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The user's object equal to `payload` as parsed JSON (None when there is none)."""
    return next((o for o in objects if same_json(o, payload)), None)


def same_json(a: object, b: object) -> bool:
    """Equality as JSON values: keys in any order, 1 equals 1.0, but true is not 1 (as Python's ==
    would have it) and a string is never a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
