"""A delivery's deadline that a paused agent does not trip by itself.

asyncio measures timeouts on the monotonic clock, which runs on while the whole agent is stopped
(SIGSTOP, a debugger, a VM frozen for a snapshot). When it resumes, the loop runs the expired
timer before the coroutine that would read the answer which arrived meanwhile, so a request the
destination had answered would count as a timeout and be sent again. A deadline that fires more
than PAUSE_S late (the loop was not running when it fell due) gives the exchange GRACE_S more to
read what is already there, and ends it then if nothing came; one that fires on time ends it.
Only a pause longer than the deadline plus the grace, with no answer read, can repeat a delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

PAUSE_S = 1.0
GRACE_S = 5.0


class Deadline:
    """One deadline for the whole exchange (connect, send, read), shared by each step's `bound()`."""

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.when = self._loop.time() + seconds

    @contextlib.asynccontextmanager
    async def bound(self) -> AsyncIterator[None]:
        """Raise TimeoutError in the block when the deadline passes."""
        loop = self._loop
        handle: asyncio.TimerHandle | None = None
        async with asyncio.timeout(None) as timeout:

            def expire() -> None:
                nonlocal handle
                now = loop.time()
                if now - self.when > PAUSE_S:  # the loop was not running when it fell due
                    self.when = now + GRACE_S
                    handle = loop.call_at(self.when, expire)
                else:
                    timeout.reschedule(now)

            handle = loop.call_at(self.when, expire)
            try:
                yield
            finally:
                handle.cancel()
