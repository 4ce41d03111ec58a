"""The queue's rules as plain functions over plain data: no I/O, no clock, no randomness of its own.

States:
    pending ──lease──> running ──2xx──────────────> done
       ^  ^               │──408/425/429/5xx──> pending (backoff) or dead (attempts used up)
       │  │               │──other status─────> dead
       │  └───────────────┘──no answer────────> pending (no attempt counted)
       ├── cancel ──> cancelled      pending past expires_at ──> expired (tombstone receipt)
       └── retry <── dead | cancelled | expired
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from waystation.config import QueueSettings
from waystation.ports import Outcome


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


__all__ = ["Outcome"]  # re-exported: the policy's input, declared with the Deliver port

SETTLED = frozenset({TaskState.DONE, TaskState.DEAD, TaskState.CANCELLED, TaskState.EXPIRED})
RETRYABLE = frozenset({TaskState.PENDING, TaskState.DEAD, TaskState.CANCELLED, TaskState.EXPIRED})
CANCELLABLE = frozenset({TaskState.PENDING})


RETRY_STATUSES = frozenset({408, 425, 429})


def classify(status: int | None) -> Outcome:
    """An HTTP answer (or None for no answer) as a delivery outcome, per the contract."""
    if status is None:
        return Outcome.UNREACHABLE
    if 200 <= status < 300:
        return Outcome.DONE
    if status in RETRY_STATUSES or 500 <= status < 600:
        return Outcome.RETRY
    return Outcome.DEAD


def backoff_delay(attempts: int, settings: QueueSettings, rng: random.Random) -> float:
    """Full jitter: uniform between the base and an exponential ceiling capped at the maximum.

    Jitter spreads retries of many tasks that failed together (one destination down), so they do
    not all come back in the same instant.
    """
    # The exponent is capped: 2.0 ** 1024 overflows, and net_failures has no upper bound.
    ceiling = min(settings.backoff_max_s, settings.backoff_base_s * 2.0 ** min(max(attempts - 1, 0), 1023))
    return rng.uniform(settings.backoff_base_s, max(settings.backoff_base_s, ceiling))


@dataclass(frozen=True)
class Decision:
    state: TaskState
    attempts: int
    net_failures: int
    next_attempt_at: float
    error: str | None


def decide(
    *,
    outcome: Outcome,
    status: int | None,
    attempts: int,
    net_failures: int,
    now: float,
    settings: QueueSettings,
    rng: random.Random,
    retry_after_s: float | None = None,
    error: str | None = None,
) -> Decision:
    """What happens to a running task once its delivery finished with `outcome`."""
    if outcome is Outcome.DONE:
        return Decision(TaskState.DONE, attempts + 1, 0, now, None)
    if outcome is Outcome.DEAD:
        if status is None:  # dead for a reason of its own: nothing was sent, no attempt counted
            return Decision(TaskState.DEAD, attempts, 0, now, error or "cannot be sent")
        return Decision(TaskState.DEAD, attempts + 1, 0, now, f"destination answered HTTP {status}")
    if outcome is Outcome.UNREACHABLE:
        # Not the destination's answer, so no attempt is counted. Back off a little so one dead
        # host cannot spin the flusher; a return to `online` makes such tasks due at once.
        delay = min(backoff_delay(net_failures + 1, settings, rng), 60.0)
        return Decision(TaskState.PENDING, attempts, net_failures + 1, now + delay, error or "no answer")
    counted = attempts + 1
    answered = f"HTTP {status}" if status is not None else error or "not now"
    if counted >= settings.max_attempts:
        return Decision(TaskState.DEAD, counted, 0, now, f"{answered}; gave up after {counted} attempts")
    delay = backoff_delay(counted, settings, rng)
    if retry_after_s is not None:
        # Honour the destination's Retry-After, but never beyond our own ceiling.
        delay = min(max(delay, retry_after_s), settings.backoff_max_s)
    return Decision(TaskState.PENDING, counted, 0, now + delay, f"{answered}; will retry")


def take_per_host(
    rows: Iterable[tuple[str, str]], limit: int, counts: dict[str, int], per_host: int
) -> list[str]:
    """Ids of up to `limit` of `rows` (id, host) in order, keeping each host under `per_host`
    (`counts`, what each host already has, is updated)."""
    chosen: list[str] = []
    for task_id, host in rows:
        if len(chosen) == limit:
            break
        if counts.get(host, 0) < per_host:
            counts[host] = counts.get(host, 0) + 1
            chosen.append(task_id)
    return chosen
