"""Which models stay loaded: the eviction policy (pure), the residency around it, keep_alive.

The policy is tested on plain records; the residency and keep_alive on the real ThreadedBackend
(owner thread, lock, idle timer) with a model whose load and generation are trivial, so the
tests measure the bookkeeping, not llama.cpp. tests/test_models_loaded.py runs real models.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from waystation.adapters.models.base import Generation, GenerationRequest, TokenSink
from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.footprint import estimate_bytes, gguf_metadata, kv_cache_bytes
from waystation.adapters.models.residency import Plan, Residency, Resident, plan
from waystation.adapters.models.threaded import ThreadedBackend
from waystation.config import ModelSettings
from waystation.errors import MalformedRequest
from waystation.station.turns.request import keep_alive, turn_request

MB = 10**6


def r(key: str, size_mb: int, last_used: float, busy: bool = False) -> Resident:
    return Resident(key, size_mb * MB, last_used, busy)


# --- the policy --------------------------------------------------------------------------------


def test_nothing_goes_while_the_new_model_fits() -> None:
    assert plan([r("a", 100, 1), r("b", 100, 2)], 100 * MB, 300 * MB, 3) == Plan((), wait=False)


def test_the_least_recently_used_idle_model_goes_first_and_only_as_many_as_needed() -> None:
    resident = [r("new", 100, 3), r("old", 100, 1), r("mid", 100, 2)]
    assert plan(resident, 100 * MB, 300 * MB, 3) == Plan(("old",), wait=False)
    assert plan(resident, 200 * MB, 300 * MB, 3) == Plan(("old", "mid"), wait=False)


def test_the_count_limit_evicts_too() -> None:
    resident = [r("a", 1, 5), r("b", 1, 4)]
    assert plan(resident, MB, 10**12, 2) == Plan(("b",), wait=False)
    assert plan(resident, MB, 10**12, 1) == Plan(("b", "a"), wait=False)


def test_a_busy_model_is_never_evicted_the_load_waits_for_it() -> None:
    resident = [r("busy", 100, 0, busy=True), r("idle", 100, 5)]
    # Only the idle one can go, and even then the busy one leaves no room: both now and wait.
    assert plan(resident, 250 * MB, 300 * MB, 3) == Plan(("idle",), wait=True)
    # The busy one, older though it is, is passed over while the idle one makes room.
    assert plan(resident, 150 * MB, 300 * MB, 3) == Plan(("idle",), wait=False)


def test_a_model_larger_than_the_budget_loads_alone() -> None:
    assert plan([], 900 * MB, 300 * MB, 3) == Plan((), wait=False)
    assert plan([r("a", 10, 1)], 900 * MB, 300 * MB, 3) == Plan(("a",), wait=False)
    assert plan([r("a", 10, 1, busy=True)], 900 * MB, 300 * MB, 3) == Plan((), wait=True)


# --- the memory estimate -----------------------------------------------------------------------


def test_the_estimate_is_the_weights_and_the_kv_cache_the_context_needs() -> None:
    path = default_model_path()
    meta = gguf_metadata(path)
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 30
    # SmolLM2-135M: 30 layers x 3 KV heads x (64 + 64) dims x 2 bytes per token, as llama.cpp
    # reports its cache ("KV self size = 90.00 MiB" at 4096 tokens).
    assert kv_cache_bytes(meta, 4096) == 90 * 2**20
    assert estimate_bytes(path, 512) == path.stat().st_size + 30 * 512 * 3 * 128 * 2
    assert estimate_bytes(Path("/nonexistent.gguf"), 512) == 0


def test_the_budget_comes_from_the_settings() -> None:
    residency = Residency.for_settings(ModelSettings(memory_budget_mb=150, max_loaded=2))
    assert (residency.budget, residency.max_loaded) == (150 * MB, 2)
    auto = Residency.for_settings(ModelSettings())
    assert auto.max_loaded == 3 and auto.budget > 0


# --- the residency and keep_alive on the real threaded backend ---------------------------------


class Trivial(ThreadedBackend[object]):
    """A model that loads at once and answers "ok" after `delay` seconds."""

    name = "trivial"
    delay = 0.0
    loads = 0

    def load_blocking(self) -> object:
        self.loads += 1
        return object()

    def generate_blocking(self, handle: object, request: GenerationRequest, emit: TokenSink) -> Generation:
        time.sleep(self.delay)
        return Generation(text="ok")


def say(keep: float | None = None) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": "hi"}], keep_alive=keep)


def residency_of(*backends: Trivial, budget_mb: int, sizes_mb: dict[str, int]) -> Residency:
    residency = Residency(budget_mb * MB, 3, lambda key: sizes_mb[key] * MB)
    for backend in backends:
        backend._admission = residency
        residency.add(backend)
    return residency


async def test_loading_a_model_unloads_the_least_recently_used_one() -> None:
    a, b, c = (
        Trivial("a", idle_unload_s=300),
        Trivial("b", idle_unload_s=300),
        Trivial("c", idle_unload_s=300),
    )
    residency_of(a, b, c, budget_mb=250, sizes_mb={"a": 100, "b": 100, "c": 100})
    await a.generate(say())
    await b.generate(say())
    await a.generate(say())  # a is used again: b is now the least recently used
    await c.generate(say())
    assert (a.loaded, b.loaded, c.loaded) == (True, False, True)
    for backend in (a, b, c):
        await backend.close()


async def test_a_load_waits_for_a_busy_model_instead_of_cutting_it_off() -> None:
    a, b = Trivial("a", idle_unload_s=300), Trivial("b", idle_unload_s=300)
    a.delay = 0.3
    residency_of(a, b, budget_mb=150, sizes_mb={"a": 100, "b": 100})
    await a.generate(say())  # loaded, then generating again below
    running = asyncio.create_task(a.generate(say()))
    await asyncio.sleep(0.05)
    assert a.busy
    generation = await b.generate(say())
    assert running.done() and (await running).text == "ok"  # a finished its answer first
    assert generation.text == "ok" and b.loaded and not a.loaded
    for backend in (a, b):
        await backend.close()


async def test_keep_alive_zero_unloads_before_the_answer_returns() -> None:
    backend = Trivial("m", idle_unload_s=300)
    await backend.generate(say(0))
    assert not backend.loaded and backend.unloads_at is None
    await backend.close()


async def test_keep_alive_sets_when_the_model_unloads_and_negative_keeps_it() -> None:
    backend = Trivial("m", idle_unload_s=300)
    await backend.generate(say(600))
    assert backend.unloads_at == pytest.approx(time.time() + 600, abs=5)
    await backend.generate(say(-1))
    assert backend.loaded and backend.unloads_at is None  # forever
    await backend.generate(say())  # no keep_alive: the setting's 300 s again, as Ollama's default
    assert backend.unloads_at == pytest.approx(time.time() + 300, abs=5)
    await backend.generate(say(0.2))
    assert backend.loaded
    for _ in range(100):  # the timer fires after 0.2 s; a busy machine may take longer to unload
        await asyncio.sleep(0.05)
        if not backend.loaded:
            break
    assert not backend.loaded
    await backend.close()


# --- keep_alive as requests write it -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("30s", 30.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("0", 0.0),
        (0, 0.0),
        (90, 90.0),
        (2.5, 2.5),
        ("120", 120.0),
        (-1, -1.0),
        ("-5m", -1.0),
        (None, None),
        # Go's time.ParseDuration, which Ollama reads keep_alive with, and its smaller units.
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("2us", 2e-6),
        ("3\u00b5s", 3e-6),
        ("+5m", 300.0),
    ],
)
def test_keep_alive_reads_ollamas_forms(value: object, seconds: float | None) -> None:
    assert keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["-0", "-0s", "-0m0s", -0.0, "-0.0"])
def test_a_negative_zero_keep_alive_is_refused(value: object) -> None:
    """Neither "unload at once" (0) nor "keep loaded" (negative): it was kept as -0.0, a zero that
    reads as negative once written out and read back (issue 20, item 16)."""
    with pytest.raises(MalformedRequest, match="negative zero"):
        keep_alive(value)


def test_a_unit_given_twice_is_refused() -> None:
    """Go adds "5m5m" up to 10m; here it is a typo, refused (issue 20, item 16)."""
    with pytest.raises(MalformedRequest, match="keep_alive must be"):
        keep_alive("5m5m")


@pytest.mark.parametrize(
    "value", ["", "soon", "5x", "m", "5m3", "nan", "inf", "-+5m", "--5m", True, [], {}, 1e12, 10**400]
)
def test_a_bad_keep_alive_is_refused_naming_it(value: object) -> None:
    with pytest.raises(MalformedRequest, match="keep_alive must be"):
        keep_alive(value)


def test_a_turn_carries_its_keep_alive() -> None:
    assert turn_request({"prompt": "hi", "keep_alive": "10m"}).keep_alive == 600.0
    assert turn_request({"prompt": "hi"}).keep_alive is None
