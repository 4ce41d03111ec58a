"""The fleet's hub as Waystation lays it out: the contract's streams and bucket (CONTRACT.md,
"Fleet"), their limits, and how a stream is sized to the hub it lands on. Pure: hub.py makes them.

JetStream reserves a stream's max_bytes when the stream is made, and refuses one that the account
(or the server's `max_file_store`) has no room for; so a stream takes a share of the account's
storage where the account has a limit, and is bounded by its age alone where even that is refused
(stream_bytes, and the fallback in Hub._stream).
"""

from __future__ import annotations

import dataclasses

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

RECEIPTS_STREAM = "WAYSTATION_RECEIPTS"
WORK_STREAM = "WAYSTATION_WORK"
HOSTS_BUCKET = "waystation_hosts"
DAY_S = 24 * 3600.0
# JetStream drops a message with a Nats-Msg-Id it saw within this window. The outbox sends one
# receipt at a time and, on every (re)connect, first asks the stream which receipt it holds last,
# so a resend can only be the one receipt whose ack was lost; the window only has to cover that
# receipt's first send and its resend across an outage. A day covers a hub down overnight; the
# hub keeps the ids of one window in memory (a few hundred bytes each), so a day of a busy fleet
# stays in megabytes. See README, "Fleet".
DUPLICATE_WINDOW_S = DAY_S
RECEIPTS_MAX_AGE_S = 365 * DAY_S  # a year of receipts, or the byte limit, whichever comes first
RECEIPTS_MAX_BYTES = 10 * 1024**3
WORK_MAX_AGE_S = 14 * DAY_S  # work for a host gone a fortnight is stale; it stays in its queue till then
WORK_MAX_BYTES = 1024**3
# A host writes its status every minute; the bucket keeps it a day, so a host that died shows as
# stale (its last write ages) for a day, then leaves the list.
HOSTS_TTL_S = DAY_S
# A work message is delivered at most this often: one that keeps failing is given up on (the hub
# stops redelivering it) instead of blocking the host's work for ever.
WORK_MAX_DELIVER = 10
WORK_ACK_WAIT_S = 60.0
# JetStream's error codes for a stream whose max_bytes it cannot reserve (the server's
# JSInsufficientResourcesErr and JSStorageResourcesExceededErr).
NO_ROOM_CODES = frozenset({10023, 10047})
# A stream sized from the account's storage limit takes this share of it, leaving room for the
# other stream, the status bucket and whatever else the account holds.
RECEIPTS_SHARE = 0.5
WORK_SHARE = 0.125


def receipts_config() -> StreamConfig:
    subjects = ["waystation.*.receipts", "waystation.*.checkpoints"]
    return _file_stream(RECEIPTS_STREAM, subjects, DiscardPolicy.OLD, RECEIPTS_MAX_AGE_S, RECEIPTS_MAX_BYTES)


def work_config() -> StreamConfig:
    # New work is refused when full rather than old work silently dropped.
    return _file_stream(WORK_STREAM, ["waystation.*.work"], DiscardPolicy.NEW, WORK_MAX_AGE_S, WORK_MAX_BYTES)


def _file_stream(
    name: str, subjects: list[str], discard: DiscardPolicy, max_age: float, max_bytes: int
) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=subjects,
        storage=StorageType.FILE,
        num_replicas=1,
        retention=RetentionPolicy.LIMITS,
        discard=discard,
        max_age=max_age,
        max_bytes=max_bytes,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


@dataclasses.dataclass(frozen=True)
class Part:
    """One stream or bucket of the hub: refused says why the hub would not make it."""

    name: str
    refused: str | None = None
    note: str = ""


def stream_bytes(wanted: int, account_storage: int, account_stream: int, share: float) -> int:
    """A stream's max_bytes: `wanted`, or less where the account's limits (-1: none) allow less."""
    size = wanted
    if account_storage > 0:
        size = min(size, max(1, int(account_storage * share)))
    if account_stream > 0:
        size = min(size, account_stream)
    return size


def size_note(config: StreamConfig, wanted: int) -> str:
    """What a stream's byte limit is, where it is not the usual `wanted` ("" where it is)."""
    days = f"{(config.max_age or 0) / DAY_S:g} days"
    if config.max_bytes is None or config.max_bytes < 0:
        return f"{config.name} is bounded by age only ({days}): the hub has no room for {_size(wanted)}"
    if config.max_bytes < wanted:
        return f"{config.name} holds {_size(config.max_bytes)} or {days}, what the account's storage allows"
    return ""


def _size(n: int) -> str:
    return f"{n / 1024**3:g} GiB" if n >= 1024**3 else f"{n / 1024**2:.3g} MiB"
