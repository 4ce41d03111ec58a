"""`[agent] listen` and `POST /v1/responses`, driven as other tools drive them: the official `openai`
SDK configured by URL and token alone, against a real agent (real llama.cpp, the packaged model).

The listener serves the model API and nothing of the control API, every request with the bearer
token (401 without it); `waystation token` prints the token kept 0600 in the state directory and
`--rotate` replaces it, honoured by the running agent at once. The Responses API answers plain,
streamed (its typed events) and with a function tool (a function_call item, then an answer to its
function_call_output).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import FunctionToolParam
from support.agentproc import Agent, agent_env, free_port, started_agent

MAX_TOKENS = 16
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


LISTEN = f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    with started_agent({"WAYSTATION_CONNECTIVITY__MODE": "offline", "WAYSTATION_AGENT__LISTEN": LISTEN}) as a:
        yield a


def url(agent: Agent) -> str:
    return f"http://{LISTEN}"


def token_cmd(agent: Agent, *args: str) -> str:
    return waystation(agent, "token", *args).strip()


def waystation(agent: Agent, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "waystation", *args],
        env=agent_env(agent.home),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def client(agent: Agent) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=url(agent) + "/v1", api_key=token_cmd(agent), max_retries=0, timeout=120
    ) as c:
        yield c


def test_the_token_file_is_private_and_printed(agent: Agent) -> None:
    path = Path(agent.home) / "api.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token_cmd(agent) == path.read_text().strip()


def test_a_missing_or_wrong_token_is_401(agent: Agent) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic " + token_cmd(agent)}):
        response = httpx.get(url(agent) + "/v1/models", headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "unauthorized"


def test_only_the_model_api_is_served(agent: Agent) -> None:
    auth = {"Authorization": f"Bearer {token_cmd(agent)}"}
    assert httpx.get(url(agent) + "/v1/models", headers=auth).status_code == 200
    assert httpx.get(url(agent) + "/v1/turns", headers=auth).status_code == 200
    for method, path in (
        ("GET", "/v1/tasks"),
        ("POST", "/v1/tasks"),
        ("GET", "/v1/status"),
        ("PUT", "/v1/connectivity"),
        ("GET", "/v1/receipts"),
        ("GET", "/metrics"),
        ("GET", "/v1/openapi.json"),
        ("POST", "/v1/models/pull"),
    ):
        response = httpx.request(method, url(agent) + path, headers=auth, json={})
        assert response.status_code in (404, 405), (path, response.status_code)
    status = agent.api("GET", "/v1/status").json()  # the socket still serves it, and names the listener
    assert status["listen"] == LISTEN
    assert f"http://{LISTEN}/v1" in waystation(agent, "status")


def test_chat_completion_through_openai_base_url(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Say hi."}], max_tokens=MAX_TOKENS
    )
    assert completion.choices[0].message.content


def test_responses_plain(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="local",
        instructions="You are terse.",
        input="What is the capital of France?",
        max_output_tokens=MAX_TOKENS,
    )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.usage is not None and 0 < response.usage.output_tokens <= MAX_TOKENS


def test_responses_streamed(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model="local", input="Name a colour.", max_output_tokens=MAX_TOKENS, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")  # the latter when cut off
    for kind in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1]
    assert final.type == "response.completed" or final.type == "response.incomplete"
    assert final.type == f"response.{final.response.status}"
    assert deltas and final.response.output_text == deltas


def test_responses_with_a_function_tool(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.responses.create(
        model="local", input=ask, tools=[WEATHER], tool_choice="required", max_output_tokens=48
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments), dict)
    second = client.responses.create(
        model="local",
        input=[
            *ask,
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 degrees Celsius"},
        ],
        max_output_tokens=48,
    )
    assert not [item for item in second.output if item.type == "function_call"]
    assert "21" in second.output_text  # from the call's output


def test_unsupported_fields_are_400_naming_them(client: openai.OpenAI, agent: Agent) -> None:
    for extra in (
        {"previous_response_id": "resp_1"},
        {"tools": [{"type": "web_search"}]},
        {"background": True},
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="local", input="hi", **extra)  # type: ignore[call-overload]
        assert next(iter(extra)) in str(caught.value)
    on_socket = agent.api("POST", "/v1/responses", json={"input": "hi", "previous_response_id": "resp_1"})
    assert on_socket.status_code == 400 and "previous_response_id" in on_socket.json()["error"]["message"]


def test_a_streamed_function_call(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model="local",
            input="What is the weather in Paris?",
            tools=[WEATHER],
            tool_choice="required",
            max_output_tokens=48,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" not in kinds  # the call's JSON is not streamed as text
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.name == "get_weather" and isinstance(json.loads(done.arguments), dict)
    final = events[-1]
    assert final.type == "response.completed"
    (call,) = final.response.output
    assert call.type == "function_call" and call.arguments == done.arguments


# Last of the module agent's tests: the token it rotates is the one the module's client holds.
def test_rotate_replaces_the_token_for_the_running_agent(agent: Agent) -> None:
    old = token_cmd(agent)
    new = token_cmd(agent, "--rotate")
    assert new != old and token_cmd(agent) == new
    assert stat.S_IMODE((Path(agent.home) / "api.token").stat().st_mode) == 0o600
    models = url(agent) + "/v1/models"
    assert httpx.get(models, headers={"Authorization": f"Bearer {old}"}).status_code == 401
    assert httpx.get(models, headers={"Authorization": f"Bearer {new}"}).status_code == 200


def test_token_is_made_by_the_command_when_none_exists(tmp_path: Path) -> None:
    env = {**os.environ, "WAYSTATION_HOME": str(tmp_path)}
    run = [sys.executable, "-m", "waystation", "token"]
    printed = subprocess.run(
        run, env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert printed and (tmp_path / "api.token").read_text().strip() == printed
    assert stat.S_IMODE((tmp_path / "api.token").stat().st_mode) == 0o600
