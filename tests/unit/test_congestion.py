"""Learning the server's real capacity from its 429s: AIMD on the send rate."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import pytest

from forwarder.congestion import AdaptiveRate


def test_no_ceiling_before_any_429() -> None:
    adaptive = AdaptiveRate()
    assert adaptive.rate is None
    for i in range(1000):
        now = i * 0.0001
        assert adaptive.delay(now) == 0.0
        adaptive.record(now)
        adaptive.on_accepted(now)
    assert adaptive.rate is None


def test_first_429_caps_near_what_was_accepted_in_the_last_second() -> None:
    adaptive = AdaptiveRate(decrease=0.8)
    for i in range(200):  # 200 accepted over the first 2 s
        adaptive.on_accepted(i * 0.01)
    # In (1.0, 2.0]: the acceptances at 1.00 (exactly a second before) is out: 99 remain.
    assert adaptive.on_throttled(2.0, sent_at=1.99)
    assert adaptive.rate == pytest.approx(99 * 0.8)


def test_first_429_with_nothing_accepted_falls_to_the_floor() -> None:
    adaptive = AdaptiveRate(floor=2.0)
    assert adaptive.on_throttled(5.0, sent_at=4.9)
    assert adaptive.rate == 2.0


def test_only_one_cut_per_episode() -> None:
    adaptive = AdaptiveRate(decrease=0.5)
    for i in range(100):
        adaptive.on_accepted(i * 0.01)
    assert adaptive.on_throttled(1.0, sent_at=0.95)
    after_first = adaptive.rate
    assert after_first == pytest.approx(99 * 0.5)
    # Late news: 429s for sends made before the cut change nothing.
    for i in range(50):
        assert not adaptive.on_throttled(1.0 + i * 0.001, sent_at=0.99)
    assert adaptive.rate == after_first
    # A 429 for a send made after the cut is a new episode: cut again, from the rate.
    assert adaptive.on_throttled(1.2, sent_at=1.1)
    assert adaptive.rate == pytest.approx(99 * 0.25)


def test_cuts_never_go_below_the_floor() -> None:
    adaptive = AdaptiveRate(decrease=0.5, floor=1.0)
    now = 0.0
    for _ in range(50):
        adaptive.on_throttled(now, sent_at=now)
        now += 1.0
    assert adaptive.rate == 1.0


def test_successes_raise_the_rate() -> None:
    adaptive = AdaptiveRate(increase=0.05)
    adaptive.on_throttled(0.0, sent_at=0.0)  # rate at the floor
    assert adaptive.rate == 1.0
    rates = []
    for i in range(1, 200):
        adaptive.on_accepted(i * 0.01)
        assert adaptive.rate is not None
        rates.append(adaptive.rate)
    assert rates == sorted(rates)
    assert rates[-1] > 1.0


def test_increase_is_about_increase_fraction_per_second_at_high_rates() -> None:
    adaptive = AdaptiveRate(decrease=1.0, increase=0.05)
    for i in range(1000):
        adaptive.on_accepted(i * 0.001)
    adaptive.on_throttled(1.0, sent_at=1.0)
    start = adaptive.rate
    assert start is not None
    assert start == pytest.approx(999.0)
    # One second of acceptances at that rate raises it by about 5%.
    for i in range(round(start)):
        adaptive.on_accepted(1.0 + i / start)
    assert adaptive.rate == pytest.approx(start * 1.05, rel=0.01)


def test_pacing_spaces_sends_by_one_over_the_rate() -> None:
    adaptive = AdaptiveRate(decrease=0.5)
    for i in range(20):
        adaptive.on_accepted(0.5 + i * 0.01)
    adaptive.on_throttled(1.0, sent_at=1.0)
    assert adaptive.rate == pytest.approx(10.0)
    # Right after the cut the next send waits one interval.
    assert adaptive.delay(1.0) == pytest.approx(0.1)
    now, sends = 1.0, list[float]()
    while len(sends) < 20:
        wait = adaptive.delay(now)
        if wait > 0:
            now += wait
            continue
        adaptive.record(now)
        sends.append(now)
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert all(gap == pytest.approx(0.1) for gap in gaps)


def test_pacing_does_not_bank_idle_time() -> None:
    """After a quiet spell, sends do not come in a burst to make up for it."""
    adaptive = AdaptiveRate(decrease=0.5)
    adaptive.on_throttled(0.0, sent_at=0.0)
    adaptive.rate = 4.0
    adaptive.record(10.0)
    assert adaptive.delay(10.0) == pytest.approx(0.25)
    assert adaptive.delay(10.1) == pytest.approx(0.15)


def test_ceiling_is_forgotten_after_a_quiet_period() -> None:
    adaptive = AdaptiveRate(forget_after=60.0)
    adaptive.on_throttled(100.0, sent_at=100.0)
    assert adaptive.rate is not None
    adaptive.record(100.0)
    adaptive.record(100.0)
    assert adaptive.delay(100.0) > 0.0
    assert adaptive.delay(159.0) == 0.0  # paced, not yet forgotten
    assert adaptive.rate is not None
    adaptive.record(159.0)
    adaptive.record(159.0)
    assert adaptive.delay(159.0) > 0.0
    assert adaptive.delay(160.5) == 0.0
    assert adaptive.rate is None
    adaptive.record(160.5)
    assert adaptive.delay(160.5) == 0.0  # unpaced again


def test_a_new_429_restarts_the_forget_clock() -> None:
    adaptive = AdaptiveRate(forget_after=60.0)
    adaptive.on_throttled(0.0, sent_at=0.0)
    adaptive.on_throttled(50.0, sent_at=49.0)
    adaptive.delay(100.0)
    assert adaptive.rate is not None
    adaptive.delay(111.0)
    assert adaptive.rate is None


# Against a rate-limited server ------------------------------------------------------------


@dataclass
class Result:
    sent: int
    accepted: int
    throttled: int
    seconds: float
    final_rate: float | None

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
    seconds: float = 30.0,
    max_in_flight: int = 64,
    accept_latency: float = 0.02,
    throttle_latency: float = 0.02,
) -> Result:
    """A fast client with an endless backlog, held only by the limiter and an in-flight
    bound, against a server with a token bucket that answers 429 when it is empty."""
    adaptive = AdaptiveRate()
    tokens, refilled_at = burst, 0.0
    answers: list[tuple[float, int, float, bool]] = []
    order = itertools.count()
    now, in_flight, sent, accepted, throttled = 0.0, 0, 0, 0, 0
    while now < seconds:
        while answers and answers[0][0] <= now:
            at, _, sent_at, ok = heapq.heappop(answers)
            in_flight -= 1
            if ok:
                adaptive.on_accepted(at)
            else:
                adaptive.on_throttled(at, sent_at)
        while in_flight < max_in_flight and adaptive.delay(now) == 0.0:
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
            wakes.append(now + max(adaptive.delay(now), 1e-6))
        now = min(wakes)
    return Result(sent, accepted, throttled, seconds, adaptive.rate)


def test_against_a_server_accepting_100_per_second() -> None:
    result = simulate()
    assert result.throttled_fraction < 0.30
    assert result.throughput >= 80.0
    # The server did push back, and the limiter learned a rate near its capacity.
    assert result.throttled > 0
    assert result.final_rate is not None
    assert 70.0 <= result.final_rate <= 130.0


@pytest.mark.parametrize(
    ("accept_latency", "throttle_latency", "max_in_flight"),
    [(0.002, 0.002, 64), (0.2, 0.2, 64), (0.05, 0.005, 64), (0.02, 0.02, 8), (0.02, 0.02, 256)],
)
def test_against_a_server_accepting_100_per_second_other_client_shapes(
    accept_latency: float, throttle_latency: float, max_in_flight: int
) -> None:
    result = simulate(
        accept_latency=accept_latency,
        throttle_latency=throttle_latency,
        max_in_flight=max_in_flight,
    )
    assert result.throttled_fraction < 0.30
    assert result.throughput >= 80.0
