"""`fleet submit` checks work as `POST /v1/tasks` checks a task, before anything is sent: an
unknown tool or arguments its tool refuses are a usage error (exit 2) naming the problem, its help
names only tools that exist, and a host the hub has never heard of is a warning (the work waits)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fleetproc import NatsServer, stream_messages

from waystation.adapters.tools import default_tools
from waystation.cli.app import run_cli
from waystation.cli.commands.fleet import TOOLS
from waystation.receipts.checkpoints import SigningKey

GET = {"method": "GET", "url": "https://example.com/"}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "ops.key"
    path.write_text(SigningKey.generate("ops@example.org").private_text() + "\n")
    return path


@pytest.fixture
def fleet_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("WAYSTATION_HOME", str(home))
    # Never reached: the work is checked before the hub is (a valid one is sent: the last test).
    monkeypatch.setenv("WAYSTATION_FLEET__URL", "nats://127.0.0.1:9")
    yield home


def submit(key_file: Path, host: str, tool: str, args: object, *more: str) -> int:
    return run_cli(
        ["fleet", "submit", host, tool, "--args", json.dumps(args), "--key-file", str(key_file), *more]
    )


def test_an_unknown_tool_is_a_usage_error_naming_the_tools(
    fleet_home: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert submit(key_file, "edge-7", "ftp_get", GET) == 2
    said = capsys.readouterr().err
    assert "unknown tool 'ftp_get'" in said and "http_request" in said and "web_fetch" in said, said


def test_arguments_the_tool_refuses_are_a_usage_error_with_its_message(
    fleet_home: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert submit(key_file, "edge-7", "http_request", {"method": "GET", "url": "ftp://example.com/x"}) == 2
    said = capsys.readouterr().err
    assert said.startswith("error: http_request: ") and "ftp" in said, said
    assert (
        submit(key_file, "edge-7", "http_request", {"url": "https://example.com/"}, "--key", "bad\x01key")
        == 2
    )
    assert "idempotency key" in capsys.readouterr().err


def test_the_help_names_the_tools_that_exist_and_no_other() -> None:
    assert set(TOOLS) == set(default_tools().names())


def test_a_host_the_hub_has_never_seen_is_a_warning(
    tmp_path: Path,
    fleet_home: Path,
    key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hub = NatsServer(tmp_path / "js").start()
    try:
        monkeypatch.setenv("WAYSTATION_FLEET__URL", hub.url)
        assert submit(key_file, "edge-new", "http_request", GET, "--key", "first") == 0
        said = capsys.readouterr().err
        assert "warning: the hub has never seen host edge-new" in said, said
        assert len(stream_messages(hub.url, "WAYSTATION_WORK", "waystation.edge-new.work")) == 1  # still sent
    finally:
        hub.stop()
