"""The queue's pure rules: outcome classification, backoff with full jitter, and decisions."""

from __future__ import annotations

import random

import pytest

from waystation.config import QueueSettings
from waystation.queue.policy import (
    CANCELLABLE,
    RETRYABLE,
    SETTLED,
    Decision,
    Outcome,
    TaskState,
    backoff_delay,
    classify,
    decide,
)

NOW = 1_700_000_000.0
SETTINGS = QueueSettings(max_attempts=8, backoff_base_s=2.0, backoff_max_s=3600.0)


def _decide(outcome: Outcome, status: int | None, attempts: int = 0, net_failures: int = 0, **kw: object):
    kw.setdefault("settings", SETTINGS)
    kw.setdefault("rng", random.Random(7))
    return decide(outcome=outcome, status=status, attempts=attempts, net_failures=net_failures, now=NOW, **kw)


# --- classify ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 226, 299])
def test_classify_2xx_is_done(status: int) -> None:
    assert classify(status) is Outcome.DONE


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_classify_retryable_statuses(status: int) -> None:
    assert classify(status) is Outcome.RETRY


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 413, 422, 424, 426, 428, 451, 499])
def test_classify_other_4xx_is_dead(status: int) -> None:
    assert classify(status) is Outcome.DEAD


def test_classify_no_answer_is_unreachable() -> None:
    assert classify(None) is Outcome.UNREACHABLE


def test_state_sets_match_the_diagram() -> None:
    assert {TaskState.DONE, TaskState.DEAD, TaskState.CANCELLED, TaskState.EXPIRED} == SETTLED
    assert TaskState.PENDING not in SETTLED and TaskState.RUNNING not in SETTLED
    assert {TaskState.PENDING} == CANCELLABLE
    assert TaskState.RUNNING not in RETRYABLE and TaskState.DONE not in RETRYABLE
    assert {str(s) for s in TaskState} == {"pending", "running", "done", "dead", "cancelled", "expired"}


# --- backoff -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        SETTINGS,
        QueueSettings(backoff_base_s=0.5, backoff_max_s=30.0),
        QueueSettings(backoff_base_s=10.0, backoff_max_s=10.0),
    ],
)
def test_backoff_stays_between_base_and_capped_exponential_ceiling(settings: QueueSettings) -> None:
    rng = random.Random(12345)
    for attempts in range(1, 60):
        ceiling = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempts - 1))
        for _ in range(200):
            delay = backoff_delay(attempts, settings, rng)
            assert settings.backoff_base_s <= delay <= ceiling, (attempts, delay)


def test_backoff_first_attempt_is_exactly_the_base() -> None:
    rng = random.Random(1)
    assert {backoff_delay(1, SETTINGS, rng) for _ in range(50)} == {SETTINGS.backoff_base_s}
    assert backoff_delay(0, SETTINGS, rng) == SETTINGS.backoff_base_s


def test_backoff_is_jittered_over_the_whole_range() -> None:
    rng = random.Random(99)
    attempts = 30  # ceiling is backoff_max_s
    samples = [backoff_delay(attempts, SETTINGS, rng) for _ in range(1000)]
    assert len(set(samples)) > 990  # not one instant for everybody
    assert min(samples) < SETTINGS.backoff_base_s + 0.1 * SETTINGS.backoff_max_s
    assert max(samples) > 0.9 * SETTINGS.backoff_max_s


def test_backoff_is_deterministic_for_a_seeded_rng() -> None:
    a = [backoff_delay(n, SETTINGS, random.Random(5)) for n in range(1, 20)]
    b = [backoff_delay(n, SETTINGS, random.Random(5)) for n in range(1, 20)]
    assert a == b


@pytest.mark.parametrize("attempts", [1025, 5000, 10**6])
def test_backoff_survives_huge_attempt_counts(attempts: int) -> None:
    # net_failures is unbounded (a host unreachable for a day while we are online), and
    # 2.0 ** 1024 overflows a float.
    delay = backoff_delay(attempts, SETTINGS, random.Random(3))
    assert SETTINGS.backoff_base_s <= delay <= SETTINGS.backoff_max_s


# --- decide --------------------------------------------------------------------------------------


def test_done_counts_the_attempt_and_clears_errors() -> None:
    d = _decide(Outcome.DONE, 200, attempts=2, net_failures=3)
    assert d == Decision(TaskState.DONE, 3, 0, NOW, None)


def test_dead_at_once_on_a_4xx() -> None:
    d = _decide(Outcome.DEAD, 404, attempts=0)
    assert d.state is TaskState.DEAD
    assert d.attempts == 1
    assert d.error is not None and "404" in d.error


def test_retry_counts_the_attempt_and_backs_off_into_the_future() -> None:
    d = _decide(Outcome.RETRY, 503, attempts=3)
    assert d.state is TaskState.PENDING
    assert d.attempts == 4
    assert d.net_failures == 0
    assert NOW + SETTINGS.backoff_base_s <= d.next_attempt_at <= NOW + SETTINGS.backoff_base_s * 2**3
    assert d.error is not None and "503" in d.error


@pytest.mark.parametrize("max_attempts", [1, 2, 5, 8])
def test_retry_goes_dead_exactly_at_max_attempts(max_attempts: int) -> None:
    settings = QueueSettings(max_attempts=max_attempts)
    rng = random.Random(0)
    attempts, pendings = 0, 0
    while True:
        d = decide(
            outcome=Outcome.RETRY,
            status=500,
            attempts=attempts,
            net_failures=0,
            now=NOW,
            settings=settings,
            rng=rng,
        )
        attempts = d.attempts
        if d.state is TaskState.DEAD:
            break
        assert d.state is TaskState.PENDING
        pendings += 1
        assert pendings < 100
    assert pendings == max_attempts - 1
    assert attempts == max_attempts
    assert d.error is not None and str(max_attempts) in d.error


def test_unreachable_counts_no_attempt_and_never_dies() -> None:
    rng = random.Random(4)
    attempts, net_failures = 3, 0
    for _ in range(200):
        d = decide(
            outcome=Outcome.UNREACHABLE,
            status=None,
            attempts=attempts,
            net_failures=net_failures,
            now=NOW,
            settings=SETTINGS,
            rng=rng,
            error="connection refused",
        )
        assert d.state is TaskState.PENDING
        assert d.attempts == 3
        assert d.net_failures == net_failures + 1
        assert NOW + SETTINGS.backoff_base_s <= d.next_attempt_at <= NOW + 60.0
        assert d.error == "connection refused"
        net_failures = d.net_failures


def test_unreachable_after_a_very_long_outage_still_decides() -> None:
    d = _decide(Outcome.UNREACHABLE, None, attempts=1, net_failures=2000)
    assert d.state is TaskState.PENDING
    assert d.attempts == 1
    assert d.next_attempt_at <= NOW + 60.0


def test_unreachable_default_error_text() -> None:
    assert _decide(Outcome.UNREACHABLE, None).error == "no answer"


def test_a_real_answer_resets_net_failures() -> None:
    d = _decide(Outcome.RETRY, 429, attempts=0, net_failures=9)
    assert d.net_failures == 0


def test_retry_after_is_honoured() -> None:
    for attempts in range(0, 6):
        d = _decide(Outcome.RETRY, 429, attempts=attempts, retry_after_s=120.0)
        assert d.state is TaskState.PENDING
        assert d.next_attempt_at - NOW >= 120.0


def test_retry_after_below_the_backoff_does_not_shorten_it() -> None:
    settings = QueueSettings(backoff_base_s=50.0, backoff_max_s=3600.0)
    d = _decide(Outcome.RETRY, 503, attempts=0, retry_after_s=1.0, settings=settings)
    assert d.next_attempt_at - NOW >= 50.0


def test_retry_after_is_capped_at_backoff_max() -> None:
    d = _decide(Outcome.RETRY, 503, attempts=0, retry_after_s=10**7)
    assert d.next_attempt_at - NOW == SETTINGS.backoff_max_s


def test_retry_after_does_not_save_the_last_attempt() -> None:
    d = _decide(Outcome.RETRY, 429, attempts=SETTINGS.max_attempts - 1, retry_after_s=5.0)
    assert d.state is TaskState.DEAD
    assert d.attempts == SETTINGS.max_attempts


def test_decide_is_pure() -> None:
    first = _decide(Outcome.RETRY, 500, attempts=4, rng=random.Random(42))
    second = _decide(Outcome.RETRY, 500, attempts=4, rng=random.Random(42))
    assert first == second
