"""The receipts' Merkle tree in SQLite: each receipt a leaf in chain order, kept as it appends.

A leaf's data is the 32 bytes of the receipt's `hash`. Like C2SP's tiles, the tree is stored
in blocks: `merkle_nodes` keeps the root of every perfect subtree of 16 leaves or more, by
(level, index), and what lies below a block's root is computed from its 16 receipts when asked
(`receipts.leaf` is each receipt's index in the tree; it is found by its row id, `seq`, which runs
alongside, or searched for where removed rows left a gap). So an append writes one row in 16, a
root or a proof reads O(log n) rows and at most a block of receipts per level it touches.

Called only inside a write transaction, like `receipts.append`, so leaves never interleave.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import structlog

from waystation.errors import NotFound, ReceiptsDamaged
from waystation.receipts.merkle import (
    CompactRange,
    Node,
    ProofError,
    check_consistency,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_of,
    subtree_root,
)

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
STORED_FROM = 4  # the lowest level stored: a block of 16 leaves, as one tile's row of C2SP's tiles
BLOCK = 1 << STORED_FROM


def size(conn: sqlite3.Connection) -> int:
    """How many leaves the tree has: one past the chain head's. Nodes past it (left by receipts
    deleted behind the agent's back) are ignored, and overwritten as new receipts take their places:
    the agent goes on recording, and `verify` against an older checkpoint names the truncation."""
    row = conn.execute("SELECT leaf FROM receipts ORDER BY seq DESC LIMIT 1").fetchone()
    return 0 if row is None or row[0] is None else int(row[0]) + 1


def append_leaf(conn: sqlite3.Connection, receipt_hash: str, index: int, previous: str | None = None) -> int:
    """Add leaf `index`, of a receipt whose `hash` (hex) is given after the one whose hash is
    `previous` (the chain's head; None for the first), and the subtrees it completes; the index it
    took (another only if the tree was damaged and rebuilt from the receipts first).

    The right edge of the tree (its perfect subtrees' roots) is kept in memory per connection, so
    an append reads nothing; it is read again from the table when the tree moved without us (a
    rolled-back write, another process appending, receipts removed): when the edge's size or its
    last leaf is not the head the database has."""
    edge = _edges.get(id(conn))
    if edge is None or edge.conn is not conn or edge.tree.size != index or edge.last != previous:
        try:
            edge = _Edge(conn, CompactRange(index, _peaks(conn, index)), previous)
        except ReceiptsDamaged:  # rows removed from the table: it is an index of the receipts, rebuilt
            rebuild(conn)
            head = conn.execute("SELECT hash FROM receipts ORDER BY seq DESC LIMIT 1").fetchone()
            return append_leaf(conn, receipt_hash, size(conn), head[0] if head else None)
        _edges[id(conn)] = edge
        while len(_edges) > MAX_EDGES:  # connections come and go (tests, CLI runs): keep a few
            del _edges[next(iter(_edges))]
    made = [node for node in edge.tree.append(leaf_hash(_leaf_data(receipt_hash))) if node[0] >= STORED_FROM]
    edge.last = receipt_hash
    if made:
        try:
            _insert(conn, made)
        except sqlite3.IntegrityError:  # nodes left past the head by receipts removed: replaced
            conn.execute("DELETE FROM merkle_nodes WHERE ((idx + 1) << level) > ?", (index,))
            _insert(conn, made)
    return index


@dataclass
class _Edge:
    conn: sqlite3.Connection
    tree: CompactRange
    last: str | None  # the hash of the receipt at the tree's last leaf


def _insert(conn: sqlite3.Connection, nodes: list[tuple[int, int, bytes]]) -> None:
    if len(nodes) == 1:  # most appends complete one subtree: executemany costs more for one row
        conn.execute("INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes[0])
    else:
        conn.executemany("INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)


_edges: dict[int, _Edge] = {}
MAX_EDGES = 8


def _peaks(conn: sqlite3.Connection, size: int) -> list[bytes]:
    """The roots of the perfect subtrees a tree of `size` splits into: stored ones read, those
    below a block computed from the receipts at the tail (the head's block, under 16 of them)."""
    peaks, wanted = [], CompactRange.peak_nodes(size)
    block_start = size & ~(BLOCK - 1)
    tail = _tail_leaves(conn, block_start, size) if size > block_start else []
    for level, position in wanted:
        if level >= STORED_FROM:
            row = conn.execute(
                "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?", (level, position)
            ).fetchone()
            if row is None:
                raise ReceiptsDamaged(f"the receipt tree has no node ({level}, {position})")
            peaks.append(bytes(row[0]))
        else:
            first = (position << level) - block_start
            peaks.append(root_of(tail[first : first + (1 << level)]))
    return peaks


def _tail_leaves(conn: sqlite3.Connection, start: int, size: int) -> list[bytes]:
    """The leaf hashes of leaves [start, size), the chain's last: by row id back from the head."""
    rows = conn.execute(
        "SELECT leaf, hash FROM receipts ORDER BY seq DESC LIMIT ?", (size - start,)
    ).fetchall()
    if [leaf for leaf, _ in reversed(rows)] != list(range(start, size)):
        raise ReceiptsDamaged(f"the receipts of leaves {start} to {size - 1} are not all there")
    return [leaf_hash(_leaf_data(text)) for _, text in reversed(rows)]


def _leaf_data(receipt_hash: str) -> bytes:
    """The hash's 32 bytes; a stored hash that is not hex (an edited row: verify names it) is
    taken as its text, so the tree can still be built over it."""
    try:
        return bytes.fromhex(receipt_hash)
    except ValueError:
        return receipt_hash.encode()


def backfill(conn: sqlite3.Connection) -> None:
    """Migration 5: the tree of the receipts already there, in chain order, a page at a time."""
    seq, index, previous = 0, 0, None
    while rows := conn.execute(
        "SELECT seq, hash FROM receipts WHERE seq > ? ORDER BY seq LIMIT ?", (seq, BACKFILL_PAGE)
    ).fetchall():
        for row_seq, receipt_hash in rows:
            append_leaf(conn, receipt_hash, index, previous)
            previous = receipt_hash
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


async def size_of(db: Database) -> int:
    """How many leaves the tree has (see `size`)."""
    row = await db.fetchone("SELECT leaf FROM receipts ORDER BY seq DESC LIMIT 1")
    return 0 if row is None or row[0] is None else int(row[0]) + 1


async def head(db: Database) -> tuple[int, bytes]:
    """(size, root) of the tree now."""
    size = await size_of(db)
    return size, await root(db, size)


async def root(db: Database, size: int) -> bytes:
    return await _computed(db, lambda node: subtree_root(node, 0, size))


async def inclusion(db: Database, index: int, size: int) -> list[bytes]:
    return await _computed(db, lambda node: inclusion_proof(node, index, size))


async def consistency(db: Database, old_size: int, size: int) -> list[bytes]:
    return await _computed(db, lambda node: consistency_proof(node, old_size, size))


async def extends(db: Database, old_size: int, old_root: bytes, size: int, root: bytes) -> bool:
    """Whether the tree (size, root) extends (old_size, old_root): the RFC 6962 consistency proof
    between them, made from the stored tree and checked, as a remote party would check it."""
    try:
        check_consistency(old_size, size, old_root, root, await consistency(db, old_size, size))
    except (ProofError, ReceiptsDamaged):
        return False
    return True


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
        if level >= STORED_FROM:  # below, the receipts the caller just hashed are the tree
            by_level.setdefault(level, {})[index] = digest
    for level, wanted in by_level.items():
        rows = await db.fetchall(
            "SELECT idx, hash FROM merkle_nodes WHERE level = ? AND idx BETWEEN ? AND ?",
            (level, min(wanted), max(wanted)),
        )
        if {int(index): bytes(digest) for index, digest in rows} != wanted:
            return False
    return True


async def _leaves(db: Database, indexes: list[int]) -> dict[int, bytes]:
    """The leaf hashes of these leaves: by row id where `seq` runs alongside `leaf` (always,
    unless rows were removed), else by a search of `leaf` for those not found so."""
    if not indexes:
        return {}
    head = await db.fetchone("SELECT seq - leaf FROM receipts ORDER BY seq DESC LIMIT 1")
    offset = 0 if head is None or head[0] is None else int(head[0])
    marks = ", ".join("?" * len(indexes))
    rows = await db.fetchall(
        f"SELECT leaf, hash FROM receipts WHERE seq IN ({marks})", [offset + i for i in indexes]
    )
    found = {int(leaf): text for leaf, text in rows if leaf is not None}
    if missing := [i for i in indexes if i not in found]:
        more = await db.fetchall(
            f"SELECT leaf, hash FROM receipts WHERE leaf IN ({', '.join('?' * len(missing))})", missing
        )
        found.update((int(leaf), text) for leaf, text in more)
    return {i: leaf_hash(_leaf_data(found[i])) for i in indexes if i in found}


async def _computed(db: Database, compute: Callable[[Node], T]) -> T:
    """`compute` on the stored tree: a first run over placeholder hashes names the nodes it reads
    (which nodes depend on the sizes alone), one query fetches them, the second run is the answer."""
    wanted: list[tuple[int, int]] = []

    def placeholder(level: int, index: int) -> bytes:
        wanted.append((level, index))
        return bytes(32)

    compute(placeholder)
    by_level: dict[int, list[int]] = {}
    low: list[tuple[int, int]] = []
    for level, index in dict.fromkeys(wanted):
        if level >= STORED_FROM:
            by_level.setdefault(level, []).append(index)
        else:
            low.append((level, index))
    leaves = await _leaves(db, sorted({i for lv, ix in low for i in range(ix << lv, (ix + 1) << lv)}))
    found: dict[tuple[int, int], bytes] = {}
    for level, index in low:
        block = [leaves.get(i) for i in range(index << level, (index + 1) << level)]
        if all(leaf is not None for leaf in block):
            found[(level, index)] = root_of([leaf for leaf in block if leaf is not None])
    # One statement, a primary-key lookup per level (a row-value IN over VALUES would scan).
    parts, params = [], []
    for level, indexes in by_level.items():
        parts.append(
            "SELECT level, idx, hash FROM merkle_nodes WHERE level = ? AND idx IN "
            f"({', '.join('?' * len(indexes))})"
        )
        params += [level, *indexes]
    if parts:
        rows = await db.fetchall(" UNION ALL ".join(parts), params)
        found.update(((level, index), bytes(digest)) for level, index, digest in rows)

    def node(level: int, index: int) -> bytes:
        try:
            return found[(level, index)]
        except KeyError:
            raise ReceiptsDamaged(f"the receipt tree has no node ({level}, {index})") from None

    return compute(node)
