"""The store's real work on the lazy disk, in a child process that a power cut kills (issue 24).

tests/test_powercut_store.py forks `work` from a forkserver that imported this module (children.py;
with it the store, the turn engine and the receipts) once: a child is ready in a few ms, not the
second an agent's start costs, so a cut is cheap. The child does what the agent does between
its HTTP handlers and its disk, all at once: tasks accepted (and some accepted again under their
key), leased, "delivered" and settled with their receipts, turns parking their calls offline,
parked turns resumed once their tasks settled, checkpoints signed and kept; and, given a loopback
nats-server, the fleet outbox publishing the receipts and the kept checkpoint to it.

Every step is told to the parent on a pipe only once it returned (committed, fsynced): what the
parent hears is what was acknowledged, and must survive the cut. A delivery is told before it
is settled ("sent"), as the flusher's request leaves before its answer is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import structlog

from waystation import durable, timeutil
from waystation.adapters.fleet.hub import Hub
from waystation.adapters.fleet.outbox import Outbox
from waystation.adapters.models.base import ToolCall
from waystation.adapters.tools import default_tools
from waystation.config import FleetSettings, QueueSettings
from waystation.db import Database
from waystation.errors import WaystationError
from waystation.queue.policy import Decision, TaskState
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask
from waystation.receipts.chain import RouteInfo
from waystation.receipts.checkpoints import SigningKey
from waystation.receipts.proofs import keep_checkpoint, stored_note
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.records import parked_turns_ready
from waystation.station.turns.request import TurnRequest
from waystation.testing import (
    FakeConnectivity,
    RecordingAnnouncer,
    ScriptedBackend,
    ScriptedDelivery,
    delivered,
)

DATABASE = "waystation.db"
HOST = "127.0.0.1:9"  # never reached: deliveries here are the store's half of one
ACCEPTING = 2  # clients accepting tasks at once (their writes commit in shared batches)
FLEET_HOST = "cut-host"
LEASE = 4  # tasks leased and delivered at once: at most this many in flight when the power goes


def args_for(key: str) -> dict[str, Any]:
    """A task's arguments, from its key: the same key accepted again carries the same ones."""
    return {"method": "POST", "url": f"http://{HOST}/{key}", "json": {"key": key}}


async def first_start(home: Path) -> None:
    """What the agent's first start leaves: its home, the database, the signing key, a kept
    checkpoint (the cuts in the first start itself are tests/test_powercut_receipts.py's)."""
    durable.make_dirs(home, 0o700)
    async with await Database.open(home / DATABASE) as db:
        await keep_checkpoint(db, SigningKey.load_or_create(home), home)


def work(home: str, seed: int, drain: bool, fleet: str | None, out: Connection) -> None:
    """The child's body: until killed; with `drain`, until nothing is left to settle or resume
    (or to publish). With `fleet` (a hub's URL), the fleet outbox publishes the receipts too."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    asyncio.run(Work(Path(home), seed, out).run(drain, fleet))


class Work:
    def __init__(self, home: Path, seed: int, out: Connection) -> None:
        self.home, self.out, self.rng = home, out, random.Random(seed)
        self.prefix = f"s{seed}"
        self.turns = iter(range(10**9))

    async def run(self, drain: bool, fleet: str | None) -> None:
        async with await Database.open(self.home / DATABASE) as db:
            self.db, self.store = db, TaskStore(db, QueueSettings())
            outbox = await self.outbox(fleet) if fleet else None
            self.out.send(("ready",))
            if drain:
                while await self.settle_some() or await self.resume_ready():
                    pass
                if outbox is not None:
                    await self.publish_some(outbox)
                self.out.send(("drained",))
                return
            jobs = [self.forever("accept", self.accepting(n), (0, 0)) for n in range(ACCEPTING)]
            jobs += [
                self.forever("settle", self.settle_some, (0, 0.005)),
                self.forever("park", self.park, (0, 0.02)),
                self.forever("resume", self.resume_ready, (0.01, 0.01)),
                self.forever("sign", self.sign, (0.005, 0.04)),
            ]
            if outbox is not None:
                jobs.append(self.forever("publish", lambda: self.publish_some(outbox), (0.002, 0.02)))
            await asyncio.gather(*jobs)

    def tell(self, *message: Any) -> None:
        self.out.send(message)

    async def forever(
        self, step: str, once: Callable[[], Awaitable[object]], pause: tuple[float, float]
    ) -> None:
        """`once` again and again; a step refused (a full disk: test_powercut_full.py) is told."""
        while True:
            try:
                await once()
            except (WaystationError, OSError) as exc:
                self.tell("refused", step, type(exc).__name__, str(exc)[:300])
            await asyncio.sleep(self.rng.uniform(*pause))

    # --- the steps --------------------------------------------------------------------------------

    def accepting(self, client: int) -> Callable[[], Awaitable[None]]:
        accepted: list[str] = []
        numbers = iter(range(10**9))

        async def accept() -> None:
            if accepted and self.rng.random() < 0.1:
                key = self.rng.choice(accepted)  # a client retrying a POST it got no answer to
            else:
                key = f"{self.prefix}-c{client}-{next(numbers)}"
            task, _ = await self.store.enqueue(NewTask("http_request", args_for(key), HOST, key))
            accepted.append(key)
            self.tell("accepted", key, task.id)

        return accept

    async def settle_some(self) -> int:
        leased = await self.store.lease(LEASE, {}, LEASE)
        await asyncio.gather(*(self._deliver(task) for task in leased))
        return len(leased)

    async def _deliver(self, task: Any) -> None:
        self.tell("sent", task.idempotency_key, task.id)
        decision = Decision(TaskState.DONE, task.attempts + 1, 0, timeutil.now(), None)
        answer = delivered(200, "ok").result
        settled, receipt = await self.store.settle(task, decision, answer, 1)
        if receipt is not None:
            self.tell("settled", settled.id, receipt["id"])

    async def park(self) -> None:
        url = f"http://{HOST}/{self.prefix}/turn/{next(self.turns)}"
        engine = self.engine(ToolCall("call_1", "http_request", {"url": url}))
        result = await engine.run(TurnRequest(f"Fetch {url}"))
        if result.status != "parked":  # its receipt could not be written, or the turn's row
            self.tell("refused", "park", result.status, "")
            return
        self.tell("parked", result.turn_id, result.deferred_task_ids, result.receipt_id)

    async def resume_ready(self) -> int:
        resumed = 0
        for turn_id in await parked_turns_ready(self.db):
            result = await self.engine("Fetched.").resume(turn_id)
            if result is not None:
                self.tell("resumed", turn_id, result.receipt_id, result.status)
                resumed += 1
        return resumed

    async def sign(self) -> None:
        key = SigningKey.load_or_create(self.home)
        self.tell("signed", await keep_checkpoint(self.db, key, self.home))

    async def outbox(self, url: str) -> Outbox:
        """The fleet's outbox, as the agent's fleet sets it up, over a real hub connection."""
        hub = Hub(
            FleetSettings(url=url), name=f"waystation {FLEET_HOST}", quiet=True, inbox=f"_INBOX_{FLEET_HOST}"
        )
        await hub.connect()
        await hub.receipts_stream()
        outbox = Outbox(self.db, hub, FLEET_HOST)
        await outbox.load()
        return outbox

    async def publish_some(self, outbox: Outbox) -> None:
        await outbox.drain(lambda: True)
        self.tell("published", outbox.published)
        if await outbox.checkpoint(stored_note(self.home)):
            self.tell("checkpoint published")

    def engine(self, reply: str | ToolCall) -> TurnEngine:
        """The real turn engine offline (its calls park), the model a scripted one-reply double."""

        async def route_for(route: str | None, model: str | None) -> tuple[RouteInfo, Any]:
            info = RouteInfo("local", "scripted", "none", "local", "scripted")
            return info, ScriptedBackend([reply])

        offline = FakeConnectivity(state="offline")
        return TurnEngine(
            self.db, self.store, TOOLS, offline, ScriptedDelivery(), route_for, RecordingAnnouncer()
        )


TOOLS = default_tools()
