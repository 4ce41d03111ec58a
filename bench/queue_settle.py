"""Durable dequeue-and-settle per second: Waystation's lease + settle against its peers' take + finish.

Each run prefills N tasks (untimed), then times taking every one of them and marking it finished,
each step committed with an fsync of the WAL (SQLite WAL, synchronous=FULL, read back and printed
per row) before the next depends on it. What "finished" is differs, and each row says it:

- Waystation: TaskStore.lease(...) then TaskStore.settle(...) with policy.decide(...) for a 200
  answer, as the flusher does; a settle also stores the delivery result and appends a `task`
  receipt to the hash chain in the same transaction (more work per op than any peer).
- persist-queue SQLiteAckQueue: get() marks the row unack, ack() marks it acked (2 commits).
- huey SqliteStorage: dequeue() deletes the row (1 commit). There is no settle: a task taken and
  then lost in a crash is gone. The "+ put_data" rows add the result-store write huey makes when a
  task returns a value, the nearest it has to recording an outcome.
- litequeue: pop() locks the row, done(message_id) marks it done (2 commits).

    python bench/queue_settle.py [-n 2000] [--repeat 3]

Goal (from the issue): Waystation >= 3x persist-queue and >= 2x huey at comparable durability.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sqlite3
import time
from pathlib import Path

from _harness import print_notes
from _queues import (
    THREADS,
    Case,
    drain_threads,
    litequeues,
    payload,
    payload_json,
    pragmas,
    print_ratio_table,
    quiet_logs,
    run_rounds,
    unsynced,
    waystation_pragmas,
)

from waystation import timeutil
from waystation.adapters.tools import HttpRequestTool
from waystation.adapters.tools.base import DeliveryResult
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.queue.policy import classify, decide
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask, Task

WAYSTATION_WORKERS = (1, 4, 16)
# What a destination answered: stored with the settled task (and, for huey, as its result).
ANSWER = DeliveryResult(200, {"content-type": "application/json"}, '{"ok": true}', False, None, 1)
RESULT = ANSWER.to_json()


# --- the peers -----------------------------------------------------------------------------------


def bench_sqlite(tmp: Path, n: int) -> tuple[float, str]:
    """The floor: claim a row in one transaction, mark it done in a second, nothing else."""
    conn = sqlite3.connect(tmp / "plain.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, state INTEGER NOT NULL, data TEXT NOT NULL)")
    conn.execute("CREATE INDEX q_state ON q (state, id)")
    with unsynced(conn):
        conn.executemany("INSERT INTO q (state, data) VALUES (0, ?)", [(payload_json(s),) for s in range(n)])
    durability = pragmas(conn)
    began = time.perf_counter()
    while True:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(
            "UPDATE q SET state = 1 WHERE id = (SELECT id FROM q WHERE state = 0 ORDER BY id LIMIT 1)"
            " RETURNING id, data"
        ).fetchone()
        conn.execute("COMMIT")
        if row is None:
            break
        conn.execute("UPDATE q SET state = 2 WHERE id = ?", (row[0],))  # autocommit: its own txn
    rate = n / (time.perf_counter() - began)
    assert conn.execute("SELECT COUNT(*) FROM q WHERE state = 2").fetchone()[0] == n
    conn.close()
    return rate, durability


def bench_persist_queue(tmp: Path, n: int, threads: int) -> tuple[float, str]:
    from persistqueue import Empty, SQLiteAckQueue

    queue = SQLiteAckQueue(str(tmp / "pq"), multithreading=True, auto_commit=True)
    with unsynced(queue._putter):
        for seq in range(n):
            queue.put(payload(seq))
    durability = pragmas(queue._putter)  # both get()'s mark and ack() commit on this connection

    def take(_: int) -> bool:
        try:
            item = queue.get(block=False, raw=True)
        except Empty:
            return False
        queue.ack(item)  # by its pqid: no search through the unacked items
        return True

    rate = drain_threads(n, threads, take)
    assert queue.acked_count() == n, (queue.acked_count(), n)
    queue.close()
    return rate, durability


def bench_huey(tmp: Path, n: int, threads: int, store_result: bool) -> tuple[float, str]:
    from huey.storage import SqliteStorage

    # journal_mode="wal" is huey's default; fsync=True sets synchronous=FULL explicitly.
    storage = SqliteStorage("bench", filename=str(tmp / "huey.db"), fsync=True)
    with unsynced(storage.conn):
        for seq in range(n):
            storage.enqueue(payload_json(seq).encode())
    durability = pragmas(storage.conn)
    result = json.dumps(RESULT).encode()
    taken = collections.Counter[int]()

    def take(thread_no: int) -> bool:
        data = storage.dequeue()  # select + delete in one transaction
        if data is None:
            return False
        if store_result:
            taken[thread_no] += 1
            storage.put_data(f"result-{thread_no}-{taken[thread_no]}", result)
        return True

    rate = drain_threads(n, threads, take)
    assert storage.queue_size() == 0, storage.queue_size()
    if store_result:
        assert storage.result_store_size() == n, (storage.result_store_size(), n)
    storage.close()
    return rate, durability


def bench_litequeue(tmp: Path, n: int, threads: int, synchronous: str | None) -> tuple[float, str]:
    queues = litequeues(tmp / "lq.db", threads, synchronous)
    with unsynced(queues[0].conn):
        for seq in range(n):
            queues[0].put(payload_json(seq))
    durability = pragmas(queues[0].conn)

    def take(thread_no: int) -> bool:
        queue = queues[thread_no]
        message = queue.pop()
        if message is None:
            return False
        queue.done(message.message_id)
        return True

    rate = drain_threads(n, threads, take)
    done = queues[0].conn.execute("SELECT COUNT(*) FROM Queue WHERE status = 2").fetchone()[0]
    assert done == n, (done, n)
    for q in queues:
        q.close()
    return rate, durability


# --- Waystation ----------------------------------------------------------------------------------


async def bench_waystation(tmp: Path, n: int, workers: int, ahead: int) -> tuple[float, str]:
    """`workers` deliveries at once on one event loop, leasing up to `ahead` tasks at a time.

    What the flusher does, less the HTTP and its per-delivery asyncio task: leases up to `ahead`
    tasks (the flusher: 2 x concurrency) with the tasks leased and not yet settled counted against
    the per-host limit, then for each task decides on a 200 answer with policy.decide and settles it
    (result + receipt in one transaction). Concurrent settles and leases share a commit (group
    commit), so one fsync serves several. One difference: this leases when its ready tasks run out,
    where the flusher tops up after every delivery (more, smaller leases, overlapping the settles).
    """
    tool = HttpRequestTool()
    host = "127.0.0.1:8080"
    news = [NewTask(tool.name, tool.validate(payload(seq)), host) for seq in range(n)]
    db = await Database.open(tmp / "waystation.db")
    try:
        settings = QueueSettings(concurrency=workers, per_host=workers)
        store = TaskStore(db, settings)
        await db.write(lambda conn: [store.insert(conn, new) for new in news])  # one commit, untimed
        durability = await waystation_pragmas(db)
        rng = random.Random(0)
        ready: collections.deque[Task] = collections.deque()
        held = collections.Counter[str]()  # leased and not yet settled, per host, as the flusher keeps
        refill = asyncio.Lock()

        async def take() -> Task | None:
            while not ready:
                async with refill:
                    if ready:
                        break
                    want = ahead - sum(held.values())
                    leased = await store.lease(want, held, ahead)
                    if not leased:
                        return None
                    held.update(t.host for t in leased)
                    ready.extend(leased)
            return ready.popleft()

        async def worker() -> None:
            while (task := await take()) is not None:
                started = time.perf_counter()
                decision = decide(
                    outcome=classify(ANSWER.status),
                    status=ANSWER.status,
                    attempts=task.attempts,
                    net_failures=task.net_failures,
                    now=timeutil.now(),
                    settings=settings,
                    rng=rng,
                )
                duration_ms = int((time.perf_counter() - started) * 1000)
                settled, receipt = await store.settle(task, decision, RESULT, duration_ms)
                assert receipt is not None and settled.state == "done"
                held[task.host] -= 1

        began = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(worker())
        rate = n / (time.perf_counter() - began)
        counts = await store.counts()
        receipts = await db.fetchone("SELECT COUNT(*) FROM receipts WHERE kind = 'task'")
        assert counts["done"] == n and receipts is not None and receipts[0] == n, (counts, receipts)
    finally:
        await db.close()
    return rate, durability


def waystation_case(n: int, workers: int, ahead: int) -> Case:
    return lambda d: asyncio.run(bench_waystation(d, n, workers, ahead))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=2000, help="tasks taken and settled per run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each row shows its median")
    args = parser.parse_args()
    n, repeat = args.n, args.repeat
    quiet_logs()
    cmd = f"python bench/queue_settle.py -n {n} --repeat {repeat}"
    t = THREADS

    cases: dict[str, Case] = {
        "sqlite3, claim txn + done txn (reference)": lambda d: bench_sqlite(d, n),
        "persist-queue get + ack, 1 thread": lambda d: bench_persist_queue(d, n, 1),
        f"persist-queue get + ack, {t} threads": lambda d: bench_persist_queue(d, n, t),
        "huey dequeue (deletes; no settle), 1 thread": lambda d: bench_huey(d, n, 1, False),
        f"huey dequeue (deletes; no settle), {t} threads": lambda d: bench_huey(d, n, t, False),
        "huey dequeue + put_data(result), 1 thread": lambda d: bench_huey(d, n, 1, True),
        f"huey dequeue + put_data(result), {t} threads": lambda d: bench_huey(d, n, t, True),
        "litequeue pop + done, 1 thread, its default (NOT durable)": lambda d: bench_litequeue(d, n, 1, None),
        "litequeue pop + done, 1 thread, FULL set": lambda d: bench_litequeue(d, n, 1, "FULL"),
        f"litequeue pop + done, {t} threads (a queue each), FULL set": lambda d: bench_litequeue(
            d, n, t, "FULL"
        ),
        "Waystation lease(1) + settle, 1 worker": waystation_case(n, 1, 1),
    }
    for w in WAYSTATION_WORKERS:
        cases[f"Waystation lease (2x ahead) + settle, {w} worker{'s' * (w > 1)}"] = waystation_case(
            n, w, 2 * w
        )

    rows = run_rounds(cases, n, repeat)
    best = print_ratio_table(rows)
    ours = max(r.ops_per_s for r in rows if r.name.startswith("Waystation"))
    pq, huey = best["persist-queue"], best["huey"]
    huey_settled = max(r.ops_per_s for r in rows if r.name.startswith("huey dequeue + put_data"))
    print_notes(
        f"{n} tasks prefilled (untimed) then taken and finished per run, {repeat} rounds over all"
        " rows, each run on a fresh database; ops/s = tasks finished per second",
        f"goal: Waystation >= 3x persist-queue ({ours / pq:.2f}x at best) and >= 2x huey"
        f" ({ours / huey:.2f}x at best; {ours / huey_settled:.2f}x huey's dequeue + put_data); ratios"
        " are against each library's best durable row, for huey the dequeue-only row, which does the"
        " least work of all rows",
        "per op: Waystation lease + settle = an UPDATE to running, then an UPDATE to done with the"
        " delivery result and a `task` receipt chained onto the previous one (SELECT head, hash,"
        " INSERT), each step committed; persist-queue = 2 commits (unack, acked); litequeue = 2 commits"
        " (locked, done); huey dequeue = 1 commit that deletes the task (lost if the process dies"
        " before running it), + put_data = a 2nd commit storing a result",
        "Waystation's concurrency is asyncio tasks on one event loop: concurrent leases and settles"
        " are batched into one transaction and one fsync (group commit); `lease (2x ahead)` takes up"
        " to 2 x workers tasks per lease, as the flusher does; `lease(1)` takes one task per"
        " transaction, the same shape as the peers' 1-thread rows",
        f"peers' {t}-thread rows share the library's queue object across threads (its own locking),"
        " except litequeue, whose pop() needs a connection per consumer; they do not batch commits",
        "litequeue's default is WAL + synchronous=NORMAL (NOT durable; no option changes it): the"
        " FULL rows set synchronous=FULL on its `.conn` after construction",
        f"reproduce: `{cmd}`",
    )


if __name__ == "__main__":
    main()
