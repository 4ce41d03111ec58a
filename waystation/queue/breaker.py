"""A destination that keeps not answering is left alone for a while (a circuit breaker), so its
backlog cannot hold every delivery slot while healthy hosts wait, nor send it a try per task:
two hung hosts with per_host = 2 would otherwise take all four slots, a timeout at a time, for as
long as their backlog lasts. Pure bookkeeping: the flusher passes the time and asks who is open.

After FAILURES_TO_OPEN deliveries in a row to a host get no answer, no new delivery goes there
for a while, doubling each time it opens again; any answer closes it. The network coming back
closes them all: the failures may have been ours, not theirs.

How long depends on what the failures cost. One that held its slot SLOW_FAILURE_S or more (a
timeout, a resolver that hangs) is what the other hosts need protecting from: such a host is left
alone from OPEN_FIRST_S up to OPEN_MAX_S. A host that fails at once (connection refused, no such
name) holds no slot; leaving it alone only spaces the tries its backlog would make, and its
return must still be noticed soon: from REFUSING_FIRST_S up to REFUSING_MAX_S, no longer than a
single task's no-answer retry waits (policy.UNREACHABLE_MAX_S).
"""

from __future__ import annotations

from dataclasses import dataclass

from waystation.queue.policy import UNREACHABLE_MAX_S

FAILURES_TO_OPEN = 2
SLOW_FAILURE_S = 2.0
OPEN_FIRST_S = 15.0
OPEN_MAX_S = 300.0
REFUSING_FIRST_S = 2.0
REFUSING_MAX_S = UNREACHABLE_MAX_S


@dataclass
class _Host:
    failures: int = 0  # in a row, since the last answer
    opened: int = 0  # times opened since the last answer
    until: float = 0.0  # open (no new deliveries) until then
    slow: bool = False  # a failure since the last answer held its slot SLOW_FAILURE_S or more


class Breaker:
    def __init__(self) -> None:
        self._hosts: dict[str, _Host] = {}

    def answered(self, host: str, reached: bool, now: float, *, held_s: float) -> bool:
        """Record one delivery's fate (`held_s`: how long it held its slot); True when this
        opened the host's circuit."""
        if reached:
            self._hosts.pop(host, None)
            return False
        state = self._hosts.setdefault(host, _Host())
        state.failures += 1
        state.slow |= held_s >= SLOW_FAILURE_S
        if state.failures < FAILURES_TO_OPEN or state.until > now:
            return False
        first, most = (OPEN_FIRST_S, OPEN_MAX_S) if state.slow else (REFUSING_FIRST_S, REFUSING_MAX_S)
        # The exponent is capped: a host down for a day opens thousands of times, and a float
        # cannot hold 2 ** 1024.
        state.until = now + min(most, first * 2.0 ** min(state.opened, 32))
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
