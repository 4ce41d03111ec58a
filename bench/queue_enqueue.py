"""Durable enqueues per second: Waystation's TaskStore against persist-queue and huey.

Every row acknowledges an enqueue only after its transaction committed with an fsync of the WAL
(SQLite WAL, synchronous=FULL): the durability the contract promises ("survives power loss once
answered"). Each library's settings are read back from its own connection and printed, so the
comparison is checked, not assumed. A WAL+NORMAL row shows what giving up that promise would buy.

    python bench/queue_enqueue.py [-n 5000] [--repeat 3]

Goal (from the issue): Waystation >= 3x persist-queue and >= 2x huey at comparable durability.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from _harness import print_notes, print_table, progress

from waystation.adapters.tools import HttpRequestTool
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.queue.store import NewTask, TaskStore

SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
WAYSTATION_CONCURRENCY = (1, 16, 64)
THREADS = 16


def payload(seq: int) -> dict[str, Any]:
    """A small http_request call, as a sensor or a model would park it."""
    return {
        "method": "POST",
        "url": "http://127.0.0.1:8080/hook",
        "headers": {"content-type": "application/json"},
        "json": {"event": "reading", "sensor": "t-17", "seq": seq, "value": 21.5},
    }


@dataclass
class Row:
    name: str
    durability: str
    ops_per_s: float  # the median over the rounds
    low: float
    high: float


Case = Callable[[Path], tuple[float, str]]


def pragmas(conn: sqlite3.Connection) -> str:
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    return f"{journal.upper()} + synchronous={SYNC_NAMES.get(sync, sync)}"


def run_threads(n: int, threads: int, put: Callable[[int], None]) -> float:
    """Call put(seq) n times over `threads` threads; ops/s."""
    shares = [range(t, n, threads) for t in range(threads)]
    start = threading.Barrier(threads + 1)

    def work(share: range) -> None:
        start.wait()
        for seq in share:
            put(seq)

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(work, share) for share in shares]
        start.wait()
        began = time.perf_counter()
        for f in futures:
            f.result()
        return n / (time.perf_counter() - began)


# --- the rows ------------------------------------------------------------------------------------


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
        conn.execute("INSERT INTO q (data) VALUES (?)", (json.dumps(payload(seq)),))
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
    rate = run_threads(n, threads, lambda seq: storage.enqueue(json.dumps(payload(seq)).encode()))
    assert storage.queue_size() == n, (storage.queue_size(), n)
    storage.close()
    return rate, durability


async def bench_waystation(tmp: Path, n: int, concurrency: int) -> tuple[float, str]:
    tool = HttpRequestTool()
    tasks = [NewTask(tool.name, tool.validate(payload(seq)), "127.0.0.1:8080") for seq in range(n)]
    db = await Database.open(tmp / "waystation.db")
    try:
        store = TaskStore(db, QueueSettings())
        rows = await db.fetchall("PRAGMA journal_mode")
        sync = await db.fetchall("PRAGMA synchronous")  # the reader; the writer is set alike in db.py
        durability = f"{rows[0][0].upper()} + synchronous={SYNC_NAMES.get(sync[0][0], sync[0][0])}"

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


# --- driver --------------------------------------------------------------------------------------


def run_once(once: Case) -> tuple[float, str]:
    with tempfile.TemporaryDirectory(prefix="waystation-bench-") as tmp:
        return once(Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=5000, help="enqueues per run (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each row shows its median")
    args = parser.parse_args()
    n, repeat = args.n, args.repeat
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    cmd = f"python bench/queue_enqueue.py -n {n} --repeat {repeat}"

    cases: dict[str, Case] = {
        "sqlite3, 1 txn per row (reference)": lambda d: bench_sqlite(d, n, "FULL"),
        "sqlite3, 1 txn per row, NORMAL (NOT durable)": lambda d: bench_sqlite(d, n, "NORMAL"),
        "persist-queue SQLiteAckQueue.put, 1 thread": lambda d: bench_persist_queue(d, n, 1),
        f"persist-queue SQLiteAckQueue.put, {THREADS} threads": lambda d: bench_persist_queue(d, n, THREADS),
        "huey SqliteStorage.enqueue, 1 thread": lambda d: bench_huey(d, n, 1),
        f"huey SqliteStorage.enqueue, {THREADS} threads": lambda d: bench_huey(d, n, THREADS),
    }
    for c in WAYSTATION_CONCURRENCY:
        cases[f"Waystation TaskStore.enqueue, {c} concurrent"] = lambda d, c=c: asyncio.run(
            bench_waystation(d, n, c)
        )

    # Rounds over all rows, rather than all runs of one row then the next, so that a burst of
    # load from elsewhere on the machine lands on every row alike instead of on one.
    rates: dict[str, list[float]] = {name: [] for name in cases}
    durability: dict[str, str] = {}
    for round_ in range(1, repeat + 1):
        progress(f"round {round_} of {repeat}, n={n}")
        for name, once in cases.items():
            rate, durability[name] = run_once(once)
            rates[name].append(rate)
            progress(f"  {name}: {rate:,.0f}/s ({durability[name]})")
    rows = [Row(name, durability[name], statistics.median(r), min(r), max(r)) for name, r in rates.items()]

    # Against each library's best row, so threads cannot flatter us.
    pq = max(r.ops_per_s for r in rows if r.name.startswith("persist-queue"))
    huey = max(r.ops_per_s for r in rows if r.name.startswith("huey"))
    print_table(
        ["queue", "durability", "ops/s (median)", "min-max", "x persist-queue", "x huey"],
        [
            (
                r.name,
                r.durability,
                r.ops_per_s,
                f"{r.low:,.0f}-{r.high:,.0f}",
                r.ops_per_s / pq,
                r.ops_per_s / huey,
            )
            for r in rows
        ],
    )
    best = max(r.ops_per_s for r in rows if r.name.startswith("Waystation"))
    print_notes(
        f"{n} enqueues per run, {repeat} rounds over all rows, each run on a fresh database; the"
        " payload is a small http_request args dict (~150 bytes of JSON)",
        f"goal: Waystation >= 3x persist-queue ({best / pq:.2f}x at best) and >= 2x huey"
        f" ({best / huey:.2f}x at best); ratios are against each library's best row",
        "persist-queue sets journal_mode=WAL and leaves synchronous at SQLite's default (FULL in this"
        " build); huey is given fsync=True (synchronous=FULL) on its default WAL",
        f"reproduce: `{cmd}`",
    )


if __name__ == "__main__":
    main()
