"""Receipts: what ran, through which lanes, at what cost, chained by SHA-256.

Each receipt's `hash` is SHA-256 over its canonical JSON (sorted keys, no whitespace) without the
`hash` field, and that JSON includes `prev_hash`, the hash of the receipt before it. Changing,
removing or reordering any receipt breaks every link after it, and `verify` names the first break.

Receipts are appended only inside a write transaction (`Database.write`), which holds SQLite's
write lock: reading the chain head and inserting the next link can never interleave with another
writer, in this process or another, so the chain never forks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from waystation import contract, timeutil
from waystation.db import Database
from waystation.errors import NotFound, ReceiptsDamaged
from waystation.receipts import tree
from waystation.receipts.checkpoints import Checkpoint
from waystation.receipts.merkle import EMPTY_ROOT, CompactRange, leaf_hash

GENESIS_HASH = "0" * 64
Status = contract.ReceiptStatus


# One encoder, built once: json.dumps with these options would build a new one on every call.
# Its output is exactly json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: object) -> str:
    return _CANONICAL.encode(value)


def new_id(prefix: str) -> str:
    """A sortable, unguessable id: milliseconds since the epoch in hex, then 40 random bits."""
    return f"{prefix}_{int(timeutil.now() * 1000):011x}{secrets.token_hex(5)}"


@dataclass(frozen=True)
class RouteInfo:
    name: str
    provider: str
    auth_lane: contract.AuthLane
    cost_lane: contract.CostLane
    model: str | None = None


def route_object(route: RouteInfo, available: bool, reason: str | None) -> contract.Route:
    """The contract's route object (`GET /v1/routes`): what a receipt names, and whether it can run."""
    return {
        "name": route.name,
        "provider": route.provider,
        "auth_lane": route.auth_lane,
        "cost_lane": route.cost_lane,
        "model": route.model,
        "available": available,
        "reason": reason,
    }


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ReceiptDraft:
    """A receipt before it is chained: everything but id, created_at and the hashes."""

    kind: contract.ReceiptKind
    status: Status
    route: RouteInfo
    reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    credits_used: float = 0
    duration_ms: int = 0
    turn_id: str | None = None
    task_id: str | None = None
    deferred_task_ids: tuple[str, ...] = ()
    cold_load_ms: int | None = None  # a turn that paid for loading its model says how long
    # What the provider says answered (route.model is what was asked), and its rate-limit
    # telemetry: shown as such, never as the model.
    model_answered: str | None = None
    telemetry: Mapping[str, str] = field(default_factory=dict)


def receipt_hash(body: Mapping[str, Any]) -> str:
    unhashed = {k: v for k, v in body.items() if k != "hash"}
    return hashlib.sha256(canonical_json(unhashed).encode()).hexdigest()


def append(conn: sqlite3.Connection, draft: ReceiptDraft) -> contract.Receipt:
    """Chain `draft` onto the head and insert it; call only inside `Database.write`."""
    row = conn.execute("SELECT hash, leaf FROM receipts ORDER BY seq DESC LIMIT 1").fetchone()
    route, usage = draft.route, draft.usage
    body: contract.Receipt = {
        "id": new_id("r"),
        "kind": draft.kind,
        "created_at": timeutil.iso(timeutil.now()),
        "status": draft.status,
        "reason": draft.reason,
        # Spelled out rather than dataclasses.asdict, which deep-copies: this runs per settle.
        "route": {
            "name": route.name,
            "provider": route.provider,
            "auth_lane": route.auth_lane,
            "cost_lane": route.cost_lane,
            "model": route.model,
        },
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens},
        "credits_used": draft.credits_used,
        "duration_ms": draft.duration_ms,
        "turn_id": draft.turn_id,
        "task_id": draft.task_id,
        "deferred_task_ids": list(draft.deferred_task_ids),
        "cold_load_ms": draft.cold_load_ms,
        "model_answered": draft.model_answered,
        "telemetry": dict(draft.telemetry),
        "prev_hash": row[0] if row else GENESIS_HASH,
        "hash": "",
    }
    body["hash"] = receipt_hash(body)
    # The next leaf of the Merkle tree: one past the head's, unless a damaged tree was rebuilt.
    leaf = tree.append_leaf(
        conn, body["hash"], 0 if row is None else row[1] + 1, None if row is None else row[0]
    )
    conn.execute(
        "INSERT INTO receipts (id, kind, task_id, turn_id, body, hash, leaf) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (body["id"], draft.kind, draft.task_id, draft.turn_id, canonical_json(body), body["hash"], leaf),
    )
    return body


@dataclass(frozen=True)
class Verification:
    ok: bool
    count: int
    first_broken_id: str | None = None
    reason: str | None = None
    # The checkpoint checked against, when there was one: {"origin", "size", "root_hash"}.
    checkpoint: contract.CheckpointRef | None = None

    def to_json(self) -> contract.Verification:
        return {
            "ok": self.ok,
            "count": self.count,
            "first_broken_id": self.first_broken_id,
            "reason": self.reason,
            "checkpoint": self.checkpoint,
        }


class ChainCheck:
    """Walks the chain a page at a time, so a chain of millions needs one page in memory, and
    rebuilds the Merkle tree's root from the receipts themselves as it goes (O(log n) memory)."""

    def __init__(self, mark: int | None = None) -> None:
        self.previous = GENESIS_HASH
        self.count = 0
        self.tree = CompactRange()
        self.mark = mark  # a size whose root to keep: the checkpoint's
        self.root_at_mark: bytes | None = EMPTY_ROOT if mark == 0 else None
        self.nodes: list[tuple[int, int, bytes]] = []  # the tree's nodes the last page completed

    def check(self, rows: Iterable[sqlite3.Row | tuple[str, str, str]]) -> Verification | None:
        """The first break among `rows` (id, body, hash, in chain order), or None: all good."""
        self.nodes = []
        for ident, text, stored_hash in rows:
            self.count += 1
            try:
                body = json.loads(text)
            except json.JSONDecodeError:
                return Verification(False, self.count, ident, "stored body is not valid JSON")
            if not isinstance(body, dict) or body.get("id") != ident:
                return Verification(False, self.count, ident, "stored body does not belong to this receipt")
            if body.get("prev_hash") != self.previous:
                return Verification(
                    False, self.count, ident, "prev_hash does not match the receipt before it"
                )
            actual = receipt_hash(body)
            if actual != body.get("hash") or actual != stored_hash:
                return Verification(False, self.count, ident, "hash does not match the receipt's content")
            self.previous = actual
            self.nodes += self.tree.append(leaf_hash(bytes.fromhex(actual)))
            if self.tree.size == self.mark:
                self.root_at_mark = self.tree.root()
        return None


def verify(rows: Iterable[sqlite3.Row | tuple[str, str, str]]) -> Verification:
    """Check stored receipts (id, body, hash) in chain order; name the first one that breaks it."""
    chain = ChainCheck()
    return chain.check(rows) or Verification(True, chain.count)


async def list_receipts(db: Database, after: str | None = None, limit: int = 100) -> list[contract.Receipt]:
    """Receipts in chain order, oldest first, starting after the receipt `after` (an id)."""
    start = 0
    if after is not None:
        row = await db.fetchone("SELECT seq FROM receipts WHERE id = ?", (after,))
        if row is None:
            raise NotFound("receipt", after)
        start = row[0]
    rows = await db.fetchall("SELECT body FROM receipts WHERE seq > ? ORDER BY seq LIMIT ?", (start, limit))
    return [json.loads(r[0]) for r in rows]


async def latest_receipts(db: Database, limit: int) -> list[contract.Receipt]:
    """The newest `limit` receipts, still in chain order."""
    rows = await db.fetchall("SELECT body FROM receipts ORDER BY seq DESC LIMIT ?", (limit,))
    return [json.loads(r[0]) for r in reversed(rows)]


async def get_receipt(db: Database, ident: str) -> contract.Receipt:
    row = await db.fetchone("SELECT body FROM receipts WHERE id = ?", (ident,))
    if row is None:
        raise NotFound("receipt", ident)
    body: contract.Receipt = json.loads(row[0])
    return body


VERIFY_PAGE = 2000  # receipts read and hashed at a time
TREE_EDITED = "the stored Merkle tree does not match the receipts: it was edited"


async def verify_database(db: Database, checkpoint: Checkpoint | None = None) -> Verification:
    """The whole chain, a page at a time, each page hashed off the event loop: memory stays at a
    page, and the agent keeps answering while a long chain is checked. Then the stored Merkle tree
    must have the root the receipts give, and with a `checkpoint` (already known to be signed by
    us) the receipts must still begin with the tree it names: consistent, not truncated, rolled
    back or rewritten. Receipts appended meanwhile wait for the next verify."""
    try:
        size, stored_root = await tree.head(db)
    except ReceiptsDamaged:  # the walk below names what was removed
        size, stored_root = await tree.size_of(db), None
    chain, seq = ChainCheck(None if checkpoint is None else checkpoint.size), 0
    while chain.count < size and (
        rows := await db.fetchall(
            "SELECT seq, id, body, hash FROM receipts WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, min(VERIFY_PAGE, size - chain.count)),
        )
    ):
        seq = rows[-1][0]
        broken = await asyncio.to_thread(chain.check, [(r[1], r[2], r[3]) for r in rows])
        if broken is not None:
            return broken
        if not await tree.holds(db, chain.nodes):
            return Verification(False, chain.count, None, TREE_EDITED)
    if chain.tree.root() != stored_root or chain.count != size:
        return Verification(False, chain.count, None, TREE_EDITED)
    if checkpoint is None:
        return Verification(True, chain.count)
    shown: contract.CheckpointRef = {
        "origin": checkpoint.origin,
        "size": checkpoint.size,
        "root_hash": checkpoint.root_b64,
    }
    if chain.count < checkpoint.size:
        reason = (
            f"truncated or rolled back: the checkpoint covers {checkpoint.size} receipts and the database "
            f"holds {chain.count}"
        )
        return Verification(False, chain.count, None, reason, shown)
    # The receipts' own root at the checkpoint's size, and the proof a remote party would check.
    consistent = chain.root_at_mark == checkpoint.root and await tree.extends(
        db, checkpoint.size, checkpoint.root, size, stored_root
    )
    if not consistent:
        reason = f"rewritten: the first {checkpoint.size} receipts no longer have the checkpoint's root hash"
        return Verification(False, chain.count, None, reason, shown)
    return Verification(True, chain.count, checkpoint=shown)
