"""Dead letters: the original record, unchanged, plus headers saying why.

The header names follow Kafka Connect's `errors.deadletterqueue.context.headers`
idea (source topic, partition, offset, reason) so existing DLQ tooling and
habits carry over; replaying a dead letter is producing its key, value and
original headers back to the source topic.
"""

from __future__ import annotations

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
    headers = [
        (name, value) for name, value in record.headers if not name.startswith(HEADER_PREFIX)
    ]
    headers += [
        ("x-forwarder-error-reason", reason.encode()),
        ("x-forwarder-error-detail", _clip(detail.encode("utf-8", "replace"), MAX_DETAIL_BYTES)),
        ("x-forwarder-source-topic", record.topic.encode()),
        ("x-forwarder-source-partition", str(record.partition).encode()),
        ("x-forwarder-source-offset", str(record.offset).encode()),
        ("x-forwarder-attempts", str(attempts).encode()),
    ]
    if status is not None:
        headers.append(("x-forwarder-http-status", str(status).encode()))
    if body is not None:
        headers.append(("x-forwarder-response-body", _clip(body, MAX_BODY_BYTES)))
    return headers
