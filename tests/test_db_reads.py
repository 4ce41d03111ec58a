"""A read sees every write that committed before it, whatever other reads are in flight.

The database's reads share one connection on one thread. A read that took two hops there (the
query, then its rows) held a read transaction open between them, and another coroutine's read
ran inside it, on a snapshot older than a write it had just seen commit: a turn's row, read back
right after its commit, was missing (found by tests/test_powercut_store.py, 2 in 1,000 children).
"""

from __future__ import annotations

import asyncio
import sqlite3

from waystation.db import Database


async def test_a_write_is_read_back_while_other_reads_are_in_flight(db: Database) -> None:
    await db.write(lambda conn: conn.execute("CREATE TABLE wide (n INTEGER PRIMARY KEY)"))
    await db.write(lambda conn: conn.executemany("INSERT INTO wide VALUES (?)", [(i,) for i in range(300)]))
    await db.write(lambda conn: conn.execute("CREATE TABLE written (n INTEGER PRIMARY KEY)"))
    done = asyncio.Event()

    async def reading() -> None:
        while not done.is_set():
            await db.fetchall("SELECT * FROM wide")

    readers = [asyncio.create_task(reading()) for _ in range(2)]
    missed = []
    try:
        for n in range(100):

            def insert(conn: sqlite3.Connection, n: int = n) -> None:
                conn.execute("INSERT INTO written VALUES (?)", (n,))

            await db.write(insert)
            if await db.fetchone("SELECT n FROM written WHERE n = ?", (n,)) is None:
                missed.append(n)
    finally:
        done.set()
        await asyncio.gather(*readers)
    assert not missed, f"{len(missed)} of 100 writes not seen by the read right after their commit"
