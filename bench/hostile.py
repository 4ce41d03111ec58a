"""What a hostile host or a careless script costs the agent (issue 12): its RSS and `/v1/status`
latency under each load, and how long one healthy host's task waits behind two hung hosts.

    python bench/hostile.py [--connections 3000] [--receipts 200000] [--big-tasks 500] [--hung 20]

Each row is a fresh agent in its own WAYSTATION_HOME:
- idle: the reference;
- N idle connections held open (connected, nothing sent; the head timeout closes them after 10 s,
  so the status samples are taken before that);
- `GET /v1/receipts/verify` running on a chain of N receipts (written before the agent starts);
- N tasks with 1 MB bodies sitting in the queue (offline, so nothing is delivered).
Then, online: two destinations that accept and never answer, each with a backlog of `--hung`
tasks, and one task to a healthy loopback receiver; the time from its POST to `done`, against
the same task with no hung hosts (delivery_timeout_s 4).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from _harness import (
    Agent,
    helper_server,
    percentile,
    print_notes,
    print_table,
    proc_status,
    progress,
    running_agent,
)
from floods import flooding

STATUS_SAMPLES = 200


def rss_mb(agent: Agent) -> float:
    return int(proc_status(agent.pid)["VmRSS"].split()[0]) / 1024


async def status_ms(
    agent: Agent, samples: int = STATUS_SAMPLES, within_s: float = 6.0
) -> tuple[float, float]:
    """p50 and p99 of GET /v1/status, one at a time, each on a new connection like a CLI call's."""
    times: list[float] = []
    stop = time.monotonic() + within_s
    transport = httpx.AsyncHTTPTransport(uds=str(agent.socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://w", timeout=60) as client:
        while len(times) < samples and time.monotonic() < stop:
            started = time.perf_counter()
            response = await client.get("/v1/status", headers={"Connection": "close"})
            response.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return percentile(times, 50), percentile(times, 99)


@contextlib.contextmanager
def idle_connections(path: Path, count: int) -> Iterator[None]:
    """`count` connections, nothing sent on them, held by processes of 1,000 each: one process may
    hold a quarter of the socket's connections (1,024 of 4,096), and status comes from this one."""
    with contextlib.ExitStack() as holders:
        for first in range(0, count, 1000):
            holders.enter_context(flooding("idle", path, min(1000, count - first)))
        yield


async def seed_receipts(home: Path, count: int) -> None:
    """A valid chain of `count` task receipts, appended the way the store appends them."""
    from waystation import logs
    from waystation.db import Database
    from waystation.receipts.chain import ReceiptDraft, RouteInfo, append

    logs.configure()  # its lines to stderr, with the progress: stdout is the report

    route = RouteInfo(name="http_request", provider="example.org", auth_lane="none", cost_lane="local")

    def batch(first: int, size: int) -> Callable[[sqlite3.Connection], None]:
        def op(conn: sqlite3.Connection) -> None:
            for i in range(first, first + size):
                draft = ReceiptDraft(
                    kind="task", status="ok", route=route, reason="delivered", task_id=f"t_{i}"
                )
                append(conn, draft)

        return op

    async with await Database.open(home / "waystation.db") as db:
        for first in range(0, count, 5000):
            await db.write(batch(first, min(5000, count - first)))


async def row(label: str, agent: Agent) -> list[object]:
    p50, p99 = await status_ms(agent)
    return [label, f"{rss_mb(agent):.0f}", f"{p50:.1f}", f"{p99:.1f}"]


async def measure_loads(args: argparse.Namespace) -> list[list[object]]:
    rows = []
    progress("idle agent")
    async with running_agent() as agent:
        rows.append(await row("idle", agent))
        progress(f"{args.connections} idle connections")
        with idle_connections(agent.socket, args.connections):
            await asyncio.sleep(0.5)
            rows.append(await row(f"{args.connections} idle connections held", agent))
    progress(f"{args.receipts} receipts")
    async with running_agent(prepare=lambda home: seed_receipts(home, args.receipts)) as agent:
        async with httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(agent.socket)), timeout=600
        ) as c:
            verifying = asyncio.create_task(c.get("http://w/v1/receipts/verify"))
            await asyncio.sleep(0.2)
            rss_during, (p50, p99) = rss_mb(agent), await status_ms(agent, within_s=60)
            verdict = (await verifying).json()
        rows.append(
            [
                f"verify running on {args.receipts} receipts",
                f"{max(rss_during, rss_mb(agent)):.0f}",
                f"{p50:.1f}",
                f"{p99:.1f}",
            ]
        )
        if not verdict.get("ok"):
            raise RuntimeError(f"the seeded chain did not verify: {verdict}")
    progress(f"{args.big_tasks} tasks of 1 MB")
    async with running_agent() as agent:
        body = "x" * (1024 * 1024 - 100)
        async with httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(agent.socket)), timeout=60
        ) as c:
            for i in range(args.big_tasks):
                task = {
                    "tool": "http_request",
                    "args": {"method": "POST", "url": f"http://127.0.0.1:9/{i}", "body": body},
                }
                (await c.post("http://w/v1/tasks", json=task)).raise_for_status()
        rows.append(await row(f"{args.big_tasks} tasks of 1 MB queued", agent))
    return rows


@contextlib.contextmanager
def hung_hosts(count: int) -> Iterator[list[str]]:
    """Destinations that accept connections (the kernel's backlog does) and never answer."""
    listeners = [socket.create_server(("127.0.0.1", 0), backlog=1024) for _ in range(count)]
    try:
        yield [f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in listeners]
    finally:
        for sock in listeners:
            sock.close()


async def healthy_task_s(agent: Agent, receiver: str) -> float:
    """Seconds from POSTing one task to a healthy host until it is done."""
    transport = httpx.AsyncHTTPTransport(uds=str(agent.socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://w", timeout=60) as client:
        started = time.monotonic()
        task = {"tool": "http_request", "args": {"method": "POST", "url": f"{receiver}/hook", "json": {}}}
        task_id = (await client.post("/v1/tasks", json=task)).json()["id"]
        while (await client.get(f"/v1/tasks/{task_id}")).json()["state"] != "done":
            if time.monotonic() - started > 600:
                raise RuntimeError("the healthy host's task was not done within 600 s")
            await asyncio.sleep(0.05)
        return time.monotonic() - started


async def backlog(agent: Agent, hosts: list[str], per_host: int) -> None:
    transport = httpx.AsyncHTTPTransport(uds=str(agent.socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://w", timeout=60) as client:
        for host in hosts:
            for i in range(per_host):
                task = {"tool": "http_request", "args": {"method": "POST", "url": f"{host}/{i}", "json": {}}}
                (await client.post("/v1/tasks", json=task)).raise_for_status()


async def measure_hung(per_host: int) -> list[list[object]]:
    env = {"WAYSTATION_QUEUE__DELIVERY_TIMEOUT_S": "4"}
    rows: list[list[object]] = []
    with helper_server("receiver") as (_, receiver):
        progress("a healthy host alone")
        async with running_agent(mode="online", extra_env=env) as agent:
            rows.append(["alone", f"{await healthy_task_s(agent, receiver):.2f}"])
        progress(f"a healthy host behind two hung hosts with {per_host} tasks each")
        with hung_hosts(2) as hosts:
            async with running_agent(mode="online", extra_env=env) as agent:
                await backlog(agent, hosts, per_host)
                await asyncio.sleep(1.0)  # the hung deliveries have taken their slots
                rows.append(
                    [
                        f"behind 2 hung hosts x {per_host} tasks",
                        f"{await healthy_task_s(agent, receiver):.2f}",
                    ]
                )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--receipts", type=int, default=200_000)
    parser.add_argument("--big-tasks", type=int, default=500)
    parser.add_argument("--hung", type=int, default=20, help="tasks queued for each hung host")
    args = parser.parse_args()
    loads = await measure_loads(args)
    hung = await measure_hung(args.hung)
    print("## Hostile loads (bench/hostile.py)")
    print()
    print_table(["agent", "RSS MB", "status p50 ms", "status p99 ms"], loads)
    print()
    print_table(["healthy host's task (delivery_timeout_s 4)", "POST to done, s"], hung)
    print_notes(
        f"reproduce: `python bench/hostile.py --connections {args.connections} --receipts {args.receipts} "
        f"--big-tasks {args.big_tasks} --hung {args.hung}`",
        "status: one GET at a time, each on a new connection, as a CLI call makes it",
    )


if __name__ == "__main__":
    asyncio.run(main())
