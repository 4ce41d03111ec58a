"""Signed checkpoints and inclusion proofs of receipts: made from the stored tree in O(log n), and
checked offline with nothing but the host's verifier key (no agent, no database).

A proof is one JSON document an auditor can keep: the receipt itself, its leaf index, the
RFC 6962 audit path (base64, leaf side first) and the signed checkpoint it leads to.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from waystation import contract
from waystation.db import Database
from waystation.errors import BadCheckpoint
from waystation.receipts import tree
from waystation.receipts.chain import get_receipt, receipt_hash
from waystation.receipts.checkpoints import Checkpoint, SigningKey, VerifierKey, open_checkpoint
from waystation.receipts.merkle import leaf_hash, root_from_inclusion

log = structlog.get_logger(__name__)

CHECKPOINT_FILE = "receipts.checkpoint"  # the last checkpoint the agent wrote, in the state directory


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


async def keep_checkpoint(db: Database, key: SigningKey, state: Path) -> int | None:
    """Sign the tree now and keep it as the state directory's checkpoint, unless the tree does not
    extend the one kept there (receipts removed or rewritten behind the agent's back): then that
    one stays, for `verify` to name, and None. The size kept, otherwise. A witness in miniature."""
    made, note = await checkpoint(db, key)
    kept = stored_note(state)
    if kept is not None:
        with contextlib.suppress(BadCheckpoint):  # one we cannot read is replaced
            old = open_checkpoint(kept, key.verifier)
            if (old.size, old.root) == (made.size, made.root):
                return made.size
            if not await tree.extends(db, old.size, old.root, made.size, made.root):
                log.error(
                    "the receipts no longer extend the stored checkpoint; keeping it",
                    checkpoint_size=old.size,
                    size=made.size,
                )
                return None
    store_note(state, note)
    return made.size


def store_note(state: Path, note: str) -> None:
    """Replace the stored checkpoint atomically: a crash leaves the old one or the new one."""
    path = state / CHECKPOINT_FILE
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(note)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
