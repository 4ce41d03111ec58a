"""Back online: how fast the queue starts flushing and how fast it drains to one loopback host.

    python bench/flush.py [--tasks 10000]

A receiver (aiohttp on 127.0.0.1, its own process) counts deliveries with wall-clock times. The
agent starts forced offline; the tasks are parked through the socket (POST /v1/tasks, 32 callers);
then PUT /v1/connectivity {"mode": "online"} and we time, on the same clock across processes:
  - from sending the PUT to the receiver's first request (goal <= 100 ms),
  - deliveries per second until every task is received and the agent counts them done
    (goal >= 1,000/s).
All tasks go to one host, so the per-host limit (queue.per_host) caps what is in flight; the run is
repeated with it raised to the concurrency, and with both raised.

The baseline, in the same run: the same POSTs to the same receiver with the same number in flight
and no queue at all, sent by the agent's own delivery path (HttpRequestTool.deliver on
new_client(): httpx requests on aiohttp's transport), by a plain httpx.AsyncClient, and by
aiohttp's client. What the agent adds on top of its delivery path is leasing and settling in
SQLite (an fsync per group commit), a receipt per task, events and metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from _harness import (
    cpu_seconds,
    helper_server,
    print_notes,
    print_table,
    progress,
    running_agent,
    uds_client,
)

from waystation.adapters.tools import HttpRequestTool, new_client
from waystation.config import QueueSettings

DEFAULT = QueueSettings()
DELIVERY_PATH = "the agent's delivery path"
SUBMITTERS = 32
TIMEOUT_S = 300.0
# (label, concurrency, per_host); None = the default from config.py.
CONFIGS: list[tuple[str, int | None, int | None]] = [
    ("defaults", None, None),
    ("per_host = concurrency = 4", 4, 4),
    ("per_host = concurrency = 8", 8, 8),
    ("per_host = concurrency = 32", 32, 32),
]


@dataclass
class FlushResult:
    label: str
    in_flight: int  # at most this many deliveries at once to the one host
    enqueue_per_s: float
    first_ms: float
    receive_per_s: float  # first to last request at the receiver
    done_per_s: float  # from the PUT until the agent counts every task done
    received: int
    distinct: int
    agent_cpu_pct: float
    command: str


async def park(socket_path: str, url: str, tasks: int) -> float:
    """POST `tasks` http_request tasks over `SUBMITTERS` connections; tasks/s."""

    async def submitter(seqs: range) -> None:
        async with uds_client(socket_path) as client:
            for seq in seqs:
                body = {
                    "tool": "http_request",
                    "args": {"method": "POST", "url": url, "json": {"event": "reading", "seq": seq}},
                }
                response = await client.post("/v1/tasks", json=body)
                if response.status_code != 201:
                    raise RuntimeError(f"POST /v1/tasks: {response.status_code} {response.text[:200]}")

    began = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for s in range(SUBMITTERS):
            group.create_task(submitter(range(s, tasks, SUBMITTERS)))
    return tasks / (time.perf_counter() - began)


async def bare_clients(requests: int, in_flight: list[int]) -> dict[tuple[str, int], float]:
    """The HTTP floor: POSTs/s from bare clients to a fresh receiver, `c` in flight, no queue."""
    rates: dict[tuple[str, int], float] = {}
    with helper_server("receiver") as (_, base):
        url = f"{base}/hook"
        for c in in_flight:
            rates[DELIVERY_PATH, c] = await post_all(requests, c, _delivery_poster(url, c))
            rates["httpx.AsyncClient", c] = await post_all(requests, c, _httpx_poster(url, c))
            rates["aiohttp client", c] = await post_all(requests, c, _aiohttp_poster(url, c))
    return rates


Poster = Callable[[int], Awaitable[None]]


async def post_all(
    requests: int, in_flight: int, make: contextlib.AbstractAsyncContextManager[Poster]
) -> float:
    async with make as post:

        async def worker(seqs: range) -> None:
            for seq in seqs:
                await post(seq)

        began = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for w in range(in_flight):
                group.create_task(worker(range(w, requests, in_flight)))
        return requests / (time.perf_counter() - began)


@contextlib.asynccontextmanager
async def _delivery_poster(url: str, in_flight: int) -> AsyncIterator[Poster]:
    tool = HttpRequestTool()
    async with new_client() as client:

        async def post(seq: int) -> None:
            args = tool.validate({"method": "POST", "url": url, "json": {"event": "reading", "seq": seq}})
            answer = await tool.deliver(client, args, f"bare-{seq}", DEFAULT.delivery_timeout_s)
            assert answer.status == 200

        yield post


@contextlib.asynccontextmanager
async def _httpx_poster(url: str, in_flight: int) -> AsyncIterator[Poster]:
    async with httpx.AsyncClient() as client:

        async def post(seq: int) -> None:
            body = {"event": "reading", "seq": seq}
            response = await client.post(url, json=body, headers={"Idempotency-Key": f"bare-{seq}"})
            await response.aread()
            assert response.status_code == 200

        yield post


@contextlib.asynccontextmanager
async def _aiohttp_poster(url: str, in_flight: int) -> AsyncIterator[Poster]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:

        async def post(seq: int) -> None:
            body = {"event": "reading", "seq": seq}
            async with session.post(url, json=body, headers={"Idempotency-Key": f"bare-{seq}"}) as r:
                await r.read()
                assert r.status == 200

        yield post


async def run_one(label: str, concurrency: int | None, per_host: int | None, tasks: int) -> FlushResult:
    env = {}
    if concurrency is not None:
        env["WAYSTATION_QUEUE__CONCURRENCY"] = str(concurrency)
    if per_host is not None:
        env["WAYSTATION_QUEUE__PER_HOST"] = str(per_host)
    with helper_server("receiver") as (_, base):
        async with (
            running_agent("offline", env) as agent,
            uds_client(agent.socket) as api,
            httpx.AsyncClient(base_url=base) as receiver,
        ):
            enqueue_rate = await park(str(agent.socket), f"{base}/hook", tasks)
            queue = (await api.get("/v1/status")).json()["queue"]
            assert queue["pending"] == tasks, queue

            cpu_before = cpu_seconds(agent.pid)
            sent = time.time()
            response = await api.put("/v1/connectivity", json={"mode": "online"})
            assert response.json()["state"] == "online", response.text
            await wait_for(receiver, "/stats", lambda s: s["count"] >= tasks, interval=0.01)
            done_at = None
            while done_at is None:
                if (await api.get("/v1/status")).json()["queue"]["done"] >= tasks:
                    done_at = time.time()
                elif time.time() - sent > TIMEOUT_S:
                    raise RuntimeError(f"{label}: not all done within {TIMEOUT_S:g}s")
                else:
                    await asyncio.sleep(0.02)
            cpu = cpu_seconds(agent.pid) - cpu_before
            stats = (await receiver.get("/stats")).json()
            command = agent.how
    return FlushResult(
        label=label,
        in_flight=min(concurrency or DEFAULT.concurrency, per_host or DEFAULT.per_host),
        enqueue_per_s=enqueue_rate,
        first_ms=(stats["first"] - sent) * 1000,
        receive_per_s=stats["count"] / max(stats["last"] - stats["first"], 1e-9),
        done_per_s=tasks / (done_at - sent),
        received=stats["count"],
        distinct=stats["distinct_keys"],
        agent_cpu_pct=cpu / (done_at - sent) * 100,
        command=command,
    )


async def wait_for(
    client: httpx.AsyncClient, path: str, ready: Callable[[dict[str, Any]], bool], interval: float
) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            data = (await client.get(path)).json()
            if ready(data):
                return
        await asyncio.sleep(interval)
    raise RuntimeError(f"{path}: not ready within {TIMEOUT_S:g}s")


async def main_async(tasks: int, bare_requests: int) -> None:
    results = []
    for label, concurrency, per_host in CONFIGS:
        result = await run_one(label, concurrency, per_host, tasks)
        results.append(result)
        progress(f"{label}: first delivery {result.first_ms:.1f} ms, {result.done_per_s:,.0f} done/s")
    in_flight = sorted({r.in_flight for r in results})
    floor = await bare_clients(bare_requests, in_flight)
    for (client, c), rate in floor.items():
        progress(f"bare {client}, {c} in flight: {rate:,.0f} POSTs/s")

    print_table(
        [
            "queue settings",
            "in flight",
            "parked/s (socket)",
            "online -> 1st delivery ms",
            "received/s",
            "done/s (from PUT)",
            "x bare delivery path",
            "x bare aiohttp",
            "received (distinct keys)",
            "agent CPU %",
            "agent CPU ms/delivery",
        ],
        [
            (
                r.label,
                r.in_flight,
                r.enqueue_per_s,
                r.first_ms,
                r.receive_per_s,
                r.done_per_s,
                r.done_per_s / floor[DELIVERY_PATH, r.in_flight],
                r.done_per_s / floor["aiohttp client", r.in_flight],
                f"{r.received} ({r.distinct})",
                r.agent_cpu_pct,
                r.agent_cpu_pct / 100 / r.done_per_s * 1000,
            )
            for r in results
        ],
    )
    print()
    print(f"HTTP floor: bare clients, {bare_requests} POSTs each to a fresh receiver, no queue:")
    print()
    print_table(
        ["client", "in flight", "POSTs/s"],
        [(client, c, rate) for (client, c), rate in sorted(floor.items(), key=lambda kv: kv[0][1])],
    )
    print_notes(
        "goals: online -> first delivery <= 100 ms; >= 1,000 deliveries/s to a loopback receiver",
        f"{tasks} tasks; in flight = min(concurrency, per_host); defaults: queue.concurrency ="
        f" {DEFAULT.concurrency}, queue.per_host = {DEFAULT.per_host}",
        "times are time.time() in the benchmark and in the receiver (same clock, two processes);"
        " done/s counts from the PUT until GET /v1/status shows every task done",
        "agent CPU % is of one core, over the flush (from the PUT until all are done); the agent has"
        " two busy threads (event loop, database writer), so it can pass 100",
        f"{DELIVERY_PATH}: HttpRequestTool.deliver on waystation's new_client(), as the flusher calls it",
        *(f"{r.label}: `{r.command}`, tasks to the receiver's /hook, then PUT online" for r in results),
        f"reproduce: `python bench/flush.py --tasks {tasks} --bare {bare_requests}`",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks to park and flush")
    parser.add_argument("--bare", type=int, default=3000, help="POSTs per bare-client baseline row")
    args = parser.parse_args()
    asyncio.run(main_async(args.tasks, args.bare))


if __name__ == "__main__":
    main()
