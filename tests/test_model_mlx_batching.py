"""MLX with `[model] parallel`: several generations at once through mlx-lm's BatchGenerator
(mlx_batching.py), on the converted SmolLM2 that test_model_mlx.py builds. MLX on this CPU takes
~0.2 s a token: the replies are 8-16 tokens."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from test_model_mlx import gguf_path, mlx_dir  # noqa: F401 (the session fixtures)

from waystation.adapters.models.base import GenerationRequest
from waystation.adapters.models.mlx import MlxBackend
from waystation.adapters.routes.local import LocalRoute
from waystation.config import ModelSettings

PROMPTS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Say hi."}],
    [{"role": "user", "content": "Write a short poem about trains."}],
]


async def test_batched_greedy_replies_are_the_serial_ones(mlx_dir: Path) -> None:  # noqa: F811
    serial = MlxBackend(str(mlx_dir), parallel=0)
    try:
        expected = [(await serial.generate(GenerationRequest(p, max_tokens=8))).text for p in PROMPTS]
    finally:
        await serial.close()
    batched = MlxBackend(str(mlx_dir), parallel=4)
    streams: list[list[str]] = [[] for _ in PROMPTS]
    try:
        got = await asyncio.gather(
            *(
                batched.generate(GenerationRequest(p, max_tokens=8), s.append)
                for p, s in zip(PROMPTS, streams, strict=True)
            )
        )
        assert batched._handle is not None and batched._handle.engine is not None
    finally:
        await batched.close()
    assert [g.text for g in got] == expected
    assert ["".join(s) for s in streams] == expected, "each stream gets its own text"
    assert len(set(expected)) == len(expected)
    assert all(0 < g.completion_tokens <= 8 for g in got)


async def test_a_cancelled_generation_frees_its_place(mlx_dir: Path) -> None:  # noqa: F811
    """One place: a long reply given up leaves the batch at once, and the next one runs."""
    backend = MlxBackend(str(mlx_dir), parallel=1)
    try:
        started = asyncio.Event()
        long = asyncio.ensure_future(
            backend.generate(GenerationRequest(PROMPTS[3], max_tokens=400), lambda _: started.set())
        )
        await asyncio.wait_for(started.wait(), 30)
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        engine = backend._handle.engine if backend._handle is not None else None
        assert engine is not None
        for _ in range(50):  # out of the batch within a step or two (one is ~0.2 s)
            if engine.running == 0:
                break
            await asyncio.sleep(0.05)
        assert engine.running == 0
        # 400 tokens take ~80 s here: the next reply comes long before that
        after = await asyncio.wait_for(backend.generate(GenerationRequest(PROMPTS[0], max_tokens=6)), 15)
        assert after.text
        assert backend.parallel == 1
    finally:
        await backend.close()


async def test_a_fifth_waits_then_runs_and_models_ps_shows_sequences(mlx_dir: Path) -> None:  # noqa: F811
    settings = ModelSettings(path=str(mlx_dir), backend="mlx")  # parallel: 4, the default
    route = LocalRoute(settings)
    _, backend = route.backend()
    stages: list[list[str]] = [[] for _ in range(5)]
    seen: list[tuple[int, int, int]] = []

    def request(i: int) -> GenerationRequest:
        def stage(name: str, _ahead: int) -> None:
            stages[i].append(name)

        return GenerationRequest(PROMPTS[i % 4], max_tokens=6, on_stage=stage)

    async def watch() -> None:
        while True:
            seen.extend((row["sequences"], row["parallel"], row["waiting"]) for row in route.loaded())
            await asyncio.sleep(0.2)

    watcher = asyncio.ensure_future(watch())
    try:
        got = await asyncio.gather(*(backend.generate(request(i)) for i in range(5)))
    finally:
        watcher.cancel()
        await backend.close()
    assert all(g.text for g in got)
    assert "waiting" in stages[4] and "generating" in stages[4]
    assert not any("waiting" in s for s in stages[:4])
    assert (4, 4, 1) in seen, "`models ps` shows 4 of 4 sequences in use, and one waiting"
    assert all(p == 4 and 0 <= sequences <= 4 and waiting <= 1 for sequences, p, waiting in seen)


async def test_penalties_and_top_p_reach_the_model_batched(mlx_dir: Path) -> None:  # noqa: F811
    """The penalty test of test_model_mlx.py, both requests in one batch."""
    poem = PROMPTS[3]  # "endless" twice
    backend = MlxBackend(str(mlx_dir), parallel=4)
    try:
        plain, penalized = await asyncio.gather(
            backend.generate(GenerationRequest(poem, max_tokens=16)),
            backend.generate(GenerationRequest(poem, max_tokens=16, frequency_penalty=2.0, top_p=0.5)),
        )
        assert backend._handle is not None and backend._handle.engine is not None
    finally:
        await backend.close()

    def repeated(text: str) -> int:
        words = text.split()
        return len(words) - len(set(words))

    assert repeated(penalized.text) < repeated(plain.text)
