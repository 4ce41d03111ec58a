"""Picking a sequence's next token with llama.cpp's C sampler chain, the grammar asked lazily.

The batched engine (batching.py) samples every sequence itself instead of through llama-cpp-python's
per-token Python path: `llama_sampler_sample` builds the candidates from the logits, runs the chain
and picks, all in C. The chain is llama-server's own order and defaults (common/sampling.cpp's
common_sampler_init): the penalties (OpenAI's frequency and presence penalties, over the last 64
tokens as llama-server's `repeat_last_n`, repeat penalty 1.0 as its default), top-k 40, top-p
(0.95 unless asked), min-p 0.05, temperature, then a seeded draw; temperature 0 is the greedy pick.

A grammar is not in the chain. As llama.cpp's own common sampler does, the chain picks first and
the grammar is asked about that one token; only when it refuses it does the grammar judge every
candidate, and the pick is made again among those it allows. For the greedy pick the token is the
same as with the grammar in the chain (the grammar only removes candidates, so an allowed best
stays the best), while a step costs two C calls instead of a pass over the whole vocabulary.

The penalties are the chain's only state: the tokens they look back over. As llama-server does
(server-context.cpp accepts the prompt into the sampler once it is evaluated, the grammar left
out), a sequence's history starts with its prompt's last tokens, and each token it keeps is
accepted once, after the grammar had its say: never a pick the grammar refused, never a draft
token the sequence did not keep (batching.py samples a draft's rows in turn and stops at the
first that differs). Without penalties the chain keeps no state, and picking as before costs no
more than it did.

The greedy pick is numpy's argmax over the step's logits, read once for every row of the step
(`StepLogits`): the same token as llama.cpp's greedy sampler (the highest logit, the lowest id
among equals) without building its 49,152 candidates for each row, a C call fewer per token.
With penalties it is the argmax of the penalized logits (llama.cpp's penalties sampler applied to
the row first).
"""

from __future__ import annotations

import ctypes
import math
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from waystation.adapters.models.base import GenerationRequest
from waystation.adapters.models.fast_grammar import TOKEN_DATA

# llama-cpp-python's create_completion defaults, which are llama-server's too.
TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05
PENALTY_LAST_N = 64  # llama-server's `repeat_last_n`: the tokens the penalties look back over
REPEAT_PENALTY = 1.0  # llama-server's `repeat_penalty` default (off): OpenAI asks for none
SHORTLIST = 64  # a greedy pick the grammar refused: the best candidates judged first


class StepLogits:
    """The logits of one decode step, one row for each batch row that asked for them, in batch
    order (as llama.cpp hands them back), read through one pointer; the greedy pick of every row
    at once, on first asking."""

    def __init__(self, lib: Any, ctx: Any, rows: Sequence[int], n_vocab: int) -> None:
        self._at = {row: k for k, row in enumerate(rows)}
        self._all = np.ctypeslib.as_array(lib.llama_get_logits(ctx), shape=(len(rows), n_vocab))
        self._best: Any = None

    def row(self, index: int) -> Any:
        """Batch row `index`'s logits (a view: valid until the next decode)."""
        return self._all[self._at[index]]

    def best(self, index: int) -> int:
        if self._best is None:
            self._best = self._all.argmax(axis=1)
        return int(self._best[self._at[index]])


class SequenceSampler:
    """One sequence's sampler: the C chain, its penalties if asked (a sampler of their own, applied
    first), and the grammar (llama_sampler_init_grammar) if any."""

    def __init__(
        self,
        lib: Any,
        vocab: Any,
        n_vocab: int,
        temperature: float,
        seed: int,
        grammar: Any = None,
        accepted: Sequence[int] = (),
        *,
        top_p: float = TOP_P,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        history: Sequence[int] = (),
    ) -> None:
        """`accepted`: the tokens a grammar resumed part-way has matched already; `history`: the
        sequence's tokens so far (its prompt), whose last ones the penalties start from."""
        self._lib = lib
        self._n_vocab = n_vocab
        self.greedy = temperature <= 0
        self.penalties: Any = None
        if frequency_penalty or presence_penalty:
            self.penalties = lib.llama_sampler_init_penalties(
                n_vocab, PENALTY_LAST_N, REPEAT_PENALTY, frequency_penalty, presence_penalty
            )
            # The tokens the penalties look back over, as they hold them: the only candidates
            # whose logits they change.
            self._window: deque[int] = deque(maxlen=PENALTY_LAST_N)
            for token in history[-PENALTY_LAST_N:]:
                self._accept(token)
            self._ids = np.arange(n_vocab, dtype=np.intc)
        self.chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if temperature <= 0:
            lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_greedy())
        else:
            for sampler in (
                lib.llama_sampler_init_top_k(TOP_K),
                lib.llama_sampler_init_top_p(top_p, 1),
                lib.llama_sampler_init_min_p(MIN_P, 1),
                lib.llama_sampler_init_temp(temperature),
                lib.llama_sampler_init_dist(seed),
            ):
                lib.llama_sampler_chain_add(self.chain, sampler)
        self.grammar = None
        if grammar is not None:
            self.grammar = lib.llama_sampler_init_grammar(
                vocab, grammar._grammar.encode(), grammar._root.encode()
            )
            for token in accepted:  # a grammar resumed part-way (fast_grammar.resumed)
                lib.llama_sampler_accept(self.grammar, token)
        self._one = lib.llama_token_data()
        self._one_array = lib.llama_token_data_array(
            data=ctypes.pointer(self._one), size=1, selected=-1, sorted=False
        )

    def sample(self, ctx: Any, index: int, step: StepLogits) -> int:
        """The next token from the logits at batch row `index`, accepted by the grammar and the
        penalties: the sequence keeps it."""
        lib = self._lib
        penalized = None  # the row's logits as the penalties leave them, when asked for
        if self.penalties is not None:
            penalized = self._penalized(step.row(index))
            token = int(np.argmax(penalized)) if self.greedy else self._chosen(penalized)
        elif self.greedy:
            token = step.best(index)
        else:
            token = int(lib.llama_sampler_sample(self.chain, ctx, index))
        if self.grammar is not None:
            self._one.id, self._one.logit, self._one.p = token, 0.0, 0.0
            lib.llama_sampler_apply(self.grammar, ctypes.byref(self._one_array))
            if math.isinf(self._one.logit):  # refused: the pick again, among what the grammar allows
                token = self._pick_allowed(step.row(index) if penalized is None else penalized)
            lib.llama_sampler_accept(self.grammar, token)
        if self.penalties is not None:
            self._accept(token)
        return token

    def _accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self.penalties, token)
        self._window.append(token)

    def _penalized(self, logits: Any) -> Any:
        """The row's logits after llama.cpp's penalties sampler, in id order (a copy).

        Only the tokens in its window can change, so only those are handed to it: the logits
        it gives over the whole vocabulary (as llama-server applies it: 0.3 ms a token here, a
        hash lookup per candidate), for a few dozen candidates."""
        scores = logits.copy()
        if self._window:
            seen = np.array(list(set(self._window)), dtype=np.intc)
            data = self._candidates(seen, scores[seen])
            self._lib.llama_sampler_apply(self.penalties, ctypes.byref(self._array(data)))
            scores[data["id"]] = data["logit"]
        return scores

    def _chosen(self, logits: Any) -> int:
        """The chain's draw from logits in id order (the penalties already applied to them)."""
        data = self._candidates(self._ids, logits)
        array = self._array(data)
        self._lib.llama_sampler_apply(self.chain, ctypes.byref(array))
        return int(data["id"][array.selected])

    def _pick_allowed(self, logits: Any) -> int:
        """The chain's pick among the candidates the grammar allows.

        Greedy, the best allowed token is among the best SHORTLIST whenever any of them is
        allowed (every other token has a lower logit), so the grammar judges those first: a few
        dozen candidates instead of the whole vocabulary, the same token."""
        if self.greedy:
            best = np.sort(
                np.argpartition(logits, -SHORTLIST)[-SHORTLIST:]
            )  # in id order, as greedy breaks ties
            data = self._judged(best.astype(np.intc), logits[best])
            allowed = data["logit"] != -np.inf
            if allowed.any():
                return int(data["id"][np.argmax(np.where(allowed, data["logit"], -np.inf))])
        data = self._judged(np.arange(self._n_vocab, dtype=np.intc), logits)
        array = self._array(data)
        self._lib.llama_sampler_apply(self.chain, ctypes.byref(array))
        return int(data["id"][array.selected])

    def _judged(self, ids: Any, logits: Any) -> Any:
        """The candidates as llama.cpp's token data, their logits -inf where the grammar refuses them."""
        data = self._candidates(ids, logits)
        self._lib.llama_sampler_apply(self.grammar, ctypes.byref(self._array(data)))
        return data

    @staticmethod
    def _candidates(ids: Any, logits: Any) -> Any:
        data = np.empty(len(ids), dtype=TOKEN_DATA)
        data["id"], data["logit"], data["p"] = ids, logits, 0.0
        return data

    def _array(self, data: Any) -> Any:
        lib = self._lib
        pointer = data.ctypes.data_as(ctypes.POINTER(lib.llama_token_data))
        return lib.llama_token_data_array(data=pointer, size=len(data), selected=-1, sorted=False)

    def close(self) -> None:
        self._lib.llama_sampler_free(self.chain)
        if self.penalties is not None:
            self._lib.llama_sampler_free(self.penalties)
        if self.grammar is not None:
            self._lib.llama_sampler_free(self.grammar)


def sampler_options(request: GenerationRequest) -> dict[str, float]:
    """What a request asks of the chain beyond temperature and seed, by llama-cpp-python's names."""
    return {
        "top_p": TOP_P if request.top_p is None else request.top_p,
        "frequency_penalty": request.frequency_penalty,
        "presence_penalty": request.presence_penalty,
    }


SEED_RANGE = 2**32 - 1  # 0xFFFFFFFF is LLAMA_DEFAULT_SEED, which asks llama.cpp for a random seed


def sampler_seed(requested: int | None) -> int:
    """A sampler's seed: the one asked for (OpenAI's `seed`, any integer) folded into llama.cpp's
    32 bits short of "random", or a random one."""
    if requested is None:
        return int.from_bytes(os.urandom(4), "little") % SEED_RANGE
    return requested % SEED_RANGE
