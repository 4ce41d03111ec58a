"""A real agent process killed and stopped at bad moments: nothing acknowledged is ever lost.

The contract: once `POST /v1/tasks` has answered, the task survives `kill -9` at any moment;
after a restart, tasks that were `running` go back to `pending`; SIGTERM stops the agent within
10 s with in-flight tasks back to `pending`. Delivery is at least once, and the duplicates a kill
can cause are bounded by the in-flight window (`queue.concurrency`).
"""

from __future__ import annotations

import collections
import contextlib
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.agentproc import Agent, Receiver, raw_request, run_in_threads, wait_for

from waystation.queue.flusher import LEASE_AHEAD, UNRECORDED_MAX

pytestmark = pytest.mark.slow

CONCURRENCY = 4  # queue.concurrency, set explicitly below so the bound is the one under test


def agent_settings(receiver: Receiver, mode: str) -> dict[str, str]:
    return {
        "WAYSTATION_CONNECTIVITY__MODE": mode,
        "WAYSTATION_CONNECTIVITY__PROBE_URL": receiver.url("/generate_204"),
        "WAYSTATION_QUEUE__CONCURRENCY": str(CONCURRENCY),
        # One destination host here: let it take the whole window, so the bound is tight.
        "WAYSTATION_QUEUE__PER_HOST": str(CONCURRENCY),
    }


def enqueue(agent: Agent, url: str, key: str) -> dict[str, Any]:
    body = {"tool": "http_request", "args": {"method": "POST", "url": url}, "idempotency_key": key}
    answer = raw_request(agent.socket, "POST", "/v1/tasks", body)
    assert answer is not None and answer[0] == 201, answer
    task: dict[str, Any] = answer[1]
    return task


def enqueue_many(
    agent: Agent, receiver: Receiver, path: str, n: int, workers: int = 8
) -> list[dict[str, Any]]:
    """n tasks, posted concurrently (the agent commits concurrent enqueues in groups)."""
    tasks: list[dict[str, Any]] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        for i in range(worker, n, workers):
            task = enqueue(agent, receiver.url(f"{path}/{i}"), f"{path.strip('/').replace('/', '-')}-{i}")
            with lock:
                tasks.append(task)

    run_in_threads(work, workers)
    assert len(tasks) == n
    return tasks


def db_rows(database: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the agent's database directly (the agent must have exited)."""
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return list(conn.execute(sql, params).fetchall())


def verify_ok(agent: Agent) -> dict[str, Any]:
    answer = raw_request(agent.socket, "GET", "/v1/receipts/verify")
    assert answer is not None and answer[0] == 200, answer
    result: dict[str, Any] = answer[1]
    assert result["ok"] is True, result
    return result


class EventStream:
    """A raw client of `GET /v1/events` (raw, so it survives the agent going away quietly)."""

    def __init__(self, sock: socket.socket, text: str) -> None:
        self.sock = sock
        self.text = text  # what has arrived so far, chunked framing and all

    def read(self, until: Callable[[list[str]], bool], timeout: float = 5.0) -> list[str]:
        """Event blocks received so far, once `until(blocks)` holds (matched by their text)."""
        self.sock.settimeout(timeout)
        while True:
            blocks = [b for b in self.text.split("\n\n") if "\nevent: " in "\n" + b]
            if until(blocks):
                return blocks
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"expected events did not arrive; got {blocks}") from None
            assert chunk, f"stream ended; got {blocks}"
            self.text += chunk.decode().replace("\r\n", "\n")

    def drain(self, timeout: float = 5.0) -> None:
        """Read until the agent ends the stream."""
        self.sock.settimeout(timeout)
        with contextlib.suppress(ConnectionResetError):
            while self.sock.recv(65536):
                pass


@contextlib.contextmanager
def open_event_stream(agent: Agent, last_event_id: int | None = None) -> Iterator[EventStream]:
    resume = "" if last_event_id is None else f"Last-Event-ID: {last_event_id}\r\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(agent.socket))
        raw.sendall(f"GET /v1/events HTTP/1.1\r\nHost: waystation\r\n{resume}\r\n".encode())
        head = b""
        while b": waystation events" not in head:  # by then the agent has subscribed us
            chunk = raw.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        yield EventStream(raw, head.decode().replace("\r\n", "\n"))


def test_sigint_stops_an_idle_agent_cleanly(agent_factory: Callable[..., Agent], receiver: Receiver) -> None:
    agent = agent_factory(agent_settings(receiver, "offline")).start()
    enqueue(agent, receiver.url("/ok/sigint"), "sigint-1")
    with open_event_stream(agent) as stream:
        started = time.monotonic()
        agent.signal(signal.SIGINT)
        assert agent.wait(timeout=10) == 0, agent.output()
        assert time.monotonic() - started < 10
        stream.drain()  # the agent ended the stream as it went
    assert not agent.socket.exists(), "a clean stop removes its socket"
    assert db_rows(agent.database, "SELECT state FROM tasks") == [("pending",)]
    agent.start()
    assert agent.counts()["pending"] == 1


def test_kill_9_while_tasks_are_parked(agent_factory: Callable[..., Agent], receiver: Receiver) -> None:
    agent = agent_factory(agent_settings(receiver, "offline")).start()
    acknowledged: list[dict[str, Any]] = []
    unanswered = 0
    stop = threading.Event()
    lock = threading.Lock()

    def load(worker: int) -> None:
        nonlocal unanswered
        i = 0
        while not stop.is_set():
            key = f"parked-{worker}-{i}"
            body = {"tool": "http_request", "args": {"url": receiver.url(f"/ok/parked/{key}")}}
            answer = raw_request(
                agent.socket, "POST", "/v1/tasks", {**body, "idempotency_key": key}, timeout=5
            )
            with lock:
                if answer is None:
                    unanswered += 1
                else:
                    assert answer[0] == 201, answer
                    acknowledged.append(answer[1])
            i += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    try:
        # kill -9 while clients are still submitting: some requests are mid-commit at that moment.
        wait_for(lambda: len(acknowledged) >= 300, timeout=30, what="300 acknowledged tasks")
        agent.kill()
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    agent.start()
    pending = {t["id"]: t for t in agent.tasks("pending")}
    missing = [t["id"] for t in acknowledged if t["id"] not in pending]
    assert not missing, f"{len(missing)} acknowledged tasks lost by kill -9, e.g. {missing[:3]}"
    for task in acknowledged:
        assert pending[task["id"]]["idempotency_key"] == task["idempotency_key"]
        assert pending[task["id"]]["attempts"] == 0
    assert agent.counts()["running"] == 0
    assert receiver.hits("/ok/parked/") == [], "nothing may be delivered while offline"

    # Back online: everything that was parked (acknowledged or not) is delivered, once each.
    total = len(pending)
    agent.set_mode("online")
    wait_for(lambda: agent.counts()["done"] == total, timeout=30, what=f"{total} deliveries")
    keys = collections.Counter(receiver.keys("/ok/parked/"))
    assert {t["idempotency_key"] for t in acknowledged} <= set(keys)
    assert max(keys.values()) == 1, "no kill during delivery, so no duplicate"
    verify_ok(agent)


def test_kill_9_in_the_middle_of_a_flush(agent_factory: Callable[..., Agent], receiver: Receiver) -> None:
    n = 300
    agent = agent_factory(agent_settings(receiver, "offline")).start()
    tasks = enqueue_many(agent, receiver, "/slow/20/flush", n)
    keys = {t["idempotency_key"] for t in tasks}
    assert agent.counts()["pending"] == n

    agent.set_mode("online")
    in_flight_at_kill: list[set[str]] = []
    for kill_after in (60, 180):
        wait_for(
            lambda k=kill_after: len(receiver.hits("/slow/20/flush/")) >= k,  # type: ignore[misc]
            timeout=30,
            what=f"{kill_after} deliveries",
        )
        agent.kill()
        # What the dead agent left behind, read straight from its database before the restart
        # reclaims it: the tasks it had leased. Only these may be delivered again.
        assert db_rows(agent.database, "PRAGMA integrity_check") == [("ok",)]
        running = {
            key
            for (key,) in db_rows(agent.database, "SELECT idempotency_key FROM tasks WHERE state = 'running'")
        }
        # Leased: what the flusher holds (flusher.py): being delivered, answered but not yet
        # recorded, or leased ahead. Only these can be delivered again.
        assert 0 < len(running) <= (2 + LEASE_AHEAD + UNRECORDED_MAX) * CONCURRENCY, running
        in_flight_at_kill.append(running)
        agent.start({"WAYSTATION_CONNECTIVITY__MODE": "online"})

    wait_for(lambda: agent.counts()["done"] == n, timeout=40, what=f"all {n} tasks done")
    received = collections.Counter(h.key for h in receiver.hits("/slow/20/flush/"))
    assert set(received) == keys, "every acknowledged task is delivered at least once"
    # At least once, and more only for a task that was running (leased) when a kill landed.
    for key, times in received.items():
        kills_in_flight = sum(key in running for running in in_flight_at_kill)
        assert times - 1 <= kills_in_flight, (
            f"{key} delivered {times} times, in flight at {kills_in_flight} kills"
        )
    assert sum(received.values()) - len(received) <= sum(len(running) for running in in_flight_at_kill)
    # ...and no more than what was being sent or not yet recorded at each kill.
    assert sum(received.values()) - len(received) <= (1 + UNRECORDED_MAX) * CONCURRENCY * len(
        in_flight_at_kill
    )

    final = agent.counts()
    assert final["running"] == 0 and final["pending"] == 0 and final["done"] == n, final
    assert verify_ok(agent)["count"] == n

    assert agent.stop() == 0
    assert db_rows(agent.database, "SELECT id FROM tasks WHERE state = 'running'") == []
    doubled = db_rows(
        agent.database, "SELECT task_id, COUNT(*) FROM receipts GROUP BY task_id HAVING COUNT(*) > 1"
    )
    assert doubled == [], "a task delivered twice still gets exactly one receipt"


def test_sigterm_during_a_flush(agent_factory: Callable[..., Agent], receiver: Receiver) -> None:
    n = 60
    agent = agent_factory(agent_settings(receiver, "offline")).start()
    tasks = enqueue_many(agent, receiver, "/slow/250/term", n)
    agent.set_mode("online")
    # Wait until deliveries are surely in flight (each one takes 250 ms to answer).
    wait_for(lambda: len(receiver.hits("/slow/250/term/")) >= 2 * CONCURRENCY, timeout=20, what="deliveries")
    in_flight_seen = agent.counts()["running"]
    assert in_flight_seen > 0

    with open_event_stream(agent):  # an open stream must not hold the shutdown up
        started = time.monotonic()
        code = agent.stop(timeout=10)
        elapsed = time.monotonic() - started
    assert code == 0, agent.output()
    assert elapsed < 10, f"took {elapsed:.1f}s to stop"

    states = dict(db_rows(agent.database, "SELECT state, COUNT(*) FROM tasks GROUP BY state"))
    assert states.get("running", 0) == 0, (
        f"tasks left running after SIGTERM: {states} (saw {in_flight_seen} in flight)"
    )
    assert states.get("pending", 0) + states.get("done", 0) == n, states
    assert states.get("pending", 0) > 0, "the flush was interrupted, so some tasks must be left"
    receipts = db_rows(agent.database, "SELECT COUNT(*) FROM receipts WHERE kind = 'task'")[0][0]
    assert receipts == states.get("done", 0)

    # Nothing was lost: a restart finishes the job.
    agent.start({"WAYSTATION_CONNECTIVITY__MODE": "online"})
    wait_for(lambda: agent.counts()["done"] == n, timeout=30, what=f"all {n} tasks done")
    assert {h.key for h in receiver.hits("/slow/250/term/")} == {t["idempotency_key"] for t in tasks}
    verify_ok(agent)


def test_events_resume_across_a_restart(agent_factory: Callable[..., Agent], receiver: Receiver) -> None:
    """A client that reconnects with the Last-Event-ID it had from the previous agent process must
    not miss the new process's events (event ids must not go back to a number it has seen)."""
    agent = agent_factory(agent_settings(receiver, "offline")).start()
    with open_event_stream(agent) as stream:
        for i in range(5):
            enqueue(agent, receiver.url(f"/ok/before-{i}"), f"before-{i}")
        blocks = stream.read(lambda b: sum("event: task" in x for x in b) >= 5)
    last_id = max(int(line[4:]) for b in blocks for line in b.splitlines() if line.startswith("id: "))

    assert agent.stop() == 0
    agent.start()
    task = enqueue(agent, receiver.url("/ok/after"), "after-restart")
    with open_event_stream(agent, last_id) as stream:
        stream.read(lambda b: any(task["id"] in x for x in b))
