"""Lists hold summaries, bodies are for the one task (issue 20, item 11): `GET /v1/tasks` over 400
tasks of 1 MB took the agent to 1.6 GB when every row's args and result were loaded to be listed.
On a real database file: SQLite picks the listed fields, so the bodies never reach Python."""

from __future__ import annotations

import json
import tracemalloc

from waystation.agent.openapi_schemas import SCHEMAS
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask
from waystation.station.announce import slim

BODY = "x" * 1_000_000
TASKS = 12


async def _fill(store: TaskStore, db: Database) -> list[str]:
    """TASKS tasks of a 1 MB payload, every other one done with a 1 MB answer."""
    ids = []
    for n in range(TASKS):
        args = {
            "method": "POST",
            "url": f"https://user:pw@api.example.test/hook/{n}?token=abc",
            "body": BODY,
            "headers": {"Authorization": "Bearer s3cret"},
        }
        task, _ = await store.enqueue(NewTask("http_request", args, "api.example.test"))
        ids.append(task.id)
    answer = json.dumps({"status": 200, "headers": {"content-type": "text/plain"}, "body": BODY})
    await db.write(
        lambda conn: conn.executemany(
            "UPDATE tasks SET state = 'done', result = ? WHERE id = ?", [(answer, i) for i in ids[::2]]
        )
    )
    return ids


async def test_a_list_never_loads_the_bodies_and_stays_a_list_of_tasks(db: Database) -> None:
    store = TaskStore(db, QueueSettings())
    ids = await _fill(store, db)
    tracemalloc.start()
    try:
        listed = await store.list(limit=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, f"listing {TASKS} tasks of 1 MB allocated {peak:,} bytes: the bodies were loaded"

    shown = [t.to_json() for t in listed]
    assert [t["id"] for t in shown] == ids[::-1]
    required = SCHEMAS["Task"]["required"]
    for task in shown:
        assert set(required) <= set(task), "a listed task is still the contract's task object"
        assert task["args"] == {"method": "POST", "url": task["args"]["url"]}
        assert "pw" not in task["args"]["url"] and "abc" not in task["args"]["url"]  # still redacted
        assert task["result"] == ({"status": 200} if task["state"] == "done" else None)
    assert len(json.dumps(shown)) < 1000 * TASKS

    whole = (await store.get(ids[0])).to_json()  # the body is for the one task, as before
    assert whole["args"]["body"] == BODY and whole["result"]["body"] == BODY
    assert slim(whole) == next(t for t in shown if t["id"] == ids[0])  # as its event says it


async def test_an_mcp_task_lists_its_server_tool_and_whether_it_failed(db: Database) -> None:
    store = TaskStore(db, QueueSettings())
    args = {"server": "notes", "tool": "append", "arguments": {"text": BODY}}
    task, _ = await store.enqueue(NewTask("mcp", args, "notes.example.test"))
    answer = json.dumps({"content": [{"type": "text", "text": BODY}], "isError": False})
    await db.write(lambda conn: conn.execute("UPDATE tasks SET result = ? WHERE id = ?", (answer, task.id)))
    [listed] = await store.list()
    assert listed.args == {"server": "notes", "tool": "append"}
    assert listed.result == {"isError": False}  # a JSON false, not SQLite's 0
