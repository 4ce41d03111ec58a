"""Which local models stay in memory: a budget in bytes and in count, least recently used out first.

As Ollama's scheduler does: before a model loads, idle models are unloaded, the least recently
used first, until the new one fits both `[model] memory_budget_mb` and `max_loaded`. A model
that is generating is never unloaded under it: the load waits until that generation is done
(a turn's own timeout bounds the wait). A model too large for the budget on its own still loads,
alone, once everything else is out, so a budget set too small slows turns but never refuses one.

`plan` is the policy, a pure function over plain records; `Residency` is the I/O around it: it
asks the backends for their state, unloads the ones `plan` names, and waits when told to.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from waystation.adapters.models.footprint import estimate_bytes, physical_memory
from waystation.config import ModelSettings

log = structlog.get_logger(__name__)

AUTO_MAX_LOADED = 3  # Ollama's OLLAMA_MAX_LOADED_MODELS on a CPU
AUTO_BUDGET_SHARE = 0.75  # of physical memory: the rest is the system's and the user's


@dataclass(frozen=True)
class Resident:
    """A loaded model as the policy sees it."""

    key: str
    size: int  # estimated bytes in memory
    last_used: float  # monotonic seconds at its last generation's end (or its load)
    busy: bool  # generating now (or a generation waits for it)


@dataclass(frozen=True)
class Plan:
    evict: tuple[str, ...]  # unload these now, in this order
    wait: bool  # then wait for a busy model to finish and plan again


def plan(resident: Sequence[Resident], incoming: int, budget: int, max_loaded: int) -> Plan:
    """What to unload so that a model of `incoming` bytes can load beside the rest.

    Idle models go least recently used first, each only while the rest do not fit yet. When even
    with every idle one gone the rest (busy) do not leave room, every idle one goes now (each
    would go before the busy ones, which become the most recently used when they finish) and the
    load waits. Nothing else loaded: it loads, whatever its size.
    """
    kept = list(resident)
    evict: list[str] = []

    def fits() -> bool:
        return not kept or (len(kept) < max_loaded and sum(r.size for r in kept) + incoming <= budget)

    for victim in sorted((r for r in resident if not r.busy), key=lambda r: r.last_used):
        if fits():
            break
        kept.remove(victim)
        evict.append(victim.key)
    return Plan(tuple(evict), wait=not fits())


class Member(Protocol):
    """What residency needs of a backend (ThreadedBackend has it)."""

    model_path: str

    @property
    def loaded(self) -> bool: ...

    @property
    def busy(self) -> bool: ...

    @property
    def last_used(self) -> float: ...

    async def unload(self) -> None: ...


class Residency:
    """The models one route keeps; each backend calls `admit` before loading and `released`
    after each generation."""

    def __init__(self, budget: int, max_loaded: int, estimate: Callable[[str], int]) -> None:
        self.budget = budget
        self.max_loaded = max_loaded
        self._estimate = estimate
        self._members: dict[str, Member] = {}
        self._sizes: dict[str, int] = {}
        self._admitting = asyncio.Lock()  # one load decided at a time: two never take one room
        self._released = asyncio.Event()

    @classmethod
    def for_settings(cls, settings: ModelSettings) -> Residency:
        """`[model] memory_budget_mb` and `max_loaded`, with their automatic values for 0."""
        budget = settings.memory_budget_mb * 10**6 or int(physical_memory() * AUTO_BUDGET_SHARE)
        return cls(
            budget or sys.maxsize,  # a platform that does not say its RAM: the count alone limits
            settings.max_loaded or AUTO_MAX_LOADED,
            # llama.cpp's KV cache holds `context` tokens for each sequence generated at once.
            lambda key: estimate_bytes(Path(key), settings.context * max(1, settings.parallel)),
        )

    def add(self, backend: Member) -> None:
        self._members[backend.model_path] = backend

    def discard(self, backend: Member) -> None:
        self._members.pop(backend.model_path, None)
        self._sizes.pop(backend.model_path, None)

    def size(self, key: str) -> int:
        """The estimate of the model's bytes in memory (made once, at its first load)."""
        if key not in self._sizes:
            self._sizes[key] = self._estimate(key)
        return self._sizes[key]

    def released(self) -> None:
        """A generation ended: a load waiting for room may find some now."""
        self._released.set()

    async def admit(self, incoming: Member) -> None:
        """Return once the model may load: the models `plan` names unloaded, waiting as it says."""
        async with self._admitting:
            while True:
                self._released.clear()
                resident = [
                    Resident(key, self.size(key), m.last_used, m.busy)
                    for key, m in self._members.items()
                    if m.loaded and m is not incoming
                ]
                decided = plan(resident, self.size(incoming.model_path), self.budget, self.max_loaded)
                for key in decided.evict:
                    log.info("unloading the least recently used model", path=key, to_load=incoming.model_path)
                    if (victim := self._members.get(key)) is not None:
                        await victim.unload()
                if not decided.wait:
                    return
                log.info("waiting for a busy model before loading", path=incoming.model_path)
                await self._released.wait()
