"""An idle agent stays asleep: no busy polling in any of its threads.

A real `waystation run` is left alone after start-up (forced offline; and in auto mode, online
against a loopback probe target), and the kernel's count of its voluntary context switches (each
time a thread blocked and was later woken) is read over a few seconds. This is a count, not a
timing: a thread that polls, even every 100 ms, wakes dozens of times in that window, while a
sleeping agent wakes a handful of times at most (a scheduled probe, a housekeeping job).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from support.agentproc import Agent, Receiver, wait_for

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    # A busy neighbour slows the probe's answer past its timeout, and the agent probes again.
    pytest.mark.alone,
]

SETTLE_S = 2.0
WINDOW_S = 5.0
# Measured here: 0 for the idle agent in both modes; a thread sleeping in a 10 Hz loop makes 50
# (and a 5 Hz one 25), so this is far above a sleeping agent and below any real poller.
MAX_WAKEUPS = 25


def switches(pid: int) -> dict[str, int]:
    """Voluntary context switches of each of the process's threads, by thread name and id."""
    counts = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended while we looked
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        counts[f"{fields['Name'].strip()}[{task.name}]"] = int(fields["voluntary_ctxt_switches"])
    return counts


def idle_wakeups(agent: Agent) -> tuple[int, dict[str, int]]:
    """Voluntary context switches of the idle agent over WINDOW_S; and each busy thread's share."""
    time.sleep(SETTLE_S)
    before = switches(agent.pid)
    time.sleep(WINDOW_S)
    after = switches(agent.pid)
    assert agent.running(), agent.output()
    deltas = {thread: n - before.get(thread, 0) for thread, n in after.items()}
    return sum(deltas.values()), {t: n for t, n in deltas.items() if n}


def test_idle_agent_forced_offline_sleeps(home: Path) -> None:
    agent = Agent(home, {"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    try:
        agent.start()
        total, busy = idle_wakeups(agent)
        assert total < MAX_WAKEUPS, f"{total} wakeups in {WINDOW_S:g}s while idle: {busy}"
    finally:
        agent.close()


def test_idle_agent_online_in_auto_mode_sleeps(home: Path) -> None:
    with Receiver() as recv:
        agent = Agent(
            home,
            {
                "WAYSTATION_CONNECTIVITY__MODE": "auto",
                "WAYSTATION_CONNECTIVITY__PROBE_URL": recv.url("/generate_204"),
            },
        )
        try:
            agent.start()
            wait_for(
                lambda: agent.api("GET", "/v1/connectivity").json()["state"] == "online",
                timeout=15,
                what="the probe to find the loopback target",
            )
            probes = len(recv.hits("/generate_204"))
            total, busy = idle_wakeups(agent)
            assert total < MAX_WAKEUPS, f"{total} wakeups in {WINDOW_S:g}s while idle: {busy}"
            # Online and verified: the next probe is minutes away, not a poll.
            assert len(recv.hits("/generate_204")) == probes
        finally:
            agent.close()
