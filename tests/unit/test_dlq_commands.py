"""The decisions and presentation of `forwarder dlq`, without a broker: where a dead letter
is replayed to, what is counted, which dead letters `show --limit` keeps, how a dead
letter looks on a terminal and in JSON, and when the plain progress line is written."""

from __future__ import annotations

import base64
import io
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from forwarder.commands.dlq import (
    DeadLetterStats,
    NewestFirst,
    ProgressLine,
    ReplayTally,
    dead_letter_json,
    dead_letter_line,
    describe_error,
    iso_time,
    replay_target,
)
from forwarder.core.dead_letters import (
    INVALID_JSON,
    REASONS,
    REJECTED,
    RETRIES_EXHAUSTED,
    DeadLetter,
    Selection,
    Unreadable,
    dead_letter_headers,
    read_dead_letter,
)
from forwarder.core.events import SourceRecord

T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z


def dead_letter(
    reason: str = REJECTED,
    *,
    topic: str = "auth-events",
    partition: int = 3,
    status: int | None = 400,
    value: bytes | None = b'{"event_id": "e-1", "user_id": "u-1"}',
    key: bytes | None = b"e-1",
    timestamp_ms: int = T0,
    dlq_offset: int = 0,
    detail: str = "legiti answered 400",
) -> DeadLetter:
    origin = SourceRecord(topic, partition, 17, key, value, (("traceparent", b"00-1"),), 0)
    headers = dead_letter_headers(
        origin, reason, detail, 1, status=status, body=b"{}" if status else None
    )
    record = SourceRecord(
        "auth-events.dlq", 0, dlq_offset, key, value, tuple(headers), timestamp_ms
    )
    item = read_dead_letter(record)
    assert isinstance(item, DeadLetter)
    return item


def unreadable(timestamp_ms: int = T0) -> Unreadable:
    record = SourceRecord("auth-events.dlq", 0, 5, b"k", b"\xff raw", (("a", b"b"),), timestamp_ms)
    item = read_dead_letter(record)
    assert isinstance(item, Unreadable)
    return item


def test_a_dead_letter_goes_back_to_the_partition_it_came_from() -> None:
    assert replay_target(dead_letter(partition=3), Selection(), None) == ("auth-events", 3)


def test_to_topic_leaves_the_partition_to_the_key() -> None:
    assert replay_target(dead_letter(), Selection(), "auth-events-retry") == (
        "auth-events-retry",
        None,
    )


def test_not_selected_and_unreadable_are_not_replayed() -> None:
    only_rejected = Selection(frozenset({REJECTED}))
    assert replay_target(dead_letter(INVALID_JSON), only_rejected, None) is None
    assert replay_target(unreadable(), Selection(), None) is None
    assert replay_target(unreadable(), Selection(), "elsewhere") is None


def test_stats_count_by_reason_source_topic_and_rejected_status() -> None:
    stats = DeadLetterStats()
    for item in (
        dead_letter(REJECTED, status=400, timestamp_ms=T0 + 5),
        dead_letter(REJECTED, status=422, timestamp_ms=T0),
        dead_letter(REJECTED, status=400, topic="other", timestamp_ms=T0 + 9),
        dead_letter(RETRIES_EXHAUSTED, status=503, timestamp_ms=T0 + 1),
        dead_letter(INVALID_JSON, status=None, timestamp_ms=T0 + 2),
        unreadable(timestamp_ms=T0 + 20),
    ):
        stats.add(item)
    assert stats.as_json("auth-events.dlq") == {
        "topic": "auth-events.dlq",
        "total": 6,
        "by_reason": {REJECTED: 3, RETRIES_EXHAUSTED: 1, INVALID_JSON: 1},
        "by_source_topic": {"auth-events": 4, "other": 1},
        "rejected_by_http_status": {"400": 2, "422": 1},
        "unreadable": 1,
        "oldest": "2024-05-01T12:00:00.000Z",
        "newest": "2024-05-01T12:00:00.020Z",
    }
    text = "\n".join(stats.lines("auth-events.dlq"))
    assert "auth-events.dlq: 6 dead letters" in text
    assert "by reason:          rejected 3, retries_exhausted 1, invalid_json 1" in text
    assert "rejected by status: 400 2, 422 1" in text
    assert "unreadable (no x-forwarder-* headers): 1" in text


def test_an_empty_topic_has_no_oldest_or_newest() -> None:
    stats = DeadLetterStats()
    assert stats.as_json("t")["oldest"] is None
    assert list(stats.lines("t"))[:2] == ["t: 0 dead letters", "  by reason:          none"]


def test_tally_separates_replayed_passed_over_and_unreadable() -> None:
    tally = ReplayTally()
    tally.replay(dead_letter(REJECTED), "auth-events")
    tally.replay(dead_letter(REJECTED), "auth-events")
    tally.replay(dead_letter(RETRIES_EXHAUSTED), "elsewhere")
    tally.skip(dead_letter(INVALID_JSON))
    tally.skip(unreadable())
    assert tally.replayed == 3
    summary = tally.as_json()
    assert summary["replayed_by_reason"] == {REJECTED: 2, RETRIES_EXHAUSTED: 1}
    assert summary["replayed_by_topic"] == {"auth-events": 2, "elsewhere": 1}
    assert summary["passed_over_by_reason"] == {INVALID_JSON: 1}
    assert summary["unreadable"] == 1
    assert "failed: 0" in "\n".join(tally.lines(dry_run=False))
    assert "failed" not in "\n".join(tally.lines(dry_run=True))


@given(
    stamps=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3)), unique=True, max_size=40),
    limit=st.integers(1, 10),
)
def test_show_limit_keeps_the_newest_oldest_first(
    stamps: list[tuple[int, int]], limit: int
) -> None:
    newest = NewestFirst(limit)
    items = [dead_letter(timestamp_ms=T0 + moment, dlq_offset=offset) for moment, offset in stamps]
    for item in items:
        newest.add(item)

    def order(item: DeadLetter | Unreadable) -> tuple[int, int, int]:
        return (item.record.timestamp_ms, item.record.partition, item.record.offset)

    kept = newest.oldest_first()
    assert [order(item) for item in kept] == sorted(order(item) for item in items)[-limit:]


def test_a_line_carries_what_an_operator_needs() -> None:
    line = dead_letter_line(dead_letter(), width=None)
    assert line.startswith("2024-05-01T12:00:00.000Z rejected auth-events/3@17 attempts=1")
    assert "status=400" in line
    assert "key=e-1" in line
    assert 'detail="legiti answered 400"' in line
    assert line.endswith('value={"event_id": "e-1", "user_id": "u-1"}')


def test_on_a_terminal_the_value_and_detail_are_cut_to_fit() -> None:
    item = dead_letter(value=b"v" * 500, detail="d" * 300)
    line = dead_letter_line(item, width=240)
    assert len(line) == 240
    assert "v" * 20 in line
    assert line.endswith("…")
    assert "d" * 300 not in line
    assert "v" * 500 in dead_letter_line(item, width=None)


def test_unreadable_records_are_shown_with_their_problem() -> None:
    line = dead_letter_line(unreadable(), width=None)
    assert "unreadable dlq/0@5" in line
    assert "no x-forwarder-error-reason header" in line
    assert "value=\\xff raw" in line


def test_json_keeps_everything_and_base64_for_bytes_that_are_not_text() -> None:
    entry = dead_letter_json(dead_letter(value=b"\xff\x00", key=None))
    assert entry["value_base64"] == base64.b64encode(b"\xff\x00").decode()
    assert "value" not in entry
    assert entry["key"] is None
    assert entry["headers"] == [["traceparent", "00-1"]]
    assert {
        k: entry[k]
        for k in ("reason", "source_topic", "source_partition", "source_offset", "http_status")
    } == {
        "reason": REJECTED,
        "source_topic": "auth-events",
        "source_partition": 3,
        "source_offset": 17,
        "http_status": 400,
    }
    assert entry["time"] == iso_time(T0) == "2024-05-01T12:00:00.000Z"


def test_json_of_an_unreadable_record() -> None:
    entry = dead_letter_json(unreadable())
    assert entry["reason"] is None
    assert entry["problem"] == "no x-forwarder-error-reason header"
    assert entry["headers"] == [["a", "b"]]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_plain_progress_line_is_written_once_an_interval_and_at_the_end() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = ProgressLine(stream, interval=5.0, clock=clock)
    progress.start(100)
    progress.update(10, 5)
    clock.now += 4.9
    progress.update(20, 9)
    clock.now += 0.2
    progress.update(30, 12)
    progress.update(40, 13)
    progress.finish()
    assert stream.getvalue().splitlines() == [
        "replay: 100 dead letters to read",
        "replay: read 30/100, replayed 12",
        "replay: read 40/100, replayed 13",
    ]


def test_nothing_is_written_when_the_replay_never_started() -> None:
    stream = io.StringIO()
    ProgressLine(stream).finish()
    assert stream.getvalue() == ""


def test_errors_are_named_even_when_their_message_is_empty() -> None:
    class UnknownError(Exception):
        pass

    assert describe_error(UnknownError()) == "UnknownError"
    assert describe_error(ValueError("bad")) == "ValueError: bad"
    assert describe_error(ValueError("ValueError: bad")) == "ValueError: bad"


def test_every_reason_can_be_counted() -> None:
    tally = ReplayTally()
    for reason in REASONS:
        tally.replay(dead_letter(reason), "t")
    assert tally.replayed_by_reason == Counter(dict.fromkeys(REASONS, 1))
