"""Rate limits: parsing `N/window`, and the sliding log's two promises (never more than
N sends in any interval of length W, and a steady stream still gets all N)."""

from __future__ import annotations

import bisect
import heapq
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.limits.backend import LimiterSet
from forwarder.limits.rate import Rate, parse_rate
from forwarder.limits.sliding_log import LocalLimits, SlidingWindowLimiter, Slot

# Parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "window"),
    [
        ("30/minute", 30, 60.0),
        ("5/second", 5, 1.0),
        ("1000/hour", 1000, 3600.0),
        ("10/day", 10, 86400.0),
        ("30/minutes", 30, 60.0),
        ("5/seconds", 5, 1.0),
        ("1000/hours", 1000, 3600.0),
        ("10/days", 10, 86400.0),
        ("5/s", 5, 1.0),
        ("5/sec", 5, 1.0),
        ("5/secs", 5, 1.0),
        ("7/min", 7, 60.0),
        ("7/mins", 7, 60.0),
        ("2/h", 2, 3600.0),
        ("2/hr", 2, 3600.0),
        ("2/hrs", 2, 3600.0),
        ("3/d", 3, 86400.0),
        ("100/10s", 100, 10.0),
        ("100/10seconds", 100, 10.0),
        ("5/10minutes", 5, 600.0),
        ("  30 / Minute  ", 30, 60.0),
        ("30/MINUTE", 30, 60.0),
        ("1/second", 1, 1.0),
    ],
)
def test_parse_rate_accepts(text: str, count: int, window: float) -> None:
    assert parse_rate(text) == Rate(count, window)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/minute", "at least 1"),
        ("00/second", "at least 1"),
        ("5/ms", "unknown window"),
        ("5/m", "unknown window"),
        ("5/week", "unknown window"),
        ("5/fortnight", "unknown window"),
        ("abc", "30/minute"),
        ("", "30/minute"),
        ("5", "30/minute"),
        ("/minute", "30/minute"),
        ("5/", "30/minute"),
        ("-5/minute", "30/minute"),
        ("+5/minute", "30/minute"),
        ("1.5/second", "30/minute"),
        ("5/0.5s", "30/minute"),
        ("5 per minute", "30/minute"),
        ("5/minute/extra", "30/minute"),
        ("100/0s", "at least 1 unit"),
        ("100/0minutes", "at least 1 unit"),
    ],
)
def test_parse_rate_rejects_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        parse_rate(text)
    if text.strip():
        # The operator sees what they wrote or what the right form is.
        assert repr(text) in str(raised.value) or "omit it" in str(raised.value)


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (Rate(30, 60.0), "30/minute"),
        (Rate(5, 1.0), "5/second"),
        (Rate(100, 10.0), "100/10s"),
        (Rate(10, 86400.0), "10/day"),
    ],
)
def test_rate_str_round_trips(rate: Rate, text: str) -> None:
    assert str(rate) == text
    assert parse_rate(str(rate)) == rate


@settings(max_examples=100, deadline=None)
@given(
    count=st.integers(1, 1_000_000),
    multiple=st.sampled_from(["", "1", "2", "10", "90"]),
    unit=st.sampled_from(["second", "minute", "hour", "day", "s", "min", "h", "d"]),
    plural=st.booleans(),
)
def test_parse_rate_any_well_formed_text(
    count: int, multiple: str, unit: str, plural: bool
) -> None:
    seconds = {"second": 1, "s": 1, "minute": 60, "min": 60, "hour": 3600, "h": 3600}
    seconds |= {"day": 86400, "d": 86400}
    suffix = "s" if plural and len(unit) > 1 else ""
    rate = parse_rate(f"{count}/{multiple}{unit}{suffix}")
    assert rate.count == count
    assert rate.window == seconds[unit] * (int(multiple) if multiple else 1)


def test_parse_rate_refuses_counts_it_cannot_remember() -> None:
    with pytest.raises(ValueError, match="at most 1,000,000 sends per window"):
        parse_rate("1000001/day")


# The sliding log -------------------------------------------------------------------


def record(limiter: SlidingWindowLimiter | LimiterSet, now: float) -> None:
    """Count a send that began and finished at `now`."""
    permits = limiter.start(now)
    LimiterSet.finish(permits if isinstance(permits, tuple) else (permits,), now)


def drive(limiter: SlidingWindowLimiter | LimiterSet, arrivals: list[float]) -> list[float]:
    """Send each arrival as soon as the limiter allows, in order; returns send times.

    A send waits for the previous one (FIFO), and the clock only moves forward."""
    sends: list[float] = []
    now = 0.0
    for arrival in arrivals:
        now = max(now, arrival)
        for _ in range(1000):
            wait = limiter.delay(now)
            assert wait >= 0.0
            if wait == 0.0:
                break
            now += wait
        else:
            pytest.fail("the limiter never let the send go")
        record(limiter, now)
        sends.append(now)
    return sends


def max_in_any_window(sends: list[float], window: float) -> int:
    """The most sends in any half-open interval [t, t + window).

    The busiest interval can be taken to start at a send."""
    return max(
        (bisect.bisect_left(sends, start + window) - i for i, start in enumerate(sends)),
        default=0,
    )


rates = st.builds(
    Rate,
    count=st.integers(1, 20),
    window=st.sampled_from([0.1, 1.0, 2.5, 60.0]),
)
arrival_gaps = st.lists(
    st.one_of(
        st.just(0.0),
        st.floats(0.0, 0.05, allow_nan=False),
        st.floats(0.0, 5.0, allow_nan=False),
    ),
    max_size=300,
)


def cumulative(gaps: list[float]) -> list[float]:
    times, now = [], 0.0
    for gap in gaps:
        now += gap
        times.append(now)
    return times


@settings(max_examples=80, deadline=None)
@given(rate=rates, gaps=arrival_gaps)
def test_no_interval_of_length_w_holds_more_than_n_sends(rate: Rate, gaps: list[float]) -> None:
    sends = drive(SlidingWindowLimiter(rate), cumulative(gaps))
    assert sends == sorted(sends)
    assert max_in_any_window(sends, rate.window) <= rate.count


@settings(max_examples=100, deadline=None)
@given(rate=rates, windows=st.integers(5, 40))
def test_saturated_stream_uses_the_whole_allowance(rate: Rate, windows: int) -> None:
    """Everything arrives at once: the limiter must still reach N per W, window after window."""
    total = rate.count * windows
    sends = drive(SlidingWindowLimiter(rate), [0.0] * total)
    assert max_in_any_window(sends, rate.window) <= rate.count
    # All N*k sends done within (k-1) windows after the first: exactly N per W.
    elapsed = sends[-1] - sends[0]
    assert elapsed <= (windows - 1) * rate.window * (1 + 1e-9)
    achieved = total / ((elapsed + rate.window) / rate.window)
    assert achieved >= 0.9 * rate.count * (1 - 1e-9)


def test_saturated_stream_exact_shape() -> None:
    limiter = SlidingWindowLimiter(Rate(3, 10.0))
    sends = drive(limiter, [0.0] * 9)
    assert sends == [0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 20.0, 20.0, 20.0]


@settings(max_examples=50, deadline=None)
@given(rate=rates, windows=st.integers(20, 60), period=st.floats(0.3, 0.95))
def test_steady_stream_faster_than_the_limit_runs_at_the_limit(
    rate: Rate, windows: int, period: float
) -> None:
    """A producer faster than the limit, arriving evenly, is held to ~N per W, not less."""
    horizon = windows * rate.window
    spacing = period * rate.window / rate.count
    arrivals = [i * spacing for i in range(int(horizon / spacing) + 1)]
    sends = [t for t in drive(SlidingWindowLimiter(rate), arrivals) if t < horizon]
    assert max_in_any_window(sends, rate.window) <= rate.count
    assert len(sends) >= 0.9 * rate.count * windows


def test_delay_counts_down_to_the_oldest_send_leaving_the_window() -> None:
    limiter = SlidingWindowLimiter(Rate(2, 60.0))
    assert limiter.delay(0.0) == 0.0
    record(limiter, 0.0)
    assert limiter.delay(1.0) == 0.0
    record(limiter, 10.0)
    assert limiter.delay(10.0) == pytest.approx(50.0)
    assert limiter.delay(59.0) == pytest.approx(1.0)
    assert limiter.delay(60.0) == 0.0
    record(limiter, 60.0)
    # The oldest in the window is now the send at 10.
    assert limiter.delay(60.0) == pytest.approx(10.0)
    assert limiter.delay(1000.0) == 0.0


# Sends that take time: the window counts from when a send finished ---------------------


def test_an_unfinished_send_blocks_its_slot() -> None:
    limiter = SlidingWindowLimiter(Rate(2, 10.0))
    first = limiter.start(0.0)
    assert limiter.delay(0.0) == 0.0
    second = limiter.start(0.0)
    assert math.isinf(limiter.delay(0.0))
    assert math.isinf(limiter.delay(1000.0))  # however long it takes
    second.done_at = 0.5  # the newer one finishing does not free the oldest slot
    assert math.isinf(limiter.delay(1000.0))
    first.done_at = 3.0
    assert limiter.delay(3.0) == pytest.approx(10.0)
    assert limiter.delay(13.0) == 0.0
    limiter.start(0.0)
    # Now the oldest in the log is `second`, finished at 0.5: free since 10.5.
    assert limiter.delay(13.0) == 0.0


def test_limiter_set_starts_and_finishes_every_limit() -> None:
    per_second = SlidingWindowLimiter(Rate(1, 1.0))
    per_minute = SlidingWindowLimiter(Rate(2, 60.0))
    both = LimiterSet(per_second, per_minute)
    slots = both.start(0.0)
    assert len(slots) == 2
    assert all(isinstance(slot, Slot) and slot.done_at is None for slot in slots)
    assert math.isinf(both.delay(5.0))  # the per-second limit waits for the answer
    LimiterSet.finish(slots, 2.0)
    assert all(slot.done_at == 2.0 for slot in slots)
    assert both.delay(2.5) == pytest.approx(0.5)
    assert both.delay(3.0) == 0.0
    LimiterSet.finish(both.start(0.0), 3.0)
    assert per_minute.delay(4.0) == pytest.approx(58.0)
    assert both.delay(4.0) == pytest.approx(58.0)
    assert LimiterSet().start(0.0) == ()


def drive_with_latency(
    limiter: SlidingWindowLimiter, arrivals: list[float], latencies: list[float], split: float
) -> tuple[list[float], list[float]]:
    """Start sends in arrival order as the limiter allows, any number at once; each takes
    its latency and reaches the server `split` of the way through. Returns the start
    times and the times the server saw each request."""
    starts: list[float] = []
    seen: list[float] = []
    finishing: list[tuple[float, int]] = []
    slots: list[Slot] = []
    now, index = 0.0, 0
    while index < len(arrivals) or finishing:
        while finishing and finishing[0][0] <= now:
            done_at, which = heapq.heappop(finishing)
            slots[which].done_at = done_at
        while index < len(arrivals) and arrivals[index] <= now and limiter.delay(now) == 0.0:
            latency = latencies[index % len(latencies)]
            slots.append(limiter.start(0.0))
            starts.append(now)
            seen.append(now + split * latency)
            heapq.heappush(finishing, (now + latency, len(slots) - 1))
            index += 1
        if index == len(arrivals) and not finishing:
            break
        wakes = [finishing[0][0]] if finishing else []
        if index < len(arrivals):
            wait = limiter.delay(now)
            if wait == 0.0:
                wakes.append(max(arrivals[index], now))
            elif not math.isinf(wait):
                wakes.append(now + wait)
        assert wakes, "the limiter is stuck with nothing under way"
        now = max(now, min(wakes))
    return starts, seen


@settings(max_examples=80, deadline=None)
@given(
    rate=rates,
    gaps=arrival_gaps,
    latencies=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=10),
    split=st.floats(0.0, 1.0),
)
def test_with_latency_the_server_never_sees_more_than_n_per_window(
    rate: Rate, gaps: list[float], latencies: list[float], split: float
) -> None:
    """Whenever during a send the server counts it, no interval of W holds more than N."""
    starts, seen = drive_with_latency(
        SlidingWindowLimiter(rate), cumulative(gaps), latencies, split
    )
    assert starts == sorted(starts)
    assert len(starts) == len(gaps)
    assert max_in_any_window(sorted(seen), rate.window) <= rate.count


@settings(max_examples=50, deadline=None)
@given(count=st.integers(1, 20), windows=st.integers(5, 30), latency_share=st.floats(0.0, 0.05))
def test_with_latency_a_saturated_stream_still_gets_most_of_the_allowance(
    count: int, windows: int, latency_share: float
) -> None:
    """Round trips short against the window cost little: ≥ 90% of N per W."""
    rate = Rate(count, 60.0)
    latency = latency_share * rate.window
    starts, _ = drive_with_latency(
        SlidingWindowLimiter(rate), [0.0] * (count * windows), [latency], 0.5
    )
    elapsed = starts[-1] - starts[0] + rate.window
    assert len(starts) / (elapsed / rate.window) >= 0.9 * count


# Several limits together ---------------------------------------------------------------


def test_limiter_set_takes_the_longest_delay() -> None:
    per_second = SlidingWindowLimiter(Rate(2, 1.0))
    per_minute = SlidingWindowLimiter(Rate(3, 60.0))
    both = LimiterSet(per_second, per_minute)
    for now in (0.0, 0.1):
        assert both.delay(now) == 0.0
        record(both, now)
    assert per_second.delay(0.2) == pytest.approx(0.8)
    assert both.delay(0.2) == pytest.approx(0.8)
    record(both, 1.0)
    assert per_second.delay(1.15) == 0.0
    assert per_minute.delay(1.15) == pytest.approx(58.85)
    assert both.delay(1.15) == pytest.approx(58.85)


def test_empty_limiter_set_is_unlimited() -> None:
    empty = LimiterSet()
    for i in range(1000):
        assert empty.delay(float(i) * 1e-6) == 0.0
        record(empty, float(i) * 1e-6)


@settings(max_examples=60, deadline=None)
@given(first=rates, second=rates, gaps=arrival_gaps)
def test_limiter_set_honours_every_limit(first: Rate, second: Rate, gaps: list[float]) -> None:
    sends = drive(
        LimiterSet(SlidingWindowLimiter(first), SlidingWindowLimiter(second)), cumulative(gaps)
    )
    assert max_in_any_window(sends, first.window) <= first.count
    assert max_in_any_window(sends, second.window) <= second.count


def test_shared_limiter_counts_sends_of_both_sets() -> None:
    """The pipeline gives both tools the same global limiter object: one budget."""
    shared = SlidingWindowLimiter(Rate(2, 1.0))
    login = LimiterSet(shared, SlidingWindowLimiter(Rate(100, 1.0)))
    logout = LimiterSet(shared)
    record(login, 0.0)
    record(logout, 0.0)
    assert login.delay(0.5) == pytest.approx(0.5)
    assert logout.delay(0.5) == pytest.approx(0.5)


def test_local_backend_gives_limits_naming_one_counter_one_limiter() -> None:
    backend = LocalLimits()
    login = backend.limiter(Rate(5, 60.0, counter="per-grant"))
    logout = backend.limiter(Rate(5, 60.0, counter="per-grant"))
    assert login is logout
    assert backend.limiter(Rate(5, 60.0)) is not backend.limiter(Rate(5, 60.0))
    record(login, 0.0)
    assert logout.delay(0.0) == 0.0
    for _ in range(4):
        record(logout, 0.0)
    assert login.delay(1.0) == pytest.approx(59.0)
