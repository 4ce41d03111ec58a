"""Power cuts under load (issue 24, item 2): the agent's home on the lazy disk, clients POSTing tasks
while the flusher delivers them and settles them with receipts, and at a random moment the power
goes: SIGKILL, every unsynced write dropped (sometimes the last one torn at a sector boundary),
the disk mounted again. Some rounds end in a clean stop first (the checkpoint signed at stop is
the last write), then the cut.

After each cut, before the restart (the database as the cut left it, read-only):
- SQLite's quick_check passes, and every task that got a 201 is there;
- the kept receipts.checkpoint is not ahead of the receipts the database holds;
- receipts.key, receipts.pub and the checkpoint are whole (the origin never changes).
After each restart (which needs no repair): the queue drains, every done task has exactly one
receipt, `GET /v1/receipts/verify` passes against the kept checkpoint, and `status` says the
checkpoints are signed. At the end: every acknowledged task was delivered, repeats only within
what a cut can catch in flight (the same bound as kill -9, test_soak_kill.py).

The default run makes 4 cuts (the agent's start costs a second or two each; the hundreds of
cheap cuts of the same steps are tests/test_powercut_store.py's); WAYSTATION_SOAK=long makes 100,
and WAYSTATION_AGENT_POWERCUTS=N (bench/powercut.py --agent-cuts) any number.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.agentproc import Receiver, raw_request
from support.powercut.disk import DiskAgent, LazyDisk, short_socket_dir
from support.taskload import Load, all_receipts, drain, online_settings, read_dead_agents_db

from waystation import durable
from waystation.queue.flusher import UNRECORDED_MAX
from waystation.receipts.checkpoints import VerifierKey, open_checkpoint

CONCURRENCY = 4
REPEAT_MAX = (1 + UNRECORDED_MAX) * CONCURRENCY  # what a cut can catch sent but not recorded
CLIENTS = 3
CUT_DELAY_S = (0.05, 0.8)
TEAR_SHARE, CLEAN_STOP_SHARE = 0.3, 0.15


class Tally:
    def __init__(self) -> None:
        self.cuts = self.torn = self.clean_stops = self.unanswered = self.receipts = 0
        self.dropped_blocks = self.dropped_names = 0  # what the cuts undid: they did cut something
        self.acknowledged: dict[str, str] = {}  # key -> task id
        self.attempted: set[str] = set()
        self.key: str | None = None  # the verifier key, which no cut may change


def check_cut_left(home: Path, tally: Tally, when: str) -> None:
    """The database and the receipt files as the cut left them, before anything repairs them."""
    assert read_dead_agents_db(home / "waystation.db", "PRAGMA quick_check") == [("ok",)], when
    present = {row[0] for row in read_dead_agents_db(home / "waystation.db", "SELECT id FROM tasks")}
    lost = sorted(k for k, task_id in tally.acknowledged.items() if task_id not in present)
    assert not lost, f"{when}: {len(lost)} acknowledged tasks lost, e.g. {lost[:3]}"
    receipts = read_dead_agents_db(home / "waystation.db", "SELECT COUNT(*) FROM receipts")[0][0]
    key = VerifierKey.parse((home / "receipts.pub").read_text())
    assert tally.key is None or str(key) == tally.key, f"{when}: the verifier key changed"
    tally.key = str(key)
    kept = open_checkpoint((home / "receipts.checkpoint").read_text(), key)
    assert kept.size <= receipts, (
        f"{when}: the kept checkpoint ({kept.size}) is ahead of the receipts ({receipts})"
    )


def check_restarted(agent: DiskAgent, tally: Tally, when: str) -> None:
    counts = drain(agent, when)
    others = {s: n for s, n in counts.items() if s not in ("done", "pending", "running") and n}
    assert not others, f"{when}: tasks ended other than done: {counts}"
    verified = raw_request(agent.socket, "GET", "/v1/receipts/verify", timeout=60)
    assert verified is not None and verified[0] == 200 and verified[1]["ok"], f"{when}: {verified}"
    status = raw_request(agent.socket, "GET", "/v1/status")
    assert status is not None and status[1]["signing"] == {"ok": True, "error": None}, f"{when}: {status}"
    receipts = [r for r in all_receipts(agent) if r["kind"] == "task"]
    per_task = collections.Counter(r["task_id"] for r in receipts)
    done = {
        row[0] for row in read_dead_agents_db(agent.database, "SELECT id FROM tasks WHERE state = 'done'")
    }
    assert set(per_task) == done, f"{when}: a done task without its receipt, or a receipt of no done task"
    assert max(per_task.values(), default=1) == 1, f"{when}: a task with two receipts"
    tally.receipts = len(receipts)


@pytest.mark.timeout(3600)
def test_power_cuts_under_load_lose_nothing_acknowledged(
    lazy_disk: LazyDisk,
    receiver: Receiver,
    soak_length: Callable[[int, int], int],
    soak_report: Callable[[str], None],
) -> None:
    rounds = int(os.environ.get("WAYSTATION_AGENT_POWERCUTS") or soak_length(4, 100))  # bench/powercut.py
    seed = int(os.environ.get("WAYSTATION_SOAK_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    replay = f"(seed {seed}; replay with WAYSTATION_SOAK_SEED={seed})"
    home = lazy_disk.path / "home"
    home.mkdir(mode=0o700)
    durable.fsync_dir(lazy_disk.path)
    sockets = short_socket_dir()
    agent = DiskAgent(home, sockets, online_settings(receiver, CONCURRENCY))
    tally, started = Tally(), time.monotonic()
    try:
        for round_no in range(rounds):
            agent.start(timeout=60)
            if round_no:
                check_restarted(agent, tally, f"after cut {round_no} {replay}")
            with Load(agent, receiver, round_no, rng, CLIENTS, prefix="cut") as load:
                time.sleep(rng.uniform(*CUT_DELAY_S))
                if rng.random() < CLEAN_STOP_SHARE:
                    load.stop.set()
                    agent.stop(30)  # signs a checkpoint at stop: the power goes right after
                    tally.clean_stops += 1
                agent.kill()
            assert not load.wrong, f"round {round_no}: unexpected answers: {load.wrong[:3]} {replay}"
            tally.attempted |= load.attempted
            tally.acknowledged.update(load.acknowledged)
            tally.unanswered += load.unanswered
            tear = rng.randrange(2**32) if rng.random() < TEAR_SHARE else None
            cut = lazy_disk.cut(tear)
            lazy_disk.mount()
            tally.cuts += 1
            tally.torn += cut.torn
            tally.dropped_blocks += cut.blocks
            tally.dropped_names += cut.names
            assert cut.lost_names == 0, "the harness could not put a name back"
            check_cut_left(home, tally, f"cut {round_no + 1} {replay}")

        agent.start(timeout=60)
        check_restarted(agent, tally, f"after the last cut {replay}")
        assert agent.stop(30) == 0, agent.output()
    finally:
        agent.close()
        shutil.rmtree(sockets, ignore_errors=True)

    received = collections.Counter(h.key for h in receiver.hits() if h.key)
    never = sorted(set(tally.acknowledged) - set(received))
    assert not never, f"{len(never)} acknowledged tasks never delivered, e.g. {never[:3]} {replay}"
    assert set(received) <= tally.attempted
    duplicates = sum(received.values()) - len(received)
    assert duplicates <= REPEAT_MAX * tally.cuts, f"{duplicates} repeats over {tally.cuts} cuts {replay}"
    soak_report(
        f"power cuts: seed {seed}, {tally.cuts} cuts ({tally.torn} torn writes survived, "
        f"{tally.clean_stops} right after a clean stop) in {time.monotonic() - started:.0f} s; "
        f"{len(tally.acknowledged)} acknowledged tasks checked after every cut, 0 lost; "
        f"{tally.receipts} task receipts, one per done task; {tally.unanswered} POSTs cut off unanswered; "
        f"unsynced 4 KiB blocks undone {tally.dropped_blocks}, names undone {tally.dropped_names}; "
        f"{sum(received.values())} deliveries, {duplicates} repeated (bound {REPEAT_MAX} per cut)"
    )
