"""A destination that keeps not answering is left alone for a while (a circuit breaker), so its
backlog cannot hold every delivery slot while healthy hosts wait: two hung hosts with
per_host = 2 would otherwise take all four slots, a timeout at a time, for as long as their
backlog lasts. Pure bookkeeping: the flusher passes the time and asks who is open.

After FAILURES_TO_OPEN deliveries in a row to a host get no answer, no new delivery goes there
for OPEN_FIRST_S, doubling each time it opens again up to OPEN_MAX_S; any answer closes it. The
network coming back closes them all: the failures may have been ours, not theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

FAILURES_TO_OPEN = 2
OPEN_FIRST_S = 15.0
OPEN_MAX_S = 300.0


@dataclass
class _Host:
    failures: int = 0  # in a row, since the last answer
    opened: int = 0  # times opened since the last answer
    until: float = 0.0  # open (no new deliveries) until then


class Breaker:
    def __init__(self) -> None:
        self._hosts: dict[str, _Host] = {}

    def answered(self, host: str, reached: bool, now: float) -> bool:
        """Record one delivery's fate; True when this opened the host's circuit."""
        if reached:
            self._hosts.pop(host, None)
            return False
        state = self._hosts.setdefault(host, _Host())
        state.failures += 1
        if state.failures < FAILURES_TO_OPEN or state.until > now:
            return False
        state.until = now + min(OPEN_MAX_S, OPEN_FIRST_S * 2**state.opened)
        state.opened += 1
        state.failures = 0
        return True

    def open_hosts(self, now: float) -> list[str]:
        return [host for host, state in self._hosts.items() if state.until > now]

    def next_close(self, now: float) -> float | None:
        """When the next open circuit closes (None when none is open)."""
        return min((s.until for s in self._hosts.values() if s.until > now), default=None)

    def reset(self) -> None:
        self._hosts.clear()
