"""The fleet against a real nats-server with JetStream and real agents: receipts arrive once and
in chain order across hub outages and a kill -9, hosts stay apart, status reaches the bucket, work
arrives once (also when it was sent while the host was offline), a malformed message is
terminated, bad credentials are refused at start-up."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agentproc import Agent, free_port, make_home, remove_home, wait_for
from tests.fleetproc import NatsServer, host_statuses, receipt_ids, stream_messages

pytestmark = pytest.mark.slow


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "js").start()
    yield server
    server.stop()


def fleet_env(hub: NatsServer, host: str, mode: str = "online") -> dict[str, str]:
    return {
        "WAYSTATION_FLEET__URL": hub.url,
        "WAYSTATION_FLEET__HOST": host,
        "WAYSTATION_CONNECTIVITY__MODE": mode,
    }


def chain(agent: Agent) -> list[str]:
    """The agent's receipt ids in chain order, straight from its database."""
    with sqlite3.connect(agent.database) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM receipts ORDER BY seq")]


DEAD_URL = f"http://127.0.0.1:{free_port()}/nothing-listens"


def make_receipts(agent: Agent, count: int) -> None:
    """`count` tasks added and cancelled: a receipt each (or a delivery's, if one went first)."""
    with agent.client() as client:
        for _ in range(count):
            made = client.post(
                "/v1/tasks", json={"tool": "http_request", "args": {"method": "GET", "url": DEAD_URL}}
            )
            assert made.status_code == 201, made.text
            client.post(f"/v1/tasks/{made.json()['id']}/cancel")


def arrived_in_order(hub: NatsServer, agent: Agent, host: str, timeout: float = 30.0) -> list[str]:
    """Wait until the hub holds the agent's whole chain; it must be exactly it, once each, in order."""
    expected = chain(agent)

    def caught_up() -> bool:
        return len(receipt_ids(hub.url, host)) >= len(expected)

    wait_for(caught_up, timeout, interval=0.3, what=f"{len(expected)} receipts of {host} in the hub")
    got = receipt_ids(hub.url, host)
    assert got == expected, (len(got), len(expected), len(set(got)))
    return got


@pytest.fixture
def agents() -> Iterator[Callable[..., Agent]]:
    made: list[Agent] = []

    def make(env: dict[str, str]) -> Agent:
        agent = Agent(make_home(), env)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()
        remove_home(agent.home)


def test_receipts_arrive_once_in_order_and_status_is_kept(
    hub: NatsServer, agents: Callable[..., Agent]
) -> None:
    agent = agents(fleet_env(hub, "edge-a")).start()
    make_receipts(agent, 20)
    arrived_in_order(hub, agent, "edge-a")
    headers, _ = stream_messages(hub.url, "WAYSTATION_RECEIPTS", "waystation.edge-a.receipts")[0]
    assert headers["Nats-Msg-Id"] == chain(agent)[0]
    status = wait_for(lambda: host_statuses(hub.url).get("edge-a"), 10, interval=0.3, what="status in KV")
    assert status["connectivity"] == "online" and "queue" in status
    agent.stop()
    # The checkpoint signed at stop goes out at the next start, once its receipts are there.
    agent.start()
    wait_for(
        lambda: stream_messages(hub.url, "WAYSTATION_RECEIPTS", "waystation.edge-a.checkpoints"),
        15,
        interval=0.3,
        what="a checkpoint in the hub",
    )
    arrived_in_order(hub, agent, "edge-a")
