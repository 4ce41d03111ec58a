"""The task store on real SQLite files: idempotency, leases, settling with receipts, recovery."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from waystation import timeutil
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.errors import IdempotencyConflict, InvalidTransition, NotFound
from waystation.queue.policy import SETTLED, Decision, Outcome, TaskState, classify, decide
from waystation.queue.store import LEASE_MARGIN_S, TaskStore
from waystation.queue.tasks import NewTask, Task
from waystation.receipts import chain
from waystation.receipts.chain import ReceiptDraft, RouteInfo, verify_database

SETTINGS = QueueSettings()
T0 = 1_800_000_000.0


@pytest.fixture
def store(db: Database) -> TaskStore:
    return TaskStore(db, SETTINGS)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A wall clock the test moves by hand: clock[0] is now."""
    now = [T0]
    monkeypatch.setattr(timeutil, "now", lambda: now[0])
    return now


def _new(n: int = 0, host: str = "api.example.test", **kw: Any) -> NewTask:
    args = kw.pop("args", {"method": "POST", "url": f"https://{host}/hook/{n}", "json": {"n": n}})
    return NewTask(tool="http_request", args=args, host=host, **kw)


def _decision(task: Task, status: int | None, now: float, **kw: Any) -> Decision:
    return decide(
        outcome=classify(status),
        status=status,
        attempts=task.attempts,
        net_failures=task.net_failures,
        now=now,
        settings=SETTINGS,
        rng=random.Random(1),
        **kw,
    )


async def _lease_one(store: TaskStore, task_id: str) -> Task:
    leased = await store.lease(1000, {}, 1000)
    matching = [t for t in leased if t.id == task_id]
    assert matching, f"{task_id} was not leased"
    others = [t.id for t in leased if t.id != task_id]
    if others:
        await store.release(others)
    return matching[0]


async def _receipt_counts(db: Database) -> dict[str, tuple[str, int]]:
    rows = await db.fetchall(
        "SELECT t.id, t.state, COUNT(r.id) FROM tasks t"
        " LEFT JOIN receipts r ON r.task_id = t.id GROUP BY t.id"
    )
    return {r[0]: (r[1], r[2]) for r in rows}


async def _assert_settled_iff_receipt(db: Database) -> None:
    for task_id, (state, count) in (await _receipt_counts(db)).items():
        if TaskState(state) in SETTLED:
            assert count == 1, f"{task_id} is {state} with {count} receipts"
        else:
            assert count == 0, f"{task_id} is {state} but has {count} receipts"


# --- enqueue and idempotency ---------------------------------------------------------------------


async def test_enqueue_persists_a_pending_task(store: TaskStore, clock: list[float]) -> None:
    task, created = await store.enqueue(_new(1, idempotency_key="k-1", turn_id="u_1"))
    assert created
    assert task.state is TaskState.PENDING
    assert task.attempts == 0 and task.net_failures == 0
    assert task.next_attempt_at == T0 and task.created_at == T0
    assert task.expires_at == T0 + SETTINGS.retention_days * 86400
    assert task.idempotency_key == "k-1"
    assert task.turn_id == "u_1"
    assert await store.get(task.id) == task
    body = task.to_json()
    assert {
        "id",
        "tool",
        "args",
        "idempotency_key",
        "state",
        "attempts",
        "next_attempt_at",
        "last_error",
        "result",
        "created_at",
        "updated_at",
        "turn_id",
    } <= set(body)
    assert body["state"] == "pending"
    assert json.loads(json.dumps(body)) == body


async def test_same_key_and_args_give_the_same_task(store: TaskStore) -> None:
    first, created = await store.enqueue(_new(1, idempotency_key="same"))
    again, created_again = await store.enqueue(_new(1, idempotency_key="same"))
    assert created and not created_again
    assert again.id == first.id
    assert (await store.counts())["pending"] == 1


async def test_same_key_and_equal_args_in_another_order_are_the_same(store: TaskStore) -> None:
    first, _ = await store.enqueue(
        _new(args={"url": "https://a.test/", "method": "POST"}, idempotency_key="k")
    )
    again, created = await store.enqueue(
        _new(args={"method": "POST", "url": "https://a.test/"}, idempotency_key="k")
    )
    assert not created and again.id == first.id


async def test_a_json_body_keeps_the_order_it_was_given_in(store: TaskStore) -> None:
    """What is delivered is what the caller (or the user, whose JSON a model's write carries)
    wrote: a parked body is not re-sorted."""
    body = {"event": "deploy", "build": {"tags": ["b", "a"], "id": 7}, "at": "now"}
    args = {"method": "POST", "url": "https://a.test/hook", "json": body}
    task, _ = await store.enqueue(_new(args=args, idempotency_key="k"))
    stored = await store.get(task.id)
    assert json.dumps(stored.args["json"], separators=(",", ":")) == json.dumps(body, separators=(",", ":"))
    (row,) = await store.db.fetchall("SELECT args FROM tasks WHERE id = ?", (task.id,))
    assert row["args"] == json.dumps(args, separators=(",", ":"))


async def test_same_key_other_args_is_a_conflict(store: TaskStore) -> None:
    first, _ = await store.enqueue(_new(1, idempotency_key="k"))
    with pytest.raises(IdempotencyConflict) as info:
        await store.enqueue(_new(2, idempotency_key="k"))
    assert info.value.key == "k"
    assert info.value.task_id == first.id
    assert info.value.http_status == 409
    with pytest.raises(IdempotencyConflict):
        await store.enqueue(NewTask("web_fetch", first.args, first.host, idempotency_key="k"))
    assert [t.id for t in await store.list()] == [first.id]
    assert (await store.get(first.id)).args == first.args


async def test_a_conflict_in_a_batch_rolls_back_only_itself(store: TaskStore) -> None:
    await store.enqueue(_new(0, idempotency_key="taken"))
    results = await asyncio.gather(
        store.enqueue(_new(1, idempotency_key="a")),
        store.enqueue(_new(2, idempotency_key="taken")),
        store.enqueue(_new(3, idempotency_key="b")),
        return_exceptions=True,
    )
    assert isinstance(results[1], IdempotencyConflict)
    keys = {t.idempotency_key for t in await store.list()}
    assert keys == {"taken", "a", "b"}


async def test_idempotent_enqueue_of_a_finished_task_does_not_rerun_it(store: TaskStore) -> None:
    task, _ = await store.enqueue(_new(1, idempotency_key="once"))
    leased = await _lease_one(store, task.id)
    await store.settle(leased, _decision(leased, 200, timeutil.now()), {"status": 200}, 5)
    again, created = await store.enqueue(_new(1, idempotency_key="once"))
    assert not created
    assert again.id == task.id and again.state is TaskState.DONE


async def test_a_generated_key_never_changes(store: TaskStore) -> None:
    task, created = await store.enqueue(_new(1))
    other, _ = await store.enqueue(_new(1))
    assert created
    assert other.id != task.id, "no key means no deduplication"
    key = task.idempotency_key
    assert key and task.id in key and key != other.idempotency_key

    leased = await _lease_one(store, task.id)
    assert leased.idempotency_key == key
    await store.settle(leased, _decision(leased, 503, timeutil.now()), None, 1)
    assert (await store.get(task.id)).idempotency_key == key
    await store.make_due()
    await _lease_one(store, task.id)
    await store.recover(all_running=True)
    assert (await store.get(task.id)).idempotency_key == key
    leased = await _lease_one(store, task.id)
    await store.settle(leased, _decision(leased, 404, timeutil.now()), None, 1)
    retried = await store.retry(task.id)
    assert retried.idempotency_key == key


async def test_explicit_expiry_is_kept(store: TaskStore, clock: list[float]) -> None:
    task, _ = await store.enqueue(_new(1, expires_at=T0 + 60))
    assert task.expires_at == T0 + 60


# --- lease ---------------------------------------------------------------------------------------


async def test_lease_marks_tasks_running_with_a_lease(store: TaskStore, clock: list[float]) -> None:
    task, _ = await store.enqueue(_new(1))
    leased = await store.lease(4, {}, 2)
    assert [t.id for t in leased] == [task.id]
    expected_lease = T0 + SETTINGS.delivery_timeout_s + LEASE_MARGIN_S
    assert leased[0].state is TaskState.RUNNING
    assert leased[0].lease_expires_at == expected_lease
    stored = await store.get(task.id)
    assert stored.state is TaskState.RUNNING and stored.lease_expires_at == expected_lease
    assert await store.lease(4, {}, 2) == [], "a running task is not leased twice"


async def test_lease_respects_the_limit(store: TaskStore) -> None:
    for i in range(6):
        await store.enqueue(_new(i, host=f"h{i}.test"))
    first = await store.lease(4, {}, 10)
    assert len(first) == 4
    second = await store.lease(4, {}, 10)
    assert len(second) == 2
    assert not {t.id for t in first} & {t.id for t in second}
    assert await store.lease(0, {}, 10) == []


async def test_lease_respects_per_host(store: TaskStore) -> None:
    for i in range(5):
        await store.enqueue(_new(i, host="a.test"))
    for i in range(3):
        await store.enqueue(_new(i, host="b.test"))
    leased = await store.lease(10, {}, 2)
    assert sorted(t.host for t in leased) == ["a.test", "a.test", "b.test", "b.test"]


async def test_lease_counts_what_is_already_in_flight(store: TaskStore) -> None:
    for i in range(4):
        await store.enqueue(_new(i, host="a.test"))
        await store.enqueue(_new(i, host="b.test"))
    leased = await store.lease(10, {"a.test": 2, "b.test": 1}, 2)
    assert [t.host for t in leased] == ["b.test"]
    leased = await store.lease(10, {"a.test": 1, "b.test": 2}, 2)
    assert [t.host for t in leased] == ["a.test"]


async def test_lease_takes_only_due_pending_tasks(store: TaskStore, clock: list[float]) -> None:
    due, _ = await store.enqueue(_new(1))
    backing_off, _ = await store.enqueue(_new(2))
    cancelled, _ = await store.enqueue(_new(3))
    done, _ = await store.enqueue(_new(4))
    running = await store.lease(10, {}, 10)
    await store.release([due.id, cancelled.id])
    by_id = {t.id: t for t in running}
    await store.settle(by_id[backing_off.id], _decision(by_id[backing_off.id], 503, T0), None, 1)
    await store.settle(by_id[done.id], _decision(by_id[done.id], 200, T0), None, 1)
    await store.cancel(cancelled.id)
    leased = await store.lease(10, {}, 10)
    assert [t.id for t in leased] == [due.id]


async def test_lease_takes_the_earliest_due_first(store: TaskStore, clock: list[float]) -> None:
    ids = []
    for i in range(5):
        task, _ = await store.enqueue(_new(i, host=f"h{i}.test"))
        ids.append(task.id)
        clock[0] += 1
    leased = await store.lease(3, {}, 10)
    assert [t.id for t in leased] == ids[:3]


async def test_a_saturated_host_does_not_starve_another(store: TaskStore, clock: list[float]) -> None:
    for i in range(20):
        await store.enqueue(_new(i, host="busy.test"))
        clock[0] += 0.001
    other, _ = await store.enqueue(_new(0, host="quiet.test"))
    clock[0] += 1
    leased = await store.lease(1, {"busy.test": 2}, 2)
    assert [t.id for t in leased] == [other.id]


# --- settle --------------------------------------------------------------------------------------


async def test_settle_done_commits_the_receipt_with_the_task(store: TaskStore, db: Database) -> None:
    task, _ = await store.enqueue(_new(1, turn_id="u_7"))
    leased = await _lease_one(store, task.id)
    result = {"status": 200, "body": "ok"}
    settled, receipt = await store.settle(leased, _decision(leased, 200, timeutil.now()), result, 42)
    assert settled.state is TaskState.DONE
    assert settled.attempts == 1
    assert settled.result == result
    assert settled.lease_expires_at is None
    assert receipt is not None
    assert receipt["kind"] == "task" and receipt["status"] == "ok"
    assert receipt["task_id"] == task.id and receipt["turn_id"] == "u_7"
    assert receipt["duration_ms"] == 42
    assert receipt["route"]["auth_lane"] == "none"
    assert await chain.get_receipt(db, receipt["id"]) == receipt
    assert await _receipt_counts(db) == {task.id: ("done", 1)}
    assert (await verify_database(db)).ok


async def test_settle_dead_writes_an_error_receipt(store: TaskStore, db: Database) -> None:
    task, _ = await store.enqueue(_new(1))
    leased = await _lease_one(store, task.id)
    settled, receipt = await store.settle(leased, _decision(leased, 404, timeutil.now()), {"status": 404}, 3)
    assert settled.state is TaskState.DEAD
    assert settled.last_error is not None and "404" in settled.last_error
    assert receipt is not None and receipt["status"] == "error"
    assert "dead" in receipt["reason"]


async def test_settle_retry_backs_off_without_a_receipt(
    store: TaskStore, db: Database, clock: list[float]
) -> None:
    task, _ = await store.enqueue(_new(1))
    leased = await _lease_one(store, task.id)
    clock[0] += 5
    decision = _decision(leased, 503, clock[0])
    settled, receipt = await store.settle(leased, decision, {"status": 503}, 3)
    assert receipt is None
    assert settled.state is TaskState.PENDING
    assert settled.attempts == 1
    assert settled.next_attempt_at == decision.next_attempt_at
    assert settled.next_attempt_at > clock[0]
    assert settled.lease_expires_at is None
    assert await store.lease(10, {}, 10) == [], "not due before its backoff"
    assert await store.next_due_at() == settled.next_attempt_at
    clock[0] = settled.next_attempt_at
    assert [t.id for t in await store.lease(10, {}, 10)] == [task.id]
    assert await _receipt_counts(db) == {task.id: ("running", 0)}


async def test_settle_unreachable_counts_no_attempt(store: TaskStore, clock: list[float]) -> None:
    task, _ = await store.enqueue(_new(1))
    leased = await _lease_one(store, task.id)
    settled, receipt = await store.settle(leased, _decision(leased, None, T0, error="refused"), None, 1)
    assert receipt is None
    assert (settled.state, settled.attempts, settled.net_failures) == (TaskState.PENDING, 0, 1)
    assert settled.last_error == "destination unreachable: refused"


async def test_retries_until_dead_with_exactly_one_receipt(
    store: TaskStore, db: Database, clock: list[float]
) -> None:
    settings = QueueSettings(max_attempts=3)
    task, _ = await store.enqueue(_new(1))
    for _ in range(2):
        leased = await _lease_one(store, task.id)
        decision = decide(
            outcome=Outcome.RETRY,
            status=500,
            attempts=leased.attempts,
            net_failures=0,
            now=clock[0],
            settings=settings,
            rng=random.Random(2),
        )
        settled, receipt = await store.settle(leased, decision, None, 1)
        assert settled.state is TaskState.PENDING and receipt is None
        clock[0] = settled.next_attempt_at
    leased = await _lease_one(store, task.id)
    decision = decide(
        outcome=Outcome.RETRY,
        status=500,
        attempts=leased.attempts,
        net_failures=0,
        now=clock[0],
        settings=settings,
        rng=random.Random(2),
    )
    settled, receipt = await store.settle(leased, decision, None, 1)
    assert settled.state is TaskState.DEAD and settled.attempts == 3
    assert receipt is not None
    await _assert_settled_iff_receipt(db)


async def test_a_failing_receipt_rolls_the_settle_back(
    store: TaskStore, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, _ = await store.enqueue(_new(1))
    leased = await _lease_one(store, task.id)

    def broken_append(conn: sqlite3.Connection, draft: ReceiptDraft) -> dict[str, Any]:
        raise RuntimeError("receipt could not be written")

    monkeypatch.setattr(chain, "append", broken_append)
    with pytest.raises(RuntimeError):
        await store.settle(leased, _decision(leased, 200, timeutil.now()), {"status": 200}, 1)
    stored = await store.get(task.id)
    assert stored.state is TaskState.RUNNING, "the task settled without its receipt"
    assert stored.result is None
    assert await _receipt_counts(db) == {task.id: ("running", 0)}
    monkeypatch.undo()
    settled, receipt = await store.settle(leased, _decision(leased, 200, timeutil.now()), None, 1)
    assert settled.state is TaskState.DONE and receipt is not None


async def test_settling_a_reclaimed_task_changes_nothing(store: TaskStore, db: Database) -> None:
    task, _ = await store.enqueue(_new(1))
    leased = await _lease_one(store, task.id)
    assert await store.recover(all_running=True) == 1
    settled, receipt = await store.settle(leased, _decision(leased, 200, timeutil.now()), None, 1)
    assert receipt is None
    assert settled.state is TaskState.PENDING
    assert await _receipt_counts(db) == {task.id: ("pending", 0)}


async def test_settled_iff_receipt_over_a_mixed_run(store: TaskStore, db: Database) -> None:
    statuses = [200, 201, 404, 410, 503, 429, None, 204, 400, None]
    tasks = [(await store.enqueue(_new(i, host=f"h{i}.test")))[0] for i in range(len(statuses))]
    leased = {t.id: t for t in await store.lease(100, {}, 10)}
    assert len(leased) == len(tasks)
    await asyncio.gather(
        *(
            store.settle(leased[t.id], _decision(leased[t.id], status, timeutil.now()), None, 1)
            for t, status in zip(tasks, statuses, strict=True)
        )
    )
    cancelled, _ = await store.enqueue(_new(99))
    await store.cancel(cancelled.id)
    await _assert_settled_iff_receipt(db)
    counts = await store.counts()
    assert counts["done"] == 3 and counts["dead"] == 3 and counts["pending"] == 4 and counts["cancelled"] == 1
    assert (await verify_database(db)).ok


async def test_receipts_never_carry_credentials(store: TaskStore, db: Database) -> None:
    secret = "sk-live-THIS-IS-A-SECRET-0123456789"
    args = {
        "method": "POST",
        "url": "https://api.example.test/v1/x?token=" + secret,
        "headers": {"Authorization": f"Bearer {secret}", "Cookie": f"session={secret}"},
        "json": {"api_key": secret},
    }
    task, _ = await store.enqueue(_new(args=args))
    leased = await _lease_one(store, task.id)
    await store.settle(leased, _decision(leased, 200, timeutil.now()), {"status": 200}, 1)
    other, _ = await store.enqueue(_new(args=dict(args, url="https://api.example.test/y")))
    await store.cancel(other.id)
    rows = await db.fetchall("SELECT body FROM receipts")
    assert len(rows) == 2
    for (body,) in rows:
        assert secret[:12] not in body
        assert "THIS-IS-A-SECRET" not in body


# --- release, recover, make_due ------------------------------------------------------------------


async def test_release_gives_leased_tasks_back(store: TaskStore, clock: list[float]) -> None:
    tasks = [(await store.enqueue(_new(i, host=f"h{i}.test")))[0] for i in range(3)]
    leased = await store.lease(10, {}, 10)
    assert len(leased) == 3
    clock[0] += 10
    assert await store.release([tasks[0].id, tasks[1].id]) == 2
    for task in tasks[:2]:
        stored = await store.get(task.id)
        assert stored.state is TaskState.PENDING
        assert stored.attempts == 0
        assert stored.lease_expires_at is None
        assert stored.next_attempt_at == clock[0]
    assert (await store.get(tasks[2].id)).state is TaskState.RUNNING
    assert await store.release([tasks[0].id, "t_unknown"]) == 0, "only running tasks are released"
    assert await store.release([]) == 0


async def test_recover_all_running_returns_every_running_task(store: TaskStore, clock: list[float]) -> None:
    for i in range(4):
        await store.enqueue(_new(i, host=f"h{i}.test"))
    await store.lease(3, {}, 10)
    assert await store.recover(all_running=True) == 3
    counts = await store.counts()
    assert counts["running"] == 0 and counts["pending"] == 4
    assert all(t.attempts == 0 and t.lease_expires_at is None for t in await store.list())
    assert await store.recover(all_running=True) == 0


async def test_recover_reclaims_only_expired_leases(store: TaskStore, clock: list[float]) -> None:
    first, _ = await store.enqueue(_new(1, host="a.test"))
    second, _ = await store.enqueue(_new(2, host="b.test"))
    await _lease_one(store, first.id)
    clock[0] += 20
    await store.lease(10, {}, 10)
    lease_s = SETTINGS.delivery_timeout_s + LEASE_MARGIN_S
    clock[0] = T0 + lease_s - 1
    assert await store.recover() == 0
    clock[0] = T0 + lease_s
    assert await store.recover() == 1
    assert (await store.get(first.id)).state is TaskState.PENDING
    assert (await store.get(second.id)).state is TaskState.RUNNING
    clock[0] = T0 + 20 + lease_s + 1
    assert await store.recover() == 1
    assert (await store.get(second.id)).state is TaskState.PENDING


async def test_make_due(store: TaskStore, clock: list[float]) -> None:
    answered, _ = await store.enqueue(_new(1, host="a.test"))
    unreachable, _ = await store.enqueue(_new(2, host="b.test"))
    leased = {t.id: t for t in await store.lease(10, {}, 10)}
    await store.settle(leased[answered.id], _decision(leased[answered.id], 503, T0), None, 1)
    await store.settle(leased[unreachable.id], _decision(leased[unreachable.id], None, T0), None, 1)
    assert await store.lease(10, {}, 10) == []

    assert await store.make_due(unreachable_only=True) == 1
    assert [t.id for t in await store.lease(10, {}, 10)] == [unreachable.id]
    assert await store.make_due() == 1
    assert [t.id for t in await store.lease(10, {}, 10)] == [answered.id]
    assert await store.make_due() == 0


# --- retry, cancel, expire -----------------------------------------------------------------------


async def test_retry_a_dead_task(store: TaskStore, clock: list[float]) -> None:
    task, _ = await store.enqueue(_new(1))
    leased = await _lease_one(store, task.id)
    await store.settle(leased, _decision(leased, 400, T0), None, 1)
    clock[0] += 100
    retried = await store.retry(task.id)
    assert retried.state is TaskState.PENDING
    assert retried.attempts == 0 and retried.net_failures == 0
    assert retried.next_attempt_at == clock[0]
    assert [t.id for t in await store.lease(10, {}, 10)] == [task.id]


async def test_retry_refuses_running_and_done_tasks(store: TaskStore) -> None:
    task, _ = await store.enqueue(_new(1))
    leased = await _lease_one(store, task.id)
    with pytest.raises(InvalidTransition) as info:
        await store.retry(task.id)
    assert info.value.state == "running" and info.value.http_status == 409
    await store.settle(leased, _decision(leased, 200, timeutil.now()), None, 1)
    with pytest.raises(InvalidTransition):
        await store.retry(task.id)
    with pytest.raises(NotFound):
        await store.retry("t_nope")


async def test_cancel_a_pending_task_writes_a_receipt(store: TaskStore, db: Database) -> None:
    task, _ = await store.enqueue(_new(1, turn_id="u_1"))
    cancelled, receipt = await store.cancel(task.id)
    assert cancelled.state is TaskState.CANCELLED
    assert receipt["task_id"] == task.id and receipt["status"] == "refused"
    assert "cancel" in receipt["reason"]
    assert await store.lease(10, {}, 10) == []
    assert await _receipt_counts(db) == {task.id: ("cancelled", 1)}
    retried = await store.retry(task.id)
    assert retried.state is TaskState.PENDING


async def test_cancel_refuses_done_and_running_tasks(store: TaskStore, db: Database) -> None:
    task, _ = await store.enqueue(_new(1))
    leased = await _lease_one(store, task.id)
    with pytest.raises(InvalidTransition):
        await store.cancel(task.id)
    await store.settle(leased, _decision(leased, 200, timeutil.now()), None, 1)
    with pytest.raises(InvalidTransition) as info:
        await store.cancel(task.id)
    assert info.value.state == "done" and info.value.action == "cancel"
    assert (await store.get(task.id)).state is TaskState.DONE
    assert await _receipt_counts(db) == {task.id: ("done", 1)}
    with pytest.raises(NotFound):
        await store.cancel("t_nope")


async def test_expire_due_writes_tombstones_and_keeps_rows(
    store: TaskStore, db: Database, clock: list[float]
) -> None:
    old, _ = await store.enqueue(_new(1, host="a.test"))
    running, _ = await store.enqueue(_new(2, host="b.test"))
    short, _ = await store.enqueue(_new(3, host="c.test", expires_at=T0 + 60))
    await _lease_one(store, running.id)
    fresh_at = T0 + 86400
    clock[0] = fresh_at
    fresh, _ = await store.enqueue(_new(4, host="d.test"))

    clock[0] = T0 + 61
    expired = await store.expire_due()
    assert [t.id for t, _ in expired] == [short.id]

    clock[0] = T0 + SETTINGS.retention_days * 86400 + 1
    expired = await store.expire_due()
    assert [t.id for t, _ in expired] == [old.id]
    for task, receipt in expired:
        assert task.state is TaskState.EXPIRED
        assert receipt["status"] == "error" and receipt["task_id"] == task.id
        assert "expired" in receipt["reason"]
    assert await store.expire_due() == []

    rows = await db.fetchall("SELECT id, state FROM tasks")
    assert {r[0]: r[1] for r in rows} == {
        old.id: "expired",
        running.id: "running",
        short.id: "expired",
        fresh.id: "pending",
    }
    await _assert_settled_iff_receipt(db)
    assert (await verify_database(db)).ok

    retried = await store.retry(old.id)
    assert retried.state is TaskState.PENDING
    assert retried.expires_at > clock[0]
    assert await store.expire_due() == []


# --- reads ---------------------------------------------------------------------------------------


async def test_counts_has_every_state(store: TaskStore) -> None:
    assert await store.counts() == {
        "pending": 0,
        "running": 0,
        "done": 0,
        "dead": 0,
        "cancelled": 0,
        "expired": 0,
    }
    await store.enqueue(_new(1))
    counts = await store.counts()
    assert set(counts) == {str(s) for s in TaskState}
    assert counts["pending"] == 1


async def test_list_filters_and_orders(store: TaskStore, clock: list[float]) -> None:
    ids = []
    for i in range(4):
        ids.append((await store.enqueue(_new(i)))[0].id)
        clock[0] += 1
    await store.cancel(ids[1])
    assert [t.id for t in await store.list()] == ids[::-1]
    assert [t.id for t in await store.list(limit=2)] == ids[:1:-1]
    assert [t.id for t in await store.list(TaskState.CANCELLED)] == [ids[1]]
    assert [t.id for t in await store.list(TaskState.PENDING)] == [ids[3], ids[2], ids[0]]
    assert await store.list(TaskState.DONE) == []
    with pytest.raises(NotFound):
        await store.get("t_missing")


async def test_next_due_at(store: TaskStore, clock: list[float]) -> None:
    assert await store.next_due_at() is None
    await store.enqueue(_new(1))
    clock[0] += 10
    await store.enqueue(_new(2))
    assert await store.next_due_at() == T0


async def test_a_task_parked_after_a_try_that_got_no_answer_says_so(store: TaskStore) -> None:
    error = "destination unreachable: api.example.test: ConnectError: refused"
    task, created = await store.enqueue(_new(1, net_failures=1, last_error=error))
    assert created and task.state == TaskState.PENDING
    assert (task.attempts, task.net_failures, task.last_error) == (0, 1, error)
    assert task.to_json()["last_error"] == error


async def test_next_due_at_skips_the_hosts_left_alone(store: TaskStore, clock: list[float]) -> None:
    await store.enqueue(_new(1, host="down.example.test"))
    clock[0] += 10
    await store.enqueue(_new(2, host="up.example.test"))
    assert await store.next_due_at(skip_hosts=["down.example.test"]) == T0 + 10
    assert await store.next_due_at(skip_hosts=["down.example.test", "up.example.test"]) is None


async def test_for_turn(store: TaskStore) -> None:
    a, _ = await store.enqueue(_new(1, turn_id="u_a"))
    b, _ = await store.enqueue(_new(2, turn_id="u_a"))
    await store.enqueue(_new(3, turn_id="u_b"))
    assert {t.id for t in await store.for_turn("u_a")} == {a.id, b.id}
    assert await store.for_turn("u_none") == []


async def test_a_turn_and_its_parked_tasks_commit_together(store: TaskStore, db: Database) -> None:
    route = RouteInfo("local", "llamacpp", "none", "local")

    def park(conn: sqlite3.Connection, fail: bool) -> list[str]:
        ids = [
            store.insert(conn, _new(i, turn_id="u_t", idempotency_key=f"park-{i}-{fail}"))[0].id
            for i in range(2)
        ]
        chain.append(
            conn,
            ReceiptDraft(
                kind="turn", status="parked", route=route, turn_id="u_t", deferred_task_ids=tuple(ids)
            ),
        )
        if fail:
            raise InvalidTransition("u_t", "parked", "park")
        return ids

    with pytest.raises(InvalidTransition):
        await db.write(lambda conn: park(conn, True))
    assert await store.list() == []
    assert await chain.list_receipts(db) == []

    ids = await db.write(lambda conn: park(conn, False))
    assert {t.id for t in await store.for_turn("u_t")} == set(ids)
    [turn_receipt] = await chain.list_receipts(db)
    assert turn_receipt["deferred_task_ids"] == ids


# --- two writers on one file ---------------------------------------------------------------------


async def _enqueue_and_cancel(store: TaskStore, prefix: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        task, created = await store.enqueue(
            NewTask(
                "http_request",
                {"url": f"https://{prefix}.test/{i}"},
                f"{prefix}.test",
                idempotency_key=f"{prefix}-{i}",
            )
        )
        assert created
        ids.append(task.id)
        if i % 3 == 0:
            await store.cancel(task.id)
    return ids


async def test_two_databases_on_one_file_write_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with await Database.open(path) as one, await Database.open(path) as two:
        first, second = TaskStore(one, SETTINGS), TaskStore(two, SETTINGS)
        n = 60
        ids_a, ids_b = await asyncio.gather(
            _enqueue_and_cancel(first, "a", n), _enqueue_and_cancel(second, "b", n)
        )
        stored = {r[0] for r in await one.fetchall("SELECT id FROM tasks")}
        assert stored == set(ids_a) | set(ids_b)
        assert len(stored) == 2 * n
        result = await verify_database(two)
        assert result.ok, result
        assert result.count == 2 * len(range(0, n, 3))
        prevs = [r[0] for r in await one.fetchall("SELECT json_extract(body, '$.prev_hash') FROM receipts")]
        assert len(prevs) == len(set(prevs)), "the chain forked"


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from waystation.config import QueueSettings
    from waystation.db import Database
    from waystation.queue.store import TaskStore
    from waystation.queue.tasks import NewTask

    async def main(path, n):
        async with await Database.open(Path(path)) as db:
            store = TaskStore(db, QueueSettings())
            print("ready", flush=True)
            sys.stdin.readline()
            for i in range(n):
                task, created = await store.enqueue(
                    NewTask("http_request", {"url": f"https://child.test/{i}"}, "child.test",
                            idempotency_key=f"child-{i}")
                )
                assert created
                if i % 3 == 0:
                    await store.cancel(task.id)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


@pytest.mark.slow
async def test_a_second_process_enqueues_concurrently(tmp_path: Path, db: Database, store: TaskStore) -> None:
    n = 150
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(db.path),
        str(n),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert ready.strip() == b"ready"
        (_, err), ours = await asyncio.gather(
            proc.communicate(b"go\n"), _enqueue_and_cancel(store, "parent", n)
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    keys = {r[0] for r in await db.fetchall("SELECT idempotency_key FROM tasks")}
    assert keys == {f"parent-{i}" for i in range(n)} | {f"child-{i}" for i in range(n)}
    assert {r[0] for r in await db.fetchall("SELECT id FROM tasks WHERE host = 'parent.test'")} == set(ours)
    result = await verify_database(db)
    assert result.ok, result
    assert result.count == 2 * len(range(0, n, 3))
