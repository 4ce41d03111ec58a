"""What the receipts' Merkle tree costs (issue 14): appends with the tree kept against appends
without it, checkpoint and proof time as the log grows, and a whole verify at the largest size.

    python bench/receipts_tree.py [--sizes 1000,100000,1000000] [--appends 5000]

- appends/s: `receipts.append` in the store's own write path (`Database.write`, group commit,
  synchronous=FULL), 16 writers at once, with the tree kept and with `tree.append_leaf`
  stubbed out (the same process, the same run); also one transaction of appends alone (CPU cost).
- checkpoint / proof: the median of 25 `proofs.checkpoint` and `prove` calls (random
  receipts) once the database holds each size (grown by real appends, chain and tree).
- verify: `waystation receipts verify` in its own process at the largest size: wall time and
  the process's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from unittest import mock

from _harness import print_notes, print_table, progress

from waystation import logs
from waystation.db import Database
from waystation.receipts import proofs, tree
from waystation.receipts.chain import ReceiptDraft, RouteInfo, append
from waystation.receipts.checkpoints import SigningKey

ROUTE = RouteInfo(name="http_request", provider="example.org", auth_lane="none", cost_lane="local")
WRITERS = 16


def draft(i: int) -> ReceiptDraft:
    return ReceiptDraft(
        kind="task", status="ok", route=ROUTE, reason="delivered after 1 attempt(s)", task_id=f"t_{i}"
    )


async def appends_per_s(path: Path, count: int) -> float:
    """`count` receipts by WRITERS concurrent writers, each its own write op (group commit)."""
    db = await Database.open(path)
    try:
        started = time.perf_counter()

        async def writer(first: int) -> None:
            for i in range(first, count, WRITERS):
                await db.write(lambda conn, i=i: append(conn, draft(i)))

        await asyncio.gather(*(writer(w) for w in range(WRITERS)))
        return count / (time.perf_counter() - started)
    finally:
        await db.close()


async def appends_in_one_transaction_per_s(path: Path, count: int) -> float:
    db = await Database.open(path)
    try:
        started = time.perf_counter()
        await db.write(lambda conn: [append(conn, draft(i)) for i in range(count)])
        return count / (time.perf_counter() - started)
    finally:
        await db.close()


async def with_and_without_tree(
    measure: Callable[[Path, int], Awaitable[float]], count: int, rounds: int = 3
) -> tuple[float, float]:
    """Medians of `rounds` alternated runs each way: a machine that slows down mid-run (other work
    on it) then weighs on both sides alike."""
    kept, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            kept.append(await measure(Path(tmp) / f"tree{round_}.db", count))
            with mock.patch.object(tree, "append_leaf", lambda _conn, _hash, index: index):
                bare.append(await measure(Path(tmp) / f"bare{round_}.db", count))
    return statistics.median(kept), statistics.median(bare)


async def grow(db: Database, to: int) -> None:
    have = (await db.fetchone("SELECT COUNT(*) FROM receipts"))[0]
    while have < to:
        batch = min(5000, to - have)
        await db.write(
            lambda conn, have=have, batch=batch: [append(conn, draft(have + i)) for i in range(batch)]
        )
        have += batch


async def median_ms(call: Callable[[], Awaitable[object]], reps: int = 25) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def verify_in_a_process(home: Path) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MB) of `waystation receipts verify` on `home`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "waystation", "receipts", "verify"],
        env={**os.environ, "WAYSTATION_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024, (done.stdout or done.stderr).strip()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--appends", type=int, default=5000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    logs.configure()  # their lines to stderr, with the progress: stdout is the report

    progress(f"{args.appends} appends with and without the tree")
    grouped = await with_and_without_tree(appends_per_s, args.appends)
    single = await with_and_without_tree(appends_in_one_transaction_per_s, args.appends)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        key = SigningKey.load_or_create(home)
        db = await Database.open(home / "waystation.db")
        try:
            for size in sizes:
                progress(f"growing the log to {size} receipts")
                await grow(db, size)
                ids = [r[0] for r in await db.fetchall("SELECT id FROM receipts ORDER BY random() LIMIT 25")]
                picks = iter(ids * 2)
                checkpoint_ms = await median_ms(lambda: proofs.checkpoint(db, key))
                prove_ms = await median_ms(lambda picks=picks: proofs.prove(db, key, next(picks)))
                rows.append([f"{size:,}", f"{checkpoint_ms:.2f}", f"{prove_ms:.2f}"])
            await db.checkpoint()
        finally:
            await db.close()
        progress(f"verify of {sizes[-1]} receipts in its own process")
        seconds, peak_mb, said = verify_in_a_process(home)

    print("## Receipt tree (bench/receipts_tree.py)")
    print()
    print_table(
        ["appends", "with the tree /s", "without /s", "ratio"],
        [
            [
                f"{WRITERS} writers, group commit",
                f"{grouped[0]:,.0f}",
                f"{grouped[1]:,.0f}",
                f"{grouped[0] / grouped[1]:.2f}",
            ],
            [
                "one transaction (CPU only)",
                f"{single[0]:,.0f}",
                f"{single[1]:,.0f}",
                f"{single[0] / single[1]:.2f}",
            ],
        ],
    )
    print()
    print_table(["receipts", "checkpoint ms (median)", "prove ms (median)"], rows)
    print()
    print_table(
        ["verify", "seconds", "receipts/s", "peak RSS MB"],
        [[f"{sizes[-1]:,} receipts", f"{seconds:.1f}", f"{sizes[-1] / seconds:,.0f}", f"{peak_mb:.0f}"]],
    )
    print_notes(
        f"verify said: {said}",
        f"reproduce: `python bench/receipts_tree.py --sizes {args.sizes} --appends {args.appends}`",
    )


if __name__ == "__main__":
    asyncio.run(main())
