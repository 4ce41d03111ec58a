"""Work from the hub against a real nats-server and a real agent (issue 20, item 1): an outsider's
unsigned work naming the agent's secrets is terminated, as is work signed by a key the host does
not list, work naming a secret `[fleet] work_secrets` does not list, and work reaching a host
`[fleet] work_hosts` does not allow; the operator's signed work (`fleet submit --key-file`) is
taken."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from support.agentproc import Agent, agent_env, free_port, make_home, remove_home, wait_for
from support.fleetproc import (
    DEAD_URL,
    OPERATOR,
    OPERATOR_KEY_FILE,
    NatsServer,
    arrived_in_order,
    fleet_env,
    make_receipts,
    stream_messages,
)

from waystation.adapters.fleet.work import SIGNATURE_HEADER, sign_work
from waystation.receipts.checkpoints import SigningKey

pytestmark = pytest.mark.slow

SUBJECT = "waystation.edge-a.work"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "js").start()
    yield server
    server.stop()


async def _publish(url: str, body: dict[str, Any], msg_id: str, signer: SigningKey | None) -> None:
    data = json.dumps(body).encode()
    headers = {"Nats-Msg-Id": msg_id, **(sign_work(data, signer) if signer else {})}
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(SUBJECT, data, headers=headers)
    finally:
        await nc.close()


async def _replay(url: str, data: bytes, headers: dict[str, str]) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(SUBJECT, data, headers=headers)
    finally:
        await nc.close()


def request(url: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"tool": "http_request", "args": {"method": "POST", "url": url, "headers": headers or {}}}


def test_only_signed_work_within_the_hosts_limits_is_taken(
    hub: NatsServer, agent_factory: Callable[..., Agent]
) -> None:
    agent = agent_factory({**fleet_env(hub, "edge-a"), "PAYMENTS_TOKEN": "pay-4242-secret"}).start()
    make_receipts(agent, 1)
    arrived_in_order(hub, agent, "edge-a")  # streams made
    steal = request(DEAD_URL, {"x-pay": {"secret": "PAYMENTS_TOKEN"}})
    forger = SigningKey.generate(OPERATOR.name)  # the operator's name, another key
    inner = f"http://127.0.0.2:{free_port()}/internal"  # loopback, but not the listed 127.0.0.1
    for msg_id, body, signer in [
        ("outsider", steal, None),
        ("forged", steal, forger),
        ("unlisted-secret", steal, OPERATOR),
        ("inner-host", request(inner), OPERATOR),
    ]:
        asyncio.run(_publish(hub.url, body, msg_id, signer))
    submitted = submit(hub, "edge-a", "http_request", json.dumps({"method": "GET", "url": DEAD_URL}), None)
    assert submitted.returncode == 0, submitted.stderr
    operator = json.loads(submitted.stdout)["msg_id"]  # no --key: the message id is the key
    wait_for(lambda: keyed(agent, operator), 15, interval=0.2, what="the operator's task")
    wait_for(lambda: agent.log_path.read_text().count("message terminated") >= 4, 10, what="4 terminated")
    log = agent.log_path.read_text()
    assert [t["idempotency_key"] for t in agent.tasks() if t["idempotency_key"] in (*KEYS, operator)] == [
        operator
    ]
    for reason in (
        "unsigned",
        "signed by no key",
        "names secret PAYMENTS_TOKEN, which [fleet] work_secrets",
        "127.0.0.2",
    ):
        assert reason in log, (reason, log[-3000:])
    assert "pay-4242-secret" not in log
    # The operator's message, published again by someone else under another message id: the key
    # is in the signed body, so it is the same task, not a second one.
    _, data = stream_messages(hub.url, "WAYSTATION_WORK", SUBJECT)[-1]
    # nats-py's get_msg mangles a non-ASCII header; Ed25519 is deterministic, so signing the
    # captured body again gives the very header the operator's message carried.
    signature = sign_work(data, OPERATOR)[SIGNATURE_HEADER]
    asyncio.run(_replay(hub.url, data, {SIGNATURE_HEADER: signature, "Nats-Msg-Id": "replayed"}))
    wait_for(
        lambda: '"created": false' in agent.log_path.read_text(), 10, what="the replay taken as the same task"
    )
    assert [t["idempotency_key"] for t in agent.tasks() if t["idempotency_key"] in (*KEYS, "replayed")] == []
    assert len(keyed(agent, operator)) == 1
    unsigned = submit(hub, "edge-a", "http_request", "{}", None, key_file=None)
    assert unsigned.returncode != 0 and "--key-file" in unsigned.stderr


KEYS = ("outsider", "forged", "unlisted-secret", "inner-host")


def keyed(agent: Agent, key: str) -> list[dict[str, Any]]:
    return [t for t in agent.tasks() if t.get("idempotency_key") == key]


def submit(
    hub: NatsServer,
    host: str,
    tool: str,
    args: str,
    key: str | None,
    key_file: Path | None = OPERATOR_KEY_FILE,
) -> subprocess.CompletedProcess[str]:
    home = make_home()
    signs = ["--key-file", str(key_file)] if key_file else []
    try:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "waystation",
                "fleet",
                "submit",
                host,
                tool,
                "--args",
                args,
                "--json",
                *(["--key", key] if key else []),
                *signs,
            ],
            env=agent_env(home, {"WAYSTATION_FLEET__URL": hub.url}),
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        remove_home(home)
