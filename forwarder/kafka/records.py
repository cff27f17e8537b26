"""A consumed aiokafka message as the forwarder's `SourceRecord`, kept whole so that a
dead letter or a replay can carry it unchanged."""

from __future__ import annotations

from typing import Any

from forwarder.core.events import SourceRecord


def to_record(message: Any) -> SourceRecord:
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=tuple(message.headers or ()),
        timestamp_ms=message.timestamp,
    )
