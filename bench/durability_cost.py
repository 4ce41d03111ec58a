"""What making a turn's step durable costs (issue 24, item 4): each step as the turn engine commits
it, in the store's own write path (`Database.write`: one transaction, WAL, synchronous=FULL, so one
fsync of the WAL before it returns), timed one at a time, p50 and p99 in ms:

- a model step's record: the turn's row saved after a step (state, messages so far, step count);
- a parked call: the task parked, the turn's row (parked) and its `parked` receipt, in one commit.

The same steps on the same code with the database on /dev/shm (memory: its fsync costs nothing)
are the baseline of the same run; the difference is what durability costs. Goal (the issue):
p50 <= 2 ms, p99 <= 10 ms on disk.

    python bench/durability_cost.py [--steps 500] [--dir DIR_ON_DISK]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _harness import percentile, print_notes, print_table, progress

from waystation import logs
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask
from waystation.receipts.chain import ReceiptDraft, RouteInfo, append, new_id
from waystation.station.turns.records import TurnRow, save_turn

ROUTE = RouteInfo(name="local", provider="llamacpp", auth_lane="none", cost_lane="local", model="bench.gguf")
REQUEST = {"prompt": "Fetch the forecast and summarise it", "route": "local", "store": True}
MESSAGES = [
    {"role": "user", "content": REQUEST["prompt"]},
    {"role": "assistant", "content": "I will fetch https://example.org/forecast for you." * 3},
]

Step = Callable[[TaskStore, int], Awaitable[object]]


def model_step(store: TaskStore, i: int) -> Awaitable[object]:
    row = TurnRow(state="running", request=REQUEST, messages=MESSAGES, steps=i % 8, route="local")
    return store.db.write(lambda conn: save_turn(conn, f"turn_bench{i // 8}", row))


def parked_call(store: TaskStore, i: int) -> Awaitable[object]:
    turn_id = f"turn_park{i}"

    def commit(conn: sqlite3.Connection) -> None:
        task, _ = store.insert(
            conn,
            NewTask(
                tool="http_request",
                args={"method": "GET", "url": f"https://example.org/forecast/{i}"},
                host="example.org",
                turn_id=turn_id,
            ),
        )
        row = TurnRow(state="parked", request=REQUEST, messages=MESSAGES, deferred={task.id: f"call_{i}"})
        save_turn(conn, turn_id, row)
        draft = ReceiptDraft(
            kind="turn", status="parked", route=ROUTE, turn_id=turn_id, deferred_task_ids=(task.id,)
        )
        append(conn, draft)

    return store.db.write(commit)


async def timed(folder: Path, step: Step, count: int) -> list[float]:
    db = await Database.open(folder / f"{new_id('b')}.db")
    store = TaskStore(db, QueueSettings())
    try:
        for i in range(20):  # warm: the schema cached, the WAL grown
            await step(store, -1 - i)
        took = []
        for i in range(count):
            started = time.perf_counter()
            await step(store, i)
            took.append((time.perf_counter() - started) * 1000)
        return sorted(took)
    finally:
        await db.close()


async def run(count: int, disk: Path) -> None:
    memory = Path(tempfile.mkdtemp(prefix="ws-durability-", dir="/dev/shm"))
    on_disk = Path(tempfile.mkdtemp(prefix="ws-durability-", dir=disk))
    rows = []
    try:
        for name, step in (
            ("a model step's record", model_step),
            ("a parked call (task + turn + receipt)", parked_call),
        ):
            progress(f"{name}: {count} on disk, {count} in memory")
            durable = await timed(on_disk, step, count)
            baseline = await timed(memory, step, count)
            rows.append(
                (
                    name,
                    percentile(durable, 50),
                    percentile(durable, 99),
                    percentile(baseline, 50),
                    percentile(baseline, 99),
                    percentile(durable, 50) - percentile(baseline, 50),
                )
            )
    finally:
        shutil.rmtree(memory, ignore_errors=True)
        shutil.rmtree(on_disk, ignore_errors=True)
    print(f"# What a durable step costs ({count} steps each, one at a time)\n")
    headers = ["step", "disk p50 ms", "disk p99 ms", "memory p50 ms", "memory p99 ms", "fsync's share p50 ms"]
    print_table(headers, rows)
    print_notes(
        f"disk: {disk} (WAL, synchronous=FULL: one fsync per step); memory: /dev/shm, the same code.",
        "Goal (issue 24): p50 <= 2 ms, p99 <= 10 ms on disk.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="a directory on disk")
    args = parser.parse_args()
    logs.configure()
    asyncio.run(run(args.steps, args.dir))


if __name__ == "__main__":
    main()
