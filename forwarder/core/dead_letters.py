"""Dead letters: the original record, unchanged, plus headers saying why.

The header names follow Kafka Connect's `errors.deadletterqueue.context.headers`
idea (source topic, partition, offset, reason) so existing DLQ tooling and
habits carry over; replaying a dead letter is producing its key, value and
original headers back to the source topic.

Both sides of the format live here: writing (`dead_letter_headers`) and reading
back (`read_dead_letter`, `Selection`), so the commands that inspect and replay
dead letters can never disagree with the forwarder that wrote them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from forwarder.core.events import SourceRecord

MAX_DETAIL_BYTES = 2048
MAX_BODY_BYTES = 4096
HEADER_PREFIX = "x-forwarder-"

INVALID_JSON = "invalid_json"
INVALID_EVENT = "invalid_event"
EMPTY_VALUE = "empty_value"
REJECTED = "rejected"
RETRIES_EXHAUSTED = "retries_exhausted"
DENIED_BY_POLICY = "denied_by_policy"
REASONS = (INVALID_JSON, INVALID_EVENT, EMPTY_VALUE, REJECTED, RETRIES_EXHAUSTED, DENIED_BY_POLICY)

REASON_HEADER = "x-forwarder-error-reason"
DETAIL_HEADER = "x-forwarder-error-detail"
SOURCE_TOPIC_HEADER = "x-forwarder-source-topic"
SOURCE_PARTITION_HEADER = "x-forwarder-source-partition"
SOURCE_OFFSET_HEADER = "x-forwarder-source-offset"
ATTEMPTS_HEADER = "x-forwarder-attempts"
HTTP_STATUS_HEADER = "x-forwarder-http-status"
RESPONSE_BODY_HEADER = "x-forwarder-response-body"


def _clip(data: bytes, limit: int) -> bytes:
    return data if len(data) <= limit else data[: limit - 3] + b"..."


def dead_letter_headers(
    record: SourceRecord,
    reason: str,
    detail: str,
    attempts: int,
    *,
    status: int | None = None,
    body: bytes | None = None,
) -> list[tuple[str, bytes]]:
    """The record's own headers (earlier `x-forwarder-*` ones dropped, so a replayed
    and again failed record carries one reason, not two), then ours."""
    headers = list(original_headers(record.headers))
    headers += [
        (REASON_HEADER, reason.encode()),
        (DETAIL_HEADER, _clip(detail.encode("utf-8", "replace"), MAX_DETAIL_BYTES)),
        (SOURCE_TOPIC_HEADER, record.topic.encode()),
        (SOURCE_PARTITION_HEADER, str(record.partition).encode()),
        (SOURCE_OFFSET_HEADER, str(record.offset).encode()),
        (ATTEMPTS_HEADER, str(attempts).encode()),
    ]
    if status is not None:
        headers.append((HTTP_STATUS_HEADER, str(status).encode()))
    if body is not None:
        headers.append((RESPONSE_BODY_HEADER, _clip(body, MAX_BODY_BYTES)))
    return headers


def original_headers(headers: tuple[tuple[str, bytes], ...]) -> tuple[tuple[str, bytes], ...]:
    """The record's own headers, in order, repeats kept: what a replay sends back."""
    return tuple((name, value) for name, value in headers if not name.startswith(HEADER_PREFIX))


# Reading dead letters back ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter as read from the dead-letter topic.

    `record` is where it sits in that topic (its offset there, its time of dead-lettering);
    the other fields are what the forwarder wrote about the record's origin and fate."""

    record: SourceRecord
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    attempts: int
    http_status: int | None = None
    response_body: bytes | None = None

    @property
    def replay_headers(self) -> tuple[tuple[str, bytes], ...]:
        return original_headers(self.record.headers)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A record in the dead-letter topic that lacks the headers the forwarder writes (it was
    put there by hand or by another program): it is shown and counted, never replayed,
    because where it came from is unknown."""

    record: SourceRecord
    problem: str


class _Malformed(Exception):
    pass


def _optional_text(headers: dict[str, bytes], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed(f"{name} is not UTF-8: {value[:40]!r}") from None


def _text(headers: dict[str, bytes], name: str) -> str:
    text = _optional_text(headers, name)
    if not text:
        raise _Malformed(f"no {name} header" if text is None else f"empty {name} header")
    return text


def _optional_number(headers: dict[str, bytes], name: str) -> int | None:
    text = _optional_text(headers, name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise _Malformed(f"{name} is not a number: {text[:40]!r}") from None


def _number(headers: dict[str, bytes], name: str) -> int:
    number = _optional_number(headers, name)
    if number is None:
        raise _Malformed(f"no {name} header")
    return number


def read_dead_letter(record: SourceRecord) -> DeadLetter | Unreadable:
    """Parse the `x-forwarder-*` headers; never raises, a bad record is `Unreadable`.

    A header that occurs more than once counts by its last occurrence (the writer drops
    older ones, so this only matters for records written by something else)."""
    headers = {name: value for name, value in record.headers if name.startswith(HEADER_PREFIX)}
    try:
        return DeadLetter(
            record=record,
            reason=_text(headers, REASON_HEADER),
            detail=headers.get(DETAIL_HEADER, b"").decode("utf-8", "replace"),
            source_topic=_text(headers, SOURCE_TOPIC_HEADER),
            source_partition=_number(headers, SOURCE_PARTITION_HEADER),
            source_offset=_number(headers, SOURCE_OFFSET_HEADER),
            attempts=_optional_number(headers, ATTEMPTS_HEADER) or 0,
            http_status=_optional_number(headers, HTTP_STATUS_HEADER),
            response_body=headers.get(RESPONSE_BODY_HEADER),
        )
    except _Malformed as exc:
        return Unreadable(record, str(exc))


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command acts on: reasons (none given: all) and a time window
    over the dead letters' own timestamps, `since` included and `until` excluded."""

    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    def __post_init__(self) -> None:
        unknown = self.reasons - set(REASONS)
        if unknown:
            raise ValueError(f"unknown reason(s) {', '.join(sorted(unknown))}")
        since, until = self.since_ms, self.until_ms
        if since is not None and until is not None and since >= until:
            raise ValueError("--since is not before --until")

    def in_window(self, timestamp_ms: int) -> bool:
        if self.since_ms is not None and timestamp_ms < self.since_ms:
            return False
        return self.until_ms is None or timestamp_ms < self.until_ms

    def matches(self, item: DeadLetter | Unreadable) -> bool:
        """An unreadable record has no reason, so a reason filter never selects it."""
        if not self.in_window(item.record.timestamp_ms):
            return False
        if not self.reasons:
            return True
        return isinstance(item, DeadLetter) and item.reason in self.reasons


_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_moment(text: str, now: float) -> float:
    """A point in time as seconds since the epoch, from ISO-8601 (a time without a zone is
    UTC, a bare date is its midnight UTC) or from an age before `now`: `90s`, `30m`,
    `2h`, `1d`, `1w`, or sums such as `1h30m`. Raises ValueError saying what is accepted."""
    compact = text.strip().replace(" ", "").lower()
    if compact and not _AGE.sub("", compact):
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _AGE.findall(compact))
        return now - seconds
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO-8601 time (2024-05-01T12:00:00Z) nor an age"
            " such as 30m, 2h, 1d or 1h30m"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
