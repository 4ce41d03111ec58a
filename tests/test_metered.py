"""Metered connections: NetworkManager's Metered property, the store's hold-back, and the agent."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.agentproc import Agent, Receiver, make_home, remove_home, wait_for

from waystation.adapters.connectivity import metered
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask


def fake_busctl(directory: Path, script: str) -> str:
    """A `busctl` on a PATH of its own running `script` (sh); returns that PATH."""
    path = directory / "busctl"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(directory)


# --- reading NetworkManager's answer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("u 1", True),
        ("u 3", True),
        ("u 1\n", True),
        ("u 4", False),
        ("u 2", False),
        ("u 0", False),
        ("", False),
        ("garbage", False),
        ("s 1", False),
        ("u x", False),
        ("u 1 2", False),
    ],
)
def test_parse_metered(output: str, expected: bool) -> None:
    assert metered.parse_metered(output) is expected


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("echo 'u 1'", True),
        ("echo 'u 3'", True),
        ("echo 'u 4'", False),
        ("echo garbage", False),
        ("echo 'u 1'; exit 1", False),
        ("exit 1", False),
    ],
)
async def test_read_nm_metered_runs_busctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, expected: bool
) -> None:
    monkeypatch.setenv("PATH", fake_busctl(tmp_path, script))
    assert await metered.read_nm_metered() is expected


async def test_read_nm_metered_without_busctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # empty: no busctl
    assert await metered.read_nm_metered() is False


async def test_read_nm_metered_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", fake_busctl(tmp_path, "exec sleep 30"))
    assert await metered.read_nm_metered(timeout_s=0.2) is False


# --- the store's hold-back -----------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[TaskStore]:
    db = await Database.open(tmp_path / "waystation.db")
    try:
        yield TaskStore(db, QueueSettings())
    finally:
        await db.close()


def _task(tool: str, args: dict[str, Any], host: str = "api.example.test") -> NewTask:
    return NewTask(tool=tool, args=args, host=host)


async def test_lease_holds_back_unsized_and_large_tasks(store: TaskStore) -> None:
    small, _ = await store.enqueue(_task("http_request", {"method": "POST", "url": "https://a.test/s"}))
    large, _ = await store.enqueue(
        _task("http_request", {"method": "POST", "url": "https://a.test/l", "body": "x" * 5000})
    )
    fetch, _ = await store.enqueue(_task("web_fetch", {"url": "https://a.test/page"}))
    leased = await store.lease(10, {}, 10, hold_back_bytes=1000)
    assert [t.id for t in leased] == [small.id]
    assert await store.next_due_at(hold_back_bytes=1000) is None
    assert await store.next_due_at() is not None
    rest = await store.lease(10, {}, 10)
    assert {t.id for t in rest} == {large.id, fetch.id}


async def test_hold_back_applies_past_the_lease_window(store: TaskStore) -> None:
    # One host fills the first window; the per-host look past it must hold back too.
    for i in range(8):
        await store.enqueue(
            _task("http_request", {"method": "POST", "url": f"https://busy.test/{i}"}, "busy.test")
        )
    await store.enqueue(_task("web_fetch", {"url": "https://other.test/"}, "other.test"))
    await store.enqueue(
        _task(
            "http_request",
            {"method": "POST", "url": "https://other.test/l", "body": "y" * 5000},
            "other.test",
        )
    )
    small, _ = await store.enqueue(
        _task("http_request", {"method": "POST", "url": "https://other.test/s"}, "other.test")
    )
    leased = await store.lease(1, {"busy.test": 1}, 1, hold_back_bytes=1000)
    assert [t.id for t in leased] == [small.id]


# --- the agent ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_agent_holds_back_on_a_metered_connection_until_a_flush() -> None:
    home = make_home()
    receiver = Receiver()
    agent = Agent(
        home,
        {
            "WAYSTATION_CONNECTIVITY__MODE": "online",
            "WAYSTATION_CONNECTIVITY__PROBE_URL": receiver.url("/generate_204"),
            "WAYSTATION_CONNECTIVITY__METERED": "yes",
            "WAYSTATION_QUEUE__METERED_MAX_BYTES": "1000",
        },
    )
    try:
        agent.start()
        connectivity = agent.api("GET", "/v1/connectivity").json()
        assert connectivity["metered"] is True
        assert connectivity["state"] == "online"

        def add(tool: str, args: dict[str, Any]) -> str:
            answer = agent.api("POST", "/v1/tasks", json={"tool": tool, "args": args})
            assert answer.status_code == 201, answer.text
            task_id: str = answer.json()["id"]
            return task_id

        held_fetch = add("web_fetch", {"url": receiver.url("/ok/fetch")})
        held_large = add(
            "http_request", {"method": "POST", "url": receiver.url("/ok/large"), "body": "z" * 5000}
        )
        small = add("http_request", {"method": "POST", "url": receiver.url("/ok/small")})

        wait_for(lambda: receiver.hits("/ok/small"), what="the small task's delivery")
        wait_for(lambda: agent.api("GET", f"/v1/tasks/{small}").json()["state"] == "done", what="small done")
        for task_id in (held_fetch, held_large):
            assert agent.api("GET", f"/v1/tasks/{task_id}").json()["state"] == "pending"
        assert not receiver.hits("/ok/fetch") and not receiver.hits("/ok/large")

        flushed = agent.api("POST", "/v1/flush")
        assert flushed.status_code == 202, flushed.text
        assert flushed.json()["metered"] is True
        for task_id in (held_fetch, held_large):
            wait_for(
                lambda task_id=task_id: agent.api("GET", f"/v1/tasks/{task_id}").json()["state"] == "done",
                what=f"{task_id} delivered after the flush",
            )
        assert len(receiver.hits("/ok/fetch")) == 1 and len(receiver.hits("/ok/large")) == 1
    finally:
        agent.close()
        receiver.close()
        if os.environ.get("KEEP_HOME") is None:
            remove_home(home)
