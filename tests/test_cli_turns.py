"""`waystation turn` says what is happening: which words are a subcommand and which a prompt, the
hint for a web address without its scheme, what a waiting turn is waiting for, and the next step
for a turn that ends parked.

The word rules, the address detection and the waiting loop are pure (a scripted reader stands in
for the agent); the hint is checked on the real command, on a route that refuses at once (no
model runs, the turn still gets its receipt).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.agentproc import cli_process

from waystation.cli.commands.turn import parked_note, read_words
from waystation.cli.commands.turn_comeback import follow_turn, waiting_text
from waystation.cli.schemeless import hint, schemeless_links
from waystation.errors import AgentNotRunning

REFUSED = ("--route", "compatible")  # no server configured: refused before any model runs

# --- which words are a subcommand ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "meant"),
    [
        (["ls"], ("ls", None)),
        (["show"], ("show", None)),
        (["wait"], ("wait", None)),
        (["show", "turn_1a2b3c"], ("show", "turn_1a2b3c")),
        (["wait", "turn_01a24b58bdb205dcf9d76e"], ("wait", "turn_01a24b58bdb205dcf9d76e")),
        (["show", "me", "a", "haiku"], ("prompt", None)),
        (["show", "me"], ("prompt", None)),
        (["wait", "for", "it"], ("prompt", None)),
        (["wait", "turn_1a2b", "please"], ("prompt", None)),
        (["show", "turn_"], ("prompt", None)),
        (["show turn_1a2b"], ("prompt", None)),  # quoted as one argument: always a prompt
        (["ls", "the", "files"], ("prompt", None)),
        (["list"], ("prompt", None)),
        (["Hello"], ("prompt", None)),
    ],
)
def test_words_are_a_subcommand_only_in_its_exact_shape(
    words: list[str], meant: tuple[str, str | None]
) -> None:
    assert read_words(words) == meant


# --- web addresses without a scheme ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "found"),
    [
        ("summarise example.com/news", ["example.com/news"]),
        ("fetch docs.python.org/3/", ["docs.python.org/3/"]),
        ("what is on www.example.org", ["www.example.org"]),
        ("read www.bbc.co.uk.", ["www.bbc.co.uk"]),
        ("Summarise Example.com/news, please", ["Example.com/news"]),
        ("see (github.com/python/cpython)", ["github.com/python/cpython"]),
        ("open `docs.rs/tokio`", ["docs.rs/tokio"]),
        ("try example.com:8080/api?x=1", ["example.com:8080/api?x=1"]),
        ("news.ycombinator.com/ and lobste.rs/", ["news.ycombinator.com/", "lobste.rs/"]),
        ("a.com/x then a.com/x again", ["a.com/x"]),
        ("compare https://example.com/a with example.com/b", ["example.com/b"]),
    ],
)
def test_addresses_without_a_scheme_are_found(prompt: str, found: list[str]) -> None:
    assert schemeless_links(prompt) == found


@pytest.mark.parametrize(
    "prompt",
    [
        "e.g. this",
        "i.e., that",
        "version 3.5 is out",
        "python 3.12/3.13 differences",
        "edit notes.txt",
        "open src/main.py",
        "run setup.py/build",
        "read README.md/intro",
        "example.com",  # a bare host, no path and no www.: too likely a name in a sentence
        "fetch https://example.com/news",
        "fetch http://docs.python.org/3/",
        "mail me at someone@example.com/x",
        "ASP.NET/Core or Node.js/Express?",
        "U.S. and U.K.",
        "192.168.1.1/admin",
        "localhost:8080/x",
        "a//b",
        "",
    ],
)
def test_other_dotted_words_are_not_addresses(prompt: str) -> None:
    assert schemeless_links(prompt) == []


def test_the_hint_says_why_and_how() -> None:
    assert hint("example.com/news") == (
        "hint: example.com/news has no http:// or https://, so it will not be fetched; "
        "write https://example.com/news"
    )


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli_process(home, *args)


def test_a_prompt_with_a_bare_address_gets_the_hint_and_still_runs(tmp_path: Path) -> None:
    done = cli(tmp_path, "turn", "summarise", "example.com/news", *REFUSED)
    assert done.returncode == 4, done.stderr  # it ran: the route refused it
    lines = done.stderr.splitlines()
    assert lines[0] == hint("example.com/news")
    assert lines[1].startswith("error: ")
    as_json = cli(tmp_path, "turn", "summarise", "example.com/news", *REFUSED, "--json")
    assert as_json.returncode == 4
    assert "hint:" not in as_json.stderr
    plain = cli(tmp_path, "turn", "summarise", "e.g.", "version", "3.5", *REFUSED)
    assert plain.returncode == 4 and "hint:" not in plain.stderr
    turns = json.loads(cli(tmp_path, "turn", "ls", "--json").stdout)
    assert [t["state"] for t in turns] == ["refused"] * 3


# --- what a waiting turn waits for -----------------------------------------------------------------


def a_turn(state: str, *task_states: str) -> dict[str, Any]:
    calls = [
        {"id": f"c{i}", "tool": "web_fetch", "status": "deferred", "task_id": f"t_{i}", "task_state": s}
        for i, s in enumerate(task_states)
    ]
    return {"turn_id": "turn_1a2b", "state": state, "tool_calls": calls}


@pytest.mark.parametrize(
    ("turn", "text"),
    [
        (a_turn("parked", "pending"), "parked: waiting for the network (1 call)"),
        (a_turn("parked", "pending", "running", "done"), "parked: waiting for the network (2 calls)"),
        (a_turn("parked", "done"), "resuming"),  # every call answered: it resumes next
        (a_turn("resuming", "done"), "resuming"),
        (a_turn("deferred"), "deferred: waiting for the network"),
        (a_turn("running"), "running"),
    ],
)
def test_waiting_text(turn: dict[str, Any], text: str) -> None:
    assert waiting_text(turn) == text


class ScriptedTurns:
    """A reader that answers one scripted turn after another (the last one for good)."""

    def __init__(self, *answers: dict[str, Any] | Exception, via_agent: bool = True) -> None:
        self.answers = list(answers)
        self.via_agent: bool | None = via_agent
        self.asked = 0

    def get_turn(self, turn_id: str) -> dict[str, Any]:
        self.asked += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Shown:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.notes: list[str] = []

    def update(self, text: str) -> None:
        if not self.texts or self.texts[-1] != text:
            self.texts.append(text)

    def note(self, line: str) -> None:
        self.notes.append(line)


def test_following_a_turn_says_parked_then_resuming_until_it_ends() -> None:
    ended = {**a_turn("ok", "done"), "text": "Harbour Lights"}
    reader = ScriptedTurns(
        a_turn("running"),
        a_turn("parked", "pending"),
        a_turn("parked", "pending"),
        a_turn("parked", "done"),
        a_turn("resuming", "done"),
        ended,
    )
    shown, pauses = Shown(), []
    found, done = follow_turn(reader, "turn_1a2b", None, shown, pauses.append)
    assert (found, done) == (ended, True)
    assert shown.texts == ["running", "parked: waiting for the network (1 call)", "resuming"]
    assert shown.notes == []
    assert pauses == [0.1, 0.2, 0.4, 0.8, 1.0]  # looks come less often as it waits, at most 1 s apart


def test_following_stops_at_the_timeout_with_the_turn_still_parked() -> None:
    reader = ScriptedTurns(a_turn("parked", "pending"))
    shown = Shown()
    found, done = follow_turn(reader, "turn_1a2b", 0.0, shown, lambda _s: None)
    assert not done and found["state"] == "parked" and reader.asked == 1
    assert shown.texts == ["parked: waiting for the network (1 call)"]


def test_following_without_an_agent_says_once_that_it_needs_one() -> None:
    reader = ScriptedTurns(
        AgentNotRunning(Path("/nowhere.sock")), a_turn("parked", "pending"), a_turn("parked", "pending")
    )
    reader.via_agent = False
    shown = Shown()
    found, done = follow_turn(reader, "turn_1a2b", 0.0, shown, lambda _s: None)
    assert not done and found["state"] == "parked"
    assert shown.notes == ["turn turn_1a2b is parked; it goes on once an agent runs (`waystation run`)"]


# --- the next step for a turn that ends parked -----------------------------------------------------


def test_a_parked_turn_names_the_command_that_gets_its_answer() -> None:
    result = {
        "turn_id": "turn_ab12",
        "status": "parked",
        "tool_calls": a_turn("parked", "pending")["tool_calls"],
    }
    assert parked_note(result, in_process=False) == (
        "parked 1 call until the network is back; see the answer with: waystation turn wait turn_ab12"
    )
    assert parked_note(result, in_process=True) == (
        "parked 1 call until the agent runs (`waystation run`) and the network is back; "
        "see the answer with: waystation turn wait turn_ab12"
    )
    deferred = {"turn_id": "turn_ab12", "status": "parked", "tool_calls": [], "deferred_task_ids": ["t_1"]}
    assert parked_note(deferred, in_process=False).startswith("deferred the turn until the network is back;")
