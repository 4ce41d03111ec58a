"""What a hostile host or a careless script does to the agent (issue 12), each case against a real
agent process or a real database, each failing before its fix:

- the socket's path naming a file, a directory, or a path too long for a Unix socket;
- request bodies that are JSON but not data (a 5,000-digit integer, 5,000 levels of nesting, a
  lone surrogate): 4xx, never 500;
- an expires_at in the past (422), and a task past its expires_at is never leased;
- idempotency keys that cannot travel as a header: refused at enqueue (422), through the agent
  and without it; a task dead for a reason of its own counts no attempt;
- NOTIFY_SOCKET is not inherited by the agent's children (a busctl that would report to systemd).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.agentproc import AGENT_COMMAND, Agent, agent_env, free_port, make_home, remove_home

from waystation import timeutil
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.ports import Outcome
from waystation.queue.policy import decide
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask

URL = "http://127.0.0.1:9/x"
QUEUE_ADD = [
    sys.executable,
    "-m",
    "waystation",
    "queue",
    "add",
    "web_fetch",
    "--args",
    json.dumps({"url": URL}),
]


def refused_start(home: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        AGENT_COMMAND, env=agent_env(home, env), capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_socket_path_that_is_not_a_socket_is_left_alone(kind: str) -> None:
    home = make_home()
    try:
        target = home / "waystation.sock"
        if kind == "file":
            target.write_bytes(b"someone's data")
        else:
            target.mkdir()
        done = refused_start(home, {"WAYSTATION_CONNECTIVITY__MODE": "offline"})
        assert done.returncode != 0
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("error: ") and f"is a {kind}, not a socket" in line, done.stderr
        assert "Traceback" not in done.stderr
        if kind == "file":
            assert target.read_bytes() == b"someone's data"
        else:
            assert stat.S_ISDIR(target.lstat().st_mode)
    finally:
        remove_home(home)


def test_a_socket_path_too_long_says_so() -> None:
    home = make_home()
    try:
        long = home / ("s" * 120)
        done = refused_start(
            home, {"WAYSTATION_SOCKET": str(long), "WAYSTATION_CONNECTIVITY__MODE": "offline"}
        )
        assert done.returncode != 0
        (line,) = done.stderr.strip().splitlines()
        assert "a Unix socket's may be at most" in line and "None" not in line, done.stderr
    finally:
        remove_home(home)


def test_a_stale_socket_is_replaced(agent_factory: Callable[..., Agent]) -> None:
    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(agent.socket))
    stale.close()  # a socket file with nobody behind it, as a crash leaves it
    agent.start()
    assert agent.api("GET", "/v1/status").status_code == 200


@pytest.fixture
def agent(agent_factory: Callable[..., Agent]) -> Agent:
    return agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"}).start()


@pytest.mark.parametrize(
    "raw",
    [
        '{"tool": "http_request", "args": {"url": "' + URL + '", "json": ' + "9" * 5000 + "}}",
        '{"tool": "http_request", "args": {"url": "' + URL + '", "json": ' + "[" * 5000 + "]" * 5000 + "}}",
        '{"tool": "http_request", "args": {"url": "http://127.0.0.1:9/\\ud800"}}',
        '{"tool": "http_request", "args": {"url": "' + URL + '", "method": "POST", "body": "\\udfff"}}',
        '{"tool": "http_request", "args": {"url": "' + URL + '"}, "idempotency_key": "\\ud800"}',
    ],
    ids=[
        "5000-digit integer",
        "nested 5000 deep",
        "surrogate in url",
        "surrogate in body",
        "surrogate in key",
    ],
)
def test_json_that_is_not_data_is_a_4xx(agent: Agent, raw: str) -> None:
    response = agent.api(
        "POST", "/v1/tasks", content=raw.encode(), headers={"Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"] in ("malformed_request", "invalid_arguments")
    assert agent.api("GET", "/v1/status").status_code == 200
    assert agent.tasks() == []


@pytest.mark.parametrize("key", ["clé", "a\nb", "   ", "x" * 256])
def test_a_key_that_cannot_travel_is_refused_at_enqueue(agent: Agent, key: str) -> None:
    body = {"tool": "web_fetch", "args": {"url": URL}, "idempotency_key": key}
    response = agent.api("POST", "/v1/tasks", json=body)
    assert response.status_code in (400, 422), response.text
    assert agent.tasks() == []


def test_a_key_that_cannot_travel_is_refused_without_the_agent_too() -> None:
    home = make_home()
    try:
        done = subprocess.run(
            [*QUEUE_ADD, "--key", "clé"],
            env=agent_env(home),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1 and "printable ASCII" in done.stderr, done.stderr
    finally:
        remove_home(home)


def test_an_expires_at_in_the_past_is_422(agent: Agent) -> None:
    body = {"tool": "web_fetch", "args": {"url": URL}, "expires_at": "2020-01-01T00:00:00Z"}
    response = agent.api("POST", "/v1/tasks", json=body)
    assert response.status_code == 422 and "in the past" in response.json()["error"]["message"]
    assert agent.tasks() == []


async def test_a_task_past_its_expires_at_is_never_leased(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_800_000_000.0]
    monkeypatch.setattr(timeutil, "now", lambda: now[0])
    store = TaskStore(db, QueueSettings())
    await store.enqueue(NewTask("web_fetch", {"url": URL}, "127.0.0.1:9", "soon", expires_at=now[0] + 10))
    now[0] += 20  # expired, and the expiry job has not run yet
    assert await store.lease(10, {}, 10) == []


def test_dead_for_its_own_reason_counts_no_attempt() -> None:
    import random

    decision = decide(
        outcome=Outcome.DEAD,
        status=None,
        attempts=2,
        net_failures=0,
        now=1.0,
        settings=QueueSettings(),
        rng=random.Random(1),
        error="http_request: the idempotency key cannot travel",
    )
    assert decision.attempts == 2 and decision.error == "http_request: the idempotency key cannot travel"


def test_children_do_not_inherit_notify_socket(agent_factory: Callable[..., Agent], tmp_path: Path) -> None:
    """A busctl that, like the real one on failure, reports to $NOTIFY_SOCKET: the agent asks it
    about a metered link at start, and systemd must hear only the agent."""
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"ws-n-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    directory.mkdir()
    path = directory / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    busctl = bin_dir / "busctl"
    busctl.write_text(
        "#!/usr/bin/env python3\nimport os, socket\n"
        "address = os.environ.get('NOTIFY_SOCKET')\n"
        "if address:\n"
        "    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'ERRNO=2', address)\n"
        "raise SystemExit(1)\n"
    )
    busctl.chmod(0o755)
    try:
        env = {
            "NOTIFY_SOCKET": str(path),
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "WAYSTATION_CONNECTIVITY__MODE": "offline",
            "WAYSTATION_CONNECTIVITY__METERED": "auto",
        }
        agent = agent_factory(env)
        agent.proc = agent.launch()
        heard: list[str] = []
        listener.settimeout(0.5)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "READY=1" not in heard:
            try:
                heard += listener.recv(4096).decode().splitlines()
            except TimeoutError:
                continue
        agent.set_mode("online")  # a connectivity change asks busctl again
        agent.set_mode("offline")
        end = time.monotonic() + 2
        while time.monotonic() < end:
            try:
                heard += listener.recv(4096).decode().splitlines()
            except TimeoutError:
                continue
        assert "READY=1" in heard
        assert "ERRNO=2" not in heard, heard
        assert agent.stop() == 0
    finally:
        listener.close()
        path.unlink(missing_ok=True)
        directory.rmdir()


def test_doctor_fails_on_a_model_that_is_not_there() -> None:
    home = make_home()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "waystation", "doctor"],
            env=agent_env(home, {"WAYSTATION_MODEL__PATH": "/nonexistent.gguf"}),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1
        (line,) = [ln for ln in done.stdout.splitlines() if ln.split()[1:2] == ["model"]]
        assert line.startswith("fail") and "/nonexistent.gguf not found" in line, done.stdout
    finally:
        remove_home(home)


def test_ollama_with_nothing_listening_is_unavailable_and_refuses(
    agent_factory: Callable[..., Agent],
) -> None:
    nothing = "127.0.0.1:9"  # the discard port: nothing listens there
    agent = agent_factory({"OLLAMA_HOST": nothing, "WAYSTATION_CONNECTIVITY__MODE": "offline"}).start()
    (ollama,) = [r for r in agent.api("GET", "/v1/routes").json() if r["name"] == "ollama"]
    assert ollama["available"] is False and "is Ollama running" in ollama["reason"], ollama
    done = subprocess.run(
        [sys.executable, "-m", "waystation", "turn", "hi", "--route", "ollama"],
        env=agent_env(agent.home, {"OLLAMA_HOST": nothing}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4 and "is Ollama running at http://127.0.0.1:9" in done.stderr, done.stderr


def test_events_are_slim_and_their_history_bounded_by_bytes() -> None:
    from waystation.station import events as events_module
    from waystation.station.announce import Announcer
    from waystation.station.events import EventBus
    from waystation.station.metrics import Metrics

    bus = EventBus()
    announcer = Announcer(bus, Metrics())
    body = "x" * 1_000_000
    for i in range(50):
        task = {
            "id": f"t_{i}",
            "state": "pending",
            "args": {
                "method": "POST",
                "url": URL,
                "body": body,
                "headers": {"Authorization": "Bearer s3cret"},
            },
            "result": {"status": 200, "body": body},
        }
        announcer.task_changed(task)
    frames = [e.to_sse() for e in bus._history]
    assert all(len(f) < 2_000 for f in frames)  # no body, no headers, no answer's body
    assert b"s3cret" not in b"".join(frames)
    for i in range(3000):
        bus.publish("connectivity", {"state": "online", "pad": "y" * 5000, "i": i})
    assert sum(len(e.to_sse()) for e in bus._history) <= events_module.HISTORY_BYTES


def test_metrics_listen_serves_metrics_and_nothing_else(agent_factory: Callable[..., Agent]) -> None:
    import httpx

    port = free_port()
    env = {
        "WAYSTATION_AGENT__METRICS_LISTEN": f"127.0.0.1:{port}",
        "WAYSTATION_CONNECTIVITY__MODE": "offline",
    }
    agent = agent_factory(env).start()
    assert agent.api("POST", "/v1/tasks", json={"tool": "web_fetch", "args": {"url": URL}}).status_code == 201
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as tcp:
        scraped = tcp.get("/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        assert 'waystation_build_info{version="' in scraped.text
        assert "waystation_queue_oldest_pending_age_seconds" in scraped.text
        assert 'waystation_queue_tasks{state="pending"} 1' in scraped.text
        assert tcp.get("/v1/status").status_code == 404  # the control API is never exposed here
        assert tcp.put("/v1/connectivity", json={"mode": "online"}).status_code in (404, 405)
    assert agent.api("GET", "/v1/connectivity").json()["mode"] == "offline"


def test_a_bad_metrics_listen_stops_start_up_naming_the_key() -> None:
    home = make_home()
    try:
        done = refused_start(home, {"WAYSTATION_AGENT__METRICS_LISTEN": "everywhere"})
        assert done.returncode != 0 and "agent.metrics_listen" in done.stderr, done.stderr
    finally:
        remove_home(home)


def delivered_task(agent: Agent, tool: str, args: dict[str, object]) -> dict[str, object]:
    from support.agentproc import wait_for

    task = agent.api("POST", "/v1/tasks", json={"tool": tool, "args": args}).json()

    def settled() -> dict[str, object] | None:
        found = agent.api("GET", f"/v1/tasks/{task['id']}").json()
        return found if found["state"] in ("done", "dead") else None

    return wait_for(settled, 20, what="the task to settle")


def test_redirects_are_followed_as_a_user_expects(agent_factory: Callable[..., Agent]) -> None:
    from support.agentproc import Receiver

    with Receiver() as here, Receiver() as elsewhere:
        agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "online"}).start()
        moved = delivered_task(agent, "web_fetch", {"url": here.url("/redirect/301/ok/moved")})
        assert moved["state"] == "done" and moved["result"]["status"] == 200  # type: ignore[index]
        assert [h.key for h in here.hits("/ok/moved")] == [moved["idempotency_key"]]  # same origin: kept

        kept = delivered_task(
            agent, "http_request", {"method": "POST", "url": here.url("/redirect/307/ok/kept"), "body": "hi"}
        )
        assert kept["state"] == "done"
        (hit,) = here.hits("/ok/kept")
        assert (hit.method, hit.body) == ("POST", "hi")  # 307 keeps the method and the body

        stays = delivered_task(
            agent, "http_request", {"method": "POST", "url": here.url("/redirect/302/ok/no")}
        )
        assert stays["state"] == "dead" and here.hits("/ok/no") == []  # a POST's 302 is the answer

        away = here.url("/redirect/302/x") + "?to=" + elsewhere.url("/ok/away")
        args = {
            "url": away,
            "headers": {"Authorization": "Bearer s3cret", "X-Api-Key": "k3y", "Accept": "a/b"},
        }
        crossed = delivered_task(agent, "http_request", args)
        assert crossed["state"] == "done"
        (other,) = elsewhere.hits("/ok/away")
        assert other.key is None and other.auth is None  # another origin: no key, no credential


def test_shown_args_hide_credentials_but_keep_the_rest() -> None:
    from waystation.redact import REDACTED, shown_args, shown_url

    assert shown_url("http://u:pw@h.example/p?api_key=s3cret&page=2") == (
        f"http://u:{REDACTED}@h.example/p?api_key=%5Bredacted%5D&page=2"
    )
    assert shown_url("http://h.example/p?q=1") == "http://h.example/p?q=1"  # untouched, not re-encoded
    shown = shown_args(
        {"url": "http://h.example/", "headers": {"Authorization": "Bearer t", "Accept": "a/b"}}
    )
    assert shown["headers"] == {"Authorization": REDACTED, "Accept": "a/b"}


@pytest.mark.parametrize(
    ("url", "hidden"),
    [
        ("https://acct.blob.example/c/b?sv=2022-11-02&se=2026&sig=AzS4sS1gnature", "AzS4sS1gnature"),
        (
            "https://b.s3.example/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261206"
            "&X-Amz-Signature=abcdef0123&X-Amz-Security-Token=FwoGZXIvYXdz",
            "AKIAEXAMPLE",
        ),
        ("https://b.s3.example/k?X-Amz-Signature=abcdef0123", "abcdef0123"),
        ("https://b.s3.example/k?X-Amz-Security-Token=FwoGZXIvYXdz", "FwoGZXIvYXdz"),
        ("https://app.example/cb?code=0Auth-C0de&state=xyz", "0Auth-C0de"),
        ("https://app.example/cb#access_token=fr4gment-T0ken&token_type=bearer", "fr4gment-T0ken"),
        ("https://h.example/?api_key=k3y&password=pw0rd&client_secret=cs3cret&key=k3y", "k3y"),
        ("https://h.example/?password=pw0rd&client_secret=cs3cret", "pw0rd"),
        ("https://h.example/?client_secret=cs3cret", "cs3cret"),
    ],
)
def test_shown_url_hides_signed_url_and_oauth_credentials(url: str, hidden: str) -> None:
    from waystation.redact import shown_url

    shown = shown_url(url)
    assert hidden not in shown and "%5Bredacted%5D" in shown
    assert shown_url("https://h.example/p?page=2#top") == "https://h.example/p?page=2#top"


def test_credentials_in_a_task_reach_the_destination_and_no_output(
    agent_factory: Callable[..., Agent], receiver: Any
) -> None:
    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"}).start()
    secret = "Bearer s3cretT0ken"
    args = {"url": receiver.url("/ok/creds") + "?token=qu3ryT0ken", "headers": {"Authorization": secret}}
    with agent.client(timeout=30.0) as client, client.stream("GET", "/v1/events") as events:
        created = client.post("/v1/tasks", json={"tool": "http_request", "args": args}).json()
        agent.set_mode("online")
        from support.agentproc import wait_for

        wait_for(lambda: receiver.hits("/ok/creds"), 20, what="the delivery")
        seen = b""
        for chunk in events.iter_bytes():
            seen += chunk
            if b'"state":"done"' in seen:
                break
    (hit,) = receiver.hits("/ok/creds")
    assert hit.auth == secret  # the destination gets the real credential
    shown = [json.dumps(created), json.dumps(agent.tasks()), seen.decode()]
    cli = subprocess.run(
        [sys.executable, "-m", "waystation", "queue", "show", created["id"]],
        env=agent_env(agent.home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    shown.append(cli.stdout)
    for text in shown:
        assert "s3cretT0ken" not in text and "qu3ryT0ken" not in text, text[:300]


def test_a_body_announced_over_8_mib_is_refused_before_it_is_read(agent: Agent) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(agent.socket))
        raw.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n")
        raw.sendall(f"Content-Length: {9 * 1024 * 1024}\r\n\r\n".encode())  # and no body at all
        answer = raw.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "body_too_large" in answer


def test_the_agent_raises_its_open_file_limit_to_the_hard_one(agent: Agent) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = Path(f"/proc/{agent.pid}/limits").read_text().splitlines()
    (line,) = [ln for ln in limits if ln.startswith("Max open files")]
    soft_now = line.split()[3]
    assert soft_now == (str(hard) if hard != resource.RLIM_INFINITY else str(1 << 20)), line


def test_cancelling_a_task_being_delivered_stops_its_delivery(
    agent_factory: Callable[..., Agent], receiver: Any
) -> None:
    from support.agentproc import wait_for

    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "online"}).start()
    task = agent.api(
        "POST", "/v1/tasks", json={"tool": "web_fetch", "args": {"url": receiver.url("/slow/8000/c")}}
    )
    task_id = task.json()["id"]
    wait_for(lambda: receiver.hits("/slow/8000/c"), 10, what="the delivery to start")
    started = time.monotonic()
    cancelled = agent.api("POST", f"/v1/tasks/{task_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text
    assert time.monotonic() - started < 5  # it did not wait for the 8 s answer
    time.sleep(1.0)
    assert agent.api("GET", f"/v1/tasks/{task_id}").json()["state"] == "cancelled"
    assert len(receiver.hits("/slow/8000/c")) == 1  # and it is not sent again
    receipts = [r for r in agent.api("GET", "/v1/receipts").json() if r["task_id"] == task_id]
    assert [r["status"] for r in receipts] == ["refused"] and "cancel" in str(receipts[0]["reason"])
