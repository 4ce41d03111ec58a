"""What the queue benchmarks share: the payload, durability read-back, thread drivers, rounds, table.

queue_enqueue.py and queue_settle.py import this. Of the peers, only litequeue needs setting up the
same way in both (a queue per thread, synchronous set after construction), so that lives here too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from _harness import print_table, progress

from waystation.db import Database

SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
THREADS = 16
# The peers the ratio columns are against: a row belongs to the peer whose name it starts with.
PEERS = ("persist-queue", "huey", "litequeue")
NOT_DURABLE = "NOT durable"  # rows so labelled never serve as a ratio's denominator


def payload(seq: int) -> dict[str, Any]:
    """A small http_request call, as a sensor or a model would park it."""
    return {
        "method": "POST",
        "url": "http://127.0.0.1:8080/hook",
        "headers": {"content-type": "application/json"},
        "json": {"event": "reading", "sensor": "t-17", "seq": seq, "value": 21.5},
    }


def payload_json(seq: int) -> str:
    return json.dumps(payload(seq))


@dataclass
class Row:
    name: str
    durability: str
    ops_per_s: float  # the median over the rounds
    low: float
    high: float


# One run of one row, in a fresh temp dir: (ops/s, durability as read back from its connection).
Case = Callable[[Path], tuple[float, str]]


def quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def pragmas(conn: sqlite3.Connection) -> str:
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    return f"{journal.upper()} + synchronous={SYNC_NAMES.get(sync, sync)}"


def litequeues(path: Path, count: int, synchronous: str | None) -> list[Any]:
    """`count` LiteQueues on one file (a connection each); `synchronous` set on each, if given.

    LiteQueue sets WAL + synchronous=NORMAL on its connection; it takes no option for it, so FULL
    is set on the connection it exposes (`.conn`) after it is made. Its pop() runs BEGIN on its
    connection, so concurrent consumers need a queue (a connection) each, as separate processes
    would have; they are made one after the other, before any thread starts.
    """
    from litequeue import LiteQueue

    queues = [LiteQueue(str(path)) for _ in range(count)]
    if synchronous is not None:
        for q in queues:
            q.conn.execute(f"PRAGMA synchronous={synchronous}")
    return queues


async def waystation_pragmas(db: Database) -> str:
    rows = await db.fetchall("PRAGMA journal_mode")
    sync = await db.fetchall("PRAGMA synchronous")  # the reader; the writer is set alike in db.py
    return f"{rows[0][0].upper()} + synchronous={SYNC_NAMES.get(sync[0][0], sync[0][0])}"


@contextlib.contextmanager
def unsynced(conn: sqlite3.Connection) -> Iterator[None]:
    """synchronous=OFF on `conn` for an untimed prefill, then back to what it was."""
    before = conn.execute("PRAGMA synchronous").fetchone()[0]
    conn.execute("PRAGMA synchronous=OFF")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA synchronous={int(before)}")


def run_threads(n: int, threads: int, put: Callable[[int], None]) -> float:
    """Call put(seq) n times over `threads` threads; ops/s."""
    shares = [range(t, n, threads) for t in range(threads)]
    return _timed(n, [lambda share=share: [put(seq) for seq in share] for share in shares])


def drain_threads(n: int, threads: int, take: Callable[[int], bool]) -> float:
    """Call take(thread_no) on `threads` threads until each returns False (empty); n/s."""
    return _timed(n, [lambda t=t: _until_empty(take, t) for t in range(threads)])


def _until_empty(take: Callable[[int], bool], thread_no: int) -> None:
    while take(thread_no):
        pass


def _timed(n: int, works: list[Callable[[], object]]) -> float:
    start = threading.Barrier(len(works) + 1)

    def work(job: Callable[[], object]) -> None:
        start.wait()
        job()

    with ThreadPoolExecutor(len(works)) as pool:
        futures = [pool.submit(work, job) for job in works]
        start.wait()
        began = time.perf_counter()
        for f in futures:
            f.result()
        return n / (time.perf_counter() - began)


def run_rounds(cases: dict[str, Case], n: int, repeat: int) -> list[Row]:
    """Every case `repeat` times, each on a fresh temp dir; a Row per case (median, min, max).

    Rounds over all rows, rather than all runs of one row then the next, so that a burst of load
    from elsewhere on the machine lands on every row alike instead of on one.
    """
    rates: dict[str, list[float]] = {name: [] for name in cases}
    durability: dict[str, str] = {}
    for round_ in range(1, repeat + 1):
        progress(f"round {round_} of {repeat}, n={n}")
        for name, once in cases.items():
            with tempfile.TemporaryDirectory(prefix="waystation-bench-") as tmp:
                rate, durability[name] = once(Path(tmp))
            rates[name].append(rate)
            progress(f"  {name}: {rate:,.0f}/s ({durability[name]})")
    return [Row(name, durability[name], statistics.median(r), min(r), max(r)) for name, r in rates.items()]


def best_durable(rows: list[Row], peer: str) -> float:
    """A peer's best median among its rows that keep the durability promise."""
    return max(r.ops_per_s for r in rows if r.name.startswith(peer) and NOT_DURABLE not in r.name)


def print_ratio_table(rows: list[Row]) -> dict[str, float]:
    """The report's table, with a ratio column per peer; returns each peer's denominator."""
    best = {peer: best_durable(rows, peer) for peer in PEERS}
    print_table(
        ["queue", "durability", "ops/s (median)", "min-max", *(f"x {p}" for p in PEERS)],
        [
            (
                r.name,
                r.durability,
                r.ops_per_s,
                f"{r.low:,.0f}-{r.high:,.0f}",
                *(r.ops_per_s / best[p] for p in PEERS),
            )
            for r in rows
        ],
    )
    return best
