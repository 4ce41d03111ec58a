"""The agent under Type=notify: READY=1, STATUS= lines, WATCHDOG=1 pings and STOPPING=1.

The test plays systemd: it binds the Unix datagram socket named by NOTIFY_SOCKET, starts a real
`waystation run` with WATCHDOG_USEC set, and reads what the agent tells it.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.agentproc import Agent, status_code

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []
        self._cursor = 0  # wait_for looks at messages from here on

    def read(self, timeout: float) -> list[str]:
        """Everything that arrives within `timeout` seconds."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))
                got.append(line)
        return got

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        """The first message since the last match that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(self._cursor, len(self.messages)):
                if predicate(self.messages[index][1]):
                    self._cursor = index + 1
                    return self.messages[index][1]
            if time.monotonic() >= deadline:
                break
            self.read(min(0.2, max(deadline - time.monotonic(), 0.01)))
        seen = [m for _, m in self.messages if not m.startswith("WATCHDOG")]
        raise AssertionError(f"no {what} within {timeout:g}s; got {seen}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifySocket]:
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="ws-notify-"))  # short: a socket path fits in 108 bytes
    sock = NotifySocket(directory / "notify")
    yield sock
    sock.close()
    sock.path.unlink(missing_ok=True)
    directory.rmdir()


def test_ready_status_watchdog_and_stopping(
    agent_factory: Callable[..., Agent], notify: NotifySocket
) -> None:
    agent = agent_factory(
        {
            "NOTIFY_SOCKET": str(notify.path),
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
            "WAYSTATION_CONNECTIVITY__MODE": "offline",
        }
    )
    agent.proc = agent.launch()
    notify.wait_for(lambda m: m == "READY=1", 30, "READY=1")
    assert status_code(agent.socket) == 200, "READY=1 came before the socket answered"

    first = notify.wait_for(lambda m: m.startswith("STATUS="), 5, "STATUS=")
    assert "connectivity offline" in first and "queue: 0 pending" in first, first

    # WATCHDOG=1 keeps coming, about every WATCHDOG_USEC/2.
    start = time.monotonic()
    notify.read(2.0)
    pings = [t for t, m in notify.messages if m == "WATCHDOG=1" and t >= start]
    assert len(pings) >= 3, notify.messages

    # A connectivity change shows at once.
    agent.set_mode("online")
    changed = notify.wait_for(lambda m: m.startswith("STATUS=connectivity online"), 3, "online STATUS=")
    assert "queue:" in changed

    # A queue change shows within the rate limit (a few seconds).
    agent.set_mode("offline")
    response = agent.api(
        "POST",
        "/v1/tasks",
        json={"tool": "http_request", "args": {"method": "GET", "url": "http://127.0.0.1:9/"}},
    )
    assert response.status_code == 201, response.text
    queued = notify.wait_for(lambda m: m.startswith("STATUS=") and "1 pending" in m, 8, "queue STATUS=")
    assert "connectivity offline" in queued

    # Idle: no STATUS= updates without a change, only the watchdog pings.
    quiet = notify.read(2.0)
    assert not [m for m in quiet if m.startswith("STATUS=")], quiet
    assert set(quiet) <= {"WATCHDOG=1"}, quiet

    agent.signal(signal.SIGTERM)
    notify.wait_for(lambda m: m == "STOPPING=1", 10, "STOPPING=1")
    assert agent.wait(10) == 0
    messages = [m for _, m in notify.messages]
    assert messages.count("READY=1") == 1


def test_no_watchdog_pings_unless_asked(agent_factory: Callable[..., Agent], notify: NotifySocket) -> None:
    agent = agent_factory({"NOTIFY_SOCKET": str(notify.path), "WAYSTATION_CONNECTIVITY__MODE": "offline"})
    agent.proc = agent.launch()
    notify.wait_for(lambda m: m == "READY=1", 30, "READY=1")
    notify.read(1.5)
    assert "WATCHDOG=1" not in [m for _, m in notify.messages]
    assert agent.stop() == 0
