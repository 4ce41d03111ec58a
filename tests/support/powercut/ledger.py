"""What the store acknowledged before each power cut, and the check that it all survived (issue 24).

The parent of tests/test_powercut_store.py hears every acknowledged step of its child
(support/powercut/workload.py), cuts the power, and then recovers the database with the agent's
own start-up code (Database.open, with its quick_check every few cuts, the running tasks given back, cut-short
resumptions parked again) and checks, after every cut:
- every task accepted is there under its key, with the id it was accepted as;
- every settle acknowledged is `done` with its receipt; every done task has exactly one receipt;
- every parked turn is there with its tasks and its receipt; every resumed one is finished with
  its receipt; no turn has two parked receipts or two final ones (resumed once); a turn caught
  generating is `interrupted`, none left running;
- the kept checkpoint opens under the unchanged key, is not ahead of the receipts, is their root
  at its size, and is not older than one acknowledged as kept; the chain verifies against it;
- a delivery repeated (the same key sent twice) only if it was in flight, sent and not settled
  durably, at some cut, and no more in flight at a cut than one lease holds;
- with a fleet hub: the hub holds a prefix of the chain, in order, each receipt once, at least
  as long as the outbox was told acknowledged and the outbox's kept position; each checkpoint it
  holds covers no receipt it does not hold.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.fleetproc import stream_messages
from support.powercut.workload import DATABASE, FLEET_HOST, LEASE
from waystation.adapters.fleet.hub import SEQ_HEADER, checkpoints_subject, receipts_subject
from waystation.adapters.fleet.layout import RECEIPTS_STREAM
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.queue.store import TaskStore
from waystation.receipts import tree
from waystation.receipts.chain import verify_database
from waystation.receipts.checkpoints import CHECKPOINT_FILE, Checkpoint, VerifierKey, open_checkpoint
from waystation.station.turns.records import recover_turns


@dataclass
class Ledger:
    home: Path
    hub: str | None = None  # the fleet hub's URL, when the outbox publishes to one
    # Deliveries a cut may catch in flight: one lease's (a full disk, refusing settles, lets
    # the work lease more before the cut: None, no bound but the per-key one).
    in_flight_max: int | None = LEASE
    accepted: dict[str, str] = field(default_factory=dict)  # key -> task id
    settled: dict[str, str] = field(default_factory=dict)  # task id -> receipt id
    parked: dict[str, tuple[list[str], str]] = field(default_factory=dict)  # turn -> tasks, receipt
    resumed: dict[str, tuple[str, str]] = field(default_factory=dict)  # turn -> receipt, status
    signed: int = 0  # the largest checkpoint acknowledged as kept
    sent: collections.Counter[str] = field(default_factory=collections.Counter)  # deliveries by key
    in_flight: collections.Counter[str] = field(default_factory=collections.Counter)  # cuts caught in
    round_sent: set[str] = field(default_factory=set)
    # What the receipts held at the last check (append-only once a cut left them).
    receipt_ids: set[str] = field(default_factory=set)
    per_task: collections.Counter[str] = field(default_factory=collections.Counter)
    turn_receipts: collections.Counter[tuple[str, bool]] = field(default_factory=collections.Counter)
    last_seq: int = 0
    published: int = 0  # the last receipt seq the outbox was told the hub has
    hub_held: int = 0  # receipts the hub held at the last check
    refused: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)  # step, why
    refusals: list[str] = field(default_factory=list)  # their messages
    done: set[str] = field(default_factory=set)  # task ids done at the last check
    turns: dict[str, str] = field(default_factory=dict)  # turn id -> state at the last check
    interrupted: int = 0  # turns a cut caught generating (recovery's `interrupted`)
    key: str | None = None
    checks: int = 0

    def heard(self, message: tuple[Any, ...]) -> None:
        kind, *rest = message
        if kind == "accepted":
            key, task_id = rest
            first = self.accepted.setdefault(key, task_id)
            assert first == task_id, f"{key} accepted again as another task: {task_id}, first {first}"
        elif kind == "sent":
            self.sent[rest[0]] += 1
            self.round_sent.add(rest[0])
        elif kind == "settled":
            self.settled[rest[0]] = rest[1]
        elif kind == "parked":
            self.parked[rest[0]] = (rest[1], rest[2])
        elif kind == "resumed":
            self.resumed[rest[0]] = (rest[1], rest[2])
        elif kind == "signed":
            self.signed = max(self.signed, rest[0])
        elif kind == "refused":
            self.refused[(rest[0], rest[1])] += 1
            self.refusals.append(rest[2])
        elif kind == "published":
            self.published = max(self.published, rest[0])

    async def check(self, when: str, thorough: bool) -> None:
        """Recover as the agent's start does, then check everything acknowledged is there;
        `thorough`: also SQLite's quick_check and the whole chain verified (both read it all)."""
        async with await Database.open(self.home / DATABASE, check=thorough) as db:
            await TaskStore(db, QueueSettings()).recover(all_running=True)
            await recover_turns(db)
            await self._check_tasks(db, when)
            await self._check_receipts(db, when)
            await self._check_turns(db, when)
            await self._check_checkpoint(db, when, thorough)
            if self.hub is not None:
                await self._check_hub(db, self.hub, when)
        self.checks += 1

    async def _check_tasks(self, db: Database, when: str) -> None:
        rows = await db.fetchall("SELECT id, idempotency_key, state FROM tasks")
        by_key = {r["idempotency_key"]: r["id"] for r in rows}
        lost = [k for k, task_id in self.accepted.items() if by_key.get(k) != task_id]
        assert not lost, f"{when}: {len(lost)} accepted tasks lost, e.g. {lost[:3]}"
        states = {r["id"]: r["state"] for r in rows}
        unsettled = [t for t in self.settled if states.get(t) != "done"]
        assert not unsettled, f"{when}: settled tasks no longer done: {unsettled[:3]}"
        caught = [k for k in self.round_sent if states.get(by_key.get(k, "")) != "done"]
        for key in caught:  # sent, and not settled durably: it will be sent again
            self.in_flight[key] += 1
        self.round_sent.clear()
        bound = self.in_flight_max
        assert bound is None or len(caught) <= bound, f"{when}: {len(caught)} deliveries in flight at a cut"
        self.done = {t for t, state in states.items() if state == "done"}

    async def _check_receipts(self, db: Database, when: str) -> None:
        rows = await db.fetchall(
            "SELECT seq, id, kind, task_id, turn_id, json_extract(body, '$.status') AS status"
            " FROM receipts WHERE seq > ? ORDER BY seq",
            (self.last_seq,),
        )
        for row in rows:
            self.receipt_ids.add(row["id"])
            if row["kind"] == "task":
                self.per_task[row["task_id"]] += 1
            elif row["kind"] == "turn":
                self.turn_receipts[(row["turn_id"], row["status"] == "parked")] += 1
            self.last_seq = row["seq"]
        missing = [t for t, receipt in self.settled.items() if receipt not in self.receipt_ids]
        assert not missing, f"{when}: settled tasks without their receipt: {missing[:3]}"
        assert set(self.per_task) == self.done, f"{when}: a done task without a receipt, or the reverse"
        twice = [t for t, n in self.per_task.items() if n > 1]
        assert not twice, f"{when}: tasks with two receipts: {twice[:3]}"

    async def _check_turns(self, db: Database, when: str) -> None:
        turns = {r["id"]: r["state"] for r in await db.fetchall("SELECT id, state FROM turns")}
        self.turns = turns
        # A turn the cut caught generating is not re-run: recovery says `interrupted` (a model
        # step is at most once); one caught resuming is parked again, to resume once.
        left = [t for t, state in turns.items() if state in ("running", "resuming")]
        assert not left, f"{when}: turns left running or resuming after recovery: {left[:3]}"
        self.interrupted = sum(state == "interrupted" for state in turns.values())
        tasks = {r["id"]: r["turn_id"] for r in await db.fetchall("SELECT id, turn_id FROM tasks")}
        for turn_id, (task_ids, receipt) in self.parked.items():
            assert turns.get(turn_id) in ("parked", "ok"), (
                f"{when}: parked turn {turn_id}: {turns.get(turn_id)}"
            )
            assert all(tasks.get(t) == turn_id for t in task_ids), f"{when}: turn {turn_id} lost a task"
            assert receipt in self.receipt_ids, f"{when}: turn {turn_id} lost its parked receipt"
        for turn_id, (receipt, status) in self.resumed.items():
            assert turns.get(turn_id) == status, f"{when}: resumed turn {turn_id}: {turns.get(turn_id)}"
            assert receipt in self.receipt_ids, f"{when}: resumed turn {turn_id} lost its receipt"
        twice = [t for t, n in self.turn_receipts.items() if n > 1]
        assert not twice, f"{when}: turns parked or resumed twice: {twice[:3]}"

    async def _check_checkpoint(self, db: Database, when: str, verify_chain: bool) -> None:
        key = VerifierKey.parse((self.home / "receipts.pub").read_text())
        assert self.key in (None, str(key)), f"{when}: the verifier key changed"
        self.key = str(key)
        kept = open_checkpoint((self.home / CHECKPOINT_FILE).read_text(), key)
        size = await tree.size_of(db)
        assert kept.size <= size, (
            f"{when}: the kept checkpoint ({kept.size}) is ahead of the receipts ({size})"
        )
        assert kept.size >= self.signed, f"{when}: a checkpoint kept ({self.signed}) went back to {kept.size}"
        assert await tree.root(db, kept.size) == kept.root, (
            f"{when}: the kept checkpoint is not the receipts' root"
        )
        if verify_chain:
            verification = await verify_database(db, kept)
            assert verification.ok, f"{when}: {verification}"

    async def _check_hub(self, db: Database, url: str, when: str) -> None:
        held = await asyncio.to_thread(stream_messages, url, RECEIPTS_STREAM, receipts_subject(FLEET_HOST))
        seqs = [int(headers[SEQ_HEADER]) for headers, _ in held]
        assert seqs == list(range(1, len(seqs) + 1)), (
            f"{when}: the hub holds {seqs[:20]}..., not a prefix once"
        )
        chain = [
            r["id"] for r in await db.fetchall("SELECT id FROM receipts ORDER BY seq LIMIT ?", (len(held),))
        ]
        assert [headers["Nats-Msg-Id"] for headers, _ in held] == chain, (
            f"{when}: the hub holds another chain"
        )
        assert len(held) >= self.published, f"{when}: the hub lost receipts it acknowledged"
        row = await db.fetchone("SELECT position FROM fleet_outbox WHERE name = 'receipts'")
        assert row is None or row[0] <= len(held), f"{when}: the outbox's mark is past what the hub holds"
        rows = await db.fetchall(
            "SELECT COUNT(*) FROM receipts WHERE seq <= ? AND leaf IS NOT NULL", (len(held),)
        )
        leaves = int(rows[0][0])
        checkpoints = await asyncio.to_thread(
            stream_messages, url, RECEIPTS_STREAM, checkpoints_subject(FLEET_HOST)
        )
        sizes = [Checkpoint.parse(data.decode()).size for _, data in checkpoints]
        assert all(size <= leaves for size in sizes), f"{when}: a checkpoint ahead of the hub's receipts"
        self.hub_held = len(held)

    def repeats(self) -> dict[str, int]:
        """Keys delivered more than once: each repeat must be one a cut caught in flight."""
        repeated = {k: n - 1 for k, n in self.sent.items() if n > 1}
        beyond = {k: n for k, n in repeated.items() if n > self.in_flight[k]}
        assert not beyond, f"deliveries repeated beyond what cuts caught in flight: {beyond}"
        return repeated
