"""Receipt operations: read the chain, one receipt, verify it; sign checkpoints, prove receipts.
A stored body that is not JSON (someone edited the table) is one clear error on every path, with
the agent or without."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import structlog

from waystation import contract
from waystation.errors import (
    BadCheckpoint,
    CheckpointKept,
    DatabaseCorrupt,
    SigningKeyUnusable,
    WaystationError,
)
from waystation.receipts import chain, proofs
from waystation.receipts.checkpoints import SigningKey, open_checkpoint
from waystation.station import Station

log = structlog.get_logger(__name__)


@contextlib.contextmanager
def _readable(station: Station) -> Iterator[None]:
    try:
        yield
    except ValueError:
        raise DatabaseCorrupt(
            station.paths.database,
            "a stored receipt is not valid JSON; `waystation receipts verify` names it",
        ) from None


async def after(station: Station, after_id: str | None, limit: int) -> list[contract.Receipt]:
    """Up to `limit` receipts after `after_id` (from the start if None), oldest first."""
    with _readable(station):
        return await chain.list_receipts(station.db, after_id, limit)


async def latest(station: Station, limit: int) -> list[contract.Receipt]:
    """The last `limit` receipts of the chain, oldest first."""
    with _readable(station):
        return await chain.latest_receipts(station.db, limit)


async def get(station: Station, receipt_id: str) -> contract.Receipt:
    with _readable(station):
        return await chain.get_receipt(station.db, receipt_id)


async def verify(station: Station, note: str | None = None) -> contract.Verification:
    """{"ok", "count", "first_broken_id", "reason", "checkpoint"}: the chain, the stored tree, and
    consistency with `note` (a signed checkpoint), else with the one the agent stored last."""
    note = note if note is not None else proofs.stored_note(station.paths.state)
    if note is None:
        return (await chain.verify_database(station.db)).to_json()
    try:
        signed = open_checkpoint(note, _key(station).verifier)
    except BadCheckpoint as exc:  # a forged or damaged checkpoint is a failed check, said as such
        failed = chain.Verification(False, 0, None, f"the checkpoint cannot be used: {exc.message}")
        return failed.to_json()
    return (await chain.verify_database(station.db, signed)).to_json()


async def key(station: Station) -> contract.VerifierKey:
    """{"key"}: the verifier key of the host's receipt checkpoints, in C2SP's note format."""
    return {"key": str(_key(station).verifier)}


async def checkpoint(station: Station) -> contract.Checkpoint:
    """{"origin", "size", "root_hash", "note"}: the tree now, signed."""
    made, note = await proofs.checkpoint(station.db, _key(station))
    return made.to_json(note)


async def prove(station: Station, receipt_id: str) -> contract.ReceiptProof:
    """A receipt's inclusion proof with the signed checkpoint it leads to."""
    with _readable(station):
        return await proofs.prove(station.db, _key(station), receipt_id)


async def store_checkpoint(station: Station) -> int:
    """Sign the tree now and keep it in the state directory (see proofs.keep_checkpoint)."""
    return await proofs.keep_checkpoint(station.db, _key(station), station.paths.state)


async def sign_checkpoint(station: Station) -> int | None:
    """The agent's signing, the one place it happens (at start, every 1,000 receipts or 10 minutes,
    and at stop): store_checkpoint, with a failure logged instead of raised, since a key that
    cannot sign or a kept checkpoint that may not be replaced stops the signing, never the queue.
    Each is said once when it starts (`status` says it after), not once every ten minutes."""
    said, kept = station.signing_error, station.checkpoint_error
    try:
        size = await store_checkpoint(station)
    except SigningKeyUnusable as exc:
        if exc.message != said:
            log.error("checkpoints of the receipts will not be signed", error=exc.message)
        return None
    except CheckpointKept as exc:
        station.checkpoint_error = exc.message
        if exc.message != kept:
            log.error("checkpoints of the receipts will not be kept", error=exc.message)
        return None
    except (WaystationError, OSError) as exc:
        log.error("cannot sign a checkpoint of the receipts", error=str(exc))
        return None
    station.checkpoint_error = None
    return size


def _key(station: Station) -> SigningKey:
    """The signing key as the state directory holds it now; what `status` says follows it (a key
    restored or moved away while the agent runs signs again at once)."""
    try:
        key = SigningKey.load_or_create(station.paths.state, station.settings.fleet.host)
    except SigningKeyUnusable as exc:
        station.signing_error = exc.message
        raise
    station.signing_error = None
    return key
