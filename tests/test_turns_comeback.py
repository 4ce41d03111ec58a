"""Ask offline, get the answer later: real agents, the real embedded model (llama.cpp), a real
loopback page, and the command line as a user runs it.

- An offline turn that names a page parks its call; when the link comes back (a veth in a network
  namespace, cut and restored) it is delivered, the turn resumes, and `turn show` prints the
  page's title (what the call got, beside the model's answer). `turn PROMPT --wait` waits
  through all of it.
- kill -9 between the park and the resumption: after a restart `turn wait` still gets the answer.
- A parked call that dies (404): the turn ends `error` naming it, and `turn wait` exits 1.
- A `waystation turn` that stops waiting while the turn goes on prints its id and exits 5; the
  turn finishes in the agent and `turn wait` reads it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.agentproc import Agent, Receiver, agent_env, cli_process, ip, netns_only, wait_for

pytestmark = pytest.mark.slow


def cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return cli_process(home, *args, timeout=timeout)


def cli_json(home: Path, *args: str) -> Any:
    done = cli(home, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def parked_turn(agent: Agent, url: str) -> dict[str, Any]:
    turn = cli_json(agent.home, "turn", f"Fetch {url} and tell me its title.")
    assert turn["status"] == "parked", turn
    return turn


@pytest.fixture
def offline_agent(agent_factory: Callable[..., Agent]) -> Agent:
    return agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"}).start()


@netns_only
@pytest.mark.netns
@pytest.mark.timeout(300)
def test_offline_turn_resumes_when_the_link_returns_and_shows_the_title(
    agent_namespace: tuple[str, str, str],
    agent_factory: Callable[..., Agent],
) -> None:
    ns, veth, host = agent_namespace
    with Receiver(host) as receiver:
        agent = agent_factory(
            {
                "WAYSTATION_CONNECTIVITY__PROBE_URL": receiver.url("/generate_204"),
                "WAYSTATION_CONNECTIVITY__PROBE_TIMEOUT_S": "1.0",
                "WAYSTATION_CONNECTIVITY__OFFLINE_PROBE_MAX_S": "2.0",
            }
        ).start()
        ip("-n", ns, "link", "set", veth, "down")
        wait_for(lambda: agent.api("GET", "/v1/connectivity").json()["state"] != "online", timeout=20)
        url = receiver.url("/page/Harbour-Lights")
        waiting = subprocess.Popen(
            [sys.executable, "-m", "waystation", "turn", f"Fetch {url} and tell me its title.", "--wait"],
            env=agent_env(agent.home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        (turn,) = wait_for(
            lambda: agent.api("GET", "/v1/turns", params={"state": "parked"}).json(), timeout=60
        )
        assert receiver.hits("/page") == []  # nothing goes out while the link is down
        ip("-n", ns, "link", "set", veth, "up")
        out, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, err
        assert "Harbour Lights" in out
        shown = cli(agent.home, "turn", "show", turn["turn_id"])
        assert shown.returncode == 0 and "Harbour Lights" in shown.stdout, shown.stdout
        finished = cli_json(agent.home, "turn", "show", turn["turn_id"])
        assert finished["state"] == "ok" and finished["text"]  # the model's own words
        assert finished["tool_calls"][0]["result"] == "HTTP 200 · Harbour Lights"
        assert {c["task_state"] for c in finished["tool_calls"] if c["task_id"]} == {"done"}
        assert len({h.key for h in receiver.hits("/page")}) == 1  # one call, one key


def test_kill_9_between_park_and_resume_then_wait_gets_the_answer(
    offline_agent: Agent, receiver: Receiver
) -> None:
    agent = offline_agent
    turn = parked_turn(agent, receiver.url("/page/Quiet-Harbour"))
    agent.kill()
    agent.start({"WAYSTATION_CONNECTIVITY__MODE": "online"})
    waited = cli(agent.home, "turn", "wait", turn["turn_id"], "--timeout", "90", "--json")
    assert waited.returncode == 0, waited.stderr
    answer = json.loads(waited.stdout)
    assert answer["state"] == "ok" and answer["text"], answer
    assert answer["tool_calls"][0]["result"] == "HTTP 200 · Quiet Harbour"
    kinds = [agent.api("GET", f"/v1/receipts/{r}").json() for r in answer["receipt_ids"]]
    assert [(r["kind"], r["status"]) for r in kinds] == [("turn", "parked"), ("task", "ok"), ("turn", "ok")]


def test_a_dead_parked_call_ends_the_turn_in_error(offline_agent: Agent, receiver: Receiver) -> None:
    agent = offline_agent
    turn = parked_turn(agent, receiver.url("/status/404"))
    agent.set_mode("online")
    waited = cli(agent.home, "turn", "wait", turn["turn_id"], "--timeout", "60", "--json")
    assert waited.returncode == 1, waited.stderr
    answer = json.loads(waited.stdout)
    task_id = turn["deferred_task_ids"][0]
    assert answer["state"] == "error" and answer["text"] is None
    assert task_id in answer["reason"] and "404" in answer["reason"]
    human = cli(agent.home, "turn", "wait", turn["turn_id"])
    assert human.returncode == 1 and "error" in human.stdout


def test_a_turn_that_outlives_its_wait_exits_5_with_its_id(offline_agent: Agent) -> None:
    agent = offline_agent
    long = "Write a very long story about a lighthouse keeper and her cat, in many chapters."
    done = cli(agent.home, "turn", long, "--tools", "none", "--max-tokens", "200", "--timeout", "0.3")
    assert done.returncode == 5, done.stderr
    turn_id = done.stdout.strip()
    assert turn_id.startswith("turn_") and "still running" in done.stderr
    again = cli(agent.home, "turn", "wait", turn_id, "--timeout", "0")
    assert again.returncode in (0, 5)  # it may just have finished
    finished = cli(agent.home, "turn", "wait", turn_id, "--timeout", "120", "--json")
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["state"] == "ok"
    listed = agent.api("GET", "/v1/turns").json()
    assert [t["turn_id"] for t in listed] == [turn_id]
    assert agent.api("GET", "/v1/status").json()["turns"]["ok"] == 1


def test_turn_show_of_an_unknown_turn_is_one_clear_error(offline_agent: Agent) -> None:
    shown = cli(offline_agent.home, "turn", "show", "turn_nope")
    assert shown.returncode == 1 and shown.stderr.strip() == "error: no turn with id 'turn_nope'"
    assert offline_agent.api("GET", "/v1/turns/turn_nope").status_code == 404
    assert offline_agent.api("GET", "/v1/turns", params={"state": "sleeping"}).status_code == 400
