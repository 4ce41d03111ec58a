"""`fleet status` shows what hosts wrote to the hub as plain text (issue 20, item 3): markup is
escaped and control characters dropped, so one host cannot break the table or reach the terminal."""

from __future__ import annotations

import pytest

from waystation.cli.commands.fleet import _table


def test_hub_strings_are_neither_markup_nor_terminal_controls(capsys: pytest.CaptureFixture[str]) -> None:
    hostile = {
        "host": "edge-a",
        "connectivity": "[/]online[bold red]",
        "queue": {"pending": "\x1b]0;owned\x07\x1b[2J", "dead": "\x9b31m1"},
        "model": {"name": "[link=https://evil.example]m[/link]"},
        "last_receipt": "not an object",
        "age_s": 3.0,
        "stale": False,
    }
    _table([hostile, {"host": "edge-b", "connectivity": "online", "age_s": 1.0, "stale": False}])
    out = capsys.readouterr().out
    assert "edge-b" in out  # the table was drawn, for every host
    assert "[/]online[bold red]" in out and "[link=https://evil.example]m[/link]" in out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "]0;owned" in out and "31m1" in out  # what is left of them, inert
