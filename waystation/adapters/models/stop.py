"""Stop sequences (OpenAI's `stop`): a reply ends before the first of them, which it never contains.

Where nothing else ends a reply at them (MLX, the scripted double, a seat CLI's whole answer, an
OpenAI reasoning model that refuses `stop`), these cut it; llama.cpp and the other providers'
APIs honour the strings themselves. A streamed reply must not show a stop
string either, and one can span pieces ("Obser" + "vation:"), so the stream holds back the tail
that could still begin one, and lets it go once it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

from waystation.adapters.models.base import TokenSink


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether there was one."""
    found = [at for s in stop if (at := text.find(s)) >= 0]
    return (text[: min(found)], True) if found else (text, False)


def _may_begin_stop(text: str, stop: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string."""
    return max(
        (k for s in stop for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), default=0
    )


class StopStream:
    """A reply's pieces passed to `emit` up to the first stop string, never including it."""

    def __init__(self, stop: Sequence[str], emit: TokenSink) -> None:
        self._stop = tuple(stop)
        self._emit = emit
        self.text = ""  # the reply so far, up to (not including) a stop string
        self._emitted = 0
        self.stopped = False

    def feed(self, piece: str) -> None:
        """Take one piece (once `stopped`, a stop string has been reached: generate no more)."""
        if self.stopped:
            return
        self.text, self.stopped = cut_at_stop(self.text + piece, self._stop)
        held = 0 if self.stopped else _may_begin_stop(self.text, self._stop)
        self._pass_on(len(self.text) - held)

    def finish(self) -> str:
        """The reply ended: what was held back goes out (it began no stop string); the text."""
        self._pass_on(len(self.text))
        return self.text

    def _pass_on(self, upto: int) -> None:
        if upto > self._emitted:
            self._emit(self.text[self._emitted : upto])
            self._emitted = upto
