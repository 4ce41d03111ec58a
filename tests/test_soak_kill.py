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
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from support.agentproc import Agent, Receiver, agent_env
from support.taskload import Load, all_receipts, drain, online_settings, read_dead_agents_db

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


def agent_settings(receiver: Receiver) -> dict[str, str]:
    return online_settings(receiver, CONCURRENCY)


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


@pytest.mark.timeout(900)
def test_random_kill_9_loses_nothing_and_duplicates_only_what_was_in_flight(
    agent_factory: Callable[..., Agent],
    receiver: Receiver,
    soak_length: Callable[[int, int], int],
    soak_report: Callable[[str], None],
) -> None:
    rounds = soak_length(10, 100)
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
        with Load(agent, receiver, round_no, rng, CLIENTS) as load:
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
