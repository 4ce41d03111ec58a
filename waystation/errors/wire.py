"""How an error crosses the socket: its JSON body, and the constructor arguments it carries so the
reader can build the same error again (errors.WaystationError.details / from_json)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any


def error_body(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, object]:
    """`{"error": {"code", "message", "details"}}`, details only when there are any."""
    error: dict[str, object] = {"code": code, "message": message}
    if details:
        error["details"] = dict(details)
    return {"error": error}


def constructor_fields(cls: type[Exception]) -> tuple[str, ...]:
    """The names of the arguments `cls(...)` takes (each kept as an attribute of that name)."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in parameters if p.kind in plain)


def json_value(value: object) -> Any:
    """A field as JSON: numbers, text, booleans and None as they are, lists and string-keyed
    dicts item by item, anything else (a path) as its text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    return str(value)
