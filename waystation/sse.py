"""Server-Sent Events, written once: the frame the agent sends and the parser its readers use.

The agent's event stream, its streamed turns and its OpenAI-compatible chunks are all framed by
`frame`; the command line (reading the agent) and the provider routes (reading a provider) parse
with `SseParser`, which follows the WHATWG rules: a blank line ends an event, `:` starts a
comment, several `data:` lines join with newlines, one optional space after the colon is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


def frame(data: Any, event: str | None = None, ident: int | None = None) -> bytes:
    """One event; `data` that is not already text is sent as compact JSON."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = (f"id: {ident}\n" if ident is not None else "") + (f"event: {event}\n" if event else "")
    return f"{head}data: {text}\n\n".encode()


@dataclass(frozen=True)
class SseEvent:
    event: str  # "message" when the stream named none
    data: str
    ident: int | None  # the `id:` field when it is an integer (our ids are)

    def json(self) -> Any:
        """The data decoded as JSON when it is JSON, else the text itself."""
        try:
            return json.loads(self.data)
        except ValueError:
            return self.data


class SseParser:
    """Feed lines (without their line ending) as they arrive; events come out as they complete."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._ident: int | None = None

    def feed(self, line: str) -> Iterator[SseEvent]:
        if not line:
            yield from self.end()
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._ident = int(value) if value.isdigit() else None

    def end(self) -> Iterator[SseEvent]:
        """The event in progress, if it has data (at a blank line, or when the stream ends)."""
        if self._data:
            yield SseEvent(self._event or "message", "\n".join(self._data), self._ident)
        self._reset()
