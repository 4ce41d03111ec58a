"""The queue's pure rules: outcome classification, backoff with full jitter, and decisions."""

from __future__ import annotations

import random

import pytest

from waystation.config import QueueSettings
from waystation.queue.policy import (
    CANCELLABLE,
    RETRYABLE,
    SETTLED,
    UNREACHABLE_FIRST_S,
    UNREACHABLE_GROWTH,
    UNREACHABLE_MAX_S,
    Decision,
    Outcome,
    TaskState,
    backoff_delay,
    classify,
    decide,
    no_answer,
    unreachable_delay,
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
            error="a.example: ConnectError: connection refused",
        )
        assert d.state is TaskState.PENDING
        assert d.attempts == 3
        assert d.net_failures == net_failures + 1
        assert NOW + UNREACHABLE_FIRST_S <= d.next_attempt_at <= NOW + UNREACHABLE_MAX_S
        assert d.error == "destination unreachable: a.example: ConnectError: connection refused"
        net_failures = d.net_failures


def test_unreachable_retries_start_at_a_second_and_grow_to_at_most_thirty() -> None:
    """The destination alone is down (the monitor says online): its return is noticed by trying,
    soon at first, then further apart, never more than UNREACHABLE_MAX_S apart. The configured
    backoff for answers (backoff_base_s, here 50 s) does not slow this down."""
    settings = QueueSettings(backoff_base_s=50.0, backoff_max_s=3600.0)
    rng = random.Random(8)
    assert unreachable_delay(1, settings, rng) == UNREACHABLE_FIRST_S == 1.0
    assert UNREACHABLE_MAX_S == 30.0
    for failures in range(2, 40):
        ceiling = min(UNREACHABLE_MAX_S, UNREACHABLE_GROWTH ** (failures - 1))
        for _ in range(100):
            delay = unreachable_delay(failures, settings, rng)
            assert max(1.0, ceiling / 2) <= delay <= ceiling, (failures, delay)
    late = [unreachable_delay(60, settings, rng) for _ in range(1000)]
    assert len(set(late)) > 990 and min(late) < 16.0 and max(late) > 29.0  # jittered over 15-30 s


def test_unreachable_retries_keep_within_a_smaller_configured_maximum() -> None:
    settings = QueueSettings(backoff_base_s=0.1, backoff_max_s=5.0)
    delays = [unreachable_delay(n, settings, random.Random(n)) for n in range(1, 50)]
    assert delays[0] == 1.0 and max(delays) <= 5.0


def test_unreachable_after_a_very_long_outage_still_decides() -> None:
    d = _decide(Outcome.UNREACHABLE, None, attempts=1, net_failures=2000)
    assert d.state is TaskState.PENDING
    assert d.attempts == 1
    assert d.next_attempt_at <= NOW + UNREACHABLE_MAX_S


def test_unreachable_default_error_text() -> None:
    assert _decide(Outcome.UNREACHABLE, None).error == "destination unreachable: no answer"
    assert (
        no_answer("b.example: no answer within 30s")
        == "destination unreachable: b.example: no answer within 30s"
    )


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


# --- a destination away for a while, the monitor online --------------------------------------------


def comeback(outage_s: float, rng: random.Random) -> tuple[float, int]:
    """One task whose destination refuses until `outage_s`, driven by `decide` and the flusher's
    breaker on a simulated clock, as the flusher drives them (each try fails at once; a host
    left alone is tried when its circuit closes). (How long after the destination's return the
    task went out, how many tries it took.)"""
    from waystation.queue.breaker import Breaker

    breaker, now, tries = Breaker(), 0.0, 1  # a turn's call tried once and parked it, due now
    net_failures, due = 1, 0.0
    while True:
        now = max(due, breaker.next_close(now) or now)
        if now >= outage_s:
            return now - outage_s, tries
        tries += 1
        breaker.answered("h", False, now, held_s=0.001)
        d = _decide(Outcome.UNREACHABLE, None, net_failures=net_failures, rng=rng)
        net_failures, due = d.net_failures, now + (d.next_attempt_at - NOW)


@pytest.mark.parametrize(("outage_s", "median_under", "worst"), [(10, 3, 10), (120, 20, 30), (3600, 20, 30)])
def test_a_destination_back_is_noticed_within_seconds_and_never_more_than_thirty(
    outage_s: float, median_under: float, worst: float
) -> None:
    """The figures the schedule was chosen for (policy.UNREACHABLE_FIRST_S): gone 10 s, the task
    goes out a median ~1.2 s after the return and at worst ~7.5 s; gone an hour, a median ~13 s
    and never more than UNREACHABLE_MAX_S, after about 145 tries in that hour."""
    rng = random.Random(2024)
    runs = [comeback(outage_s, rng) for _ in range(300 if outage_s >= 3600 else 2000)]  # ~1 s each
    late = sorted(r[0] for r in runs)
    assert late[len(late) // 2] < median_under, late[len(late) // 2]
    assert late[-1] <= worst <= UNREACHABLE_MAX_S, late[-1]
    if outage_s >= 3600:
        tries_per_hour = sum(r[1] for r in runs) / len(runs) * 3600 / outage_s
        assert tries_per_hour < 160, tries_per_hour
