"""Work the agent runs in the background (resumed turns, turns whose caller stopped waiting):
each task is kept until it ends, and closing cancels what still runs, so each writes its
"interrupted" receipt before the model and the database close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Background:
    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(work, name=name)
        self._running.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # read: a failure nobody awaited is not "lost" (its receipt says it)

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel a task this process started and wait for it to end (its CancelledError is the end
    asked for, so it is the one not raised again)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
