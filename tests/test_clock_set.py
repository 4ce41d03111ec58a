"""A wall clock set while the agent was stopped, with a real agent process (issue 20, item 15).

The agent's wall clock is offset through tests/fake_clock/sitecustomize.py (time.time only; the
kernel's monotonic and boot clocks stay true, as when NTP or an operator sets the clock). Work
parked under the wrong time must neither expire at the next start nor wait out the difference.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.agentproc import Agent

from waystation import timeutil

FAKE_CLOCK = Path(__file__).parent / "fake_clock"
DAY = 86400.0


def with_clock(offset_s: float) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(FAKE_CLOCK), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "FAKE_CLOCK_OFFSET_S": str(offset_s)}


@pytest.mark.parametrize("parked_at", [-10 * DAY, 30 * DAY], ids=["clock-behind", "clock-ahead"])
def test_work_parked_under_a_wrong_clock_survives_its_correction_while_stopped(
    agent_factory: Callable[..., Agent], parked_at: float
) -> None:
    """A board that booted 10 days behind parks 3 tasks (retention 7 days), is stopped, NTP sets
    the clock, the agent starts: 3 of 3 expired at once. And a clock a month ahead, corrected,
    held every retry for a month."""
    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    agent.start(env=with_clock(parked_at))
    for n in range(3):
        made = agent.api(
            "POST", "/v1/tasks", json={"tool": "web_fetch", "args": {"url": f"http://127.0.0.1:9/{n}"}}
        )
        assert made.status_code == 201, made.text
    assert agent.stop() == 0

    agent.start(env=with_clock(0))  # the clock set right while no agent ran
    assert agent.counts()["pending"] == 3 and agent.counts()["expired"] == 0
    now = time.time()
    for task in agent.tasks():
        # Due now, as when parked (not in a month), and kept the 7 days of retention from now.
        assert timeutil.parse_iso(task["next_attempt_at"]) < now + 60
        assert now + 6 * DAY < timeutil.parse_iso(task["expires_at"]) < now + 8 * DAY
    assert "deadlines moved with it" in agent.output()
