"""The agent's side of the fleet: the outbox, the host's status and the host's work, over one hub
connection (adapters/fleet). It rides the connectivity monitor as deliveries do: while the host is
offline nothing is sent or fetched, and coming back online wakes all three.

Only the agent runs this: build_agent makes it with its hub and outbox, and wires its listeners
(the announcer's connectivity, receipts and tasks; the hub's reconnection).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from nats.aio.msg import Msg

from waystation import contract
from waystation.adapters.fleet import work
from waystation.adapters.fleet.hub import Hub, fetch, safe_url, settle
from waystation.adapters.fleet.layout import WORK_MAX_DELIVER
from waystation.adapters.fleet.outbox import Outbox
from waystation.errors import DatabaseError, FleetError, FleetRefused, InputError, WorkRefused
from waystation.receipts import proofs
from waystation.receipts.checkpoints import VerifierKey
from waystation.station import AgentStation
from waystation.station.background import cancel
from waystation.station.ops import fleet as fleet_ops
from waystation.station.ops import tasks

log = structlog.get_logger(__name__)

STATUS_EVERY_S = 60.0
STATUS_DEBOUNCE_S = 1.0
REFUSED_RETRY_S = 60.0
RETRY_MAX_S = 5.0  # nats-py itself reconnects every second; this only paces our retries
WORK_BATCH = 16
WORK_WAIT_S = 5.0
LOCAL_RETRY_S = 30.0  # a task this host's database could not commit comes back this much later


class Fleet:
    def __init__(self, station: AgentStation, hub: Hub, outbox: Outbox, host: str) -> None:
        self._station = station
        self.host = host
        self.hub = hub
        self.outbox = outbox
        self._online = asyncio.Event()
        self._outbox_due = asyncio.Event()
        self._status_due = asyncio.Event()
        # Connected; each loop then sets up its own part of the hub (stream or bucket), so one the
        # hub refuses (a small hub, a permission) leaves the others working.
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._work_keys = [VerifierKey.parse(k) for k in station.settings.fleet.work_keys]  # checked at load

    async def start(self) -> None:
        await self.outbox.load()
        self.connectivity_changed({"state": self._station.monitor.state})
        for name, loop in (
            ("connect", self._connect),
            ("outbox", self._outbox),
            ("status", self._status),
            ("work", self._work),
        ):
            self._tasks.append(asyncio.create_task(self._forever(name, loop), name=f"fleet-{name}"))
        log.info("fleet on", url=safe_url(self._station.settings.fleet.url), host=self.host)
        if not self._work_keys:
            log.warning("fleet: [fleet] work_keys lists no key: work from the hub is terminated, not taken")

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel(task)
        await self.hub.close()

    def connectivity_changed(self, change: Any) -> None:
        if str(change.get("state")) == "online":
            self._online.set()
            self._outbox_due.set()
            self._status_due.set()
        else:
            self._online.clear()

    def receipt_written(self, _: Any) -> None:
        self._outbox_due.set()
        self._status_due.set()  # the last receipt is part of the status

    def task_changed(self, _: Any) -> None:
        self._status_due.set()  # the queue's counts are part of the status

    def reconnected(self) -> None:
        self.outbox.unsynced()
        self._outbox_due.set()
        self._status_due.set()

    async def _forever(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one loop again after a failure: once the connection is back when the link broke
        (nats-py reconnects by itself), else after a backoff. The first failure of a streak is a
        warning and the rest of it quiet; the hub's refusals are errors, a minute apart."""
        streak = 0
        while True:
            began = time.monotonic()
            try:
                await loop()
                return
            except FleetRefused as exc:
                log.error("fleet: the hub refused", part=name, error=exc.message)
                pause = REFUSED_RETRY_S
            except FleetError as exc:
                if time.monotonic() - began > RETRY_MAX_S:
                    streak = 0  # it ran a good while: a new failure, not the last one again
                if streak == 0:
                    log.warning("fleet: the hub is unavailable; retrying", part=name, error=exc.message)
                pause = min(0.5 * 2**streak, RETRY_MAX_S)
            except Exception:
                log.exception("fleet: unexpected failure", part=name)
                pause = RETRY_MAX_S
            streak += 1
            self.outbox.unsynced()
            self._outbox_due.set()
            if self.hub.ever_connected and not self.hub.connected:
                await self.hub.wait_up()
            else:
                await asyncio.sleep(pause)

    async def _connect(self) -> None:
        await self._online.wait()
        await self.hub.connect()
        await self.hub.account()  # a hub without JetStream: refused once here, not by each part
        self._ready.set()

    async def _outbox(self) -> None:
        await self._ready.wait()
        await self.hub.receipts_stream()
        while True:
            await self._online.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox_due.wait(), STATUS_EVERY_S)
            self._outbox_due.clear()
            if not self._online.is_set():
                continue
            await self.outbox.drain(self._online.is_set)
            if await self.outbox.checkpoint(proofs.stored_note(self._station.paths.state)):
                self._status_due.set()

    async def _status(self) -> None:
        await self._ready.wait()
        await self.hub.bucket()
        while True:
            await self._online.wait()
            await self.hub.put_status(self.host, await self.status())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_due.wait(), STATUS_EVERY_S)
            await asyncio.sleep(STATUS_DEBOUNCE_S)  # a burst of changes makes one write
            self._status_due.clear()

    async def status(self) -> dict[str, Any]:
        """What the bucket holds for this host (ops/fleet.py: the status op's, less what is local)."""
        return await fleet_ops.host_status(self._station, self.host, self.outbox.published)

    async def _work(self) -> None:
        await self._ready.wait()
        await self.hub.work_stream()
        sub = await self.hub.work(self.host)
        try:
            while True:
                await self._online.wait()
                for msg in await fetch(sub, WORK_BATCH, WORK_WAIT_S):
                    await self._take(msg)
        finally:  # a failed fetch restarts this loop with a new subscription: drop this one
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _take(self, msg: Msg) -> None:
        """One message as a local task, acked once committed. Work not signed by a key [fleet]
        work_keys lists, or asking for more than [fleet] allows, is terminated
        (adapters/fleet/work.py); so is whatever else one message makes fail (the hub never
        redelivers it), and the work behind it goes on. Only a failure of this host's own database
        leaves it to be redelivered later, up to the consumer's max_deliver."""
        seq = msg.metadata.sequence.stream
        headers = msg.headers or {}
        key = headers.get("Nats-Msg-Id") or f"{self.host}-work-{seq}"
        try:
            task, created = await self._add(msg.data, headers, key)
        except DatabaseError as exc:
            delivered = msg.metadata.num_delivered or 1
            if delivered < WORK_MAX_DELIVER:
                log.warning("fleet work: cannot commit it now; redelivered later", key=key, error=exc.message)
                await settle(msg, lambda m: m.nak(delay=LOCAL_RETRY_S))
                return
            reason = f"given up after {delivered} deliveries: {exc.message}"
        except InputError as exc:
            reason = exc.message
        except Exception as exc:  # a bug one message triggers must not stop the host's work
            log.exception("fleet work: unexpected failure of one message", stream_seq=seq, key=key)
            reason = f"unexpected {type(exc).__name__}: {exc}"
        else:
            log.info("fleet work: task added", stream_seq=seq, task_id=task["id"], created=created)
            await settle(msg, lambda m: m.ack_sync())
            return
        log.error("fleet work: message terminated", stream_seq=seq, key=key, reason=reason)
        await settle(msg, lambda m: m.term())

    async def _add(self, data: bytes, headers: Mapping[str, str], key: str) -> tuple[contract.Task, bool]:
        refusal = work.signature_refusal(data, headers.get(work.SIGNATURE_HEADER), self._work_keys)
        if refusal is not None:
            raise WorkRefused(refusal)
        body = work.work_body(data)
        # Before the arguments are validated, which looks each secret up: work learns nothing of
        # secrets it may not name, not even whether they are set.
        refusal = work.secrets_refusal(body.get("args"), self._station.settings.fleet.work_secrets)
        if refusal is not None:
            raise WorkRefused(refusal)
        return await tasks.add_request(self._station, body, key, self._admit)

    async def _admit(self, tool: str, args: Mapping[str, Any], destination: str) -> None:
        """Work reaches only the hosts [fleet] allows (checked once its arguments are valid)."""
        fleet = self._station.settings.fleet
        url = args.get("url")
        scheme = str(url).partition(":")[0].lower() if isinstance(url, str) else "https"
        port = DEFAULT_PORTS.get(scheme)
        addresses = () if fleet.work_hosts else await _addresses(destination, port)
        refusal = work.destination_refusal(destination, port, addresses, fleet.work_hosts)
        if refusal is not None:
            raise WorkRefused(f"{tool}: {refusal}")


DEFAULT_PORTS = {"http": 80, "https": 443}
RESOLVE_TIMEOUT_S = 5.0


async def _addresses(destination: str, port: int | None) -> tuple[str, ...]:
    """What a destination's name resolves to now; a name that does not resolve is refused (it
    might resolve to an inner address later). A literal address is itself."""
    host, given = work.split_destination(destination)
    host = host.strip("[]")
    try:
        found = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, given or port, type=socket.SOCK_STREAM),
            RESOLVE_TIMEOUT_S,
        )
    except (OSError, TimeoutError):
        raise WorkRefused(f"cannot resolve {host}: only work to hosts that resolve now is taken") from None
    return tuple(str(info[4][0]) for info in found)
