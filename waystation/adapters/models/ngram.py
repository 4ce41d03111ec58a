"""Draftless speculation: guessing a sequence's next tokens from its own earlier tokens.

An answer that quotes a fetched page, a summary of tool results or a JSON value copied from the
prompt repeats runs of tokens the sequence has already seen. Where the last few tokens occurred
before, the tokens that followed them then are a likely continuation: a draft, with no draft model.
The batch engine evaluates the draft in the same decode step as the sequence's next token and keeps
the drafted tokens the model itself picks (batching.py): several tokens a step where the guess is
right. The reply is the greedy one without speculation token by token, but not always to the last
bit: llama.cpp's CPU flash attention evaluates a lone sequence's one token with the cache split
among the threads once 512 cells are in view (past 256 cached tokens), and several tokens of a
sequence a row at a time over the whole cache (ggml-cpu's ops.cpp, `use_split_kv_path`). The sums
differ (SmolLM2's logits by up to ~0.7-1.3), so at a near tie the two can part; with one thread
they agree exactly. The cells a draft's step writes carry its numbers on, and a later token
decoded alone can then part at a near tie too (picks 0.01-0.03 apart seen): taking a drafted row's
pick only when it led the runner-up by 1.5 or 3 logits (tried) kept no more replies whole and cost
the drafts' gain, so there is no such rule. Only attention summed in one order for any number of
rows (llama.cpp's kernels) would make the two identical.

A draft costs batch rows even when none of it is kept. A decode step costs a fixed part (reading
the weights, the graph, the threads' handover) and a part per row. Decoding alone, a kept drafted
token saves its sequence a later step, fixed part and row, so drafting pays when

    kept share x (per_row + fixed) > per_row,  i.e. kept share > per_row (in one-row steps)

Beside other sequences a kept token saves only its row: the steps go on for the others, and a
sequence that ends sooner frees a place that only a waiting request would take. Its drafts then
slow the whole batch for a gain of its own (4 streams of open-ended answers, whose loops this model's
guesses follow: 0.95 of llama-server's aggregate with drafts beside others, 1.01 without), so a
sequence drafts only while it decodes alone. On a CPU a row costs ~40 % of a one-row step
(SmolLM2-135M on 2 cores: 10.7 ms for 1 row, +4.3 ms a row; a larger model is bound by reading its
weights and its rows cost less of a step, not more): a lone sequence must keep 40 % of its drafts.
On a GPU a row is nearly free. The shares are fixed per device, not timed as the engine runs, so
that the same request gets the same drafts, and the same reply, on a busy machine as on an idle
one. So a sequence drafts only while its guesses are right often enough to pay for them. It knows
how often they are without drafting: when a guess is not sent as a draft, it is still checked
against the token the model picks next. So an open-ended answer, whose guesses are mostly wrong,
sends no drafts at all, and a sequence starts drafting as soon as it starts copying.
A sampled sequence does not draft: each of a draft's rows could be drawn in turn (one draw per kept
token, in the order without drafts: the same odds and seeded reply), but at temperature 0.8 copies
kept 46 % of their drafts here and decoded 8 % slower. The draft length starts at 2, doubles (up to
8) after a draft kept whole, and drops to one more than what was kept after a miss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MATCHES = (3, 2)  # the last tokens looked up in the sequence's history: 3, else 2
MAX_DRAFT = 8  # tokens drafted at most per step
FIRST_DRAFT = 2  # tokens drafted at most before a draft has been kept whole
# What a batch row costs, in shares of a one-row decode step (see above).
CPU_ROW_SHARE = 0.4
GPU_ROW_SHARE = 0.05
# How often a guess comes true: a running share (each guess weighs this much less than the one
# after it, ~10 guesses back), starting from one right guess in two.
FORGET = 0.9
PRIOR_RIGHT, PRIOR_GUESSES = 1.0, 2.0


@dataclass
class Drafter:
    """A sequence's history, indexed by its n-grams, and how often its guesses come true."""

    history: list[int] = field(default_factory=list)
    # Where each n-gram of the history ended last (its last token's index + 1).
    _seen: dict[tuple[int, ...], int] = field(default_factory=dict)
    right: float = PRIOR_RIGHT  # guesses whose first token was the model's pick (decayed)
    guesses: float = PRIOR_GUESSES
    length: int = FIRST_DRAFT  # the next draft's length at most
    _unsent: int | None = None  # the token guessed but not drafted: checked against the next one

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            if self._unsent is not None:
                self._judged(token == self._unsent)
                self._unsent = None
            self.history.append(token)
            end = len(self.history)
            for match in MATCHES:  # index the n-grams before this token: they now have a follower
                if end > match:
                    self._seen[tuple(self.history[end - 1 - match : end - 1])] = end - 1

    def draft(self, limit: int = MAX_DRAFT, needed: float = 0.0) -> list[int]:
        """The tokens that followed the last earlier occurrence of the history's last n-gram,
        if its guesses come true at least `needed` of the time (else none: the guess is only
        checked)."""
        if limit <= 0:
            return []
        at = next((self._seen[k] for m in MATCHES if (k := tuple(self.history[-m:])) in self._seen), None)
        if at is None:
            return []
        if self.rate < needed:
            self._unsent = self.history[at]
            return []
        return self.history[at : min(at + min(limit, self.length), len(self.history))]

    def scored(self, drafted: int, accepted: int) -> None:
        """A draft of `drafted` tokens, `accepted` of them kept."""
        self._judged(accepted > 0)
        self.length = min(MAX_DRAFT, 2 * self.length) if accepted == drafted else accepted + 1

    @property
    def rate(self) -> float:
        """How often its guesses come true lately."""
        return self.right / self.guesses

    def _judged(self, right: bool) -> None:
        self.right = FORGET * self.right + right
        self.guesses = FORGET * self.guesses + 1


def break_even(row_share: float, sequences: int) -> float:
    """The share of drafted tokens that must come true for drafting to pay, with `sequences`
    decoding in the step and a row costing `row_share` of a one-row step: beside others, none
    (see above; its guesses are still checked, so it drafts again as soon as it is alone)."""
    return row_share if sequences <= 1 else math.inf


def row_share(gpu_layers: int) -> float:
    """What a batch row costs where the model runs (`[model] gpu_layers`: 0 is the CPU)."""
    return CPU_ROW_SHARE if gpu_layers == 0 else GPU_ROW_SHARE
