"""README's hub recipe, run as written against a real nats-server (issue 20, items 1 and 3): each
host has its own user; a host works as before (receipts, status, signed work), and its user can
write neither another host's status or receipts, nor any work, nor read others' replies."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import nats
import pytest
from support.agentproc import Agent, agent_env, make_home, remove_home, wait_for
from support.fleetproc import (
    DEAD_URL,
    OPERATOR_KEY_FILE,
    NatsServer,
    arrived_in_order,
    fleet_env,
    host_statuses,
    make_receipts,
    stream_messages,
)

from waystation.adapters.fleet.hub import Hub
from waystation.config import FleetSettings

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
PASSWORDS = {"OPS_PASSWORD": "ops-pw-1", "EDGE_A_PASSWORD": "edge-a-pw-2", "EDGE_B_PASSWORD": "edge-b-pw-3"}


def recipe() -> str:
    """The README's hub.conf block, as it stands."""
    found = re.search(r"```text\n(# hub\.conf.*?)```", README.read_text(), re.S)
    assert found, "README's hub recipe (```text # hub.conf ...```) is gone"
    return found.group(1)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[NatsServer]:
    config = tmp_path / "hub.conf"
    config.write_text(recipe())
    server = NatsServer(tmp_path / "js", config=str(config), env=PASSWORDS).start()
    yield server
    server.stop()


def as_user(hub: NatsServer, user: str, password: str) -> str:
    return hub.url.replace("nats://", f"nats://{user}:{password}@")


async def _make_streams(url: str) -> None:
    operator = Hub(FleetSettings(url=url), quiet=True)
    await operator.connect()
    try:
        await operator.ensure()
    finally:
        await operator.close()


async def _denied(url: str, inbox: str, subjects: list[str], subscribe: str) -> str:
    """What the server said to a client of this user publishing to each subject and subscribing."""
    said: list[str] = []

    async def error(exc: Exception) -> None:
        said.append(str(exc))

    nc = await nats.connect(url, inbox_prefix=inbox, error_cb=error, allow_reconnect=False)
    try:
        for subject in subjects:
            await nc.publish(subject, b"{}")
        await nc.subscribe(subscribe)
        await nc.flush()
        await asyncio.sleep(0.5)
    finally:
        await nc.close()
    return "\n".join(said).lower()  # nats-py lower-cases the server's -ERR text


def test_each_host_has_only_its_own_authority(hub: NatsServer, agent_factory: Callable[..., Agent]) -> None:
    ops = as_user(hub, "ops", PASSWORDS["OPS_PASSWORD"])
    asyncio.run(_make_streams(ops))
    edge_a = as_user(hub, "edge-a", PASSWORDS["EDGE_A_PASSWORD"])
    agent = agent_factory({**fleet_env(hub, "edge-a"), "WAYSTATION_FLEET__URL": edge_a}).start()
    make_receipts(agent, 3)
    arrived_in_order(cast(NatsServer, SimpleNamespace(url=ops)), agent, "edge-a")  # read as the operator
    wait_for(lambda: host_statuses(ops).get("edge-a"), 10, interval=0.3, what="edge-a's status")
    submit(ops, "edge-a", "signed")
    wait_for(lambda: keyed(agent, "signed"), 15, interval=0.2, what="the operator's work on edge-a")

    denied = [
        "$KV.waystation_hosts.edge-b",  # another host's status
        "waystation.edge-b.receipts",  # another host's chain
        "waystation.edge-a.work",  # work, even for itself
        "waystation.edge-b.work",
        "$JS.API.CONSUMER.CREATE.WAYSTATION_WORK.waystation_edge-a.waystation.edge-b.work",
        "$JS.API.STREAM.PURGE.WAYSTATION_RECEIPTS",
    ]
    said = asyncio.run(_denied(edge_a, "_INBOX_edge-a", denied, subscribe="_INBOX.>"))
    for subject in denied:
        assert f'permissions violation for publish to "{subject.lower()}"' in said, (subject, said)
    assert 'permissions violation for subscription to "_inbox.>"' in said, said
    assert "edge-b" not in host_statuses(ops)
    assert stream_messages(ops, "WAYSTATION_RECEIPTS", "waystation.edge-b.receipts") == []
    assert len(stream_messages(ops, "WAYSTATION_WORK", "waystation.edge-a.work")) == 1  # the operator's


FLEET = [sys.executable, "-m", "waystation", "fleet"]


def keyed(agent: Agent, key: str) -> list[dict[str, Any]]:
    return [t for t in agent.tasks() if t.get("idempotency_key") == key]


def submit(url: str, host: str, key: str) -> None:
    home = make_home()
    args = json.dumps({"method": "GET", "url": DEAD_URL})
    try:
        done = subprocess.run(
            [
                *FLEET,
                "submit",
                host,
                "http_request",
                "--args",
                args,
                "--key",
                key,
                "--key-file",
                str(OPERATOR_KEY_FILE),
            ],
            env=agent_env(home, {"WAYSTATION_FLEET__URL": url}),
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        remove_home(home)
    assert done.returncode == 0, done.stderr
