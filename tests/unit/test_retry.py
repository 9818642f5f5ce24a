"""Backoff after a transient failure, and which upstream statuses are worth a retry."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.retry import FailureKind, backoff_delay, classify_status


class FixedRandom(random.Random):
    """A random source that always draws the same number."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize("r", [0.0, 0.5, 0.999])
def test_backoff_doubles_with_each_attempt_until_the_cap(r):
    delays = [backoff_delay(a, base=2.0, cap=60.0, rng=FixedRandom(r)) for a in range(1, 9)]
    jitter = 0.5 + 0.5 * r
    assert delays == pytest.approx(
        [w * jitter for w in (2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0)]
    )


def test_first_attempt_waits_at_most_the_base():
    assert backoff_delay(1, base=3.0, rng=FixedRandom(0.999999)) <= 3.0
    assert backoff_delay(0, base=3.0, rng=FixedRandom(0.999999)) <= 3.0


def test_backoff_never_fires_immediately():
    assert backoff_delay(1, base=2.0, rng=FixedRandom(0.0)) == 1.0


@given(
    attempt=st.integers(min_value=-5, max_value=100_000),
    base=st.floats(min_value=0.001, max_value=100),
    cap=st.floats(min_value=0.001, max_value=3_600),
    seed=st.integers(0, 2**32),
)
def test_backoff_stays_within_half_the_window_and_the_window(attempt, base, cap, seed):
    window = min(cap, base * 2.0 ** min(max(0, attempt - 1), 1_023))
    delay = backoff_delay(attempt, base, cap, random.Random(seed))
    assert window / 2 <= delay <= window
    assert delay <= cap


@given(attempt=st.integers(min_value=1, max_value=100_000), seed=st.integers(0, 2**32))
def test_backoff_never_decreases_with_the_attempt_for_one_draw(attempt, seed):
    r = random.Random(seed).random()
    before = backoff_delay(attempt, 2.0, 60.0, FixedRandom(r))
    after = backoff_delay(attempt + 1, 2.0, 60.0, FixedRandom(r))
    assert before <= after <= 60.0


def test_backoff_of_a_very_late_attempt_is_the_cap_not_an_overflow():
    assert backoff_delay(5_000, base=2.0, cap=60.0, rng=FixedRandom(0.999)) == pytest.approx(
        60.0 * 0.9995
    )


def test_backoff_without_an_rng_still_stays_in_the_window():
    for _ in range(100):
        assert 1.0 <= backoff_delay(1, base=2.0) <= 2.0


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 429])
def test_server_errors_and_rate_limits_are_transient(status):
    assert classify_status(status) is FailureKind.TRANSIENT


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 422, 499])
def test_other_client_errors_are_permanent(status):
    assert classify_status(status) is FailureKind.PERMANENT
