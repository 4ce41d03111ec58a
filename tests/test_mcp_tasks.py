"""Remote MCP calls that a server answers with a task (the tasks extension), against a real SDK
server (support/mcp_task_server.py): the Waystation task stays `running` holding the server's
task id, is polled with `tasks/get` at the server's pace (bounded), across outages and `kill -9`,
never sent again as a `tools/call`, and ends with `tasks/result` as its result; `queue cancel`
sends `tasks/cancel`. And `notifications/tools/list_changed` lists a server's tools anew."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from support.mcp_task_server import TaskServer, task_server
from test_mcp_client import station

from waystation import timeutil
from waystation.adapters.mcp import McpCallTool
from waystation.adapters.mcp.remote_tasks import task_state
from waystation.adapters.mcp.session import McpRefused, call_result
from waystation.adapters.models.base import ToolCall
from waystation.adapters.models.scripted import ScriptedBackend
from waystation.adapters.tools import MAX_RESULT_BYTES, DeliveryClient, ToolRegistry, new_client
from waystation.config import McpServerSettings, QueueSettings
from waystation.db import Database
from waystation.ports import Outcome
from waystation.queue.flusher import Flusher
from waystation.queue.policy import POLL_MAX_S, POLL_MIN_S, TaskState, decide, poll_delay
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask
from waystation.station.announce import Announcer
from waystation.station.delivery import Deliveries
from waystation.station.events import EventBus
from waystation.station.metrics import Metrics
from waystation.station.turns.request import TurnRequest
from waystation.testing import FakeConnectivity, until


@pytest.fixture
async def client() -> AsyncIterator[DeliveryClient]:
    async with new_client() as c:
        yield c


@pytest.fixture
def server() -> Iterator[TaskServer]:
    with task_server() as found:
        yield found


@contextlib.asynccontextmanager
async def flushing(
    store: TaskStore, deliveries: Any, connectivity: FakeConnectivity
) -> AsyncIterator[Flusher]:
    announcer = Announcer(EventBus(), Metrics())
    flusher = Flusher(store, deliveries, connectivity, QueueSettings(), announcer, rng=random.Random(1))
    announcer.listen("task", flusher.task_changed)
    running = asyncio.create_task(flusher.run())
    try:
        flusher.connectivity_changed(connectivity.state)
        yield flusher
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


def as_httpx(client: DeliveryClient) -> httpx.AsyncClient:
    """The client as test_mcp_client's `station` names it (it wraps one)."""
    return cast(httpx.AsyncClient, client)


def mcp_task(server: str, tool: str, arguments: dict[str, Any], key: str) -> NewTask:
    args = {"server": server, "tool": tool, "arguments": arguments}
    return NewTask("mcp", args, "127.0.0.1", idempotency_key=key)


# --- parked offline, then polled to its result ------------------------------------------------------


async def test_a_parked_call_taken_as_a_task_is_polled_until_its_result_reaches_the_turn(
    db: Database, tmp_path: Path, client: DeliveryClient, server: TaskServer
) -> None:
    servers = {"tracker": McpServerSettings(url=server.url)}
    connectivity = FakeConnectivity(state="online")
    model = ScriptedBackend(
        [ToolCall("c1", "tracker__open_ticket", {"title": "Printer on fire"}), "Ticket 42."]
    )
    engine, catalog, _, deliveries = station(db, tmp_path, connectivity, as_httpx(client), model, servers)
    assert await catalog.refresh(online=True) == {}
    connectivity.state = "offline"
    parked = await engine.run(TurnRequest("Open a ticket: Printer on fire"))
    assert parked.status == "parked"
    (task_id,) = parked.deferred_task_ids
    assert server.count("tools/call") == 0  # nothing left the host while offline

    store = TaskStore(db, QueueSettings())
    connectivity.state = "online"
    async with flushing(store, deliveries, connectivity) as flusher:
        await until(lambda: server.count("tasks/get") >= 2, within=20.0)
        waiting = await store.get(task_id)
        assert waiting.state == TaskState.RUNNING  # stays running while the server works
        assert waiting.remote_task is not None and waiting.remote_task in server.tasks
        assert waiting.last_error is not None and "working" in waiting.last_error

        # An outage while the server works: the task stays running, and is not sent again.
        connectivity.state = "offline"
        flusher.connectivity_changed("offline")
        await asyncio.sleep(0.5)
        assert (await store.get(task_id)).state == TaskState.RUNNING
        connectivity.state = "online"
        flusher.connectivity_changed("online")

        server.finish()
        await until(lambda: server.count("tasks/result") == 1, within=20.0)
        await until(lambda: flusher.in_flight == 0, within=10.0)
        done = await store.get(task_id)
    assert done.state == TaskState.DONE, done
    assert done.result is not None and done.result["structuredContent"] == {
        "number": 42,
        "title": "Printer on fire",
    }
    assert done.result["isError"] is False
    assert server.count("tools/call") == 1 and server.remote.calls() == [done.idempotency_key]
    assert server.runs == {done.idempotency_key: 1}

    resumed = await engine.resume(parked.turn_id)
    assert resumed is not None and resumed.status == "ok"
    told = [m for m in model.requests[-1].messages if m.get("role") == "tool"]
    assert '"number": 42' in told[-1]["content"]


async def test_an_online_turns_call_taken_as_a_task_parks_the_turn_on_it(
    db: Database, tmp_path: Path, client: DeliveryClient, server: TaskServer
) -> None:
    servers = {"tracker": McpServerSettings(url=server.url)}
    connectivity = FakeConnectivity(state="online")
    model = ScriptedBackend([ToolCall("c1", "tracker__open_ticket", {"title": "Now"}), "Ticket 42."])
    engine, catalog, _, deliveries = station(db, tmp_path, connectivity, as_httpx(client), model, servers)
    assert await catalog.refresh(online=True) == {}
    parked = await engine.run(TurnRequest("Open a ticket: Now"))
    assert parked.status == "parked"  # not an error the model reads: the turn waits on the task
    (task_id,) = parked.deferred_task_ids
    store = TaskStore(db, QueueSettings())
    waiting = await store.get(task_id)
    assert waiting.state == TaskState.RUNNING and waiting.remote_task in server.tasks
    assert server.count("tools/call") == 1
    server.finish()
    async with flushing(store, deliveries, connectivity) as flusher:
        await until(lambda: server.count("tasks/result") == 1, within=20.0)
        await until(lambda: flusher.in_flight == 0, within=10.0)
    assert (await store.get(task_id)).state == TaskState.DONE
    resumed = await engine.resume(parked.turn_id)
    assert resumed is not None and resumed.status == "ok" and resumed.text == "Ticket 42."
    assert server.count("tools/call") == 1


async def test_polls_keep_to_the_bounds_whatever_interval_the_server_asks(
    db: Database, client: DeliveryClient
) -> None:
    """A server asking for 1 ms polls gets one at most every 0.5 s; one asking for an hour, one
    within 30 s."""
    assert poll_delay(0.001) == POLL_MIN_S and poll_delay(3600.0) == POLL_MAX_S and poll_delay(None) == 1.0
    with task_server(poll_interval_ms=1) as eager:
        tools = McpCallTool({"tracker": McpServerSettings(url=eager.url)}, None)
        store = TaskStore(db, QueueSettings())
        deliveries = Deliveries(ToolRegistry([tools]), client, 10.0)
        await store.enqueue(mcp_task("tracker", "open_ticket", {"title": "t"}, "eager-1"))
        connectivity = FakeConnectivity(state="online")
        async with flushing(store, deliveries, connectivity):
            await until(lambda: eager.count("tasks/get") >= 1, within=20.0)
            started, polls = time.monotonic(), eager.count("tasks/get")
            await asyncio.sleep(2.0)
            polled = eager.count("tasks/get") - polls
            elapsed = time.monotonic() - started
        assert polled <= elapsed / POLL_MIN_S + 1, f"{polled} polls in {elapsed:.1f} s"
    answer = decide(
        outcome=Outcome.WAITING, status=202, attempts=0, net_failures=0, now=100.0,
        settings=QueueSettings(), rng=random.Random(1), retry_after_s=3600.0, remote_task="t1",
    )  # fmt: skip
    assert answer.state == TaskState.RUNNING and answer.next_attempt_at == 100.0 + POLL_MAX_S
    assert answer.remote_task == "t1"


async def test_a_waiting_task_stays_running_through_recover_and_release_and_expires_as_such(
    db: Database,
) -> None:
    store = TaskStore(db, QueueSettings())
    waiting = NewTask("mcp", {"server": "s", "tool": "t", "arguments": {}}, "h", "w-1", remote_task="r1")
    task, _ = await store.enqueue(waiting)
    assert task.state == TaskState.RUNNING and task.remote_task == "r1"
    (leased,) = await store.lease(10, {}, 10)
    assert leased.id == task.id and leased.remote_task == "r1"
    assert await store.recover(all_running=True) == 1  # held at a crash: waiting again, not pending
    again = await store.get(task.id)
    assert again.state == TaskState.RUNNING and again.lease_expires_at is None
    assert await store.recover(all_running=True) == 0  # a waiting one is no abandoned lease
    (leased,) = await store.lease(10, {}, 10)
    await store.release([leased.id])
    assert (await store.get(task.id)).state == TaskState.RUNNING
    assert await store.next_due_at() is not None

    late = dataclasses.replace(
        waiting, idempotency_key="w-2", remote_task="r2", expires_at=timeutil.now() - 1
    )
    stale, _ = await store.enqueue(late)
    ((expired, _),) = await store.expire_due()
    assert expired.id == stale.id and expired.state == TaskState.EXPIRED
    assert expired.last_error is not None and "r2" in expired.last_error


# --- what a server may answer wrongly ---------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"task": {"taskId": "", "status": "working"}},  # no id: nothing to poll
        {"task": {"taskId": 7, "status": "working"}},
        {"content": "not a list"},
        {"neither": True},
    ],
)
def test_a_tools_call_answer_that_is_neither_a_result_nor_a_task_is_refused(answer: dict[str, Any]) -> None:
    with pytest.raises(McpRefused):
        call_result(answer)


@pytest.mark.parametrize("status", ["done", None, 3])
def test_a_task_with_an_unknown_status_is_refused(status: Any) -> None:
    with pytest.raises(McpRefused, match="no known status"):
        task_state({"taskId": "t", "status": status})


def test_a_servers_poll_interval_is_read_in_seconds_and_a_bad_one_ignored() -> None:
    assert task_state({"status": "working", "pollInterval": 2500}).poll_s == 2.5
    assert task_state({"status": "working", "pollInterval": "soon"}).poll_s is None
    assert task_state({"status": "working", "pollInterval": True}).poll_s is None


async def test_a_hanging_poll_is_timed_out_and_the_task_stays_running_never_resent(
    client: DeliveryClient, server: TaskServer
) -> None:
    calls = McpCallTool({"tracker": McpServerSettings(url=server.url)}, None)
    deliveries = Deliveries(ToolRegistry([calls]), client, 2.0)
    args = calls.validate({"server": "tracker", "tool": "open_ticket", "arguments": {"title": "t"}})
    taken = await deliveries("mcp", args, "hang-1")
    assert taken.outcome == Outcome.WAITING and taken.remote_task in server.tasks
    server.hang.set()
    began = time.monotonic()
    polled = await deliveries("mcp", args, "hang-1", taken.remote_task)
    assert polled.outcome == Outcome.UNREACHABLE and time.monotonic() - began < 10
    server.hang.clear()
    decision = decide(
        outcome=polled.outcome, status=None, attempts=0, net_failures=0, now=timeutil.now(),
        settings=QueueSettings(), rng=random.Random(1), error=polled.error, remote_task=taken.remote_task,
    )  # fmt: skip
    assert decision.state == TaskState.RUNNING  # not pending: pending would send tools/call again
    assert server.count("tools/call") == 1


async def test_a_task_the_server_lost_or_cancelled_ends_dead_and_a_big_result_is_capped(
    client: DeliveryClient, server: TaskServer
) -> None:
    calls = McpCallTool({"tracker": McpServerSettings(url=server.url)}, None)
    deliveries = Deliveries(ToolRegistry([calls]), client, 10.0)
    args = calls.validate(
        {"server": "tracker", "tool": "big_report", "arguments": {"size": 3 * MAX_RESULT_BYTES}}
    )
    taken = await deliveries("mcp", args, "big-1")
    server.finish()
    done = taken
    for _ in range(100):  # the server's task runs once let: polled until it ended
        done = await deliveries("mcp", args, "big-1", taken.remote_task)
        if done.outcome != Outcome.WAITING:
            break
        await asyncio.sleep(0.1)
    assert done.outcome == Outcome.DONE and done.result is not None
    assert done.result["truncated"] is True and len(str(done.result["body"]).encode()) <= MAX_RESULT_BYTES
    assert len(json.dumps(done.result).encode()) < 2 * MAX_RESULT_BYTES + 1000  # content capped too

    server.status_override = {"taskId": taken.remote_task, "status": "cancelled"}
    gone = await deliveries("mcp", args, "big-1", taken.remote_task)
    assert gone.outcome == Outcome.DEAD and gone.status == 400
    server.status_override = None
    server.forget()
    lost = await deliveries("mcp", args, "big-1", taken.remote_task)
    assert lost.outcome == Outcome.DEAD and lost.result is not None and "no task" in str(lost.result["body"])


# --- tools/list_changed ------------------------------------------------------------------------------


async def test_a_servers_list_changed_notification_lists_its_tools_again(
    db: Database, tmp_path: Path, client: DeliveryClient, server: TaskServer
) -> None:
    servers = {"tracker": McpServerSettings(url=server.url)}
    _, catalog, tools, _ = station(
        db, tmp_path, FakeConnectivity(state="online"), as_httpx(client), ScriptedBackend([]), servers
    )
    assert await catalog.refresh(online=True) == {}
    assert "tracker__close_ticket" not in tools.names()
    calls = tools.get("mcp")
    assert isinstance(calls, McpCallTool)
    answer = await calls.deliver(
        client, calls.validate({"server": "tracker", "tool": "grow"}), "grow-1", 10.0
    )
    assert answer.status == 200
    await until(lambda: "tracker__close_ticket" in tools.names(), within=10.0)
    row = await db.fetchone("SELECT tools FROM mcp_tools WHERE server = 'tracker'")
    assert row is not None and "close_ticket" in {t["name"] for t in json.loads(row["tools"])}
