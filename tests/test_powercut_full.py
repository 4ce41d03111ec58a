"""A full disk, and a power cut on it (issue 24, item 3: the full-disk column of README's "What
survives what").

The store's real work (support/powercut/workload.py) runs on the lazy disk, the fleet outbox
publishing its receipts to a loopback nats-server; at a random moment
the disk fills (every write that needs room fails with ENOSPC, lazyfs.py), and at another the
power goes, sometimes after room came back. Every step the full disk stopped is refused with a
clear error (DiskFull, an OSError) and retried, never half-done: after each cut everything
acknowledged is there and the kept checkpoint is whole (support/powercut/ledger.py), and where
room came back before the cut the work carried on without a restart. At the end everything
accepted is delivered and every parked turn resumed. A file the agent replaces (a checkpoint, a
config) stays the old one, whole, when the disk is full.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.fleetproc import NatsServer
from support.powercut import workload
from support.powercut.children import hear, kill, start
from support.powercut.disk import LazyDisk
from support.powercut.ledger import Ledger

from waystation import durable

REFUSALS = {"DiskFull", "OSError", "error"}  # the store's 507, a file's ENOSPC, a turn's error receipt


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(600)
async def test_a_full_disk_refuses_clearly_and_a_cut_on_it_loses_nothing(
    lazy_disk: LazyDisk,
    hub: NatsServer,
    soak_length: Callable[[int, int], int],
    soak_report: Callable[[str], None],
) -> None:
    ledger = Ledger(lazy_disk.path / "home", hub=hub.url, in_flight_max=None)
    await workload.first_start(ledger.home)
    rng = random.Random(11)
    carried_on = 0
    rounds = soak_length(8, 60)
    for n in range(rounds):
        child, reader = start(workload.work, str(ledger.home), rng.randrange(2**32), False, hub.url)
        assert hear(reader, ledger.heard, time.monotonic() + 30, stop_at="ready")
        hear(reader, ledger.heard, time.monotonic() + rng.uniform(0.0, 0.04))
        lazy_disk.fill()
        hear(reader, ledger.heard, time.monotonic() + rng.uniform(0.05, 0.1))
        if n % 2:  # room again before the cut: the same process carries on
            lazy_disk.fill(False)
            before = len(ledger.accepted)
            hear(reader, ledger.heard, time.monotonic() + 0.1)
            carried_on += len(ledger.accepted) > before
        kill(child, reader, ledger.heard)
        lazy_disk.cut_in_place(rng.randrange(2**32) if rng.random() < 0.3 else None)
        lazy_disk.fill(False)
        await ledger.check(f"round {n + 1} (full disk)", thorough=True)

    assert ledger.refused, "the full disk refused nothing"
    unclear = {step: why for step, why in ledger.refused if why not in REFUSALS}
    assert not unclear, f"refused with an unclear error: {unclear}"
    assert carried_on == rounds // 2, "the work did not carry on once room came back"
    child, reader = start(workload.work, str(ledger.home), rng.randrange(2**32), True, hub.url)
    assert hear(reader, ledger.heard, time.monotonic() + 120, stop_at="drained")
    child.join(30)
    await ledger.check("after the drain", thorough=True)
    assert all(task_id in ledger.done for task_id in ledger.accepted.values()), "accepted, never done"
    assert all(ledger.turns[t] == "ok" for t in ledger.parked), "a parked turn never resumed"
    assert ledger.hub_held == len(ledger.receipt_ids), "the hub does not hold the whole chain"
    refused = ", ".join(f"{step} {why} x{n}" for (step, why), n in sorted(ledger.refused.items()))
    soak_report(
        f"{rounds} rounds of a full disk then a power cut: refused {refused}; "
        f"{len(ledger.accepted)} accepted tasks, {len(ledger.settled)} settles, {len(ledger.parked)} parked "
        f"turns checked after every cut, 0 lost; carried on without a restart {carried_on} times"
    )


def test_a_file_replaced_on_a_full_disk_stays_the_old_one_whole(lazy_disk: LazyDisk) -> None:
    """durable.write_atomic (the checkpoint, config.toml, a model's record) on a full disk: it
    fails with ENOSPC, and the old file stays, whole, with no temporary file beside it; also
    after a power cut."""
    path = lazy_disk.path / "receipts.checkpoint"
    durable.write_atomic(path, "old\n" * 1000)
    lazy_disk.fill()
    with pytest.raises(OSError) as failed:
        durable.write_atomic(path, "new\n" * 1000)
    assert failed.value.errno == errno.ENOSPC
    assert path.read_text() == "old\n" * 1000 and [p.name for p in lazy_disk.path.iterdir()] == [path.name]
    lazy_disk.cut_in_place()
    lazy_disk.fill(False)
    assert path.read_text() == "old\n" * 1000 and [p.name for p in lazy_disk.path.iterdir()] == [path.name]
