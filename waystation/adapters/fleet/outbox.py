"""The durable outbox: the receipt chain, published to the hub in chain order, exactly once.

The receipts table is the outbox; the only state added is how far the hub has it (`fleet_outbox`:
the last receipt seq the stream acknowledged, and the last checkpoint size). Receipts go one at a
time, the next only after the last one's PubAck, so the stream holds a prefix of the chain and
at most one receipt is ever in doubt (sent, ack lost). Before sending after any (re)connect or
failure, the outbox asks the stream for the last receipt of this host it holds and moves past it:
a receipt the hub has is never sent again, however long the outage. The Nats-Msg-Id (the
receipt id) is only the second guard, for the one in doubt.

The position is written every MARK_EVERY receipts and when the outbox runs dry, not after each:
a kill -9 in between loses only the mark, and the resync above finds where the hub stands.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import structlog

from waystation.adapters.fleet.hub import SEQ_HEADER, checkpoints_subject, receipts_subject
from waystation.adapters.fleet.layout import RECEIPTS_STREAM
from waystation.db import Database
from waystation.errors import BadCheckpoint
from waystation.ports import FleetHub
from waystation.receipts.checkpoints import Checkpoint

log = structlog.get_logger(__name__)

PAGE = 500
MARK_EVERY = 200


class Outbox:
    def __init__(self, db: Database, hub: FleetHub, host: str) -> None:
        self._db = db
        self._hub = hub
        self._host = host
        self.published = 0  # the last receipt seq the hub acknowledged
        self._marked = 0
        self._checkpoint = 0  # the last checkpoint size the hub acknowledged
        self._synced = False

    async def load(self) -> None:
        for row in await self._db.fetchall("SELECT name, position FROM fleet_outbox"):
            if row["name"] == "receipts":
                self.published = self._marked = int(row["position"])
            elif row["name"] == "checkpoints":
                self._checkpoint = int(row["position"])

    def unsynced(self) -> None:
        """The link broke or a send failed: ask the hub where it stands before sending again."""
        self._synced = False

    async def _resync(self) -> None:
        """Move the position to what the stream holds of this host's chain: past it when the hub
        has more than the mark says (an ack lost, a kill -9 before the mark), back to it when it
        has less (a new hub, a hub restored from an older copy, a renamed host): the stream must
        always hold the chain from its start. Only a message of this chain moves it: one carrying
        a `Waystation-Seq` whose receipt id (`Nats-Msg-Id`) is this chain's receipt at that seq.
        Anything else on the subject (anyone allowed to publish there can put a header-less `{}`)
        leaves the mark as it is: it must not make the host resend its whole chain."""
        headers = await self._hub.last_headers(RECEIPTS_STREAM, receipts_subject(self._host))
        self._synced = True
        if headers is not None and not (headers.get(SEQ_HEADER) or "").isdigit():
            log.warning(
                "the hub's last message on this host's receipts subject is not one of its receipts; "
                "keeping the mark",
                host=self._host,
            )
            return
        if not headers:
            if self.published:
                log.warning("the hub holds none of this host's receipts; sending the chain from its start")
                self.published, self._checkpoint = 0, 0
                await self._mark()
                await self._keep("checkpoints", 0)
            return
        seq, receipt_id = int(headers[SEQ_HEADER]), headers.get("Nats-Msg-Id")
        if seq == self.published:
            return
        row = await self._db.fetchone("SELECT id FROM receipts WHERE seq = ?", (seq,))
        if row is None or row["id"] != receipt_id:
            # Another chain under this host's name (a new database): trust only our own mark.
            log.warning(
                "the hub's last receipt for this host is not in this chain; resending from the mark",
                host=self._host,
                hub_seq=seq,
            )
            return
        log.info(
            "the hub's receipts end elsewhere than the mark; resuming after them",
            mark=self.published,
            seq=seq,
        )
        if seq < self.published:
            self._checkpoint = 0  # its checkpoints may have gone with the receipts
            await self._keep("checkpoints", 0)
        self.published = seq
        await self._mark()

    async def drain(self, keep_going: Callable[[], bool]) -> int:
        """Publish every receipt after the position, in order, while `keep_going()`; the count
        sent. A FleetError stops it (the position stays at the last ack)."""
        if not self._synced:
            await self._resync()
        sent = 0
        try:
            while keep_going():
                rows = await self._db.fetchall(
                    "SELECT seq, id, body FROM receipts WHERE seq > ? ORDER BY seq LIMIT ?",
                    (self.published, PAGE),
                )
                if not rows:
                    break
                for row in rows:
                    if not keep_going():
                        break
                    await self._send(row)
                    sent += 1
                    if self.published - self._marked >= MARK_EVERY:
                        await self._mark()
        except BaseException:
            self._synced = False
            raise
        finally:
            if self.published != self._marked:
                await self._mark()
        return sent

    async def _send(self, row: sqlite3.Row) -> None:
        subject = receipts_subject(self._host)
        seq = int(row["seq"])
        body, receipt_id = str(row["body"]).encode(), str(row["id"])
        ack = await self._hub.publish(subject, body, receipt_id, {SEQ_HEADER: str(seq)})
        if ack.duplicate:
            log.info("the hub had this receipt already", receipt_id=row["id"])
        self.published = seq

    async def _leaves_published(self) -> int:
        """How many leaves of the receipt tree the hub holds (the position is a row id)."""
        row = await self._db.fetchone("SELECT leaf FROM receipts WHERE seq = ?", (self.published,))
        return 0 if row is None or row["leaf"] is None else int(row["leaf"]) + 1

    async def _mark(self) -> None:
        position = self.published
        await self._keep("receipts", position)
        self._marked = position

    async def _keep(self, name: str, position: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO fleet_outbox (name, position) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (name, position),
            )

        await self._db.write(op)

    async def checkpoint(self, note: str | None) -> bool:
        """Publish the signed checkpoint once the hub has every receipt it covers (and not one
        it had); True when one went."""
        if note is None:
            return False
        try:
            size = Checkpoint.parse(note).size
        except BadCheckpoint:
            return False
        if size <= self._checkpoint or size > await self._leaves_published():
            return False
        await self._hub.publish(checkpoints_subject(self._host), note.encode(), f"{self._host}-{size}")
        self._checkpoint = size
        await self._keep("checkpoints", size)
        return True
