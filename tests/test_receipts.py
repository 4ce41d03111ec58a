"""Receipts: canonical JSON, the SHA-256 chain, and verify naming the first break."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from waystation import timeutil
from waystation.db import Database
from waystation.errors import NotFound
from waystation.receipts import chain
from waystation.receipts.chain import (
    GENESIS_HASH,
    ReceiptDraft,
    RouteInfo,
    Usage,
    append,
    get_receipt,
    latest_receipts,
    list_receipts,
    verify,
    verify_database,
)

LOCAL = RouteInfo(name="local", provider="llamacpp", auth_lane="none", cost_lane="local", model="smol")
CONTRACT_KEYS = {
    "id",
    "kind",
    "created_at",
    "status",
    "reason",
    "route",
    "usage",
    "credits_used",
    "duration_ms",
    "turn_id",
    "task_id",
    "deferred_task_ids",
    "prev_hash",
    "hash",
}


def _draft(n: int = 0, **kw: Any) -> ReceiptDraft:
    fields: dict[str, Any] = {
        "kind": "turn",
        "status": "ok",
        "route": LOCAL,
        "reason": f"turn {n}",
        "usage": Usage(prompt_tokens=n, completion_tokens=2 * n),
        "duration_ms": n,
        "turn_id": f"u_{n}",
    }
    fields.update(kw)
    return ReceiptDraft(**fields)


async def _append(db: Database, draft: ReceiptDraft) -> dict[str, Any]:
    return await db.write(lambda conn: append(conn, draft))


async def _chain(db: Database, n: int) -> list[dict[str, Any]]:
    return [await _append(db, _draft(i)) for i in range(n)]


def _sha256_of_body_without_hash(body: dict[str, Any]) -> str:
    unhashed = {k: v for k, v in body.items() if k != "hash"}
    text = json.dumps(unhashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _raw(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A plain connection for tampering, as an attacker with the file would."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


async def _rows(db: Database) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in await db.fetchall("SELECT id, body, hash FROM receipts ORDER BY seq")]


# --- the record ----------------------------------------------------------------------------------


async def test_append_returns_the_contract_receipt(db: Database) -> None:
    draft = _draft(
        3, kind="task", status="error", task_id="t_1", deferred_task_ids=("t_2", "t_3"), credits_used=0
    )
    body = await _append(db, draft)
    assert set(body) >= CONTRACT_KEYS  # later fields may be added, none removed
    assert body["id"].startswith("r_")
    assert body["kind"] == "task"
    assert body["status"] == "error"
    assert body["route"] == {
        "name": "local",
        "provider": "llamacpp",
        "auth_lane": "none",
        "cost_lane": "local",
        "model": "smol",
    }
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 6}
    assert body["deferred_task_ids"] == ["t_2", "t_3"]
    assert body["credits_used"] == 0
    assert body["task_id"] == "t_1" and body["turn_id"] == "u_3"
    assert body["prev_hash"] == GENESIS_HASH
    assert abs(timeutil.parse_iso(body["created_at"]) - timeutil.now()) < 3600
    assert body["created_at"].endswith("Z")


async def test_hash_is_sha256_of_canonical_json_without_hash(db: Database) -> None:
    body = await _append(db, _draft(1, reason="ünïcode ✓ reason"))
    assert len(body["hash"]) == 64
    assert body["hash"] == _sha256_of_body_without_hash(body)
    assert chain.receipt_hash(body) == body["hash"]


async def test_stored_body_is_canonical_json_with_its_hash(db: Database) -> None:
    body = await _append(db, _draft(1, reason="naïve"))
    row = await db.fetchone("SELECT id, kind, turn_id, body, hash FROM receipts")
    assert row is not None
    assert row["body"] == json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert json.loads(row["body"]) == body
    assert (row["id"], row["kind"], row["turn_id"], row["hash"]) == (body["id"], "turn", "u_1", body["hash"])


async def test_every_field_filled_stores_exactly_the_canonical_json_and_its_hash(db: Database) -> None:
    # The stored text and the hash are built from the body's halves either side of "hash": they
    # must still be byte for byte the canonical JSON of the whole body, whatever the fields hold.
    draft = _draft(
        7,
        reason='a "quoted", \\ tricky,"id": reason ✓',
        task_id="t_9",
        deferred_task_ids=("t_1", 'odd,"hash":"x'),
        credits_used=0.25,
        cold_load_ms=1200,
        model_answered="smol-2 ✓",
        telemetry={"hash": "0" * 64, "id": "x", "a": "ü"},
        route=RouteInfo(name="n", provider="p", auth_lane="key", cost_lane="paid", model=None),
    )
    await _append(db, _draft(1))
    body = await _append(db, draft)
    row = await db.fetchone("SELECT body, hash FROM receipts ORDER BY seq DESC LIMIT 1")
    assert row is not None
    assert row["body"] == json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert row["hash"] == body["hash"] == _sha256_of_body_without_hash(body)
    assert list(body) == [
        "id", "kind", "created_at", "status", "reason", "route", "usage", "credits_used", "duration_ms",
        "turn_id", "task_id", "deferred_task_ids", "cold_load_ms", "model_answered", "telemetry",
        "prev_hash", "hash",
    ]  # fmt: skip
    assert (await verify_database(db)).ok


async def test_chain_links_each_receipt_to_the_one_before(db: Database) -> None:
    links = await _chain(db, 6)
    assert links[0]["prev_hash"] == GENESIS_HASH
    for before, after in itertools.pairwise(links):
        assert after["prev_hash"] == before["hash"]
    assert len({r["hash"] for r in links}) == 6
    assert await verify_database(db) == chain.Verification(True, 6)


async def test_concurrent_appends_in_one_group_commit_never_fork(db: Database) -> None:
    bodies = await asyncio.gather(*(_append(db, _draft(i)) for i in range(60)))
    assert len({b["id"] for b in bodies}) == 60
    prevs = [b["prev_hash"] for b in bodies]
    assert len(set(prevs)) == 60, "two receipts claim the same predecessor: the chain forked"
    result = await verify_database(db)
    assert result.ok and result.count == 60


async def test_a_failed_write_leaves_no_receipt_and_no_gap(db: Database) -> None:
    first = await _append(db, _draft(1))

    def op(conn: sqlite3.Connection) -> None:
        append(conn, _draft(2))
        raise NotFound("thing", "x")  # the rest of the transaction failed

    with pytest.raises(NotFound):
        await db.write(op)
    third = await _append(db, _draft(3))
    assert third["prev_hash"] == first["hash"]
    assert [r["id"] for r in await list_receipts(db)] == [first["id"], third["id"]]
    assert (await verify_database(db)).ok


def test_new_ids_sort_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_700_000_000.0]
    monkeypatch.setattr(timeutil, "now", lambda: clock[0])
    ids = []
    for _ in range(20):
        ids.append(chain.new_id("r"))
        clock[0] += 0.002
    assert ids == sorted(ids)
    assert len(set(ids)) == 20
    assert all(i.startswith("r_") for i in ids)


def test_canonical_json_is_sorted_compact_and_not_ascii_escaped() -> None:
    text = chain.canonical_json({"b": 1, "a": [1, {"d": 2, "c": "é"}]})
    assert text == '{"a":[1,{"c":"é","d":2}],"b":1}'


# --- reading -------------------------------------------------------------------------------------


async def test_list_receipts_in_chain_order_with_paging(db: Database) -> None:
    links = await _chain(db, 7)
    ids = [r["id"] for r in links]
    assert [r["id"] for r in await list_receipts(db)] == ids
    assert [r["id"] for r in await list_receipts(db, limit=3)] == ids[:3]
    assert [r["id"] for r in await list_receipts(db, after=ids[2], limit=3)] == ids[3:6]
    assert await list_receipts(db, after=ids[-1]) == []
    with pytest.raises(NotFound):
        await list_receipts(db, after="r_nope")
    assert [r["id"] for r in await latest_receipts(db, 2)] == ids[-2:]
    assert await list_receipts(db) == links


async def test_get_receipt(db: Database) -> None:
    body = await _append(db, _draft(5))
    assert await get_receipt(db, body["id"]) == body
    with pytest.raises(NotFound) as info:
        await get_receipt(db, "r_missing")
    assert info.value.http_status == 404


# --- verify --------------------------------------------------------------------------------------


def test_verify_an_empty_chain_is_ok() -> None:
    result = verify([])
    assert result.ok and result.count == 0 and result.first_broken_id is None
    assert result.to_json() == {
        "ok": True,
        "count": 0,
        "first_broken_id": None,
        "reason": None,
        "checkpoint": None,
    }


async def test_verify_an_empty_database_is_ok(db: Database) -> None:
    assert await verify_database(db) == chain.Verification(True, 0)


async def test_verify_names_an_edited_body(db: Database) -> None:
    links = await _chain(db, 5)
    victim = links[2]
    edited = dict(victim, status="refused")  # hash left as it was
    with _raw(db.path) as raw:
        raw.execute("UPDATE receipts SET body = ? WHERE id = ?", (chain.canonical_json(edited), victim["id"]))
    result = await verify_database(db)
    assert not result.ok
    assert result.first_broken_id == victim["id"]
    assert result.count == 3
    assert result.reason is not None and "hash" in result.reason


async def test_verify_names_the_next_receipt_when_an_edit_was_rehashed(db: Database) -> None:
    links = await _chain(db, 5)
    victim = links[1]
    forged = dict(victim, credits_used=1000)
    forged["hash"] = _sha256_of_body_without_hash(forged)
    with _raw(db.path) as raw:
        raw.execute(
            "UPDATE receipts SET body = ?, hash = ? WHERE id = ?",
            (chain.canonical_json(forged), forged["hash"], victim["id"]),
        )
    result = await verify_database(db)
    assert not result.ok
    assert result.first_broken_id == links[2]["id"]
    assert result.reason is not None and "prev_hash" in result.reason


async def test_verify_names_the_receipt_after_a_deleted_one(db: Database) -> None:
    links = await _chain(db, 5)
    with _raw(db.path) as raw:
        raw.execute("DELETE FROM receipts WHERE id = ?", (links[2]["id"],))
    result = await verify_database(db)
    assert not result.ok
    assert result.first_broken_id == links[3]["id"]


async def test_verify_names_the_first_of_two_swapped_receipts(db: Database) -> None:
    links = await _chain(db, 5)
    with _raw(db.path) as raw:
        rows = {r[0]: r for r in raw.execute("SELECT seq, id, kind, turn_id, body, hash FROM receipts")}
        seqs = sorted(rows)
        a, b = rows[seqs[1]], rows[seqs[2]]
        raw.execute("BEGIN")
        raw.execute("UPDATE receipts SET id = 'tmp-a' WHERE seq = ?", (a[0],))
        raw.execute("UPDATE receipts SET id = 'tmp-b' WHERE seq = ?", (b[0],))
        move = "UPDATE receipts SET id = ?, kind = ?, turn_id = ?, body = ?, hash = ? WHERE seq = ?"
        raw.execute(move, (*b[1:], a[0]))
        raw.execute(move, (*a[1:], b[0]))
        raw.execute("COMMIT")
    order = [r["id"] for r in await list_receipts(db)]
    assert order == [links[0]["id"], links[2]["id"], links[1]["id"], links[3]["id"], links[4]["id"]]
    result = await verify_database(db)
    assert not result.ok
    assert result.first_broken_id == links[2]["id"]


async def test_verify_pure_rows(db: Database) -> None:
    await _chain(db, 4)
    rows = await _rows(db)
    assert verify(rows).ok and verify(rows).count == 4
    # swapped
    swapped = [rows[0], rows[2], rows[1], rows[3]]
    assert verify(swapped).first_broken_id == rows[2][0]
    # removed from the middle
    assert verify([rows[0], rows[1], rows[3]]).first_broken_id == rows[3][0]
    # removed from the start
    assert verify(rows[1:]).first_broken_id == rows[1][0]
    # stored hash column disagrees with the body
    bad_column = [*rows[:2], (rows[2][0], rows[2][1], "f" * 64), rows[3]]
    assert verify(bad_column).first_broken_id == rows[2][0]
    # body is not JSON
    assert verify([rows[0], (rows[1][0], "{not json", rows[1][2])]).first_broken_id == rows[1][0]
    # body belongs to another receipt
    assert verify([rows[0], (rows[1][0], rows[2][1], rows[2][2])]).first_broken_id == rows[1][0]
    # JSON that is not an object
    assert verify([(rows[0][0], "[1, 2]", rows[0][2])]).first_broken_id == rows[0][0]


async def test_verify_sees_a_removed_hash_field(db: Database) -> None:
    links = await _chain(db, 2)
    stripped = {k: v for k, v in links[0].items() if k != "hash"}
    rows = [(links[0]["id"], chain.canonical_json(stripped), links[0]["hash"])]
    assert verify(rows).first_broken_id == links[0]["id"]


async def test_verify_walks_the_chain_a_page_at_a_time(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 7: a break in a later page is still named, with its position in the whole chain."""
    monkeypatch.setattr(chain, "VERIFY_PAGE", 7)
    links = await _chain(db, 23)
    assert await verify_database(db) == chain.Verification(True, 23)
    target = links[17]
    with _raw(db.path) as conn:
        conn.execute(
            "UPDATE receipts SET body = replace(body, '\"ok\"', '\"error\"') WHERE id = ?", (target["id"],)
        )
        conn.commit()
    broken = await verify_database(db)
    assert (broken.ok, broken.count, broken.first_broken_id) == (False, 18, target["id"])
