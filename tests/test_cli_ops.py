"""`waystation doctor` and `waystation events`, run for real as `python -m waystation ...`.

doctor on a fresh home: llama.cpp loads and decodes (ok), no database and no agent are warnings,
not failures; a damaged database fails naming the file; a llama.cpp that dies of SIGSEGV is
reported with the portable rebuild. events: follows a live agent's stream and prints the task
event of a task added meanwhile; exits 3 without an agent; follows the stream across an agent
restart (every event once, in order, one notice of the outage on stderr), resuming with
Last-Event-ID.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.agentproc import Agent, agent_env, wait_for
from support.inproc import InProcessAgent, run_cli

from waystation.cli.commands import doctor as doctor_cmd
from waystation.cli.commands import events as events_cmd

URL = "http://127.0.0.1:9/x"  # the discard port: nothing is sent while offline


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One command, in-process (support/inproc.py); never a traceback."""
    done = run_cli(home, *args, env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / "xdg")})
    assert "Traceback" not in done.stderr, done.stderr
    return done


def lines_by_check(stdout: str) -> dict[str, str]:
    found = {}
    for line in stdout.splitlines():
        level, name = line.split()[:2]
        found[name] = level
    return found


# --- doctor ------------------------------------------------------------------------------------


def test_doctor_on_a_fresh_home_passes_with_warnings(home: Path) -> None:
    done = cli(home, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    levels = lines_by_check(done.stdout)
    assert levels["python"] == "ok"
    assert levels["llama.cpp"] == "ok", done.stdout
    assert levels["socket"] == "ok", done.stdout
    assert levels["agent"] == "warn"
    assert levels["database"] == "warn"
    assert "no database yet" in done.stdout
    assert levels["service"] == "warn"
    assert "waystation service install" in done.stdout
    assert not (home / "waystation.db").exists(), "doctor must not create the database"


def test_doctor_json_lists_every_check(home: Path) -> None:
    done = cli(home, "doctor", "--json")
    assert done.returncode == 0, done.stderr
    checks = json.loads(done.stdout)
    assert [c["name"] for c in checks] == [
        "python", "config", "model", "downloads", "llama.cpp", "socket", "agent", "database", "receipts",
        "service",
        "fleet",
    ]  # fmt: skip
    assert {c["level"] for c in checks} <= {"ok", "warn"}


def test_doctor_fails_on_a_corrupt_database_naming_it(home: Path) -> None:
    database = home / "waystation.db"
    database.write_bytes(b"this is not an SQLite database, just bytes\n" * 200)
    done = cli(home, "doctor")
    assert done.returncode == 1, done.stdout
    line = next(line for line in done.stdout.splitlines() if line.split()[1] == "database")
    assert line.startswith("fail")
    assert str(database) in line


def test_doctor_fails_on_a_socket_dir_with_a_loose_mode(home: Path) -> None:
    home.chmod(0o755)
    done = cli(home, "doctor")
    assert done.returncode == 1
    line = next(line for line in done.stdout.splitlines() if line.split()[1] == "socket")
    assert line.startswith("fail") and "chmod 700" in line


def test_doctor_with_a_healthy_running_agent(home: Path) -> None:
    agent = InProcessAgent(home, env={"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    try:
        agent.start()
        done = cli(home, "doctor")
    finally:
        agent.stop()
    assert done.returncode == 0, done.stdout
    levels = lines_by_check(done.stdout)
    assert levels["agent"] == "ok" and levels["database"] == "ok", done.stdout


def test_a_llama_crash_is_reported_with_the_portable_rebuild() -> None:
    check = doctor_cmd.check_llama("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert check.level == "fail"
    assert "SIGSEGV" in check.message
    assert "CMAKE_ARGS" in check.message and "GGML_NATIVE=OFF" in check.message


def test_a_hung_llama_is_reported() -> None:
    check = doctor_cmd.check_llama("import time; time.sleep(30)", timeout_s=0.5)
    assert check.level == "fail" and "took over" in check.message


# --- events ------------------------------------------------------------------------------------


def test_events_exits_3_without_an_agent(home: Path) -> None:
    done = cli(home, "events")
    assert done.returncode == 3
    assert done.stderr.startswith("error: ") and "not running" in done.stderr


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError("no event line within the timeout")
    return proc.stdout.readline()


@contextlib.contextmanager
def following(home: Path, *args: str) -> Iterator[tuple[Agent, subprocess.Popen[str]]]:
    """A live agent (forced offline) and `waystation events ARGS` following it."""
    agent = Agent(home, env={"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    proc: subprocess.Popen[str] | None = None
    try:
        agent.start()
        proc = subprocess.Popen(
            [sys.executable, "-m", "waystation", "events", *args],
            env=agent_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        yield agent, proc
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
            proc.communicate(timeout=30)
        agent.close()


def first_task_line(agent: Agent, proc: subprocess.Popen[str]) -> str:
    """Add tasks until the follower prints one (events before it subscribed are not replayed):
    a minute of tries, for a loaded machine where the command takes long to start."""
    for _ in range(60):
        answer = agent.api("POST", "/v1/tasks", json={"tool": "web_fetch", "args": {"url": URL}})
        assert answer.status_code == 201, answer.text
        try:
            return _read_line(proc, 1.0)
        except AssertionError:
            continue
    raise AssertionError("events printed nothing")


@pytest.mark.parametrize("as_json", [False, True])
def test_events_prints_a_task_event(home: Path, as_json: bool) -> None:
    with following(home, *(["--json"] if as_json else [])) as (agent, proc):
        line = first_task_line(agent, proc)
    if as_json:
        event = json.loads(line)
        assert event["event"] == "task"
        assert event["data"]["tool"] == "web_fetch" and event["data"]["state"] == "pending"
    else:
        assert " task " in line and "web_fetch" in line and "pending" in line, line
        assert line.split()[2].startswith("t_"), line


def test_events_ctrl_c_exits_0(home: Path) -> None:
    with following(home) as (agent, proc):
        first_task_line(agent, proc)  # connected and following
        proc.send_signal(signal.SIGINT)  # as Ctrl-C does
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err


def test_event_line_summaries() -> None:
    task = {"id": "t_1", "tool": "http_request", "state": "dead", "attempts": 3, "last_error": "HTTP 404"}
    assert "t_1 http_request dead (attempts 3): HTTP 404" in events_cmd.event_line("task", task)
    receipt = {"id": "r_1", "kind": "task", "status": "ok", "route": {"name": "web_fetch"}}
    assert "r_1 task ok via web_fetch" in events_cmd.event_line("receipt", receipt)
    assert "offline (mode offline)" in events_cmd.event_line(
        "connectivity", {"state": "offline", "mode": "offline"}
    )
    turn = {"turn_id": "turn_1", "route": "local", "usage": {}}
    assert os.linesep not in events_cmd.event_line("turn", turn)


# --- events: following across restarts -----------------------------------------------------------


def add_task(agent: Agent, name: str) -> str:
    answer = agent.api("POST", "/v1/tasks", json={"tool": "web_fetch", "args": {"url": f"{URL}/{name}"}})
    assert answer.status_code == 201, answer.text
    task_id: str = answer.json()["id"]
    return task_id


def printed(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.endswith("}")]


def printed_tasks(out: Path) -> list[str]:
    return [e["data"]["id"] for e in printed(out) if e["event"] == "task"]


def test_events_follows_the_stream_across_an_agent_restart(home: Path, tmp_path: Path) -> None:
    agent = Agent(home, env={"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    out, err = tmp_path / "out", tmp_path / "err"
    proc: subprocess.Popen[str] | None = None
    created: list[str] = []
    try:
        agent.start()
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "waystation", "events", "--json"],
                env=agent_env(home),
                stdout=stdout,
                stderr=stderr,
                text=True,
            )

        def task_printed() -> bool:  # tasks added before it subscribed are not replayed
            created.append(add_task(agent, f"first-{len(created)}"))
            return bool(printed_tasks(out))

        wait_for(task_printed, 20, 0.3, "a task event from the first run")
        created += [add_task(agent, f"before-{i}") for i in range(3)]
        wait_for(lambda: printed_tasks(out)[-1:] == created[-1:], 10, 0.05, "the first run's events")

        assert agent.stop() == 0
        wait_for(lambda: "agent went away" in err.read_text(), 10, 0.05, "the notice of the outage")
        agent.start()
        # Added before the follower is back: it catches up from Last-Event-ID.
        created += [add_task(agent, f"after-{i}") for i in range(3)]
        wait_for(lambda: "reconnected" in err.read_text(), 15, 0.05, "the reconnect")
        created += [add_task(agent, f"later-{i}") for i in range(2)]
        wait_for(lambda: printed_tasks(out)[-1:] == created[-1:], 10, 0.05, "the second run's events")
        assert proc.poll() is None, err.read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
        agent.close()

    assert proc.returncode == 0, err.read_text()
    tasks = printed_tasks(out)
    first = created.index(tasks[0])
    assert tasks == created[first:], "every task once, in order, across the restart"
    lines = out.read_text().splitlines()
    assert len(lines) == len(set(lines)), "no event printed twice"
    notices = err.read_text().splitlines()
    assert notices == ["agent went away; reconnecting…", "reconnected"], notices


def test_resuming_with_last_event_id_sees_no_event_twice(home: Path) -> None:
    from waystation.cli.client import AgentClient

    agent = Agent(home, env={"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    try:
        agent.start()
        first = [add_task(agent, f"first-{i}") for i in range(4)]
        seen: list[tuple[int | None, str, Any]] = []
        with AgentClient(agent.socket) as client:
            for event in client.follow_events(0):  # everything this process has published
                seen.append(event)
                if event[1] == "task" and event[2]["id"] == first[-1]:
                    break
        ids = [ident for ident, _, _ in seen]
        assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids)), ids
        resume_after = ids[-3]
        more = [add_task(agent, f"more-{i}") for i in range(2)]
        again: list[tuple[int | None, str, Any]] = []
        with AgentClient(agent.socket) as client:
            for event in client.follow_events(resume_after):
                again.append(event)
                if event[1] == "task" and event[2]["id"] == more[-1]:
                    break
    finally:
        agent.close()
    assert again[:2] == seen[-2:], "resumes right after the id it gave"
    again_ids = [ident for ident, _, _ in again]
    assert len(again_ids) == len(set(again_ids)), again_ids
    assert not set(again_ids) & set(ids[:-2]), "nothing at or before Last-Event-ID comes again"
    tasks = [data["id"] for _, kind, data in again if kind == "task"]
    assert tasks == first[-2:] + more


class FakeAgent:
    """Stands in for AgentClient.follow_events: each call plays the next script item, an error
    (the agent is gone) or a list of events (the stream, which then ends)."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.resumed: list[int | None] = []

    def follow_events(
        self, last_event_id: int | None = None, on_open: Callable[[], None] | None = None
    ) -> Iterator[tuple[int | None, str, Any]]:
        self.resumed.append(last_event_id)
        if not self.script:
            raise KeyboardInterrupt  # the end of the test, as a Ctrl-C
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        if on_open is not None:
            on_open()
        for ident in step:
            yield ident, "task", {"n": ident}


def test_follow_events_dedupes_and_notes_each_outage_once(tmp_path: Path) -> None:
    from waystation.errors import AgentNotRunning

    gone = AgentNotRunning(tmp_path / "sock")
    fake = FakeAgent([1, 2, 3], gone, gone, gone, [2, 3, 4, 5], [], [5, 6], gone, [7])
    shown: list[int] = []
    notes: list[str] = []
    pauses: list[float] = []
    with pytest.raises(KeyboardInterrupt):
        events_cmd.follow_events(
            fake,  # type: ignore[arg-type]
            lambda kind, data: shown.append(data["n"]),
            sleep=pauses.append,
            note=notes.append,
        )
    assert shown == [1, 2, 3, 4, 5, 6, 7]
    assert fake.resumed == [None, 3, 3, 3, 3, 5, 5, 6, 6, 7]
    assert notes == ["agent went away; reconnecting…", "reconnected"] * 2
    assert pauses[:3] == [0.2, 0.4, 0.8]  # growing while the agent is away, reset once back


def test_follow_events_gives_up_when_no_agent_was_ever_reached(tmp_path: Path) -> None:
    from waystation.errors import AgentNotRunning

    fake = FakeAgent(AgentNotRunning(tmp_path / "sock"))
    with pytest.raises(AgentNotRunning):
        events_cmd.follow_events(fake, lambda kind, data: None, sleep=lambda s: None, note=lambda s: None)  # type: ignore[arg-type]


def test_follow_events_after_the_agent_left_before_any_event(tmp_path: Path) -> None:
    """Nothing printed yet when the agent went: the next process is read from its first event."""
    from waystation.errors import AgentNotRunning

    booted = int(time.time() * 1_000_000) + 60_000_000  # a process started a minute later
    fake = FakeAgent([], AgentNotRunning(tmp_path / "sock"), [booted])
    shown: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        events_cmd.follow_events(
            fake,  # type: ignore[arg-type]
            lambda kind, data: shown.append(data["n"]),
            sleep=lambda s: None,
            note=lambda s: None,
        )
    assert shown == [booted]
    assert fake.resumed[:2] == [None, None] and isinstance(fake.resumed[2], int)
