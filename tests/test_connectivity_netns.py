"""The monitor in a real network namespace: cutting and restoring a veth link.

Two namespaces joined by a veth pair: the probe target (a tiny HTTP server answering 204) lives
in one, a monitor process in the other. Taking the monitor's end of the link down and up again
must be noticed through netlink wake-ups, long before the probe schedule would notice it.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("ip") is None,
        reason="needs Linux, root and iproute2 to create network namespaces",
    ),
]

SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Answer204(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer((sys.argv[1], int(sys.argv[2])), Answer204).serve_forever()
"""

# Prints each state change, and the monitor's own debug log (probes, planned sleeps), as JSON lines.
MONITOR = r"""
import asyncio, json, logging, sys, time
import structlog
from waystation.adapters.connectivity.monitor import ConnectivityMonitor
from waystation.config import ConnectivitySettings

def emit(kind, **fields):
    print(json.dumps({"kind": kind, "t": time.time(), **fields}, default=str), flush=True)

def to_stdout(logger, method, event_dict):
    emit("log", **event_dict)
    raise structlog.DropEvent

structlog.configure(
    processors=[structlog.processors.add_log_level, to_stdout],
    wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
)

async def main():
    settings = ConnectivitySettings(
        probe_url=sys.argv[1], probe_timeout_s=1.0,
        online_probe_interval_s=300.0, offline_probe_max_s=60.0,
    )
    async with ConnectivityMonitor(settings, on_change=lambda snap: emit("change", **snap)):
        await asyncio.Event().wait()

asyncio.run(main())
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Lines:
    """Reads a process's JSON lines on a thread so the test can wait with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        assert proc.stdout is not None
        self._stream = proc.stdout
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """After the process ended: the reader sees end-of-file, then the pipe can be closed."""
        self._thread.join(timeout=5)
        self._stream.close()

    def _read(self, stream: Any) -> None:
        for line in stream:
            try:
                self._queue.put(json.loads(line))
            except json.JSONDecodeError:
                self._queue.put({"kind": "raw", "t": time.time(), "text": line.rstrip()})

    def expect(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = "\n".join(json.dumps(x) for x in self.seen[-25:])
                raise AssertionError(f"no matching line within {timeout} s; last lines:\n{tail}")
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(item)
            if predicate(item):
                return item


def change_to(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda item: item.get("kind") == "change" and item.get("state") == state


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str, str]]:
    """(target namespace, monitor namespace, the monitor's veth end), removed afterwards."""
    tag = secrets.token_hex(3)
    ns_target, ns_monitor = f"wst{tag}", f"wsm{tag}"
    veth_target, veth_monitor = f"wvt{tag}", f"wvm{tag}"
    created: list[str] = []
    try:
        for ns in (ns_target, ns_monitor):
            try:
                ip("netns", "add", ns)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
            created.append(ns)
        ip("link", "add", veth_target, "type", "veth", "peer", "name", veth_monitor)
        ip("link", "set", veth_target, "netns", ns_target)
        ip("link", "set", veth_monitor, "netns", ns_monitor)
        ip("-n", ns_target, "addr", "add", "10.231.0.1/24", "dev", veth_target)
        ip("-n", ns_monitor, "addr", "add", "10.231.0.2/24", "dev", veth_monitor)
        for ns, dev in ((ns_target, veth_target), (ns_monitor, veth_monitor)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        yield ns_target, ns_monitor, veth_monitor
    finally:
        # Deleting a namespace destroys the veth end inside it, and with it the peer.
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def spawn(ns: str, script: str, *args: str, output: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE if output else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.timeout(60)
def test_link_down_and_up_is_noticed_through_netlink(two_namespaces: tuple[str, str, str]) -> None:
    ns_target, ns_monitor, veth_monitor = two_namespaces
    procs: list[subprocess.Popen[str]] = []
    lines: Lines | None = None
    try:
        procs.append(spawn(ns_target, SERVER, "10.231.0.1", "8080"))
        monitor = spawn(ns_monitor, MONITOR, "http://10.231.0.1:8080/generate_204", output=True)
        procs.append(monitor)
        lines = Lines(monitor)

        lines.expect(lambda item: item.get("event") == "netlink.watching", timeout=10)
        lines.expect(change_to("online"), timeout=10)

        # Down: the next scheduled probe is 300 s away, so only a netlink wake-up can explain
        # noticing within seconds (first failure at once, the confirming probe ~1 s later).
        down_at = time.time()
        ip("-n", ns_monitor, "link", "set", veth_monitor, "down")
        offline = lines.expect(change_to("offline"), timeout=5)
        assert offline["t"] - down_at < 3.0

        # Stay offline until the backoff plans a long sleep (1, 2, 4, then 8 s).
        long_sleep = lines.expect(
            lambda item: (
                item.get("event") == "connectivity.sleep"
                and item.get("state") == "offline"
                and (item.get("next_probe_in_s") or 0) >= 8
            ),
            timeout=15,
        )
        up_at = time.time()
        ip("-n", ns_monitor, "link", "set", veth_monitor, "up")
        online = lines.expect(change_to("online"), timeout=5)
        assert online["t"] - up_at < 3.0
        # ...and well before the probe the backoff had planned.
        assert online["t"] < long_sleep["t"] + long_sleep["next_probe_in_s"] - 3.0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
        if lines is not None:
            lines.close()
