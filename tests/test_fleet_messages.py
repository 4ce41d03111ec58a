"""The host's side of fleet work, in process: one message that fails in any way is terminated and
the rest of its batch is still handled; a failure of the host's own database is redelivered later,
up to the consumer's max_deliver; nesting is bounded before parsing. And the small things of the
fleet: the URL's password masked (as Go's url.URL.Redacted), streams sized to the account, the
checkpoint origin naming `[fleet] host`, `fleet status` showing the states the data has."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from waystation.adapters.fleet import work
from waystation.adapters.fleet.hub import safe_url
from waystation.adapters.fleet.layout import (
    RECEIPTS_MAX_BYTES,
    WORK_MAX_BYTES,
    WORK_MAX_DELIVER,
    receipts_config,
    size_note,
    stream_bytes,
    work_config,
)
from waystation.adapters.fleet.work import MAX_WORK_DEPTH, too_deep, work_body
from waystation.errors import DiskFull, MalformedRequest
from waystation.receipts.checkpoints import SigningKey, default_origin
from waystation.station import fleet as agent_fleet
from waystation.station.fleet import Fleet


@dataclass
class FakeMsg:
    """What _take reads of a JetStream message, and what it did to it."""

    data: bytes
    stream_seq: int
    delivered: int = 1
    headers: dict[str, str] = field(default_factory=dict)
    settled: list[str] = field(default_factory=list)

    @property
    def metadata(self) -> Any:
        return SimpleNamespace(sequence=SimpleNamespace(stream=self.stream_seq), num_delivered=self.delivered)

    async def ack_sync(self) -> None:
        self.settled.append("ack")

    async def term(self) -> None:
        self.settled.append("term")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append(f"nak {delay:g}")


OPERATOR = SigningKey.generate("ops")


def signed(data: bytes, stream_seq: int, delivered: int = 1) -> FakeMsg:
    return FakeMsg(data, stream_seq, delivered, headers=work.sign_work(data, OPERATOR))


def bare_fleet() -> Fleet:
    fleet = Fleet.__new__(Fleet)
    fleet.host = "edge-w"
    fleet._work_keys = [OPERATOR.verifier]
    # add_request is replaced below; _add reads only the secrets work may name.
    fleet._station = SimpleNamespace(settings=SimpleNamespace(fleet=SimpleNamespace(work_secrets=[])))  # type: ignore[assignment]
    return fleet


async def test_any_failure_of_one_message_terminates_it_and_the_batch_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def add_request(_: Any, body: dict[str, Any], key: str, admit: Any) -> tuple[dict[str, Any], bool]:
        if body.get("tool") == "crash":
            raise RuntimeError("a bug one message triggers")
        if body.get("tool") == "disk":
            raise DiskFull("/x/waystation.db", "no space left")
        return {"id": key}, True

    monkeypatch.setattr(agent_fleet.tasks, "add_request", add_request)
    fleet = bare_fleet()
    batch = [
        signed(json.dumps({"tool": "crash"}).encode(), 1),
        signed(b"[" * 100_000 + b"]" * 100_000, 2),
        FakeMsg(b"\xff\xfe not utf-8", 3),
        signed(json.dumps({"tool": "disk"}).encode(), 4),
        signed(json.dumps({"tool": "disk"}).encode(), 5, delivered=WORK_MAX_DELIVER),
        signed(json.dumps({"tool": "http_request"}).encode(), 6),
    ]
    for msg in batch:
        await fleet._take(msg)  # type: ignore[arg-type]
    assert [m.settled for m in batch] == [
        ["term"],
        ["term"],
        ["term"],
        [f"nak {agent_fleet.LOCAL_RETRY_S:g}"],  # the host's own failure: again later
        ["term"],  # ... until the consumer would give up anyway
        ["ack"],
    ]


def test_nesting_is_bounded_before_parsing() -> None:
    assert too_deep(b"[" * 100_000, MAX_WORK_DEPTH)
    assert not too_deep(b"[" * MAX_WORK_DEPTH + b"]" * MAX_WORK_DEPTH, MAX_WORK_DEPTH)
    assert too_deep(b"[" * (MAX_WORK_DEPTH + 1), MAX_WORK_DEPTH)
    # Brackets inside strings (escaped quotes included) are text, not nesting.
    inside = json.dumps({"tool": "t", "args": {"body": "[{" * 500 + '\\"'}}).encode()
    assert not too_deep(inside, MAX_WORK_DEPTH)
    with pytest.raises(MalformedRequest, match="nested over 64 levels"):
        work_body(b'{"a":' * 100_000)
    with pytest.raises(MalformedRequest, match="not a JSON object"):
        work_body(b"[1]")


def test_the_password_is_masked_as_go_redacts_it_even_with_slash_or_at() -> None:
    assert safe_url("nats://fleet:pa/ss@hub.example:4222") == "nats://fleet:xxxxx@hub.example:4222"
    assert safe_url("nats://fleet:p@ss/w@hub.example:4222") == "nats://fleet:xxxxx@hub.example:4222"
    assert safe_url("tls://s3cret-token@hub.example") == "tls://xxxxx@hub.example"  # a token: all of it
    assert safe_url("nats://hub.example:4222") == "nats://hub.example:4222"


def test_streams_are_sized_from_the_accounts_limits() -> None:
    unlimited = -1
    assert stream_bytes(RECEIPTS_MAX_BYTES, unlimited, unlimited, 0.5) == RECEIPTS_MAX_BYTES
    assert stream_bytes(RECEIPTS_MAX_BYTES, 64 * 1024**2, unlimited, 0.5) == 32 * 1024**2
    assert stream_bytes(WORK_MAX_BYTES, unlimited, 4 * 1024**2, 0.125) == 4 * 1024**2
    assert size_note(receipts_config(), RECEIPTS_MAX_BYTES) == ""
    small = work_config()
    small.max_bytes = -1
    assert size_note(small, WORK_MAX_BYTES) == (
        "WAYSTATION_WORK is bounded by age only (14 days): the hub has no room for 1 GiB"
    )


def test_a_new_key_names_fleet_host_in_its_origin(tmp_path: Path) -> None:
    assert SigningKey.load_or_create(tmp_path / "a", "edge-7").name == "waystation/edge-7"
    assert SigningKey.load_or_create(tmp_path / "b").name == default_origin()
    # A key keeps the origin it was made with (receipts.pub): its verifier key stays valid.
    assert SigningKey.load_or_create(tmp_path / "a", "renamed").name == "waystation/edge-7"


def test_fleet_status_shows_dead_tasks_as_the_data_names_them(capsys: pytest.CaptureFixture[str]) -> None:
    from waystation.cli.commands.fleet import _table

    _table([{"host": "edge-a", "connectivity": "online", "queue": {"pending": 2, "dead": 7}, "age_s": 3}])
    out = capsys.readouterr().out
    assert "DEAD" in out and "FAILED" not in out and " 7 " in out, out
