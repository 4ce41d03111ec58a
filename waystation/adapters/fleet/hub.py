"""The fleet's hub: one NATS connection with JetStream, the contract's streams and status bucket.

Names are the contract's (CONTRACT.md, "Fleet"). The streams and the bucket are made when absent
with the settings of layout.py; one that exists is used as it is (an operator may have tuned it).

Every failure of nats-py's comes out as a FleetError (failures.py): FleetUnavailable when the hub
did not answer in time (down, link cut: whoever called retries), FleetRefused when it answered no
(no JetStream, authorisation, permissions). The credentials file is only ever named by its path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AccountInfo,
    ConsumerConfig,
    KeyValueConfig,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from waystation.adapters.fleet.failures import CONNECTING, map_exceptions
from waystation.adapters.fleet.layout import (
    HOSTS_BUCKET,
    HOSTS_TTL_S,
    NO_ROOM_CODES,
    RECEIPTS_SHARE,
    RECEIPTS_STREAM,
    WORK_ACK_WAIT_S,
    WORK_MAX_DELIVER,
    WORK_SHARE,
    WORK_STREAM,
    Part,
    receipts_config,
    size_note,
    stream_bytes,
    work_config,
)
from waystation.config import FleetSettings
from waystation.errors import FleetError, FleetUnavailable
from waystation.ports import PubAck

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 3
REQUEST_TIMEOUT_S = 5.0
SEQ_HEADER = "Waystation-Seq"  # the receipt's place in the host's chain, for resuming the outbox


def safe_url(url: str) -> str:
    """The URL with its password masked, for logs and errors: as Go's url.URL.Redacted,
    `user:xxxxx@host`, taking everything up to the last "@" as the user part (a password may hold
    "@" and "/"). A lone user part is a NATS token: masked whole."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}:xxxxx@{host}" if colon else f"{scheme}://xxxxx@{host}"


def receipts_subject(host: str) -> str:
    return f"waystation.{host}.receipts"


def checkpoints_subject(host: str) -> str:
    return f"waystation.{host}.checkpoints"


def work_subject(host: str) -> str:
    return f"waystation.{host}.work"


class Hub:
    """One connection to the hub, reconnecting forever once made (a ports.FleetHub)."""

    def __init__(
        self, settings: FleetSettings, name: str = "waystation", *, quiet: bool = False, inbox: str = "_INBOX"
    ) -> None:
        self.settings = settings
        # Replies (acks, fetched work) come to subjects under this prefix. A host's own prefix
        # (`_INBOX_<host>`) lets the hub's authorization give each host only its own replies
        # (README, "Fleet": a shared `_INBOX.>` would let one host read another's work).
        self._inbox = inbox
        self._quiet = quiet  # the command line: one answer on stdout, no connection chatter
        self._name = name
        self._creds = os.path.expanduser(settings.creds) if settings.creds else ""
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self.on_reconnect: Callable[[], None] = lambda: None
        self._refusal: str | None = None  # the last permission the hub denied, in its words
        self._up = asyncio.Event()  # connected now (nats-py reconnects by itself once connected)
        self._errors_said = 0  # errors logged since the link went down: the first one only
        self._last_error: Exception | None = None  # why the last try to reach the hub failed

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def ever_connected(self) -> bool:
        return self._nc is not None

    async def wait_up(self) -> None:
        """Until nats-py has the connection back (it retries every second by itself)."""
        await self._up.wait()

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise FleetUnavailable("fleet hub: not connected")
        return self._js

    async def connect(self) -> None:
        """Connect once (FleetError if that fails); after that nats-py reconnects by itself. A
        connection from an earlier try (one whose streams could not be made) is closed first."""
        await self.close()
        options: dict[str, Any] = {}
        if self._creds:
            options["user_credentials"] = self._creds
        self._last_error = None
        with map_exceptions(f"cannot connect to {safe_url(self.settings.url)}", mapping=CONNECTING):
            self._nc = await self._first_connection(options)
        # Connected once: from now on nats-py reconnects by itself, forever (it reads the option
        # at each disconnection; connect() has no separate setting for the first attempt).
        self._nc.options["allow_reconnect"] = True
        self._nc.options["max_reconnect_attempts"] = -1
        self._js = self._nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        self._up.set()
        if not self._quiet:
            log.info("fleet hub connected", url=safe_url(self.settings.url))

    async def _first_connection(self, options: dict[str, Any]) -> Client:
        try:
            return await nats.connect(
                servers=[self.settings.url],
                name=self._name,
                connect_timeout=CONNECT_TIMEOUT_S,
                # The first connection is tried once, so that a refusal (authorization, a
                # credentials file the hub rejects) comes back here as an error instead of
                # nats-py retrying it forever in silence; whoever called retries with a backoff.
                allow_reconnect=False,
                # ... and nats-py's first connect loops over its servers until one answers when
                # attempts are unbounded: a refused connection (no server on that port) would
                # hang a `fleet status` for ever. Bounded here, unbounded once connected.
                max_reconnect_attempts=1,
                reconnect_time_wait=1,
                # A link cut without a reset is noticed in about 30 s (nats-py's default: 4 min).
                ping_interval=10,
                max_outstanding_pings=3,
                # Nothing is buffered while the link is down: a publish then fails at once and the
                # outbox resends from its last ack, in order (a buffer resent after a reconnect
                # could overtake what the broken link lost).
                pending_size=0,
                inbox_prefix=self._inbox,
                error_cb=self._error,
                disconnected_cb=self._disconnected,
                reconnected_cb=self._reconnected,
                **options,
            )
        except nats.errors.NoServersError:
            # nats-py's word once its tries are spent; the last try's own failure says why
            # (a refused connection, a name that does not resolve).
            raise self._last_error or nats.errors.NoServersError() from None

    async def _error(self, exc: Exception) -> None:
        self._last_error = exc
        if type(exc) is nats.errors.Error:
            # The one error nats-py hands over as a bare Error, keeping the connection: a permission
            # the hub denied (its -ERR text). The request it denied is then never answered.
            self._refusal = str(exc)
        if not self._quiet and (self.connected or not self._errors_said):  # one line per outage
            self._errors_said += 1
            log.warning("fleet hub error", error=str(exc))

    async def _disconnected(self) -> None:
        self._up.clear()
        if not self._quiet and self._nc is not None and not self._nc.is_closed:
            log.warning("fleet hub disconnected; reconnecting", url=safe_url(self.settings.url))

    async def _reconnected(self) -> None:
        self._errors_said = 0
        self._up.set()
        if not self._quiet:
            log.info("fleet hub reconnected", url=safe_url(self.settings.url))
        self.on_reconnect()

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = self._js = self._kv = None

    async def account(self) -> AccountInfo:
        """The account's JetStream usage and limits; FleetRefused where it has no JetStream."""
        with map_exceptions("JetStream account"):
            return await self.js.account_info()

    async def ensure(self) -> list[Part]:
        """Set up every part of the hub, each on its own: one the hub refuses says why and leaves
        the others working. A hub without JetStream, or one that did not answer, raises."""
        await self.account()  # no JetStream at all: one refusal for the hub, not one per part
        parts = []
        for name, setup in (
            (RECEIPTS_STREAM, self.receipts_stream),
            (WORK_STREAM, self.work_stream),
            (HOSTS_BUCKET, self._bucket_part),
        ):
            try:
                parts.append(Part(name, note=await setup()))
            except FleetError as exc:  # refused, or unanswered (a permission the hub denies silently)
                parts.append(Part(name, refused=exc.message))
        return parts

    async def receipts_stream(self) -> str:
        """WAYSTATION_RECEIPTS, made when absent; a note on its size ("" when the usual one)."""
        return await self._stream(receipts_config(), RECEIPTS_SHARE)

    async def work_stream(self) -> str:
        """WAYSTATION_WORK, made when absent; a note on its size ("" when the usual one)."""
        return await self._stream(work_config(), WORK_SHARE)

    async def _stream(self, config: StreamConfig, share: float) -> str:
        """Make the stream when absent. JetStream reserves a stream's max_bytes up front and
        refuses more than the account or the server has: the size is the account's share where
        the account has a limit, and the stream is bounded by its age alone where the hub still
        has no room for that many bytes (a small disk; limits set on the server, not the account)."""
        assert config.name is not None and config.max_bytes is not None
        wanted = config.max_bytes
        with map_exceptions(f"stream {config.name}"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                return size_note((await self.js.stream_info(config.name)).config, wanted)
            limits = (await self.js.account_info()).limits  # translated below
            config = dataclasses.replace(
                config,
                max_bytes=stream_bytes(wanted, limits.max_storage, limits.storage_max_stream_bytes, share),
            )
            try:
                await self.js.add_stream(config)
            except nats.js.errors.APIError as exc:
                if exc.err_code not in NO_ROOM_CODES:
                    raise
                config = dataclasses.replace(config, max_bytes=-1)
                await self.js.add_stream(config)
            note = size_note(config, wanted)
            if note and not self._quiet:
                log.warning("fleet stream created smaller than usual", stream=config.name, note=note)
            elif not self._quiet:
                log.info("fleet stream created", stream=config.name)
            return note

    async def _bucket_part(self) -> str:
        await self.bucket()
        return ""

    async def bucket(self) -> KeyValue:
        if self._kv is None:
            with map_exceptions(f"bucket {HOSTS_BUCKET}"):
                try:
                    self._kv = await self.js.key_value(HOSTS_BUCKET)
                except nats.js.errors.BucketNotFoundError:
                    self._kv = await self.js.create_key_value(
                        KeyValueConfig(
                            bucket=HOSTS_BUCKET, history=1, ttl=HOSTS_TTL_S, storage=StorageType.FILE
                        )
                    )
        return self._kv

    async def publish(
        self, subject: str, data: bytes, msg_id: str, headers: dict[str, str] | None = None
    ) -> PubAck:
        """Publish and wait for the stream's ack (the hub has it stored)."""
        with map_exceptions(f"publish to {subject}", refusal=self._refusal):
            ack = await self.js.publish(
                subject, data, timeout=REQUEST_TIMEOUT_S, headers={"Nats-Msg-Id": msg_id, **(headers or {})}
            )
        return PubAck(ack.seq, bool(ack.duplicate))

    async def last_headers(self, stream: str, subject: str) -> dict[str, str] | None:
        """The headers of the last message the stream holds on `subject` (None: it holds none)."""
        with map_exceptions(f"last message on {subject}"):
            try:
                msg = await self.js.get_last_msg(stream, subject)
            except nats.js.errors.NotFoundError:
                return None
        return dict(msg.headers or {})

    async def put_status(self, host: str, status: dict[str, Any]) -> None:
        kv = await self.bucket()
        with map_exceptions(f"status of {host}"):
            await kv.put(host, json.dumps(status, separators=(",", ":")).encode())

    async def statuses(self) -> dict[str, dict[str, Any]]:
        """Every host's last status in the bucket."""
        kv = await self.bucket()
        with map_exceptions(f"bucket {HOSTS_BUCKET}"):
            try:
                keys = await kv.keys()
            except nats.js.errors.NoKeysError:
                return {}
            found = {}
            for key in keys:
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    entry = await kv.get(key)
                    with contextlib.suppress(ValueError):
                        found[key] = json.loads(entry.value or b"{}")
            return found

    async def work(self, host: str) -> JetStreamContext.PullSubscription:
        """The host's durable pull consumer on its work subject (made when absent)."""
        durable = f"waystation_{host}"
        with map_exceptions(f"work consumer {durable}"):
            try:
                found = (await self.js.consumer_info(WORK_STREAM, durable)).config
            except nats.js.errors.NotFoundError:
                found = None
            if found is not None and (found.max_deliver or -1) < 0:
                # Made before max_deliver was set: one poison message would be redelivered for
                # ever. The rest of an existing consumer is left as it is (it may be tuned).
                tuned = dataclasses.replace(found, max_deliver=WORK_MAX_DELIVER)
                await self.js.add_consumer(WORK_STREAM, tuned)
            return await self.js.pull_subscribe(
                work_subject(host),
                durable=durable,
                stream=WORK_STREAM,
                # Named, so that nats-py creates it on the subject that names its filter
                # (`CONSUMER.CREATE.<stream>.<name>.<filter>`): the hub's authorization can then
                # let a host make its own consumer, on its own work only (README, "Fleet").
                config=ConsumerConfig(
                    name=durable,
                    durable_name=durable,
                    filter_subject=work_subject(host),
                    ack_wait=WORK_ACK_WAIT_S,
                    max_ack_pending=64,
                    max_deliver=WORK_MAX_DELIVER,
                ),
            )


async def fetch(sub: JetStreamContext.PullSubscription, batch: int, wait_s: float) -> list[Msg]:
    """Up to `batch` messages, waiting at most `wait_s`; [] when none came."""
    with map_exceptions("fetch work"):
        try:
            return await sub.fetch(batch, timeout=wait_s)
        except nats.errors.TimeoutError:
            return []


async def settle(msg: Msg, action: Callable[[Msg], Awaitable[Any]]) -> None:
    """Ack or term a message; a lost answer means redelivery, which the task's key absorbs."""
    try:
        with map_exceptions("settle a message"):
            await action(msg)
    except FleetError as exc:
        log.warning("fleet work: cannot settle a message", error=exc.message)
