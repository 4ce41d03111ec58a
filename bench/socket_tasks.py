"""The socket API under load: POST /v1/tasks per second and GET /v1/status latency, against a real
agent process, next to a trivial aiohttp app on a Unix socket (the HTTP stack's floor).

    python bench/socket_tasks.py [--posts 4000] [--gets 2000]

Both servers run in their own process and are driven by the same httpx client (AsyncHTTPTransport
over the Unix socket), so the ratio shows what the agent adds on top of aiohttp + httpx: request
validation, the group-committed durable insert (one fsync per batch) and the JSON of a task.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from _harness import (
    cpu_seconds,
    helper_server,
    percentile,
    print_notes,
    print_table,
    progress,
    running_agent,
    uds_client,
)

CLIENTS = (1, 32)
WARMUP = 50


@dataclass
class Result:
    target: str
    what: str
    clients: int
    requests: int
    per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float  # the server process's CPU time per request


def task_body(seq: int) -> dict[str, Any]:
    return {
        "tool": "http_request",
        "args": {
            "method": "POST",
            "url": "http://127.0.0.1:8080/hook",
            "headers": {"content-type": "application/json"},
            "json": {"event": "reading", "sensor": "t-17", "seq": seq, "value": 21.5},
        },
    }


async def drive(
    socket_path: Path, pid: int, method: str, path: str, requests: int, clients: int, seq0: int
) -> Result:
    """`requests` calls spread over `clients` concurrent callers, each waiting for its answer."""
    latencies: list[float] = []
    expect = 201 if method == "POST" else 200

    async def caller(client: httpx.AsyncClient, seqs: range) -> None:
        for seq in seqs:
            began = time.perf_counter()
            if method == "POST":
                response = await client.post(path, json=task_body(seq))
            else:
                response = await client.get(path)
            latencies.append(time.perf_counter() - began)
            if response.status_code != expect:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:200]}")

    # One client (one connection) per caller: K callers sharing one httpx pool measure httpcore's
    # pool bookkeeping, which grows with the number of waiters, more than the server.
    async with contextlib.AsyncExitStack() as stack:
        pool = [await stack.enter_async_context(uds_client(socket_path)) for _ in range(clients)]
        await asyncio.gather(
            *(client.get("/v1/status") for client in pool for _ in range(WARMUP // clients + 1))
        )
        latencies.clear()
        cpu_before, began = cpu_seconds(pid), time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for c, client in enumerate(pool):
                group.create_task(caller(client, range(seq0 + c, seq0 + requests, clients)))
        elapsed, cpu = time.perf_counter() - began, cpu_seconds(pid) - cpu_before
    latencies.sort()
    return Result(
        "",
        f"{method} {path}",
        clients,
        requests,
        requests / elapsed,
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
        cpu / requests * 1e6,
    )


async def measure(target: str, socket_path: Path, pid: int, posts: int, gets: int) -> list[Result]:
    results = []
    plan = [("GET", "/v1/status", gets, "empty queue")]
    plan += [("POST", "/v1/tasks", posts, "")]
    plan += [("GET", "/v1/status", gets, "after the POSTs")]
    seq = 0
    for method, path, requests, note in plan:
        for clients in CLIENTS:
            n = requests if clients > 1 else max(requests // 4, 200)
            result = await drive(socket_path, pid, method, path, n, clients, seq)
            seq += n
            result.target = target
            if note:
                result.what += f" ({note})"
            results.append(result)
            progress(f"{target}: {result.what} K={clients}: {result.per_s:,.0f}/s")
    return results


async def main_async(posts: int, gets: int) -> None:
    with tempfile.TemporaryDirectory(prefix="waystation-bench-") as tmp:
        baseline_sock = Path(tmp) / "baseline.sock"
        with helper_server("baseline", "--uds", str(baseline_sock)) as (proc, _):
            baseline = await measure("aiohttp baseline", baseline_sock, proc.pid, posts, gets)
    async with running_agent("offline") as agent:
        ours = await measure("waystation agent", agent.socket, agent.pid, posts, gets)
        async with uds_client(agent.socket) as client:
            queue = (await client.get("/v1/status")).json()["queue"]
        how = agent.how

    floor = {(r.what, r.clients): r for r in baseline}
    rows = []
    for r in baseline + ours:
        base = floor[(r.what, r.clients)]
        rows.append(
            (
                r.target,
                r.what,
                r.clients,
                r.requests,
                r.per_s,
                r.p50_ms,
                r.p99_ms,
                r.per_s / base.per_s,
                r.server_cpu_us,
                r.server_cpu_us / base.server_cpu_us,
            )
        )
    headers = ["server", "request", "K", "requests", "req/s", "p50 ms", "p99 ms", "req/s x baseline"]
    print_table([*headers, "server CPU us/req", "CPU x baseline"], rows)
    print_notes(
        "K = concurrent callers, each with its own httpx client and connection (one shared pool"
        " of K connections measures httpcore's pool bookkeeping more than the server)",
        "the client runs on the same cores as the server; on a small machine it caps req/s for both,"
        " so the server's CPU time per request (from /proc) shows the overhead more directly",
        f"agent queue at the end: {queue}",
        f"agent: `{how}`",
        f"reproduce: `python bench/socket_tasks.py --posts {posts} --gets {gets}`",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--posts", type=int, default=4000, help="POSTs at K=32 (a quarter at K=1)")
    parser.add_argument("--gets", type=int, default=2000, help="GETs at K=32 (a quarter at K=1)")
    args = parser.parse_args()
    asyncio.run(main_async(args.posts, args.gets))


if __name__ == "__main__":
    main()
