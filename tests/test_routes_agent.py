"""Provider routes end to end: a real agent process, the real CLI, loopback provider servers.

Two agents serve the whole module. `bare` has no provider key at all, only an Anthropic
subscription token, and is forced offline: it shows what every route lacks and refuses turns
without running anything. `keyed` holds fake credentials of every kind (provider keys in its
environment, a key in its config file), its cloud routes pointed at the loopback servers by
base-URL overrides; it runs turns on them, parks a whole turn while offline and runs it once
online. The last test searches everything both agents left behind — database, logs, every CLI
output, every socket answer, the event stream — for any 8-character piece of any credential.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiohttp import web
from support.agentproc import Agent, agent_env, make_home, remove_home, sse_events, wait_for
from support.providers import ProviderServer, Reply

from waystation.adapters.models.base import ToolCall

T = TypeVar("T")

ROUTE_NAMES = (
    "local",
    "openai",
    "anthropic",
    "deepseek",
    "xai",
    "vertex",
    "compatible",
    "ollama",
    "codex-seat",
    "claude-seat",
)
ROUTE_FIELDS = {"name", "provider", "auth_lane", "cost_lane", "model", "available", "reason"}
OFFLINE = "offline: cloud routes need the network"
WINDOW = 8  # a run of this many characters of a secret counts as the secret "in part"
# Credentials the agents must not see from the outer environment: set empty, they count as unset.
UNSET = {
    name: ""
    for name in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "DEEPSEEK_API_KEY",
        "XAI_API_KEY",
        "COMPATIBLE_API_KEY",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "ANTHROPIC_AUTH_TOKEN",
        "GOOGLE_API_KEY",
        "GOOGLE_CLOUD_PROJECT",
        "OLLAMA_HOST",
    )
}
RATE_HEADERS = {"x-ratelimit-remaining-requests": "499", "x-ratelimit-reset-tokens": "6ms"}
ANTHROPIC_RATE_HEADERS = {"anthropic-ratelimit-requests-remaining": "49"}


def fake_secret(prefix: str) -> str:
    """Letters and digits, so no 8-character piece of it turns up by chance in a hash or an id."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(32))


# --- the loopback servers ------------------------------------------------------------------------


class Loopback:
    """The provider wire-format server and a cookie-setting tool destination, on their own event
    loop in a thread, so the synchronous tests can drive real processes meanwhile."""

    def __init__(self, cookie: str) -> None:
        self.cookie = cookie
        self.cookie_requests: list[dict[str, str]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: ProviderServer = self.call(self._provider())
        self._runner: web.AppRunner = self.call(self._destination())
        self.destination = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)

    async def _provider(self) -> ProviderServer:
        return await ProviderServer().__aenter__()

    async def _destination(self) -> web.AppRunner:
        async def cookie(request: web.Request) -> web.Response:
            self.cookie_requests.append({k.lower(): v for k, v in request.headers.items()})
            await request.read()
            response = web.json_response({"stored": True})
            response.headers["Set-Cookie"] = f"session={self.cookie}; Path=/; HttpOnly"
            return response

        async def probe(request: web.Request) -> web.Response:
            return web.Response(status=204)

        app = web.Application()
        app.router.add_route("*", "/cookie", cookie)
        app.router.add_get("/generate_204", probe)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    def script(self, *replies: Reply) -> None:
        self.server.script(*replies)  # a list extend: atomic, the server's loop reads it later

    def requests_to(self, path: str) -> list[Any]:
        return [r for r in self.server.requests if r.path == path]

    def close(self) -> None:
        self.call(self.server.__aexit__(None, None, None))
        self.call(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# --- an agent, everything it said, and the CLI -----------------------------------------------------


class EventTap:
    """`GET /v1/events` read on a raw socket for as long as the agent runs; the bytes are kept."""

    def __init__(self, sock: Path) -> None:
        self.data = bytearray()
        self._stop = threading.Event()
        self._raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._raw.settimeout(0.2)
        self._raw.connect(str(sock))
        self._raw.sendall(b"GET /v1/events HTTP/1.1\r\nHost: waystation\r\nAccept: text/event-stream\r\n\r\n")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self._raw.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.data += chunk

    def close(self) -> bytes:
        self._stop.set()
        self._thread.join(5)
        self._raw.close()
        return bytes(self.data)


@dataclass
class Station:
    """One agent and a record of every answer it (or the CLI talking to it) gave."""

    agent: Agent
    env: dict[str, str]
    secrets: dict[str, str]
    said: list[tuple[str, bytes]] = field(default_factory=list)
    events: EventTap | None = None

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.agent.api(method, path, **kwargs)
        head = "".join(f"{k}: {v}\n" for k, v in response.headers.items()).encode()
        self.said.append((f"socket {method} {path}", head + response.content))
        return response

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "waystation", *args],
            env=agent_env(self.agent.home, self.env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.said.append((f"`waystation {' '.join(args)}` stdout", done.stdout.encode()))
        self.said.append((f"`waystation {' '.join(args)}` stderr", done.stderr.encode()))
        return done

    def receipts(self) -> list[dict[str, Any]]:
        response = self.api("GET", "/v1/receipts", params={"limit": 1000})
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found

    def turn_receipts(self, turn_id: str) -> list[dict[str, Any]]:
        return [r for r in self.receipts() if r["kind"] == "turn" and r["turn_id"] == turn_id]


def start_station(env: dict[str, str], credentials: dict[str, str], config: str = "") -> Station:
    home = make_home()
    if config:
        path = home / "config.toml"
        path.write_text(config)
        path.chmod(0o600)
    agent = Agent(home, env)
    station = Station(agent, env, credentials)
    try:
        agent.start()
        station.events = EventTap(agent.socket)
    except BaseException:
        agent.close()
        remove_home(home)
        raise
    return station


def stop_station(station: Station) -> None:
    if station.events is not None:
        station.events.close()
    station.agent.close()
    remove_home(station.agent.home)


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def credentials() -> dict[str, str]:
    return {
        "OPENAI_API_KEY": fake_secret("sk-proj-"),
        "ANTHROPIC_API_KEY": fake_secret("sk-ant-api03-"),
        "DEEPSEEK_API_KEY": fake_secret("sk-"),
        "XAI_API_KEY": fake_secret("xai-"),
        "CLAUDE_CODE_OAUTH_TOKEN": fake_secret("sk-ant-oat01-"),
        "config [routes.compatible] api_key": fake_secret("sk-cfg-"),  # "compat-m" would be in "compat-model"
        "cookie": fake_secret("COOKIESECRET"),
    }


@pytest.fixture(scope="module")
def loopback(credentials: dict[str, str]) -> Iterator[Loopback]:
    servers = Loopback(credentials["cookie"])
    yield servers
    problems = list(servers.server.problems)
    servers.close()
    assert problems == [], "\n\n".join(problems)


@pytest.fixture(scope="module")
def bare(credentials: dict[str, str]) -> Iterator[Station]:
    """No provider key; only an Anthropic subscription token. Forced offline."""
    token = credentials["CLAUDE_CODE_OAUTH_TOKEN"]
    env = {**UNSET, "CLAUDE_CODE_OAUTH_TOKEN": token, "WAYSTATION_CONNECTIVITY__MODE": "offline"}
    station = start_station(env, {"CLAUDE_CODE_OAUTH_TOKEN": token})
    yield station
    stop_station(station)


@pytest.fixture(scope="module")
def keyed(credentials: dict[str, str], loopback: Loopback) -> Iterator[Station]:
    """Every kind of credential; cloud routes on the loopback server; forced online."""
    url = loopback.server.url
    env = {
        **UNSET,
        **{k: v for k, v in credentials.items() if k.isupper()},
        "WAYSTATION_CONNECTIVITY__MODE": "online",
        "WAYSTATION_CONNECTIVITY__PROBE_URL": f"{loopback.destination}/generate_204",
        "WAYSTATION_ROUTES__OPENAI__BASE_URL": f"{url}/v1",
        "WAYSTATION_ROUTES__ANTHROPIC__BASE_URL": url,
        "WAYSTATION_ROUTES__DEEPSEEK__BASE_URL": f"{url}/v1",
        "WAYSTATION_ROUTES__XAI__BASE_URL": f"{url}/v1",
    }
    config = (
        "[routes.compatible]\n"
        f'base_url = "{url}/v1"\n'
        'model = "compat-model"\n'
        f'api_key = "{credentials["config [routes.compatible] api_key"]}"\n'
    )
    station = start_station(env, credentials, config)
    yield station
    stop_station(station)


# --- 1. every route, with what it lacks -------------------------------------------------------------


def test_routes_list_all_ten_with_their_reasons(bare: Station) -> None:
    answer = bare.api("GET", "/v1/routes")
    assert answer.status_code == 200, answer.text
    routes = answer.json()
    assert [r["name"] for r in routes] == list(ROUTE_NAMES)
    for route in routes:
        assert set(route) >= ROUTE_FIELDS, route
        assert isinstance(route["available"], bool)
        assert route["available"] == (route["reason"] is None), route
    by_name = {r["name"]: r for r in routes}

    # What a route lacks is the lasting reason, even while offline (the network comes second).
    assert by_name["openai"]["reason"] == "OPENAI_API_KEY is not set"
    for name, variable in (("deepseek", "DEEPSEEK_API_KEY"), ("xai", "XAI_API_KEY")):
        assert by_name[name]["reason"] == f"{variable} is not set"
    anthropic = by_name["anthropic"]
    assert anthropic["available"] is False
    assert "CLAUDE_CODE_OAUTH_TOKEN" in anthropic["reason"]
    assert "set ANTHROPIC_API_KEY" in anthropic["reason"]
    assert "disabled by policy" in by_name["claude-seat"]["reason"]
    assert by_name["compatible"]["reason"].startswith("no server configured")
    assert by_name["codex-seat"]["available"] is False and by_name["codex-seat"]["reason"]
    assert by_name["local"]["available"] is True
    assert by_name["local"]["cost_lane"] == "local" and by_name["local"]["auth_lane"] == "none"
    for name in ("openai", "anthropic", "deepseek", "xai", "compatible"):
        assert (by_name[name]["auth_lane"], by_name[name]["cost_lane"]) == ("api_key", "byok"), name
    for name in ("codex-seat", "claude-seat"):
        assert (by_name[name]["auth_lane"], by_name[name]["cost_lane"]) == ("seat", "provider_subscription")
    assert by_name["openai"]["model"] and by_name["anthropic"]["model"]

    listed = bare.cli("routes", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == routes

    table = bare.cli("routes")
    assert table.returncode == 0, table.stderr
    for name in ROUTE_NAMES:
        assert name in table.stdout
    assert "OPENAI_API_KEY is not set" in table.stdout

    status = bare.api("GET", "/v1/status").json()
    assert [r["name"] for r in status["routes"]] == list(ROUTE_NAMES)


# --- 2. refused, and nothing else ran ---------------------------------------------------------------


def test_a_turn_on_an_unavailable_route_is_refused_and_nothing_runs(bare: Station) -> None:
    before = {r["id"] for r in bare.receipts()}
    refused = bare.cli("turn", "hi", "--route", "openai")
    assert refused.returncode == 4, (refused.stdout, refused.stderr)
    assert "OPENAI_API_KEY is not set" in refused.stderr
    assert refused.stdout == ""

    answer = bare.api("POST", "/v1/turns", json={"prompt": "hi", "route": "openai"})
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "route_refused"
    assert "OPENAI_API_KEY is not set" in error["message"]

    # The subscription boundary: a subscription token alone runs no unattended turn.
    boundary = bare.api("POST", "/v1/turns", json={"prompt": "hi", "route": "anthropic"})
    assert boundary.status_code == 409, boundary.text
    assert "ANTHROPIC_API_KEY" in boundary.json()["error"]["message"]
    policy = bare.cli("turn", "hi", "--route", "claude-seat", "--json")
    assert policy.returncode == 4, (policy.stdout, policy.stderr)
    assert "disabled by policy" in policy.stderr

    new = [r for r in bare.receipts() if r["id"] not in before]
    assert [(r["kind"], r["status"], r["route"]["name"]) for r in new] == [
        ("turn", "refused", "openai"),
        ("turn", "refused", "openai"),
        ("turn", "refused", "anthropic"),
        ("turn", "refused", "claude-seat"),
    ]
    for receipt in new[:2]:
        assert receipt["route"]["provider"] == "openai"
        assert (receipt["route"]["auth_lane"], receipt["route"]["cost_lane"]) == ("api_key", "byok")
        assert receipt["reason"] == "OPENAI_API_KEY is not set"
    assert "ANTHROPIC_API_KEY" in new[2]["reason"]
    assert (new[3]["route"]["auth_lane"], new[3]["route"]["cost_lane"]) == ("seat", "provider_subscription")
    for receipt in new:
        assert receipt["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
        assert receipt["credits_used"] == 0 and receipt["model_answered"] is None
    # No fallback: the local model never ran, never even loaded.
    assert not [r for r in bare.receipts() if r["route"]["name"] == "local"]
    assert bare.api("GET", "/v1/status").json()["model"]["loaded"] is False
    assert bare.api("GET", "/v1/tasks").json() == []


# --- 3. BYOK routes through base-URL overrides ------------------------------------------------------


def test_openai_route_through_a_base_url_override(keyed: Station, loopback: Loopback) -> None:
    loopback.script(
        Reply(
            text="Hello from the provider.",
            model="gpt-4o-mini-2024-07-18",
            prompt_tokens=23,
            completion_tokens=5,
            headers=RATE_HEADERS,
        )
    )
    seen = len(loopback.requests_to("/v1/chat/completions"))
    done = keyed.cli("turn", "hi", "--route", "openai", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "ok" and result["route"] == "openai"
    assert result["text"] == "Hello from the provider."
    assert (result["model"], result["model_answered"]) == ("gpt-4o-mini", "gpt-4o-mini-2024-07-18")

    request = loopback.requests_to("/v1/chat/completions")[seen]
    assert request.headers["authorization"] == f"Bearer {keyed.secrets['OPENAI_API_KEY']}"
    assert request.body["model"] == "gpt-4o-mini"

    receipt = keyed.api("GET", f"/v1/receipts/{result['receipt_id']}").json()
    assert receipt["status"] == "ok" and receipt["kind"] == "turn"
    assert receipt["route"] == {
        "name": "openai",
        "provider": "openai",
        "auth_lane": "api_key",
        "cost_lane": "byok",
        "model": "gpt-4o-mini",
    }
    assert receipt["usage"] == {"prompt_tokens": 23, "completion_tokens": 5}
    assert receipt["credits_used"] == 0
    assert receipt["model_answered"] == "gpt-4o-mini-2024-07-18"
    assert receipt["telemetry"] == RATE_HEADERS
    assert "gpt-4o-mini-2024-07-18" not in receipt["telemetry"].values()

    # Status shows the model asked for and the one that answered, as separate fields.
    for routes in (keyed.api("GET", "/v1/routes").json(), keyed.api("GET", "/v1/status").json()["routes"]):
        openai = next(r for r in routes if r["name"] == "openai")
        assert (openai["model"], openai["model_answered"]) == ("gpt-4o-mini", "gpt-4o-mini-2024-07-18")


def test_anthropic_route_streamed_through_a_base_url_override(keyed: Station, loopback: Loopback) -> None:
    loopback.script(
        Reply(
            text="Streamed from Claude.",
            model="claude-sonnet-4-5-20250929",
            prompt_tokens=31,
            completion_tokens=9,
            headers=ANTHROPIC_RATE_HEADERS,
        )
    )
    seen = len(loopback.requests_to("/v1/messages"))
    body = {"prompt": "hi", "route": "anthropic", "stream": True}
    with keyed.agent.client(timeout=30) as client, client.stream("POST", "/v1/turns", json=body) as answer:
        assert answer.status_code == 200
        events = [(e.event, e.data) for e in sse_events(answer.iter_lines())]
    keyed.said.append(("socket POST /v1/turns (stream)", json.dumps(events).encode()))
    tokens = "".join(data["text"] for kind, data in events if kind == "token")
    assert tokens == "Streamed from Claude."
    assert events[-1][0] == "done", events
    result = events[-1][1]
    assert result["route"] == "anthropic" and result["status"] == "ok"

    request = loopback.requests_to("/v1/messages")[seen]
    assert request.headers["x-api-key"] == keyed.secrets["ANTHROPIC_API_KEY"]
    assert "authorization" not in request.headers

    receipt = keyed.api("GET", f"/v1/receipts/{result['receipt_id']}").json()
    assert receipt["route"] == {
        "name": "anthropic",
        "provider": "anthropic",
        "auth_lane": "api_key",
        "cost_lane": "byok",
        "model": "claude-sonnet-4-5",
    }
    assert receipt["usage"] == {"prompt_tokens": 31, "completion_tokens": 9}
    assert receipt["credits_used"] == 0
    assert receipt["model_answered"] == "claude-sonnet-4-5-20250929"
    assert receipt["telemetry"] == ANTHROPIC_RATE_HEADERS


# --- 4. offline: refused, or the whole turn parked ---------------------------------------------------


def test_offline_refuses_cloud_routes_or_parks_the_whole_turn(keyed: Station, loopback: Loopback) -> None:
    keyed.agent.set_mode("offline")
    try:
        routes = {r["name"]: r for r in keyed.api("GET", "/v1/routes").json()}
        assert (routes["openai"]["available"], routes["openai"]["reason"]) == (False, OFFLINE)
        assert routes["compatible"]["available"] is True  # its server is on this host

        seen = len(loopback.server.requests)
        refused = keyed.cli("turn", "hi", "--route", "openai")
        assert refused.returncode == 4, (refused.stdout, refused.stderr)
        assert OFFLINE in refused.stderr
        answer = keyed.api("POST", "/v1/turns", json={"prompt": "hi", "route": "openai"})
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["code"] == "route_refused"
        assert OFFLINE in answer.json()["error"]["message"]

        parked_api = keyed.api(
            "POST", "/v1/turns", json={"prompt": "later, please", "route": "openai", "defer": True}
        )
        assert parked_api.status_code == 200, parked_api.text
        parked_cli = keyed.cli("turn", "later, please", "--route", "openai", "--defer", "--json")
        assert parked_cli.returncode == 0, parked_cli.stderr
        parked = [parked_api.json(), json.loads(parked_cli.stdout)]
        for turn in parked:
            assert turn["status"] == "parked" and len(turn["deferred_task_ids"]) == 1, turn
        task_ids = [t["deferred_task_ids"][0] for t in parked]
        pending = keyed.agent.tasks("pending")
        assert {t["id"] for t in pending} == set(task_ids)
        assert {(t["tool"], t["turn_id"]) for t in pending} == {("turn", t["turn_id"]) for t in parked}
        for turn in parked:
            [receipt] = keyed.turn_receipts(turn["turn_id"])
            assert receipt["status"] == "parked"
            assert (receipt["route"]["name"], receipt["route"]["cost_lane"]) == ("openai", "byok")
            assert receipt["deferred_task_ids"] == turn["deferred_task_ids"]
        time.sleep(0.3)
        assert len(loopback.server.requests) == seen, "a provider was called while offline"
        loopback.script(
            *(Reply(text="Run once online.", model="gpt-4o-mini-2024-07-18", headers=RATE_HEADERS),) * 2
        )
    finally:
        keyed.agent.set_mode("online")

    def settled() -> bool:
        states = {keyed.api("GET", f"/v1/tasks/{i}").json()["state"] for i in task_ids}
        return states == {"done"}

    wait_for(settled, 20, what="the deferred turns to run")
    assert len(loopback.server.requests) == seen + 2
    for turn in parked:
        first, second = keyed.turn_receipts(turn["turn_id"])
        assert (first["status"], second["status"]) == ("parked", "ok")
        assert second["route"]["name"] == "openai" and second["route"]["auth_lane"] == "api_key"
        assert second["usage"] == {"prompt_tokens": 11, "completion_tokens": 7}
        assert second["model_answered"] == "gpt-4o-mini-2024-07-18"
        assert second["credits_used"] == 0
    verify = keyed.api("GET", "/v1/receipts/verify")
    assert verify.status_code == 200 and verify.json()["ok"] is True, verify.text


# --- 5. no credential anywhere -------------------------------------------------------------------


def leaks(blob: bytes, credentials: dict[str, str]) -> list[str]:
    found = []
    for name, secret in credentials.items():
        for i in range(len(secret) - WINDOW + 1):
            piece = secret[i : i + WINDOW].encode()
            at = blob.find(piece)
            if at >= 0:
                context = blob[max(0, at - 60) : at + 60].decode(errors="replace")
                found.append(f"{name} ({piece.decode()!r}): ...{context}...")
                break
    return found


def files_of(home: Path) -> list[Path]:
    """Everything the agent wrote in its home; config.toml holds a key on purpose and is left out."""
    return [p for p in sorted(home.rglob("*")) if p.is_file() and p.name != "config.toml"]


def test_no_credential_leaks_anywhere(keyed: Station, bare: Station, loopback: Loopback) -> None:
    creds = keyed.secrets
    cookie_url = f"{loopback.destination}/cookie"

    # An ok turn on the config-file key.
    loopback.script(Reply(text="compatible ok", model="compat-model-q4"))
    ok = keyed.cli("turn", "hi", "--route", "compatible", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "ok"
    request = loopback.requests_to("/v1/chat/completions")[-1]
    assert request.headers["authorization"] == f"Bearer {creds['config [routes.compatible] api_key']}"

    # A turn whose tool call is delivered at once to a destination that sets a cookie.
    call = ToolCall("call_cookie", "http_request", {"method": "GET", "url": cookie_url})
    loopback.script(Reply(tool_calls=[call]), Reply(text="The cookie was set."))
    tooled = keyed.api("POST", "/v1/turns", json={"prompt": f"fetch {cookie_url}", "route": "openai"})
    assert tooled.status_code == 200, tooled.text
    assert tooled.json()["tool_calls"][0]["status"] == "done"

    # Tasks to the same destination: the cookie is neither kept nor sent back.
    added = keyed.cli(
        "queue",
        "add",
        "http_request",
        "--args",
        json.dumps({"method": "POST", "url": cookie_url, "json": {}}),
        "--json",
    )
    assert added.returncode == 0, added.stderr
    task_id = json.loads(added.stdout)["id"]
    posted = keyed.api("POST", "/v1/tasks", json={"tool": "web_fetch", "args": {"url": cookie_url}})
    assert posted.status_code == 201, posted.text
    cookie_tasks = [task_id, posted.json()["id"]]

    def delivered() -> bool:
        return all(keyed.api("GET", f"/v1/tasks/{i}").json()["state"] == "done" for i in cookie_tasks)

    wait_for(delivered, 15, what="the cookie tasks to be delivered")
    assert len(loopback.cookie_requests) == 3
    assert not [r for r in loopback.cookie_requests if "cookie" in r]

    # Providers that refuse the key and echo it back: refused, without repeating it.
    loopback.script(Reply(status=401))
    refused = keyed.cli("turn", "hi", "--route", "deepseek", "--json")
    assert refused.returncode == 4, (refused.stdout, refused.stderr)
    for route in ("xai", "anthropic"):
        loopback.script(Reply(status=401))
        answer = keyed.api("POST", "/v1/turns", json={"prompt": "hi", "route": route})
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["code"] == "route_refused"
    echoed = [
        r.headers.get("authorization") or r.headers.get("x-api-key") for r in loopback.server.requests[-3:]
    ]
    assert echoed == [
        f"Bearer {creds['DEEPSEEK_API_KEY']}",
        f"Bearer {creds['XAI_API_KEY']}",
        creds["ANTHROPIC_API_KEY"],
    ]
    refusals = [
        r
        for r in keyed.receipts()
        if r["status"] == "refused" and r["route"]["name"] in ("deepseek", "xai", "anthropic")
    ]
    assert len(refusals) == 3
    for receipt in refusals:
        assert (receipt["route"]["auth_lane"], receipt["route"]["cost_lane"]) == ("api_key", "byok")
        assert receipt["reason"]

    # Everything the CLI shows, and everything the socket answers.
    for station in (keyed, bare):
        for args in (
            ("status", "--json"),
            ("status",),
            ("routes", "--json"),
            ("receipts", "export"),
            ("receipts", "ls", "--json"),
            ("queue", "ls", "--json"),
            ("connectivity", "--json"),
        ):
            shown = station.cli(*args)
            assert shown.returncode == 0, (args, shown.stderr)
        for path in ("/v1/status", "/v1/routes", "/v1/receipts", "/v1/tasks", "/v1/connectivity", "/metrics"):
            assert station.api("GET", path).status_code == 200
        for task in station.api("GET", "/v1/tasks").json():
            station.api("GET", f"/v1/tasks/{task['id']}")
        for receipt in station.receipts():
            station.api("GET", f"/v1/receipts/{receipt['id']}")
        assert station.api("GET", "/v1/receipts/verify").json()["ok"] is True
    exported = [json.loads(line) for line in keyed.cli("receipts", "export").stdout.splitlines()]
    listed = len(keyed.receipts())
    assert len(exported) == listed >= 7, (len(exported), listed)

    time.sleep(0.3)  # the last events reach the tap
    problems: list[str] = []
    for station in (keyed, bare):
        home = station.agent.home
        assert station.events is not None
        events = station.events.close()
        station.events = None
        if station is keyed:  # turns, tasks and their receipts went by
            for kind in (b"event: turn", b"event: task", b"event: receipt"):
                assert kind in events, (kind, events[:500])
        sources = [*station.said, ("GET /v1/events", events)]
        sources += [(str(p), p.read_bytes()) for p in files_of(home)]
        assert station.agent.stop() == 0
        # After the stop the WAL is folded into the database: search what is on disk again.
        sources += [(f"{p} (after stop)", p.read_bytes()) for p in files_of(home)]
        names = {str(p.relative_to(home)) for p in files_of(home)}
        assert {"waystation.db", "agent-output.log"} <= names, names
        for where, blob in sources:
            problems += [f"{where}: {leak}" for leak in leaks(blob, station.secrets)]
    assert problems == [], "\n".join(problems)
