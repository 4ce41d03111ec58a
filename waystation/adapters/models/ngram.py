"""Draftless speculation: guessing a sequence's next tokens from its own earlier tokens.

An answer that quotes a fetched page, a summary of tool results or a JSON value copied from the
prompt repeats runs of tokens the sequence has already seen. Where the last few tokens occurred
before, the tokens that followed them then are a likely continuation: a draft, with no draft
model. The batch engine evaluates the draft in the same decode step as the sequence's next token
and keeps the drafted tokens the model itself picks (batching.py), so a greedy reply is the one it
gives without speculation, several tokens a step where the guess is right.

A draft costs batch rows even when none of it is kept (on a CPU nearly as much as a token each),
so a sequence drafts little until its drafts prove right: the draft length starts at 2, doubles
(up to 8) after a draft kept whole, and drops to one more than what was kept after a miss; a
sequence that keeps too few of its drafted tokens stops drafting (`Drafter.pays`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MATCH = 3  # the last tokens looked up in the sequence's history
MAX_DRAFT = 8  # tokens drafted at most per step
FIRST_DRAFT = 2  # tokens drafted at most before a draft has been kept whole
# After this many drafted tokens, a sequence that kept fewer than this share of them stops drafting.
TRIAL_TOKENS = 32
MIN_ACCEPTED = 0.25


@dataclass
class Drafter:
    """A sequence's history, indexed by its n-grams, and what its drafts have scored."""

    history: list[int] = field(default_factory=list)
    # Where each n-gram of the history ended last (its last token's index + 1).
    _seen: dict[tuple[int, ...], int] = field(default_factory=dict)
    drafted: int = 0
    accepted: int = 0
    length: int = FIRST_DRAFT  # the next draft's length at most

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self.history.append(token)
            end = len(self.history)
            if end > MATCH:  # index the n-gram before this token: it now has a follower
                self._seen[tuple(self.history[end - 1 - MATCH : end - 1])] = end - 1

    def draft(self, limit: int = MAX_DRAFT) -> list[int]:
        """The tokens that followed the last earlier occurrence of the history's last n-gram."""
        if len(self.history) < MATCH or limit <= 0 or not self.pays():
            return []
        at = self._seen.get(tuple(self.history[-MATCH:]))
        if at is None:
            return []
        return self.history[at : min(at + min(limit, self.length), len(self.history))]

    def scored(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted
        self.length = min(MAX_DRAFT, 2 * self.length) if accepted == drafted else accepted + 1

    def pays(self) -> bool:
        return self.drafted < TRIAL_TOKENS or self.accepted >= MIN_ACCEPTED * self.drafted
