"""A real agent and a remote MCP server that answers with tasks (support/mcp_task_server.py):
`kill -9` while the server's task is being polled, then a restart: polling resumes, exactly one
`tools/call` reached the server, the task gets the result; `queue cancel` sends `tasks/cancel`
(and says when it could not); and the bounded soak of kill -9 rounds with calls parked or in
flight (bench/mcp_client_tasks_kill.py runs the long one)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.agentproc import Agent
from support.mcp_task_server import TaskServer, task_server


@pytest.fixture
def server() -> Iterator[TaskServer]:
    with task_server(poll_interval_ms=200) as found:
        yield found


def tracker_agent(agent_factory: Callable[..., Agent], server: TaskServer) -> Agent:
    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "online"})
    (agent.home / "config.toml").write_text(f'[mcp.servers.tracker]\nurl = "{server.url}"\n')
    return agent.start()


def post_call(agent: Agent, key: str, title: str = "t") -> str:
    body = {
        "tool": "mcp",
        "args": {"server": "tracker", "tool": "open_ticket", "arguments": {"title": title}},
        "idempotency_key": key,
    }
    posted = agent.api("POST", "/v1/tasks", json=body)
    assert posted.status_code in (200, 201), posted.text
    task_id: str = posted.json()["id"]
    return task_id


def wait_task(
    agent: Agent, task_id: str, ready: Callable[[dict[str, Any]], bool], within: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        task: dict[str, Any] = agent.api("GET", f"/v1/tasks/{task_id}").json()
        if ready(task):
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.05)


def taken(task: dict[str, Any]) -> bool:
    """The server's task id is recorded: the task waits on it."""
    return task["state"] == "running" and str(task["last_error"] or "").startswith("MCP task ")


def test_kill_9_while_polled_resumes_polling_and_one_tools_call_reached_the_server(
    agent_factory: Callable[..., Agent], server: TaskServer
) -> None:
    agent = tracker_agent(agent_factory, server)
    task_id = post_call(agent, "kill-1", "from the API")
    wait_task(agent, task_id, taken)
    polls = server.count("tasks/get")
    agent.kill()
    agent.start()
    deadline = time.monotonic() + 20
    while server.count("tasks/get") <= polls + 1:  # polling resumed after the restart
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert agent.api("GET", f"/v1/tasks/{task_id}").json()["state"] == "running"
    server.finish()
    done = wait_task(agent, task_id, lambda t: t["state"] in ("done", "dead"))
    assert done["state"] == "done", done
    assert done["result"]["structuredContent"] == {"number": 42, "title": "from the API"}
    assert server.remote.calls() == ["kill-1"]  # exactly one tools/call
    assert server.runs == {"kill-1": 1}


def test_cancel_sends_tasks_cancel_and_says_when_the_server_was_not_told(
    agent_factory: Callable[..., Agent], server: TaskServer
) -> None:
    agent = tracker_agent(agent_factory, server)
    task_id = post_call(agent, "cancel-1")
    waiting = wait_task(agent, task_id, taken)
    remote_task = str(waiting["last_error"]).split()[2].rstrip(":")
    cancelled = agent.api("POST", f"/v1/tasks/{task_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    answer = cancelled.json()
    assert answer["state"] == "cancelled"
    assert "asked to cancel its task" in answer["last_error"]
    assert server.cancelled == [remote_task]
    polls = server.count("tasks/get")
    time.sleep(1.0)
    assert server.count("tasks/get") == polls  # a cancelled task is not polled any more

    other = post_call(agent, "cancel-2")
    wait_task(agent, other, taken)
    agent.set_mode("offline")
    offline = agent.api("POST", f"/v1/tasks/{other}/cancel").json()
    assert offline["state"] == "cancelled"
    assert "not told (connectivity is offline)" in offline["last_error"]
    assert len(server.cancelled) == 1


@pytest.mark.soak
def test_soak_kill_9_rounds_keep_tools_call_once_per_key(
    agent_factory: Callable[..., Agent],
    server: TaskServer,
    soak_length: Callable[[int, int], int],
    soak_report: Callable[[str], None],
) -> None:
    rounds = soak_length(4, 30)
    rng = random.Random(22)
    agent = tracker_agent(agent_factory, server)
    keys: list[str] = []
    for n in range(rounds):
        parked = n % 2 == 0
        if parked:
            agent.set_mode("offline")
        for k in range(3):
            keys.append(f"soak-{n}-{k}")
            post_call(agent, keys[-1])
        if parked:
            agent.set_mode("online")
        time.sleep(rng.uniform(0.0, 0.6))  # in flight, being polled, or still parked
        agent.kill()
        agent.start()
    server.finish()
    deadline = time.monotonic() + 120
    while agent.counts()["done"] < len(keys):
        assert time.monotonic() < deadline, agent.counts()
        time.sleep(0.1)
    per_key = [server.remote.calls().count(key) for key in keys]
    runs = [server.runs[key] for key in keys]
    soak_report(
        f"{rounds} kill -9 rounds, {len(keys)} calls: tools/call per key max {max(per_key)},"
        f" repeated {sum(c > 1 for c in per_key)}; tool runs per key max {max(runs)}"
    )
    assert max(runs) == 1 and min(per_key) == 1
