"""Floods that took the socket API from its owner (issue 20, item 6): half-sent connections held on
the metrics port (they took every descriptor the agent had), and one process of the owner's own
uid reconnecting to the socket as fast as it was closed (it took every slot; 1 of 168 status calls
was answered). The floods run in child processes (tests/floods.py): their own pids, and nobody's
uid on the metrics port where the tests run as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
from collections.abc import Callable
from typing import Any

import pytest
from support.agentproc import AGENT_COMMAND, Agent, free_port, status_code
from support.floods import HALF_HEAD, NOBODY, flooding

from waystation.agent import daemon
from waystation.agent.connections import RESERVED_FILES, refusal

# Floods are timed against the agent's limits: a neighbour's load changes what they measure.
pytestmark = pytest.mark.alone

STATUS_CALLS = 10


def answered(agent: Agent, calls: int = STATUS_CALLS) -> int:
    """How many of `calls` status calls, one after another, were answered 200 (within 2 s: on a
    slow host one in ten took over 1 s beside the flood; without the limits, none is answered)."""
    return sum(status_code(agent.socket, timeout=2.0) == 200 for _ in range(calls))


def limit_open_files(monkeypatch: pytest.MonkeyPatch, files: int) -> None:
    monkeypatch.setattr(
        "support.agentproc.AGENT_COMMAND", ["prlimit", f"--nofile={files}:{files}", "--", *AGENT_COMMAND]
    )


def test_a_flood_of_the_metrics_port_leaves_the_socket_answering(
    agent_factory: Callable[..., Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    limit_open_files(monkeypatch, RESERVED_FILES + 100)  # 356 descriptors in all
    port = free_port()
    agent = agent_factory({"WAYSTATION_AGENT__METRICS_LISTEN": f"127.0.0.1:{port}"}).start()
    with flooding("hold", port, 500, other_uid=True) as held:
        assert held > 300  # nothing on our side stopped the flood: the kernel queued it
        assert answered(agent) == STATUS_CALLS  # was 0 of 10: no descriptor left to accept with
        descriptors = len(os.listdir(f"/proc/{agent.pid}/fd"))
    assert descriptors < 100, descriptors  # was all 356: the metrics port holds 40 at most
    assert "refusing connections" in agent.output() and "the metrics port" in agent.output()


def test_one_reconnecting_process_cannot_take_the_socket(
    agent_factory: Callable[..., Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    limit_open_files(monkeypatch, RESERVED_FILES + 40)  # the socket serves 40, a quarter per process
    agent = agent_factory().start()
    with flooding("reconnect", agent.socket, 200) as held:
        assert held >= 10
        assert answered(agent) == STATUS_CALLS  # was 0 of 10: each one a 503
    assert "this process holds 10 of the 40 connections" in agent.output()


def test_another_users_processes_together_get_a_quarter_of_the_socket(
    agent_factory: Callable[..., Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run clients as another user")
    limit_open_files(monkeypatch, RESERVED_FILES + 40)
    group = grp.getgrgid(NOBODY).gr_name  # nobody's own group: a member of the socket group
    agent = agent_factory({"WAYSTATION_AGENT__SOCKET_GROUP": group}).start()
    with contextlib.ExitStack() as floods:
        held = [floods.enter_context(flooding("hold", agent.socket, 15, other_uid=True)) for _ in range(4)]
        assert sum(held) > 40  # more than the socket serves, had it let them
        assert answered(agent) == STATUS_CALLS  # was 0 of 10: four processes of 10 filled it
    assert "this user holds 10 of the 40 connections" in agent.output()


@pytest.mark.parametrize(
    ("open_total", "pid_open", "uid_open", "own_user", "why"),
    [
        (3, 0, 0, True, None),
        (16, 0, 0, True, "full"),
        (15, 4, 4, True, "process"),  # the agent's own user too: one process, a quarter
        (15, 3, 15, True, None),  # the owner's processes together may fill it
        (5, 0, 4, False, "user"),  # another user (the socket group): a quarter for all its processes
        (12, 0, 0, False, "reserved"),  # and never the owner's last quarter
        (11, 0, 3, False, None),
    ],
)
def test_each_peer_gets_a_share(
    open_total: int, pid_open: int, uid_open: int, own_user: bool, why: str | None
) -> None:
    assert refusal(open_total, 16, pid_open, uid_open, own_user) == why


async def test_the_metrics_port_closes_half_sent_requests_and_refuses_past_its_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(daemon, "HEAD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(daemon, "METRICS_CONNECTIONS", 3)
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        station: Any = None  # no request here gets as far as a handler
        await daemon.serve_metrics(stack, station, f"127.0.0.1:{port}")
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for _reader, writer in connections:
            writer.write(HALF_HEAD)
        answers = [await asyncio.wait_for(reader.read(), 5) for reader, _writer in connections]
        for _reader, writer in connections:
            writer.close()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    assert len(refused) == 2 and all(b"too_many_connections" in a for a in refused), answers
    assert answers.count(b"") == 3  # closed by the head timeout, not held for aiohttp's hour
