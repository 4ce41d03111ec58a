"""Progress on a terminal, and shell completion: the real CLI under a pseudo-terminal.

`waystation turn` shows a spinner on stderr ("loading model…", then "thinking…" once the model
is in memory) until the reply starts, and `turn wait` says what a parked turn waits for ("parked:
waiting for the network (1 call)"); a turn that parks says how to get its answer later;
`waystation queue flush` follows the queue counts until
nothing is left or connectivity is not online. Neither shows anything of the kind when its
output is piped, and --show-completion prints a completion script.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.agentproc import Agent, agent_env, make_home, remove_home

# What a terminal shows while a turn loads, waits and generates, timed on real processes.
pytestmark = pytest.mark.alone

URL = "http://127.0.0.1:9/x"  # the discard port: nothing is sent while offline
SPINNER_WORDS = ("loading model", "thinking", "flushing", "pending 1, running")
TURN = ("turn", "Say hi.", "--max-tokens", "4", "--tools", "none", "--route", "local")


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "waystation", *args]


def in_terminal(home: Path, *args: str, timeout: float = 180.0) -> tuple[int, str]:
    """Run one command with stdin, stdout and stderr on a pseudo-terminal; (exit code, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    try:
        proc = subprocess.Popen(
            command(*args),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=agent_env(home, {"TERM": "xterm-256color", "PYTHONIOENCODING": "utf-8"}),
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{args} still running after {timeout:g}s: {b''.join(chunks)!r}")
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError as exc:  # EIO: the last holder of the terminal's other side has gone
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return code, b"".join(chunks).decode("utf-8", "replace")


def piped(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        env=agent_env(home, {"TERM": "xterm-256color"}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    """One real agent, forced offline: local turns run, tool calls stay parked."""
    a = Agent(make_home(), {"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    try:
        yield a.start()
    finally:
        a.close()
        remove_home(a.home)


# --- shell completion ----------------------------------------------------------------------------


FIRST_LINE = {
    "bash": "_waystation_completion() {",
    "zsh": "#compdef waystation",
    "fish": "complete --command waystation",
}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_show_completion_prints_the_script_of_the_shell_it_runs_in(tmp_path: Path, shell: str) -> None:
    """`--show-completion` takes no shell name: typer finds the shell among the command's parents
    (shellingham), so each is asked from inside that shell (`; exit` keeps the shell from exec'ing
    the command in its place). Given a name, as this test did before, it was ignored: run from
    bash it printed bash's script for zsh, and run with no shell above it "Shell  not supported"."""
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} is not installed")
    line = " ".join(shlex.quote(part) for part in command("--show-completion"))
    done = subprocess.run(
        [path, "-c", f"{line}; exit"],
        env=agent_env(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert FIRST_LINE[shell] in done.stdout
    assert "_WAYSTATION_COMPLETE" in done.stdout
    assert done.stderr == ""


def test_completion_completes_commands(tmp_path: Path) -> None:
    env = agent_env(tmp_path, {"_WAYSTATION_COMPLETE": "complete_bash", "COMP_WORDS": "waystation qu"})
    env["COMP_CWORD"] = "1"
    done = subprocess.run(command(), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["queue"]


def test_root_help_offers_completion(tmp_path: Path) -> None:
    done = piped(tmp_path, "--help")
    assert done.returncode == 0
    assert "--install-completion" in done.stdout and "--show-completion" in done.stdout
    sub = piped(tmp_path, "queue", "--help")
    assert "--show-completion" not in sub.stdout  # only the root app has it


def test_the_run_fast_path_does_not_load_typer(tmp_path: Path) -> None:
    probe = (
        "import sys, waystation.cli as cli, waystation.agent.runner as r; "
        "r.run_agent = lambda: 0\n"
        "try:\n cli.main(['run'])\nexcept SystemExit as e:\n"
        " print(e.code, 'typer' in sys.modules, 'shellingham' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=agent_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["0", "False", "False"], done.stderr


# --- turn ------------------------------------------------------------------------------------------


def test_turn_on_a_terminal_shows_the_model_loading_then_thinking(agent: Agent) -> None:
    first_code, first = in_terminal(agent.home, *TURN)
    assert first_code == 0, first
    assert "loading model" in first
    assert "Traceback" not in first and "error:" not in first
    second_code, second = in_terminal(agent.home, *TURN)
    assert second_code == 0, second
    assert "thinking" in second and "loading model" not in second


def test_turn_piped_shows_no_spinner(agent: Agent) -> None:
    done = piped(agent.home, *TURN)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    for word in SPINNER_WORDS:
        assert word not in done.stdout and word not in done.stderr
    assert "\x1b" not in done.stdout + done.stderr
    as_json = piped(agent.home, *TURN, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["text"] is not None
    assert "\x1b" not in as_json.stdout + as_json.stderr


# --- a parked turn ---------------------------------------------------------------------------------

PARK = ("turn", f"Fetch {URL} and tell me its title.", "--tools", "required", "--route", "local")
WAITS_FOR_THE_NETWORK = "parked: waiting for the network (1 call)"


@pytest.fixture(scope="module")
def parked(agent: Agent) -> tuple[str, subprocess.CompletedProcess[str]]:
    """(the id, the piped run) of one turn that parked its call: the agent is offline."""
    done = piped(agent.home, *PARK)
    assert done.returncode == 0, done.stderr
    (turn,) = agent.api("GET", "/v1/turns", params={"state": "parked"}).json()
    return turn["turn_id"], done


def test_a_turn_that_parks_says_how_to_get_its_answer(
    parked: tuple[str, subprocess.CompletedProcess[str]],
) -> None:
    turn_id, done = parked
    assert done.stderr == (
        f"parked 1 call until the network is back; see the answer with: waystation turn wait {turn_id}\n"
    )


def test_turn_wait_on_a_terminal_says_the_turn_waits_for_the_network(
    agent: Agent, parked: tuple[str, subprocess.CompletedProcess[str]]
) -> None:
    turn_id, _ = parked
    code, out = in_terminal(agent.home, "turn", "wait", turn_id, "--timeout", "2")
    assert code == 5, out  # still parked when it stopped waiting
    assert WAITS_FOR_THE_NETWORK in out
    assert f"turn {turn_id} is still parked" in out
    assert "Traceback" not in out and "error:" not in out
    # Never with --json, nor when stderr is not a terminal.
    code, out = in_terminal(agent.home, "turn", "wait", turn_id, "--timeout", "1", "--json")
    assert code == 5, out
    assert "waiting for the network" not in out
    done = piped(agent.home, "turn", "wait", turn_id, "--timeout", "1")
    assert done.returncode == 5, done.stderr
    assert done.stdout == turn_id + "\n"
    assert "waiting for the network" not in done.stderr and "\x1b" not in done.stderr


# --- queue flush -----------------------------------------------------------------------------------


def _add_task(agent: Agent) -> None:
    done = piped(agent.home, "queue", "add", "http_request", "--args", json.dumps({"url": URL}), "--json")
    assert done.returncode == 0, done.stderr


def test_flush_on_a_terminal_follows_progress_and_says_it_waits_for_online(agent: Agent) -> None:
    _add_task(agent)
    code, out = in_terminal(agent.home, "queue", "flush")
    assert code == 0, out
    assert "due now" in out
    assert "pending" in out and "running" in out and "done" in out
    assert "remaining task" in out and "when online" in out
    assert "Traceback" not in out and "error:" not in out


def test_flush_no_wait_on_a_terminal_only_starts_it(agent: Agent) -> None:
    _add_task(agent)
    code, out = in_terminal(agent.home, "queue", "flush", "--no-wait")
    assert code == 0, out
    assert "due now" in out
    assert "remaining task" not in out and "pending 1, running" not in out


def test_flush_piped_is_as_before(agent: Agent) -> None:
    _add_task(agent)
    done = piped(agent.home, "queue", "flush")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and "pending task" in lines[0] and "due now" in lines[0]
    assert done.stderr == ""
    as_json = piped(agent.home, "queue", "flush", "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["connectivity"] == "offline"
    assert as_json.stderr == ""


def test_flush_wait_when_piped_prints_the_outcome_without_a_spinner(agent: Agent) -> None:
    _add_task(agent)
    done = piped(agent.home, "queue", "flush", "--wait")
    assert done.returncode == 0, done.stderr
    assert "when online" in done.stdout.splitlines()[-1]
    assert done.stderr == "" and "\x1b" not in done.stdout


def test_ctrl_c_while_following_exits_0(agent: Agent, tmp_path: Path) -> None:
    """The agent goes online (probes fail, tasks stay pending), so the flush is followed until
    Ctrl-C, which stops following and exits 0."""
    _add_task(agent)
    agent.set_mode("online")
    try:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            command("queue", "flush"),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=agent_env(agent.home, {"TERM": "xterm-256color", "PYTHONIOENCODING": "utf-8"}),
        )
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 30
        while b"pending" not in seen.split(b"due now", 1)[-1] and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 65536)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        time.sleep(0.2)
        while select.select([master], [], [], 0.2)[0]:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
        os.close(master)
    finally:
        agent.set_mode("offline")
    text = seen.decode("utf-8", "replace")
    assert code == 0, text
    assert "keeps delivering" in text
