"""Exponential backoff with full jitter, and the server's Retry-After."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.core.retry import MAX_RETRY_AFTER, Backoff, parse_retry_after

NOW = 1_800_000_000.0  # a wall-clock instant in 2027


def test_cap_doubles_from_initial_up_to_maximum() -> None:
    backoff = Backoff(initial=0.5, maximum=60.0)
    assert [backoff.cap(attempt) for attempt in range(1, 10)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
    ]


@pytest.mark.parametrize("attempt", [0, -1, -(10**9)])
def test_cap_of_a_non_positive_attempt_is_the_initial_delay(attempt: int) -> None:
    assert Backoff(initial=0.25, maximum=10.0).cap(attempt) == 0.25


@pytest.mark.parametrize("attempt", [63, 64, 1025, 10**6, 10**100])
def test_huge_attempt_numbers_do_not_overflow(attempt: int) -> None:
    backoff = Backoff(initial=0.5, maximum=60.0, rng=random.Random(1))
    assert backoff.cap(attempt) == 60.0
    assert 0.0 <= backoff.delay(attempt) <= 60.0


@settings(max_examples=100, deadline=None)
@given(
    initial=st.floats(0.001, 10.0),
    factor=st.floats(1.0, 1000.0),
    attempt=st.integers(-5, 10**6),
    seed=st.integers(0, 2**32),
)
def test_delay_is_within_zero_and_the_cap(
    initial: float, factor: float, attempt: int, seed: int
) -> None:
    backoff = Backoff(initial=initial, maximum=initial * factor, rng=random.Random(seed))
    cap = backoff.cap(attempt)
    assert initial <= cap <= backoff.maximum
    if attempt > 1:
        assert cap == min(backoff.maximum, 2 * backoff.cap(attempt - 1))
    for _ in range(50):
        assert 0.0 <= backoff.delay(attempt) <= cap


def test_delays_are_jittered_over_the_whole_range() -> None:
    """Full jitter: draws spread from near 0 to near the cap, not clustered at it."""
    backoff = Backoff(initial=1.0, maximum=8.0, rng=random.Random(42))
    draws = [backoff.delay(4) for _ in range(2000)]
    assert 0.0 <= min(draws) < 0.5
    assert 7.5 < max(draws) <= 8.0
    assert 3.5 < sum(draws) / len(draws) < 4.5
    assert len(set(draws)) > 1900


# Retry-After ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("1", 1.0),
        ("120", 120.0),
        (" 30 ", 30.0),
        ("007", 7.0),
        ("1.5", 1.5),  # issue 14.8: gateways send decimals; ignoring them lost the pause
        ("0.25", 0.25),
    ],
)
def test_retry_after_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize("value", ["3601", "86400", "9" * 50, "9" * 400])
def test_retry_after_is_capped(value: str) -> None:
    assert parse_retry_after(value, NOW) == MAX_RETRY_AFTER


def http_date(timestamp: float) -> str:
    return format_datetime(datetime.fromtimestamp(timestamp, UTC), usegmt=True)


def test_retry_after_http_date_in_the_future() -> None:
    assert parse_retry_after(http_date(NOW + 90), NOW) == pytest.approx(90.0)


def test_retry_after_http_date_in_the_past_means_now() -> None:
    assert parse_retry_after(http_date(NOW - 90), NOW) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0


def test_retry_after_http_date_far_away_is_capped() -> None:
    assert parse_retry_after(http_date(NOW + 10 * 86400), NOW) == MAX_RETRY_AFTER


def test_retry_after_rfc850_and_asctime_dates() -> None:
    # Both obsolete forms are still "HTTP-date" (RFC 9110 §5.6.7).
    assert parse_retry_after("Friday, 15-Jan-27 08:00:30 GMT", NOW) == pytest.approx(30.0)
    assert parse_retry_after(http_date(NOW + 30), NOW) == pytest.approx(30.0)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "-1",
        "1e3",
        "1.",
        ".5",
        "0x10",
        "12 seconds",
        "²",  # a Unicode digit that str.isdigit() accepts and float() does not
        "٣",  # Arabic-Indic three: not HTTP delta-seconds
        "Wed, 99 Foo 2015 07:28:00 GMT",
        "Wed, 21 Oct 2015 07:28:00",  # no zone: ambiguous
    ],
)
def test_retry_after_garbage_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_retry_after_never_raises(value: str) -> None:
    seconds = parse_retry_after(value, NOW)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER
