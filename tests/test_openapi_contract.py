"""The OpenAPI document and waystation/contract/ say the same thing, both ways.

The document is written by hand for what a type cannot say (descriptions, patterns, bounds); the
TypedDicts and Literals are what the code is typed with. For every component schema: its
properties are the TypedDict's keys, its `required` list is the TypedDict's required keys, each
enum or const is the Literal's values, a `$ref` names the TypedDict the key holds, and an inline
object is checked as its TypedDict is. Every TypedDict listed is a schema and every schema is
listed. The code's runtime vocabularies are the Literals' values too.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, NotRequired, Required, get_args, get_origin, get_type_hints

import pytest

from waystation import contract
from waystation.agent.openapi import openapi_document
from waystation.agent.openapi_schemas import SCHEMAS

DOCUMENT = openapi_document()
SCHEMA_NAMES = {cls: name for name, cls in contract.SCHEMA_TYPES.items()}


def test_every_schema_has_its_typeddict_and_back() -> None:
    assert set(SCHEMAS) == set(contract.SCHEMA_TYPES)
    assert set(DOCUMENT["components"]["schemas"]) >= set(SCHEMAS)


def _strip(hint: Any) -> Any:
    """The hint without NotRequired/Required and without `| None`."""
    while get_origin(hint) in (NotRequired, Required):
        (hint,) = get_args(hint)
    if get_origin(hint) in (typing.Union, types.UnionType):
        rest = [arg for arg in get_args(hint) if arg is not type(None)]
        hint = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
    return hint


def _alternatives(schema: dict[str, Any]) -> list[dict[str, Any]]:
    options = schema.get("oneOf", [schema])
    return [o for o in options if o.get("type") != "null"]


def _is_typeddict(hint: Any) -> bool:
    return isinstance(hint, type) and typing.is_typeddict(hint)


def _check_value(where: str, schema: dict[str, Any], hint: Any) -> None:
    hint = _strip(hint)
    if get_origin(hint) in (typing.Union, types.UnionType):
        # one schema alternative per union member that carries structure (Literal or TypedDict)
        for member in get_args(hint):
            for option in _alternatives(schema):
                if _matches(option, member):
                    _check_value(where, option, member)
                    break
            else:
                if get_origin(member) is Literal or _is_typeddict(member):
                    pytest.fail(f"{where}: no schema alternative for {member}")
        return
    (schema,) = _alternatives(schema)
    if get_origin(hint) is Literal:
        values = set(get_args(hint))
        found = set(schema["enum"]) if "enum" in schema else {schema.get("const", object())}
        assert found == values, f"{where}: schema says {found}, contract says {values}"
    else:
        assert "enum" not in schema and "const" not in schema, f"{where}: an enum the contract leaves open"
    if _is_typeddict(hint):
        if "$ref" in schema:
            assert schema["$ref"] == f"#/components/schemas/{SCHEMA_NAMES[hint]}", where
        else:
            _check_object(where, schema, hint)
    elif get_origin(hint) is list and "items" in schema:
        _check_value(f"{where}[]", schema["items"], get_args(hint)[0])
    else:
        assert "$ref" not in schema, f"{where}: {schema['$ref']} where the contract has {hint}"


def _matches(schema: dict[str, Any], hint: Any) -> bool:
    if get_origin(hint) is Literal:
        return "enum" in schema or "const" in schema
    if _is_typeddict(hint) or hint is dict or get_origin(hint) is dict:
        return schema.get("type") == "object" or "$ref" in schema
    return "enum" not in schema and "$ref" not in schema and schema.get("type") != "object"


def _check_object(where: str, schema: dict[str, Any], cls: Any) -> None:
    hints = get_type_hints(cls, include_extras=True)
    assert set(schema["properties"]) == set(hints), f"{where}: properties differ"
    assert set(schema.get("required", [])) == set(cls.__required_keys__), f"{where}: required differs"
    for key, hint in hints.items():
        _check_value(f"{where}.{key}", schema["properties"][key], hint)


@pytest.mark.parametrize("name", sorted(contract.SCHEMA_TYPES))
def test_schema_matches_its_typeddict(name: str) -> None:
    _check_object(name, SCHEMAS[name], contract.SCHEMA_TYPES[name])


def test_the_state_filters_are_the_vocabularies() -> None:
    paths = DOCUMENT["paths"]
    for path, vocabulary in (("/v1/tasks", contract.TaskState), ("/v1/turns", contract.TurnState)):
        (state,) = [p for p in paths[path]["get"]["parameters"] if p["name"] == "state"]
        assert state["schema"]["enum"] == list(get_args(vocabulary))


def test_the_codes_vocabularies_are_the_contracts() -> None:
    from waystation.adapters.connectivity.monitor import Mode, State
    from waystation.cli.commands.agent import MODES
    from waystation.cli.commands.queue import STATES
    from waystation.ports import Outcome
    from waystation.queue.policy import TaskState
    from waystation.receipts.chain import Status
    from waystation.station.turns.records import TURN_STATES

    assert {s.value for s in TaskState} == set(get_args(contract.TaskState)) == set(STATES)
    assert {o.value for o in Outcome} == set(get_args(contract.DeliveryOutcome))
    assert tuple(TURN_STATES) == get_args(contract.TurnState)
    assert get_args(State) == get_args(contract.ConnectivityState)
    assert get_args(Mode) == get_args(contract.ConnectivityMode) == tuple(MODES)
    assert get_args(Status) == get_args(contract.ReceiptStatus)
