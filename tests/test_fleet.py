"""The fleet against a real nats-server with JetStream and real agents: receipts arrive once and
in chain order across hub outages and a kill -9, hosts stay apart, status reaches the bucket, work
arrives once (also when it was sent while the host was offline), a malformed message is
terminated, bad credentials are refused at start-up."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from support.agentproc import Agent, agent_env, make_home, port_nobody_uses, remove_home, wait_for
from support.fleetproc import (
    DEAD_URL,
    OPERATOR,
    OPERATOR_KEY_FILE,
    KillAfter,
    NatsServer,
    arrived_in_order,
    chain,
    fleet_env,
    host_statuses,
    make_receipts,
    receipt_ids,
    stream_messages,
)

from waystation.adapters.fleet.work import sign_work

pytestmark = pytest.mark.slow


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "js").start()
    yield server
    server.stop()


def test_receipts_arrive_once_in_order_and_status_is_kept(
    hub: NatsServer, agent_factory: Callable[..., Agent]
) -> None:
    agent = agent_factory(fleet_env(hub, "edge-a")).start()
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


def test_hub_outage_while_the_agent_works_loses_nothing_and_sends_nothing_twice(
    hub: NatsServer, agent_factory: Callable[..., Agent]
) -> None:
    agent = agent_factory(fleet_env(hub, "edge-a")).start()
    make_receipts(agent, 15)
    arrived_in_order(hub, agent, "edge-a")
    hub.stop()
    make_receipts(agent, 30)  # the hub is down: these wait in the outbox
    hub.start()
    make_receipts(agent, 10)
    arrived_in_order(hub, agent, "edge-a", timeout=40)


def test_kill_9_mid_publish_then_restart_drains_the_backlog_in_order(
    hub: NatsServer, agent_factory: Callable[..., Agent]
) -> None:
    agent = agent_factory(fleet_env(hub, "edge-a", mode="offline")).start()
    make_receipts(agent, 300)  # offline: the fleet waits, the backlog grows
    total = len(chain(agent))
    killer = KillAfter(hub.url, "waystation.edge-a.receipts", agent.pid, 120)
    try:
        agent.set_mode("online")
        assert killer.fired.wait(20), "the backlog did not start going out"
    finally:
        killer.close()
    agent.wait(10)
    sent = len(receipt_ids(hub.url, "edge-a"))
    assert 120 <= sent < total, (sent, total)
    agent.start(env={"WAYSTATION_CONNECTIVITY__MODE": "online"})
    arrived_in_order(hub, agent, "edge-a", timeout=60)


def test_two_hosts_on_one_hub_stay_apart(hub: NatsServer, agent_factory: Callable[..., Agent]) -> None:
    a = agent_factory(fleet_env(hub, "edge-a")).start()
    b = agent_factory(fleet_env(hub, "edge-b")).start()
    make_receipts(a, 5)
    make_receipts(b, 8)
    got_a = arrived_in_order(hub, a, "edge-a")
    got_b = arrived_in_order(hub, b, "edge-b")
    assert not set(got_a) & set(got_b)

    def both() -> dict[str, Any] | None:
        found = host_statuses(hub.url)
        return found if {"edge-a", "edge-b"} <= set(found) else None

    statuses = wait_for(both, 10, interval=0.3, what="both hosts in the bucket")
    assert statuses["edge-a"]["host"] == "edge-a" and statuses["edge-b"]["host"] == "edge-b"
    # A task for one host reaches that host alone.
    fleet_cli(hub, "submit", "edge-b", "http_request", "--args", json.dumps(GET), "--key", "for-b-only")
    wait_for(lambda: keyed(b, "for-b-only"), 15, interval=0.2, what="the task on edge-b")
    time.sleep(1.0)
    assert keyed(a, "for-b-only") == []


GET = {"method": "GET", "url": DEAD_URL}


def keyed(agent: Agent, key: str) -> list[dict[str, Any]]:
    return [t for t in agent.tasks() if t.get("idempotency_key") == key]


def fleet_cli(
    hub: NatsServer, *args: str, url: str | None = None, code: int = 0
) -> subprocess.CompletedProcess[str]:
    home = make_home()
    try:
        env = agent_env(home, {"WAYSTATION_FLEET__URL": url or hub.url})
        signs = ["--key-file", str(OPERATOR_KEY_FILE)] if args[:1] == ("submit",) else []
        done = subprocess.run(
            [sys.executable, "-m", "waystation", "fleet", *args, *signs],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        remove_home(home)
    assert done.returncode == code, done.stderr
    return done


def test_work_sent_while_the_host_is_offline_arrives_once_when_it_returns(
    hub: NatsServer, agent_factory: Callable[..., Agent]
) -> None:
    agent = agent_factory(fleet_env(hub, "edge-a", mode="offline")).start()
    fleet_cli(hub, "submit", "edge-a", "http_request", "--args", json.dumps(GET), "--key", "job-1")
    fleet_cli(hub, "submit", "edge-a", "http_request", "--args", json.dumps(GET), "--key", "job-1")  # again
    time.sleep(1.5)
    assert keyed(agent, "job-1") == []  # offline: nothing is fetched
    agent.set_mode("online")
    wait_for(lambda: keyed(agent, "job-1"), 15, interval=0.2, what="the work as a task")
    agent.stop()  # a restart redelivers nothing: it was acked once committed
    agent.start()
    time.sleep(2.0)
    assert len(keyed(agent, "job-1")) == 1
    assert consumer_pending(hub, "edge-a") == (0, 0)


async def _consumer_pending(url: str, host: str) -> tuple[int, int]:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info("WAYSTATION_WORK", f"waystation_{host}")
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)
    finally:
        await nc.close()


def consumer_pending(hub: NatsServer, host: str) -> tuple[int, int]:
    """(not yet delivered, delivered but not acked) of the host's work consumer."""
    return asyncio.run(_consumer_pending(hub.url, host))


async def _publish_raw(url: str, subject: str, data: bytes, msg_id: str) -> None:
    """Published as the operator would (signed), but with whatever body the test gives."""
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(
            subject, data, headers={"Nats-Msg-Id": msg_id, **sign_work(data, OPERATOR)}
        )
    finally:
        await nc.close()


def test_a_malformed_work_message_is_terminated_not_redelivered(
    hub: NatsServer, agent_factory: Callable[..., Agent]
) -> None:
    agent = agent_factory(fleet_env(hub, "edge-a")).start()
    make_receipts(agent, 1)
    arrived_in_order(hub, agent, "edge-a")  # streams made
    subject = "waystation.edge-a.work"
    asyncio.run(_publish_raw(hub.url, subject, b"{not json", "bad-json"))
    asyncio.run(_publish_raw(hub.url, subject, json.dumps({"tool": "no_such_tool"}).encode(), "bad-tool"))
    bad_args = {"tool": "http_request", "args": {"method": "GET"}}
    asyncio.run(_publish_raw(hub.url, subject, json.dumps(bad_args).encode(), "bad-args"))
    asyncio.run(
        _publish_raw(hub.url, subject, json.dumps({"tool": "http_request", "args": GET}).encode(), "good")
    )
    wait_for(lambda: keyed(agent, "good"), 15, interval=0.2, what="the good message's task")
    wait_for(lambda: consumer_pending(hub, "edge-a") == (0, 0), 10, interval=0.2, what="nothing left pending")
    time.sleep(2.0)
    assert consumer_pending(hub, "edge-a") == (0, 0)
    log = agent.log_path.read_text()
    assert log.count("message terminated") == 3, log[-3000:]
    assert [
        t["idempotency_key"] for t in agent.tasks() if t["idempotency_key"].startswith(("bad", "good"))
    ] == ["good"]


def test_fleet_status_lists_hosts_from_the_hub(hub: NatsServer, agent_factory: Callable[..., Agent]) -> None:
    agent = agent_factory(fleet_env(hub, "edge-a")).start()
    make_receipts(agent, 2)
    wait_for(lambda: host_statuses(hub.url).get("edge-a"), 10, interval=0.3, what="status in KV")
    listed = json.loads(fleet_cli(hub, "status", "--json").stdout)
    assert [h["host"] for h in listed] == ["edge-a"]
    assert listed[0]["stale"] is False and listed[0]["connectivity"] == "online"
    assert "edge-a" in fleet_cli(hub, "status").stdout


@pytest.mark.parametrize("content", [None, "not a credentials file\n"])
def test_a_bad_credentials_file_stops_start_up_naming_fleet_creds(
    hub: NatsServer, agent_factory: Callable[..., Agent], tmp_path: Path, content: str | None
) -> None:
    creds = tmp_path / "user.creds"
    if content is not None:
        creds.write_text(content)
    agent = agent_factory({**fleet_env(hub, "edge-a"), "WAYSTATION_FLEET__CREDS": str(creds)})
    proc = agent.launch()
    assert proc.wait(20) == 1
    lines = [line for line in agent.output().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "fleet.creds" in lines[0] and str(creds) in lines[0], agent.output()
    assert "not a credentials file" not in lines[0]  # the content is never shown


def test_a_hub_without_jetstream_is_refused_clearly(tmp_path: Path) -> None:
    plain = NatsServer(tmp_path / "plain", jetstream=False).start()
    try:
        done = fleet_cli(plain, "status", code=1)
    finally:
        plain.stop()
    assert done.stderr.startswith("error: ") and "JetStream" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_hub_nobody_listens_at_is_an_error_not_a_hang(hub: NatsServer) -> None:
    """A refused connection once made nats-py's first connect loop for ever (fleet status hung)."""
    nobody = f"nats://127.0.0.1:{port_nobody_uses()}"
    for command in (("status",), ("submit", "edge-a", "http_request", "--args", json.dumps(GET))):
        done = fleet_cli(hub, *command, url=nobody, code=1)
        assert "cannot connect" in done.stderr and "Connect" in done.stderr, done.stderr


def test_a_hub_that_refuses_the_user_is_refused_clearly(
    tmp_path: Path, agent_factory: Callable[..., Agent]
) -> None:
    config = tmp_path / "auth.conf"
    config.write_text('authorization { user: "fleet", password: "s3cret-pass" }\n')
    locked = NatsServer(tmp_path / "locked", config=str(config)).start()
    try:
        wrong = locked.url.replace("nats://", "nats://fleet:wrong-pass@")
        done = fleet_cli(locked, "status", url=wrong, code=1)
        assert "authorization" in done.stderr.lower(), done.stderr
        assert "wrong-pass" not in done.stderr  # the URL's password is never shown
        right = locked.url.replace("nats://", "nats://fleet:s3cret-pass@")
        assert json.loads(fleet_cli(locked, "status", "--json", url=right).stdout) == []
        # The agent keeps running (the hub may be fixed), saying why as an error.
        agent = agent_factory({**fleet_env(locked, "edge-a"), "WAYSTATION_FLEET__URL": wrong}).start()
        wait_for(lambda: "authorization refused" in agent.output(), 10, what="the refusal in the log")
        assert agent.running() and "wrong-pass" not in agent.output()
    finally:
        locked.stop()


def test_doctor_checks_the_hub(hub: NatsServer, tmp_path: Path) -> None:
    def fleet_line(url: str) -> str:
        home = make_home()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "waystation", "doctor"],
                env=agent_env(home, {"WAYSTATION_FLEET__URL": url, "WAYSTATION_FLEET__HOST": "edge-d"}),
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
        finally:
            remove_home(home)
        return next(line for line in done.stdout.splitlines() if line.split()[1] == "fleet")

    ok = fleet_line(hub.url)
    assert ok.startswith("ok") and "JetStream" in ok and "edge-d" in ok, ok
    plain = NatsServer(tmp_path / "plain", jetstream=False).start()
    try:
        refused = fleet_line(plain.url)
    finally:
        plain.stop()
    assert refused.startswith("fail") and "JetStream" in refused, refused
    unreachable = fleet_line("nats://127.0.0.1:9")
    assert unreachable.startswith("fail") and "127.0.0.1:9" in unreachable, unreachable


def test_connecting_again_closes_the_connection_before(hub: NatsServer) -> None:
    from waystation.adapters.fleet.hub import Hub
    from waystation.config import FleetSettings

    async def twice() -> bool:
        fleet = Hub(FleetSettings(url=hub.url, host="edge-c"), quiet=True)
        await fleet.connect()
        first = fleet._nc
        await fleet.connect()  # as after streams that could not be made: a retry
        try:
            return first is not None and first.is_closed
        finally:
            await fleet.close()

    assert asyncio.run(twice())
