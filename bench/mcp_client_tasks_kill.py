"""Exactly-once `tools/call` per key while the agent is `kill -9`ed with remote MCP calls parked or
in flight, against a server that answers with tasks (tests/support/mcp_task_server.py).

    python bench/mcp_client_tasks_kill.py [--rounds 100] [--calls 3]

One agent, one remote MCP server (the official SDK's, on loopback) whose tools/call answers with a
task and whose tasks finish only at the end. Each round posts `--calls` `mcp` tasks (even rounds
while the agent is offline: parked; odd rounds online: sent at once), waits a random 0-600 ms (the
calls are then parked, in flight, or their server tasks being polled), and `kill -9`s and restarts
the agent. At the end the server's tasks finish and every task must end `done`. Printed: rounds,
calls, `tools/call` requests per key (max, and how many keys got more than one), the tool's runs
per key (the server dedupes repeated keys, as the contract asks of a destination), `tasks/get`
polls, and whether any call was sent again after its server task id was recorded (must be 0).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path

from _harness import print_table, progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.agentproc import Agent, make_home, remove_home
from support.mcp_task_server import task_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--calls", type=int, default=3)
    options = parser.parse_args()
    logging.disable(logging.INFO)  # the SDK server's per-session lines, the clients' per-request ones
    rng = random.Random(22)
    began = time.monotonic()
    with task_server(poll_interval_ms=200) as server:
        agent = Agent(make_home(), {"WAYSTATION_CONNECTIVITY__MODE": "online"})
        (agent.home / "config.toml").write_text(f'[mcp.servers.tracker]\nurl = "{server.url}"\n')
        keys: list[str] = []
        recorded: dict[str, int] = {}  # key -> tools/call requests seen when its task id was known
        try:
            agent.start()
            for n in range(options.rounds):
                parked = n % 2 == 0
                if parked:
                    agent.set_mode("offline")
                for k in range(options.calls):
                    keys.append(f"bench-{n}-{k}")
                    body = {
                        "tool": "mcp",
                        "args": {
                            "server": "tracker",
                            "tool": "open_ticket",
                            "arguments": {"title": keys[-1]},
                        },
                        "idempotency_key": keys[-1],
                    }
                    assert agent.api("POST", "/v1/tasks", json=body).status_code in (200, 201)
                if parked:
                    agent.set_mode("online")
                time.sleep(rng.uniform(0.0, 0.6))
                for task in agent.tasks(state="running"):
                    key = task["idempotency_key"]
                    if str(task["last_error"] or "").startswith("MCP task ") and key not in recorded:
                        recorded[key] = server.remote.calls().count(key)
                agent.kill()
                agent.start()
                progress(f"round {n + 1}/{options.rounds}: {len(server.remote.calls())} tools/call so far")
            server.finish()
            deadline = time.monotonic() + 300
            while agent.counts()["done"] < len(keys):
                assert time.monotonic() < deadline, agent.counts()
                time.sleep(0.2)
            calls = server.remote.calls()
            per_key = [calls.count(key) for key in keys]
            runs = [server.runs[key] for key in keys]
            resent = sum(calls.count(key) > seen for key, seen in recorded.items())
            print_table(
                [
                    "rounds", "calls", "tools/call per key, max", "keys sent twice+",
                    "tool runs per key, max", "tasks/get", "resent after task id known", "seconds",
                ],
                [[
                    options.rounds, len(keys), max(per_key), sum(c > 1 for c in per_key), max(runs),
                    server.count("tasks/get"), resent, round(time.monotonic() - began),
                ]],
            )  # fmt: skip
        finally:
            agent.close()
            remove_home(agent.home)


if __name__ == "__main__":
    main()
