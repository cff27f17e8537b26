"""What each HTTP answer from Legiti means for the event."""

from __future__ import annotations

import pytest

from forwarder.sinks.legiti.classify import classify
from forwarder.sinks.outcome import (
    Delivered,
    Misconfigured,
    Rejected,
    Retry,
    Unauthorized,
    transport_failure,
)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert classify(status, b'{"message": "ok"}', None) == Delivered(str(status))


def test_429_is_a_throttled_retry_honouring_retry_after() -> None:
    outcome = classify(429, b"slow down", 7.0)
    assert isinstance(outcome, Retry)
    assert outcome.throttled
    assert not outcome.outage  # a healthy service saying "not so fast"
    assert outcome.retry_after == 7.0
    assert outcome.code == "429"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_in_the_retry_list_is_an_outage_retry(status: int) -> None:
    outcome = classify(status, b"", 2.0)
    assert isinstance(outcome, Retry)
    assert outcome.outage
    assert not outcome.throttled
    assert outcome.retry_after == 2.0
    assert outcome.code == str(status)
    assert str(status) in outcome.detail


@pytest.mark.parametrize("status", [408, 425])
def test_408_and_425_are_retried_without_counting_as_outage(status: int) -> None:
    outcome = classify(status, b"", None)
    assert isinstance(outcome, Retry)
    assert not outcome.throttled
    assert not outcome.outage
    assert outcome.retry_after is None


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_every_status_in_the_issues_retry_list_is_retried(status: int) -> None:
    assert isinstance(classify(status, b"", None), Retry)


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_unauthorized_never_rejected(status: int) -> None:
    body = b'{"message": "bad token"}'
    assert classify(status, body, None) == Unauthorized(str(status), f"legiti answered {status}")


@pytest.mark.parametrize("status", [400, 409, 413, 422])
def test_rejections_carry_status_and_body(status: int) -> None:
    body = b'{"error_message": {"user_id": ["required"]}}'
    assert classify(status, body, None) == Rejected(
        str(status), f"legiti answered {status}", body, status
    )


@pytest.mark.parametrize("status", [402, 410, 418, 451, 499])
def test_other_4xx_are_rejected(status: int) -> None:
    assert isinstance(classify(status, b"", None), Rejected)


@pytest.mark.parametrize("status", [100, 501, 505, 599])
def test_answers_not_understood_are_retried(status: int) -> None:
    outcome = classify(status, b"", None)
    assert isinstance(outcome, Retry)
    assert outcome.outage == (status >= 500)


@pytest.mark.parametrize("code", ["timeout", "error"])
def test_transport_failures_are_outage_retries(code: str) -> None:
    outcome = transport_failure(code, "connection refused")
    assert outcome == Retry(code=code, detail="connection refused", outage=True)
    assert not outcome.throttled
    assert outcome.retry_after is None


@pytest.mark.parametrize("status", [404, 405, 301, 302, 307, 308])
def test_answers_that_mean_the_wrong_place_halt_instead_of_dead_lettering(status: int) -> None:
    """Issue 14.4: a wrong path answered 404 to everything, and every event was rejected."""
    outcome = classify(status, b"", None, "https://legiti.example/wrong/ticketing/v1/auth")
    assert isinstance(outcome, Misconfigured)
    assert outcome.code == str(status)
    assert "https://legiti.example/wrong/ticketing/v1/auth" in outcome.detail
    assert "FORWARDER_LEGITI_BASE_URL" in outcome.detail
