"""Dead letters: the original record, unchanged, plus headers saying why.

The header names follow Kafka Connect's `errors.deadletterqueue.context.headers`
idea (source topic, partition, offset, reason) so existing DLQ tooling and
habits carry over; replaying a dead letter is producing its key, value and
original headers back to the source topic.
"""

from __future__ import annotations

from forwarder.core.events import Origin, SourceRecord

MAX_DETAIL_BYTES = 2048
MAX_BODY_BYTES = 4096
HEADER_PREFIX = "x-forwarder-"
REDUCED_VALUE_BYTES = 16 * 1024
REDUCED_HEADER_BYTES = 16 * 1024
VALUE_TRUNCATED = "x-forwarder-value-truncated"
HEADERS_DROPPED = "x-forwarder-headers-dropped"

INVALID_JSON = "invalid_json"
INVALID_EVENT = "invalid_event"
EMPTY_VALUE = "empty_value"
REJECTED = "rejected"
RETRIES_EXHAUSTED = "retries_exhausted"
DENIED_BY_POLICY = "denied_by_policy"
REASONS = (INVALID_JSON, INVALID_EVENT, EMPTY_VALUE, REJECTED, RETRIES_EXHAUSTED, DENIED_BY_POLICY)


def _clip(data: bytes, limit: int) -> bytes:
    return data if len(data) <= limit else data[: limit - 3] + b"..."


def own_headers(record: SourceRecord) -> list[tuple[str, bytes]]:
    """The record's headers without earlier `x-forwarder-*` ones (a replayed or parked
    record carries one set of ours, not two)."""
    return [(name, value) for name, value in record.headers if not name.startswith(HEADER_PREFIX)]


def origin_headers(origin: Origin) -> list[tuple[str, bytes]]:
    return [
        ("x-forwarder-source-topic", origin.topic.encode()),
        ("x-forwarder-source-partition", str(origin.partition).encode()),
        ("x-forwarder-source-offset", str(origin.offset).encode()),
    ]


def dead_letter_headers(
    record: SourceRecord,
    reason: str,
    detail: str,
    attempts: int,
    *,
    status: int | None = None,
    body: bytes | None = None,
    origin: Origin | None = None,
) -> list[tuple[str, bytes]]:
    """The record's own headers, then ours. `origin` is where the record was first
    read, when that is not where it was read now (the retry topic)."""
    where = origin or Origin(record.topic, record.partition, record.offset)
    headers = own_headers(record)
    headers += [
        ("x-forwarder-error-reason", reason.encode()),
        ("x-forwarder-error-detail", _clip(detail.encode("utf-8", "replace"), MAX_DETAIL_BYTES)),
        *origin_headers(where),
        ("x-forwarder-attempts", str(attempts).encode()),
    ]
    if status is not None:
        headers.append(("x-forwarder-http-status", str(status).encode()))
    if body is not None:
        headers.append(("x-forwarder-response-body", _clip(body, MAX_BODY_BYTES)))
    return headers


def reduced(
    value: bytes | None, headers: list[tuple[str, bytes]]
) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """A dead letter small enough for any topic: the value cut to its first 16 KiB and,
    when they are that big too, the record's own headers dropped, each with a header
    saying so. Ours (reason, detail, source coordinates) are kept: they are what a
    person needs to find the original in its source topic."""
    ours = [(name, data) for name, data in headers if name.startswith(HEADER_PREFIX)]
    theirs = [(name, data) for name, data in headers if not name.startswith(HEADER_PREFIX)]
    if value is not None and len(value) > REDUCED_VALUE_BYTES:
        ours.append((VALUE_TRUNCATED, str(len(value)).encode()))
        value = value[:REDUCED_VALUE_BYTES]
    if sum(len(name) + len(data) for name, data in theirs) > REDUCED_HEADER_BYTES:
        ours.append((HEADERS_DROPPED, str(len(theirs)).encode()))
        theirs = []
    return value, theirs + ours
