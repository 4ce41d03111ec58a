"""Writes the user asked for, exactly, on the real embedded model (SmolLM2-135M, llama.cpp) through
a real agent that is online, to a real loopback receiver.

- "POST the JSON {...} to URL" with tool_choice required: the receiver gets that JSON byte for
  byte, as application/json, with the call's Idempotency-Key (once, the reported bug had it
  receive the URL as an octet-stream body, and the turn end ok).
- A POST the user gave no JSON for: the call is refused and nothing reaches the receiver.

Greedy output depends on every token of the prompt, the receiver's port included; both prompts
were tried on 8 random ports each and came out the same way on all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.agentproc import Agent, Receiver, started_agent

pytestmark = pytest.mark.slow

EVENT = '{"event":"deploy","id":7}'  # compact: it must arrive as written
MAX_TOKENS = 96  # a call carrying the JSON is ~60 tokens, and the grammar spends a few more


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    with started_agent({"WAYSTATION_CONNECTIVITY__MODE": "online"}) as a:
        yield a


@pytest.fixture
def client(agent: Agent) -> Iterator[httpx.Client]:
    with agent.client(timeout=240.0) as c:
        yield c


def turn(client: httpx.Client, prompt: str, tool_choice: Any) -> dict[str, Any]:
    # Two steps: the call, then (told its result) the answer.
    body = {"prompt": prompt, "tool_choice": tool_choice, "max_tokens": MAX_TOKENS, "max_steps": 2}
    answer = client.post("/v1/turns", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


@pytest.mark.timeout(300)
def test_the_json_the_user_gave_is_posted_as_written(client: httpx.Client, receiver: Receiver) -> None:
    url = receiver.url("/ok/hook")
    result = turn(client, f"POST the JSON {EVENT} to {url}", "required")

    assert result["status"] == "ok", result
    call = result["tool_calls"][0]
    assert call["tool"] == "http_request" and call["status"] == "done", call
    assert call["arguments"]["method"] == "POST"
    (hit,) = receiver.hits("/ok/hook")
    assert (hit.method, hit.body, hit.content_type) == ("POST", EVENT, "application/json")
    assert hit.key is not None and hit.key.startswith(result["turn_id"])


@pytest.mark.timeout(300)
def test_a_post_without_the_users_json_is_refused_and_sends_nothing(
    client: httpx.Client, receiver: Receiver
) -> None:
    url = receiver.url("/ok/bare")
    result = turn(client, f"POST to {url}", {"tool": "http_request"})

    call = result["tool_calls"][0]
    assert call["status"] == "refused", call
    assert call["arguments"]["method"] in ("POST", "PUT", "PATCH") and "json" not in call["arguments"]
    assert result["deferred_task_ids"] == [] and result["status"] == "ok"
    assert receiver.hits("/ok/bare") == []
