"""A destination away while the host stays online, then back: how long its tasks wait after it returns.

    python bench/comeback.py [--outages 3,10,45] [--rounds 3] [--tasks 20]

The agent runs forced online (a loopback receiver is its probe target). For each outage length T
and round: N http_request tasks are posted (POST /v1/tasks) to a loopback port where nothing
listens, so every try is refused at once; T seconds after the first POST a receiver starts on that
port, and we time, on the wall clock shared by the processes, from the receiver listening to its
first request and to its last (the whole backlog). Meanwhile the agent is asked nothing: only its
own retries can find the destination back.

The baseline, in the same run on the same agent: the same N tasks posted to a destination that is
up, from the first POST to the receiver's first and last request (what the agent takes when
nothing is in the way).

What sets the figures: the retry schedule for no answer (queue/policy.py, from 1 s growing 1.5x
to at most 30 s apart) and the breaker's windows for a host that refuses at once
(queue/breaker.py, 2 s doubling to at most 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
from _harness import helper_server, print_notes, print_table, progress, running_agent, uds_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from agentproc import port_nobody_uses


async def post_tasks(agent: httpx.AsyncClient, url: str, count: int) -> float:
    """Post `count` tasks to `url`; the wall-clock time of the first POST."""
    first = time.time()
    for seq in range(count):
        body = {"tool": "http_request", "args": {"method": "POST", "url": url, "json": {"seq": seq}}}
        response = await agent.post("/v1/tasks", json=body)
        if response.status_code != 201:
            raise RuntimeError(f"POST /v1/tasks: {response.status_code} {response.text[:200]}")
    return first


async def received(base: str, count: int, timeout_s: float = 120.0) -> tuple[float, float]:
    """Wait until the receiver at `base` got `count` requests: (its first, its last) wall time."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(trust_env=False) as client:
        while time.monotonic() < deadline:
            stats = (await client.get(f"{base}/stats")).json()
            if stats["count"] >= count:
                return stats["first"], stats["last"]
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{count} requests did not arrive within {timeout_s:g}s")


async def one_outage(agent: httpx.AsyncClient, outage_s: float, count: int) -> tuple[float, float]:
    """Seconds from the destination's return to its first and to its last request."""
    port = port_nobody_uses()
    posted = await post_tasks(agent, f"http://127.0.0.1:{port}/hook", count)
    await asyncio.sleep(max(0.0, posted + outage_s - time.time()))
    with helper_server("receiver", "--port", str(port)) as (_, base):
        back = time.time()  # it printed its address: it accepts connections
        first, last = await received(base, count)
    return first - back, last - back


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outages", default="3,10,45", help="outage lengths in seconds, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20, help="tasks waiting for the destination")
    args = parser.parse_args()
    outages = [float(x) for x in args.outages.split(",")]

    rows: list[list[object]] = []
    with helper_server("receiver") as (_, probe):
        env = {"WAYSTATION_CONNECTIVITY__PROBE_URL": f"{probe}/generate_204"}
        async with running_agent(mode="online", extra_env=env) as agent, uds_client(agent.socket) as client:
            floor_first, floor_last = [], []
            for _ in range(args.rounds):
                with helper_server("receiver") as (_, base):
                    posted = await post_tasks(client, f"{base}/hook", args.tasks)
                    first, last = await received(base, args.tasks)
                floor_first.append(first - posted)
                floor_last.append(last - posted)
            rows.append(["up all along (baseline: from the first POST)", *_spread(floor_first, floor_last)])
            for outage_s in outages:
                firsts, lasts = [], []
                for round_ in range(args.rounds):
                    progress(f"outage {outage_s:g}s, round {round_ + 1}/{args.rounds}")
                    first, last = await one_outage(client, outage_s, args.tasks)
                    firsts.append(first)
                    lasts.append(last)
                rows.append([f"away {outage_s:g}s (from its return)", *_spread(firsts, lasts)])
            how = agent.how

    print_table(
        ["destination", "to first request, s (median)", "min-max", "to last request, s (median)", "min-max"],
        rows,
    )
    print_notes(
        f"{args.tasks} http_request tasks to one loopback host per row and round, {args.rounds} rounds",
        "the agent is asked nothing between the POSTs and the deliveries: only its own retries find "
        "the destination back",
        "with a backlog the breaker decides: a host refusing at once is left alone for 2, 4, 8, 16, "
        "then 30 s at a time, so the first try after its return comes when the window it returned in "
        "ends: at most 30 s later (an outage ending just after a window opened waits that long)",
        f"agent: {how}",
    )


def _spread(firsts: list[float], lasts: list[float]) -> list[object]:
    return [
        statistics.median(firsts),
        f"{min(firsts):.2f}-{max(firsts):.2f}",
        statistics.median(lasts),
        f"{min(lasts):.2f}-{max(lasts):.2f}",
    ]


if __name__ == "__main__":
    asyncio.run(main())
