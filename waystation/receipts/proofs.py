"""Signed checkpoints and inclusion proofs of receipts: made from the stored tree in O(log n), and
checked offline with nothing but the host's verifier key (no agent, no database).

A proof is one JSON document an auditor can keep: the receipt itself, its leaf index, the
RFC 6962 audit path (base64, leaf side first) and the signed checkpoint it leads to.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from waystation import contract, durable
from waystation.db import Database
from waystation.errors import BadCheckpoint, CheckpointKept
from waystation.receipts import tree
from waystation.receipts.chain import get_receipt, receipt_hash
from waystation.receipts.checkpoints import (
    CHECKPOINT_FILE,
    Checkpoint,
    SigningKey,
    VerifierKey,
    open_checkpoint,
)
from waystation.receipts.merkle import leaf_hash, root_from_inclusion

log = structlog.get_logger(__name__)


async def checkpoint(db: Database, key: SigningKey) -> tuple[Checkpoint, str]:
    """The tree as it is now, and its signed note."""
    size, root = await tree.head(db)
    made = Checkpoint(key.name, size, root)
    return made, key.sign(made.text())


async def prove(db: Database, key: SigningKey, receipt_id: str) -> contract.ReceiptProof:
    """The receipt, its audit path, and the signed checkpoint the path leads to."""
    index, _ = await tree.leaf_of(db, receipt_id)
    body = await get_receipt(db, receipt_id)
    made, note = await checkpoint(db, key)  # read after the leaf: the tree only grows
    path = await tree.inclusion(db, index, made.size)
    return {
        "receipt": body,
        "leaf_index": index,
        "tree_size": made.size,
        "inclusion_proof": [base64.b64encode(step).decode() for step in path],
        "checkpoint": note,
    }


def check(proof: Mapping[str, Any], key: VerifierKey) -> Checkpoint:
    """The checkpoint `proof` leads to, once everything in it checks out; BadCheckpoint naming
    what does not."""
    if not isinstance(proof, Mapping) or not isinstance(proof.get("checkpoint"), str):
        raise BadCheckpoint("not a receipt proof: it needs receipt, leaf_index, inclusion_proof, checkpoint")
    signed = open_checkpoint(proof["checkpoint"], key)
    body, index, path = proof.get("receipt"), proof.get("leaf_index"), proof.get("inclusion_proof")
    if not isinstance(body, dict) or not isinstance(index, int) or not isinstance(path, list):
        raise BadCheckpoint("not a receipt proof: receipt, leaf_index or inclusion_proof is missing")
    if proof.get("tree_size", signed.size) != signed.size:
        raise BadCheckpoint("the proof's tree_size is not its checkpoint's")
    if receipt_hash(body) != body.get("hash"):
        raise BadCheckpoint("the receipt's hash does not match its content: it was edited")
    try:
        steps = [base64.b64decode(step, validate=True) for step in path]
        leaf = leaf_hash(bytes.fromhex(str(body["hash"])))
        root = root_from_inclusion(index, signed.size, leaf, steps)
    except (binascii.Error, ValueError, TypeError) as exc:  # ProofError is a ValueError
        raise BadCheckpoint(f"the inclusion proof does not check out: {exc}") from None
    if root != signed.root:
        raise BadCheckpoint("the inclusion proof leads to another root than the checkpoint's")
    return signed


def stored_note(state: Path) -> str | None:
    with contextlib.suppress(FileNotFoundError):
        return (state / CHECKPOINT_FILE).read_text()
    return None


async def keep_checkpoint(db: Database, key: SigningKey, state: Path) -> int:
    """Sign the tree now and keep it as the state directory's checkpoint; the size kept. A witness
    in miniature: the kept one is never replaced by one of another origin, nor by one the tree
    does not extend (receipts removed or rewritten behind the agent's back): CheckpointKept then,
    and the old one stays for `verify` to name. One signed by another key under the same origin
    (a damaged key moved away, a new one made) is replaced when the tree extends it."""
    made, note = await checkpoint(db, key)
    kept = stored_note(state)
    old = _kept_checkpoint(kept, key) if kept is not None else None
    if old is not None:
        path = state / CHECKPOINT_FILE
        if old.origin != made.origin:
            problem = f"it is for {old.origin}, and the signing key signs as {made.origin}"
            raise CheckpointKept(path, problem)
        if (old.size, old.root) == (made.size, made.root):
            return made.size
        if not await tree.extends(db, old.size, old.root, made.size, made.root):
            problem = f"the receipts ({made.size}) no longer extend the stored checkpoint ({old.size})"
            raise CheckpointKept(path, problem)
    store_note(state, note)
    return made.size


def _kept_checkpoint(note: str, key: SigningKey) -> Checkpoint | None:
    """The checkpoint a kept note holds, signed by `key` or not; None when it holds none at all
    (replaced then: the agent writes it durably, so that is a hand's doing, said in the log)."""
    try:
        return open_checkpoint(note, key.verifier)
    except BadCheckpoint:
        pass
    try:
        return Checkpoint.parse(note.partition("\n\n")[0] + "\n")
    except BadCheckpoint:
        log.warning("replacing a kept checkpoint that holds none", file=CHECKPOINT_FILE)
        return None


def store_note(state: Path, note: str) -> None:
    """Replace the stored checkpoint durably: a crash or power cut leaves the old one or the new."""
    durable.write_atomic(state / CHECKPOINT_FILE, note, 0o600)
