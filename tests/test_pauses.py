"""A paused agent (issue 12, item 6): SIGSTOP longer than the delivery timeout while a delivery is in
flight, the destination answering during the pause. The answer that came meanwhile is read when
the agent resumes: the task is done after one attempt and the destination saw one request.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from support.agentproc import Agent, wait_for

from waystation.adapters.tools.deadline import GRACE_S, Deadline


def test_an_answer_that_came_during_a_pause_is_kept_not_sent_again(
    agent_factory: Callable[..., Agent], receiver: Any
) -> None:
    agent = agent_factory(
        {"WAYSTATION_CONNECTIVITY__MODE": "online", "WAYSTATION_QUEUE__DELIVERY_TIMEOUT_S": "2"}
    ).start()
    path = "/slow/500/paused"
    task_id = agent.api(
        "POST", "/v1/tasks", json={"tool": "web_fetch", "args": {"url": receiver.url(path)}}
    ).json()["id"]
    wait_for(lambda: receiver.hits(path), 10, what="the delivery to start")
    agent.signal(signal.SIGSTOP)
    time.sleep(4)  # twice the delivery timeout; the destination answers after 0.5 s
    agent.signal(signal.SIGCONT)
    wait_for(
        lambda: agent.api("GET", f"/v1/tasks/{task_id}").json()["state"] == "done", 15, what="the task done"
    )
    task = agent.api("GET", f"/v1/tasks/{task_id}").json()
    assert task["attempts"] == 1, task
    time.sleep(1)
    assert len(receiver.hits(path)) == 1


async def test_a_deadline_on_time_still_ends_the_exchange() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with Deadline(0.2).bound():
            await asyncio.sleep(5)
    assert time.monotonic() - started < GRACE_S  # no grace for a loop that was running


async def test_a_deadline_that_fires_late_gives_the_exchange_a_grace() -> None:
    deadline = Deadline(0.1)
    async with deadline.bound():
        time.sleep(1.5)  # noqa: ASYNC251 - the loop stalls past the deadline, as in a pause
        await asyncio.sleep(0.2)  # and the exchange then finishes within the grace
