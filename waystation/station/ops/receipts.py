"""Receipt operations: read the chain, one receipt, verify it; sign checkpoints, prove receipts.
A stored body that is not JSON (someone edited the table) is one clear error on every path, with
the agent or without."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from waystation.errors import BadCheckpoint, DatabaseCorrupt, SigningKeyUnusable
from waystation.receipts import chain, proofs
from waystation.receipts.checkpoints import SigningKey, open_checkpoint
from waystation.station.build import Station


@contextlib.contextmanager
def _readable(station: Station) -> Iterator[None]:
    try:
        yield
    except ValueError:
        raise DatabaseCorrupt(
            station.paths.database,
            "a stored receipt is not valid JSON; `waystation receipts verify` names it",
        ) from None


async def after(station: Station, after_id: str | None, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` receipts after `after_id` (from the start if None), oldest first."""
    with _readable(station):
        return await chain.list_receipts(station.db, after_id, limit)


async def latest(station: Station, limit: int) -> list[dict[str, Any]]:
    """The last `limit` receipts of the chain, oldest first."""
    with _readable(station):
        return await chain.latest_receipts(station.db, limit)


async def get(station: Station, receipt_id: str) -> dict[str, Any]:
    with _readable(station):
        return await chain.get_receipt(station.db, receipt_id)


async def verify(station: Station, note: str | None = None) -> dict[str, Any]:
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


async def key(station: Station) -> dict[str, str]:
    """{"key"}: the verifier key of the host's receipt checkpoints, in C2SP's note format."""
    return {"key": str(_key(station).verifier)}


async def checkpoint(station: Station) -> dict[str, Any]:
    """{"origin", "size", "root_hash", "note"}: the tree now, signed."""
    made, note = await proofs.checkpoint(station.db, _key(station))
    return made.to_json(note)


async def prove(station: Station, receipt_id: str) -> dict[str, Any]:
    """A receipt's inclusion proof with the signed checkpoint it leads to."""
    with _readable(station):
        return await proofs.prove(station.db, _key(station), receipt_id)


async def store_checkpoint(station: Station) -> int | None:
    """Sign the tree now and keep it in the state directory (see proofs.keep_checkpoint)."""
    return await proofs.keep_checkpoint(station.db, _key(station), station.paths.state)


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
