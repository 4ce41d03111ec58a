"""Clients that submit tasks to a real agent while something kills it, and what the tests then read
(test_soak_kill.py: kill -9; test_powercut_load.py: power cuts on the lazy disk)."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from support.agentproc import Agent, Receiver, raw_request, wait_for

# Receiver paths: answered at once, or after a short wait so deliveries are often in flight
# (and requests often already received) when the kill lands.
DESTINATIONS = ("/ok/kill", "/slow/20/kill", "/slow/60/kill")
DRAIN_TIMEOUT_S = 60.0


def online_settings(receiver: Receiver, concurrency: int) -> dict[str, str]:
    """An agent that delivers to the receiver at once: the load's settings."""
    return {
        # Forced online: deterministic, no probe decides whether deliveries may run.
        "WAYSTATION_CONNECTIVITY__MODE": "online",
        "WAYSTATION_CONNECTIVITY__PROBE_URL": receiver.url("/generate_204"),
        "WAYSTATION_CONNECTIVITY__METERED": "no",
        "WAYSTATION_QUEUE__CONCURRENCY": str(concurrency),
        # One destination host: let it use the whole window, so the repeat bound is the tight one.
        "WAYSTATION_QUEUE__PER_HOST": str(concurrency),
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

    def __init__(
        self,
        agent: Agent,
        receiver: Receiver,
        round_no: int,
        rng: random.Random,
        clients: int,
        prefix: str = "kill",
    ) -> None:
        self.agent, self.receiver, self.round_no, self.prefix = agent, receiver, round_no, prefix
        self.seeds = [rng.random() for _ in range(clients)]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.attempted: set[str] = set()
        self.acknowledged: dict[str, str] = {}  # key -> task id
        self.unanswered = 0
        self.wrong: list[Any] = []  # answers that are neither an acknowledgement nor a cut-off
        self.threads = [threading.Thread(target=self._client, args=(c,)) for c in range(clients)]

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
            key = f"{self.prefix}-r{self.round_no:03d}-c{client}-{i}"
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


def queue_counts(agent: Agent) -> dict[str, int]:
    answer = raw_request(agent.socket, "GET", "/v1/status")
    assert answer is not None and answer[0] == 200, answer
    counts: dict[str, int] = answer[1]["queue"]
    return counts


def drain(agent: Agent, when: str) -> dict[str, int]:
    """Wait until the agent is idle (nothing pending, nothing running); return the counts."""

    def idle() -> dict[str, int] | None:
        counts = queue_counts(agent)
        return counts if counts["pending"] == 0 and counts["running"] == 0 else None

    counts = wait_for(idle, timeout=DRAIN_TIMEOUT_S, what=f"the queue to drain {when}")
    assert counts is not None
    return counts


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
