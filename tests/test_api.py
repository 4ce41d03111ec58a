"""The socket API end to end: the agent's serve() in-process (support/inproc.py) on its real Unix
socket, real loopback destinations; a real `waystation run` process where a test needs one (a
second process on the same home, kill -9).

One agent serves the whole module (forced offline unless a test says otherwise), so the tests
create their own tasks and never assume an empty queue. Tests that go online put the agent back
offline when they finish.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import itertools
import json
import os
import re
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.agentproc import (
    AGENT_COMMAND,
    SSE,
    Agent,
    Receiver,
    agent_env,
    free_port,
    raw_request,
    sse_events,
    status_code,
    wait_for,
)
from support.inproc import InProcessAgent, inprocess_agent

import waystation

STATES = {"pending", "running", "done", "dead", "cancelled", "expired"}
TASK_KEYS = {
    "id", "tool", "args", "idempotency_key", "state", "attempts", "next_attempt_at",
    "last_error", "result", "created_at", "updated_at", "turn_id",
}  # fmt: skip
RECEIPT_KEYS = {
    "id", "kind", "created_at", "status", "reason", "route", "usage", "credits_used",
    "duration_ms", "turn_id", "task_id", "deferred_task_ids", "prev_hash", "hash",
}  # fmt: skip
ROUTE_KEYS = {"name", "provider", "auth_lane", "cost_lane", "model", "available", "reason"}
GENESIS = "0" * 64


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recv() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def agent(recv: Receiver) -> Iterator[InProcessAgent]:
    with inprocess_agent(
        {
            "WAYSTATION_CONNECTIVITY__MODE": "offline",
            "WAYSTATION_CONNECTIVITY__PROBE_URL": recv.url("/generate_204"),
            # Short backoffs keep the retry tests quick; Retry-After still has the last word.
            "WAYSTATION_QUEUE__BACKOFF_BASE_S": "0.5",
        }
    ) as a:
        yield a


@pytest.fixture
def client(agent: InProcessAgent) -> Iterator[httpx.Client]:
    with agent.client() as c:
        yield c


@pytest.fixture
def online(agent: InProcessAgent) -> Iterator[None]:
    agent.set_mode("online")
    try:
        yield
    finally:
        agent.set_mode("offline")


# --- helpers -------------------------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str) and re.fullmatch(r"[a-z][a-z0-9_]*", error["code"]), error
    assert isinstance(error["message"], str) and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def new_key(tag: str = "k") -> str:
    return f"{tag}-{uuid.uuid4().hex}"


def create(
    client: httpx.Client, url: str, key: str | None = None, tool: str = "http_request", **args: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"tool": tool, "args": {"url": url, **args}}
    if key is not None:
        body["idempotency_key"] = key
    response = client.post("/v1/tasks", json=body)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


def get_task(client: httpx.Client, task_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/tasks/{task_id}")
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


def wait_state(client: httpx.Client, task_id: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
    return wait_for(
        lambda: (t := get_task(client, task_id))["state"] == state and t,
        timeout,
        what=f"task {task_id} to be {state}",
    )


def receipts_for(client: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if after:
            params["after"] = after
        page = client.get("/v1/receipts", params=params).json()
        found += [r for r in page if r["task_id"] == task_id]
        if len(page) < 1000:
            return found
        after = page[-1]["id"]


def recompute_hash(receipt: dict[str, Any]) -> str:
    unhashed = {k: v for k, v in receipt.items() if k != "hash"}
    canonical = json.dumps(unhashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def open_events(client: httpx.Client, headers: dict[str, str] | None = None) -> Any:
    return client.stream("GET", "/v1/events", headers=headers or {}, timeout=httpx.Timeout(10.0))


def subscribed(response: httpx.Response) -> Iterator[SSE]:
    """Events of an open stream, after its opening comment (by then the agent has subscribed us)."""
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = response.iter_lines()
    first = next(lines)
    assert first.startswith(":"), first
    return sse_events(lines)


def next_matching(events: Iterator[SSE], predicate: Any, limit: int = 500) -> SSE:
    for _, event in zip(range(limit), events, strict=False):
        if predicate(event):
            return event
    raise AssertionError("the expected event did not arrive")


# --- status, connectivity, routes ----------------------------------------------------------------


def test_status_shape(client: httpx.Client) -> None:
    response = client.get("/v1/status")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["version"] == waystation.__version__
    assert isinstance(body["uptime_s"], int | float) and body["uptime_s"] >= 0
    connectivity = body["connectivity"]
    assert {"state", "mode", "since", "last_probe"} <= set(connectivity)
    assert connectivity["state"] == "offline" and connectivity["mode"] == "offline"
    assert set(body["queue"]) == STATES
    assert all(isinstance(n, int) and n >= 0 for n in body["queue"].values())
    assert {"backend", "path", "loaded"} <= set(body["model"])
    assert isinstance(body["model"]["loaded"], bool)
    assert isinstance(body["routes"], list)
    time.sleep(0.05)
    assert client.get("/v1/status").json()["uptime_s"] > body["uptime_s"]


def test_connectivity_get_and_put(client: httpx.Client) -> None:
    response = client.get("/v1/connectivity")
    assert response.status_code == 200
    body = response.json()
    assert {"state", "mode", "since", "last_probe"} <= set(body)
    assert body["state"] in {"online", "offline", "portal", "unknown"}
    assert body["mode"] == "offline"

    response = client.put("/v1/connectivity", json={"mode": "offline"})
    assert response.status_code == 200
    assert response.json()["mode"] == "offline" and response.json()["state"] == "offline"


@pytest.mark.parametrize(
    "body",
    [b'{"mode": "airplane"}', b'{"mode": 1}', b"{}", b'"offline"', b"[]", b"{nope", b""],
    ids=["unknown-mode", "number", "missing", "string", "array", "malformed", "empty"],
)
def test_connectivity_put_rejects_bad_input(client: httpx.Client, body: bytes) -> None:
    response = client.put("/v1/connectivity", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400)
    assert client.get("/v1/connectivity").json()["mode"] == "offline"


def test_routes_is_an_array_of_routes(client: httpx.Client) -> None:
    response = client.get("/v1/routes")
    assert response.status_code == 200
    routes = response.json()
    assert isinstance(routes, list)
    for route in routes:
        assert set(route) >= ROUTE_KEYS, route
        assert isinstance(route["available"], bool)
        assert route["auth_lane"] in {"none", "api_key", "seat", "oauth", "credits"}, route
        assert route["cost_lane"] in {"local", "byok", "provider_subscription", "credits"}, route
        assert route["available"] or route["reason"], "an unavailable route says why"
    names = [route["name"] for route in routes]
    assert "local" in names
    assert len(names) == len(set(names))
    assert client.get("/v1/status").json()["routes"] == routes


def test_unknown_path_and_method_are_json_errors(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing-here"), 404)
    assert_error(client.delete("/v1/status"), 405)


# --- tasks ---------------------------------------------------------------------------------------


def test_create_task_201_then_200_same_key_same_args(client: httpx.Client, recv: Receiver) -> None:
    key = new_key("create")
    args = {"method": "POST", "url": recv.url("/ok/create"), "json": {"a": 1}}
    body = {"tool": "http_request", "args": args, "idempotency_key": key}
    first = client.post("/v1/tasks", json=body)
    assert first.status_code == 201, first.text
    task = first.json()
    assert set(task) >= TASK_KEYS
    assert task["state"] == "pending" and task["attempts"] == 0
    assert task["idempotency_key"] == key
    assert task["tool"] == "http_request"
    assert task["args"]["url"] == recv.url("/ok/create")
    assert task["id"] and task["created_at"] and task["updated_at"]

    again = client.post("/v1/tasks", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == task["id"]


def test_create_task_409_same_key_other_args(client: httpx.Client, recv: Receiver) -> None:
    key = new_key("conflict")
    task = create(client, recv.url("/ok/conflict-a"), key)
    response = client.post(
        "/v1/tasks",
        json={"tool": "http_request", "args": {"url": recv.url("/ok/conflict-b")}, "idempotency_key": key},
    )
    assert_error(response, 409, "idempotency_conflict")
    # Same args through another tool is "other args" too.
    response = client.post(
        "/v1/tasks",
        json={"tool": "web_fetch", "args": {"url": recv.url("/ok/conflict-a")}, "idempotency_key": key},
    )
    assert_error(response, 409, "idempotency_conflict")
    assert get_task(client, task["id"])["args"]["url"] == recv.url("/ok/conflict-a")


def test_concurrent_creates_with_one_key_make_one_task(agent: InProcessAgent, recv: Receiver) -> None:
    key = new_key("race")
    same = {"tool": "http_request", "args": {"url": recv.url("/ok/race")}, "idempotency_key": key}
    other = {"tool": "http_request", "args": {"url": recv.url("/ok/race-other")}, "idempotency_key": key}
    bodies = [same] * 12 + [other] * 4
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: raw_request(agent.socket, "POST", "/v1/tasks", b), bodies))
    assert all(a is not None for a in answers)
    statuses = collections.Counter(a[0] for a in answers if a)
    ids = {a[1]["id"] for a in answers if a and a[0] in (200, 201)}
    assert len(ids) == 1, answers
    (task_id,) = ids
    task = agent.api("GET", f"/v1/tasks/{task_id}").json()
    if task["args"]["url"] == recv.url("/ok/race"):  # the usual winner: one of the twelve
        assert statuses == {201: 1, 200: 11, 409: 4}, statuses
    else:
        assert statuses == {201: 1, 200: 3, 409: 12}, statuses


def test_tasks_without_a_key_get_distinct_generated_keys(client: httpx.Client, recv: Receiver) -> None:
    one = create(client, recv.url("/ok/nokey"))
    two = create(client, recv.url("/ok/nokey"))
    assert one["id"] != two["id"]
    assert one["idempotency_key"] and two["idempotency_key"]
    assert one["idempotency_key"] != two["idempotency_key"]
    assert get_task(client, one["id"])["idempotency_key"] == one["idempotency_key"]


def test_create_task_422_unknown_tool(client: httpx.Client) -> None:
    response = client.post("/v1/tasks", json={"tool": "teleport", "args": {"url": "http://example.com/"}})
    assert_error(response, 422, "unknown_tool")


@pytest.mark.parametrize(
    "args",
    [
        {"url": "file:///etc/passwd"},
        {"url": "ftp://example.com/x"},
        {"url": "http://"},
        {},
        {"url": "http://example.com/", "bogus": 1},
        {"url": "http://example.com/", "method": "TELEPORT"},
        {"url": "http://example.com/", "headers": {"Idempotency-Key": "mine"}},
        ["http://example.com/"],
    ],
    ids=[
        "file-url",
        "ftp",
        "no-host",
        "missing-url",
        "unknown-arg",
        "bad-method",
        "reserved-header",
        "array",
    ],
)
def test_create_task_422_bad_args(client: httpx.Client, args: Any) -> None:
    response = client.post("/v1/tasks", json={"tool": "http_request", "args": args})
    assert_error(response, 422, "invalid_arguments")


def test_web_fetch_validates_too(client: httpx.Client) -> None:
    assert_error(
        client.post("/v1/tasks", json={"tool": "web_fetch", "args": {"url": "file:///etc/passwd"}}), 422
    )


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "malformed"),
        (b"\xff\xfe\x00", "not utf-8"),
        (b"", "empty"),
        (b"[1, 2]", "array"),
        (b'"http_request"', "string"),
        (b"null", "null"),
        (b'{"args": {"url": "http://example.com/"}}', "no tool"),
        (b'{"tool": 5, "args": {}}', "tool not a string"),
        (
            b'{"tool": "http_request", "args": {"url": "http://example.com/"}, "idempotency_key": 7}',
            "key type",
        ),
        (
            b'{"tool": "http_request", "args": {"url": "http://example.com/"}, "idempotency_key": ""}',
            "empty key",
        ),
        (
            b'{"tool": "http_request", "args": {"url": "http://example.com/"}, "expires_at": "soon"}',
            "bad expiry",
        ),
    ],
)
def test_create_task_400_bad_body(client: httpx.Client, content: bytes, why: str) -> None:
    response = client.post("/v1/tasks", content=content, headers={"Content-Type": "application/json"})
    assert_error(response, 400)


def test_create_task_413_body_over_8_mib(client: httpx.Client, agent: InProcessAgent) -> None:
    filler = "x" * (8 * 1024 * 1024)
    content = json.dumps(
        {"tool": "http_request", "args": {"url": "http://example.com/", "body": filler}}
    ).encode()
    assert len(content) > 8 * 1024 * 1024
    response = client.post("/v1/tasks", content=content, headers={"Content-Type": "application/json"})
    assert_error(response, 413)
    assert agent.api("GET", "/v1/status").status_code == 200


def test_list_tasks_by_state_with_limit(client: httpx.Client, recv: Receiver) -> None:
    made = [create(client, recv.url(f"/ok/list-{i}")) for i in range(3)]
    response = client.get("/v1/tasks", params={"state": "pending", "limit": 2})
    assert response.status_code == 200
    listed = response.json()
    assert isinstance(listed, list) and len(listed) == 2
    assert all(t["state"] == "pending" for t in listed)
    everything = client.get("/v1/tasks", params={"limit": 1000}).json()
    assert {t["id"] for t in made} <= {t["id"] for t in everything}
    assert all(set(t) >= TASK_KEYS for t in everything)


@pytest.mark.parametrize(
    "params",
    [
        {"state": "bogus"},
        {"state": "PENDING"},
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "many"},
        {"limit": "1e9"},
    ],
)
def test_list_tasks_rejects_bad_query(client: httpx.Client, params: dict[str, str]) -> None:
    assert_error(client.get("/v1/tasks", params=params), 400)


def test_get_task_and_404(client: httpx.Client, recv: Receiver) -> None:
    task = create(client, recv.url("/ok/get"))
    assert get_task(client, task["id"]) == task
    assert_error(client.get("/v1/tasks/t_doesnotexist"), 404, "not_found")
    assert_error(client.post("/v1/tasks/t_doesnotexist/retry"), 404, "not_found")
    assert_error(client.post("/v1/tasks/t_doesnotexist/cancel"), 404, "not_found")


def test_cancel_and_retry(client: httpx.Client, recv: Receiver) -> None:
    task = create(client, recv.url("/ok/cancel"))
    response = client.post(f"/v1/tasks/{task['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert_error(client.post(f"/v1/tasks/{task['id']}/cancel"), 409, "invalid_transition")
    cancelled = receipts_for(client, task["id"])
    assert len(cancelled) == 1 and cancelled[0]["kind"] == "task"
    # Not a failure: the contract's status for work deliberately not done, its reason says why.
    assert cancelled[0]["status"] == "refused" and cancelled[0]["reason"].startswith("cancelled")

    response = client.post(f"/v1/tasks/{task['id']}/retry")
    assert response.status_code == 200, response.text
    retried = response.json()
    assert retried["state"] == "pending" and retried["attempts"] == 0
    assert retried["idempotency_key"] == task["idempotency_key"]
    assert client.post(f"/v1/tasks/{task['id']}/cancel").status_code == 200


def test_flush_while_offline(client: httpx.Client) -> None:
    response = client.post("/v1/flush")
    assert response.status_code in (200, 202), response.text
    body = response.json()
    assert isinstance(body, dict)
    assert body["connectivity"] == "offline"


# --- receipts ------------------------------------------------------------------------------------


def test_receipts_chain_order_and_after(client: httpx.Client, recv: Receiver) -> None:
    for i in range(3):  # make sure there are some receipts
        task = create(client, recv.url(f"/ok/receipt-{i}"))
        assert client.post(f"/v1/tasks/{task['id']}/cancel").status_code == 200
    response = client.get("/v1/receipts", params={"limit": 1000})
    assert response.status_code == 200
    chain = response.json()
    assert isinstance(chain, list) and len(chain) >= 3
    previous = GENESIS
    for receipt in chain:
        assert set(receipt) >= RECEIPT_KEYS, receipt
        assert receipt["prev_hash"] == previous, "receipts must come in chain order, oldest first"
        assert receipt["hash"] == recompute_hash(receipt)
        previous = receipt["hash"]

    after = client.get("/v1/receipts", params={"after": chain[0]["id"], "limit": 1000}).json()
    assert after == chain[1:]
    assert client.get("/v1/receipts", params={"limit": 1}).json() == chain[:1]
    assert client.get(f"/v1/receipts/{chain[-1]['id']}").json() == chain[-1]
    assert_error(client.get("/v1/receipts/r_doesnotexist"), 404, "not_found")
    assert_error(client.get("/v1/receipts", params={"after": "r_doesnotexist"}), 404)
    assert_error(client.get("/v1/receipts", params={"limit": "zero"}), 400)

    verify = client.get("/v1/receipts/verify")
    assert verify.status_code == 200
    assert verify.json()["ok"] is True
    assert verify.json()["count"] >= len(chain)


# --- events --------------------------------------------------------------------------------------


def test_events_task_and_connectivity(agent: InProcessAgent, client: httpx.Client, recv: Receiver) -> None:
    with agent.client() as stream_client, open_events(stream_client) as response:
        events = subscribed(response)
        task = create(client, recv.url("/ok/events"))
        event = next_matching(events, lambda e: e.event == "task" and e.data["id"] == task["id"])
        assert event.data["state"] == "pending" and isinstance(event.id, int)

        try:
            agent.set_mode("online")
            event = next_matching(events, lambda e: e.event == "connectivity")
            assert event.data["state"] == "online" and event.data["mode"] == "online"
        finally:
            agent.set_mode("offline")
        event = next_matching(events, lambda e: e.event == "connectivity")
        assert event.data["state"] == "offline"


def test_a_refused_turn_is_announced_with_its_receipt(agent: InProcessAgent, client: httpx.Client) -> None:
    """Every finished turn is an event, refused ones too, with its receipt beside it."""
    with agent.client() as stream_client, open_events(stream_client) as response:
        events = subscribed(response)
        refused = client.post("/v1/turns", json={"prompt": "hi", "route": "openai"})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "route_refused"
        turn = next_matching(events, lambda e: e.event == "turn" and e.data["route"] == "openai")
        receipt = next_matching(
            events, lambda e: e.event == "receipt" and e.data.get("turn_id") == turn.data["turn_id"]
        )
    assert turn.data["status"] == "refused" and turn.data["resumed"] is False
    assert receipt.data["status"] == "refused" and receipt.data["route"]["auth_lane"] == "api_key"


def test_events_resume_with_last_event_id(
    agent: InProcessAgent, client: httpx.Client, recv: Receiver
) -> None:
    with agent.client() as stream_client:
        with open_events(stream_client) as response:
            events = subscribed(response)
            first = create(client, recv.url("/ok/resume-1"))
            seen = next_matching(events, lambda e: e.event == "task" and e.data["id"] == first["id"])
        assert seen.id is not None

        # While nobody listens: two new tasks, and one of them cancelled (a task and a receipt event).
        second = create(client, recv.url("/ok/resume-2"))
        third = create(client, recv.url("/ok/resume-3"))
        assert client.post(f"/v1/tasks/{second['id']}/cancel").status_code == 200

        wanted = {
            ("task", second["id"], "pending"),
            ("task", third["id"], "pending"),
            ("task", second["id"], "cancelled"),
            ("receipt", second["id"], None),
        }
        with open_events(stream_client, {"Last-Event-ID": str(seen.id)}) as response:
            events = subscribed(response)
            ids: list[int] = []
            for event in events:
                assert event.id is not None and event.id > seen.id
                ids.append(event.id)
                if event.event == "task":
                    wanted.discard(("task", event.data["id"], event.data["state"]))
                elif event.event == "receipt":
                    wanted.discard(("receipt", event.data["task_id"], None))
                if not wanted:
                    break
            assert ids == sorted(ids)
        assert_error(stream_client.get("/v1/events", headers={"Last-Event-ID": "yesterday"}), 400)


# --- metrics -------------------------------------------------------------------------------------

SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? (-?[0-9.e+]+|NaN|[+-]Inf)$'
)


def test_metrics_prometheus_text(client: httpx.Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert text.endswith("\n")
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples[line.rsplit(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
    for state in STATES:
        assert f'waystation_queue_tasks{{state="{state}"}}' in samples
    assert samples['waystation_connectivity_state{state="offline"}'] == 1
    assert "# TYPE waystation_queue_tasks gauge" in text


# --- delivery ------------------------------------------------------------------------------------


def test_offline_tasks_stay_parked(agent: InProcessAgent, client: httpx.Client, recv: Receiver) -> None:
    agent.set_mode("offline")
    made = [create(client, recv.url(f"/ok/parked-{i}"), new_key("parked")) for i in range(3)]
    assert client.post("/v1/flush").status_code in (200, 202)
    time.sleep(1.5)
    assert recv.hits("/ok/parked-") == []
    for task in made:
        now = get_task(client, task["id"])
        assert now["state"] == "pending" and now["attempts"] == 0
    for task in made:
        client.post(f"/v1/tasks/{task['id']}/cancel")


def test_online_delivers_promptly_with_idempotency_key(
    agent: Agent, client: httpx.Client, recv: Receiver
) -> None:
    agent.set_mode("offline")
    made = [create(client, recv.url(f"/ok/deliver-{i}"), new_key("deliver")) for i in range(5)]
    made.append(create(client, recv.url("/ok/deliver-generated")))  # a generated key
    made.append(create(client, recv.url("/ok/deliver-fetch"), tool="web_fetch"))
    time.sleep(0.3)
    assert recv.hits("/ok/deliver-") == []
    try:
        started = time.monotonic()
        agent.set_mode("online")
        for task in made:
            wait_state(client, task["id"], "done", timeout=5)
        assert time.monotonic() - started < 5
    finally:
        agent.set_mode("offline")
    hits = recv.hits("/ok/deliver-")
    assert sorted(h.key or "" for h in hits) == sorted(t["idempotency_key"] for t in made)
    by_path = {h.path: h.key for h in hits}
    for task in made:
        path = "/" + task["args"]["url"].split("/", 3)[3]
        assert by_path[path] == task["idempotency_key"]
        done = get_task(client, task["id"])
        assert done["attempts"] == 1 and done["result"] is not None
        (receipt,) = receipts_for(client, task["id"])
        assert receipt["status"] == "ok" and receipt["kind"] == "task"
    # A delivered task cannot be cancelled.
    assert_error(client.post(f"/v1/tasks/{made[0]['id']}/cancel"), 409, "invalid_transition")


def test_auto_mode_probes_then_flushes_at_once(
    agent: InProcessAgent, client: httpx.Client, recv: Receiver
) -> None:
    agent.set_mode("offline")
    made = [create(client, recv.url(f"/ok/auto-{i}"), new_key("auto")) for i in range(3)]
    try:
        # The probe URL is the receiver's /generate_204: a verified probe makes the state online.
        snapshot = agent.set_mode("auto")
        assert snapshot["mode"] == "auto"
        for task in made:
            wait_state(client, task["id"], "done", timeout=10)
        connectivity = client.get("/v1/connectivity").json()
        assert connectivity["state"] == "online" and connectivity["mode"] == "auto"
        assert connectivity["last_probe"] is not None
        assert recv.hits("/generate_204"), "the monitor probed the configured URL"
    finally:
        agent.set_mode("offline")
    assert sorted(k or "" for k in recv.keys("/ok/auto-")) == sorted(t["idempotency_key"] for t in made)


def test_503_with_retry_after_is_retried_and_counted(
    client: httpx.Client, recv: Receiver, online: None
) -> None:
    task = create(client, recv.url("/flaky/2/retry"), new_key("flaky"))
    first = wait_for(
        lambda: (t := get_task(client, task["id"]))["attempts"] >= 1 and t, what="the first attempt"
    )
    if first["state"] == "pending":
        assert "503" in (first["last_error"] or ""), first
    done = wait_state(client, task["id"], "done", timeout=20)
    assert done["attempts"] == 3
    hits = recv.hits("/flaky/2/retry")
    assert [h.key for h in hits] == [task["idempotency_key"]] * 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(hits)]
    assert all(gap >= 0.9 for gap in gaps), f"Retry-After: 1 not honoured: gaps {gaps}"
    (receipt,) = receipts_for(client, task["id"])
    assert receipt["status"] == "ok"


def test_flush_delivers_a_backed_off_task_now(client: httpx.Client, recv: Receiver, online: None) -> None:
    task = create(client, recv.url("/flaky/1/later") + "?retry_after=120", new_key("later"))
    waiting = wait_for(lambda: (t := get_task(client, task["id"]))["attempts"] == 1 and t, what="the 503")
    assert waiting["state"] == "pending"
    due_in = datetime.fromisoformat(waiting["next_attempt_at"].replace("Z", "+00:00")) - datetime.now(UTC)
    assert due_in.total_seconds() > 100, f"Retry-After: 120 not honoured: due in {due_in}"
    response = client.post("/v1/flush")
    assert response.status_code in (200, 202), response.text
    assert response.json()["connectivity"] == "online"
    done = wait_state(client, task["id"], "done", timeout=5)
    assert done["attempts"] == 2
    assert recv.keys("/flaky/1/later") == [task["idempotency_key"]] * 2


def test_404_is_dead_at_once_with_a_receipt(client: httpx.Client, recv: Receiver, online: None) -> None:
    task = create(client, recv.url("/status/404"), new_key("gone"))
    dead = wait_state(client, task["id"], "dead")
    assert dead["attempts"] == 1
    assert "404" in (dead["last_error"] or "")
    time.sleep(1.0)
    assert recv.keys("/status/404") == [task["idempotency_key"]]
    (receipt,) = receipts_for(client, task["id"])
    assert receipt["status"] == "error" and receipt["kind"] == "task"


def test_connection_refused_counts_no_attempt(client: httpx.Client, online: None) -> None:
    task = create(client, f"http://127.0.0.1:{free_port()}/nobody-home", new_key("refused"))
    try:
        failed = wait_for(
            lambda: (t := get_task(client, task["id"]))["last_error"] and t, what="a failed delivery"
        )
        assert failed["state"] == "pending" and failed["attempts"] == 0
        time.sleep(2.0)  # more tries with the short backoff; still no attempt counted
        later = get_task(client, task["id"])
        assert later["state"] in ("pending", "running") and later["attempts"] == 0
        assert receipts_for(client, task["id"]) == []
    finally:
        client.post(f"/v1/tasks/{task['id']}/cancel")


def test_receipts_verify_after_deliveries(client: httpx.Client) -> None:
    verify = client.get("/v1/receipts/verify").json()
    assert verify["ok"] is True, verify
    assert verify["count"] > 0


# --- socket security -----------------------------------------------------------------------------


def test_socket_is_0600_in_a_0700_dir(agent: InProcessAgent) -> None:
    info = agent.socket.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(agent.socket.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\xff" * 70000,
        b"GET /v1/status HTTP/1.1\r\n" + b"X: y\r\n" * 50000,
    ],
    ids=["binary", "bad-version", "long-junk", "header-flood"],
)
def test_garbage_on_the_socket(agent: InProcessAgent, garbage: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(agent.socket))
        try:
            raw.sendall(garbage)
            raw.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent may hang up before taking it all
        answer = b""
        try:
            while chunk := raw.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer == b"" or re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer[:200]
    assert agent.api("GET", "/v1/status").status_code == 200


PEER_SCRIPT = r"""
import os, socket, sys
print("uid", os.getuid(), flush=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("connect-failed", exc.errno, flush=True)
    sys.exit(0)
print("connected", flush=True)
try:
    s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: waystation\r\nConnection: close\r\n\r\n")
except OSError as exc:
    print("send-failed", exc.errno, flush=True)
data = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            print("closed", flush=True)
            break
        data += chunk
except TimeoutError:
    print("timeout", flush=True)
except OSError as exc:
    print("reset", exc.errno, flush=True)
print("answer", repr(data[:100]), flush=True)
"""


def test_peer_with_another_uid_is_refused(agent: InProcessAgent) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else None
    if python is None:
        pytest.skip("no system python3 that another user can run")
    directory = agent.socket.parent
    # Loosen both file-system locks: only the SO_PEERCRED check is left to refuse the peer.
    directory.chmod(0o777)
    agent.socket.chmod(0o666)
    try:
        result = subprocess.run(
            [python, "-c", PEER_SCRIPT, str(agent.socket)],
            user=65534,
            group=65534,
            extra_groups=[],
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        agent.socket.chmod(0o600)
        directory.chmod(0o700)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "uid 65534" in out, out
    assert "connected" in out, f"the test proves nothing unless the peer could connect: {out}"
    assert "answer b''" in out, f"a peer of another uid got an answer: {out}"
    assert "closed" in out or "reset" in out, out
    assert agent.api("GET", "/v1/status").status_code == 200
    assert "refused a socket peer" in agent.output()


def test_second_run_on_the_same_home_refuses(agent: InProcessAgent) -> None:
    result = subprocess.run(
        AGENT_COMMAND,
        env=agent_env(agent.home, agent.extra_env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "already running" in output, output
    assert "Traceback" not in output, f"the refusal should be one clear line, not a traceback:\n{output}"
    # The first agent keeps its socket and keeps serving.
    assert agent.socket.exists()
    assert agent.api("GET", "/v1/status").status_code == 200


def test_stale_socket_after_kill_9_is_reclaimed(agent_factory: Any) -> None:
    agent: Agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    agent.start()
    pid = agent.pid
    agent.kill()
    assert agent.socket.exists(), "kill -9 leaves the socket file behind"
    assert status_code(agent.socket) is None
    agent.start()
    assert agent.pid != pid
    assert agent.api("GET", "/v1/status").status_code == 200
    assert stat.S_IMODE(Path(agent.socket).stat().st_mode) == 0o600
