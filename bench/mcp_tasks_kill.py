"""`tasks/get` after `kill -9`: does an MCP task (a parked `ask`) still answer after each restart?

    python bench/mcp_tasks_kill.py [--rounds 100]

One agent, forced offline. An MCP client that declared the tasks extension calls `ask` with a
prompt naming a URL (the real embedded model, once): the turn parks and the answer is a task whose
id is the turn id. Then, each round: `kill -9` the agent, start it again, and send `tasks/get`
on a fresh connection (raw JSON-RPC over the socket, as any client after a restart would). A
round counts when the answer is the task, `working`, with the same id. Printed: rounds answered,
and the time from the restarted agent being ready to the `tasks/get` answer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _harness import print_table, progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.agentproc import Agent, make_home, remove_home, wait_for

TASKS = {"io.modelcontextprotocol/tasks": {}}


def rpc(agent: Agent, method: str, params: dict[str, Any], session: str | None = None) -> Any:
    headers = {"Mcp-Session-Id": session} if session else {}
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    with agent.client(timeout=300) as client:
        return client.post("/mcp", json=body, headers=headers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100)
    rounds = parser.parse_args().rounds
    agent = Agent(make_home(), {"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    try:
        agent.start()
        hello = rpc(
            agent, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {"extensions": TASKS}}
        )
        session = hello.headers["Mcp-Session-Id"]
        prompt = "Fetch http://127.0.0.1:9/x and tell me its title."
        progress("ask (the embedded model parks the call)")
        task = rpc(agent, "tools/call", {"name": "ask", "arguments": {"prompt": prompt}}, session).json()
        turn_id = task["result"]["task"]["taskId"]
        wait_for(lambda: agent.api("GET", f"/v1/turns/{turn_id}").json()["state"] == "parked", timeout=300)
        answered, latencies = 0, []
        for n in range(rounds):
            agent.kill()
            agent.start()
            began = time.perf_counter()
            got = rpc(agent, "tasks/get", {"taskId": turn_id}, session).json().get("result", {})
            latencies.append((time.perf_counter() - began) * 1000)
            answered += got.get("taskId") == turn_id and got.get("status") == "working"
            progress(f"round {n + 1}: {answered} answered")
        print_table(
            ["rounds", "tasks/get answered", "answer after restart, median ms", "p95 ms"],
            [[rounds, answered, statistics.median(latencies), sorted(latencies)[int(0.95 * (rounds - 1))]]],
        )
    finally:
        agent.close()
        remove_home(agent.home)


if __name__ == "__main__":
    main()
