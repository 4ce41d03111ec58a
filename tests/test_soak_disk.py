"""A full disk under a real agent: WAYSTATION_HOME on a small tmpfs, filled by the agent's own writes.

The promise under test: `POST /v1/tasks` acknowledges (201) only what is committed, so a full disk
must turn into a clear `507 disk_full` (or `503`) error body, never a 500, a crash or a hang; the
agent keeps answering; every acknowledged task survives (also a `kill -9` and a restart on the
still-full disk); when space returns the agent carries on without a restart, and everything
acknowledged is delivered. The receipt chain verifies at the end.

Where SQLite needs space: every commit appends frames to the WAL (`-wal`), and a checkpoint copies
WAL pages back into the database file, which grows while the WAL still holds them. The tmpfs here
is sized so the WAL passes SQLite's auto-checkpoint threshold (1000 pages, ~4 MB) before the disk
is full, so a checkpoint that runs out of space is part of what is exercised. A full disk can also
strike after a delivery, when its outcome is recorded (`settle`): the second test fills the disk
while deliveries are in flight.

The agent's own output goes to a file outside the tmpfs: on a real install it goes to the journal,
not to the disk that filled up (see the report for what happens when it does not).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support.agentproc import (
    Agent,
    Receiver,
    agent_env,
    make_home,
    raw_request,
    remove_home,
    run_in_threads,
    wait_for,
)

pytestmark = [pytest.mark.soak, pytest.mark.slow]

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
PAD = 6000  # bytes of arguments per task: a couple of overflow pages, so the disk fills quickly
CLIENTS = 4  # concurrent submitters: group commit batches them, as in real use


class OffDiskAgent(Agent):
    """An agent whose home is the small tmpfs but whose output log is not on it."""

    def __init__(self, home: Path, env: Mapping[str, str], log_dir: Path) -> None:
        super().__init__(home, env)
        self._log_dir = log_dir

    @property
    def log_path(self) -> Path:
        return self._log_dir / "agent-output.log"


@contextlib.contextmanager
def small_tmpfs(size: str) -> Iterator[Path]:
    """A fresh tmpfs of `size` as an agent home (a short path, for the socket); always unmounted."""
    if not IS_ROOT:
        pytest.skip("mounting a small tmpfs needs root")
    home = make_home()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(home)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        remove_home(home)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield home
    finally:
        done = subprocess.run(["umount", str(home)], capture_output=True, check=False)
        if done.returncode != 0:  # something still holds it open: detach it anyway
            subprocess.run(["umount", "-l", str(home)], check=True)
        remove_home(home)


def remount(home: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(home)], check=True)


def fill(path: Path) -> int:
    """Write `path` until the filesystem refuses (ENOSPC); the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 64 << 10, 4 << 10, 512, 1):
            block = b"f" * chunk
            while True:
                try:
                    written += f.write(block) or 0
                except OSError:
                    break
    return written


@pytest.fixture
def log_dir() -> Iterator[Path]:
    directory = make_home()
    yield directory
    remove_home(directory)


def task_body(receiver: Receiver, key: str) -> dict[str, Any]:
    return {
        "tool": "http_request",
        "args": {"method": "POST", "url": receiver.url(f"/ok/{key}"), "json": {"pad": "p" * PAD}},
        "idempotency_key": key,
    }


def assert_disk_full_error(answer: tuple[int, Any] | None, what: str) -> None:
    """The contract's error body with a 507 (or a 503 for an I/O error), saying the disk is full."""
    assert answer is not None, f"{what}: no answer at all (a dropped connection or a hang)"
    status, body = answer
    assert status in (507, 503), f"{what}: expected 507 disk_full (or 503), got {status}: {body}"
    assert isinstance(body, dict) and set(body) == {"error"}, f"{what}: not the error body: {body}"
    error = body["error"]
    assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str), body
    message = error["message"].lower()
    assert "disk" in message and "full" in message, f"{what}: the message does not say so: {body}"
    if status == 507:
        assert error["code"] == "disk_full", body


def fill_with_tasks(agent: Agent, receiver: Receiver, limit: int = 5000) -> tuple[set[str], list[Any]]:
    """Submit from CLIENTS threads until the disk is full; (acknowledged keys, refusals)."""
    acknowledged: set[str] = set()
    refusals: list[Any] = []
    unexpected: list[Any] = []
    lock = threading.Lock()
    full = threading.Event()

    def submit(worker: int) -> None:
        for i in range(worker, limit, CLIENTS):
            if full.is_set():
                return
            key = f"fill-{i}"
            answer = raw_request(agent.socket, "POST", "/v1/tasks", task_body(receiver, key), timeout=30)
            with lock:
                if answer is not None and answer[0] == 201:
                    acknowledged.add(key)
                elif answer is not None and answer[0] in (503, 507):
                    refusals.append((key, answer))
                    full.set()
                else:
                    unexpected.append((key, answer))
                    full.set()

    run_in_threads(submit, CLIENTS)
    assert not unexpected, f"answers other than 201 or a disk-full error: {unexpected[:3]}"
    assert refusals, f"the disk never filled after {len(acknowledged)} tasks"
    return acknowledged, refusals


def listed_keys(agent: Agent) -> dict[str, str]:
    """{idempotency key: state} of every task, read through the API."""
    answer = raw_request(agent.socket, "GET", "/v1/tasks?limit=1000")
    assert answer is not None and answer[0] == 200, answer
    return {t["idempotency_key"]: t["state"] for t in answer[1]}


def verify_with_cli(home: Path) -> None:
    """`waystation receipts verify` as a user would run it (through the agent, or direct)."""
    done = subprocess.run(
        [sys.executable, "-m", "waystation", "receipts", "verify"],
        env=agent_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"receipts verify failed ({done.returncode}): {done.stdout}{done.stderr}"


def test_a_full_disk_refuses_clearly_keeps_every_ack_and_recovers(
    receiver: Receiver, log_dir: Path, soak_report: Callable[[str], None]
) -> None:
    with small_tmpfs("6m") as home:
        env = {
            "WAYSTATION_CONNECTIVITY__MODE": "offline",  # tasks stay parked while the disk fills
            "WAYSTATION_CONNECTIVITY__PROBE_URL": receiver.url("/generate_204"),
        }
        agent = OffDiskAgent(home, env, log_dir)
        try:
            agent.start()
            # Room the test can give back later without a remount: the first way space returns.
            reserve = home / "reserve"
            reserve.write_bytes(b"r" * (512 << 10))

            acknowledged, refusals = fill_with_tasks(agent, receiver)
            assert len(acknowledged) > 50, f"only {len(acknowledged)} tasks fit: the test measured nothing"
            refused_key, refused = refusals[0]
            assert_disk_full_error(refused, "the enqueue that found the disk full")

            # The refusal may have come from a batch of several clients' tasks (group commit) with
            # room left for one more: take that room too, so "full" holds for a single task.
            fill(home / "filler")
            # Still full: more submissions are refused the same way, the agent stays up and reads work.
            for i in range(5):
                again = raw_request(agent.socket, "POST", "/v1/tasks", task_body(receiver, f"late-{i}"))
                assert_disk_full_error(again, f"enqueue {i} on the full disk")
            assert agent.running(), f"the agent died on a full disk:\n{agent.output()}"
            status = raw_request(agent.socket, "GET", "/v1/status")
            assert status is not None and status[0] == 200, f"GET /v1/status on a full disk: {status}"
            assert status[1]["queue"].get("pending") == len(acknowledged), status[1]["queue"]
            stored = listed_keys(agent)
            assert set(stored) == acknowledged, (
                f"lost {sorted(acknowledged - set(stored))[:5]}, "
                f"kept unacknowledged {sorted(set(stored) - acknowledged)[:5]}"
            )
            # Asking again for an acknowledged task (a client retry) writes nothing new: it answers.
            # (SQLite commits a transaction that changed nothing without writing a frame.)
            first = min(acknowledged)
            retry = raw_request(agent.socket, "POST", "/v1/tasks", task_body(receiver, first))
            assert retry is not None and retry[0] == 200, f"a retry of acknowledged {first}: {retry}"

            # kill -9 and a restart on the still-full disk: every acknowledgement is on disk.
            agent.kill()
            agent.start()
            stored = listed_keys(agent)
            assert set(stored) == acknowledged, (
                f"after kill -9 and restart: lost {sorted(acknowledged - set(stored))[:5]}, "
                f"unacknowledged kept {sorted(set(stored) - acknowledged)[:5]}"
            )
            assert_disk_full_error(
                raw_request(agent.socket, "POST", "/v1/tasks", task_body(receiver, "after-restart")),
                "enqueue after the restart, disk still full",
            )

            # Space returns (a file removed), without restarting the agent: enqueues succeed again.
            reserve.unlink()
            more = raw_request(agent.socket, "POST", "/v1/tasks", task_body(receiver, refused_key))
            assert more is not None and more[0] == 201, (
                f"the refused task's key must be new (nothing of a refused write is kept): {more}"
            )
            acknowledged.add(refused_key)
            # More space (the second way it returns): a remount, still without a restart.
            remount(home, "32m")
            for i in range(20):
                key = f"after-{i}"
                answer = raw_request(agent.socket, "POST", "/v1/tasks", task_body(receiver, key))
                assert answer is not None and answer[0] == 201, f"enqueue {key} once space returned: {answer}"
                acknowledged.add(key)

            # Online: everything acknowledged is delivered, exactly the acknowledged set.
            agent.set_mode("online")
            wait_for(
                lambda: agent.counts().get("done", 0) == len(acknowledged),
                timeout=90,
                what=f"{len(acknowledged)} deliveries (counts now {agent.counts()})",
            )
            delivered = collections.Counter(k for k in receiver.keys("/ok/"))
            assert set(delivered) == acknowledged, (
                f"not delivered: {sorted(acknowledged - set(delivered))[:5]}; "
                f"delivered but never acknowledged: {sorted(set(delivered) - acknowledged)[:5]}"
            )
            assert agent.stop() == 0, agent.output()
            verify_with_cli(home)
        finally:
            agent.close()
    soak_report(f"{len(acknowledged)} tasks acknowledged around a full 6 MB disk, all delivered")


SLOW_MS = 2000  # each delivery takes this long at the receiver: the disk fills while they are out
IN_FLIGHT = 4  # queue.concurrency and queue.per_host: the flusher also leases this many ahead


def test_a_disk_that_fills_during_delivery_loses_nothing(
    receiver: Receiver, log_dir: Path, soak_report: Callable[[str], None]
) -> None:
    """Deliveries go out, the disk fills, their outcomes cannot be recorded (settle fails).

    Those tasks must stay in the queue (as `running`, their lease held) rather than vanish, the
    agent must keep serving, and once space is back the flusher's retries record the answers it
    already has: every task ends `done`, delivered exactly once, without a restart.
    """
    n = 12
    with small_tmpfs("8m") as home:
        env = {
            "WAYSTATION_CONNECTIVITY__MODE": "offline",
            "WAYSTATION_CONNECTIVITY__PROBE_URL": receiver.url("/generate_204"),
            "WAYSTATION_QUEUE__CONCURRENCY": str(IN_FLIGHT),
            "WAYSTATION_QUEUE__PER_HOST": str(IN_FLIGHT),
        }
        agent = OffDiskAgent(home, env, log_dir)
        try:
            agent.start()
            keys = [f"settle-{i}" for i in range(n)]
            for key in keys:
                body = {
                    "tool": "http_request",
                    "args": {"method": "POST", "url": receiver.url(f"/slow/{SLOW_MS}/{key}")},
                    "idempotency_key": key,
                }
                answer = raw_request(agent.socket, "POST", "/v1/tasks", body)
                assert answer is not None and answer[0] == 201, answer
            agent.set_mode("online")
            wait_for(lambda: receiver.hits("/slow/"), timeout=30, what="the first delivery")
            filler = home / "filler"
            fill(filler)  # now: deliveries are in flight and the disk is full

            def failed_settles() -> int:
                """How many tasks' answers the flusher could not record (it retries each)."""
                failed = set()
                for line in agent.output().splitlines():
                    if "cannot record delivery" in line:
                        with contextlib.suppress(ValueError):
                            failed.add(json.loads(line).get("task_id"))
                return len(failed)

            def settled_down() -> dict[str, str] | None:
                """The states once every delivery that went out has ended and each outcome either
                failed to be recorded (still `running`) or was recorded before the disk filled
                (`done`). A task leased ahead but not sent is `running` without a hit: it waits,
                as no new delivery starts while answers are going unrecorded."""
                stored = listed_keys(agent)
                running = {k for k, state in stored.items() if state == "running"}
                done = {k for k, state in stored.items() if state == "done"}
                sent = set(receiver.keys("/slow/"))
                unrecorded = running & sent
                quiet = unrecorded and failed_settles() == len(unrecorded) and sent <= running | done
                return stored if quiet else None

            stored = wait_for(settled_down, timeout=60, interval=0.2, what="the leased deliveries to end")
            assert agent.running(), f"the agent died when a settle found the disk full:\n{agent.output()}"
            assert set(stored) == set(keys), f"tasks vanished: {sorted(set(keys) - set(stored))}"
            stuck = {k for k, state in stored.items() if state == "running"} & set(receiver.keys("/slow/"))
            assert_disk_full_error(
                raw_request(agent.socket, "POST", "/v1/tasks", task_body(receiver, "during-settle")),
                "enqueue while settles are failing",
            )

            # Space back: the flusher's retries record the answers it holds, its next lease goes
            # through, and the rest is delivered — no restart, and nothing goes out twice.
            filler.unlink()
            wait_for(
                lambda: agent.counts().get("done", 0) == n,
                timeout=90,
                what=f"all {n} tasks done once space is back (counts {agent.counts()})",
            )
            sent = collections.Counter(receiver.keys("/slow/"))
            assert set(sent) == set(keys), f"never delivered: {sorted(set(keys) - set(sent))}"
            assert max(sent.values()) == 1, f"an answer already in was delivered again: {sent}"
            answer = raw_request(agent.socket, "GET", "/v1/receipts/verify")
            assert answer is not None and answer[0] == 200 and answer[1]["ok"] is True, answer
            assert agent.stop() == 0, agent.output()
        finally:
            agent.close()
    soak_report(
        f"{len(stuck)} of {n} deliveries could not be recorded on the full disk; all recorded once space"
        " was back, none delivered twice"
    )
