"""Several sequences generated at once on one llama.cpp context: continuous batching.

`[model] parallel = N` gives the model one context with a KV cache sized for N sequences (N x
`[model] context`, each sequence its `context`, as one serial turn had) and one thread, the
engine's, that owns it. Each step that thread puts every active sequence's next token (and its
n-gram draft, ngram.py), and as much of the waiting prompts as the batch holds, into ONE
`llama_decode`, then samples each sequence that has logits (sampling.py, in C), hands its text
to the generation that waits for it, and goes on; a sequence that ends frees its place at once
and the next prompt joins the running batch at the next step. A decode step over 4 sequences
costs far less than 4 steps over one (the weights are read once for all: SmolLM2-135M on 2 cores,
24.9 ms against 4 x 10.7), which is where 4 clients at once get more tokens a second than one.
Drafts are weighed against what a row costs (ngram.py).

Each of the N sequence slots keeps the tokens its KV cache holds after its generation ends. A new
prompt goes to the free slot that shares the longest prefix with it (else the one least recently
used), and only the rest is evaluated: a conversation's next turn, a resumed turn, or another turn
with the same tool instructions starts where the cache already is (as llama-server's slots do).
A prompt that starts with a prefix saved on disk (saved_state.py: a parked turn's, kept by
`save`), longer than any slot shares, has that state read on its own thread and restored into
its slot first (`llama_state_seq_set_data`); a state llama.cpp refuses is a full prefill. A
resumption evaluated whole stops a batch where such a prefix would end (`split_at`), so either way
its cache holds the same numbers (llama.cpp's sums depend on how a prompt is cut into batches).

Generations call `submit` and read the job's text through `completion` (batch_job.py) on their
own threads; only the engine's thread touches the context.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import structlog

from waystation.adapters.models.batch_job import CLOSE, Finished, Job, arrivals
from waystation.adapters.models.ngram import CPU_ROW_SHARE, MAX_DRAFT, Drafter, break_even
from waystation.adapters.models.sampling import TOP_P, SequenceSampler, StepLogits
from waystation.adapters.models.saved_state import SavedStates, common_prefix, copy_out, restore_into

log = structlog.get_logger(__name__)


class BatchEngine:
    """The context, its sequence slots, and the thread that decodes them all."""

    def __init__(
        self,
        llm: Any,
        parallel: int,
        context: int,
        speculative: bool = True,
        row_share: float = CPU_ROW_SHARE,
    ) -> None:
        """Take over `llm` (a llama_cpp.Llama): its own single-sequence context is freed first
        (never two KV caches at once) and replaced by the engine's, which only this thread uses."""
        import llama_cpp
        from llama_cpp import _internals

        self._lib = llama_cpp
        self.parallel = parallel
        self.context = context
        self.speculative = speculative  # greedy sequences draft from their own n-grams (ngram.py)
        self.drafted = self.accepted = 0  # draft tokens evaluated, and kept
        self.row_share = row_share  # what a batch row costs, in shares of a one-row step (ngram.py)
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_seq_max = parallel
        params.n_ctx = context * parallel
        # A stream of its own per sequence: a sequence's attention never runs over the others'
        # cells (as llama-server's slots). Its numbers are those it gets decoded alone, up to
        # how llama.cpp splits a lone token's attention among threads (ngram.py says when).
        params.kv_unified = False
        llm._ctx.close()
        self._context: Any = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        llm._ctx = self._context
        self.ctx = self._context.ctx
        self._memory = llama_cpp.llama_get_memory(self.ctx)
        self._vocab = llm._model.vocab
        self._n_vocab = llm.n_vocab()
        self.batch_size = params.n_batch
        self._batch = llama_cpp.llama_batch_init(self.batch_size, 0, 1)
        self._slots: list[list[int]] = [[] for _ in range(parallel)]  # what each slot's KV holds
        self._free = set(range(parallel))
        self._started = [0] * parallel  # when each slot was last given a job (a count of starts)
        self._starts = 0
        self._tokens: dict[int, tuple[bytes, bool]] = {}  # a token's text, and whether it ends
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.states: SavedStates | None = None  # saved prefixes on disk ([model] saved_state_mb)
        self.restored = 0  # prompts started from one of them
        self._saves: set[Job] = set()  # `save` jobs not finished yet
        # What a saved state depends on besides the model file (saved_state.py keys files by it).
        self.state_settings = {
            "context": context,
            "type_k": int(params.type_k),
            "type_v": int(params.type_v),
            "flash_attn": int(params.flash_attn_type),
            "kv_unified": bool(params.kv_unified),
            "llama_cpp": llama_cpp.__version__,
        }
        self._thread = threading.Thread(target=self._run, name="waystation-batch", daemon=True)
        self._thread.start()

    # --- on the generations' threads ----------------------------------------------------------

    def submit(
        self, prompt: Sequence[int], max_tokens: int, temperature: float, seed: int,
        grammar: Any = None, accepted: Sequence[int] = (), *,
        top_p: float = TOP_P, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
        split_at: int = 0,
    ) -> Job:  # fmt: skip
        """Start a sequence; read its pieces from the job. The penalties look back over the
        prompt's last tokens too, as llama-server's do (sampling.py). `split_at`: where the
        prompt's first part ends, evaluated in batches of its own (a state saved of that part
        holds the same numbers: resume_state.py)."""
        sampler = SequenceSampler(
            self._lib, self._vocab, self._n_vocab, temperature, seed, grammar, accepted,
            top_p=top_p, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            history=prompt,
        )  # fmt: skip
        job = Job(list(prompt), max_tokens, sampler, split_at=split_at)
        if self.speculative and temperature <= 0:  # greedy only (ngram.py says why)
            job.drafter = Drafter()
            job.drafter.extend(job.prompt)
        if self.states is not None:  # (the slots read as they are now: a guess, checked in _start)
            entry = self.states.longest(job.prompt, max(common_prefix(s, job.prompt) for s in self._slots))
            job.restore = self.states.read(entry, job.prompt) if entry is not None else None
        self._inbox.put(job)
        return job

    def save(self, tokens: Sequence[int]) -> Job:
        """Evaluate `tokens` in a sequence slot (what a slot holds of them is kept) and hand back
        the sequence's state (`job.state`, set before its Finished)."""
        job = Job(list(tokens), 0, None)
        self._saves.add(job)
        self._inbox.put(job)
        return job

    def cancel_saves(self) -> None:
        """End the `save` jobs under way (the agent is stopping: it does not wait for a cache)."""
        for job in list(self._saves):
            job.cancel()

    def close(self) -> None:
        """Stop the thread (ending any sequence still running) and free the context."""
        self._inbox.put(CLOSE)
        self._thread.join()
        self._lib.llama_batch_free(self._batch)
        self._context.close()

    # --- on the engine's thread ---------------------------------------------------------------

    def _run(self) -> None:
        active: list[Job] = []
        waiting: list[Job] = []
        while True:
            arrived, closing = arrivals(self._inbox, block=not active and not waiting)
            waiting.extend(arrived)
            if closing:
                for job in active + waiting:
                    self._finish(job, active, Finished("cancelled"))
                return
            for job in [j for j in waiting if j.cancelled]:
                waiting.remove(job)
                self._finish(job, active, Finished("cancelled"))
            while waiting and self._free:
                job = waiting.pop(0)
                self._start(job)
                active.append(job)
            for job in [j for j in active if j.cancelled]:
                self._finish(job, active, Finished("cancelled"))
            if not active:
                continue
            try:
                self._step(active)
            except Exception as exc:  # a failure of this step ends its sequences, not the engine
                log.exception("a batch step failed", sequences=len(active))
                for job in list(active):
                    self._lib.llama_memory_seq_rm(self._memory, job.slot, -1, -1)
                    self._slots[job.slot] = []
                    self._finish(job, active, Finished("stop", f"{type(exc).__name__}: {exc}"))

    def _start(self, job: Job) -> None:
        """Give the job the free slot whose cache shares the longest prefix with its prompt."""

        def shared(slot: int) -> int:
            return common_prefix(self._slots[slot], job.prompt)

        slot = max(self._free, key=lambda s: (shared(s), -self._started[s]))
        restore, job.restore = job.restore, None
        if restore is not None and restore.shared > shared(slot):  # into the least recently used
            slot = min(self._free, key=lambda s: self._started[s])
            restored = restore_into(self._lib, self.ctx, self._memory, slot, restore.blob)
            self._slots[slot] = list(restore.tokens) if restored else []
            self.restored += restored
            if not restored and self.states is not None:
                self.states.drop(restore.tokens, "llama.cpp refused it")
            job.restored = shared(slot)
        self._free.discard(slot)
        self._starts += 1
        self._started[slot] = self._starts
        keep = max(0, min(shared(slot), len(job.prompt) - 1))  # the last prompt token gives the logits
        if not self._lib.llama_memory_seq_rm(self._memory, slot, keep, -1):
            keep = 0  # a cache that cannot drop a tail (recurrent models): start afresh
            self._lib.llama_memory_seq_rm(self._memory, slot, -1, -1)
        self._slots[slot] = self._slots[slot][:keep]
        job.slot, job.pos, job.reused = slot, keep, keep
        job.pending = job.prompt[keep:]

    def _step(self, active: list[Job]) -> None:
        """One llama_decode over every active sequence (each one's next token, and its draft),
        then the tokens sampled for each that has logits."""
        batch, n = self._batch, 0
        outputs: list[int] = []  # the batch rows that give logits
        decoding = sum(1 for job in active if job.last is not None)
        needed = break_even(self.row_share, decoding)  # of its guesses, to draft (alone only: ngram.py)
        # In sequence order: llama.cpp splits a batch whose sequences' KV streams are not in
        # order into several decodes (each reading the weights again): 25-40 % slower a step.
        in_order = sorted(active, key=lambda job: job.slot)
        for job in in_order:
            job.row, job.draft = -1, []
            if job.last is None or n >= self.batch_size:  # (more sequences than `batch`: next step)
                continue
            decoding -= 1  # drafts leave a row for each sequence after this one
            room = (
                min(self.batch_size - n - decoding, job.max_tokens - job.generated, self.context - job.pos)
                - 1
            )
            job.draft = job.drafter.draft(min(MAX_DRAFT, room), needed) if job.drafter is not None else []
            for i, token in enumerate([job.last, *job.draft]):
                self._add(batch, n + i, token, job.pos + i, job.slot, logits=True)
                outputs.append(n + i)
            job.row, n = n, n + 1 + len(job.draft)
        for job in in_order:  # prompts fill what is left of the batch
            if not job.pending or n >= self.batch_size:
                continue
            room = self.batch_size - n
            if job.pos < job.split_at:  # the first part ends a batch of its own
                room = min(room, job.split_at - job.pos)
            chunk, job.pending = job.pending[:room], job.pending[room:]
            for i, token in enumerate(chunk):
                done = not job.pending and i == len(chunk) - 1 and job.sampler is not None
                self._add(batch, n, token, job.pos + i, job.slot, logits=done)
                if done:
                    job.row = n
                    outputs.append(n)
                n += 1
            self._slots[job.slot].extend(chunk)
            job.pos += len(chunk)
        batch.n_tokens = n
        status = self._lib.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        for job in [j for j in active if j.sampler is None and not j.pending]:  # a save's prompt is in
            job.state = copy_out(self._lib, self.ctx, job.slot)
            self._finish(job, active, Finished("stop"))
        sampling = [j for j in active if j.row >= 0]
        if not sampling:
            return
        step = StepLogits(self._lib, self.ctx, outputs, self._n_vocab)
        for job in sampling:
            if job.last is None:  # its prompt's last token: the first token of the reply
                self._sampled(job, _sampler(job).sample(self.ctx, job.row, step), active)
            else:
                self._verified(job, active, step)

    def _verified(self, job: Job, active: list[Job], step: StepLogits) -> None:
        """Sample a decoding sequence's rows in turn: its next token, then, while each token it
        picks is the draft's, the one after it. Cells of draft tokens not kept leave the cache.
        Every row sampled gives a token the sequence keeps (the first one that is not the draft's
        ends the rows), so its sampler's penalties take in each kept token once, no other."""
        assert job.last is not None  # a decoding sequence
        evaluated, draft, start, slot = [job.last, *job.draft], job.draft, job.pos, job.slot
        kept = 0
        for i in range(len(evaluated)):
            token = _sampler(job).sample(self.ctx, job.row + i, step)
            kept = i + 1
            job.pos = start + kept
            if not self._sampled(job, token, active) or i == len(draft) or token != draft[i]:
                break
        self._slots[slot].extend(evaluated[:kept])
        if kept < len(evaluated):
            self._lib.llama_memory_seq_rm(self._memory, slot, start + kept, -1)
        if draft and job.drafter is not None:
            job.drafter.scored(len(draft), kept - 1)
            self.drafted += len(draft)
            self.accepted += kept - 1

    def _sampled(self, job: Job, token: int, active: list[Job]) -> bool:
        """Take the token the sequence picked; whether it goes on (not ended by it)."""
        job.generated += 1
        if job.drafter is not None:
            job.drafter.extend([token])
        piece, end = self._token(token)
        if end:
            self._finish(job, active, Finished("stop"))
            return False
        text = job.text.decode(piece)
        if text:
            job.hand(text, time.monotonic())
        if job.generated >= job.max_tokens or job.pos >= self.context:
            self._finish(job, active, Finished("length"))
            return False
        job.last = token
        return True

    def _finish(self, job: Job, active: list[Job], finished: Finished) -> None:
        job.end(finished)
        if job.sampler is not None:
            job.sampler.close()
        self._saves.discard(job)
        if job in active:
            active.remove(job)
        if job.slot >= 0:
            self._free.add(job.slot)
            job.slot = -1

    def _token(self, token: int) -> tuple[bytes, bool]:
        """A token's text and whether it ends a generation, asked of llama.cpp once a token."""
        known = self._tokens.get(token)
        if known is None:
            buf = ctypes.create_string_buffer(64)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            known = self._tokens[token] = (
                buf.raw[: max(0, n)],
                bool(self._lib.llama_vocab_is_eog(self._vocab, token)),
            )
        return known

    @staticmethod
    def _add(batch: Any, i: int, token: int, pos: int, seq: int, *, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    @property
    def in_use(self) -> int:
        """Sequences generating now."""
        return self.parallel - len(self._free)


def _sampler(job: Job) -> SequenceSampler:
    """The sampler of a job that generates (a `save` job has none, and never gets logits)."""
    assert job.sampler is not None
    return job.sampler
