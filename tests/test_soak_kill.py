"""Soak: `kill -9` a real agent at random moments while clients submit tasks and it delivers them.

One agent home is reused across every round, so the queue and the receipt chain carry over from
each killed process to the next. A round restarts the agent (online), lets the backlog the last
kill left behind drain, then runs client threads that POST tasks while the flusher delivers them
concurrently, and `kill -9`s the agent after a random delay, often mid-commit and mid-delivery.

What must hold (the contract's "Tools and delivery"):
- every task whose POST was answered survives the kill (it is in the database before the restart)
  and reaches the receiver at least once;
- once a restarted agent has drained, nothing is left `running` and every task is `done`;
- a task can only be delivered again if the kill caught it leased (`running`), so the repeats a
  kill causes are bounded by what the flusher held: at most 2 x `queue.concurrency` (deliveries
  waiting for an answer, answers not yet recorded, and the batch leased ahead);
- every `done` task has exactly one `task` receipt with status `ok`, however many times it was
  delivered, and `waystation receipts verify` passes after every restart.

Delays are drawn from a seeded RNG; the seed is in the soak figures and in every failure message.
Set WAYSTATION_SOAK_SEED to replay a run's schedule (the machine's timing still varies).
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.agentproc import Agent, Receiver, agent_env, raw_request, wait_for

from waystation.queue.flusher import LEASE_AHEAD, UNRECORDED_MAX

pytestmark = [pytest.mark.soak, pytest.mark.slow]

CONCURRENCY = 4  # set explicitly below so the bound under test is this one
# What the flusher holds `running` (flusher.py): being sent (<= concurrency), answered but not yet
# recorded (held under UNRECORDED_MAX batches), and leased ahead (LEASE_AHEAD batches). Only the
# first two can have reached the receiver, so only they can be delivered again after a kill.
HELD_MAX = (2 + LEASE_AHEAD + UNRECORDED_MAX) * CONCURRENCY
REPEAT_MAX = (1 + UNRECORDED_MAX) * CONCURRENCY
CLIENTS = 3
KILL_DELAY_S = (0.05, 1.5)
# Receiver paths: answered at once, or after a short wait so deliveries are often in flight
# (and requests often already received) when the kill lands.
DESTINATIONS = ("/ok/kill", "/slow/20/kill", "/slow/60/kill")
DRAIN_TIMEOUT_S = 60.0


def agent_settings(receiver: Receiver) -> dict[str, str]:
    return {
        # Forced online: deterministic, no probe decides whether deliveries may run.
        "WAYSTATION_CONNECTIVITY__MODE": "online",
        "WAYSTATION_CONNECTIVITY__PROBE_URL": receiver.url("/generate_204"),
        "WAYSTATION_CONNECTIVITY__METERED": "no",
        "WAYSTATION_QUEUE__CONCURRENCY": str(CONCURRENCY),
        # One destination host: let it use the whole window, so the bound is the tight one.
        "WAYSTATION_QUEUE__PER_HOST": str(CONCURRENCY),
    }


def read_dead_agents_db(database: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the killed agent's database as it left it.

    Read-only on purpose: a read-write connection would checkpoint the hot WAL when it closes,
    and the restart must recover from exactly what the kill left.
    """
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        return list(conn.execute(sql).fetchall())


class Load:
    """Client threads POSTing tasks with known keys until stopped (by the kill, usually)."""

    def __init__(self, agent: Agent, receiver: Receiver, round_no: int, rng: random.Random) -> None:
        self.agent, self.receiver, self.round_no = agent, receiver, round_no
        self.seeds = [rng.random() for _ in range(CLIENTS)]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.attempted: set[str] = set()
        self.acknowledged: dict[str, str] = {}  # key -> task id
        self.unanswered = 0
        self.wrong: list[Any] = []  # answers that are neither an acknowledgement nor a cut-off
        self.threads = [threading.Thread(target=self._client, args=(c,)) for c in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _client(self, client: int) -> None:
        rng = random.Random(self.seeds[client])
        i = 0
        while not self.stop.is_set():
            key = f"kill-r{self.round_no:03d}-c{client}-{i}"
            url = self.receiver.url(f"{rng.choice(DESTINATIONS)}/{key}")
            body = {"tool": "http_request", "args": {"method": "POST", "url": url}, "idempotency_key": key}
            with self.lock:
                self.attempted.add(key)
            answer = raw_request(self.agent.socket, "POST", "/v1/tasks", body, timeout=10)
            with self.lock:
                if answer is None:
                    self.unanswered += 1  # cut off by the kill: may or may not exist; not ours to know
                    if not self.agent.running():
                        return
                elif answer[0] == 201 and isinstance(answer[1], dict):
                    self.acknowledged[key] = answer[1]["id"]
                else:
                    self.wrong.append((key, answer))  # every key is new: only 201 is right
            i += 1
            # Paced (not flat out) so each round's backlog stays drainable in CI time.
            time.sleep(rng.uniform(0.01, 0.05))


def start_verify(agent: Agent) -> subprocess.Popen[str]:
    """`waystation receipts verify` for this home, run alongside the drain (it takes ~0.5 s)."""
    return subprocess.Popen(
        [sys.executable, "-m", "waystation", "receipts", "verify"],
        env=agent_env(agent.home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_verify(proc: subprocess.Popen[str], when: str) -> None:
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"`waystation receipts verify` hung {when}") from None
    assert proc.returncode == 0, f"`waystation receipts verify` failed {when} ({proc.returncode}):\n{output}"


def queue_counts(agent: Agent) -> dict[str, int]:
    answer = raw_request(agent.socket, "GET", "/v1/status")
    assert answer is not None and answer[0] == 200, answer
    counts: dict[str, int] = answer[1]["queue"]
    return counts


def drain(agent: Agent, when: str) -> dict[str, int]:
    """Wait until the agent is idle (nothing pending, nothing running); return the counts."""
    return wait_for(
        lambda: (c := queue_counts(agent))["pending"] == 0 and c["running"] == 0 and c,
        timeout=DRAIN_TIMEOUT_S,
        what=f"the queue to drain {when}",
    )


def all_receipts(agent: Agent) -> list[dict[str, Any]]:
    """The whole chain through GET /v1/receipts, paged with `after`, checking the links as it goes."""
    found: list[dict[str, Any]] = []
    while True:
        path = "/v1/receipts?limit=1000" + (f"&after={found[-1]['id']}" if found else "")
        answer = raw_request(agent.socket, "GET", path)
        assert answer is not None and answer[0] == 200, answer
        page: list[dict[str, Any]] = answer[1]
        for receipt in page:
            expected = found[-1]["hash"] if found else "0" * 64
            assert receipt["prev_hash"] == expected, f"paging broke the chain order at {receipt['id']}"
            found.append(receipt)
        if len(page) < 1000:
            return found


@pytest.mark.timeout(900)
def test_random_kill_9_loses_nothing_and_duplicates_only_what_was_in_flight(
    agent_factory: Callable[..., Agent],
    receiver: Receiver,
    soak_length: Callable[[int, int], int],
    soak_report: Callable[[str], None],
) -> None:
    rounds = soak_length(20, 100)
    seed = int(os.environ.get("WAYSTATION_SOAK_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    replay = f"(seed {seed}; replay with WAYSTATION_SOAK_SEED={seed})"
    started = time.monotonic()

    agent = agent_factory(agent_settings(receiver))
    attempted: set[str] = set()
    acknowledged: dict[str, str] = {}  # key -> task id, over all rounds
    unanswered = 0
    running_at_kill: list[set[str]] = []  # per kill: keys the dead agent had leased

    def check_after_restart(when: str) -> None:
        """The agent is back up: let it drain, then check nothing is lost, stuck or failed."""
        verify = start_verify(agent)
        counts = drain(agent, when)
        finish_verify(verify, when)
        assert counts["running"] == 0 and counts["pending"] == 0, f"{when}: {counts} {replay}"
        others = {s: n for s, n in counts.items() if s not in ("done", "pending", "running") and n}
        assert not others, f"{when}: tasks ended other than done: {counts} {replay}"
        received = {h.key for h in receiver.hits() if h.key}
        never = sorted(set(acknowledged) - received)
        assert not never, (
            f"{when}: {len(never)} acknowledged tasks never delivered, e.g. {never[:3]} {replay}"
        )

    for round_no in range(rounds):
        agent.start()
        if round_no:
            check_after_restart(f"after restart {round_no}")
        with Load(agent, receiver, round_no, rng) as load:
            time.sleep(rng.uniform(*KILL_DELAY_S))
            agent.kill()
        assert not load.wrong, f"round {round_no}: unexpected answers to POST /v1/tasks: {load.wrong[:3]}"
        assert all(not t.is_alive() for t in load.threads), "a client thread hung after the kill"
        attempted |= load.attempted
        acknowledged.update(load.acknowledged)
        unanswered += load.unanswered

        # Before the restart: what did the kill leave? Every acknowledged task must be there.
        assert read_dead_agents_db(agent.database, "PRAGMA quick_check") == [("ok",)]
        rows = read_dead_agents_db(agent.database, "SELECT id, idempotency_key, state FROM tasks")
        present = {task_id for task_id, _, _ in rows}
        lost = sorted(k for k, task_id in acknowledged.items() if task_id not in present)
        assert not lost, f"kill {round_no + 1}: {len(lost)} acknowledged tasks lost, e.g. {lost[:3]} {replay}"
        running = {key for _, key, state in rows if state == "running"}
        assert len(running) <= HELD_MAX, (
            f"kill {round_no + 1}: {len(running)} tasks leased, over the flusher's {HELD_MAX} {replay}"
        )
        running_at_kill.append(running)

    # The final run: drain everything while online, then a clean stop.
    agent.start()
    check_after_restart("after the final restart")
    receipts = [r for r in all_receipts(agent) if r["kind"] == "task"]
    assert agent.stop() == 0, agent.output()

    states = read_dead_agents_db(agent.database, "SELECT id, idempotency_key, state FROM tasks")
    assert {state for _, _, state in states} == {"done"}, collections.Counter(s for _, _, s in states)
    done_ids = {task_id for task_id, _, _ in states}
    assert set(acknowledged.values()) <= done_ids
    # One receipt per task, however many deliveries it took: a repeat delivery after a kill
    # settles only once, because the killed delivery never settled.
    per_task = collections.Counter(r["task_id"] for r in receipts)
    assert set(per_task) == done_ids, "every done task has a receipt, and no receipt names another"
    doubled = {t: n for t, n in per_task.items() if n > 1}
    assert not doubled, f"tasks with more than one receipt: {list(doubled.items())[:3]} {replay}"
    not_ok = [r for r in receipts if r["status"] != "ok"]
    assert not not_ok, f"task receipts that are not ok: {not_ok[:2]}"

    received = collections.Counter(h.key for h in receiver.hits() if h.key)
    assert set(received) <= attempted, f"keys nobody sent: {sorted(set(received) - attempted)[:3]}"
    assert {key for _, key, _ in states} == set(received), "exactly the stored tasks were delivered"

    # Duplicates: a key may come again only once per kill that caught it leased...
    kills = len(running_at_kill)
    per_round = [0] * kills
    for key, times in received.items():
        caught = [k for k, running in enumerate(running_at_kill) if key in running]
        assert times - 1 <= len(caught), (
            f"{key} delivered {times} times but leased at only {len(caught)} kills {replay}"
        )
        for k in caught[: times - 1]:  # attribute each repeat to a kill that caught it (figures)
            per_round[k] += 1
    # ...and a kill repeats at most what was being sent or not yet recorded:
    duplicates = sum(received.values()) - len(received)
    assert duplicates <= REPEAT_MAX * kills, (
        f"{duplicates} duplicate deliveries over {kills} kills: more than {REPEAT_MAX} per kill {replay}"
    )

    soak_report(
        f"seed {seed}, {rounds} rounds/kills in {time.monotonic() - started:.0f} s; "
        f"{len(acknowledged)} tasks acknowledged ({len(attempted)} posted, {unanswered} cut off by kills, "
        f"{len(done_ids)} stored); {sum(received.values())} deliveries, {duplicates} duplicates "
        f"(bound {REPEAT_MAX * kills}), max {max(per_round, default=0)} in one round; "
        f"leased at kill: max {max(map(len, running_at_kill), default=0)}"
    )
