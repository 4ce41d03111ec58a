"""Receipt operations: read the chain, one receipt, verify it. A stored body that is not JSON
(someone edited the table) is one clear error on every path, with the agent or without."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from waystation import receipts
from waystation.errors import DatabaseCorrupt
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
        return await receipts.list_receipts(station.db, after_id, limit)


async def latest(station: Station, limit: int) -> list[dict[str, Any]]:
    """The last `limit` receipts of the chain, oldest first."""
    with _readable(station):
        return await receipts.latest_receipts(station.db, limit)


async def get(station: Station, receipt_id: str) -> dict[str, Any]:
    with _readable(station):
        return await receipts.get_receipt(station.db, receipt_id)


async def verify(station: Station) -> dict[str, Any]:
    """{"ok", "count", "first_broken_id", "reason"}."""
    return (await receipts.verify_database(station.db)).to_json()
