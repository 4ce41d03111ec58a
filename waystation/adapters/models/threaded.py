"""The common life of a blocking in-process model: one owner thread, lazy load, idle unload.

llama.cpp and MLX generate with blocking calls and are not safe to drive from several threads, so
every call on a loaded model happens on its one owner thread. Tokens cross to the event loop with
`call_soon_threadsafe`, a few at a time when they come fast (token_relay.py), so streaming never
blocks generation and generation never blocks the loop.

A backend that generates several sequences at once (llama.cpp with `[model] parallel`: its own
thread owns the context, batching.py) says so with `parallel`: that many generations run at once,
each on a thread of its own, and the next one waits (with the `waiting` stage) for one to end.

A model stays loaded for its request's `keep_alive` after each generation (else `[model]
idle_unload_s`), and before it loads it asks its admission (residency.py) for room: other
models may be unloaded first, the least recently used of them.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import dataclasses
import threading
import time
from typing import Any, Generic, Protocol, TypeVar

import structlog

from waystation.adapters.models.base import Generation, GenerationRequest, TokenSink, discard
from waystation.adapters.models.token_relay import TokenRelay
from waystation.errors import ModelError, WaystationError

log = structlog.get_logger(__name__)

Handle = TypeVar("Handle")


class Admission(Protocol):
    """Who decides whether a model may load now (residency.py: a memory budget across models)."""

    async def admit(self, incoming: Any) -> None: ...

    def released(self) -> None: ...


class ThreadedBackend(abc.ABC, Generic[Handle]):
    name = "threaded"

    def __init__(
        self,
        model_path: str,
        *,
        idle_unload_s: float = 0,
        admission: Admission | None = None,
        parallel: int = 0,
    ) -> None:
        self.model_path = model_path
        self.parallel = parallel  # sequences generated at once, for `models ps`; 0: one at a time
        self.capacity = max(1, parallel)
        self._idle_unload_s = idle_unload_s
        self._admission = admission
        self._last_used = time.monotonic()
        self._owner = concurrent.futures.ThreadPoolExecutor(
            self.capacity, thread_name_prefix=f"waystation-{self.name}"
        )
        self._handle: Handle | None = None
        self._places = asyncio.Semaphore(self.capacity)  # generations at once (1: the model has one context)
        self._loading = asyncio.Lock()  # held to load or unload: never while a generation runs
        self._queued = 0  # generations waiting for a place
        self._active = 0  # generations running now
        self._idle = asyncio.Event()  # set while none runs
        self._idle.set()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._stops: set[threading.Event] = set()  # the running generations' stop flags
        self._local = threading.local()  # on a generation's thread: its stop flag
        self._closing = False  # set by close(): stops a generation that has not started yet too
        self.load_ms: int | None = None
        self.loaded_at: float | None = None  # wall clock, for `models ps`
        self.unloads_at: float | None = None  # when the idle timer fires (None: never, or busy)

    @property
    def loaded(self) -> bool:
        return self._handle is not None

    @property
    def busy(self) -> bool:
        """Generating now (the idle timer starts again when it is done)."""
        return self._active > 0

    @property
    def in_use(self) -> int:
        """Generations running now (at most `capacity`)."""
        return self._active

    @property
    def waiting(self) -> int:
        """Generations waiting for one of those to end (the `waiting` stage)."""
        return self._queued

    @property
    def last_used(self) -> float:
        """When its last generation ended (monotonic): the least recently used unloads first."""
        return self._last_used

    # --- what a backend provides, all called on the owner thread ------------------------------

    @abc.abstractmethod
    def load_blocking(self) -> Handle:
        """Load the model; raise ModelError with a clear message when it cannot be used."""

    @abc.abstractmethod
    def generate_blocking(self, handle: Handle, request: GenerationRequest, emit: TokenSink) -> Generation:
        """Generate one reply, calling `emit` with each text piece as it is produced."""

    def unload_blocking(self, handle: Handle) -> None:
        """Release the model's memory (the default: drop the reference)."""
        del handle

    def stopping(self) -> bool:
        """Checked by generate_blocking at each token: the turn was cancelled or we are closing."""
        stop = getattr(self._local, "stop", None)
        return self._closing or (stop is not None and stop.is_set())

    # --- the async face -----------------------------------------------------------------------

    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        loop = asyncio.get_running_loop()
        stage = request.on_stage or (lambda _stage, _ahead: None)
        if self._places.locked():
            stage("waiting", self._queued + 1)  # the one to end first, and those queued before us
        self._queued += 1
        try:
            await self._places.acquire()
        finally:
            self._queued -= 1
        try:
            cold_ms, handle = await self._loaded(loop, stage)
            stage("generating", 0)
            relay = TokenRelay(loop, on_token) if on_token is not None else None
            emit: TokenSink = relay.emit if relay is not None else discard
            stop = threading.Event()
            self._stops.add(stop)

            def run() -> Generation:
                self._local.stop = stop  # on the generation's thread: read by stopping()
                try:
                    return self.generate_blocking(handle, request, emit)
                except WaystationError:
                    raise
                except Exception as exc:  # a foreign failure, translated at this boundary
                    raise ModelError(self.model_path, f"generation failed ({type(exc).__name__})") from exc

            running = loop.run_in_executor(self._owner, run)
            try:
                generation = await running
            except asyncio.CancelledError:
                stop.set()  # the generation stops at its next token instead of finishing
                raise
            finally:
                if not running.done() and self.capacity > 1:
                    # Not one owner thread that would run an unload only after it: the model must
                    # not unload under the generation's thread before it has stopped.
                    await asyncio.wait([running])
                self._stops.discard(stop)
                if relay is not None:
                    relay.flush()  # the last pieces go now, not at the relay's next tick
                self._last_used = time.monotonic()
                await self._ended(loop, request.keep_alive)
        finally:
            self._places.release()
            if self._admission is not None:
                self._admission.released()
        if cold_ms is not None:
            generation = dataclasses.replace(generation, cold_load_ms=cold_ms)
        return generation

    async def _loaded(self, loop: asyncio.AbstractEventLoop, stage: Any) -> tuple[int | None, Handle]:
        """The loaded model (loaded now when it is not: then also how long that took), counted
        as in use until `_ended`."""
        async with self._loading:
            self._cancel_idle_timer()
            cold_ms = None
            if self._handle is None:
                if self._admission is not None:
                    await self._admission.admit(self)  # other models may unload to make room
                stage("loading", 0)
                started = time.perf_counter()
                self._handle = await loop.run_in_executor(self._owner, self.load_blocking)
                cold_ms = self.load_ms = int((time.perf_counter() - started) * 1000)
                self.loaded_at = time.time()
                log.info("model loaded", backend=self.name, path=self.model_path, load_ms=cold_ms)
            self._active += 1
            self._idle.clear()
            return cold_ms, self._handle

    async def _ended(self, loop: asyncio.AbstractEventLoop, keep_alive: float | None) -> None:
        """A generation ended: the last one to end starts the idle timer (or, with a keep_alive of
        0, unloads before its answer goes: "after" is strict)."""
        self._active -= 1
        if self._active:
            return
        self._idle.set()
        if keep_alive == 0:
            await self.unload()
        else:
            self._arm_idle_timer(loop, self._idle_unload_s if keep_alive is None else keep_alive)

    async def unload(self) -> None:
        """Unload once no generation runs (new ones wait for it)."""
        async with self._loading:
            await self._idle.wait()
            await self._release_handle(asyncio.get_running_loop())

    async def _release_handle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Unload, `_loading` held and no generation running."""
        self._cancel_idle_timer()
        handle, self._handle = self._handle, None
        self.loaded_at = None
        if handle is not None:
            await loop.run_in_executor(self._owner, self.unload_blocking, handle)
            log.info("model unloaded", backend=self.name, path=self.model_path)

    async def close(self) -> None:
        self._closing = True  # a generation queued on the owner thread ends at its first token
        for stop in list(self._stops):
            stop.set()  # a generation still running ends at its next token
        await self.unload()
        self._owner.shutdown(wait=True)

    def _arm_idle_timer(self, loop: asyncio.AbstractEventLoop, keep_alive: float) -> None:
        """Unload after `keep_alive` idle seconds; 0 or less: never (a request's keep_alive of 0,
        unload at once, is handled before this: 0 means never only as `[model] idle_unload_s`)."""
        if keep_alive > 0:
            self._idle_timer = loop.call_later(keep_alive, self._idle_expired)
            self.unloads_at = time.time() + keep_alive

    def _cancel_idle_timer(self) -> None:
        self.unloads_at = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_expired(self) -> None:
        self._idle_timer = self.unloads_at = None
        task = asyncio.ensure_future(self.unload())
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Future[Any]] = set()
