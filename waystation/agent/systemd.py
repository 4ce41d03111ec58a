"""systemd's notify protocol for a Type=notify service: READY=1, STOPPING=1, STATUS= lines and
watchdog pings. Inert when systemd did not start us so.

The notifier takes NOTIFY_SOCKET and the watchdog's variables out of the environment when it is
made, as sd_notify(unset_environment=1) does: a child process (busctl asked about a metered link,
a seat CLI) must not report to systemd in the agent's name (busctl sent ERRNO=2 on every link
change).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from collections.abc import MutableMapping

from waystation.station import AgentStation
from waystation.station.background import cancel

STATUS_MIN_INTERVAL_S = 5.0  # queue changes update STATUS= at most this often


class Notifier:
    def __init__(self, env: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.pop("NOTIFY_SOCKET", "")
        usec, pid = env.pop("WATCHDOG_USEC", ""), env.pop("WATCHDOG_PID", "")
        # "@name" is the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = _half_of(usec) if address and (not pid or pid == str(os.getpid())) else None

    @property
    def active(self) -> bool:
        return bool(self.address)

    def send(self, message: str) -> None:
        if not self.address:
            return
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), self.address)

    async def watchdog_pings(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop itself: a hung loop stops them, and systemd restarts us."""
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)


def _half_of(usec: str) -> float | None:
    """Seconds between pings: half of WATCHDOG_USEC, or None when not watched."""
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1_000_000 if value > 0 else None


class StatusReporter:
    """Keeps systemd's STATUS= line current: connectivity at once, queue depth rate-limited.

    It sleeps on the event stream while nothing happens (no polling).
    """

    def __init__(self, notifier: Notifier, station: AgentStation) -> None:
        self._notifier = notifier
        self._monitor = station.monitor
        self._store = station.store
        self._events = station.announcer.events
        self._dirty = asyncio.Event()
        self._urgent = asyncio.Event()

    async def run(self) -> None:
        following = asyncio.create_task(self._follow(), name="sd-status-follow")
        try:
            self._dirty.set()
            self._urgent.set()
            last = -math.inf
            while True:
                await self._dirty.wait()
                wait = STATUS_MIN_INTERVAL_S - (time.monotonic() - last)
                if wait > 0 and not self._urgent.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._urgent.wait(), wait)
                self._dirty.clear()
                self._urgent.clear()
                self._notifier.send(f"STATUS={await self.line()}")
                last = time.monotonic()
        finally:
            await cancel(following)

    async def line(self) -> str:
        counts = await self._store.counts()
        queue = ", ".join(f"{counts.get(state, 0)} {state}" for state in ("pending", "running", "dead"))
        return f"connectivity {self._monitor.state} (mode {self._monitor.mode}); queue: {queue}"

    async def _follow(self) -> None:
        while True:  # a dropped subscriber (too slow) subscribes again
            async for event in self._events.subscribe():
                if event.kind == "connectivity":
                    self._urgent.set()
                    self._dirty.set()
                elif event.kind == "task":
                    self._dirty.set()
