"""Receipts you can prove (issue 14): the Merkle tree, signed checkpoints, inclusion proofs, and
every tampering of a real database caught against a checkpoint kept earlier.

The checkpoint and the proofs are checked by an implementation written here from RFC 6962 and
C2SP's signed-note and tlog-checkpoint texts, not by the project's own code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from waystation.db import Database
from waystation.errors import BadCheckpoint, CheckpointKept
from waystation.receipts import proofs, tree
from waystation.receipts.chain import ReceiptDraft, RouteInfo, append, receipt_hash, verify_database
from waystation.receipts.checkpoints import SigningKey, VerifierKey, open_checkpoint
from waystation.receipts.merkle import consistency_proof, inclusion_proof, subtree_root

ROUTE = RouteInfo(name="web_fetch", provider="example.org", auth_lane="none", cost_lane="local")


# --- RFC 6962 and C2SP, written from their texts -------------------------------------------------


def rfc6962_mth(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 6962 section 2.1, over leaf data."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + rfc6962_mth(leaves[:k]) + rfc6962_mth(leaves[k:])).digest()


def rfc9162_root_from_path(index: int, size: int, leaf: bytes, path: list[bytes]) -> bytes:
    """RFC 9162 2.1.3.2, step by step."""
    fn, sn = index, size - 1
    r = hashlib.sha256(b"\x00" + leaf).digest()
    for p in path:
        assert sn != 0
        if fn % 2 == 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn // 2, sn // 2
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn, sn = fn // 2, sn // 2
    assert sn == 0
    return r


def c2sp_open(note: str, vkey: str) -> tuple[str, int, bytes]:
    """A signed note's checkpoint (origin, size, root), its Ed25519 signature checked as C2SP's
    signed-note says: key id = SHA-256(name || LF || 0x01 || key)[:4]."""
    name, key_hash, encoded = vkey.split("+", 2)
    raw = base64.b64decode(encoded)
    assert raw[0] == 1 and len(raw) == 33
    public = raw[1:]
    assert hashlib.sha256(name.encode() + b"\n" + b"\x01" + public).digest()[:4].hex() == key_hash
    text, signatures = note.split("\n\n", 1)
    text += "\n"
    for line in signatures.splitlines():
        dash, signer, sig = line.split(" ")
        blob = base64.b64decode(sig)
        if dash == "\u2014" and signer == name and blob[:4].hex() == key_hash:
            Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], text.encode())
            origin, size, root = text.splitlines()[:3]
            return origin, int(size), base64.b64decode(root)
    raise AssertionError("no signature by the key")


# --- helpers -------------------------------------------------------------------------------------


async def chain(db: Database, n: int) -> list[dict[str, Any]]:
    made = []
    for i in range(n):
        draft = ReceiptDraft(kind="task", status="ok", route=ROUTE, reason=f"delivered {i}", task_id=f"t_{i}")
        made.append(await db.write(lambda conn, d=draft: append(conn, d)))
    return made


def tamper(db: Database, change: Callable[[sqlite3.Connection], None]) -> None:
    """As whoever can write the file would, outside the agent."""
    conn = sqlite3.connect(db.path)
    with conn:
        change(conn)
    conn.close()


def rechain(conn: sqlite3.Connection, order: list[str]) -> None:
    """A careful forger: the receipts `order` names, in that order, every hash recomputed and the
    Merkle tree rebuilt, so the chain and the tree agree with each other."""
    bodies = {i: b for i, b in conn.execute("SELECT id, body FROM receipts")}
    conn.execute("DELETE FROM receipts")
    conn.execute("DELETE FROM merkle_nodes")
    previous = "0" * 64
    for ident in order:
        body = json.loads(bodies[ident])
        body["prev_hash"] = previous
        body["hash"] = previous = receipt_hash(body)
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        conn.execute(
            "INSERT INTO receipts (id, kind, task_id, body, hash) VALUES (?, 'task', ?, ?, ?)",
            (ident, body["task_id"], text, body["hash"]),
        )
    tree.backfill(conn)


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return SigningKey.load_or_create(tmp_path / "state")


async def kept_checkpoint(db: Database, key: SigningKey) -> str:
    return (await proofs.checkpoint(db, key))[1]


async def verdict(db: Database, key: SigningKey, note: str) -> Any:
    return await verify_database(db, open_checkpoint(note, key.verifier))


# --- the tree and its signatures, checked independently -----------------------------------------


async def test_a_checkpoint_is_the_rfc6962_root_of_the_receipt_hashes_signed_as_c2sp_says(
    db: Database, key: SigningKey
) -> None:
    for n in (0, 1, 2, 7, 13):
        await chain(db, n - len(await db.fetchall("SELECT id FROM receipts")))
        hashes = [bytes.fromhex(r[0]) for r in await db.fetchall("SELECT hash FROM receipts ORDER BY seq")]
        made, note = await proofs.checkpoint(db, key)
        origin, size, root = c2sp_open(note, str(key.verifier))
        assert (origin, size, root) == (made.origin, n, rfc6962_mth(hashes))
        assert origin.startswith("waystation/") and key.name == origin


async def test_every_receipt_has_an_inclusion_proof_an_auditor_can_check(
    db: Database, key: SigningKey
) -> None:
    receipts = await chain(db, 11)
    for index, receipt in enumerate(receipts):
        proof = await proofs.prove(db, key, receipt["id"])
        _, size, root = c2sp_open(proof["checkpoint"], str(key.verifier))
        path = [base64.b64decode(p) for p in proof["inclusion_proof"]]
        assert proof["leaf_index"] == index and size == 11
        assert rfc9162_root_from_path(index, size, bytes.fromhex(receipt["hash"]), path) == root
        assert proofs.check(proof, key.verifier).size == 11


async def test_a_proof_with_anything_changed_is_refused(
    db: Database, key: SigningKey, tmp_path: Path
) -> None:
    receipts = await chain(db, 6)
    proof = await proofs.prove(db, key, receipts[3]["id"])
    edited = {**proof, "receipt": {**proof["receipt"], "status": "error"}}
    moved = {**proof, "leaf_index": 2}
    other = SigningKey.load_or_create(tmp_path / "another-host")
    for bad, words in ((edited, "edited"), (moved, "another root"), (proof, "no signature by")):
        with pytest.raises(BadCheckpoint, match=words):
            proofs.check(bad, other.verifier if bad is proof else key.verifier)


def test_the_verifier_key_round_trips_and_rejects_a_wrong_id(key: SigningKey) -> None:
    text = str(key.verifier)
    assert VerifierKey.parse(text) == key.verifier
    name, _, encoded = text.split("+", 2)
    with pytest.raises(BadCheckpoint, match="id"):
        VerifierKey.parse(f"{name}+{'0' * 8}+{encoded}")


def test_the_key_is_made_once_0600_and_kept(tmp_path: Path) -> None:
    first = SigningKey.load_or_create(tmp_path)
    assert (tmp_path / "receipts.key").stat().st_mode & 0o777 == 0o600
    assert SigningKey.load_or_create(tmp_path).verifier == first.verifier


# --- tampering, caught against a checkpoint kept earlier ------------------------------------------


async def test_the_receipts_extend_an_older_checkpoint(db: Database, key: SigningKey) -> None:
    await chain(db, 5)
    note = await kept_checkpoint(db, key)
    await chain(db, 9)
    result = await verdict(db, key, note)
    assert result.ok and result.count == 14 and result.checkpoint["size"] == 5


async def test_deleting_the_last_receipts_is_named_truncation(db: Database, key: SigningKey) -> None:
    await chain(db, 10)
    note = await kept_checkpoint(db, key)
    tamper(db, lambda c: c.execute("DELETE FROM receipts WHERE seq > 7"))
    result = await verdict(db, key, note)
    assert not result.ok and "truncated" in result.reason and "holds 7" in result.reason


async def test_deleting_every_receipt_is_named_truncation(db: Database, key: SigningKey) -> None:
    await chain(db, 4)
    note = await kept_checkpoint(db, key)
    tamper(db, lambda c: (c.execute("DELETE FROM receipts"), c.execute("DELETE FROM merkle_nodes")))
    result = await verdict(db, key, note)
    assert not result.ok and "truncated" in result.reason and "holds 0" in result.reason


@pytest.mark.parametrize("how", ["delete one", "reorder", "edit one"])
async def test_a_recomputed_history_is_named_a_rewrite(db: Database, key: SigningKey, how: str) -> None:
    receipts = await chain(db, 8)
    note = await kept_checkpoint(db, key)
    await chain(db, 2)
    ids = [r["id"] for r in receipts] + [
        r[0] for r in await db.fetchall("SELECT id FROM receipts WHERE seq > 8")
    ]
    if how == "delete one":
        order = ids[:3] + ids[4:]
        tamper(db, lambda c: rechain(c, order))
    elif how == "reorder":
        order = [ids[1], ids[0], *ids[2:]]
        tamper(db, lambda c: rechain(c, order))
    else:

        def edit(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE receipts SET body = replace(body, 'delivered 2', 'delivered 9') WHERE id = ?",
                (ids[2],),
            )
            rechain(c, ids)

        tamper(db, edit)
    assert (await verify_database(db)).ok  # the chain and the tree agree: only a checkpoint can tell
    result = await verdict(db, key, note)
    assert not result.ok and "rewritten" in result.reason


async def test_restoring_an_older_copy_is_named_a_rollback(
    db: Database, key: SigningKey, tmp_path: Path
) -> None:
    await chain(db, 6)
    await db.checkpoint()
    old_copy = tmp_path / "old.db"
    shutil.copy(db.path, old_copy)
    await chain(db, 4)
    note = await kept_checkpoint(db, key)
    restored = await Database.open(old_copy)
    try:
        result = await verdict(restored, key, note)
    finally:
        await restored.close()
    assert not result.ok and "rolled back" in result.reason


async def test_an_edited_tree_is_named(db: Database) -> None:
    await chain(db, 40)  # two blocks of 16 stored (level 4) and their parent (level 5)
    tamper(db, lambda c: c.execute("UPDATE merkle_nodes SET hash = zeroblob(32) WHERE level = 4 AND idx = 0"))
    result = await verify_database(db)
    assert not result.ok and "Merkle tree" in result.reason


async def test_a_checkpoint_signed_by_another_key_is_refused(
    db: Database, key: SigningKey, tmp_path: Path
) -> None:
    await chain(db, 3)
    forged = await kept_checkpoint(db, SigningKey.load_or_create(tmp_path / "forger"))
    with pytest.raises(BadCheckpoint):
        open_checkpoint(forged, key.verifier)


async def test_the_agent_keeps_a_checkpoint_the_receipts_no_longer_extend(
    db: Database, key: SigningKey
) -> None:
    state = Path(db.path).parent / "state"
    await chain(db, 6)
    assert await proofs.keep_checkpoint(db, key, state) == 6
    tamper(db, lambda c: c.execute("DELETE FROM receipts WHERE seq > 2"))
    with pytest.raises(CheckpointKept, match=r"no longer extend the stored checkpoint \(6\)"):
        await proofs.keep_checkpoint(db, key, state)  # not overwritten
    kept = open_checkpoint(proofs.stored_note(state) or "", key.verifier)
    assert kept.size == 6
    await chain(db, 1)  # the agent goes on recording meanwhile
    assert (await db.fetchone("SELECT COUNT(*) FROM receipts"))[0] == 3


# --- cost: a proof reads O(log^2 n) nodes, a checkpoint O(log n) ------------------------------------


@pytest.mark.parametrize("size", [10**3, 10**5, 10**6])
def test_proofs_and_roots_read_a_logarithmic_number_of_nodes(size: int) -> None:
    reads = 0

    def node(level: int, index: int) -> bytes:
        nonlocal reads
        assert (index + 1) << level <= size  # only nodes a tree of `size` has
        reads += 1
        return bytes(32)

    log2 = size.bit_length()
    subtree_root(node, 0, size)
    assert reads <= log2
    for index in (0, size // 3, size - 1):
        reads = 0
        inclusion_proof(node, index, size)
        assert reads <= log2 * log2
    reads = 0
    consistency_proof(node, size // 2 + 1, size)
    assert reads <= log2 * log2


async def test_after_receipts_were_removed_the_tree_follows_the_receipts_that_remain(
    db: Database, key: SigningKey
) -> None:
    await chain(db, 8)
    tamper(db, lambda c: c.execute("DELETE FROM receipts WHERE seq > 4"))  # its nodes stay behind
    await chain(db, 5)  # row ids go on from 9: the leaves no longer sit at seq - 1
    rows = await db.fetchall("SELECT id, hash FROM receipts ORDER BY seq")
    hashes = [bytes.fromhex(h) for _, h in rows]
    _, size, root = c2sp_open(await kept_checkpoint(db, key), str(key.verifier))
    assert (size, root) == (9, rfc6962_mth(hashes))  # stale nodes were replaced, not reused
    for index in (1, 6):  # a leaf before the gap in row ids, and one after it
        proof = await proofs.prove(db, key, rows[index][0])
        path = [base64.b64decode(p) for p in proof["inclusion_proof"]]
        assert rfc9162_root_from_path(index, 9, hashes[index], path) == root
    assert (await verify_database(db)).ok


async def test_a_tree_of_several_stored_blocks_proves_every_kind_of_leaf(
    db: Database, key: SigningKey
) -> None:
    """Past 16 receipts the tree keeps block roots and computes what lies below them: leaves at a
    block's edges, in the middle, and in the unfinished last block all prove out."""
    await chain(db, 17)
    early = await kept_checkpoint(db, key)
    await chain(db, 53)
    rows = await db.fetchall("SELECT id, hash FROM receipts ORDER BY seq")
    hashes = [bytes.fromhex(h) for _, h in rows]
    _, size, root = c2sp_open(await kept_checkpoint(db, key), str(key.verifier))
    assert (size, root) == (70, rfc6962_mth(hashes))
    for index in (0, 7, 15, 16, 31, 32, 47, 63, 64, 69):
        proof = await proofs.prove(db, key, rows[index][0])
        path = [base64.b64decode(p) for p in proof["inclusion_proof"]]
        assert rfc9162_root_from_path(index, 70, hashes[index], path) == root, index
    assert (await verdict(db, key, early)).ok
    stored = (await db.fetchone("SELECT COUNT(*) FROM merkle_nodes"))[0]
    assert stored == 7  # 4 blocks of 16, 2 of 32, 1 of 64: nothing below a block


async def test_the_tree_stays_right_when_a_write_rolls_back_and_another_process_appends(
    db: Database, key: SigningKey
) -> None:
    await chain(db, 20)

    def append_then_fail(conn: sqlite3.Connection) -> None:
        append(conn, ReceiptDraft(kind="task", status="ok", route=ROUTE, task_id="t_undone"))
        raise ValueError("the op fails after its receipt: its savepoint is rolled back")

    with pytest.raises(ValueError):
        await db.write(append_then_fail)
    # Another process (the command line, with no agent) appends the receipt at that very place.
    other = sqlite3.connect(db.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    append(other, ReceiptDraft(kind="task", status="ok", route=ROUTE, task_id="t_elsewhere"))
    other.execute("COMMIT")
    other.close()
    await chain(db, 15)  # the agent's connection appends again, past a block boundary
    hashes = [bytes.fromhex(h) for (h,) in await db.fetchall("SELECT hash FROM receipts ORDER BY seq")]
    _, size, root = c2sp_open(await kept_checkpoint(db, key), str(key.verifier))
    assert (size, root) == (36, rfc6962_mth(hashes))
    assert (await verify_database(db)).ok
