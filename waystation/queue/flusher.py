"""Drains the store while connectivity says online. It only drives; policy and store decide.

The flusher sleeps on one event. It is woken when connectivity turns online, when a pending task
is announced (every committed task is: added over the API or by the fleet, parked by a turn,
retried; see task_changed), when a delivery finishes, or when the next retry falls due, so an
idle agent does not poll and a returning network starts deliveries at once.

On a metered connection (the connectivity's ``metered``) large or unsized tasks are not leased
(see TaskStore.lease's hold_back_bytes) until the connection is unmetered again or an explicit
flush (``flush_everything``) lifts the hold for a while.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
import time
from collections.abc import Mapping
from typing import Any

import structlog

from waystation import contract, timeutil
from waystation.config import QueueSettings
from waystation.errors import DatabaseError
from waystation.ports import Announce, Connectivity, Deliver, Outcome
from waystation.queue.breaker import Breaker
from waystation.queue.policy import Decision, decide
from waystation.queue.store import TaskStore
from waystation.queue.tasks import Task

log = structlog.get_logger(__name__)

LEASE_RETRY_S = 5.0  # after a failed lease (database locked, disk full), try again this much later
# Leasing runs this many batches of `concurrency` ahead of the free slots, like a consumer's
# prefetch (Celery's default multiplier is 4). A lease is a write that waits its turn behind the
# settles in the group commit, and a slot that frees while nothing is leased waits with it:
# measured on one loopback host, one batch ahead left nothing leased at 99% of answers (~780
# deliveries/s); four batches ahead, ~1,200/s. Leased-ahead tasks show as `running` but are not
# sent: after a crash they go back to pending untouched.
LEASE_AHEAD = 4
# Answers not yet recorded may reach this many batches of `concurrency`; past it no delivery
# starts, so a database that is slow or refusing (a full disk) cannot let delivered-but-unrecorded
# tasks pile up: each would be delivered again after a crash. With at most `concurrency` being
# sent, the tasks that can be delivered twice after a crash are at most 3 x concurrency.
UNRECORDED_MAX = 2
HOST_CLOSED = 1 << 30  # counts a host as full: an open circuit
# Pauses between attempts to record a delivery's answer the database refused (about a minute).
SETTLE_RETRIES_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
SHUTDOWN_RECORD_S = 2.0  # at shutdown, how long a lease or an answer's record may still take


class Flusher:
    def __init__(
        self,
        store: TaskStore,
        deliver: Deliver,
        connectivity: Connectivity,
        settings: QueueSettings,
        announce: Announce,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._deliver_once = deliver
        self._connectivity = connectivity
        self._settings = settings
        self._announce = announce
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # delivering or recording the answer
        self._sending: set[str] = set()  # of those, the ones still waiting for the destination
        self._per_host: collections.Counter[str] = collections.Counter()
        self._ready: collections.deque[Task] = collections.deque()  # leased, not yet started
        self._refresh_due = False
        self._leasing: asyncio.Task[None] | None = None
        self._wakes = 0  # counts wake() calls, so an empty lease is not repeated until one comes
        self._found_nothing_at = -1  # the value of _wakes when a lease last found nothing due
        self._lease_again_at = 0.0  # monotonic; after a database error, wait before leasing
        self._hold_lifted_until = 0.0  # monotonic; an explicit flush sends held tasks too
        self._was_metered = False
        self._breaker = Breaker()
        self.deliveries = 0

    def wake(self) -> None:
        """Something changed (a task added or settled, a slot freed, the network back): look again."""
        self._wakes += 1
        self._wake.set()

    def task_changed(self, task: Mapping[str, Any]) -> None:
        """A listener for announced tasks. Whoever commits a task announces it, so listening here
        wakes the flusher for every way a task can become pending, without each of them having
        to know the flusher: one committed pending may be due now, and so may one committed
        running, waiting on its destination's own task (a turn's MCP call the server took so)."""
        if task.get("state") in ("pending", "running"):
            self.wake()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def held(self) -> frozenset[str]:
        """Ids of the tasks this flusher has leased and not yet settled."""
        return frozenset(self._in_flight) | {t.id for t in self._ready}

    def flush_everything(self, seconds: float = 300.0) -> None:
        """Lift the metered hold-back for `seconds` (an explicit flush), and wake."""
        self._hold_lifted_until = time.monotonic() + seconds
        self.wake()

    def _hold_back_bytes(self) -> int | None:
        """The metered limit on a task's arguments, or None when nothing is held back."""
        metered = self._connectivity.metered
        self._was_metered = metered
        if not metered or time.monotonic() < self._hold_lifted_until:
            return None
        return self._settings.metered_max_bytes

    def connectivity_changed(self, state: str) -> None:
        if self._was_metered and not self._connectivity.metered:
            self._was_metered = False
            self.wake()  # the held tasks are due already
        if state == "online":
            self._refresh_due = True
            self._breaker.reset()  # hosts failed while the network was going: a fresh chance
            self.wake()

    async def run(self) -> None:
        """Deliver until cancelled; on cancellation give every in-flight task back as pending."""
        try:
            while True:
                self._wake.clear()
                timeout = await self._fill()
                if self._refresh_due:
                    # Back online: tasks that only lacked a network must not sit out the backoff
                    # meant for an unreachable host. Due tasks already went out in _fill above.
                    self._refresh_due = False
                    with contextlib.suppress(DatabaseError):
                        if await self._store.make_due(unreachable_only=True):
                            continue
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    self.wake()  # time has passed: a retry may have fallen due
        finally:
            await self._give_back()

    async def _fill(self) -> float | None:
        """Start deliveries up to the limits and keep a lease going; return how long to sleep
        (None: until woken).

        Leasing runs in the background and LEASE_AHEAD batches of `concurrency` ahead, so a slot
        that frees starts its next delivery at once instead of waiting for a lease transaction.
        """
        if self._connectivity.state != "online":
            await self._release_ready()
            return None
        self._start_ready()
        if self._leasing is not None:
            return None  # its end wakes us
        if time.monotonic() < self._lease_again_at:
            return self._lease_again_at - time.monotonic()
        want = (1 + LEASE_AHEAD) * self._settings.concurrency - len(self._sending) - len(self._ready)
        if want > 0 and self._found_nothing_at != self._wakes:
            self._leasing = asyncio.create_task(self._lease(want, self._wakes), name="lease")
            return None
        if self._in_flight or self._ready:
            return None  # a finishing delivery wakes us
        return await self._until_next_due()

    async def _lease(self, want: int, wakes: int) -> None:
        held = self._per_host + collections.Counter(t.host for t in self._ready)
        for host in self._breaker.open_hosts(time.monotonic()):
            held[host] = HOST_CLOSED  # open circuit: none of its tasks is leased
        hold_back = self._hold_back_bytes()
        extra = {} if hold_back is None else {"hold_back_bytes": hold_back}
        try:
            per_host = (1 + LEASE_AHEAD) * self._settings.per_host  # room for the other hosts too
            leased = await self._store.lease(want, held, per_host, **extra)
        except DatabaseError as exc:
            log.error("cannot lease tasks", error=exc.message)
            self._lease_again_at = time.monotonic() + LEASE_RETRY_S
        else:
            self._ready.extend(leased)
            if not leased:
                # Nothing due: lease again only after something changes (a wake), not in a loop.
                self._found_nothing_at = wakes
        finally:
            self._leasing = None
            self._wake.set()

    async def _until_next_due(self) -> float | None:
        hold_back = self._hold_back_bytes()
        # Tasks of a host left alone may be due already (its tasks leased ahead went back due
        # now): counting them would make this wait zero, and the loop would lease in vain, again
        # and again, until the circuit closes. Their time comes with `reopens` below.
        open_hosts = self._breaker.open_hosts(time.monotonic())
        next_due = await self._store.next_due_at(hold_back_bytes=hold_back, skip_hosts=open_hosts)
        wait = None if next_due is None else max(0.0, next_due - timeutil.now())
        reopens = self._breaker.next_close(time.monotonic())
        if reopens is not None:  # a host left alone gets its turn again then
            wait = min(wait if wait is not None else math.inf, reopens - time.monotonic())
        return wait

    def _start_ready(self) -> None:
        """Start leased tasks while there are free slots and their host is under its limit."""
        waiting: collections.deque[Task] = collections.deque()
        unrecorded = len(self._in_flight) - len(self._sending)
        if unrecorded >= UNRECORDED_MAX * self._settings.concurrency:
            return  # the database is not keeping up (or refuses): a recorded answer wakes us
        while self._ready:
            task = self._ready.popleft()
            if (
                len(self._sending) < self._settings.concurrency
                and self._per_host[task.host] < self._settings.per_host
            ):
                self._start(task)
            else:
                waiting.append(task)
        self._ready = waiting

    async def _release_host(self, host: str) -> None:
        """A host's circuit opened: its tasks leased ahead go back to pending, unsent."""
        ids = [t.id for t in self._ready if t.host == host]
        if ids:
            self._ready = collections.deque(t for t in self._ready if t.host != host)
            with contextlib.suppress(DatabaseError):
                await self._store.release(ids)

    async def _release_ready(self) -> None:
        """Connectivity left `online`: tasks leased ahead go back to pending, undelivered."""
        if self._ready:
            ids = [t.id for t in self._ready]
            self._ready.clear()
            with contextlib.suppress(DatabaseError):
                await self._store.release(ids)

    async def abort(self, task_id: str) -> bool:
        """Stop sending a task that is being cancelled: a delivery still waiting for its
        destination is abandoned (its connection closed), a task leased ahead is dropped. True
        when the task is no longer being sent by us, so it may go from `running` to `cancelled`;
        False when we do not hold it, or its answer is in and being recorded."""
        if any(t.id == task_id for t in self._ready):
            self._ready = collections.deque(t for t in self._ready if t.id != task_id)
            return True
        delivery = self._in_flight.get(task_id)
        if delivery is None or task_id not in self._sending:
            return False
        delivery.cancel()
        await asyncio.wait({delivery})
        return True

    def _start(self, task: Task) -> None:
        self._per_host[task.host] += 1
        self._sending.add(task.id)
        delivery = asyncio.create_task(self._deliver(task), name=f"deliver-{task.id}")
        self._in_flight[task.id] = delivery

        def finished(_: asyncio.Task[None]) -> None:
            self._answered(task)  # a delivery that failed before its answer frees its slot here
            self._in_flight.pop(task.id, None)
            self.wake()

        delivery.add_done_callback(finished)

    def _answered(self, task: Task) -> None:
        """The destination has answered (or cannot): its slot is free while the answer is recorded."""
        if task.id not in self._sending:
            return
        self._sending.discard(task.id)
        self._per_host[task.host] -= 1
        if self._per_host[task.host] <= 0:
            del self._per_host[task.host]
        self.wake()

    async def _deliver(self, task: Task) -> None:
        # Every log line of this delivery carries the task's id (and its turn's, if any).
        with structlog.contextvars.bound_contextvars(task_id=task.id, turn_id=task.turn_id):
            await self._deliver_task(task)

    async def _deliver_task(self, task: Task) -> None:
        started = time.perf_counter()
        # A task its destination holds as its own (an MCP server's task) is asked after, not sent.
        sent = await self._deliver_once(task.tool, task.args, task.idempotency_key, task.remote_task)
        held_s = time.perf_counter() - started
        if sent.outcome == Outcome.UNREACHABLE:
            self._connectivity.report_network_error()
        reached = sent.outcome != Outcome.UNREACHABLE
        if self._breaker.answered(task.host, reached, time.monotonic(), held_s=held_s):
            log.warning("destination keeps not answering; leaving it alone for a while", host=task.host)
            await self._release_host(task.host)
        decision = decide(
            outcome=sent.outcome,
            status=sent.status,
            attempts=task.attempts,
            net_failures=task.net_failures,
            now=timeutil.now(),
            settings=self._settings,
            rng=self._rng,
            retry_after_s=sent.retry_after_s,
            error=sent.error,
            remote_task=sent.remote_task or task.remote_task,
        )
        duration_ms = int(held_s * 1000)
        # The next delivery need not wait for this one's commit (an fsync): the task stays
        # `running` until the settle commits, and a crash before then delivers it again with the
        # same Idempotency-Key, so the window of possible repeats is what the flusher holds.
        self._answered(task)
        recorded = await self._record(task, decision, sent.result, duration_ms)
        if recorded is None:
            return
        settled, receipt = recorded
        self.deliveries += 1
        repeated = task.attempts > 0 or task.net_failures > 0
        self._announce.delivered(sent.outcome, repeated, duration_ms / 1000)
        log.debug("delivered", state=str(settled.state), status=sent.status)
        self._announce.task_changed(settled.to_json(), receipt)

    async def _record(
        self, task: Task, decision: Decision, result: Mapping[str, Any] | None, duration_ms: int
    ) -> tuple[Task, contract.Receipt | None] | None:
        """Settle the task on its answer, retrying while the database refuses (a full disk, a
        lock): the delivery has happened, and recording it beats delivering it again. Given up,
        the task stays `running` until its lease is reclaimed, then goes out again with the same
        Idempotency-Key."""
        for pause in (*SETTLE_RETRIES_S, None):
            try:
                return await self._store.settle(task, decision, result, duration_ms)
            except DatabaseError as exc:
                if pause is None:
                    log.error("cannot record delivery; it will be delivered again", error=exc.message)
                    return None
                log.warning("cannot record delivery yet", error=exc.message, retry_in_s=pause)
                await asyncio.sleep(pause)
        return None

    async def _give_back(self) -> None:
        if self._leasing is not None:
            # Let a lease in progress finish (one write) so what it took is given back too; one
            # stuck on a locked database is abandoned (the next start reclaims what it took).
            _, stuck = await asyncio.wait([self._leasing], timeout=SHUTDOWN_RECORD_S)
            for lease in stuck:
                lease.cancel()
        running = list(self._in_flight.values())
        ids = list(self._in_flight) + [t.id for t in self._ready]
        self._ready.clear()
        for task_id in self._sending:
            self._in_flight[task_id].cancel()
        # Answers already in are still recorded, unless the database keeps refusing: then the
        # task stays with the others given back below.
        if running:
            _, still = await asyncio.wait(running, timeout=SHUTDOWN_RECORD_S)
            for delivery in still:
                delivery.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if ids:
            with contextlib.suppress(DatabaseError):
                returned = await self._store.release(ids)
                log.info("returned in-flight tasks to pending", count=returned)
