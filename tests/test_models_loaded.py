"""Several named models in one real agent: a memory budget, least recently used out first, and
Ollama's keep_alive, on `POST /v1/turns` and on `/v1/chat/completions` through the `openai` SDK.

The models are the embedded SmolLM2 GGUF under two names in the agent's models/ (as a pull
leaves them). With a context of 512 tokens each takes 98.4 MB of weights and 47.2 MB of KV
cache (11.8 MB for each of the 4 sequences `[model] parallel` generates at once); a budget of
150 MB holds one. That a model's memory was given back is read from the
agent's own /proc/PID/maps: llama.cpp maps the weights, and unloading unmaps them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from support.agentproc import Agent, started_agent
from test_models_pull import cli

from waystation.adapters.models.embedded import default_model_path

MEMORY = 98_362_432 + 4 * 30 * 512 * 3 * 128 * 2  # weights + KV cache at 512 tokens, 4 sequences
NAMES = ("alpha", "beta")


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    env = {
        "WAYSTATION_CONNECTIVITY__MODE": "offline",
        "WAYSTATION_MODEL__CONTEXT": "512",
        "WAYSTATION_MODEL__MEMORY_BUDGET_MB": "150",
    }
    with started_agent(env) as agent:
        models = agent.home / "models"
        models.mkdir(exist_ok=True)
        for name in NAMES:
            place(default_model_path(), models / f"{name}.gguf")
        yield agent


def place(source: Path, target: Path) -> None:
    """A model file under another name: a hard link where one can be made, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def turn(agent: Agent, model: str, **extra: Any) -> httpx.Response:
    body = {"prompt": "Say hi.", "model": model, "max_tokens": 2, **extra}
    return agent.api("POST", "/v1/turns", json=body)


def loaded(agent: Agent) -> dict[str, dict[str, Any]]:
    answer = agent.api("GET", "/v1/models/loaded")
    assert answer.status_code == 200, answer.text
    return {row["name"]: row for row in answer.json()}


def mapped(agent: Agent) -> set[str]:
    """The model files the agent process has mapped now."""
    maps = Path(f"/proc/{agent.pid}/maps").read_text()
    return {name for name in NAMES if f"/models/{name}.gguf" in maps}


def unload_all(agent: Agent) -> None:
    for name in loaded(agent):
        assert turn(agent, name, keep_alive=0).status_code == 200


def seconds_until(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() - time.time()


def test_the_least_recently_used_model_unloads_for_the_next_within_the_budget(agent: Agent) -> None:
    unload_all(agent)
    assert turn(agent, "alpha").status_code == 200
    assert set(loaded(agent)) == {"alpha"} and mapped(agent) == {"alpha"}

    assert turn(agent, "beta").status_code == 200
    rows = loaded(agent)
    assert set(rows) == {"beta"}, agent.output()
    assert mapped(agent) == {"beta"}  # alpha's weights are unmapped: its memory is back
    assert rows["beta"]["memory"] == MEMORY and rows["beta"]["busy"] is False
    assert "unloading the least recently used model" in agent.output()


def test_keep_alive_zero_unloads_right_after_the_turn(agent: Agent) -> None:
    answer = turn(agent, "alpha", keep_alive=0)
    assert answer.status_code == 200 and answer.json()["status"] == "ok"
    assert "alpha" not in loaded(agent) and "alpha" not in mapped(agent)


def test_keep_alive_sets_until_and_ps_shows_it(agent: Agent) -> None:
    assert turn(agent, "beta", keep_alive="10m").status_code == 200
    row = loaded(agent)["beta"]
    assert row["until"] == row["unloads_at"]
    assert 590 < seconds_until(row["unloads_at"]) <= 600
    shown = cli(agent.home, "models", "ps").stdout
    assert "beta" in shown and "145.5 MB" in shown, shown
    assert re.search(r"in (9m5\ds|10m00s)", shown), shown

    assert turn(agent, "beta", keep_alive=-1).status_code == 200
    row = loaded(agent)["beta"]
    assert (row["until"], row["unloads_at"]) == ("forever", None)
    assert "forever" in cli(agent.home, "models", "ps").stdout
    as_json = json.loads(cli(agent.home, "models", "ps", "--json").stdout)
    assert [(m["name"], m["until"]) for m in as_json] == [("beta", "forever")]


@pytest.mark.parametrize("value", ["soon", "5x", True, [1], 1e12])
def test_a_bad_keep_alive_is_a_400_naming_it(agent: Agent, value: object) -> None:
    answer = turn(agent, "alpha", keep_alive=value)
    assert answer.status_code == 400 and "keep_alive" in answer.json()["error"]["message"]
    chat = agent.api(
        "POST",
        "/v1/chat/completions",
        json={"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "keep_alive": value},
    )
    assert chat.status_code == 400 and "keep_alive" in chat.json()["error"]["message"]


def test_the_openai_sdk_sends_keep_alive_in_extra_body(agent: Agent) -> None:
    unload_all(agent)
    http_client = httpx.Client(transport=httpx.HTTPTransport(uds=str(agent.socket)), timeout=120.0)
    with openai.OpenAI(
        base_url="http://waystation/v1", api_key="unused", http_client=http_client, max_retries=0
    ) as client:
        completion = client.chat.completions.create(
            model="alpha",
            messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=2,
            extra_body={"keep_alive": "90s"},
        )
        assert completion.model == "alpha"
        assert 80 < seconds_until(loaded(agent)["alpha"]["unloads_at"]) <= 90

        client.chat.completions.create(
            model="alpha",
            messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=2,
            extra_body={"keep_alive": 0},
        )
        assert loaded(agent) == {} and mapped(agent) == set()
        with pytest.raises(openai.BadRequestError, match="keep_alive"):
            client.chat.completions.create(
                model="alpha", messages=[{"role": "user", "content": "hi"}], extra_body={"keep_alive": "x"}
            )
    http_client.close()


def test_the_command_line_passes_keep_alive(agent: Agent) -> None:
    done = cli(agent.home, "turn", "Say hi.", "--model", "alpha", "--max-tokens", "2", "--keep-alive=-1")
    assert done.returncode == 0, done.stderr
    assert loaded(agent)["alpha"]["until"] == "forever"
    done = cli(agent.home, "turn", "Say hi.", "--model", "alpha", "--max-tokens", "2", "--keep-alive", "0")
    assert done.returncode == 0, done.stderr
    assert "alpha" not in loaded(agent)
    refused = cli(agent.home, "turn", "Say hi.", "--model", "alpha", "--keep-alive", "later")
    assert refused.returncode != 0 and "keep_alive" in refused.stderr
