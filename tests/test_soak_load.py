"""Load on a real agent: 50 concurrent clients on the socket, reads, submissions and turns at once.

The agent is online and delivering to the loopback receiver while the load runs, so enqueue
commits compete with the flusher's lease and settle commits (group commit under contention), and
the event loop serves reads while the model thread generates. Turns run on the real embedded
llama.cpp model, which generates one turn at a time (later turns wait on its lock), so a few
clients do turns with a small `max_tokens` and everyone else reads status or submits tasks.

Pass/fail is about correctness only: every answer is the expected 2xx, no connection fails, the
agent is alive after, the queue holds exactly the acknowledged submissions (all delivered, each to
the receiver), and the receipt chain verifies. Throughput and latency are reported, not asserted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from support.agentproc import Agent, Receiver, wait_for

pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(600)]

CLIENTS = 50
TURN_CLIENTS = 3  # the model serves one turn at a time: a few clients keep it busy
SUBMIT_SHARE = 0.3  # of the other clients' requests; the rest are GET /v1/status
TURN_MAX_TOKENS = 4
REQUEST_TIMEOUT_S = 120.0  # generous: a turn may wait behind the others on a loaded 2-core machine


@dataclass
class Tally:
    count: Counter[str] = field(default_factory=Counter)
    status_ms: list[float] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)


async def run_client(
    sock: str,
    number: int,
    turns: bool,
    receiver: Receiver,
    start: asyncio.Event,
    deadline: list[float],
    tally: Tally,
) -> None:
    """One client on its own keep-alive connection, until the deadline (its last request finishes)."""
    rng = random.Random(number)
    transport = httpx.AsyncHTTPTransport(uds=sock)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://waystation", timeout=REQUEST_TIMEOUT_S
    ) as c:
        await start.wait()
        sent = 0
        while time.monotonic() < deadline[0]:
            if turns:
                kind, expected = "turn", 200
                body = {
                    "prompt": f"Say a word ({number}.{sent}).",
                    "tool_choice": "none",
                    "max_tokens": TURN_MAX_TOKENS,
                }
                request = c.post("/v1/turns", json=body)
            elif rng.random() < SUBMIT_SHARE:
                kind, expected = "submit", 201
                key = f"load-{number}-{sent}"
                body = {
                    "tool": "http_request",
                    "args": {"method": "POST", "url": receiver.url(f"/ok/{key}"), "json": {"n": sent}},
                    "idempotency_key": key,
                }
                request = c.post("/v1/tasks", json=body)
            else:
                kind, expected = "status", 200
                request = c.get("/v1/status")
            sent += 1
            began = time.perf_counter()
            try:
                response = await request
            except httpx.HTTPError as exc:
                tally.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                continue
            elapsed_ms = (time.perf_counter() - began) * 1000
            tally.count[kind] += 1
            if response.status_code != expected:
                tally.failures.append(f"{kind}: {response.status_code} {response.text[:300]}")
                continue
            if kind == "status":
                tally.status_ms.append(elapsed_ms)
            elif kind == "submit":
                tally.acknowledged.add(body["idempotency_key"])  # type: ignore[arg-type]
            else:
                answer = response.json()
                if answer.get("status") != "ok" or not answer.get("receipt_id"):
                    tally.failures.append(f"turn: not a finished turn: {answer}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_fifty_clients_reading_submitting_and_turning(
    agent_factory: Callable[..., Agent],
    receiver: Receiver,
    soak_length: Callable[[int, int], int],
    soak_report: Callable[[str], None],
) -> None:
    seconds = soak_length(6, 60)
    agent = agent_factory(
        {
            "WAYSTATION_CONNECTIVITY__MODE": "online",  # deliveries run during the load
            "WAYSTATION_CONNECTIVITY__PROBE_URL": receiver.url("/generate_204"),
        }
    )
    await asyncio.to_thread(agent.start)
    # One turn before the clock starts: the model's cold load is not part of the load figures.
    with agent.client(timeout=REQUEST_TIMEOUT_S) as warm:
        first = await asyncio.to_thread(
            warm.post, "/v1/turns", json={"prompt": "Say hi.", "tool_choice": "none", "max_tokens": 2}
        )
    assert first.status_code == 200, first.text

    tally = Tally()
    start = asyncio.Event()
    deadline = [0.0]
    clients = [
        asyncio.create_task(
            run_client(str(agent.socket), n, n < TURN_CLIENTS, receiver, start, deadline, tally),
            name=f"client-{n}",
        )
        for n in range(CLIENTS)
    ]
    await asyncio.sleep(0.5)  # every client has made its connection pool before the clock starts
    began, cpu_began = time.monotonic(), time.process_time()
    deadline[0] = began + seconds
    start.set()
    await asyncio.gather(*clients)
    elapsed = time.monotonic() - began
    # The clients' share of a core: near 100 % would mean the figures measure the client.
    client_cpu = (time.process_time() - cpu_began) / elapsed

    assert not tally.failures, f"{len(tally.failures)} failed requests, first ones: {tally.failures[:5]}"
    assert agent.running(), f"the agent died under load:\n{agent.output()}"
    assert tally.count["turn"] >= TURN_CLIENTS, tally.count  # each turn client finished at least one
    assert tally.count["submit"] == len(tally.acknowledged) > 0, tally.count
    assert tally.status_ms, tally.count

    # Exactly the acknowledged submissions are in the queue, and every one is delivered, once.
    acknowledged = tally.acknowledged
    counts = await asyncio.to_thread(agent.counts)
    assert sum(counts.values()) == len(acknowledged), f"queue {counts} vs {len(acknowledged)} acknowledged"
    await asyncio.to_thread(
        wait_for,
        lambda: agent.counts().get("done", 0) == len(acknowledged),
        timeout=240,
        interval=0.5,
        what=f"delivery of {len(acknowledged)} acknowledged tasks",
    )
    delivered = Counter(await asyncio.to_thread(receiver.keys, "/ok/load-"))
    assert set(delivered) == acknowledged, (
        f"not delivered: {sorted(acknowledged - set(delivered))[:5]}, "
        f"never acknowledged: {sorted(set(delivered) - acknowledged)[:5]}"
    )
    duplicates = {k: c for k, c in delivered.items() if c > 1}
    assert not duplicates, f"delivered more than once without a crash: {list(duplicates.items())[:5]}"

    verify = await asyncio.to_thread(agent.api, "GET", "/v1/receipts/verify")
    assert verify.status_code == 200 and verify.json()["ok"] is True, verify.text
    assert await asyncio.to_thread(agent.stop) == 0, agent.output()

    total = sum(tally.count.values())
    soak_report(
        f"{CLIENTS} clients for {elapsed:.1f} s: {total} requests ({total / elapsed:.0f}/s): "
        f"{tally.count['status']} status, {tally.count['submit']} submissions, {tally.count['turn']} turns "
        f"(max_tokens {TURN_MAX_TOKENS}); GET /v1/status p50 {percentile(tally.status_ms, 0.5):.1f} ms, "
        f"p99 {percentile(tally.status_ms, 0.99):.1f} ms; the clients used {client_cpu:.0%} of a core"
    )
