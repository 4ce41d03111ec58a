"""Durable enqueues per second: Waystation's TaskStore against persist-queue, huey and litequeue.

Every durable row acknowledges an enqueue only after its transaction committed with an fsync of
the WAL (SQLite WAL, synchronous=FULL): the durability the contract promises ("survives power loss
once answered"). Each library's settings are read back from its own connection and printed, so
the comparison is checked, not assumed. Rows labelled NOT durable (WAL+NORMAL, litequeue's own
default) show what giving up that promise would buy; no ratio is taken against them.

    python bench/queue_enqueue.py [-n 5000] [--repeat 3]

Goal (from the issue): Waystation >= 3x persist-queue and >= 2x huey at comparable durability.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from pathlib import Path

from _harness import print_notes
from _queues import (
    THREADS,
    Case,
    litequeues,
    payload,
    payload_json,
    pragmas,
    print_ratio_table,
    quiet_logs,
    run_rounds,
    run_threads,
    waystation_pragmas,
)

from waystation.adapters.tools import HttpRequestTool
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask

WAYSTATION_CONCURRENCY = (1, 16, 64)


def bench_sqlite(tmp: Path, n: int, synchronous: str) -> tuple[float, str]:
    """The floor: one plain sqlite3 transaction per row, nothing else."""
    conn = sqlite3.connect(tmp / "plain.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
    durability = pragmas(conn)
    began = time.perf_counter()
    for seq in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO q (data) VALUES (?)", (payload_json(seq),))
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - began)
    conn.close()
    return rate, durability


def bench_persist_queue(tmp: Path, n: int, threads: int) -> tuple[float, str]:
    from persistqueue import SQLiteAckQueue

    queue = SQLiteAckQueue(str(tmp / "pq"), multithreading=True, auto_commit=True)
    # persist-queue sets journal_mode=WAL and leaves synchronous at SQLite's default; read it back.
    durability = pragmas(queue._putter)
    rate = run_threads(n, threads, lambda seq: queue.put(payload(seq)))
    assert queue.size == n, (queue.size, n)
    queue.close()
    return rate, durability


def bench_huey(tmp: Path, n: int, threads: int) -> tuple[float, str]:
    from huey.storage import SqliteStorage

    # journal_mode="wal" is huey's default; fsync=True sets synchronous=FULL explicitly.
    storage = SqliteStorage("bench", filename=str(tmp / "huey.db"), fsync=True)
    durability = pragmas(storage.conn)
    rate = run_threads(n, threads, lambda seq: storage.enqueue(payload_json(seq).encode()))
    assert storage.queue_size() == n, (storage.queue_size(), n)
    storage.close()
    return rate, durability


def bench_litequeue(tmp: Path, n: int, threads: int, synchronous: str | None) -> tuple[float, str]:
    queues = litequeues(tmp / "lq.db", threads, synchronous)
    durability = pragmas(queues[0].conn)
    rate = run_threads(n, threads, lambda seq: queues[seq % threads].put(payload_json(seq)))
    assert queues[0].qsize() == n, (queues[0].qsize(), n)
    for q in queues:
        q.close()
    return rate, durability


async def bench_waystation(tmp: Path, n: int, concurrency: int) -> tuple[float, str]:
    tool = HttpRequestTool()
    tasks = [NewTask(tool.name, tool.validate(payload(seq)), "127.0.0.1:8080") for seq in range(n)]
    db = await Database.open(tmp / "waystation.db")
    try:
        store = TaskStore(db, QueueSettings())
        durability = await waystation_pragmas(db)

        async def submitter(share: list[NewTask]) -> None:
            for new in share:
                _, created = await store.enqueue(new)
                assert created

        shares = [tasks[c::concurrency] for c in range(concurrency)]
        began = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for share in shares:
                group.create_task(submitter(share))
        rate = n / (time.perf_counter() - began)
        count = await db.fetchone("SELECT COUNT(*) FROM tasks")
        assert count is not None and count[0] == n, (count, n)
    finally:
        await db.close()
    return rate, durability


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=5000, help="enqueues per run (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each row shows its median")
    args = parser.parse_args()
    n, repeat = args.n, args.repeat
    quiet_logs()
    cmd = f"python bench/queue_enqueue.py -n {n} --repeat {repeat}"

    cases: dict[str, Case] = {
        "sqlite3, 1 txn per row (reference)": lambda d: bench_sqlite(d, n, "FULL"),
        "sqlite3, 1 txn per row, NORMAL (NOT durable)": lambda d: bench_sqlite(d, n, "NORMAL"),
        "persist-queue SQLiteAckQueue.put, 1 thread": lambda d: bench_persist_queue(d, n, 1),
        f"persist-queue SQLiteAckQueue.put, {THREADS} threads": lambda d: bench_persist_queue(d, n, THREADS),
        "huey SqliteStorage.enqueue, 1 thread": lambda d: bench_huey(d, n, 1),
        f"huey SqliteStorage.enqueue, {THREADS} threads": lambda d: bench_huey(d, n, THREADS),
        "litequeue LiteQueue.put, 1 thread, its default (NOT durable)": lambda d: bench_litequeue(
            d, n, 1, None
        ),
        "litequeue LiteQueue.put, 1 thread, FULL set": lambda d: bench_litequeue(d, n, 1, "FULL"),
        f"litequeue LiteQueue.put, {THREADS} threads (a queue each), FULL set": lambda d: bench_litequeue(
            d, n, THREADS, "FULL"
        ),
    }
    for c in WAYSTATION_CONCURRENCY:
        cases[f"Waystation TaskStore.enqueue, {c} concurrent"] = lambda d, c=c: asyncio.run(
            bench_waystation(d, n, c)
        )

    rows = run_rounds(cases, n, repeat)
    # Against each library's best durable row, so threads cannot flatter us.
    best = print_ratio_table(rows)
    ours = max(r.ops_per_s for r in rows if r.name.startswith("Waystation"))
    pq, huey = best["persist-queue"], best["huey"]
    print_notes(
        f"{n} enqueues per run, {repeat} rounds over all rows, each run on a fresh database; the"
        " payload is a small http_request args dict (~150 bytes of JSON)",
        f"goal: Waystation >= 3x persist-queue ({ours / pq:.2f}x at best) and >= 2x huey"
        f" ({ours / huey:.2f}x at best); ratios are against each library's best durable row",
        "persist-queue sets journal_mode=WAL and leaves synchronous at SQLite's default (FULL in this"
        " build); huey is given fsync=True (synchronous=FULL) on its default WAL",
        "litequeue sets WAL + synchronous=NORMAL on its connection and has no option for it: its"
        " default row is NOT durable (the last commits can vanish on power loss); the FULL rows set"
        " synchronous=FULL on its `.conn` after it is made; with threads, each thread has its own"
        " LiteQueue (connection) on one file, so they contend for SQLite's write lock",
        f"reproduce: `{cmd}`",
    )


if __name__ == "__main__":
    main()
