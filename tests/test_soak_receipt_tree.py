"""A long log (issue 14): a chain of receipts written by real appends (20,000 by default; 10^6
with WAYSTATION_SOAK=long), then a real agent on it. A checkpoint and a proof read O(log n) nodes;
`GET /v1/receipts/verify` walks it all while `/v1/status` keeps answering, and the agent's memory
stays bounded. Figures go to the soak summary; none is a pass/fail timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.agentproc import Agent

from waystation.db import Database
from waystation.receipts.chain import ReceiptDraft, RouteInfo, append

ROUTE = RouteInfo(name="web_fetch", provider="example.org", auth_lane="none", cost_lane="local")
RSS_GROWTH_MAX_MB = 150

pytestmark = pytest.mark.soak


def receipt(i: int) -> ReceiptDraft:
    return ReceiptDraft(kind="task", status="ok", route=ROUTE, task_id=f"t_{i}")


async def write_chain(path: Path, count: int) -> None:
    db = await Database.open(path)
    try:
        for first in range(0, count, 5000):
            size = min(5000, count - first)
            await db.write(
                lambda conn, first=first, size=size: [append(conn, receipt(first + i)) for i in range(size)]
            )
    finally:
        await db.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_long_log_verifies_while_the_agent_answers(
    agent_factory: Callable[..., Agent],
    soak_length: Callable[[int, int], int],
    soak_report: Callable[[str], None],
) -> None:
    count = soak_length(20_000, 1_000_000)
    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    asyncio.run(write_chain(agent.database, count))
    agent.start()
    rss_before = rss_mb(agent.pid)

    started = time.monotonic()
    checkpoint = agent.api("GET", "/v1/receipts/checkpoint").json()
    receipt_id = agent.api("GET", "/v1/receipts", params={"limit": 1}).json()[0]["id"]
    proof = agent.api("GET", f"/v1/receipts/{receipt_id}/proof").json()
    log_steps = len(proof["inclusion_proof"])
    assert checkpoint["size"] == count and log_steps == (count - 1).bit_length()

    verdict: dict[str, object] = {}

    def verify() -> None:
        with agent.client(timeout=900) as client:
            verdict.update(client.get("http://waystation/v1/receipts/verify").json())

    verifying = threading.Thread(target=verify)
    verifying.start()
    answered, peak = 0, rss_before
    with agent.client(timeout=30) as client:
        while verifying.is_alive():
            assert client.get("http://waystation/v1/status").status_code == 200
            answered += 1
            peak = max(peak, rss_mb(agent.pid))
            time.sleep(0.05)
    verifying.join()
    took = time.monotonic() - started
    assert verdict["ok"] is True and verdict["count"] == count, verdict
    assert answered > 0
    assert peak - rss_before < RSS_GROWTH_MAX_MB, f"RSS {rss_before:.0f} -> {peak:.0f} MB"
    soak_report(
        f"{count} receipts: proof of {log_steps} steps; verify {took:.1f} s with {answered} status answers "
        f"meanwhile; RSS {rss_before:.0f} -> {peak:.0f} MB"
    )
