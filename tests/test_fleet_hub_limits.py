"""The fleet on hubs that are not the roomy default, against a real nats-server: a small one (64 MB
of file storage) still gets receipts, status and work; an account with limits gets streams sized
to them, and `fleet status` and `doctor` say what the hub refused; a poison message does not stop
the work behind it; a password is never shown, even one holding "/"."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from support.agentproc import Agent, wait_for
from support.fleetproc import NatsServer, arrived_in_order, fleet_env, host_statuses, make_receipts
from test_fleet import GET, _publish_raw, consumer_pending, fleet_cli, keyed

from waystation.adapters.fleet.hub import Hub
from waystation.adapters.fleet.layout import WORK_MAX_DELIVER, WORK_STREAM
from waystation.config import FleetSettings, Paths

pytestmark = pytest.mark.slow


def hub_with(tmp_path: Path, config: str) -> NatsServer:
    conf = tmp_path / "hub.conf"
    conf.write_text(config)
    return NatsServer(tmp_path / "js", config=str(conf)).start()


async def _stream_max_bytes(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).config.max_bytes or 0)
    finally:
        await nc.close()


def doctor_fleet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str) -> Any:
    from waystation.cli.commands.doctor import check_fleet

    monkeypatch.setenv("WAYSTATION_HOME", str(tmp_path / "doctor-home"))
    monkeypatch.setenv("WAYSTATION_FLEET__URL", url)
    monkeypatch.setenv("WAYSTATION_FLEET__HOST", "edge-d")
    return check_fleet(Paths.resolve())


def test_a_small_hub_still_gets_receipts_status_and_work(
    tmp_path: Path, agent_factory: Callable[..., Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = hub_with(tmp_path, "jetstream { max_file_store: 64MB }\n")
    try:
        agent = agent_factory(fleet_env(hub, "edge-s")).start()
        make_receipts(agent, 3)
        arrived_in_order(hub, agent, "edge-s", timeout=15)
        wait_for(lambda: host_statuses(hub.url).get("edge-s"), 10, interval=0.3, what="status in KV")
        fleet_cli(hub, "submit", "edge-s", "http_request", "--args", json.dumps(GET), "--key", "small-1")
        wait_for(lambda: keyed(agent, "small-1"), 15, interval=0.2, what="the work as a task")
        # Bounded by age alone (JetStream could not reserve 10 GiB), and doctor says so.
        assert asyncio.run(_stream_max_bytes(hub.url, "WAYSTATION_RECEIPTS")) == -1
        check = doctor_fleet(monkeypatch, tmp_path, hub.url)
        assert check.level == "ok" and "WAYSTATION_RECEIPTS is bounded by age only" in check.message, check
    finally:
        hub.stop()


ACCOUNT = """
accounts {
  FLEET: {
    jetstream: { max_file: 64MB, max_streams: 2 }
    users: [ { user: fleet, password: "s3cret" } ]
  }
}
"""


def test_an_account_with_limits_is_sized_to_them_and_status_says_what_it_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = hub_with(tmp_path, ACCOUNT)
    url = hub.url.replace("nats://", "nats://fleet:s3cret@")
    try:
        done = fleet_cli(hub, "status", url=url, code=1)
        # Two streams sized to the account (half and an eighth of 64 MB); the bucket, a third
        # stream, refused: said, rather than "no hosts in the hub yet".
        assert "WAYSTATION_RECEIPTS holds 32 MiB" in done.stderr, done.stderr
        assert "WAYSTATION_WORK holds 8 MiB" in done.stderr, done.stderr
        assert "waystation_hosts" in done.stderr and "no hosts" not in done.stdout, done.stderr
        assert asyncio.run(_stream_max_bytes(url, "WAYSTATION_RECEIPTS")) == 32 * 1024**2
        check = doctor_fleet(monkeypatch, tmp_path, url)
        assert check.level == "fail" and "waystation_hosts" in check.message, check
        assert "s3cret" not in check.message
    finally:
        hub.stop()


def test_a_password_holding_a_slash_is_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = hub_with(tmp_path, ACCOUNT)
    url = hub.url.replace("nats://", "nats://fleet:se/cret@")
    try:
        done = fleet_cli(hub, "status", url=url, code=1)
        assert "fleet:xxxxx@127.0.0.1" in done.stderr and "cret" not in done.stderr, done.stderr
        check = doctor_fleet(monkeypatch, tmp_path, url)
        assert check.level == "fail" and "cret" not in check.message, check
    finally:
        hub.stop()


async def _work_stream(url: str) -> None:
    hub = Hub(FleetSettings(url=url), quiet=True)
    await hub.connect()
    try:
        await hub.work_stream()
    finally:
        await hub.close()


def test_a_poison_message_is_terminated_and_the_work_behind_it_is_handled(
    tmp_path: Path, agent_factory: Callable[..., Agent]
) -> None:
    hub = NatsServer(tmp_path / "js").start()
    try:
        # Offline, the host fetches nothing: the poison and the 5 tasks behind it come in one batch.
        agent = agent_factory(fleet_env(hub, "edge-p", mode="offline")).start()
        asyncio.run(_work_stream(hub.url))
        subject = "waystation.edge-p.work"
        asyncio.run(_publish_raw(hub.url, subject, b"[" * 100_000 + b"]" * 100_000, "poison"))
        for n in range(5):
            body = json.dumps({"tool": "http_request", "args": GET}).encode()
            asyncio.run(_publish_raw(hub.url, subject, body, f"good-{n}"))
        agent.set_mode("online")
        began = time.monotonic()

        def handled() -> int:
            return sum(1 for t in agent.tasks() if t["idempotency_key"].startswith("good-"))

        wait_for(lambda: handled() == 5, 20, interval=0.2, what="the 5 good tasks behind the poison")
        print(f"5 of 5 good tasks behind a poison message in {time.monotonic() - began:.2f} s")
        wait_for(lambda: consumer_pending(hub, "edge-p") == (0, 0), 10, interval=0.2, what="none pending")
        log = agent.log_path.read_text()
        assert log.count("message terminated") == 1 and "nested over 64 levels" in log, log[-3000:]
        # The checkpoint's origin is the host's name in the fleet, not the machine's.
        with agent.client() as client:
            assert client.get("/v1/receipts/checkpoint").json()["origin"] == "waystation/edge-p"
    finally:
        hub.stop()


async def _consumer_max_deliver(url: str) -> int:
    hub = Hub(FleetSettings(url=url, host="edge-c"), quiet=True)
    await hub.connect()
    try:
        await hub.work_stream()
        # A consumer made before max_deliver was set (redelivering a poison message for ever) ...
        await hub.js.add_consumer(WORK_STREAM, durable_name="waystation_edge-c", ack_wait=60.0)
        sub = await hub.work("edge-c")
        await sub.unsubscribe()
        return int((await hub.js.consumer_info(WORK_STREAM, "waystation_edge-c")).config.max_deliver or -1)
    finally:
        await hub.close()


def test_the_work_consumer_has_max_deliver_also_when_it_was_made_before(tmp_path: Path) -> None:
    hub = NatsServer(tmp_path / "js").start()
    try:
        assert asyncio.run(_consumer_max_deliver(hub.url)) == WORK_MAX_DELIVER
    finally:
        hub.stop()
