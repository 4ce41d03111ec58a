"""Several MLX sequences generated at once: continuous batching through mlx-lm's BatchGenerator.

`[model] parallel = N` (N > 0) gives a loaded MLX model one BatchGenerator and one thread, the
engine's, that alone drives it (MLX is not driven from several threads at once). Each step that
thread decodes one token for every running sequence in one forward pass (the weights are read
once for all of them) and hands each sequence's text to the generation that waits for it; a
sequence that ends, or that its generation gave up, leaves the batch at once, and a waiting
prompt joins at the next step. Each sequence keeps its own sampler (temperature, top_p), its
penalties (logits processors), and its max_tokens; EOS ends it.

A seeded sampled request runs alone: mlx-lm's samplers draw from MLX's one global random state,
so a sequence cannot have a stream of its own beside others. It waits for the batch to empty,
seeds the state, and the next prompts wait for it to end (a seed then gives the same reply
whichever requests came at the same time).

Generations call `submit` and read the job's text through batch_job's `completion`, as the
llama.cpp engine's (batching.py) do; the job is batch_job's Job, its engine-side fields unused.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from waystation.adapters.models.base import GenerationRequest
from waystation.adapters.models.batch_job import CLOSE, Finished, Job, arrivals
from waystation.adapters.models.sampling import PENALTY_LAST_N

log = structlog.get_logger(__name__)


def batch_generator_class() -> Any | None:
    """mlx-lm's BatchGenerator, or None where this mlx-lm has none (then MLX is serial)."""
    try:
        from mlx_lm.generate import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
            BatchGenerator,
        )
    except ImportError:
        return None
    return BatchGenerator


def batchable(model: Any) -> bool:
    """Whether every cache layer of the model can join a batch (as mlx-lm's server asks)."""
    from mlx_lm.models.cache import make_prompt_cache  # type: ignore[import-untyped, import-not-found, unused-ignore]

    return all(hasattr(layer, "merge") for layer in make_prompt_cache(model))


def sampling(request: GenerationRequest) -> tuple[Callable[..., Any], list[Callable[..., Any]]]:
    """A request's sampler and logits processors, for one sequence (batched or not)."""
    from mlx_lm.sample_utils import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
        make_logits_processors,
        make_sampler,
    )

    # top_p only when asked (mlx-lm's 0 is none): its sampled answers are otherwise as before.
    sampler = make_sampler(temp=request.temperature, top_p=request.top_p or 0.0)
    # OpenAI's penalties as llama.cpp applies them: over the last 64 tokens, the prompt's too.
    penalties = make_logits_processors(
        frequency_penalty=request.frequency_penalty,
        frequency_context_size=PENALTY_LAST_N,
        presence_penalty=request.presence_penalty,
        presence_context_size=PENALTY_LAST_N,
    )
    return sampler, list(penalties)


def seed_random(seed: int) -> None:
    """Seed MLX's one global random state, which mlx-lm's samplers draw from, with OpenAI's
    `seed` (any integer, folded into MLX's 32 bits): batched or serial, the same reply."""
    import mlx.core as mx  # type: ignore[import-untyped, import-not-found, unused-ignore]

    mx.random.seed(seed % 2**32)


@dataclass(eq=False)
class _Sequence:
    """A submitted job and what the engine needs to start it and to read its tokens."""

    job: Job
    sampler: Callable[..., Any]
    processors: list[Callable[..., Any]]
    seed: int | None  # set: it runs alone (see the module's docstring)
    detokenizer: Any  # its own streaming detokenizer (mlx_lm.tokenizer_utils)
    uid: int = -1


class MlxBatchEngine:
    """One BatchGenerator over a loaded model, and the thread that drives it."""

    def __init__(self, model: Any, tokenizer: Any, parallel: int) -> None:
        generator_class = batch_generator_class()
        assert generator_class is not None, "check batch_generator_class() first"
        self.parallel = parallel
        self._tokenizer = tokenizer
        self._eos = set(tokenizer.eos_token_ids)
        self._generator: Any = generator_class(
            model,
            stop_tokens=[[token] for token in self._eos],
            completion_batch_size=parallel,
            prefill_batch_size=parallel,
        )
        self.running = 0  # sequences in the batch now (set by the engine's thread)
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="waystation-mlx-batch", daemon=True)
        self._thread.start()

    # --- on the generations' threads ----------------------------------------------------------

    def submit(self, prompt: Sequence[int], max_tokens: int, request: GenerationRequest) -> Job:
        """Start a sequence; read its pieces from the job (`completion`)."""
        sampler, processors = sampling(request)
        seed = request.seed if request.seed is not None and request.temperature > 0 else None
        job = Job(list(prompt), max_tokens, None)
        self._inbox.put(_Sequence(job, sampler, processors, seed, self._tokenizer.detokenizer))
        return job

    def close(self) -> None:
        """Stop the thread (ending any sequence still running) and let the generator go."""
        self._inbox.put(CLOSE)
        self._thread.join()
        self._generator.close()

    # --- on the engine's thread ---------------------------------------------------------------

    def _run(self) -> None:
        running: dict[int, _Sequence] = {}
        waiting: deque[_Sequence] = deque()
        while True:
            self.running = len(running)
            arrived, closing = arrivals(self._inbox, block=not running and not waiting)
            waiting.extend(arrived)
            if closing:
                for sequence in [*running.values(), *waiting]:
                    sequence.job.end(Finished("cancelled"))
                return
            for sequence in [s for s in waiting if s.job.cancelled]:
                waiting.remove(sequence)
                sequence.job.end(Finished("cancelled"))
            self._admit(waiting, running)
            gone = [uid for uid, s in running.items() if s.job.cancelled]
            if gone:  # the caller left, or a stop string ended it: out of the batch now
                self._generator.remove(gone)
                for uid in gone:
                    running.pop(uid).job.end(Finished("cancelled"))
            self.running = len(running)
            if not running:
                continue
            try:
                _, responses = self._generator.next()
            except Exception as exc:  # a failed step ends its sequences, not the engine
                log.exception("an MLX batch step failed", sequences=len(running))
                self._generator.remove(list(running))
                for sequence in running.values():
                    sequence.job.end(Finished("stop", f"{type(exc).__name__}: {exc}"))
                running.clear()
                continue
            now = time.monotonic()
            for response in responses:
                if self._took(running[response.uid], response, now):
                    del running[response.uid]

    def _admit(self, waiting: deque[_Sequence], running: dict[int, _Sequence]) -> None:
        """Start waiting prompts while there is room; a seeded one only into an empty batch,
        and nothing beside it."""
        alone = any(s.seed is not None for s in running.values())
        while waiting and len(running) < self.parallel and not alone:
            sequence = waiting[0]
            if sequence.seed is not None:
                if running:
                    return
                seed_random(sequence.seed)
                alone = True
            waiting.popleft()
            job = sequence.job
            (sequence.uid,) = self._generator.insert(
                [job.prompt],
                max_tokens=[job.max_tokens],
                samplers=[sequence.sampler],
                logits_processors=[sequence.processors],
            )
            running[sequence.uid] = sequence

    def _took(self, sequence: _Sequence, response: Any, now: float) -> bool:
        """Take a sequence's new token; whether it ended the sequence."""
        job, detokenizer = sequence.job, sequence.detokenizer
        if response.token not in self._eos:  # the stop token ends the reply, not part of it
            job.generated += 1
            detokenizer.add_token(response.token)
        if response.finish_reason is not None:
            detokenizer.finalize()
        if text := detokenizer.last_segment:
            job.hand(text, now)
        if response.finish_reason is None:
            return False
        job.end(Finished(response.finish_reason))
        return True
