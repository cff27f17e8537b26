"""Reading dead letters back: the x-forwarder-* headers parsed, stripped for replay, and
the selection by reason and time that `dlq show` and `dlq replay` apply."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.core.dead_letters import (
    HEADER_PREFIX,
    INVALID_JSON,
    REASONS,
    REJECTED,
    RETRIES_EXHAUSTED,
    DeadLetter,
    Selection,
    Unreadable,
    dead_letter_headers,
    original_headers,
    parse_moment,
    read_dead_letter,
)
from forwarder.core.events import SourceRecord

NOW = 1_700_000_000.0


def source(headers: tuple[tuple[str, bytes], ...] = ()) -> SourceRecord:
    return SourceRecord("auth-events", 2, 41, b"user-7", b'{"event_id": "e-1"}', headers, 1)


def in_dlq(
    headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...],
    timestamp_ms: int = 1_700_000_000_000,
    value: bytes | None = b'{"event_id": "e-1"}',
) -> SourceRecord:
    """A record as read from the dead-letter topic."""
    return SourceRecord("auth-events.dlq", 0, 9, b"user-7", value, tuple(headers), timestamp_ms)


def letter(reason: str = REJECTED, timestamp_ms: int = 1_700_000_000_000) -> DeadLetter:
    item = read_dead_letter(in_dlq(dead_letter_headers(source(), reason, "d", 1), timestamp_ms))
    assert isinstance(item, DeadLetter)
    return item


header_names = st.text(min_size=1, max_size=12).filter(lambda n: not n.startswith(HEADER_PREFIX))
own_headers = st.lists(st.tuples(header_names, st.binary(max_size=20)), max_size=6).map(tuple)


@given(
    topic=st.text(min_size=1, max_size=30),
    partition=st.integers(0, 10_000),
    offset=st.integers(0, 2**62),
    headers=own_headers,
    reason=st.sampled_from(REASONS),
    detail=st.text(max_size=100),
    attempts=st.integers(0, 10_000),
    status=st.none() | st.integers(100, 599),
    body=st.none() | st.binary(max_size=200),
)
def test_what_is_written_reads_back(
    topic: str,
    partition: int,
    offset: int,
    headers: tuple[tuple[str, bytes], ...],
    reason: str,
    detail: str,
    attempts: int,
    status: int | None,
    body: bytes | None,
) -> None:
    record = SourceRecord(topic, partition, offset, b"k", b"v", headers, 5)
    written = dead_letter_headers(record, reason, detail, attempts, status=status, body=body)
    item = read_dead_letter(in_dlq(written))
    assert isinstance(item, DeadLetter)
    assert (item.reason, item.source_topic, item.source_partition, item.source_offset) == (
        reason,
        topic,
        partition,
        offset,
    )
    assert item.attempts == attempts
    assert item.detail == detail.encode("utf-8", "replace").decode()
    assert item.http_status == status
    assert item.response_body == body
    assert item.replay_headers == headers, "the record's own headers, byte for byte, in order"


def test_replay_headers_drop_every_forwarder_header_and_keep_repeats() -> None:
    own = (("traceparent", b"00-abc-01"), ("dup", b"1"), ("dup", b"2"))
    stale = (("x-forwarder-error-reason", b"rejected"), ("x-forwarder-custom", b"?"))
    item = read_dead_letter(in_dlq(dead_letter_headers(source(own + stale), REJECTED, "d", 1)))
    assert isinstance(item, DeadLetter)
    assert item.replay_headers == own
    assert original_headers(own + stale) == own


def test_the_last_occurrence_of_a_header_counts() -> None:
    headers = [*dead_letter_headers(source(), REJECTED, "d", 1), ("x-forwarder-attempts", b"3")]
    item = read_dead_letter(in_dlq(headers))
    assert isinstance(item, DeadLetter)
    assert item.attempts == 3


def test_optional_headers_may_be_missing() -> None:
    headers = [
        ("x-forwarder-error-reason", b"invalid_json"),
        ("x-forwarder-source-topic", b"t"),
        ("x-forwarder-source-partition", b"0"),
        ("x-forwarder-source-offset", b"5"),
    ]
    item = read_dead_letter(in_dlq(headers))
    assert isinstance(item, DeadLetter)
    assert (item.detail, item.attempts, item.http_status, item.response_body) == ("", 0, None, None)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("x-forwarder-source-partition", None), "no x-forwarder-source-partition header"),
        (("x-forwarder-error-reason", None), "no x-forwarder-error-reason header"),
        (("x-forwarder-source-offset", b"12a"), "x-forwarder-source-offset is not a number"),
        (("x-forwarder-http-status", b"four hundred"), "x-forwarder-http-status is not a number"),
        (("x-forwarder-error-reason", b"\xff\xfe"), "x-forwarder-error-reason is not UTF-8"),
        (("x-forwarder-source-topic", b""), "empty x-forwarder-source-topic header"),
    ],
)
def test_a_record_without_usable_headers_is_unreadable_not_an_error(
    change: tuple[str, bytes | None], problem: str
) -> None:
    name, value = change
    headers = [
        (n, v) for n, v in dead_letter_headers(source(), REJECTED, "d", 1, status=400) if n != name
    ]
    if value is not None:
        headers.append((name, value))
    item = read_dead_letter(in_dlq(headers))
    assert isinstance(item, Unreadable)
    assert item.problem.startswith(problem)


def test_a_record_with_no_headers_at_all_is_unreadable() -> None:
    item = read_dead_letter(in_dlq([("traceparent", b"x")]))
    assert item == Unreadable(in_dlq([("traceparent", b"x")]), "no x-forwarder-error-reason header")


def test_selection_by_reason() -> None:
    selection = Selection(frozenset({REJECTED, RETRIES_EXHAUSTED}))
    assert selection.matches(letter(REJECTED))
    assert selection.matches(letter(RETRIES_EXHAUSTED))
    assert not selection.matches(letter(INVALID_JSON))


def test_selection_window_includes_since_and_excludes_until() -> None:
    selection = Selection(since_ms=1_000, until_ms=2_000)
    assert not selection.matches(letter(timestamp_ms=999))
    assert selection.matches(letter(timestamp_ms=1_000))
    assert selection.matches(letter(timestamp_ms=1_999))
    assert not selection.matches(letter(timestamp_ms=2_000))


def test_unreadable_records_match_only_without_a_reason_filter() -> None:
    unreadable = read_dead_letter(in_dlq([], timestamp_ms=1_500))
    assert Selection().matches(unreadable)
    assert Selection(since_ms=1_000).matches(unreadable)
    assert not Selection(until_ms=1_000).matches(unreadable)
    assert not Selection(frozenset({REJECTED})).matches(unreadable)


@given(
    reasons=st.frozensets(st.sampled_from(REASONS)),
    since=st.none() | st.integers(0, 100),
    length=st.integers(1, 100),
    reason=st.sampled_from(REASONS),
    moment=st.integers(0, 250),
)
def test_selection_is_the_conjunction_of_its_parts(
    reasons: frozenset[str], since: int | None, length: int, reason: str, moment: int
) -> None:
    until = None if since is None else since + length
    item = letter(reason, moment)
    expected = (
        (not reasons or reason in reasons)
        and (since is None or moment >= since)
        and (until is None or moment < until)
    )
    assert Selection(reasons, since, until).matches(item) == expected


def test_selection_refuses_an_empty_window_and_unknown_reasons() -> None:
    with pytest.raises(ValueError, match="--since is not before --until"):
        Selection(since_ms=5, until_ms=5)
    with pytest.raises(ValueError, match="unknown reason"):
        Selection(frozenset({"rejectd"}))


@pytest.mark.parametrize(
    ("text", "seconds_ago"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86_400),
        ("1w", 604_800),
        ("1h30m", 5400),
        ("1.5h", 5400),
        (" 2H ", 7200),
        ("1h 30m", 5400),
    ],
)
def test_ages_count_back_from_now(text: str, seconds_ago: float) -> None:
    assert parse_moment(text, NOW) == NOW - seconds_ago


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01 12:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
    ],
)
def test_iso_times_are_utc_unless_they_say_otherwise(text: str, expected: datetime) -> None:
    assert parse_moment(text, NOW) == expected.timestamp()


@pytest.mark.parametrize("text", ["", "yesterday", "2h ago", "5", "-2h", "2024-13-01", "h"])
def test_anything_else_is_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"neither an ISO-8601 time .* nor an age such as 30m"):
        parse_moment(text, NOW)
