"""The agent's event stream: connectivity, task, turn and receipt events, numbered for resumption.

Events are kept in a bounded ring so a client that reconnects with `Last-Event-ID` gets what it
missed: at most HISTORY events and HISTORY_BYTES of them (so 500 tasks with 1 MB bodies cannot
hold 500 MB with nobody listening). Each event is encoded once, when published. A subscriber that
cannot keep up is dropped rather than growing memory without bound; it reconnects with its last
id and catches up from the ring.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from waystation import sse, timeutil
from waystation.contract import EventKind

HISTORY = 2048
HISTORY_BYTES = 4 * 1024 * 1024
SUBSCRIBER_BUFFER = 1024


@dataclass(frozen=True)
class Event:
    id: int
    kind: EventKind
    data: Mapping[str, Any]  # the kind's contract object (a task without its result)
    frame: bytes  # the SSE frame, encoded once

    def to_sse(self) -> bytes:
        return self.frame


class _Dropped(Exception):
    pass


class EventBus:
    def __init__(self) -> None:
        # Ids start at the boot time in microseconds, so they keep growing across restarts: a
        # client resuming with the Last-Event-ID of the previous process gets every event of this
        # one, instead of nothing until the count passes its old id. (< 2**53: safe in JavaScript.)
        started = timeutil.now()
        self._ids = itertools.count(int(started * 1_000_000))
        self._history: collections.deque[Event] = collections.deque()
        self._history_bytes = 0
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self.boot = timeutil.iso(started)

    def publish(self, kind: EventKind, data: Mapping[str, Any]) -> Event:
        ident = next(self._ids)
        event = Event(ident, kind, data, sse.frame(data, kind, ident))
        self._history.append(event)
        self._history_bytes += len(event.frame)
        while len(self._history) > HISTORY or self._history_bytes > HISTORY_BYTES:
            self._history_bytes -= len(self._history.popleft().frame)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                queue.get_nowait()  # make room for the end-of-stream marker
                queue.put_nowait(None)
        return event

    async def subscribe(self, last_event_id: int | None = None) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(SUBSCRIBER_BUFFER)
        self._subscribers.add(queue)
        try:
            if last_event_id is not None:
                for event in list(self._history):
                    if event.id > last_event_id:
                        yield event
            while True:
                live = await queue.get()
                if live is None:
                    return  # too slow, or shutting down: the client reconnects with Last-Event-ID
                if last_event_id is None or live.id > last_event_id:
                    yield live
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        """End every open stream (shutdown)."""
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                queue.get_nowait()
                queue.put_nowait(None)
        self._subscribers.clear()
