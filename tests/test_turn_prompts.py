"""The prompt set (tests/data/turn_prompts.json: 11 prompts needing no tool, 11 naming a URL, 11
ambiguous) on the real embedded model through a real agent that is offline: thresholds that a
regression in what the model is offered, or in which calls may go out, would break."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from support.agentproc import Agent, Receiver
from turn_prompt_set import run

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_the_prompt_set_calls_only_what_it_was_asked_to(
    agent_factory: Any, receiver: Receiver, soak_report: Callable[[str], None]
) -> None:
    agent: Agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"}).start()
    with agent.client(timeout=120.0) as client:

        def post_turn(prompt: str) -> dict[str, Any]:
            answer = client.post("/v1/turns", json={"prompt": prompt, "max_tokens": 96})
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        score = run(post_turn, receiver.base)
    soak_report("prompt set: " + "; ".join(score.lines()))
    assert score.false_calls == 0  # a prompt naming no URL is offered no network tool
    assert score.invented_parked == 0  # an invented URL is refused, never parked
    assert score.right >= 9, score.lines()  # of 11 prompts naming a URL
    assert receiver.hits("/") == []  # offline: nothing went out
    assert agent.api("GET", "/v1/receipts/verify").json()["ok"] is True
