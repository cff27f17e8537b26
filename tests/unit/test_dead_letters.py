"""Dead-letter headers: the original record's own, plus why and where it came from."""

from __future__ import annotations

import pytest

from forwarder.core.dead_letters import (
    DENIED_BY_POLICY,
    EMPTY_VALUE,
    INVALID_EVENT,
    INVALID_JSON,
    MAX_BODY_BYTES,
    MAX_DETAIL_BYTES,
    REJECTED,
    RETRIES_EXHAUSTED,
    dead_letter_headers,
)
from forwarder.core.events import SourceRecord
from tests import factories

REQUIRED = (
    "x-forwarder-error-reason",
    "x-forwarder-error-detail",
    "x-forwarder-source-topic",
    "x-forwarder-source-partition",
    "x-forwarder-source-offset",
    "x-forwarder-attempts",
)


def record(headers: tuple[tuple[str, bytes], ...] = ()) -> SourceRecord:
    return factories.record(
        b'{"event_id": "e"}',
        topic="auth-events",
        partition=3,
        offset=123456789012,
        key=b"user-1",
        headers=headers,
        timestamp_ms=1_700_000_000_000,
    )


def as_dict(headers: list[tuple[str, bytes]]) -> dict[str, bytes]:
    names = [name for name, _ in headers if name.startswith("x-forwarder-")]
    assert len(names) == len(set(names)), "each forwarder header once"
    return dict(headers)


def test_reason_names_match_the_issue() -> None:
    assert {INVALID_JSON, INVALID_EVENT, EMPTY_VALUE, REJECTED, RETRIES_EXHAUSTED} | {
        DENIED_BY_POLICY
    } == {
        "invalid_json",
        "invalid_event",
        "empty_value",
        "rejected",
        "retries_exhausted",
        "denied_by_policy",
    }


def test_all_six_headers_with_their_values() -> None:
    headers = as_dict(dead_letter_headers(record(), INVALID_EVENT, "field 'type' is bad", 0))
    assert headers["x-forwarder-error-reason"] == b"invalid_event"
    assert headers["x-forwarder-error-detail"] == b"field 'type' is bad"
    assert headers["x-forwarder-source-topic"] == b"auth-events"
    assert headers["x-forwarder-source-partition"] == b"3"
    assert headers["x-forwarder-source-offset"] == b"123456789012"
    assert headers["x-forwarder-attempts"] == b"0"
    assert set(REQUIRED) <= set(headers)
    assert "x-forwarder-http-status" not in headers
    assert "x-forwarder-response-body" not in headers


def test_original_headers_are_kept_in_order_before_ours() -> None:
    original = (("traceparent", b"00-abc-01"), ("ce_id", b"e-1"), ("dup", b"1"), ("dup", b"2"))
    headers = dead_letter_headers(record(original), REJECTED, "legiti answered 400", 1)
    assert headers[: len(original)] == list(original)
    assert [name for name, _ in headers[len(original) :]] == list(REQUIRED)


def test_older_forwarder_headers_are_dropped() -> None:
    """A replayed dead letter that fails again carries one reason, not two."""
    original = (
        ("x-forwarder-error-reason", b"rejected"),
        ("x-forwarder-http-status", b"400"),
        ("x-forwarder-response-body", b"old"),
        ("keep-me", b"yes"),
    )
    headers = dead_letter_headers(record(original), RETRIES_EXHAUSTED, "gave up", 7)
    values = as_dict(headers)
    assert values["x-forwarder-error-reason"] == b"retries_exhausted"
    assert values["x-forwarder-attempts"] == b"7"
    assert "x-forwarder-http-status" not in values
    assert "x-forwarder-response-body" not in values
    assert values["keep-me"] == b"yes"


def test_http_status_and_body_when_given() -> None:
    body = b'{"error_message": {"user_id": ["bad"]}}'
    headers = as_dict(
        dead_letter_headers(record(), REJECTED, "legiti answered 422", 2, status=422, body=body)
    )
    assert headers["x-forwarder-http-status"] == b"422"
    assert headers["x-forwarder-response-body"] == body


def test_empty_body_is_still_a_body() -> None:
    headers = as_dict(dead_letter_headers(record(), REJECTED, "x", 1, status=404, body=b""))
    assert headers["x-forwarder-response-body"] == b""


def test_detail_is_clipped() -> None:
    headers = as_dict(dead_letter_headers(record(), INVALID_JSON, "x" * 10_000, 0))
    detail = headers["x-forwarder-error-detail"]
    assert len(detail) == MAX_DETAIL_BYTES
    assert detail.endswith(b"...")
    assert detail.startswith(b"x" * 100)


def test_detail_at_the_limit_is_not_clipped() -> None:
    detail = "y" * MAX_DETAIL_BYTES
    headers = as_dict(dead_letter_headers(record(), INVALID_JSON, detail, 0))
    assert headers["x-forwarder-error-detail"] == detail.encode()


def test_body_is_clipped() -> None:
    body = b"z" * (MAX_BODY_BYTES + 1)
    headers = as_dict(dead_letter_headers(record(), REJECTED, "d", 1, status=400, body=body))
    clipped = headers["x-forwarder-response-body"]
    assert len(clipped) == MAX_BODY_BYTES
    assert clipped.endswith(b"...")


@pytest.mark.parametrize("detail", ["ünïcode ✓", "surrogate \ud800 inside"])
def test_detail_is_utf8_whatever_it_contains(detail: str) -> None:
    headers = as_dict(dead_letter_headers(record(), INVALID_EVENT, detail, 0))
    assert headers["x-forwarder-error-detail"].decode("utf-8")


def test_record_itself_is_not_changed() -> None:
    original = record((("x-forwarder-error-reason", b"old"),))
    dead_letter_headers(original, REJECTED, "d", 1)
    assert original.headers == (("x-forwarder-error-reason", b"old"),)
