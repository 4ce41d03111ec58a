"""The queue's rules as plain functions over plain data: no I/O, no clock, no randomness of its own.

States:
    pending ──lease──> running ──2xx──────────────> done
       ^  ^               │──408/425/429/5xx──> pending (backoff) or dead (attempts used up)
       │  │               │──other status─────> dead
       │  └───────────────┘──no answer────────> pending (no attempt counted)
       ├── cancel ──> cancelled      pending past expires_at ──> expired (tombstone receipt)
       └── retry <── dead | cancelled | expired

A destination that takes the call as a task of its own (an MCP server's task: Outcome.WAITING)
leaves the task `running`, with the destination's id for it (`remote_task`), and it is polled
again (its deliveries ask after that task) until it ends; while it waits, any answer that would
make a task pending (no answer, "not now") keeps it running instead: it is never sent again.
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


# No answer at all (connection refused, no such name, a timeout) while the monitor says online: the
# destination alone is away, and its return cannot be seen without trying. So it is tried again
# from UNREACHABLE_FIRST_S on, each pause UNREACHABLE_GROWTH times the last, never more than
# UNREACHABLE_MAX_S apart: a task goes out within about the outage's own length of the
# destination's return, and never more than UNREACHABLE_MAX_S after it, at a cost of one
# connection attempt (and one monitor probe) each time; the breaker (queue/breaker.py) keeps a
# host's backlog from multiplying that. Simulated with the breaker (tests/test_policy.py,
# comeback): gone 10 s, a task goes out a median 1.2 s after the destination's return and at
# worst 7.5 s; gone an hour, a median 13 s and at most 30 s, after about 145 tries in that hour.
UNREACHABLE_FIRST_S = 1.0
UNREACHABLE_GROWTH = 1.5
UNREACHABLE_MAX_S = 30.0
# Pauses of a no-answer retry are drawn from the upper half of their band. The full band (as
# backoff_delay draws) lets a few short draws in a row raise the ceiling before the outage is that
# old: simulated, a 10 s outage was then noticed up to 11 s late instead of 7.5 s.
UNREACHABLE_FLOOR = 0.5


def jittered(
    tries: int, first: float, growth: float, most: float, rng: random.Random, floor: float = 0.0
) -> float:
    """A pause drawn uniformly up to a ceiling that starts at `first` and grows `growth` times
    per try after the first, capped at `most`; and from `floor` times that ceiling (never under
    `first`).

    Jitter spreads retries of many tasks that failed together (one destination down), so they do
    not all come back in the same instant.
    """
    # The exponent is capped: 2.0 ** 1024 overflows, and net_failures has no upper bound.
    ceiling = max(first, min(most, first * growth ** min(max(tries - 1, 0), 1023)))
    return rng.uniform(max(first, floor * ceiling), ceiling)


def backoff_delay(attempts: int, settings: QueueSettings, rng: random.Random) -> float:
    """After a destination answered "not now": full jitter, uniform between the base and an
    exponential ceiling (doubling) capped at the maximum."""
    return jittered(attempts, settings.backoff_base_s, 2.0, settings.backoff_max_s, rng)


def unreachable_delay(net_failures: int, settings: QueueSettings, rng: random.Random) -> float:
    """After no answer at all, the `net_failures`-th in a row: see UNREACHABLE_FIRST_S. Never
    beyond the configured backoff_max_s either."""
    most = min(UNREACHABLE_MAX_S, settings.backoff_max_s)
    first = min(UNREACHABLE_FIRST_S, most)
    return jittered(net_failures, first, UNREACHABLE_GROWTH, most, rng, UNREACHABLE_FLOOR)


def no_answer(error: str | None) -> str:
    """What a task records when its destination did not answer (whoever tried it)."""
    return f"destination unreachable: {error or 'no answer'}"


# How soon a destination's own task is asked after again: its pollInterval, within these bounds
# (a server asking for 10 ms polls is not obeyed; one asking for an hour is asked more often).
POLL_DEFAULT_S = 1.0
POLL_MIN_S = 0.5
POLL_MAX_S = 30.0


def poll_delay(asked_s: float | None) -> float:
    return min(POLL_MAX_S, max(POLL_MIN_S, POLL_DEFAULT_S if asked_s is None else asked_s))


@dataclass(frozen=True)
class Decision:
    state: TaskState
    attempts: int
    net_failures: int
    next_attempt_at: float
    error: str | None
    remote_task: str | None = None  # the destination's task to poll, when it took the call as one


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
    remote_task: str | None = None,
) -> Decision:
    """What happens to a running task once its delivery finished with `outcome`; `remote_task`:
    the destination's own task the delivery asked after (or the one it was just given)."""
    if outcome is Outcome.WAITING:
        return Decision(TaskState.RUNNING, attempts, 0, now + poll_delay(retry_after_s), error, remote_task)
    # A task its destination holds as its own is never pending (that would send it again): it
    # stays running, asked after at the time a pending one would have been retried.
    again = TaskState.PENDING if remote_task is None else TaskState.RUNNING
    if outcome is Outcome.DONE:
        return Decision(TaskState.DONE, attempts + 1, 0, now, None)
    if outcome is Outcome.DEAD:
        if status is None:  # dead for a reason of its own: nothing was sent, no attempt counted
            return Decision(TaskState.DEAD, attempts, 0, now, error or "cannot be sent")
        return Decision(TaskState.DEAD, attempts + 1, 0, now, f"destination answered HTTP {status}")
    if outcome is Outcome.UNREACHABLE:
        # Not the destination's answer, so no attempt is counted, and the task never dies of it.
        # Tried again soon (unreachable_delay); a return to `online` makes such tasks due at once.
        delay = unreachable_delay(net_failures + 1, settings, rng)
        return Decision(again, attempts, net_failures + 1, now + delay, no_answer(error), remote_task)
    counted = attempts + 1
    answered = f"destination answered HTTP {status}" if status is not None else error or "not now"
    if counted >= settings.max_attempts:
        return Decision(TaskState.DEAD, counted, 0, now, f"{answered}; gave up after {counted} attempts")
    delay = backoff_delay(counted, settings, rng)
    if retry_after_s is not None:
        # Honour the destination's Retry-After, but never beyond our own ceiling.
        delay = min(max(delay, retry_after_s), settings.backoff_max_s)
    # Pending says it will be retried, and next_attempt_at when: the error says why it was not done.
    return Decision(again, counted, 0, now + delay, answered, remote_task)


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
