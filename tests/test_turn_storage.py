"""What a turn's row keeps (issue 20, item 12): the conversation once, only while the turn may
need it (parked: to resume) or was asked to store it, never for a refused turn nor a chat
completion without `store: true`; finished turns compacted after `retention_days`; lists that
never read a conversation. On a real database file, with the engine and its scripted model."""

from __future__ import annotations

import json
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import test_turns_engine as engine_tests
from test_turns_engine import EngineFactory, deliver_and_settle, fetch, tool_messages

from waystation import migrations, timeutil
from waystation.adapters.models.scripted import ScriptedBackend
from waystation.db import Database
from waystation.errors import RouteRefused
from waystation.queue.store import TaskStore
from waystation.station.turns.records import compact_finished, get_turn, list_turns
from waystation.station.turns.request import TurnRequest

# The engine tests' fixtures, on this module's tests too: a real database file and destination.
client, connectivity, destination = engine_tests.client, engine_tests.connectivity, engine_tests.destination
make_engine, model_file, store = engine_tests.make_engine, engine_tests.model_file, engine_tests.store

MB = "x" * 1_000_000
RETENTION_S = 7 * 86400


async def _row(db: Database, turn_id: str) -> sqlite3.Row:
    row = await db.fetchone("SELECT * FROM turns WHERE id = ?", (turn_id,))
    assert row is not None
    return row


async def _bytes_in_use(db: Database) -> int:
    await db.checkpoint()
    (pages,) = await db.fetchone("PRAGMA page_count") or (0,)
    (free,) = await db.fetchone("PRAGMA freelist_count") or (0,)
    return int((pages - free) * 4096)


def _chat(history: list[dict[str, Any]], stored: bool = False) -> TurnRequest:
    return TurnRequest("", messages=history, client_tools=[], tool_choice="none", store=stored)


async def test_refused_turns_and_unstored_chat_completions_keep_no_conversation(
    make_engine: EngineFactory, db: Database
) -> None:
    before = await _bytes_in_use(db)
    engine = make_engine(ScriptedBackend(["never asked"] * 10))
    for _ in range(5):  # no OPENAI_API_KEY here: refused, and before it ran the row was written
        with pytest.raises(RouteRefused):
            await engine.run(TurnRequest(MB, route="openai"))
    # A chat client sends its whole history each time; without store: true none of it stays.
    history: list[dict[str, Any]] = []
    for n in range(4):
        history += [{"role": "user", "content": f"question {n} " + MB}]
        answered = await engine.run(_chat(history))
        history += [{"role": "assistant", "content": answered.text}]
    grown = await _bytes_in_use(db) - before
    assert grown < 500_000, f"{grown:,} bytes kept for 9 turns that keep no conversation"

    listed = await list_turns(db, None, 100)
    assert len(listed) == 9 and {t["state"] for t in listed} == {"ok", "refused"}
    for turn in listed:  # each still shows what it was asked, cut, and its answer
        assert turn["prompt"].endswith("…") and len(turn["prompt"]) == 1001
        row = await _row(db, turn["turn_id"])
        assert (row["request"], row["messages"]) == ("{}", "[]")
    assert listed[0]["prompt"].startswith("question 3 ") and listed[0]["text"] == "never asked"


async def test_a_stored_chat_completion_keeps_its_conversation_once(
    make_engine: EngineFactory, db: Database
) -> None:
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": MB}]
    answered = await make_engine(ScriptedBackend(["ok"])).run(_chat(history, stored=True))
    row = await _row(db, answered.turn_id)
    assert json.loads(row["messages"]) == [*history, {"role": "assistant", "content": "ok"}]
    request = json.loads(row["request"])  # the settings, not the conversation again
    assert request["messages"] is None and request["system"] is None and request["store"] is True
    assert len(row["request"]) < 1000


async def test_a_parked_turn_keeps_its_conversation_until_it_resumes_then_retention_compacts_it(
    make_engine: EngineFactory,
    db: Database,
    store: TaskStore,
    destination: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = destination.url("/news")
    prompt = f"Fetch {url} " + MB
    model = ScriptedBackend([fetch(url), "The news: rain tomorrow."])
    engine = make_engine(model)
    parked = await engine.run(TurnRequest(prompt))
    await deliver_and_settle(store, parked.deferred_task_ids[0], destination)

    # What a restart finds on disk: the conversation, once (the request keeps the settings only).
    with sqlite3.connect(db.path) as disk:
        request, messages = disk.execute("SELECT request, messages FROM turns").fetchone()
    assert json.loads(messages)[0] == {"role": "user", "content": prompt}
    assert json.loads(request)["prompt"] == "" and len(request) < 1000
    # However old, a parked turn is not finished: retention leaves it whole.
    later = timeutil.now() + 2 * RETENTION_S
    monkeypatch.setattr(timeutil, "now", lambda: later)
    assert await compact_finished(db, RETENTION_S) == 0

    resumed = await engine.resume(parked.turn_id)
    assert resumed is not None and resumed.status == "ok"
    assert '"headline": "rain tomorrow"' in tool_messages(model.requests[-1])[0]["content"]
    assert json.loads((await _row(db, parked.turn_id))["messages"])[0]["content"] == prompt
    shown = await get_turn(db, parked.turn_id)
    assert shown["compacted_at"] is None

    monkeypatch.setattr(timeutil, "now", lambda: later + RETENTION_S + 60)
    assert await compact_finished(db, RETENTION_S) == 1
    assert await compact_finished(db, RETENTION_S) == 0
    row = await _row(db, parked.turn_id)
    assert (row["request"], row["messages"]) == ("{}", "[]")
    compacted = await get_turn(db, parked.turn_id)  # the same turn object, saying since when
    assert compacted["compacted_at"] is not None
    assert {k: v for k, v in compacted.items() if k != "compacted_at"} == {
        k: v for k, v in shown.items() if k != "compacted_at"
    }
    assert compacted["text"] == "The news: rain tomorrow." and len(compacted["receipt_ids"]) == 3


async def test_listing_turns_never_reads_their_conversations(
    make_engine: EngineFactory, db: Database
) -> None:
    engine = make_engine(ScriptedBackend(["fine"] * 8))
    for _ in range(8):
        await engine.run(TurnRequest(MB))  # POST /v1/turns stores its conversation (1 MB each)
    tracemalloc.start()
    try:
        listed = await list_turns(db, None, 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(listed) == 8
    assert peak < 1_000_000, f"listing 8 turns of 1 MB allocated {peak:,} bytes: conversations were read"


async def test_the_migration_keeps_one_copy_and_backfills_the_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "waystation.db"
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 6)  # a database as the last release left it
    async with await Database.open(path):
        pass
    chat = {"prompt": "", "messages": [{"role": "user", "content": "hi " + MB}], "client_tools": []}
    old = [
        ("turn_ok", "ok", {"prompt": "what is up", "system": "brief"}),
        ("turn_chat", "ok", chat),
        ("turn_refused", "refused", {"prompt": MB}),
        ("turn_parked", "parked", {"prompt": "fetch it"}),
    ]
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO turns (id, state, request, messages, deferred, steps, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, '{}', 1, 1, 1)",
            [(i, state, json.dumps(r), '[{"role": "user", "content": "x"}]') for i, state, r in old],
        )
    monkeypatch.undo()
    async with await Database.open(path) as db:
        rows = {r["id"]: r for r in await db.fetchall("SELECT * FROM turns")}
    assert rows["turn_ok"]["prompt"] == "what is up" and rows["turn_chat"]["prompt"].startswith("hi x")
    assert len(rows["turn_refused"]["prompt"]) == 1001
    assert {i: r["messages"] == "[]" for i, r in rows.items()} == {
        "turn_ok": False,
        "turn_chat": True,
        "turn_refused": True,
        "turn_parked": False,
    }
    assert json.loads(rows["turn_chat"]["request"]) == {"prompt": "", "client_tools": []}
    assert json.loads(rows["turn_ok"]["request"]) == {"prompt": ""}
    assert json.loads(rows["turn_parked"]["request"]) == {"prompt": ""}
