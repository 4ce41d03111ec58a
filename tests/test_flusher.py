"""The Flusher alone, on a real database, with the shipped doubles for its ports: a scripted
delivery, a connectivity state the test sets, and an announcer that records.

What is checked: it delivers only while online and starts the instant the state turns online;
the keys it sends; the limits on what is in flight (overall and per host); how each outcome
settles a task (done, retry with Retry-After, dead with the reason, unreachable with no attempt
counted and the monitor told); metered hold-back and an explicit flush; that stopping gives
every task it holds back as pending; the breaker (a host left alone, briefly when it refuses at
once, longer when it hangs, without the flusher spinning meanwhile); that an announced pending
task wakes it; and that a destination back after refusing is delivered within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from waystation import timeutil
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.ports import Delivery, Outcome
from waystation.queue import breaker
from waystation.queue.flusher import Flusher
from waystation.queue.policy import TaskState
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask, Task
from waystation.testing import FakeConnectivity, RecordingAnnouncer, ScriptedDelivery, delivered, until

SETTINGS = QueueSettings(concurrency=4, per_host=2)


@pytest.fixture
def store(db: Database) -> TaskStore:
    return TaskStore(db, SETTINGS)


@pytest.fixture
def connectivity() -> FakeConnectivity:
    return FakeConnectivity(state="online")


@pytest.fixture
def announced() -> RecordingAnnouncer:
    return RecordingAnnouncer()


@pytest.fixture
def delivery() -> ScriptedDelivery:
    return ScriptedDelivery()


@pytest.fixture
async def flusher(
    store: TaskStore,
    delivery: ScriptedDelivery,
    connectivity: FakeConnectivity,
    announced: RecordingAnnouncer,
) -> AsyncIterator[Flusher]:
    flusher = Flusher(store, delivery, connectivity, SETTINGS, announced, rng=random.Random(7))
    running = asyncio.create_task(flusher.run())
    try:
        yield flusher
    finally:
        delivery.release()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def add(
    store: TaskStore, flusher: Flusher, n: int, host: str = "a.example", size: int = 10
) -> list[Task]:
    tasks = []
    for i in range(n):
        new = NewTask("http_request", {"url": f"http://{host}/{i}", "pad": "x" * size}, host, f"{host}-{i}")
        task, _ = await store.enqueue(new)
        tasks.append(task)
    flusher.wake()
    return tasks


async def states(store: TaskStore, tasks: list[Task]) -> list[TaskState]:
    return [(await store.get(t.id)).state for t in tasks]


async def test_delivers_while_online_with_each_tasks_key(
    store: TaskStore, flusher: Flusher, delivery: ScriptedDelivery, announced: RecordingAnnouncer
) -> None:
    tasks = await add(store, flusher, 3)
    await until(lambda: len(announced.tasks) == 3)
    assert sorted(delivery.keys) == sorted(t.idempotency_key for t in tasks)
    assert await states(store, tasks) == [TaskState.DONE] * 3
    assert announced.deliveries == [(Outcome.DONE, False)] * 3
    for task in tasks:
        assert announced.states(task.id) == ["done"]
    receipts = [r for _, r in announced.tasks]
    assert all(r is not None and r["status"] == "ok" for r in receipts)


async def test_nothing_goes_out_offline_and_everything_at_once_when_online(
    store: TaskStore, flusher: Flusher, delivery: ScriptedDelivery, connectivity: FakeConnectivity
) -> None:
    connectivity.state = "offline"
    flusher.connectivity_changed("offline")
    tasks = await add(store, flusher, 3)
    await asyncio.sleep(0.2)
    assert delivery.calls == []
    assert await states(store, tasks) == [TaskState.PENDING] * 3
    connectivity.state = "online"
    flusher.connectivity_changed("online")
    await until(lambda: len(delivery.calls) == 3, within=1.0)  # no polling delay


async def test_in_flight_stays_within_concurrency_and_per_host(
    store: TaskStore, flusher: Flusher, delivery: ScriptedDelivery
) -> None:
    delivery.hold()
    await add(store, flusher, 6, host="a.example")
    await add(store, flusher, 6, host="b.example")
    await add(store, flusher, 6, host="c.example")
    await until(lambda: delivery.in_flight == SETTINGS.concurrency)
    await asyncio.sleep(0.1)  # nothing more starts while they hang
    assert delivery.in_flight == SETTINGS.concurrency
    hosts = [c.args["url"].split("/")[2] for c in delivery.calls]
    assert max(hosts.count(h) for h in set(hosts)) <= SETTINGS.per_host
    delivery.release()
    await until(lambda: len(delivery.calls) == 18)


async def test_unreachable_counts_no_attempt_and_tells_the_monitor(
    store: TaskStore, flusher: Flusher, delivery: ScriptedDelivery, connectivity: FakeConnectivity
) -> None:
    delivery.script.append(Delivery(Outcome.UNREACHABLE, error="a.example: connection refused"))
    delivery.default = Delivery(Outcome.UNREACHABLE, error="a.example: connection refused")
    (task,) = await add(store, flusher, 1)
    await until(lambda: connectivity.network_errors >= 1)
    await until(lambda: flusher.in_flight == 0)
    after = await store.get(task.id)
    assert after.state == TaskState.PENDING and after.attempts == 0 and after.net_failures >= 1
    assert after.last_error == "destination unreachable: a.example: connection refused"


async def test_retry_honours_retry_after(
    store: TaskStore, flusher: Flusher, delivery: ScriptedDelivery
) -> None:
    delivery.default = Delivery(Outcome.RETRY, status=503, result={"status": 503}, retry_after_s=600.0)
    before = timeutil.now()
    (task,) = await add(store, flusher, 1)
    await until(lambda: len(delivery.calls) == 1)
    await until(lambda: flusher.in_flight == 0)
    after = await store.get(task.id)
    assert after.state == TaskState.PENDING and after.attempts == 1
    assert after.next_attempt_at >= before + 600.0
    assert after.last_error == "destination answered HTTP 503"


async def test_dead_says_why_with_or_without_an_http_status(
    store: TaskStore, flusher: Flusher, delivery: ScriptedDelivery, announced: RecordingAnnouncer
) -> None:
    delivery.script += [delivered(404), Delivery(Outcome.DEAD, error="http_request: url is not absolute")]
    delivery.hold()
    first = await add(store, flusher, 1, host="a.example")
    await until(lambda: len(delivery.calls) == 1)
    second = await add(store, flusher, 1, host="b.example")
    await until(lambda: len(delivery.calls) == 2)
    delivery.release()
    await until(lambda: len(announced.tasks) == 2)
    dead = [await store.get(t.id) for t in first + second]
    assert [t.state for t in dead] == [TaskState.DEAD, TaskState.DEAD]
    assert dead[0].last_error == "destination answered HTTP 404"
    assert dead[1].last_error == "http_request: url is not absolute"  # never "HTTP None"


async def test_metered_link_holds_large_tasks_until_an_explicit_flush(
    store: TaskStore, flusher: Flusher, delivery: ScriptedDelivery, connectivity: FakeConnectivity
) -> None:
    connectivity.metered = True
    small = await add(store, flusher, 1, host="a.example", size=10)
    large = await add(store, flusher, 1, host="b.example", size=SETTINGS.metered_max_bytes + 1)
    await until(lambda: len(delivery.calls) == 1)
    await asyncio.sleep(0.1)
    assert delivery.keys == [small[0].idempotency_key]
    flusher.flush_everything()
    await until(lambda: len(delivery.calls) == 2)
    assert delivery.keys[1] == large[0].idempotency_key


async def test_stopping_gives_held_tasks_back_as_pending(
    store: TaskStore,
    delivery: ScriptedDelivery,
    connectivity: FakeConnectivity,
    announced: RecordingAnnouncer,
) -> None:
    flusher = Flusher(store, delivery, connectivity, SETTINGS, announced)
    delivery.hold()
    running = asyncio.create_task(flusher.run())
    tasks = await add(store, flusher, 8, host="a.example")
    await until(lambda: delivery.in_flight == SETTINGS.per_host)
    assert flusher.held()  # in flight, and leased ahead
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    assert await states(store, tasks) == [TaskState.PENDING] * 8
    assert announced.tasks == []  # nothing was answered, so nothing settled


async def test_a_host_that_keeps_not_answering_is_left_alone_while_others_deliver(
    store: TaskStore, flusher: Flusher, delivery: ScriptedDelivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from waystation.queue.breaker import FAILURES_TO_OPEN

    monkeypatch.setattr(breaker, "REFUSING_FIRST_S", 60.0)  # left alone for longer than this test

    def answer(call: Any) -> Delivery:
        if "dead.example" in call.args["url"]:
            return Delivery(Outcome.UNREACHABLE, error="dead.example: no answer within 4s")
        return delivered()

    delivery.default = answer
    dead = await add(store, flusher, 12, host="dead.example")
    healthy = await add(store, flusher, 6, host="ok.example")
    await until(lambda: sum("ok.example" in c.args["url"] for c in delivery.calls) == 6, within=5.0)
    await asyncio.sleep(0.3)
    to_dead = [c for c in delivery.calls if "dead.example" in c.args["url"]]
    # Once its circuit opened, no new delivery went to the dead host: at most the ones in flight.
    assert len(to_dead) <= FAILURES_TO_OPEN + SETTINGS.per_host, len(to_dead)
    assert {s for s in await states(store, dead)} == {TaskState.PENDING}  # all kept, none lost
    assert await states(store, healthy) == [TaskState.DONE] * 6
    flusher.connectivity_changed("online")  # the network came back: every host gets a chance
    await until(lambda: len([c for c in delivery.calls if "dead.example" in c.args["url"]]) > len(to_dead))


def test_the_breaker_opens_after_failures_in_a_row_and_closes_on_an_answer() -> None:
    from waystation.queue.breaker import OPEN_FIRST_S, Breaker

    breaker = Breaker()
    hung = 30.0  # each failure held its slot for a whole delivery timeout
    assert breaker.answered("h", False, 0.0, held_s=hung) is False
    assert breaker.answered("h", False, 1.0, held_s=hung) is True  # the second in a row opens it
    assert breaker.open_hosts(2.0) == ["h"] and breaker.next_close(2.0) == 1.0 + OPEN_FIRST_S
    assert breaker.open_hosts(1.0 + OPEN_FIRST_S + 0.1) == []
    breaker.answered("h", False, 20.0, held_s=hung)
    assert breaker.answered("h", False, 21.0, held_s=hung) is True
    assert breaker.next_close(21.0) == 21.0 + 2 * OPEN_FIRST_S
    breaker.answered("h", True, 22.0, held_s=0.1)  # any answer closes it and forgets the doubling
    assert breaker.open_hosts(22.0) == []


def test_a_host_that_refuses_at_once_is_left_alone_briefly_and_never_long() -> None:
    """A refused connection holds no slot: the breaker only spaces its backlog's tries, from
    REFUSING_FIRST_S up to REFUSING_MAX_S (a no-answer retry's longest pause), so the host's
    return is noticed within that; a hung host (slow failures) still gets the long windows."""
    from waystation.queue.breaker import OPEN_MAX_S, REFUSING_FIRST_S, REFUSING_MAX_S, Breaker
    from waystation.queue.policy import UNREACHABLE_MAX_S

    assert REFUSING_MAX_S == UNREACHABLE_MAX_S
    breaker = Breaker()
    now, windows = 0.0, []
    for _ in range(2000):  # a host refusing for most of a day: the windows stay bounded
        breaker.answered("refusing", False, now, held_s=0.002)
        if breaker.answered("refusing", False, now, held_s=0.002):
            closes = breaker.next_close(now)
            assert closes is not None
            windows.append(closes - now)
            now = closes
    assert windows[:5] == [
        REFUSING_FIRST_S,
        2 * REFUSING_FIRST_S,
        4 * REFUSING_FIRST_S,
        8 * REFUSING_FIRST_S,
        REFUSING_MAX_S,
    ]
    assert max(windows) == REFUSING_MAX_S
    for _ in range(20):  # once one failure of the streak held its slot, the long windows apply
        breaker.answered("hung", False, now, held_s=0.002)
        breaker.answered("hung", False, now, held_s=30.0)
        now = breaker.next_close(now) or now
    assert breaker.answered("hung", False, now, held_s=0.0) is False
    assert breaker.answered("hung", False, now, held_s=0.0) is True
    assert breaker.next_close(now) == now + OPEN_MAX_S


async def test_a_host_left_alone_does_not_make_the_flusher_spin(
    store: TaskStore, flusher: Flusher, delivery: ScriptedDelivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its tasks leased ahead go back due now while its circuit is open; the flusher must sleep
    until the circuit closes, not lease (a write each time) in a loop that finds nothing."""
    leases = 0
    lease = store.lease

    async def counted(*args: Any, **kwargs: Any) -> list[Task]:
        nonlocal leases
        leases += 1
        return await lease(*args, **kwargs)

    monkeypatch.setattr(store, "lease", counted)
    monkeypatch.setattr(breaker, "REFUSING_FIRST_S", 60.0)  # open for longer than this test
    delivery.default = Delivery(Outcome.UNREACHABLE, error="dead.example: connection refused")
    await add(store, flusher, 12, host="dead.example")
    await until(lambda: len(delivery.calls) >= 2 and flusher.in_flight == 0)
    await asyncio.sleep(0.1)
    before = leases
    await asyncio.sleep(1.0)
    assert leases - before <= 2, leases - before
    assert len(delivery.calls) <= 4


async def test_an_announced_pending_task_wakes_it(
    store: TaskStore, flusher: Flusher, delivery: ScriptedDelivery
) -> None:
    """How a task committed elsewhere (the API, a turn, the fleet's work) reaches a sleeping
    flusher: the agent hands it every task announcement."""
    await asyncio.sleep(0.1)  # it looked, found nothing, and sleeps until woken
    task, _ = await store.enqueue(NewTask("http_request", {"url": "http://a.example/"}, "a.example", "k"))
    flusher.task_changed({**task.to_json(), "state": "done"})  # a settled task: nothing to send
    await asyncio.sleep(0.2)
    assert delivery.calls == []
    flusher.task_changed(task.to_json())
    await until(lambda: delivery.keys == ["k"], within=1.0)


async def test_a_destination_back_after_refusing_is_delivered_within_seconds(
    store: TaskStore,
    flusher: Flusher,
    delivery: ScriptedDelivery,
    connectivity: FakeConnectivity,
    announced: RecordingAnnouncer,
) -> None:
    """Online, the destination refuses for a while (the monitor's probe says online again: the
    host is not offline, the destination alone is down). The task is tried again on its own,
    counting no attempt, and goes out soon after the destination is back: no wake, no flush."""
    back = asyncio.Event()

    def answer(call: Any) -> Delivery:
        if back.is_set():
            return delivered()
        return Delivery(Outcome.UNREACHABLE, error="a.example: ConnectError: connection refused")

    delivery.default = answer
    (task,) = await add(store, flusher, 1)
    await until(lambda: len(delivery.calls) >= 2, within=3.0)  # tried again by itself
    waiting = await store.get(task.id)
    assert waiting.attempts == 0 and waiting.last_error is not None
    assert waiting.last_error.startswith("destination unreachable: a.example: ConnectError")
    back.set()
    # Its next try is at most a few seconds away (the schedule's early pauses, or the breaker's
    # first window for a host that refuses at once).
    await until(lambda: announced.states(task.id)[-1:] == ["done"], within=5.0)
    done = await store.get(task.id)
    assert done.state == TaskState.DONE and done.attempts == 1
    assert connectivity.network_errors == len(delivery.calls) - 1  # each refusal made it probe
