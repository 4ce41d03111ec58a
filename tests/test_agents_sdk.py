"""The OpenAI Agents SDK (`openai-agents`) against the loopback listener, configured as its users
configure it: `OPENAI_BASE_URL=http://127.0.0.1:PORT/v1` and `OPENAI_API_KEY=$(waystation token)`,
its default model provider, its default API (Responses) and its default model's settings. A real
agent answers with the real embedded model.

An Agent answers a plain instruction (Runner.run), the same streamed (Runner.run_streamed: the raw
Responses events, then the SDK's own run-item events), in its `output_type` (`text.format`
json_schema), and with a `@function_tool` it is made to call, whole and streamed: the SDK runs the
tool and sends its result back to /v1/responses as a `function_call_output` item with the whole
conversation, and the model answers from it. A wrong token is the SDK's AuthenticationError.

Each generation is capped by `max_tokens` to keep the file quick; a reply the cap cuts off is an
"incomplete" response, which the SDK refuses, so the prompts ask for short answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import agents
import openai
import pytest
from agents import Agent as SdkAgent
from agents import ModelSettings, Runner, function_tool
from agents.items import RunItem, ToolCallItem
from agents.models.default_models import get_default_model_settings
from agents.stream_events import RawResponsesStreamEvent, RunItemStreamEvent
from openai.types.responses import ResponseFunctionToolCall
from pydantic import BaseModel
from support.agentproc import Agent, agent_env, free_port, started_agent

# One event loop for the module, as in a user's program: the SDK's default provider keeps one
# process-wide HTTP client, whose connections belong to the loop that opened them.
pytestmark = pytest.mark.asyncio(loop_scope="module")

LISTEN = f"127.0.0.1:{free_port()}"
MAX_TOKENS = 24


def settings(**overrides: Any) -> ModelSettings:
    """The settings an Agent gets by default (for the SDK's default model, GPT-5: `reasoning` and
    `text.verbosity`, which Waystation accepts and ignores), with a short cap on generation."""
    return get_default_model_settings().resolve(ModelSettings(**{"max_tokens": MAX_TOKENS, **overrides}))


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    with started_agent({"WAYSTATION_CONNECTIVITY__MODE": "offline", "WAYSTATION_AGENT__LISTEN": LISTEN}) as a:
        yield a


@pytest.fixture(scope="module")
def token(agent: Agent) -> str:
    """`waystation token`, as a user's shell runs it for OPENAI_API_KEY."""
    return subprocess.run(
        [sys.executable, "-m", "waystation", "token"],
        env=agent_env(agent.home),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()


@pytest.fixture(autouse=True)
def user_env(token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's environment: each run's default provider makes its client from it."""
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://{LISTEN}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", token)
    # Tracing would post spans to OpenAI's servers. Left off after the module: turned back on, a
    # later run in this process would try to reach the network.
    agents.set_tracing_disabled(True)


@function_tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny, 21 degrees Celsius in {city}"


def weather_agent(tool_choice: str) -> SdkAgent:
    return SdkAgent(
        name="Weather",
        instructions="Answer with the weather the tool reports.",
        tools=[get_weather],
        model_settings=settings(tool_choice=tool_choice, max_tokens=96),  # its answer: ~50 tokens
    )


def result_call(item: RunItem) -> ResponseFunctionToolCall:
    assert isinstance(item, ToolCallItem) and isinstance(item.raw_item, ResponseFunctionToolCall)
    return item.raw_item


class City(BaseModel):
    name: str
    country: str


async def test_an_agent_answers() -> None:
    agent = SdkAgent(name="Terse", instructions="Answer in one word.", model_settings=settings())
    result = await Runner.run(agent, "What is the capital of France?")
    assert isinstance(result.final_output, str) and result.final_output.strip()
    (response,) = result.raw_responses
    assert response.response_id and response.response_id.startswith("resp_")
    assert 0 < response.usage.output_tokens <= MAX_TOKENS


async def test_an_agent_answers_streamed() -> None:
    agent = SdkAgent(name="Terse", instructions="Answer in one word.", model_settings=settings())
    run = Runner.run_streamed(agent, "Name a colour.")
    events = [event async for event in run.stream_events()]
    raw = [e.data for e in events if isinstance(e, RawResponsesStreamEvent)]
    kinds = [e.type for e in raw]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert [e.name for e in events if isinstance(e, RunItemStreamEvent)] == ["message_output_created"]
    deltas = "".join(e.delta for e in raw if e.type == "response.output_text.delta")
    assert run.is_complete and deltas and run.final_output == deltas


async def test_an_agent_answers_in_its_output_type() -> None:
    agent = SdkAgent(
        name="Cities", instructions="Name the city asked for.", output_type=City, model_settings=settings()
    )
    result = await Runner.run(agent, "The capital of France?")
    assert isinstance(result.final_output, City) and result.final_output.name


async def test_an_agent_calls_its_function_tool() -> None:
    result = await Runner.run(weather_agent("required"), "What is the weather in Paris?", max_turns=3)
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"], kinds
    assert len(result.raw_responses) == 2  # the call, then the answer to its function_call_output
    call = result_call(result.new_items[0])
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert "21" in result.final_output  # from the tool's output the SDK sent back


async def test_an_agent_calls_a_named_function_tool_streamed() -> None:
    run = Runner.run_streamed(weather_agent("get_weather"), "What is the weather in Rome?", max_turns=3)
    events = [event async for event in run.stream_events()]
    items = [e.name for e in events if isinstance(e, RunItemStreamEvent)]
    assert items == ["tool_called", "tool_output", "message_output_created"], items
    raw = [e.data.type for e in events if isinstance(e, RawResponsesStreamEvent)]
    assert raw.count("response.function_call_arguments.done") == 1
    call = result_call(run.new_items[0])
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Rome"}
    assert run.is_complete and "21" in run.final_output


async def test_a_wrong_token_is_an_authentication_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "not-the-token")
    agent = SdkAgent(name="Terse", instructions="Answer in one word.", model_settings=settings())
    with pytest.raises(openai.AuthenticationError) as caught:
        await Runner.run(agent, "Say hi.")
    assert caught.value.status_code == 401
