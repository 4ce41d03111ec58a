"""The turn engine with the scripted model: fast and deterministic, on a real database and a real
loopback HTTP destination.

What is checked: a plain turn's receipt (lanes, cost, usage), parking offline (the task, its key,
what the model is told, one commit for receipt + task + conversation), delivery while online,
an unreachable destination while "online", bad calls from the model, resumption with the real
result (once, only when settled), the step bound, and failures that still write receipts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import structlog
from aiohttp import web

from waystation import timeutil
from waystation.adapters.models.base import Generation, GenerationRequest, TokenSink, ToolCall
from waystation.adapters.models.scripted import ScriptedBackend
from waystation.adapters.models.threaded import ThreadedBackend
from waystation.adapters.routes import Router
from waystation.adapters.routes.local import LocalRoute
from waystation.adapters.tools import default_tools, new_client
from waystation.config import AgentSettings, ModelSettings, QueueSettings, Settings
from waystation.db import Database
from waystation.errors import (
    DatabaseError,
    EmptyPrompt,
    ModelError,
    RouteRefused,
    TurnTimeout,
    WaystationError,
)
from waystation.queue.flusher import Flusher
from waystation.queue.policy import TaskState, classify, decide
from waystation.queue.store import TaskStore
from waystation.queue.tasks import Task
from waystation.receipts import chain
from waystation.receipts.chain import verify_database
from waystation.station.announce import Announcer
from waystation.station.background import Background
from waystation.station.delivery import Deliveries
from waystation.station.events import EventBus
from waystation.station.metrics import Metrics
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.records import get_turn, parked_turns_ready, recover_turns
from waystation.station.turns.request import TurnRequest
from waystation.station.turns.resume import Resumptions
from waystation.testing import FakeConnectivity, RecordingAnnouncer, ScriptedDelivery, until

MODEL_FILE = "scripted.gguf"


# --- fixtures -------------------------------------------------------------------------------------


@dataclass
class Destination:
    """A real HTTP server on loopback that records each request's path and Idempotency-Key."""

    base: str
    hits: list[tuple[str, str | None]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"


@pytest.fixture
async def destination() -> AsyncIterator[Destination]:
    found = Destination(base="")

    async def record(request: web.Request) -> web.Response:
        found.hits.append((request.path, request.headers.get("Idempotency-Key")))
        return web.json_response({"headline": "rain tomorrow", "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    found.base = f"http://127.0.0.1:{port}"
    try:
        yield found
    finally:
        await runner.cleanup()


@pytest.fixture
def store(db: Database) -> TaskStore:
    return TaskStore(db, QueueSettings())


@pytest.fixture
def connectivity() -> FakeConnectivity:
    return FakeConnectivity(state="offline")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_client() as c:
        yield c


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / MODEL_FILE
    path.write_bytes(b"GGUF")  # never loaded: the scripted backend stands in for it
    return path


EngineFactory = Callable[..., TurnEngine]


@pytest.fixture
def make_engine(
    db: Database,
    store: TaskStore,
    connectivity: FakeConnectivity,
    client: httpx.AsyncClient,
    model_file: Path,
) -> EngineFactory:
    """An engine on the real Router/LocalRoute, its local model being the given backend."""

    def make(backend: Any, default_route: str = "local", announce: Any = None, **kw: Any) -> TurnEngine:
        local = LocalRoute(ModelSettings(path=str(model_file)), {str(model_file): backend})
        # No credentials in this environment: provider routes must refuse, saying what is missing.
        router = Router(local, default_route, connectivity=connectivity, env={})
        # The loopback destination stands in for hosts the tests' prompts would name.
        kw.setdefault("allow_hosts", ("127.0.0.1",))
        tools = default_tools(allow_hosts=kw["allow_hosts"])  # as the config gives both
        deliver = Deliveries(tools, client, 30.0)
        announce = announce or RecordingAnnouncer()
        return TurnEngine(db, store, tools, connectivity, deliver, router.resolve, announce, **kw)

    return make


# --- helpers --------------------------------------------------------------------------------------


async def all_receipts(db: Database) -> list[dict[str, Any]]:
    return await chain.list_receipts(db, limit=1000)


async def turn_row(db: Database, turn_id: str) -> sqlite3.Row | None:
    return await db.fetchone("SELECT * FROM turns WHERE id = ?", (turn_id,))


async def count(db: Database, table: str) -> int:
    row = await db.fetchone(f"SELECT COUNT(*) FROM {table}")
    assert row is not None
    return int(row[0])


async def assert_chain_ok(db: Database) -> None:
    verification = await verify_database(db)
    assert verification.ok, verification


def fetch(url: str, call_id: str = "call_1") -> ToolCall:
    return ToolCall(call_id, "http_request", {"url": url})


async def deliver_and_settle(store: TaskStore, task_id: str, destination: Destination) -> Task:
    """What the flusher does, by hand: lease the task, deliver it for real, settle it."""
    leased = await store.lease(10, {}, 10)
    (task,) = [t for t in leased if t.id == task_id]
    await store.release([t.id for t in leased if t.id != task_id])  # the others stay pending
    tool = default_tools(allow_hosts=("127.0.0.1",)).get(task.tool)  # as make_engine's turns allow
    async with new_client() as c:
        answer = await tool.deliver(c, task.args, task.idempotency_key, 10.0)
    decision = decide(
        outcome=classify(answer.status),
        status=answer.status,
        attempts=task.attempts,
        net_failures=task.net_failures,
        now=timeutil.now(),
        settings=QueueSettings(),
        rng=random.Random(1),
    )
    settled, receipt = await store.settle(task, decision, answer.to_json(), answer.duration_ms)
    assert settled.state == TaskState.DONE and receipt is not None
    return settled


def tool_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    return [m for m in request.messages if m.get("role") == "tool"]


# --- a plain turn ---------------------------------------------------------------------------------


async def test_plain_turn_writes_an_ok_local_receipt(make_engine: EngineFactory, db: Database) -> None:
    model = ScriptedBackend(["The sky is blue today."])
    engine = make_engine(model)
    tokens: list[str] = []

    result = await engine.run(TurnRequest("What colour is the sky?"), tokens.append)

    assert result.status == "ok"
    assert result.text == "The sky is blue today."
    assert "".join(tokens) == result.text
    assert result.route == "local"
    assert result.tool_calls == [] and result.deferred_task_ids == []
    # the model was offered the tools on "auto"
    (request,) = model.requests
    assert request.tool_choice == "auto"
    assert {t.name for t in request.tools} >= {"http_request", "web_fetch"}
    assert request.messages[-1] == {"role": "user", "content": "What colour is the sky?"}

    (receipt,) = await all_receipts(db)
    assert receipt["id"] == result.receipt_id
    assert receipt["kind"] == "turn" and receipt["status"] == "ok" and receipt["reason"] is None
    assert receipt["turn_id"] == result.turn_id and receipt["task_id"] is None
    assert receipt["route"] == {
        "name": "local",
        "provider": "scripted",
        "auth_lane": "none",
        "cost_lane": "local",
        "model": MODEL_FILE,
    }
    assert receipt["credits_used"] == 0
    assert receipt["usage"]["prompt_tokens"] == result.usage.prompt_tokens > 0
    assert receipt["usage"]["completion_tokens"] == result.usage.completion_tokens == 5
    assert receipt["deferred_task_ids"] == []
    assert receipt["cold_load_ms"] == 0  # the scripted model "loaded" on this first turn
    assert receipt["duration_ms"] >= 0
    assert (await turn_row(db, result.turn_id))["state"] == "ok"  # type: ignore[index]
    await assert_chain_ok(db)


async def test_system_prompt_and_required_choice_reach_the_model(
    make_engine: EngineFactory, connectivity: FakeConnectivity, destination: Destination
) -> None:
    connectivity.state = "online"
    model = ScriptedBackend([fetch(destination.url("/a")), "done"])
    result = await make_engine(model).run(TurnRequest("fetch it", system="Be brief.", tool_choice="required"))
    assert result.status == "ok"
    first, second = model.requests
    assert first.messages[0] == {"role": "system", "content": "Be brief."}
    assert first.tool_choice == "required"
    # "required" forces the first step only; with no URL left to call, the next one answers.
    assert second.tool_choice == "none" and not second.tools


# --- parking offline --------------------------------------------------------------------------------


async def test_offline_tool_call_is_parked_with_a_key_from_the_turn(
    make_engine: EngineFactory,
    db: Database,
    store: TaskStore,
    destination: Destination,
    connectivity: FakeConnectivity,
) -> None:
    url = destination.url("/news")
    model = ScriptedBackend([fetch(url), "not reached"])
    result = await make_engine(model).run(TurnRequest(f"Fetch {url}"))

    assert result.status == "parked"
    assert len(result.deferred_task_ids) == 1
    task_id = result.deferred_task_ids[0]
    assert destination.hits == []  # nothing left the host
    assert connectivity.network_errors == 0

    task = await store.get(task_id)
    assert task.state == TaskState.PENDING
    assert task.turn_id == result.turn_id
    assert task.tool == "http_request"
    assert task.args["url"] == url and task.args["method"] == "GET"
    assert task.host == destination.base.removeprefix("http://")
    assert task.idempotency_key.startswith(result.turn_id + "-")
    assert result.tool_calls == [
        {
            "id": "call_1",
            "tool": "http_request",
            "arguments": {"url": url},
            "status": "deferred",
            "task_id": task_id,
        }
    ]

    # The model waits for the parked result: it was asked once, and the saved conversation
    # tells it (on resumption) that the call was deferred, with the task id.
    assert len(model.requests) == 1
    row = await turn_row(db, result.turn_id)
    assert row is not None and row["state"] == "parked"
    assert json.loads(row["deferred"]) == {task_id: "call_1"}
    messages = json.loads(row["messages"])
    # and it was asked to keep what its resumed answer starts with: that conversation, no tools
    (kept,) = model.kept
    assert list(kept.messages) == [
        {k: v for k, v in m.items() if not k.startswith("waystation_")} for m in messages
    ]
    assert not kept.tools and kept.tool_choice == "none"
    assert messages[-2]["role"] == "assistant"
    assert messages[-2]["tool_calls"][0]["function"]["name"] == "http_request"
    told = messages[-1]
    assert told["role"] == "tool" and told["tool_call_id"] == "call_1"
    content = json.loads(told["content"])
    assert content["status"] == "deferred" and content["task_id"] == task_id

    (receipt,) = await all_receipts(db)
    assert receipt["status"] == "parked"
    assert receipt["deferred_task_ids"] == [task_id]
    assert receipt["turn_id"] == result.turn_id
    assert receipt["route"]["auth_lane"] == "none" and receipt["credits_used"] == 0
    await assert_chain_ok(db)


async def test_two_calls_in_one_reply_park_two_tasks_with_distinct_keys(
    make_engine: EngineFactory, store: TaskStore, destination: Destination
) -> None:
    reply = Generation(
        text="",
        tool_calls=[fetch(destination.url("/one"), "c1"), fetch(destination.url("/two"), "c2")],
        finish_reason="tool_calls",
    )
    result = await make_engine(ScriptedBackend([reply])).run(TurnRequest("two fetches"))
    assert result.status == "parked" and len(result.deferred_task_ids) == 2
    tasks = await store.for_turn(result.turn_id)
    assert {t.id for t in tasks} == set(result.deferred_task_ids)
    keys = {t.idempotency_key for t in tasks}
    assert len(keys) == 2 and all(k.startswith(result.turn_id) for k in keys)


async def test_receipt_task_and_conversation_commit_together(
    make_engine: EngineFactory,
    db: Database,
    destination: Destination,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the receipt cannot be written, the parked task is not there either, and the turn's row
    still says what was committed last: that it was running."""
    real_append = chain.append

    def failing_append(conn: sqlite3.Connection, draft: chain.ReceiptDraft) -> dict[str, Any]:
        # By now the engine's commit op has inserted the task and the turn row in this transaction.
        assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == 1
        raise sqlite3.OperationalError("injected: disk I/O error while writing the receipt")

    monkeypatch.setattr(chain, "append", failing_append)
    model = ScriptedBackend([fetch(destination.url("/news"))])
    with pytest.raises(DatabaseError):
        await make_engine(model).run(TurnRequest("fetch the news"))
    assert (await count(db, "tasks"), await count(db, "turns"), await count(db, "receipts")) == (0, 1, 0)
    row = await db.fetchone("SELECT state FROM turns")
    assert row is not None and row["state"] == "running"

    # And when the write succeeds, the three appear together.
    monkeypatch.setattr(chain, "append", real_append)
    result = await make_engine(ScriptedBackend([fetch(destination.url("/news"))])).run(
        TurnRequest("fetch the news")
    )
    assert (await count(db, "tasks"), await count(db, "turns"), await count(db, "receipts")) == (1, 2, 1)
    assert result.status == "parked" and (await get_turn(db, result.turn_id))["state"] == "parked"
    await assert_chain_ok(db)


# --- online delivery --------------------------------------------------------------------------------


async def test_online_tool_call_is_delivered_and_its_result_given_to_the_model(
    make_engine: EngineFactory,
    db: Database,
    store: TaskStore,
    destination: Destination,
    connectivity: FakeConnectivity,
) -> None:
    connectivity.state = "online"
    url = destination.url("/news")
    model = ScriptedBackend([fetch(url), "It will rain tomorrow."])
    result = await make_engine(model).run(TurnRequest(f"What does {url} say?"))

    assert result.status == "ok"
    assert result.text == "It will rain tomorrow."
    assert result.deferred_task_ids == []
    assert result.tool_calls[0]["status"] == "done" and result.tool_calls[0]["result_status"] == 200
    assert len(destination.hits) == 1
    path, key = destination.hits[0]
    assert path == "/news"
    assert key is not None and key.startswith(result.turn_id + "-")

    assert len(model.requests) == 2
    (told,) = tool_messages(model.requests[1])
    assert told["tool_call_id"] == "call_1"
    assert told["content"] == '{"headline": "rain tomorrow", "path": "/news"}'  # a success: the body
    assert not any(k.startswith("waystation_") for m in model.requests[1].messages for k in m)
    assert model.kept == []  # nothing parked: nothing to keep for a resumption

    assert await count(db, "tasks") == 0  # nothing parked
    (receipt,) = await all_receipts(db)
    assert receipt["status"] == "ok" and receipt["deferred_task_ids"] == []
    assert receipt["usage"]["completion_tokens"] == result.usage.completion_tokens > 0
    await assert_chain_ok(db)


async def test_unreachable_destination_while_online_is_parked_and_reported(
    make_engine: EngineFactory, store: TaskStore, connectivity: FakeConnectivity, db: Database
) -> None:
    with socket.socket() as s:  # a loopback port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    connectivity.state = "online"
    model = ScriptedBackend([fetch(f"http://127.0.0.1:{port}/hook")])
    result = await make_engine(model).run(TurnRequest("post it"))

    assert result.status == "parked"
    assert connectivity.network_errors == 1
    (task_id,) = result.deferred_task_ids
    task = await store.get(task_id)
    assert task.state == TaskState.PENDING and task.turn_id == result.turn_id
    # It says why it waits (not offline: the destination did not answer), and counts the turn's
    # try as the flusher counts one: a network failure, no attempt.
    assert task.attempts == 0 and task.net_failures == 1
    assert task.last_error is not None
    assert task.last_error.startswith(f"destination unreachable: 127.0.0.1:{port}: ConnectError")
    told = json.loads(json.loads((await turn_row(db, result.turn_id))["messages"])[-1]["content"])  # type: ignore[index]
    assert told["status"] == "deferred" and told["message"].startswith("destination unreachable: ")
    assert told["message"].endswith(": queued, delivered when it answers")
    (receipt,) = await all_receipts(db)
    assert receipt["status"] == "parked" and receipt["deferred_task_ids"] == [task_id]


async def test_parked_tasks_are_announced_once_committed(
    make_engine: EngineFactory, store: TaskStore, destination: Destination
) -> None:
    """As a task added over the API is: whoever listens for tasks (the flusher, the event
    stream) hears of a turn's parked calls too, after the commit that makes them real."""
    announced = RecordingAnnouncer()
    model = ScriptedBackend([fetch(destination.url("/news"))])
    result = await make_engine(model, announce=announced).run(TurnRequest("fetch the news"))
    (task_id,) = result.deferred_task_ids
    assert announced.states(task_id) == ["pending"]
    ((task, receipt),) = announced.tasks
    assert task == (await store.get(task_id)).to_json() and receipt is None
    assert announced.turns[0][0]["deferred_task_ids"] == [task_id]


async def test_a_parked_call_wakes_the_flusher_with_nothing_else_to_nudge_it(
    make_engine: EngineFactory, store: TaskStore, connectivity: FakeConnectivity
) -> None:
    """The reported bug: a call parked while online (its destination refused the connection)
    sat pending and due, never tried, until an unrelated `queue add` or a restart woke the
    flusher. The flusher listens for announced tasks as the agent wires it, and nothing else
    happens here: the parked task must still go out."""
    with socket.socket() as s:  # a loopback port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    connectivity.state = "online"
    announcer = Announcer(EventBus(), Metrics())
    delivery = ScriptedDelivery()  # the flusher's try finds the destination back
    flusher = Flusher(store, delivery, connectivity, QueueSettings(), announcer, rng=random.Random(3))
    announcer.listen("task", flusher.task_changed)  # as build_agent wires it
    flushing = asyncio.create_task(flusher.run())
    try:
        await asyncio.sleep(0.2)  # it looked, found nothing, and sleeps until woken
        model = ScriptedBackend([fetch(f"http://127.0.0.1:{port}/hook")])
        result = await make_engine(model, announce=announcer).run(TurnRequest("post it"))
        (task_id,) = result.deferred_task_ids
        await until(lambda: len(delivery.calls) == 1, within=2.0)
        assert delivery.keys == [(await store.get(task_id)).idempotency_key]
        await until(lambda: flusher.in_flight == 0)
        assert (await store.get(task_id)).state == TaskState.DONE
    finally:
        flushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flushing


# --- bad calls from the model -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (ToolCall("c1", "launch_rockets", {"count": 3}), "unknown tool 'launch_rockets'"),
        (ToolCall("c1", "http_request", {"url": "ftp://example.test/x"}), "http_request: url must be"),
        (ToolCall("c1", "web_fetch", {"url": "http://example.test/", "x": 1}), "unknown argument(s) x"),
    ],
)
async def test_bad_tool_call_is_an_error_message_to_the_model(
    make_engine: EngineFactory,
    db: Database,
    connectivity: FakeConnectivity,
    call: ToolCall,
    expected: str,
) -> None:
    connectivity.state = "online"
    model = ScriptedBackend([call, "Sorry, I could not do that."])
    result = await make_engine(model).run(TurnRequest("do the thing"))

    assert result.status == "ok"
    assert result.text == "Sorry, I could not do that."
    assert result.tool_calls[0]["status"] == "error"
    (told,) = tool_messages(model.requests[1])
    assert told["tool_call_id"] == "c1"
    assert expected in json.loads(told["content"])["error"]
    assert await count(db, "tasks") == 0
    await assert_chain_ok(db)


# --- resumption -------------------------------------------------------------------------------------


async def test_resume_after_settling_writes_a_linked_receipt_with_the_real_result(
    make_engine: EngineFactory, db: Database, store: TaskStore, destination: Destination
) -> None:
    url = destination.url("/news")
    model = ScriptedBackend([fetch(url), "The news: rain tomorrow."])
    engine = make_engine(model)
    parked = await engine.run(TurnRequest(f"Fetch {url}"))
    (task_id,) = parked.deferred_task_ids

    assert await engine.resume(parked.turn_id) is None  # still pending: not yet
    assert await parked_turns_ready(db) == []

    settled = await deliver_and_settle(store, task_id, destination)
    assert destination.hits == [("/news", settled.idempotency_key)]
    assert await parked_turns_ready(db) == [parked.turn_id]

    resumed = await engine.resume(parked.turn_id)
    assert resumed is not None
    assert resumed.turn_id == parked.turn_id
    assert resumed.status == "ok"
    assert resumed.text == "The news: rain tomorrow."
    assert resumed.deferred_task_ids == []
    assert resumed.receipt_id != parked.receipt_id

    # The model saw the real result in place of "deferred".
    (told,) = tool_messages(model.requests[-1])
    assert told["content"] == '{"headline": "rain tomorrow", "path": "/news"}'  # a success: the body
    assert "deferred" not in told["content"]
    assert model.requests[-1].tool_choice == "none"  # its URL answered: the resumed step answers

    turn_receipts = [r for r in await all_receipts(db) if r["kind"] == "turn"]
    assert [r["status"] for r in turn_receipts] == ["parked", "ok"]
    assert {r["turn_id"] for r in turn_receipts} == {parked.turn_id}
    task_receipts = [r for r in await all_receipts(db) if r["kind"] == "task"]
    assert [(r["task_id"], r["turn_id"], r["status"]) for r in task_receipts] == [
        (task_id, parked.turn_id, "ok")
    ]
    assert (await turn_row(db, parked.turn_id))["state"] == "ok"  # type: ignore[index]
    assert await parked_turns_ready(db) == []
    assert await engine.resume(parked.turn_id) is None  # a finished turn does not resume again
    await assert_chain_ok(db)


async def test_resume_after_a_cancelled_task_ends_in_error_naming_it(
    make_engine: EngineFactory, db: Database, store: TaskStore, destination: Destination
) -> None:
    """A resumed turn whose parked call did not succeed is never `ok`: it ends `error` naming
    the task, and the model is not asked to answer as if it had the result."""
    model = ScriptedBackend([fetch(destination.url("/x")), "It was cancelled."])
    engine = make_engine(model)
    parked = await engine.run(TurnRequest("fetch x"))
    task_id = parked.deferred_task_ids[0]
    await store.cancel(task_id)
    resumed = await engine.resume(parked.turn_id)
    assert resumed is not None and resumed.status == "error" and resumed.text == ""
    assert len(model.requests) == 1
    turn = await get_turn(db, parked.turn_id)
    assert turn["state"] == "error" and task_id in turn["reason"] and "cancelled" in turn["reason"]
    assert turn["text"] is None and turn["tool_calls"][0]["task_state"] == "cancelled"


async def test_concurrent_resumes_run_the_turn_once(
    make_engine: EngineFactory, db: Database, store: TaskStore, destination: Destination
) -> None:
    model = ScriptedBackend([fetch(destination.url("/news")), "resumed once"])
    engine = make_engine(model)
    parked = await engine.run(TurnRequest("fetch"))
    await deliver_and_settle(store, parked.deferred_task_ids[0], destination)

    results = await asyncio.gather(*(engine.resume(parked.turn_id) for _ in range(3)))
    finished = [r for r in results if r is not None]
    assert len(finished) == 1 and finished[0].text == "resumed once"
    assert len(model.requests) == 2
    turn_receipts = [r for r in await all_receipts(db) if r["kind"] == "turn"]
    assert [r["status"] for r in turn_receipts] == ["parked", "ok"]
    await assert_chain_ok(db)


async def test_resume_waits_for_every_task_of_the_turn(
    make_engine: EngineFactory, store: TaskStore, destination: Destination
) -> None:
    reply = Generation(
        text="",
        tool_calls=[fetch(destination.url("/one"), "c1"), fetch(destination.url("/two"), "c2")],
        finish_reason="tool_calls",
    )
    model = ScriptedBackend([reply, "both back"])
    engine = make_engine(model)
    parked = await engine.run(TurnRequest("two fetches"))
    first, second = parked.deferred_task_ids
    await deliver_and_settle(store, first, destination)
    assert await engine.resume(parked.turn_id) is None
    await deliver_and_settle(store, second, destination)
    resumed = await engine.resume(parked.turn_id)
    assert resumed is not None and resumed.text == "both back"
    told = [m["content"] for m in tool_messages(model.requests[-1])]
    assert len(told) == 2 and all("rain tomorrow" in t for t in told)


async def test_resume_of_an_unknown_turn_is_none(make_engine: EngineFactory) -> None:
    assert await make_engine(ScriptedBackend([])).resume("turn_doesnotexist") is None


async def test_a_resumed_turn_that_calls_again_offline_parks_again(
    make_engine: EngineFactory, db: Database, store: TaskStore, destination: Destination
) -> None:
    model = ScriptedBackend(
        [fetch(destination.url("/one"), "c1"), fetch(destination.url("/two"), "c2"), "both"]
    )
    engine = make_engine(model)
    parked = await engine.run(TurnRequest("one, then two"))
    await deliver_and_settle(store, parked.deferred_task_ids[0], destination)

    again = await engine.resume(parked.turn_id)  # still offline: the second call parks
    assert again is not None and again.status == "parked" and again.turn_id == parked.turn_id
    (second_task,) = again.deferred_task_ids
    tasks = {t.id: t for t in await store.for_turn(parked.turn_id)}
    assert set(tasks) == {parked.deferred_task_ids[0], second_task}
    assert len({t.idempotency_key for t in tasks.values()}) == 2

    await deliver_and_settle(store, second_task, destination)
    final = await engine.resume(parked.turn_id)
    assert final is not None and final.status == "ok" and final.text == "both"
    statuses = [r["status"] for r in await all_receipts(db) if r["kind"] == "turn"]
    assert statuses == ["parked", "parked", "ok"]
    await assert_chain_ok(db)


@pytest.mark.parametrize("resume", ["auto", "off"])
async def test_announced_settled_task_resumes_its_turn(
    make_engine: EngineFactory,
    db: Database,
    store: TaskStore,
    destination: Destination,
    resume: Literal["auto", "off"],
) -> None:
    """What the agent does when the flusher reports a settled task: resume the turn in the
    background (when `agent.resume` is auto) and announce it as a `turn` event."""
    events = EventBus()
    announcer = Announcer(events, Metrics())
    engine = make_engine(ScriptedBackend([fetch(destination.url("/news")), "resumed"]), announce=announcer)
    resumptions = Resumptions(engine, Background())
    if Settings(agent=AgentSettings(resume=resume)).agent.resume == "auto":  # as build() wires it
        announcer.listen("task", resumptions.task_changed)
    parked = await engine.run(TurnRequest("fetch"))  # the engine announces it
    task = await deliver_and_settle(store, parked.deferred_task_ids[0], destination)
    announcer.task_changed(task.to_json(), None)
    announcer.task_changed(task.to_json(), None)  # reported twice: still one resumption

    seen: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0 if resume == "off" else 10.0):
            async for event in events.subscribe(0):
                if event.kind == "turn":
                    seen.append(event.data)
                    if event.data["resumed"]:
                        break
    assert seen[0]["turn_id"] == parked.turn_id and seen[0]["resumed"] is False
    turn_receipts = [r for r in await all_receipts(db) if r["kind"] == "turn"]
    if resume == "off":
        assert len(seen) == 1 and [r["status"] for r in turn_receipts] == ["parked"]
        return
    assert len(seen) == 2
    assert seen[1]["turn_id"] == parked.turn_id and seen[1]["status"] == "ok"
    assert seen[1]["text"] == "resumed"
    assert [r["status"] for r in turn_receipts] == ["parked", "ok"]
    assert seen[1]["receipt_id"] == turn_receipts[1]["id"]


class OneAtATime:
    """A model that generates one request at a time, each taking `seconds` (as a local one does)."""

    def __init__(self, inner: ScriptedBackend, seconds: float) -> None:
        self._inner, self._seconds, self._lock = inner, seconds, asyncio.Lock()
        self.name, self.model_path, self.loaded = "scripted", "scripted", True

    async def generate(self, request: Any, on_token: Any = None) -> Any:
        async with self._lock:
            await asyncio.sleep(self._seconds)
            return await self._inner.generate(request, on_token)

    async def unload(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_many_turns_resumed_together_each_get_their_whole_time(
    make_engine: EngineFactory, db: Database, store: TaskStore, destination: Destination
) -> None:
    """A returning network settles many parked turns at once; resumed all together behind one
    model, the last ones spent their time limit waiting for it and ended `error`."""
    turns = 8
    replies: list[Any] = [fetch(destination.url(f"/{i}"), f"c{i}") for i in range(turns)] + ["done"] * turns
    engine = make_engine(OneAtATime(ScriptedBackend(replies), 0.2), turn_timeout_s=1.0)
    parked = [await engine.run(TurnRequest(f"fetch {destination.url(f'/{i}')}")) for i in range(turns)]
    for turn in parked:
        await deliver_and_settle(store, turn.deferred_task_ids[0], destination)
    background = Background()
    resumptions = Resumptions(engine, background)
    for turn in parked:
        resumptions.resume_soon(turn.turn_id)
    for _ in range(600):  # until every turn has its second receipt (30 s at most)
        if len([r for r in await all_receipts(db) if r["kind"] == "turn"]) == 2 * turns:
            break
        await asyncio.sleep(0.05)
    await background.close()
    states = [(await turn_row(db, t.turn_id))["state"] for t in parked]  # type: ignore[index]
    assert states == ["ok"] * turns


# --- bounds and failures ----------------------------------------------------------------------------


async def test_max_steps_bounds_the_turn_and_the_last_step_answers_in_text(
    make_engine: EngineFactory, connectivity: FakeConnectivity, destination: Destination, db: Database
) -> None:
    connectivity.state = "online"
    model = ScriptedBackend(
        [fetch(destination.url("/0"), "c0"), fetch(destination.url("/1"), "c1"), "final", "never asked"]
    )
    urls = " ".join(destination.url(f"/{i}") for i in range(3))
    result = await make_engine(model).run(TurnRequest(f"loop over {urls}", max_steps=3))

    assert result.text == "final" and result.status == "ok"
    # While a URL the user named is uncalled, auto calls for it; the last step answers regardless.
    assert [r.tool_choice for r in model.requests] == ["required", "required", "none"]
    assert model.requests[-1].tools == ()
    assert len(destination.hits) == 2

    # A turn with one step never offers tools, even when a call is "required".
    one = ScriptedBackend(["just text"])
    await make_engine(one).run(TurnRequest("hi", tool_choice="required", max_steps=1))
    assert [(r.tool_choice, tuple(r.tools)) for r in one.requests] == [("none", ())]


async def test_auto_calls_for_a_named_url_and_then_answers(
    make_engine: EngineFactory, connectivity: FakeConnectivity, destination: Destination
) -> None:
    connectivity.state = "online"
    model = ScriptedBackend([fetch(destination.url("/a")), "the answer"])
    result = await make_engine(model).run(TurnRequest(f"Fetch {destination.url('/a')} and tell me X"))
    assert result.text == "the answer"
    assert [r.tool_choice for r in model.requests] == ["required", "none"]
    assert len(destination.hits) == 1


async def test_tool_choice_none_never_offers_tools(make_engine: EngineFactory) -> None:
    model = ScriptedBackend(["plain"])
    await make_engine(model).run(TurnRequest("hi", tool_choice="none"))
    assert model.requests[0].tool_choice == "none" and model.requests[0].tools == ()


@pytest.mark.parametrize(
    "request_",
    [
        TurnRequest(""),
        TurnRequest("   \n\t"),
        TurnRequest("", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]),
        TurnRequest("", messages=[{"role": "user", "content": " "}]),
    ],
)
async def test_empty_prompt_is_refused_before_anything_runs(
    make_engine: EngineFactory, db: Database, request_: TurnRequest
) -> None:
    model = ScriptedBackend(["never"])
    with pytest.raises(EmptyPrompt) as caught:
        await make_engine(model).run(request_)
    assert caught.value.code == "empty_prompt" and caught.value.http_status == 400
    assert model.requests == []
    assert await count(db, "receipts") == 0


@pytest.mark.parametrize(
    ("default_route", "named", "refused", "why"),
    [
        ("openai", None, "openai", "OPENAI_API_KEY is not set"),
        ("local", "nope", "nope", "unknown route"),
        ("local", "anthropic", "anthropic", "ANTHROPIC_API_KEY is not set"),
        ("local", "claude-seat", "claude-seat", "disabled by policy"),
    ],
)
async def test_refused_route_writes_a_refused_receipt_and_never_falls_back(
    make_engine: EngineFactory,
    db: Database,
    default_route: str,
    named: str | None,
    refused: str,
    why: str,
) -> None:
    model = ScriptedBackend(["the local model must not answer"])
    with pytest.raises(RouteRefused) as caught:
        await make_engine(model, default_route=default_route).run(TurnRequest("hi", route=named))
    assert caught.value.route == refused and caught.value.exit_code == 4
    assert model.requests == []  # no fallback to the local model
    (receipt,) = await all_receipts(db)
    assert receipt["status"] == "refused"
    assert receipt["route"]["name"] == refused
    assert why in receipt["reason"]
    assert receipt["credits_used"] == 0
    assert receipt["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    await assert_chain_ok(db)


class ChattyBackend(ScriptedBackend):
    """Logs while it generates, as the real backends do (model loaded, unloaded...)."""

    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        structlog.get_logger("test.backend").info("generating")
        return await super().generate(request, on_token)


async def test_every_log_line_of_a_turn_carries_its_id(make_engine: EngineFactory) -> None:
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logged:
        result = await make_engine(ChattyBackend(["hi"])).run(TurnRequest("hello"))
    lines = [entry for entry in logged if entry["event"] == "generating"]
    assert lines and all(entry["turn_id"] == result.turn_id for entry in lines)
    assert "turn_id" not in structlog.contextvars.get_contextvars()  # unbound after the turn


class FailingBackend(ScriptedBackend):
    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        raise ModelError("broken.gguf", "llama.cpp could not load it (ValueError)")


async def test_model_error_writes_an_error_receipt(make_engine: EngineFactory, db: Database) -> None:
    with pytest.raises(ModelError):
        await make_engine(FailingBackend([])).run(TurnRequest("hi"))
    (receipt,) = await all_receipts(db)
    assert receipt["status"] == "error" and receipt["kind"] == "turn"
    assert "could not load" in receipt["reason"]
    assert receipt["route"]["name"] == "local" and receipt["route"]["cost_lane"] == "local"
    await assert_chain_ok(db)


async def test_missing_model_file_is_an_error_receipt(
    make_engine: EngineFactory, db: Database, tmp_path: Path
) -> None:
    engine = make_engine(ScriptedBackend([]))
    with pytest.raises(ModelError) as caught:
        await engine.run(TurnRequest("hi", model=str(tmp_path / "absent.gguf")))
    assert caught.value.http_status == 422
    (receipt,) = await all_receipts(db)
    assert receipt["status"] == "error" and "absent.gguf" in receipt["reason"]


class SlowBackend(ScriptedBackend):
    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        await asyncio.sleep(10)
        raise AssertionError("not reached")


async def test_a_turn_past_its_time_limit_ends_with_an_error_receipt(
    make_engine: EngineFactory, db: Database
) -> None:
    engine = make_engine(SlowBackend([]), turn_timeout_s=0.2)
    with pytest.raises(WaystationError, match="limit"):
        await engine.run(TurnRequest("hi"))
    (receipt,) = await all_receipts(db)
    assert receipt["status"] == "error" and "limit" in receipt["reason"]


async def test_many_turns_keep_the_chain_intact(
    make_engine: EngineFactory, db: Database, store: TaskStore, destination: Destination
) -> None:
    replies: list[Generation | str | ToolCall] = []
    for n in range(6):
        replies += [fetch(destination.url(f"/{n}"))] if n % 2 else [f"answer {n}"]
    engine = make_engine(ScriptedBackend(replies))
    results = [await engine.run(TurnRequest(f"turn {n}")) for n in range(6)]
    assert [r.status for r in results] == ["ok", "parked"] * 3
    verification = await verify_database(db)
    assert verification.ok and verification.count == 6
    assert (await store.counts())["pending"] == 3


# --- cancellation, timeouts and foreign failures ------------------------------------------------------


class BlockingBackend(ScriptedBackend):
    """A model that starts generating (one token) and then waits until released, forever if never."""

    def __init__(self) -> None:
        super().__init__([])
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        self.requests.append(request)
        if on_token is not None:
            on_token("Once")
        self.started.set()
        await self.release.wait()
        return Generation(text="Once upon a time.", prompt_tokens=3, completion_tokens=4)


async def test_a_cancelled_turn_still_writes_an_interrupted_receipt(
    make_engine: EngineFactory, db: Database
) -> None:
    model = BlockingBackend()
    tokens: list[str] = []
    running = asyncio.create_task(make_engine(model).run(TurnRequest("tell a story"), tokens.append))
    await model.started.wait()
    assert tokens == ["Once"]
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert running.cancelled()

    (receipt,) = await all_receipts(db)
    assert receipt["kind"] == "turn" and receipt["status"] == "error"
    assert receipt["reason"].startswith("interrupted"), receipt["reason"]
    assert receipt["route"]["name"] == "local" and receipt["route"]["provider"] == "scripted"
    assert receipt["credits_used"] == 0
    row = await turn_row(db, receipt["turn_id"])
    assert row is not None and row["state"] == "interrupted"
    await assert_chain_ok(db)


async def test_turn_timeout_is_a_504_turn_timeout_with_an_error_receipt(
    make_engine: EngineFactory, db: Database
) -> None:
    model = BlockingBackend()
    with pytest.raises(TurnTimeout) as caught:
        await make_engine(model, turn_timeout_s=0.2).run(TurnRequest("tell a story"))
    assert caught.value.code == "turn_timeout" and caught.value.http_status == 504
    assert caught.value.limit_s == 0.2
    assert caught.value.to_json() == {
        "error": {"code": "turn_timeout", "message": caught.value.message, "details": {"limit_s": 0.2}}
    }
    (receipt,) = await all_receipts(db)
    assert receipt["status"] == "error" and receipt["reason"] == caught.value.message
    assert "0.2 s" in receipt["reason"]
    await assert_chain_ok(db)


@dataclass
class ThreadedStub:
    """What a test-only ThreadedBackend loads: nothing, but counted."""

    loads: int = 0


class RaisingThreadedBackend(ThreadedBackend[ThreadedStub]):
    """A pure-Python ThreadedBackend whose generation fails with a foreign exception."""

    name = "raising"

    def load_blocking(self) -> ThreadedStub:
        return ThreadedStub(loads=1)

    def generate_blocking(
        self, handle: ThreadedStub, request: GenerationRequest, emit: TokenSink
    ) -> Generation:
        emit("partial")
        raise RuntimeError("the native library fell over")


async def test_a_foreign_exception_from_generation_becomes_model_error_with_a_receipt(
    make_engine: EngineFactory, db: Database, model_file: Path
) -> None:
    backend = RaisingThreadedBackend(str(model_file))
    try:
        engine = make_engine(backend)
        with pytest.raises(ModelError) as caught:
            await engine.run(TurnRequest("hi"))
        assert caught.value.code == "model_error" and caught.value.http_status == 422
        assert "generation failed (RuntimeError)" in caught.value.message
        assert isinstance(caught.value.__cause__, RuntimeError)
        # The backend is still usable (and fails the same clear way) afterwards.
        with pytest.raises(ModelError):
            await engine.run(TurnRequest("again"))
    finally:
        await backend.close()
    first, second = await all_receipts(db)
    for receipt in (first, second):
        assert receipt["status"] == "error" and receipt["kind"] == "turn"
        assert "generation failed (RuntimeError)" in receipt["reason"]
        assert "fell over" not in receipt["reason"]  # the foreign message stays out of the receipt
        assert receipt["route"]["provider"] == "raising"
    await assert_chain_ok(db)


async def test_an_interrupted_resumption_is_reclaimed_and_resumes_once(
    make_engine: EngineFactory, db: Database, store: TaskStore, destination: Destination
) -> None:
    model = ScriptedBackend([fetch(destination.url("/news")), "resumed after the restart"])
    engine = make_engine(model)
    parked = await engine.run(TurnRequest("fetch the news"))
    await deliver_and_settle(store, parked.deferred_task_ids[0], destination)
    # A resumption cut short (SIGTERM, crash) leaves the turn claimed: `resuming`.
    await db.write(
        lambda conn: conn.execute("UPDATE turns SET state = 'resuming' WHERE id = ?", (parked.turn_id,))
    )
    assert await parked_turns_ready(db) == []
    assert await engine.resume(parked.turn_id) is None  # claimed: nobody else may take it

    assert await recover_turns(db) == 1
    assert (await turn_row(db, parked.turn_id))["state"] == "parked"  # type: ignore[index]
    assert await parked_turns_ready(db) == [parked.turn_id]
    assert await recover_turns(db) == 0  # nothing left to reclaim

    results = await asyncio.gather(*(engine.resume(parked.turn_id) for _ in range(2)))
    finished = [r for r in results if r is not None]
    assert len(finished) == 1 and finished[0].text == "resumed after the restart"
    assert len(model.requests) == 2  # the parked run and one resumption
    assert await engine.resume(parked.turn_id) is None
    assert await parked_turns_ready(db) == []
    assert [r["status"] for r in await all_receipts(db) if r["kind"] == "turn"] == ["parked", "ok"]
    await assert_chain_ok(db)


async def test_reclaim_leaves_turns_in_other_states_alone(make_engine: EngineFactory, db: Database) -> None:
    ok = await make_engine(ScriptedBackend(["fine"])).run(TurnRequest("hi"))
    assert await recover_turns(db) == 0
    assert (await turn_row(db, ok.turn_id))["state"] == "ok"  # type: ignore[index]
    assert await parked_turns_ready(db) == []


# --- the threaded backend's stop flag -----------------------------------------------------------------


class CountingThreadedBackend(ThreadedBackend[ThreadedStub]):
    """A pure-Python ThreadedBackend: emits `max_tokens` tokens (one per millisecond), checking
    `stopping()` at each as the real backends do, and records how each generation finished."""

    name = "counting"

    def __init__(self, model_path: str) -> None:
        super().__init__(model_path)
        self.finished: list[tuple[str, int]] = []  # (finish_reason, tokens emitted)
        self.load_started = threading.Event()
        self.load_gate: threading.Event | None = None  # when set: loading waits for it

    def load_blocking(self) -> ThreadedStub:
        self.load_started.set()
        if self.load_gate is not None:
            assert self.load_gate.wait(10)
        return ThreadedStub(loads=1)

    def generate_blocking(
        self, handle: ThreadedStub, request: GenerationRequest, emit: TokenSink
    ) -> Generation:
        emitted, finish = 0, "length"
        while emitted < request.max_tokens:
            if self.stopping():
                finish = "cancelled"
                break
            emit(f" t{emitted}")
            emitted += 1
            time.sleep(0.001)
        self.finished.append((finish, emitted))
        return Generation(text="x" * emitted, completion_tokens=emitted, finish_reason=finish)


FOREVER = 10**9  # tokens: a generation that only ends when told to stop


def long_request(max_tokens: int = FOREVER) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": "go on forever"}], max_tokens=max_tokens)


async def first_token(
    backend: CountingThreadedBackend, request: GenerationRequest
) -> asyncio.Task[Generation]:
    """Start a generation and return once it has produced a token (it is running on the thread)."""
    seen = asyncio.Event()
    task = asyncio.create_task(backend.generate(request, lambda _: seen.set()))
    async with asyncio.timeout(10):
        await seen.wait()
    return task


async def test_cancelling_generate_stops_the_owner_thread_at_the_next_token(tmp_path: Path) -> None:
    backend = CountingThreadedBackend(str(tmp_path / "m.gguf"))
    try:
        running = await first_token(backend, long_request())
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        # The owner thread is free again: the next generation runs (it would queue behind the
        # cancelled one forever if that one never stopped).
        async with asyncio.timeout(10):
            after = await backend.generate(long_request(max_tokens=3))
        assert after.finish_reason == "length" and after.completion_tokens == 3
        (stopped, emitted), finished_next = backend.finished
        assert stopped == "cancelled" and 0 < emitted < FOREVER
        assert finished_next == ("length", 3)
        # And a fresh flag for it: a cancelled turn does not stop the ones after it.
        assert not backend.stopping()
    finally:
        async with asyncio.timeout(10):
            await backend.close()


async def test_close_during_a_generation_returns_promptly(tmp_path: Path) -> None:
    backend = CountingThreadedBackend(str(tmp_path / "m.gguf"))
    running = await first_token(backend, long_request())
    async with asyncio.timeout(10):
        await backend.close()
    generation = await running  # it was not cancelled: it ended early, and says so
    assert generation.finish_reason == "cancelled"
    assert backend.finished == [("cancelled", generation.completion_tokens)]
    assert not backend.loaded


async def test_close_before_the_generation_reaches_the_thread_still_stops_it(tmp_path: Path) -> None:
    """close() after generate() was called but before its generation started on the owner thread
    (here: the model is still loading): that generation must stop too, or close() waits forever."""
    backend = CountingThreadedBackend(str(tmp_path / "m.gguf"))
    backend.load_gate = threading.Event()
    queued = asyncio.create_task(backend.generate(long_request()))
    assert await asyncio.to_thread(backend.load_started.wait, 10)
    closing = asyncio.create_task(backend.close())
    await asyncio.sleep(0)  # close() has asked for the stop and waits for the generation
    backend.load_gate.set()
    async with asyncio.timeout(10):
        await closing
    generation = await queued
    assert generation.finish_reason == "cancelled" and generation.completion_tokens == 0
    assert backend.finished == [("cancelled", 0)]
