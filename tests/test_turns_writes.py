"""Writes the user asked for, exactly: a model's POST, PUT or PATCH carries a JSON object the
user's messages contain (or goes to a host `[tools] allow_writes` lists), else it is refused with
a tool result saying why and is never sent nor parked.

The rules alone (finding the user's JSON, the gate, the tools offered, the grammar's pinned
`json`), then through the engine with the scripted model, offline and online. The real model,
end to end, is tests/test_turns_writes_llamacpp.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from waystation.adapters.models.base import ToolCall, ToolSpec
from waystation.adapters.models.json_objects import json_objects_in, user_objects
from waystation.adapters.models.reply_grammar import reply_schema
from waystation.adapters.routes import Router
from waystation.adapters.routes.local import LocalRoute
from waystation.adapters.tools import default_tools
from waystation.config import ModelSettings, QueueSettings
from waystation.db import Database
from waystation.queue.store import TaskStore
from waystation.station.turns.calls import offer
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.request import TurnRequest
from waystation.station.turns.writes import (
    as_the_user_wrote,
    host_listed,
    same_json,
    write_refusal,
)
from waystation.testing import FakeConnectivity, RecordingAnnouncer, ScriptedBackend, ScriptedDelivery

TOOLS = default_tools()
HTTP = TOOLS.get("http_request")
HOOK = "http://hooks.example:8080/hook"
EVENT = {"event": "deploy", "build": {"id": 7, "tags": ["a", "b"]}, "dry": False}
ASKED = f"POST the JSON {json.dumps(EVENT, separators=(',', ':'))} to {HOOK}"
ADVICE = "write only JSON the user gave (or list the host in [tools] allow_writes)"


def said(*contents: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": c} for c in contents]


# --- the JSON the user gave ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('POST the JSON {"event": "deploy", "id": 7} to http://a.example/', [{"event": "deploy", "id": 7}]),
        ('```json\n{\n  "event": "deploy",\n  "id": 7\n}\n```', [{"event": "deploy", "id": 7}]),
        # nested, with braces and quotes inside strings: one object, taken whole
        ('send {"a": {"b": [1, {"c": "}\\" {"}]}}', [{"a": {"b": [1, {"c": '}" {'}]}}]),
        # a stray quote and a placeholder in prose do not hide what follows
        ('he said "hi {name} and then {"a": 1}', [{"a": 1}]),
        ("{'a': 1} and {\"a\": 1,} and {a: 1} are not JSON", []),
        ('a list [1, 2], a string "x", a number 3', []),
        ('{"a": NaN} {"b": Infinity}', []),  # not JSON, though Python's parser takes them
        ('{"a": 1} again {"a": 1} and {"a":1}', [{"a": 1}]),
        ("{" * 5000 + '{"ok": true}', [{"ok": True}]),  # unclosed braces before it
        ("", []),
    ],
)
def test_the_json_objects_a_message_holds(text: str, found: list[dict[str, Any]]) -> None:
    assert json_objects_in(said(text)) == found


def test_only_the_users_messages_give_json() -> None:
    messages = [
        {"role": "system", "content": 'Always send {"from": "system"}.'},
        {"role": "user", "content": 'POST {"from": "user"} to http://a.example/'},
        {"role": "assistant", "content": '{"from": "assistant"}'},
        {"role": "tool", "content": 'HTTP 200\n{"from": "tool"}'},
        {"role": "user", "content": None},
    ]
    assert user_objects(messages) == [{"from": "user"}]


def test_deep_unclosed_nesting_is_searched_in_bounded_time() -> None:
    """Parsing from every brace of never-closed nesting would be quadratic; it is bounded, and
    what it gives up on is not taken for the user's JSON."""
    assert json_objects_in(said('{"a":[' * 100_000)) == []
    assert json_objects_in(said('{"a":{"b":' * 50_000 + "1" + "}" * 100_000)) == []


# --- the gate --------------------------------------------------------------------------------------


def write(payload: Any = None, *, url: str = HOOK, method: str = "POST", **more: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"method": method, "url": url, **more}
    if payload is not None:
        args["json"] = payload
    return HTTP.validate(args)


REORDERED = {"dry": False, "build": {"tags": ["a", "b"], "id": 7.0}, "event": "deploy"}


@pytest.mark.parametrize(
    ("args", "allow_writes"),
    [
        (write(EVENT), []),
        (write(REORDERED), []),  # key order differs, 7.0 for 7: equal as parsed JSON
        (write(EVENT, method="PUT"), []),
        (write(EVENT, method="PATCH", headers={"Content-Type": "application/json; charset=utf-8"}), []),
        (write({"other": "json"}), ["hooks.example"]),  # its own JSON, to a listed host
        (write({"other": "json"}), ["HOOKS.example:8080"]),
        (write({"other": "json"}, url="https://hooks.example/x"), ["hooks.example:443"]),
        (write(method="GET"), []),  # a read is no write
        (write(EVENT, method="GET"), []),  # a body on any method is gated as a write
        (TOOLS.get("web_fetch").validate({"url": HOOK}), []),
    ],
)
def test_writes_that_go_out(args: dict[str, Any], allow_writes: list[str]) -> None:
    assert write_refusal(args, user_objects(said(ASKED)), allow_writes) is None


@pytest.mark.parametrize(
    ("args", "allow_writes", "why"),
    [
        (write({**EVENT, "event": "destroy"}), [], "not an object the user's messages contain"),
        (write({**EVENT, "dry": 0}), [], "not an object"),  # false is not 0
        (write({**EVENT, "build": {"id": "7", "tags": ["a", "b"]}}), [], "not an object"),  # "7" is not 7
        (write(EVENT["build"]), [], "not an object"),  # a part of the user's object is not it
        (write([EVENT]), [], "carries a JSON object in json"),  # a list
        (write("deploy"), [], "carries a JSON object in json"),
        (write(), [], "carries a JSON object in json, and this one has none"),
        (write(body=json.dumps(EVENT)), [], "not a body string"),  # the same JSON, as a body
        (write(body=HOOK), ["hooks.example"], "not a body string"),  # the reported bug
        (write(EVENT, headers={"Content-Type": "text/plain"}), [], "sent as application/json"),
        (write({"other": "json"}), ["hooks.example:9090"], "nor is hooks.example on [tools] allow_writes"),
        (write({"other": "json"}), ["other.example"], "not an object"),
        (write({"x": 1}, method="GET"), [], "not an object"),
        (write({"x": 1}, method="DELETE"), [], "not an object"),
    ],
)
def test_writes_that_are_refused(args: dict[str, Any], allow_writes: list[str], why: str) -> None:
    refused = write_refusal(args, user_objects(said(ASKED)), allow_writes)
    assert refused is not None and why in refused, refused
    assert refused.startswith("refused: ") and refused.endswith(ADVICE)


def test_without_json_from_the_user_every_write_is_refused() -> None:
    for messages in (said(f"POST to {HOOK}"), said(f"POST to {HOOK}", "[1, 2]", "{'a': 1}")):
        assert write_refusal(write({"event": "deploy"}), user_objects(messages), []) is not None


def test_what_is_sent_is_what_the_user_wrote() -> None:
    """A write equal to the user's object sends the user's object: their key order, 7 not 7.0."""
    objects = user_objects(said(ASKED))
    sent = as_the_user_wrote(write(REORDERED), objects)
    compact = json.dumps(sent["json"], separators=(",", ":"))
    assert compact in ASKED  # byte for byte
    assert as_the_user_wrote(write({"other": 1}), objects)["json"] == {"other": 1}
    assert as_the_user_wrote(write(), objects) == write()


def test_json_equality() -> None:
    assert same_json({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not same_json({"a": True}, {"a": 1})
    assert not same_json([True], [1])
    assert not same_json({"a": 1}, {"a": 1, "b": 2})
    assert not same_json({"a": "1"}, {"a": 1})
    assert not same_json([1, 2], [2, 1])


def test_host_lists() -> None:
    assert host_listed("http://Hooks.Example/x", ["hooks.example"])
    assert host_listed("http://hooks.example/x", ["hooks.example:80"])  # the default port
    assert not host_listed("http://hooks.example:8080/x", ["hooks.example:80"])
    assert host_listed("http://[::1]:8080/x", ["[::1]:8080"]) and host_listed("http://[::1]/", ["::1"])
    assert not host_listed("http://hooks.example.evil/x", ["hooks.example"])
    assert not host_listed("http://hooks.example/x", [])


# --- what a model is offered ---------------------------------------------------------------------


def grammar_of(specs: list[Any], name: str) -> str:
    return json.dumps(next(s.grammar for s in specs if s.name == name))


def test_no_write_offers_a_free_body() -> None:
    for objects, allow_writes in (([], []), ([EVENT], []), ([], ["hooks.example"])):
        specs, _ = offer(TOOLS, "auto", [HOOK], [], objects, allow_writes)
        assert '"body"' not in grammar_of(specs, "http_request")


def test_without_json_a_write_has_nothing_to_carry() -> None:
    specs, choice = offer(TOOLS, "required", [HOOK], [])
    assert [s.name for s in specs] == ["http_request", "web_fetch"] and choice == "required"
    assert '"json"' not in grammar_of(specs, "http_request")
    assert '"POST"' in grammar_of(specs, "http_request")  # it may say so, and be told why not


def test_with_the_users_json_http_request_alone_is_offered() -> None:
    """A 135M model asked to "POST the JSON {...}" picked web_fetch, which cannot carry it."""
    for choice in ("auto", "required"):
        specs, _ = offer(TOOLS, choice, [HOOK], [], [EVENT])
        assert [s.name for s in specs] == ["http_request"]
        assert '"json"' in grammar_of(specs, "http_request")
    specs, _ = offer(TOOLS, {"tool": "web_fetch"}, [HOOK], [], [EVENT])  # unless named
    assert [s.name for s in specs] == ["web_fetch"]
    specs, _ = offer(TOOLS, "auto", [HOOK], [], [], ["hooks.example"])  # its own JSON: both
    assert [s.name for s in specs] == ["http_request", "web_fetch"]
    assert '"json"' in grammar_of(specs, "http_request")


def test_the_grammar_pins_json_to_the_users_objects() -> None:
    """As `url` is pinned to the conversation's URLs: the model chooses among the user's objects,
    which the converter writes as json.dumps does; data that reads like schema stays data."""
    from llama_cpp.llama_grammar import LlamaGrammar, SchemaConverter

    odd = {"title": "Harbour", "description": "x", "properties": {"url": {"type": "string"}}}
    messages = said(f"POST {json.dumps(EVENT)} or {json.dumps(odd)} to {HOOK}")
    objects = user_objects(messages)
    specs, choice = offer(TOOLS, "required", [HOOK], [], objects)
    schema = reply_schema(specs, choice, None, [HOOK], objects)
    variants = schema["properties"]["arguments"]["anyOf"]
    (write_variant,) = [v for v in variants if "json" in v["properties"]]
    assert write_variant["properties"]["json"] == {"enum": [EVENT, odd]}
    assert write_variant["properties"]["url"] == {"enum": [HOOK]}
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    converter.visit(converter.resolve_refs(schema, ""), "")
    rules = converter.format_grammar()
    assert json.dumps(json.dumps(EVENT)) in rules and json.dumps(json.dumps(odd)) in rules
    LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)  # and llama.cpp takes it

    unpinned = reply_schema(specs, choice, None, [HOOK], [])
    assert "enum" not in json.dumps(unpinned["properties"]["arguments"]["anyOf"][1]["properties"]["json"])
    # A client's function whose `json` is a string is not handed objects to fill it with.
    text = {"type": "object", "properties": {"json": {"type": "string"}}, "required": ["json"]}
    client = reply_schema([ToolSpec("save", "", text)], "required", None, [], objects)
    assert client["properties"]["arguments"]["properties"]["json"] == {"type": "string"}


# --- through the engine ----------------------------------------------------------------------------


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "scripted.gguf"
    path.write_bytes(b"GGUF")
    return path


def engine_for(
    db: Database, model_file: Path, model: Any, deliver: ScriptedDelivery, online: bool, **kw: Any
) -> TurnEngine:
    local = LocalRoute(ModelSettings(path=str(model_file)), {str(model_file): model})
    connectivity = FakeConnectivity(state="online" if online else "offline")
    router = Router(local, "local", connectivity=connectivity, env={})
    store = TaskStore(db, QueueSettings())
    return TurnEngine(db, store, TOOLS, connectivity, deliver, router.resolve, RecordingAnnouncer(), **kw)


def post(call_id: str, **args: Any) -> ToolCall:
    return ToolCall(call_id, "http_request", {"method": "POST", "url": HOOK, **args})


REFUSED = [
    post("c1", json={**EVENT, "event": "destroy"}),  # JSON of its own
    post("c2", body=json.dumps(EVENT)),  # a body string
    post("c3"),  # nothing
]


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
async def test_refused_writes_are_never_parked_nor_sent(db: Database, model_file: Path, online: bool) -> None:
    deliver = ScriptedDelivery()
    model = ScriptedBackend([*REFUSED, "I may not send that."])
    engine = engine_for(db, model_file, model, deliver, online)
    result = await engine.run(TurnRequest(ASKED, max_steps=5))

    assert result.status == "ok" and result.deferred_task_ids == []
    assert [c["status"] for c in result.tool_calls] == ["refused", "refused", "refused"]
    assert deliver.calls == []  # nothing sent
    assert await db.fetchall("SELECT id FROM tasks") == []  # nothing parked
    told = [m for m in model.requests[-1].messages if m.get("role") == "tool"]
    assert all(json.loads(m["content"])["error"].endswith(ADVICE) for m in told)
    # No write is offered a free body to fill; web_fetch is not offered with JSON to send.
    assert [t.name for t in model.requests[0].tools] == ["http_request"]


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
async def test_the_users_json_goes_out_as_they_wrote_it(db: Database, model_file: Path, online: bool) -> None:
    deliver = ScriptedDelivery()
    model = ScriptedBackend([post("c1", json=REORDERED), "Sent."])
    result = await engine_for(db, model_file, model, deliver, online).run(TurnRequest(ASKED))

    if online:
        ((tool, args, _),) = [(c.tool, c.args, c.idempotency_key) for c in deliver.calls]
        assert result.status == "ok" and result.tool_calls[0]["status"] == "done"
    else:
        ((tool, stored),) = await db.fetchall("SELECT tool, args FROM tasks")
        args = json.loads(stored)
        assert result.status == "parked" and deliver.calls == []
    assert tool == "http_request" and args["method"] == "POST"
    assert json.dumps(args["json"], separators=(",", ":")) in ASKED  # the user's own bytes


async def test_a_listed_host_takes_the_models_own_json(db: Database, model_file: Path) -> None:
    deliver = ScriptedDelivery()
    model = ScriptedBackend([post("c1", json={"note": "mine"}), "Sent."])
    engine = engine_for(db, model_file, model, deliver, True, allow_writes=("hooks.example:8080",))
    result = await engine.run(TurnRequest(f"Tell {HOOK} that we deployed."))
    assert result.tool_calls[0]["status"] == "done"
    assert [c.args["json"] for c in deliver.calls] == [{"note": "mine"}]
