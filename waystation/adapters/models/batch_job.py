"""A sequence of the batch engine as its generation sees it: the job, and the text read from it.

The generation's thread submits a job (batching.py) and reads its text through `completion`, as
llama-cpp-python's streamed completion gives it; the engine's thread fills the job's queue.
"""

from __future__ import annotations

import codecs
import queue
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from waystation.adapters.models.ngram import Drafter
from waystation.adapters.models.sampling import SequenceSampler
from waystation.adapters.models.saved_state import Found
from waystation.adapters.models.stop import StopStream
from waystation.adapters.models.token_relay import INTERVAL_S as HAND_S


@dataclass(frozen=True)
class Finished:
    """The last item of a job's pieces: why it ended, or the error that ended it."""

    reason: str  # stop | length | cancelled
    error: str | None = None


@dataclass(eq=False)
class Job:
    """One generation's sequence, from its prompt to its last token."""

    prompt: list[int]
    max_tokens: int
    sampler: SequenceSampler | None  # None: a `save` job, which evaluates its prompt only
    out: queue.SimpleQueue[str | Finished] = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False  # set by the generation's thread, read by the engine's
    reused: int = 0  # prompt tokens found in the slot's cache (not evaluated again)
    restore: Found | None = None  # a saved state to start from, read by `submit`
    split_at: int = 0  # its prompt is evaluated up to here first, in batches of its own (batching.py)
    restored: int = 0  # prompt tokens restored from it
    state: bytes | None = None  # a `save` job's result: the sequence's state after its prompt
    # The engine's own bookkeeping.
    slot: int = -1
    pending: list[int] = field(default_factory=list)  # prompt tokens not evaluated yet
    pos: int = 0  # the position of the next token evaluated
    last: int | None = None  # the token sampled last, evaluated at the next step
    generated: int = 0
    row: int = -1  # this step's first batch row whose logits are this sequence's
    drafter: Drafter | None = None  # its history for n-gram drafts (greedy, `speculative` on)
    draft: list[int] = field(default_factory=list)  # this step's drafted tokens
    text: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    held: list[str] = field(default_factory=list)  # reply text not handed to the generation yet
    handed_at: float = float("-inf")  # when text last went to `out` (time.monotonic)

    def cancel(self) -> None:
        self.cancelled = True

    def hand(self, text: str, now: float) -> None:
        """Give the reply's text to the generation's thread: at once after a pause (the first
        piece, what a reader waits for), else at most every HAND_S. Each hand-over wakes that
        thread and the event loop after it, which take the cores from llama.cpp's threads
        mid-decode: one a token cost a lone stream on 2 cores ~12 % of its speed."""
        self.held.append(text)
        if now - self.handed_at >= HAND_S:
            self.out.put("".join(self.held))
            self.held.clear()
            self.handed_at = now

    def end(self, finished: Finished) -> None:
        """Hand over what is left of the reply, then why it ended."""
        rest = "".join(self.held) + self.text.decode(b"", final=True)
        self.held.clear()
        if rest:
            self.out.put(rest)
        self.out.put(finished)


CLOSE = object()  # put in an engine's inbox by its close()


def arrivals(inbox: queue.SimpleQueue[Any], block: bool) -> tuple[list[Any], bool]:
    """What came into an engine's inbox (batching.py, mlx_batching.py): the first item waited for
    only when `block` (the engine has nothing else to do), then all that is there already; and
    whether `close` came among them (what came before it is still returned, to be ended)."""
    items: list[Any] = []
    try:
        item = inbox.get(block=block)
        while item is not CLOSE:
            items.append(item)
            item = inbox.get_nowait()
    except queue.Empty:
        return items, False
    return items, True


POLL_S = 0.1  # how often a generation waiting for its next piece looks whether it was cancelled


def completion(
    job: Job, stop: Sequence[str], stopping: Callable[[], bool]
) -> Iterator[tuple[str, str | None]]:
    """A job's (text, finish reason) chunks as llama-cpp-python's streamed completion gives them:
    text up to the first stop string, never including it (held back while it may begin one), the
    reason with the last chunk. The sequence is cancelled when `stopping()` says so, when a stop
    string ends it, or when the reader stops reading."""
    pieces: list[str] = []
    stream = StopStream(stop, pieces.append)
    try:
        while True:
            try:
                item = job.out.get(timeout=POLL_S)
            except queue.Empty:
                if stopping():
                    job.cancel()
                continue
            if isinstance(item, Finished):
                if item.error is not None:
                    raise RuntimeError(item.error)
                stream.finish()
                yield "".join(pieces), item.reason
                return
            stream.feed(item)
            if stream.stopped:
                job.cancel()
                yield "".join(pieces), "stop"
                return
            if pieces:
                yield "".join(pieces), None
                pieces.clear()
    finally:
        job.cancel()  # read no further: a sequence still running ends at its next step
