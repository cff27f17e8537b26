"""Halting all sends during an outage or a credentials failure, and probing for recovery."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.core.halts import CircuitBreaker, Halt, HaltState


def state(halt: Halt) -> HaltState:
    """Read afresh each time (mypy would otherwise narrow `halt.state` across calls)."""
    return halt.state


def test_halt_starts_closed() -> None:
    halt = Halt(first_pause=1.0, max_pause=60.0)
    assert halt.is_closed
    assert halt.delay(0.0) == 0.0
    halt.sent()  # a normal send changes nothing
    assert state(halt) is HaltState.CLOSED


def test_halt_open_probe_half_open_close_cycle() -> None:
    halt = Halt(first_pause=1.0, max_pause=60.0)
    halt.open(10.0)
    assert state(halt) is HaltState.OPEN
    assert not halt.is_closed
    assert halt.next_probe_at == 11.0
    assert halt.delay(10.0) == pytest.approx(1.0)
    assert halt.delay(10.4) == pytest.approx(0.6)
    assert halt.delay(11.0) == 0.0
    assert halt.delay(50.0) == 0.0
    halt.sent()  # the probe
    assert state(halt) is HaltState.HALF_OPEN
    assert math.isinf(halt.delay(11.0))
    assert math.isinf(halt.delay(1e9))  # nothing else goes while the probe is out
    halt.close()
    assert halt.is_closed
    assert halt.delay(11.5) == 0.0


def test_halt_pause_doubles_per_failed_probe_up_to_the_maximum() -> None:
    halt = Halt(first_pause=1.0, max_pause=10.0)
    now, pauses = 0.0, []
    for _ in range(7):
        halt.open(now)
        pauses.append(halt.next_probe_at - now)
        now = halt.next_probe_at
        assert halt.delay(now) == 0.0
        halt.sent()
    assert pauses == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_halt_close_resets_the_pause() -> None:
    halt = Halt(first_pause=1.0, max_pause=60.0)
    for now in (0.0, 10.0, 20.0):
        halt.open(now)
    assert halt.next_probe_at == 24.0
    halt.close()
    halt.open(100.0)
    assert halt.next_probe_at == 101.0


def test_halt_many_failures_do_not_overflow() -> None:
    halt = Halt(first_pause=0.5, max_pause=60.0)
    for i in range(5000):
        halt.open(float(i))
    assert halt.next_probe_at == 4999.0 + 60.0


def test_probe_now_lets_a_new_probe_go_at_once() -> None:
    halt = Halt(first_pause=30.0, max_pause=60.0)
    halt.probe_now(5.0)  # closed: nothing to do
    assert halt.is_closed
    halt.open(10.0)
    halt.probe_now(12.0)
    assert halt.delay(12.0) == 0.0
    halt.sent()
    assert math.isinf(halt.delay(12.5))
    # New credentials while a probe is out with the old ones: try them now (issue 14.3b).
    halt.probe_now(13.0)
    assert state(halt) is HaltState.OPEN
    assert halt.delay(13.0) == 0.0


# The breaker ---------------------------------------------------------------------------


def breaker(**options: float) -> CircuitBreaker:
    settings_: dict[str, float] = {
        "failure_ratio": 0.5,
        "min_requests": 4,
        "window": 10.0,
        "max_pause": 8.0,
    }
    settings_.update(options)
    return CircuitBreaker(
        failure_ratio=settings_["failure_ratio"],
        min_requests=int(settings_["min_requests"]),
        window=settings_["window"],
        max_pause=settings_["max_pause"],
    )


def test_breaker_needs_min_requests_before_opening() -> None:
    circuit = breaker()
    for i in range(3):
        assert not circuit.record(float(i), failed=True, probe=False)
        assert circuit.halt.is_closed
    assert circuit.record(3.0, failed=True, probe=False)
    assert state(circuit.halt) is HaltState.OPEN
    assert circuit.halt.next_probe_at == 4.0


def test_breaker_opens_at_the_failure_ratio() -> None:
    circuit = breaker(failure_ratio=0.5, min_requests=4)
    circuit.record(0.0, failed=False, probe=False)
    circuit.record(0.1, failed=False, probe=False)
    circuit.record(0.2, failed=True, probe=False)
    assert circuit.halt.is_closed  # 1 of 3
    assert circuit.record(0.3, failed=True, probe=False)  # 2 of 4 = 50%
    assert not circuit.halt.is_closed


def test_breaker_stays_closed_below_the_ratio() -> None:
    circuit = breaker(failure_ratio=0.5, min_requests=4)
    for i in range(100):
        circuit.record(i * 0.01, failed=i % 3 == 2, probe=False)  # a third fail
    assert circuit.halt.is_closed


def test_breaker_does_not_open_on_a_success() -> None:
    """Only a failure can open it: a success never tips the ratio over."""
    circuit = breaker(failure_ratio=0.5, min_requests=4)
    for i in range(3):
        circuit.record(float(i) * 0.1, failed=True, probe=False)
    assert circuit.halt.is_closed
    assert not circuit.record(0.3, failed=False, probe=False)
    assert circuit.halt.is_closed
    assert circuit.record(0.4, failed=True, probe=False)  # 4 of 5


def test_old_results_slide_out_of_the_window() -> None:
    circuit = breaker(min_requests=4, window=10.0)
    for i in range(3):
        circuit.record(float(i), failed=True, probe=False)
    # At 12.5 the failures at 0, 1 and 2 are older than the window: one failure of one.
    assert not circuit.record(12.5, failed=True, probe=False)
    assert circuit.halt.is_closed
    assert not circuit.record(12.6, failed=True, probe=False)
    assert not circuit.record(12.7, failed=True, probe=False)
    assert circuit.record(12.8, failed=True, probe=False)


def test_successes_also_slide_out() -> None:
    circuit = breaker(min_requests=4, window=10.0)
    for i in range(20):
        circuit.record(i * 0.1, failed=False, probe=False)
    for i in range(3):
        circuit.record(20.0 + i, failed=True, probe=False)
    assert circuit.halt.is_closed
    assert circuit.record(23.0, failed=True, probe=False)


def test_stale_outcomes_are_ignored_while_open() -> None:
    circuit = breaker()
    for i in range(4):
        circuit.record(float(i), failed=True, probe=False)
    probe_at = circuit.halt.next_probe_at
    for i in range(50):
        # Answers to sends made before it opened: failures and successes alike.
        assert not circuit.record(3.0 + i * 0.01, failed=i % 2 == 0, probe=False)
    assert state(circuit.halt) is HaltState.OPEN
    assert circuit.halt.next_probe_at == probe_at  # not pushed out again and again


def test_probe_success_closes_and_forgets_old_failures() -> None:
    circuit = breaker()
    for i in range(4):
        circuit.record(float(i), failed=True, probe=False)
    circuit.halt.sent()  # the probe goes out
    assert state(circuit.halt) is HaltState.HALF_OPEN
    assert not circuit.record(4.5, failed=True, probe=False)  # stale, ignored
    assert state(circuit.halt) is HaltState.HALF_OPEN
    assert circuit.record(5.0, failed=False, probe=True)
    assert circuit.halt.is_closed
    # The failures before the opening are forgotten: 3 new ones do not re-open it.
    for i in range(3):
        assert not circuit.record(5.1 + i * 0.1, failed=True, probe=False)
    assert circuit.halt.is_closed


def test_probe_failure_reopens_with_a_longer_pause_capped() -> None:
    circuit = breaker(max_pause=8.0)
    for i in range(4):
        circuit.record(float(i), failed=True, probe=False)
    now = circuit.halt.next_probe_at
    pauses = [1.0]
    for _ in range(5):
        assert circuit.halt.delay(now) == 0.0
        circuit.halt.sent()
        assert circuit.record(now, failed=True, probe=True) is True  # HALF_OPEN → OPEN
        assert state(circuit.halt) is HaltState.OPEN
        pauses.append(circuit.halt.next_probe_at - now)
        now = circuit.halt.next_probe_at
    assert pauses == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    circuit.halt.sent()
    assert circuit.record(now, failed=False, probe=True)
    assert circuit.halt.is_closed
    # After closing, the next opening starts from the first pause again.
    for i in range(4):
        circuit.record(now + 1 + i * 0.01, failed=True, probe=False)
    assert circuit.halt.next_probe_at - (now + 1.03) == pytest.approx(1.0)


@settings(max_examples=100, deadline=None)
@given(
    outcomes=st.lists(st.tuples(st.floats(0.0, 3.0), st.booleans()), max_size=200),
    min_requests=st.integers(1, 10),
    ratio=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
)
def test_breaker_matches_a_sliding_window_model(
    outcomes: list[tuple[float, bool]], min_requests: int, ratio: float
) -> None:
    """While closed, it opens exactly when a failure leaves ≥ min_requests results in the
    last `window` seconds with failures ≥ ratio of them."""
    circuit = breaker(min_requests=min_requests, failure_ratio=ratio, window=10.0)
    seen: list[tuple[float, bool]] = []
    now = 0.0
    for gap, failed in outcomes:
        now += gap
        seen.append((now, failed))
        recent = [f for t, f in seen if t > now - 10.0]
        should_open = failed and len(recent) >= min_requests and sum(recent) >= ratio * len(recent)
        assert circuit.record(now, failed=failed, probe=False) == should_open
        if should_open:
            assert state(circuit.halt) is HaltState.OPEN
            circuit.halt.sent()
            circuit.record(now, failed=False, probe=True)
            assert circuit.halt.is_closed
            seen.clear()


def test_answers_that_say_nothing_about_an_outage_count_as_neither() -> None:
    """429s and refused tokens (failed=None) must not dilute the failure ratio: with
    them counted as successes, a service shedding load with 429s while failing the
    rest with 503s would never open the circuit."""
    circuit = breaker(min_requests=4)
    for i in range(50):
        assert not circuit.record(i * 0.01, failed=None, probe=False)
    for i in range(3):
        assert not circuit.record(1.0 + i * 0.01, failed=True, probe=False)
    assert circuit.record(1.1, failed=True, probe=False)  # 4 of 4 counted sends failed
    assert circuit.halt.state is HaltState.OPEN


def test_a_probe_answered_with_a_429_closes_the_circuit() -> None:
    """The probe asks "does the service answer?"; a 429 says it does."""
    circuit = breaker(min_requests=1)
    circuit.record(0.0, failed=True, probe=False)
    assert circuit.halt.state is HaltState.OPEN
    assert circuit.record(5.0, failed=None, probe=True)
    assert circuit.halt.is_closed
