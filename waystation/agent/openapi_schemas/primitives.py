"""The building blocks the component schemas are written with: enums from the contract's Literals,
nullable values, references, objects, and the string shapes several schemas share."""

from __future__ import annotations

from typing import Any, get_args

Schema = dict[str, Any]


def enum(vocabulary: Any) -> Schema:
    """A string schema whose values are a contract Literal's."""
    return {"type": "string", "enum": list(get_args(vocabulary))}


def nullable(type_name: str, **extra: Any) -> Schema:
    return {"type": [type_name, "null"], **extra}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def object_schema(
    properties: dict[str, Schema], required: list[str] | None = None, optional: tuple[str, ...] = ()
) -> Schema:
    """An object with these properties (all required unless named, or but the `optional` ones),
    more allowed: the agent may add fields (clients must ignore what they do not know)."""
    if required is None:
        required = [name for name in properties if name not in optional]
    return {"type": "object", "properties": properties, "required": required}


ID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
TIMESTAMP = {"type": "string", "description": "ISO 8601, UTC"}
ANY_JSON: Schema = {}
