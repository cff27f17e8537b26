"""The send gate: what each answer changes for every later send, driven with plain numbers."""

from __future__ import annotations

import math

import pytest

from forwarder.config import LimitSettings, RetrySettings
from forwarder.core.events import TRACK_LOGIN, TRACK_LOGOUT
from forwarder.core.halts import HaltState
from forwarder.core.policy import ALLOW_ALL
from forwarder.limits.gate import SendGate
from forwarder.limits.rate import Rate
from forwarder.limits.sliding_log import LocalLimits
from forwarder.ops.metrics import Metrics
from forwarder.sinks.outcome import (
    Delivered,
    Misconfigured,
    Outcome,
    Rejected,
    Retry,
    Unauthorized,
)

OK = Delivered("201")
OUTAGE = Retry("503", "HTTP 503", outage=True)
THROTTLED = Retry("429", "HTTP 429", throttled=True)
REFUSED = Unauthorized("401", "legiti answered 401")


def gate(limits: LimitSettings | None = None, min_requests: int = 4) -> tuple[SendGate, Metrics]:
    metrics = Metrics()
    retry = RetrySettings(circuit_min_requests=min_requests, circuit_window_seconds=100.0)
    return (
        SendGate.build(limits or LimitSettings(), retry, ALLOW_ALL, LocalLimits(), metrics),
        metrics,
    )


def send(gate: SendGate, outcome: Outcome, now: float, tool: str = TRACK_LOGIN) -> None:
    ticket = gate.launch(tool, now)
    gate.finish(ticket, now)
    gate.observe(outcome, ticket, now, in_flight=0, user="u")


def test_429s_count_as_neither_so_the_5xx_among_them_open_the_circuit() -> None:
    """Counted as successes (as the pipeline once did), 429s would dilute the ratio."""
    sends, metrics = gate(min_requests=4)
    for i in range(40):
        send(sends, THROTTLED, i * 0.001)
    for i in range(4):
        send(sends, OUTAGE, 1.0 + i * 0.001)
    assert not sends.circuit_closed
    assert metrics.registry.get_sample_value("forwarder_circuit_state") == HaltState.OPEN


def test_refused_tokens_count_as_neither_for_the_circuit() -> None:
    sends, _ = gate(min_requests=4)
    send(sends, REFUSED, 0.0)  # the credentials halt opens
    sends.credentials.close()
    for i in range(30):
        sends.circuit.record(float(i) * 0.01, failed=None, probe=False)
    for i in range(4):
        send(sends, OUTAGE, 1.0 + i * 0.001)
    assert not sends.circuit_closed


def test_a_429_pauses_every_send_for_its_retry_after() -> None:
    sends, _ = gate()
    send(sends, Retry("429", "HTTP 429", retry_after=5.0, throttled=True), 10.0)
    assert sends.wait(10.0) == pytest.approx(5.0)
    assert sends.wait(15.0) <= 0


def test_a_429_lowers_the_learned_rate_for_both_tools() -> None:
    sends, _ = gate()
    for i in range(100):
        send(sends, OK, i * 0.01)
    send(sends, THROTTLED, 1.0)
    assert sends.limit_delay(TRACK_LOGOUT, 1.0) > 0
    assert sends.limit_delay(TRACK_LOGIN, 1.0) > 0


def test_401_halts_everything_until_a_probe_succeeds() -> None:
    sends, metrics = gate()
    send(sends, REFUSED, 0.0)
    assert not sends.authorized
    assert metrics.registry.get_sample_value("forwarder_credentials_valid") == 0
    assert sends.wait(0.5) > 0
    probe = sends.launch(TRACK_LOGIN, sends.wait(0.0))
    assert math.isinf(sends.wait(1.0))  # nothing else while the probe is out
    sends.observe(OK, probe, 1.2, in_flight=0, user="u")
    assert sends.authorized
    assert metrics.registry.get_sample_value("forwarder_credentials_valid") == 1


def test_a_401_for_a_send_made_before_the_halt_is_stale_news() -> None:
    sends, _ = gate()
    early = sends.launch(TRACK_LOGIN, 0.0)
    send(sends, REFUSED, 0.1)
    probe = sends.launch(TRACK_LOGIN, 2.0)
    sends.observe(OK, probe, 2.1, in_flight=1, user="u")
    # Answered late, and sent before the probe proved the token good.
    sends.observe(REFUSED, early, 2.2, in_flight=0, user="u")
    assert sends.authorized


def test_misconfigured_halts_without_touching_credentials_and_a_probe_heals_it() -> None:
    sends, metrics = gate()
    send(sends, Misconfigured("404", "the URL answers 404"), 0.0)
    assert not sends.configured
    assert sends.authorized
    assert metrics.registry.get_sample_value("forwarder_sink_misconfigured") == 1
    probe = sends.launch(TRACK_LOGIN, 5.0)
    sends.observe(OK, probe, 5.1, in_flight=0, user="u")
    assert sends.configured
    assert metrics.registry.get_sample_value("forwarder_sink_misconfigured") == 0


def test_a_sink_that_cannot_start_holds_every_send_until_a_probe_gets_through() -> None:
    """What `Sink.open` found before the first send halts like a Misconfigured answer."""
    sends, metrics = gate()
    sends.misconfigured(Misconfigured("open", "no tool 'track_logout'"), 0.0)
    assert not sends.configured
    assert sends.wait(0.5) > 0
    assert metrics.registry.get_sample_value("forwarder_sink_misconfigured") == 1
    assert sends.wait(1.0) <= 0  # the first probe, a second later
    probe = sends.launch(TRACK_LOGIN, 1.0)
    sends.observe(OK, probe, 1.1, in_flight=0, user="u")
    assert sends.configured
    assert metrics.registry.get_sample_value("forwarder_sink_misconfigured") == 0


def test_a_rejection_is_the_events_business_not_the_gates() -> None:
    sends, _ = gate(min_requests=1)
    send(sends, Rejected("400", "legiti answered 400", b"", 400), 0.0)
    assert sends.wait(0.0) <= 0
    assert sends.circuit_closed
    assert sends.authorized
    assert sends.configured


def test_limits_of_one_tool_do_not_hold_the_other() -> None:
    sends, _ = gate(LimitSettings(rate_limit_login=Rate(1, 60.0)))
    send(sends, OK, 0.0, TRACK_LOGIN)
    assert sends.limit_delay(TRACK_LOGIN, 1.0) == pytest.approx(59.0)
    assert sends.limit_delay(TRACK_LOGOUT, 1.0) == 0.0


def test_the_global_limit_holds_both_tools() -> None:
    sends, _ = gate(LimitSettings(rate_limit=Rate(2, 10.0)))
    send(sends, OK, 0.0, TRACK_LOGIN)
    send(sends, OK, 0.0, TRACK_LOGOUT)
    assert sends.limit_delay(TRACK_LOGIN, 1.0) == pytest.approx(9.0)
    assert sends.limit_delay(TRACK_LOGOUT, 1.0) == pytest.approx(9.0)


@pytest.mark.parametrize(
    "answer", [Retry("timeout", "no answer", outage=True), THROTTLED, OUTAGE], ids=str
)
def test_only_a_success_closes_the_credentials_halt(answer: Outcome) -> None:
    """A timed-out probe once released every waiting request with the bad token."""
    sends, _ = gate()
    send(sends, REFUSED, 0.0)
    probe = sends.launch(TRACK_LOGIN, 1.0)
    sends.observe(answer, probe, 1.5, in_flight=0, user="u")
    assert not sends.authorized
    assert sends.wait(1.5) > 0  # the next probe waits its pause


def test_new_credentials_are_tried_at_once_even_while_a_probe_is_out() -> None:
    sends, _ = gate()
    send(sends, REFUSED, 0.0)
    old_probe = sends.launch(TRACK_LOGIN, 1.0)
    assert math.isinf(sends.wait(1.1))
    sends.credentials_changed(1.2)
    assert sends.wait(1.2) <= 0
    new_probe = sends.launch(TRACK_LOGIN, 1.2)
    sends.observe(OK, new_probe, 1.3, in_flight=1, user="u")
    sends.observe(REFUSED, old_probe, 1.4, in_flight=0, user="u")  # old token's answer, late
    assert sends.authorized


def test_the_same_4xx_for_many_users_is_a_misconfiguration_not_bad_events() -> None:
    """Issue 14.4: a gateway rule or a wrong path rejecting everything must not empty the
    stream into the dead-letter topic."""
    sends, _ = gate()
    rejected = Rejected("422", "legiti answered 422", b"tenant unknown", 422)
    meanings = []
    for i in range(40):
        ticket = sends.launch(TRACK_LOGIN, i * 0.01)
        meanings.append(sends.observe(rejected, ticket, i * 0.01, in_flight=0, user=f"u{i}"))
    assert isinstance(meanings[0], Rejected)  # one user's bad events are still dead letters
    assert isinstance(meanings[-1], Misconfigured)
    assert not sends.configured
    first_halt = next(i for i, m in enumerate(meanings) if isinstance(m, Misconfigured))
    assert first_halt <= 25


def test_one_users_rejections_never_halt() -> None:
    sends, _ = gate()
    rejected = Rejected("400", "legiti answered 400", b"", 400)
    for i in range(200):
        ticket = sends.launch(TRACK_LOGIN, i * 0.01)
        meaning = sends.observe(rejected, ticket, i * 0.01, in_flight=0, user="one-bad-user")
        assert isinstance(meaning, Rejected)
    assert sends.configured
