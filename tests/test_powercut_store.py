"""Hundreds of power cuts in the store's real work (issue 24, item 2), a few ms each.

A child forked from a preloaded forkserver (support/powercut/workload.py) runs the store, the
turn engine and the receipts on the lazy disk: tasks accepted (some twice under their key),
leased, delivered and settled with receipts, turns parking their calls and resuming once those
settled, checkpoints signed and kept. At a random moment (sometimes before it is even ready) it
is killed and the power cut in place: every unsynced write dropped, sometimes the last one torn
at a sector boundary. The parent then recovers the database with the agent's start-up code and
checks that everything acknowledged survived (support/powercut/ledger.py). At the end a last
child drains the queue and resumes every turn: every accepted task was delivered, repeats only
those a cut caught in flight, every parked turn resumed once.

The default run makes 130 cuts here and 30 more with the fleet outbox publishing to a loopback
nats-server (with the pulls', the receipt files' and the agent's cuts, over 200 in CI);
WAYSTATION_SOAK=long makes 1,000 and 200, WAYSTATION_POWERCUTS=N any number for the first
(bench/powercut.py). The agent itself under HTTP load is tests/test_powercut_load.py.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.fleetproc import NatsServer
from support.powercut import workload
from support.powercut.children import hear, kill, start
from support.powercut.disk import LazyDisk
from support.powercut.ledger import Ledger

TEAR_SHARE = 0.3
EARLY_SHARE = 0.1  # killed before it said it was ready: in the database's open and recovery
WORK_S = (0.0, 0.05)
THOROUGH_EVERY = 5  # quick_check, and the whole chain verified against the kept checkpoint (else its root)


@dataclass
class Run:
    """One run of cuts: its schedule's seed, and what the cuts did."""

    seed: int
    cuts: int = 0
    torn: int = 0
    dropped: int = 0  # unsynced blocks and names the cuts undid
    started: float = field(default_factory=time.monotonic)

    @property
    def replay(self) -> str:
        return f"(seed {self.seed}; replay with WAYSTATION_SOAK_SEED={self.seed})"


async def cut_many(disk: LazyDisk, ledger: Ledger, cuts: int, fleet: str | None = None) -> Run:
    """`cuts` power cuts in the children's work, each checked; then a drain, checked."""
    run = Run(int(os.environ.get("WAYSTATION_SOAK_SEED") or random.SystemRandom().randrange(2**32)))
    rng = random.Random(run.seed)
    await workload.first_start(ledger.home)
    for n in range(cuts):
        child, reader = start(workload.work, str(ledger.home), rng.randrange(2**32), False, fleet)
        early = rng.random() < EARLY_SHARE
        if early or hear(reader, ledger.heard, time.monotonic() + 30, stop_at="ready"):
            hear(reader, ledger.heard, time.monotonic() + rng.uniform(*WORK_S))
        kill(child, reader, ledger.heard)
        cut = disk.cut_in_place(rng.randrange(2**32) if rng.random() < TEAR_SHARE else None)
        assert cut.lost_names == 0, "the harness could not put a name back"
        run.cuts, run.torn, run.dropped = (
            run.cuts + 1,
            run.torn + cut.torn,
            run.dropped + cut.blocks + cut.names,
        )
        await ledger.check(f"cut {n + 1} {run.replay}", thorough=n % THOROUGH_EVERY == 0)

    child, reader = start(workload.work, str(ledger.home), rng.randrange(2**32), True, fleet)
    assert hear(reader, ledger.heard, time.monotonic() + 120, stop_at="drained"), f"no drain {run.replay}"
    child.join(30)
    assert child.exitcode == 0, f"the drain failed ({child.exitcode}) {run.replay}"
    await ledger.check(f"after the drain {run.replay}", thorough=True)
    never = [k for k in ledger.accepted if not ledger.sent[k]]
    assert not never, f"{len(never)} accepted tasks never delivered, e.g. {never[:3]} {run.replay}"
    not_done = [k for k, task_id in ledger.accepted.items() if task_id not in ledger.done]
    assert not not_done, f"accepted tasks not done after the drain: {not_done[:3]} {run.replay}"
    assert not ledger.refused, (
        f"refused with room on the disk: {ledger.refused} {ledger.refusals[:3]} {run.replay}"
    )
    unresumed = [t for t in ledger.parked if ledger.turns[t] != "ok" or not ledger.turn_receipts[(t, False)]]
    assert not unresumed, f"parked turns never resumed: {unresumed[:3]} {run.replay}"
    return run


def figures(run: Run, ledger: Ledger) -> str:
    repeated = ledger.repeats()
    return (
        f"seed {run.seed}, {run.cuts} cuts ({run.torn} torn writes survived) in "
        f"{time.monotonic() - run.started:.0f} s; checked after every cut: {len(ledger.accepted)} accepted "
        f"tasks, {len(ledger.settled)} settles, {len(ledger.receipt_ids)} receipts, {len(ledger.parked)} "
        f"parked and {len(ledger.resumed)} resumed turns ({ledger.interrupted} caught generating: "
        f"interrupted), checkpoints up to {ledger.signed}; 0 lost; "
        f"unsynced blocks and names undone {run.dropped}; {sum(ledger.sent.values())} deliveries, "
        f"{sum(repeated.values())} repeated, of {len(repeated)} keys (e.g. {sorted(repeated)[:3]}), each "
        "caught in flight by a cut"
    )


@pytest.mark.timeout(3600)
async def test_power_cuts_in_the_stores_work_lose_nothing_acknowledged(
    lazy_disk: LazyDisk, soak_length: Callable[[int, int], int], soak_report: Callable[[str], None]
) -> None:
    ledger = Ledger(lazy_disk.path / "home")
    run = await cut_many(
        lazy_disk, ledger, int(os.environ.get("WAYSTATION_POWERCUTS") or soak_length(130, 1000))
    )
    soak_report(f"store power cuts: {figures(run, ledger)}")


@pytest.mark.timeout(3600)
async def test_power_cuts_while_the_outbox_publishes_to_a_real_hub(
    lazy_disk: LazyDisk,
    tmp_path: Path,
    soak_length: Callable[[int, int], int],
    soak_report: Callable[[str], None],
) -> None:
    """The same work, its receipts and kept checkpoint published by the fleet outbox to a
    loopback nats-server (whose own store is not on the lazy disk: the hub is another machine)."""
    hub = NatsServer(tmp_path / "nats").start()
    try:
        ledger = Ledger(lazy_disk.path / "home", hub=hub.url)
        run = await cut_many(lazy_disk, ledger, soak_length(30, 200), fleet=hub.url)
        assert ledger.hub_held == len(ledger.receipt_ids), (
            "the hub does not hold the whole chain after the drain"
        )
    finally:
        hub.stop()
    soak_report(
        f"outbox power cuts: {figures(run, ledger)}; the hub holds all {ledger.hub_held} receipts, once each"
    )
