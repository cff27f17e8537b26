"""Learning the server's real capacity from its 429s: a cubic send-rate ceiling."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import pytest

from forwarder.limits.learned_rate import AdaptiveRate


def test_no_ceiling_before_any_429() -> None:
    adaptive = AdaptiveRate()
    for i in range(1000):
        now = i * 0.0001
        assert adaptive.delay(now) == 0.0
        adaptive.record(now)
        adaptive.on_accepted(now)
    assert adaptive.ceiling(1.0) is None


def test_first_429_estimates_the_peak_from_accepted_and_in_flight() -> None:
    adaptive = AdaptiveRate(decrease=0.8)
    for i in range(200):  # 200 accepted over the first 2 s
        adaptive.on_accepted(i * 0.01)
    # In (1.0, 2.0]: the acceptance at exactly 1.00 is out, 99 remain; 21 more in flight.
    adaptive.on_throttled(2.0, sent_at=1.99, in_flight=21)
    assert adaptive.ceiling(2.0) == pytest.approx(120 * 0.8)


def test_first_429_with_nothing_known_falls_to_the_floor() -> None:
    adaptive = AdaptiveRate(floor=2.0)
    adaptive.on_throttled(5.0, sent_at=4.9, in_flight=0)
    assert adaptive.ceiling(5.0) == 2.0


def test_only_one_cut_per_episode() -> None:
    adaptive = AdaptiveRate(decrease=0.5)
    adaptive.on_throttled(1.0, sent_at=0.95, in_flight=100)
    after_first = adaptive.ceiling(1.0)
    assert after_first == pytest.approx(50)
    for i in range(50):  # late news: 429s for sends made before the cut
        adaptive.on_throttled(1.0 + i * 0.001, sent_at=0.99, in_flight=10)
        assert adaptive.ceiling(1.0) == after_first
    assert adaptive.ceiling(1.0) == after_first
    # A 429 for a send made after the cut is a new episode: the current rate is the new peak.
    current = adaptive.ceiling(1.2)
    assert current is not None
    adaptive.on_throttled(1.2, sent_at=1.1, in_flight=10)
    assert adaptive.ceiling(1.2) == pytest.approx(current * 0.5)


def test_cuts_never_go_below_the_floor() -> None:
    adaptive = AdaptiveRate(decrease=0.5, floor=1.0)
    for step in range(50):
        adaptive.on_throttled(float(step), sent_at=float(step), in_flight=0)
    assert adaptive.ceiling(49.0) == 1.0


def test_the_rate_climbs_back_to_the_peak_flattens_then_probes() -> None:
    adaptive = AdaptiveRate(decrease=0.8, recovery=4.0)
    adaptive.on_throttled(0.0, sent_at=0.0, in_flight=100)
    curve = [adaptive.ceiling(t / 10) for t in range(0, 120)]
    assert all(rate is not None for rate in curve)
    rates = [rate for rate in curve if rate is not None]
    assert rates == sorted(rates)
    assert rates[0] == pytest.approx(80)
    assert rates[40] == pytest.approx(100)  # back at the peak after `recovery` seconds
    assert rates[30] > 99
    assert rates[50] < 101
    assert rates[-1] > 150  # then it probes for more


def test_pacing_spaces_sends_by_one_over_the_rate() -> None:
    adaptive = AdaptiveRate(decrease=1.0)
    adaptive.on_throttled(0.0, sent_at=0.0, in_flight=10)  # 10 per second, flat for a while
    now = 0.0
    sends = []
    while len(sends) < 5:
        wait = adaptive.delay(now)
        if wait == 0.0:
            adaptive.record(now)
            sends.append(now)
        now += max(wait, 1e-3)
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert all(gap == pytest.approx(0.1, abs=2e-3) for gap in gaps)


def test_pacing_does_not_bank_idle_time() -> None:
    adaptive = AdaptiveRate(decrease=1.0)
    adaptive.on_throttled(0.0, sent_at=0.0, in_flight=10)
    assert adaptive.delay(5.0) == 0.0
    adaptive.record(5.0)
    assert adaptive.delay(5.0) == pytest.approx(0.1, rel=0.05)


def test_ceiling_is_forgotten_after_a_quiet_period() -> None:
    adaptive = AdaptiveRate(forget_after=60.0)
    adaptive.on_throttled(0.0, sent_at=0.0, in_flight=10)
    assert adaptive.ceiling(59.0) is not None
    assert adaptive.ceiling(61.0) is None
    assert adaptive.delay(61.0) == 0.0


# Against a rate-limited server ------------------------------------------------------------


@dataclass
class Result:
    sent: int
    accepted: int
    throttled: int
    seconds: float

    @property
    def throttled_fraction(self) -> float:
        return self.throttled / self.sent

    @property
    def throughput(self) -> float:
        return self.accepted / self.seconds


def simulate(
    *,
    server_rate: float = 100.0,
    burst: float = 100.0,
    seconds: float = 60.0,
    max_in_flight: int = 64,
    accept_latency: float = 0.02,
    throttle_latency: float = 0.02,
    retry_after: float = 0.0,
) -> Result:
    """A fast client with an endless backlog, held only by the ceiling, an in-flight bound
    and (like the pipeline) a global pause of `retry_after` after each 429, against a
    server with a token bucket that answers 429 when it is empty."""
    adaptive = AdaptiveRate()
    tokens, refilled_at = burst, 0.0
    answers: list[tuple[float, int, float, bool]] = []
    order = itertools.count()
    now, in_flight, sent, accepted, throttled, not_before = 0.0, 0, 0, 0, 0, 0.0
    while now < seconds:
        while answers and answers[0][0] <= now:
            at, _, sent_at, ok = heapq.heappop(answers)
            in_flight -= 1
            if ok:
                adaptive.on_accepted(at)
            else:
                adaptive.on_throttled(at, sent_at, in_flight)
                not_before = max(not_before, at + retry_after)
        while in_flight < max_in_flight and now >= not_before and adaptive.delay(now) == 0.0:
            adaptive.record(now)
            sent += 1
            tokens = min(burst, tokens + (now - refilled_at) * server_rate)
            refilled_at = now
            ok = tokens >= 1.0
            if ok:
                tokens -= 1.0
                accepted += 1
            else:
                throttled += 1
            latency = accept_latency if ok else throttle_latency
            heapq.heappush(answers, (now + latency, next(order), now, ok))
            in_flight += 1
        wakes = [answers[0][0]] if answers else []
        if in_flight < max_in_flight:
            wakes.append(max(now + max(adaptive.delay(now), 1e-6), not_before))
        now = min(wakes)
    return Result(sent, accepted, throttled, seconds)


@pytest.mark.parametrize(
    ("burst", "accept_latency", "throttle_latency", "max_in_flight", "retry_after"),
    [
        (100, 0.02, 0.02, 64, 0.0),
        (100, 0.02, 0.02, 64, 1.0),  # a gateway that also says Retry-After: 1
        (100, 0.002, 0.002, 64, 1.0),
        (100, 0.2, 0.2, 64, 0.0),
        (100, 0.05, 0.005, 64, 1.0),  # 429s answered faster than 201s
        (10, 0.02, 0.02, 64, 0.0),
        (1, 0.02, 0.02, 64, 0.0),  # nginx limit_req without a burst
        (100, 0.02, 0.02, 8, 0.0),
        (100, 0.02, 0.02, 256, 1.0),
    ],
)
def test_against_a_server_accepting_100_per_second(
    burst: float,
    accept_latency: float,
    throttle_latency: float,
    max_in_flight: int,
    retry_after: float,
) -> None:
    result = simulate(
        burst=burst,
        accept_latency=accept_latency,
        throttle_latency=throttle_latency,
        max_in_flight=max_in_flight,
        retry_after=retry_after,
    )
    assert result.throttled > 0, "the server must have pushed back"
    assert result.throttled_fraction < 0.05, result
    assert result.throughput >= 80.0, result
