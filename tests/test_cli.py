"""The command line, run in-process as the console script runs it, in its own WAYSTATION_HOME.

Without an agent: queue and receipt commands work straight on the database, and the commands
that need the agent exit 3. With an agent (served in-process, support/inproc.py; forced offline): the same
commands go through the socket and answer the same objects.

Exit codes checked here: 0 ok, 1 error (unknown tool, bad tool args, key conflict, not found,
broken chain, bad config), 2 usage (bad --args JSON, bad --state, bad mode, `turn show` without an
id), 3 agent not running.
"""

from __future__ import annotations

import itertools
import json
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.agentproc import Agent, Receiver, make_home, remove_home, wait_for
from support.inproc import InProcessAgent, run_cli

from waystation.cli.client import RemoteError, rebuild_error
from waystation.errors import IdempotencyConflict, NotFound, RouteRefused, UnknownTool

URL = "http://127.0.0.1:9/x"  # the discard port: nothing answers, nothing is sent while offline


def cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one command (in-process); failures must be one `error:` line, never a traceback."""
    done = run_cli(home, *args, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode not in (0,) and done.stderr:
        lines = done.stderr.strip().splitlines()
        assert lines[-1].startswith("error: "), done.stderr
    return done


def ok_json(home: Path, *args: str) -> Any:
    done = cli(home, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def add(home: Path, url: str = URL, key: str | None = None, tool: str = "http_request") -> Any:
    extra = ["--key", key] if key else []
    return ok_json(home, "queue", "add", tool, "--args", json.dumps({"url": url}), *extra)


# --- no agent --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["run"],
        ["status"],
        ["routes"],
        ["queue"],
        ["queue", "add"],
        ["queue", "ls"],
        ["queue", "show"],
        ["queue", "retry"],
        ["queue", "cancel"],
        ["queue", "flush"],
        ["receipts"],
        ["receipts", "ls"],
        ["receipts", "show"],
        ["receipts", "export"],
        ["receipts", "verify"],
        ["connectivity"],
        ["connectivity", "set"],
    ],
)
def test_help_says_what_each_command_does(home: Path, command: list[str]) -> None:
    done = cli(home, *command, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage: waystation" in done.stdout
    assert len(done.stdout.splitlines()) > 5


def test_bare_group_shows_its_commands(home: Path) -> None:
    done = cli(home, "queue")
    assert done.returncode == 2  # click's rule: a group without a command is a usage error
    for name in ("add", "ls", "show", "retry", "cancel", "flush"):
        assert name in done.stdout


def test_version(home: Path) -> None:
    done = cli(home, "--version")
    assert done.returncode == 0 and done.stdout.startswith("waystation ")


def test_queue_add_without_agent_writes_to_the_database(home: Path) -> None:
    task = add(home)
    assert task["id"].startswith("t_")
    assert task["state"] == "pending"
    assert task["tool"] == "http_request"
    assert task["args"]["url"] == URL
    assert task["attempts"] == 0
    assert (home / "waystation.db").exists()

    human = cli(home, "queue", "add", "web_fetch", "--args", json.dumps({"url": URL}))
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("queued task t_")
    assert "agent is not running" in human.stderr  # a note, not an error


def test_same_key_same_args_is_the_same_task(home: Path) -> None:
    first = add(home, key="order-42")
    again = add(home, key="order-42")
    assert again["id"] == first["id"]
    assert again["idempotency_key"] == "order-42"
    assert len(ok_json(home, "queue", "ls")) == 1


def test_same_key_other_args_is_a_conflict(home: Path) -> None:
    first = add(home, key="order-42")
    done = cli(
        home,
        "queue",
        "add",
        "http_request",
        "--args",
        json.dumps({"url": URL + "/other"}),
        "--key",
        "order-42",
        "--json",
    )
    assert done.returncode == 1
    assert done.stdout == ""
    line = one_error_line(done)
    assert "order-42" in line and first["id"] in line and "other arguments" in line


def test_unknown_tool_and_bad_tool_args_are_errors(home: Path) -> None:
    done = cli(home, "queue", "add", "teleport", "--args", "{}")
    assert done.returncode == 1
    assert "unknown tool 'teleport'" in one_error_line(done)

    done = cli(home, "queue", "add", "http_request", "--args", json.dumps({"url": 3}))
    assert done.returncode == 1
    assert "url" in one_error_line(done)


@pytest.mark.parametrize(
    "argv",
    [
        ["queue", "add", "http_request", "--args", "{not json"],
        ["queue", "add", "http_request", "--args", '["a list"]'],
        ["queue", "add", "http_request"],
        ["queue", "ls", "--state", "sleeping"],
        ["queue", "ls", "--limit", "0"],
        ["receipts", "ls", "--limit", "5000"],
        ["connectivity", "set", "sideways"],
        ["queue", "nonsense"],
        ["turn", "show"],
        ["turn", "wait"],
        ["turn", "ls", "--state", "sleeping"],
        ["turn", "ls", "--limit", "0"],
        ["turn", "Hello", "--state", "ok"],
    ],
)
def test_usage_errors_exit_2_with_one_line(home: Path, argv: list[str]) -> None:
    done = cli(home, *argv)
    assert done.returncode == 2
    assert done.stdout == ""
    line = one_error_line(done)
    assert "--help" in line


def test_reads_on_a_fresh_home_create_nothing(home: Path) -> None:
    assert ok_json(home, "queue", "ls") == []
    assert ok_json(home, "receipts", "ls") == []
    done = cli(home, "receipts", "verify")
    assert done.returncode == 0 and done.stdout.strip() == "chain intact: 0 receipts"
    assert cli(home, "receipts", "export").stdout == ""
    missing = cli(home, "queue", "show", "t_missing")
    assert missing.returncode == 1 and "no task" in one_error_line(missing)
    assert ok_json(home, "turn", "ls") == []
    assert cli(home, "turn", "ls").stdout == "no turns\n"
    assert not (home / "waystation.db").exists()


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["turn", "show"], "waystation turn show TURN_ID [--json]"),
        (["turn", "wait", "--json"], "waystation turn wait TURN_ID [--timeout S] [--json]"),
    ],
)
def test_turn_show_and_wait_without_an_id_say_the_usage(home: Path, argv: list[str], usage: str) -> None:
    done = cli(home, *argv)
    assert done.returncode == 2 and done.stdout == ""
    assert f"needs a turn id: {usage}" in one_error_line(done)
    assert not (home / "waystation.db").exists()  # no turn ran


REFUSED = ("--route", "compatible")  # no server configured: refused at once, no model runs


def test_turn_ls_without_an_agent_reads_the_database(home: Path) -> None:
    for prompt in ("first question", "second question"):
        assert cli(home, "turn", prompt, *REFUSED).returncode == 4
    turns = ok_json(home, "turn", "ls")
    assert [t["prompt"] for t in turns] == ["second question", "first question"]  # newest first
    assert {t["state"] for t in turns} == {"refused"}
    assert set(turns[0]) >= {"turn_id", "state", "route", "model", "prompt", "text", "tool_calls"}
    assert ok_json(home, "turn", "ls", "--limit", "1") == turns[:1]
    assert ok_json(home, "turn", "ls", "--state", "refused") == turns
    assert ok_json(home, "turn", "ls", "--state", "ok") == []
    bad = cli(home, "turn", "ls", "--state", "sleeping")
    assert bad.returncode == 2
    assert "use one of running, parked, resuming, deferred, ok, refused, error, interrupted" in bad.stderr
    human = cli(home, "turn", "ls")
    assert human.returncode == 0, human.stderr
    header, *rows = human.stdout.splitlines()
    assert header.split() == ["id", "state", "route", "age", "prompt", "answer", "/", "reason"]
    assert rows[0].startswith(turns[0]["turn_id"])
    assert "refused" in rows[0] and "compatible" in rows[0] and "second question" in rows[0]
    assert "no server configured" in rows[0]


def test_queue_ls_show_cancel_retry(home: Path) -> None:
    a, b = add(home, key="a"), add(home, url=URL + "/b", key="b")
    listed = ok_json(home, "queue", "ls")
    assert [t["id"] for t in listed] == [b["id"], a["id"]]  # newest first
    assert ok_json(home, "queue", "ls", "--limit", "1")[0]["id"] == b["id"]
    assert ok_json(home, "queue", "show", a["id"]) == a

    human = cli(home, "queue", "ls")
    assert a["id"] in human.stdout and "pending" in human.stdout

    cancelled = ok_json(home, "queue", "cancel", a["id"])
    assert cancelled["state"] == "cancelled"
    assert [t["id"] for t in ok_json(home, "queue", "ls", "--state", "cancelled")] == [a["id"]]
    assert [t["id"] for t in ok_json(home, "queue", "ls", "--state", "pending")] == [b["id"]]

    again = cli(home, "queue", "cancel", a["id"])
    assert again.returncode == 1
    assert "cannot cancel" in one_error_line(again)

    retried = cli(home, "queue", "retry", a["id"])
    assert retried.returncode == 0, retried.stderr
    assert ok_json(home, "queue", "show", a["id"])["state"] == "pending"

    shown = cli(home, "queue", "show", a["id"])
    assert shown.returncode == 0 and URL in shown.stdout
    assert shown_row(shown.stdout, "waiting") == "for the agent: it goes out once `waystation run` is up"


def shown_row(text: str, name: str) -> str | None:
    """The value of one `name  value` row of a human `show`, or None."""
    for line in text.splitlines():
        key, _, value = line.partition("  ")
        if key == name:
            return value.strip()
    return None


def test_waiting_says_why_a_pending_task_has_not_gone_out() -> None:
    from datetime import UTC, datetime, timedelta

    from waystation.cli.render import waiting

    def iso(seconds_from_now: float) -> str:
        return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat()

    refused = "destination unreachable: 127.0.0.1:4242: ConnectError: Cannot connect to host"
    task = {"state": "pending", "next_attempt_at": iso(4.4), "last_error": refused}
    assert waiting(task, "online") == f"{refused}; next try in 4s"
    answered = {**task, "next_attempt_at": iso(30.4), "last_error": "destination answered HTTP 503"}
    assert waiting(answered, "online") == "destination answered HTTP 503; next try in 30s"
    assert waiting(task, "offline") == "for the network (offline)"
    assert waiting(task, "portal") == "for the network (portal)"
    assert waiting(task, None) == "for the agent: it goes out once `waystation run` is up"
    assert (
        waiting({"state": "pending", "next_attempt_at": iso(-1), "last_error": None}, "online") == "due now"
    )
    assert waiting({**task, "state": "done"}, "online") is None


def test_receipts_ls_show_export_verify(home: Path) -> None:
    tasks = [add(home, url=f"{URL}/{i}") for i in range(3)]
    for t in tasks:
        assert cli(home, "queue", "cancel", t["id"]).returncode == 0

    receipts = ok_json(home, "receipts", "ls")
    assert [r["task_id"] for r in receipts] == [t["id"] for t in tasks]  # chain order
    assert all(r["kind"] == "task" and r["status"] == "refused" for r in receipts)
    assert receipts[1]["prev_hash"] == receipts[0]["hash"]
    assert ok_json(home, "receipts", "ls", "--limit", "2") == receipts[1:]  # the latest two
    assert ok_json(home, "receipts", "ls", "--after", receipts[0]["id"], "--limit", "1") == receipts[1:2]
    assert ok_json(home, "receipts", "show", receipts[0]["id"]) == receipts[0]

    human = cli(home, "receipts", "show", receipts[0]["id"])
    assert receipts[0]["hash"] in human.stdout

    export = cli(home, "receipts", "export")
    assert export.returncode == 0
    lines = export.stdout.splitlines()
    assert [json.loads(line) for line in lines] == receipts
    assert all(" " not in line.split('"reason"')[0] for line in lines)  # canonical: no whitespace

    done = cli(home, "receipts", "verify")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "chain intact: 3 receipts"


def test_receipts_verify_names_the_tampered_receipt(home: Path) -> None:
    tasks = [add(home, url=f"{URL}/{i}") for i in range(3)]
    for t in tasks:
        cli(home, "queue", "cancel", t["id"])
    receipts = ok_json(home, "receipts", "ls")
    target = receipts[1]["id"]
    with sqlite3.connect(home / "waystation.db") as db:
        db.execute(
            "UPDATE receipts SET body = replace(body, 'cancelled by request', 'delivered') WHERE id = ?",
            (target,),
        )

    done = cli(home, "receipts", "verify")
    assert done.returncode == 1
    assert done.stdout == ""
    line = one_error_line(done)
    assert target in line and "hash does not match" in line

    result = cli(home, "receipts", "verify", "--json")
    assert result.returncode == 1
    body = json.loads(result.stdout)
    assert body["ok"] is False and body["first_broken_id"] == target


def test_unreadable_receipt_is_one_clear_error(home: Path) -> None:
    task = add(home)
    cli(home, "queue", "cancel", task["id"])
    with sqlite3.connect(home / "waystation.db") as db:
        db.execute("UPDATE receipts SET body = 'not json'")
    done = cli(home, "receipts", "ls")
    assert done.returncode == 1
    assert "verify" in one_error_line(done)
    assert cli(home, "receipts", "verify").returncode == 1


def test_unreadable_receipt_reads_the_same_with_and_without_the_agent(agent: InProcessAgent) -> None:
    """One operation serves both paths, so one error text (it was an HTTP 500 via the agent)."""
    home = agent.home
    task = add(home)
    cli(home, "queue", "cancel", task["id"])
    with sqlite3.connect(home / "waystation.db") as db:
        db.execute("UPDATE receipts SET body = 'not json'")
    through_agent = cli(home, "receipts", "ls")
    agent.stop()
    direct = cli(home, "receipts", "ls")
    assert "a stored receipt is not valid JSON" in one_error_line(direct)
    assert one_error_line(through_agent) == one_error_line(direct)
    assert through_agent.returncode == direct.returncode == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "--json"],
        ["routes"],
        ["connectivity"],
        ["connectivity", "set", "offline"],
        ["queue", "flush"],
    ],
)
def test_commands_that_need_the_agent_exit_3(home: Path, argv: list[str]) -> None:
    done = cli(home, *argv)
    assert done.returncode == 3
    assert done.stdout == ""
    line = one_error_line(done)
    assert "not running" in line and "waystation run" in line


def test_stale_socket_file_means_no_agent(home: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(home / "waystation.sock"))  # bound, never listening: connection refused
    try:
        assert add(home)["state"] == "pending"
        assert cli(home, "status").returncode == 3
    finally:
        stale.close()


def test_bad_config_is_one_line_naming_the_key(home: Path) -> None:
    (home / "config.toml").write_text("[queue]\nmax_attempts = 0\n")
    done = cli(home, "queue", "add", "http_request", "--args", json.dumps({"url": URL}))
    assert done.returncode == 1
    assert "queue.max_attempts" in one_error_line(done)

    (home / "config.toml").write_text("[queue\n")
    done = cli(home, "run")
    assert done.returncode == 1
    assert "config" in one_error_line(done)


def test_error_answers_rebuild_as_our_classes() -> None:
    assert isinstance(rebuild_error("not_found", "no task with id 'x'", 404), NotFound)
    assert isinstance(rebuild_error("unknown_tool", "unknown tool", 422), UnknownTool)
    assert isinstance(rebuild_error("idempotency_conflict", "conflict", 409), IdempotencyConflict)
    refused = rebuild_error("route_refused", "route 'x' refused the turn: no key", 409)
    assert isinstance(refused, RouteRefused) and refused.exit_code == 4
    assert refused.message == "route 'x' refused the turn: no key"
    other = rebuild_error("brand_new_code", "something new", 418)
    assert isinstance(other, RemoteError)
    assert (other.code, other.http_status, other.exit_code) == ("brand_new_code", 418, 1)
    assert other.to_json() == {"error": {"code": "brand_new_code", "message": "something new"}}


# --- with a running agent --------------------------------------------------------------------------


@pytest.fixture
def agent(inprocess_agent_factory: Callable[..., InProcessAgent]) -> InProcessAgent:
    return inprocess_agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"})


def test_status_routes_connectivity_through_the_agent(agent: InProcessAgent) -> None:
    home = agent.home
    status = ok_json(home, "status")
    assert status["connectivity"]["state"] == "offline"
    assert set(status["queue"]) >= {"pending", "running", "done", "dead", "cancelled", "expired"}
    human = cli(home, "status")
    assert human.returncode == 0, human.stderr
    assert "offline" in human.stdout and "pending" in human.stdout

    assert isinstance(ok_json(home, "routes"), list)
    assert cli(home, "routes").returncode == 0

    assert ok_json(home, "connectivity")["mode"] == "offline"
    assert ok_json(home, "connectivity", "set", "auto")["mode"] == "auto"
    assert agent.api("GET", "/v1/connectivity").json()["mode"] == "auto"
    done = cli(home, "connectivity", "set", "offline")
    assert done.returncode == 0 and "offline" in done.stdout
    assert ok_json(home, "connectivity")["mode"] == "offline"


def test_queue_through_the_agent(agent: InProcessAgent) -> None:
    home = agent.home
    task = add(home, key="k1")
    assert task["state"] == "pending"
    assert [t["id"] for t in agent.tasks()] == [task["id"]]  # the agent's own view
    assert add(home, key="k1")["id"] == task["id"]
    human = cli(home, "queue", "add", "http_request", "--args", json.dumps({"url": URL}), "--key", "k1")
    assert human.returncode == 0 and "already" in human.stdout
    assert human.stderr == ""  # no "agent not running" note

    conflict = cli(
        home, "queue", "add", "http_request", "--args", json.dumps({"url": URL + "/2"}), "--key", "k1"
    )
    assert conflict.returncode == 1 and "other arguments" in one_error_line(conflict)
    unknown = cli(home, "queue", "add", "teleport", "--args", "{}")
    assert unknown.returncode == 1 and "unknown tool" in one_error_line(unknown)
    missing = cli(home, "queue", "show", "t_missing")
    assert missing.returncode == 1 and "no task" in one_error_line(missing)
    shown = cli(home, "queue", "show", task["id"])
    assert shown.returncode == 0 and shown_row(shown.stdout, "waiting") == "for the network (offline)"

    flush = cli(home, "queue", "flush")
    assert flush.returncode == 0 and "offline" in flush.stdout

    assert ok_json(home, "queue", "cancel", task["id"])["state"] == "cancelled"
    receipts = ok_json(home, "receipts", "ls")
    assert [r["task_id"] for r in receipts] == [task["id"]]
    assert ok_json(home, "receipts", "show", receipts[0]["id"]) == receipts[0]
    verify = cli(home, "receipts", "verify")
    assert verify.returncode == 0 and verify.stdout.strip() == "chain intact: 1 receipt"
    exported = cli(home, "receipts", "export").stdout

    # Tampering is seen through the agent too.
    with sqlite3.connect(home / "waystation.db") as db:
        db.execute("UPDATE receipts SET body = replace(body, 'cancelled', 'delivered')")
    broken = cli(home, "receipts", "verify")
    assert broken.returncode == 1 and receipts[0]["id"] in one_error_line(broken)
    with sqlite3.connect(home / "waystation.db") as db:
        db.execute("UPDATE receipts SET body = replace(body, 'delivered', 'cancelled')")

    # Direct reads after the agent stops answer the same objects.
    assert agent.stop() == 0
    assert cli(home, "receipts", "export").stdout == exported
    assert ok_json(home, "queue", "show", task["id"])["state"] == "cancelled"
    assert cli(home, "status").returncode == 3


def test_turn_ls_through_the_agent_answers_its_turns(agent: InProcessAgent) -> None:
    assert cli(agent.home, "turn", "hello there", *REFUSED).returncode == 4
    listed = ok_json(agent.home, "turn", "ls")
    assert listed == agent.api("GET", "/v1/turns").json()
    assert [t["prompt"] for t in listed] == ["hello there"]
    assert ok_json(agent.home, "turn", "ls", "--state", "parked") == []
    assert ok_json(agent.home, "turn", "show", listed[0]["turn_id"])["state"] == "refused"


def test_task_added_by_cli_is_delivered_when_online(agent: InProcessAgent, receiver: Receiver) -> None:
    home = agent.home
    task = add(home, url=receiver.url("/ok/cli"), key="deliver-me")
    assert cli(home, "connectivity", "set", "online").returncode == 0
    wait_for(lambda: ok_json(home, "queue", "show", task["id"])["state"] == "done", 20, 0.2, "delivery")
    assert receiver.keys("/ok/cli") == ["deliver-me"]
    receipts = ok_json(home, "receipts", "ls")
    assert receipts[-1]["task_id"] == task["id"] and receipts[-1]["status"] == "ok"


def test_events_stream(agent: InProcessAgent) -> None:
    from waystation.cli.client import AgentClient

    seen: list[tuple[str, Any]] = []
    failures: list[BaseException] = []

    def read() -> None:
        try:
            with AgentClient(agent.socket) as client:
                for _ident, event, data in client.follow_events():
                    seen.append((event, data))
                    if event == "connectivity":
                        return
        except Exception as exc:  # reported by the test, not lost in a thread
            failures.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    modes = itertools.cycle(["auto", "offline"])

    def poke() -> bool:
        agent.set_mode(next(modes))
        reader.join(0.3)
        return not reader.is_alive()

    wait_for(poke, 15, 0, "a connectivity event")
    assert not failures, failures
    event, data = seen[-1]
    assert event == "connectivity" and data["mode"] in ("auto", "offline")


def test_agent_reached_when_the_socket_is_elsewhere(agent_factory: Callable[..., Agent]) -> None:
    sock_home = make_home()
    try:
        sock = sock_home / "s.sock"
        agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline", "WAYSTATION_SOCKET": str(sock)})
        agent.proc = agent.launch()  # not start(): that waits on the default socket path
        wait_for(sock.exists, 20, 0.05, "the socket")
        wait_for(
            lambda: cli(agent.home, "status", env={"WAYSTATION_SOCKET": str(sock)}).returncode == 0,
            20,
            0.1,
            "status over WAYSTATION_SOCKET",
        )
        assert cli(agent.home, "status").returncode == 3  # the default socket has no agent
    finally:
        remove_home(sock_home)
