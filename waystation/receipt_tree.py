"""The receipts' Merkle tree in SQLite: each receipt a leaf in chain order, kept as it appends.

A leaf's data is the 32 bytes of the receipt's `hash`; `merkle_nodes` keeps every perfect
subtree's root by (level, index), so a root, an inclusion proof or a consistency proof reads
O(log n) rows, and an append writes its leaf and the subtrees it completes (two rows on average).
`receipts.leaf` is each receipt's index in the tree, so a proof finds its leaf without counting.

Called only inside a write transaction, like `receipts.append`, so leaves never interleave.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import structlog

from waystation.errors import NotFound
from waystation.merkle import CompactRange, Node, consistency_proof, inclusion_proof, leaf_hash, subtree_root

if TYPE_CHECKING:  # db.py imports this module for its migration
    from waystation.db import Database

T = TypeVar("T")
log = structlog.get_logger(__name__)

SCHEMA = """
ALTER TABLE receipts ADD COLUMN leaf INTEGER;
CREATE TABLE merkle_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID
"""
BACKFILL_PAGE = 5000


def size(conn: sqlite3.Connection) -> int:
    """How many leaves the tree has: one past the chain head's. Nodes past it (left by receipts
    deleted behind the agent's back) are ignored, and overwritten as new receipts take their places:
    the agent goes on recording, and `verify` against an older checkpoint names the truncation."""
    row = conn.execute("SELECT leaf FROM receipts ORDER BY seq DESC LIMIT 1").fetchone()
    return 0 if row is None or row[0] is None else int(row[0]) + 1


def append_leaf(conn: sqlite3.Connection, receipt_hash: str, index: int) -> int:
    """Add leaf `index`, of a receipt whose `hash` (hex) is given, and the subtrees it completes;
    the index it took (another only if the tree was damaged and rebuilt from the receipts first).

    The right edge of the tree (its perfect subtrees' roots) is kept in memory per connection, so
    an append reads nothing; it is read again from the table when the tree moved without us (a
    rolled-back write, another process appending, receipts removed)."""
    edge = _edges.get(id(conn))
    if edge is None or edge[0] is not conn or edge[1].size != index:
        try:
            peaks = [_node(conn, level, position) for level, position in CompactRange.peak_nodes(index)]
        except MissingNode:  # rows removed from the table: it is an index of the receipts, rebuilt
            rebuild(conn)
            return append_leaf(conn, receipt_hash, size(conn))
        edge = (conn, CompactRange(index, peaks))
        _edges[id(conn)] = edge
        while len(_edges) > MAX_EDGES:  # connections come and go (tests, CLI runs): keep a few
            del _edges[next(iter(_edges))]
    made = edge[1].append(leaf_hash(_leaf_data(receipt_hash)))
    if len(made) == 1:  # half of all appends: skip executemany's own overhead
        conn.execute("INSERT OR REPLACE INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", made[0])
    else:
        conn.executemany("INSERT OR REPLACE INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", made)
    return index


_edges: dict[int, tuple[sqlite3.Connection, CompactRange]] = {}
MAX_EDGES = 8


def _node(conn: sqlite3.Connection, level: int, index: int) -> bytes:
    row = conn.execute("SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?", (level, index)).fetchone()
    if row is None:
        raise MissingNode(f"the receipt tree has no node ({level}, {index})")
    return bytes(row[0])


def _leaf_data(receipt_hash: str) -> bytes:
    """The hash's 32 bytes; a stored hash that is not hex (an edited row: verify names it) is
    taken as its text, so the tree can still be built over it."""
    try:
        return bytes.fromhex(receipt_hash)
    except ValueError:
        return receipt_hash.encode()


def backfill(conn: sqlite3.Connection) -> None:
    """Migration 5: the tree of the receipts already there, in chain order, a page at a time."""
    seq, index = 0, 0
    while rows := conn.execute(
        "SELECT seq, hash FROM receipts WHERE seq > ? ORDER BY seq LIMIT ?", (seq, BACKFILL_PAGE)
    ).fetchall():
        for row_seq, receipt_hash in rows:
            append_leaf(conn, receipt_hash, index)
            conn.execute("UPDATE receipts SET leaf = ? WHERE seq = ?", (index, row_seq))
            index += 1
        seq = rows[-1][0]


def rebuild(conn: sqlite3.Connection) -> None:
    """The tree made again from the receipts, the source of truth (`verify` against a checkpoint
    still names any receipt removed or rewritten)."""
    log.error("the receipt tree lacks nodes; rebuilding it from the receipts")
    conn.execute("DELETE FROM merkle_nodes")
    _edges.pop(id(conn), None)
    backfill(conn)


# --- reading: each answer reads the O(log n) nodes it needs in one query ------------------------


async def head(db: Database) -> tuple[int, bytes]:
    """(size, root) of the tree now."""
    row = await db.fetchone("SELECT leaf FROM receipts ORDER BY seq DESC LIMIT 1")
    size = 0 if row is None or row[0] is None else int(row[0]) + 1
    return size, await root(db, size)


async def root(db: Database, size: int) -> bytes:
    return await _computed(db, lambda node: subtree_root(node, 0, size))


async def inclusion(db: Database, index: int, size: int) -> list[bytes]:
    return await _computed(db, lambda node: inclusion_proof(node, index, size))


async def consistency(db: Database, old_size: int, size: int) -> list[bytes]:
    return await _computed(db, lambda node: consistency_proof(node, old_size, size))


async def leaf_of(db: Database, receipt_id: str) -> tuple[int, str]:
    """(leaf index, hash) of a receipt."""
    row = await db.fetchone("SELECT leaf, hash FROM receipts WHERE id = ?", (receipt_id,))
    if row is None:
        raise NotFound("receipt", receipt_id)
    return int(row[0]), str(row[1])


async def holds(db: Database, expected: list[tuple[int, int, bytes]]) -> bool:
    """Whether the stored tree has exactly these (level, index, hash) nodes: one range read per
    level, since a page of leaves completes a contiguous run of nodes at each level."""
    by_level: dict[int, dict[int, bytes]] = {}
    for level, index, digest in expected:
        by_level.setdefault(level, {})[index] = digest
    for level, wanted in by_level.items():
        rows = await db.fetchall(
            "SELECT idx, hash FROM merkle_nodes WHERE level = ? AND idx BETWEEN ? AND ?",
            (level, min(wanted), max(wanted)),
        )
        if {int(index): bytes(digest) for index, digest in rows} != wanted:
            return False
    return True


class MissingNode(LookupError):
    """The tree lacks a node it should have: the table was edited."""


async def _computed(db: Database, compute: Callable[[Node], T]) -> T:
    """`compute` on the stored tree: a first run over placeholder hashes names the nodes it reads
    (which nodes depend on the sizes alone), one query fetches them, the second run is the answer."""
    wanted: list[tuple[int, int]] = []

    def placeholder(level: int, index: int) -> bytes:
        wanted.append((level, index))
        return bytes(32)

    compute(placeholder)
    by_level: dict[int, list[int]] = {}
    for level, index in dict.fromkeys(wanted):
        by_level.setdefault(level, []).append(index)
    # One statement, a primary-key lookup per level (a row-value IN over VALUES would scan).
    parts, params = [], []
    for level, indexes in by_level.items():
        parts.append(
            "SELECT level, idx, hash FROM merkle_nodes WHERE level = ? AND idx IN "
            f"({', '.join('?' * len(indexes))})"
        )
        params += [level, *indexes]
    found: dict[tuple[int, int], bytes] = {}
    if parts:
        rows = await db.fetchall(" UNION ALL ".join(parts), params)
        found = {(level, index): bytes(digest) for level, index, digest in rows}

    def node(level: int, index: int) -> bytes:
        try:
            return found[(level, index)]
        except KeyError:
            raise MissingNode(f"the receipt tree has no node ({level}, {index})") from None

    return compute(node)
