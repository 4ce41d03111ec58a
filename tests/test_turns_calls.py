"""Which tools a turn offers and which calls may go out (station/turns/calls.py), then the same
rules through the engine with the scripted model: no tools without a URL to call, an invented
URL refused and never parked, one task per distinct call, pages given to the model as text, a
reply cut off inside a call never shown as the answer, and turns readable as records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from waystation.adapters.models.base import Generation, ToolCall
from waystation.adapters.routes import Router
from waystation.adapters.routes.local import LocalRoute
from waystation.adapters.tools import default_tools
from waystation.config import ModelSettings, QueueSettings
from waystation.db import Database
from waystation.errors import NoUrlToCall, ReplyCutOff, TurnFailed, UnknownTool
from waystation.queue.store import TaskStore
from waystation.station.turns.calls import (
    call_key,
    conversation_urls,
    offer,
    refusal,
)
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.page_text import page_text
from waystation.station.turns.records import count_turns, get_turn, list_turns, recover_turns
from waystation.station.turns.request import TurnRequest, tool_choice
from waystation.station.turns.results import result_for_model
from waystation.testing import (
    FakeConnectivity,
    RecordingAnnouncer,
    ScriptedBackend,
    ScriptedDelivery,
    delivered,
)

TOOLS = default_tools()
PAGE = (
    "<!doctype html><html><head><title>Harbour  news</title><style>p{}</style>"
    "<script>var x = 1;</script></head><body><h1>Tides</h1><p>High tide at 6.</p></body></html>"
)


# --- the rules, alone ---------------------------------------------------------------------------


def test_no_url_no_network_tools_under_auto() -> None:
    assert offer(TOOLS, "auto", [], []) == ([], "none")
    specs, choice = offer(TOOLS, "auto", ["http://a.example/x"], [])
    assert [s.name for s in specs] == ["http_request", "web_fetch"] and choice == "auto"
    assert offer(TOOLS, "none", ["http://a.example/x"], []) == ([], "none")
    specs, _ = offer(TOOLS, "auto", [], ["a.example"])  # an allowed host is something to call
    assert specs


def test_a_demanded_call_needs_a_url() -> None:
    with pytest.raises(NoUrlToCall) as info:
        offer(TOOLS, "required", [], [])
    assert "names none" in info.value.message and info.value.http_status == 400
    with pytest.raises(NoUrlToCall):
        offer(TOOLS, {"tool": "web_fetch"}, [], [])
    specs, choice = offer(TOOLS, {"tool": "web_fetch"}, ["http://a.example/"], [])
    assert [s.name for s in specs] == ["web_fetch"] and choice == "required"
    with pytest.raises(UnknownTool):
        offer(TOOLS, {"tool": "teleport"}, ["http://a.example/"], [])


def test_tool_choice_forms() -> None:
    assert tool_choice(None) == "auto"
    assert tool_choice("required") == "required"
    assert tool_choice({"tool": "web_fetch"}) == {"tool": "web_fetch"}
    assert tool_choice({"type": "function", "function": {"name": "web_fetch"}}) == {"tool": "web_fetch"}
    for bad in ("always", {"tool": ""}, {"function": "x"}, 3):
        with pytest.raises(Exception, match="tool_choice"):
            tool_choice(bad)


def test_urls_come_from_the_user_and_tool_results_only() -> None:
    messages = [
        {"role": "system", "content": "See http://system.example/"},
        {"role": "user", "content": "Fetch http://a.example/page, please."},
        {"role": "assistant", "content": "http://invented.example/"},
        {"role": "tool", "content": "HTTP 200\nNext: https://b.example/more"},
    ]
    assert conversation_urls(messages) == ["http://a.example/page", "https://b.example/more"]


def test_a_url_nobody_named_is_refused() -> None:
    named = ["http://a.example/page"]
    assert refusal({"url": "http://a.example/page"}, named, []) is None
    assert refusal({"url": "HTTP://A.example/page/"}, named, []) is None  # the same URL, written otherwise
    why = refusal({"url": "http://8.8.8.8/"}, named, [])
    assert why is not None and "not a URL the conversation named" in why
    assert refusal({"url": "http://api.example:8080/v1"}, [], ["api.example"]) is None
    assert refusal({"url": "http://api.example:8080/v1"}, [], ["api.example:8080"]) is None
    assert refusal({"url": "http://api.example:8080/v1"}, [], ["api.example:9090"]) is not None


def test_one_key_per_distinct_call() -> None:
    a = call_key("turn_1", "web_fetch", {"url": "http://a.example/"})
    assert a == call_key("turn_1", "web_fetch", {"url": "http://a.example/"})
    assert a != call_key("turn_1", "web_fetch", {"url": "http://b.example/"})
    assert a != call_key("turn_2", "web_fetch", {"url": "http://a.example/"})
    assert a.startswith("turn_1-")


def test_a_page_reaches_the_model_as_its_title_and_text() -> None:
    assert page_text(PAGE) == ("Harbour news", "Tides\nHigh tide at 6.")
    told = result_for_model({"status": 200, "headers": {"content-type": "text/html"}, "body": PAGE})
    assert told == "Harbour news\nTides\nHigh tide at 6."  # a success needs no status
    assert "<" not in told and "var x" not in told
    assert result_for_model({"status": 404, "headers": {}, "body": '{"error": "gone"}'}) == (
        'HTTP 404\n{"error": "gone"}'
    )
    assert result_for_model(None, "a.example: connection refused").startswith("no answer")


# --- through the engine --------------------------------------------------------------------------


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "scripted.gguf"
    path.write_bytes(b"GGUF")
    return path


def engine_for(db: Database, model_file: Path, model: Any, online: bool = False, **kw: Any) -> TurnEngine:
    local = LocalRoute(ModelSettings(path=str(model_file)), {str(model_file): model})
    connectivity = FakeConnectivity(state="online" if online else "offline")
    router = Router(local, "local", connectivity=connectivity, env={})
    deliver = kw.pop("deliver", ScriptedDelivery())
    store = TaskStore(db, QueueSettings())
    return TurnEngine(db, store, TOOLS, connectivity, deliver, router.resolve, RecordingAnnouncer(), **kw)


def fetch(url: str, call_id: str = "c1") -> ToolCall:
    return ToolCall(call_id, "web_fetch", {"url": url})


async def tasks_of(db: Database) -> list[Any]:
    return await db.fetchall("SELECT id, idempotency_key, args FROM tasks")


async def test_hello_offers_no_tools(db: Database, model_file: Path) -> None:
    model = ScriptedBackend(["Hello!"])
    result = await engine_for(db, model_file, model).run(TurnRequest("Say hello."))
    assert result.status == "ok" and result.text == "Hello!"
    assert model.requests[0].tools == () and model.requests[0].tool_choice == "none"


async def test_an_invented_url_is_refused_and_never_parked(db: Database, model_file: Path) -> None:
    model = ScriptedBackend([fetch("http://8.8.8.8.8/"), "I cannot reach that."])
    result = await engine_for(db, model_file, model).run(TurnRequest("What is new at http://a.example/?"))
    assert result.status == "ok" and result.deferred_task_ids == []
    assert await tasks_of(db) == []
    assert result.tool_calls[0]["status"] == "refused"
    told = model.requests[1].messages[-1]
    assert told["role"] == "tool" and "not a URL the conversation named" in told["content"]


async def test_required_without_a_url_fails_clearly(db: Database, model_file: Path) -> None:
    model = ScriptedBackend([])
    with pytest.raises(NoUrlToCall):
        await engine_for(db, model_file, model).run(TurnRequest("Do something.", tool_choice="required"))
    (turn,) = await list_turns(db, None, 10)
    assert turn["state"] == "error" and "names none" in turn["reason"]
    assert model.requests == []


async def test_the_same_call_again_is_one_task(db: Database, model_file: Path) -> None:
    url = "http://a.example/page"
    model = ScriptedBackend([fetch(url, "c1"), fetch(url, "c2"), "Its title is Harbour news."])
    engine = engine_for(db, model_file, model)
    parked = await engine.run(TurnRequest(f"Fetch {url} and tell me its title"))
    assert parked.status == "parked"
    ((task_id, key, _),) = await tasks_of(db)
    await db.write(
        lambda conn: conn.execute(
            "UPDATE tasks SET state = 'done', result = ? WHERE id = ?",
            (
                '{"status": 200, "headers": {"content-type": "text/html"}, "body": "'
                + PAGE.replace('"', "'")
                + '"}',
                task_id,
            ),
        )
    )
    resumed = await engine.resume(parked.turn_id)
    assert resumed is not None and resumed.status == "ok" and resumed.text == "Its title is Harbour news."
    assert len(await tasks_of(db)) == 1  # the model asked again: the same result, no new task
    assert key == call_key(parked.turn_id, "web_fetch", {"url": url})
    repeat = model.requests[2]
    assert repeat.tool_choice == "none"  # it has the result: it answers now
    assert "Harbour news" in repeat.messages[-1]["content"]
    turn = await get_turn(db, parked.turn_id)
    assert [c["status"] for c in turn["tool_calls"]] == ["deferred", "repeated"]
    assert [c["task_id"] for c in turn["tool_calls"]] == [task_id, task_id]
    assert turn["tool_calls"][0]["task_state"] == "done"
    assert turn["tool_calls"][0]["result"] == "HTTP 200 · Harbour news"  # what the call got
    assert turn["state"] == "ok" and turn["text"] == "Its title is Harbour news."
    assert len(turn["receipt_ids"]) == 2


async def test_online_calls_go_out_once_with_one_key(db: Database, model_file: Path) -> None:
    url = "http://a.example/"
    deliver = ScriptedDelivery(default=delivered(200, "fine"))
    model = ScriptedBackend([fetch(url, "c1"), fetch(url, "c2"), "It is fine."])
    engine = engine_for(db, model_file, model, online=True, deliver=deliver)
    result = await engine.run(TurnRequest(f"How is {url}?"))
    assert result.text == "It is fine." and len(deliver.calls) == 1


async def test_a_reply_cut_off_inside_a_call_is_no_answer(db: Database, model_file: Path) -> None:
    cut = Generation(text="", finish_reason="cut_off")
    with pytest.raises(ReplyCutOff):
        await engine_for(db, model_file, ScriptedBackend([cut])).run(TurnRequest("Fetch http://a.example/"))
    (turn,) = await list_turns(db, None, 10)
    assert turn["state"] == "error" and turn["text"] is None and "max_tokens" in turn["reason"]


class Broken(ScriptedBackend):
    """A model whose generation fails in a way nothing foresaw (a bug's stand-in)."""

    async def generate(self, request: Any, on_token: Any = None) -> Generation:
        raise RuntimeError("boom")


async def test_a_turn_that_fails_unexpectedly_ends_error_with_its_receipt(
    db: Database, model_file: Path
) -> None:
    with pytest.raises(TurnFailed) as failed:
        await engine_for(db, model_file, Broken([])).run(TurnRequest("Hello"))
    (turn,) = await list_turns(db, None, 10)
    assert turn["state"] == "error" and "unexpected RuntimeError" in turn["reason"]  # never left running
    assert failed.value.turn_id == turn["turn_id"] and len(turn["receipt_ids"]) == 1


async def test_a_named_url_with_an_encoded_question_mark_or_hash_is_called(
    db: Database, model_file: Path
) -> None:
    for url in ("http://a.example/x%3Fy", "http://a.example/x%23y"):
        deliver = ScriptedDelivery(default=delivered(200, "fine"))
        model = ScriptedBackend([fetch(url, "c1"), "It is fine."])
        engine = engine_for(db, model_file, model, online=True, deliver=deliver)
        result = await engine.run(TurnRequest(f"How is {url}?"))
        assert result.status == "ok" and len(deliver.calls) == 1


def test_paths_compare_as_written_and_hosts_ignore_case() -> None:
    named = ["http://a.example/Docs/x%3Fy"]
    assert refusal({"url": "HTTP://A.EXAMPLE/Docs/x%3Fy"}, named, []) is None
    assert refusal({"url": "http://a.example/docs/x%3Fy"}, named, []) is not None  # another path
    assert refusal({"url": "http://a.example/Docs/x?y"}, named, []) is not None  # a query, not the path


async def test_turns_are_records_you_can_come_back_to(db: Database, model_file: Path) -> None:
    engine = engine_for(db, model_file, ScriptedBackend(["one", "two"]))
    first = await engine.run(TurnRequest("First?"))
    await engine.run(TurnRequest("Second?"))
    newest, oldest = await list_turns(db, None, 10)
    assert (newest["prompt"], oldest["prompt"]) == ("Second?", "First?")
    assert oldest["turn_id"] == first.turn_id and oldest["text"] == "one" and oldest["route"] == "local"
    assert oldest["receipt_ids"] == [first.receipt_id]
    assert set(oldest) >= {"turn_id", "state", "route", "model", "prompt", "text", "tool_calls"}
    assert (await count_turns(db))["ok"] == 2
    # A turn left running by a process that died is interrupted at the agent's next start.
    await engine.begin("turn_crashed", TurnRequest("Never finished"))
    assert (await get_turn(db, "turn_crashed"))["state"] == "running"
    assert await recover_turns(db) == 1
    crashed = await get_turn(db, "turn_crashed")
    assert crashed["state"] == "interrupted" and crashed["reason"].startswith("interrupted")
