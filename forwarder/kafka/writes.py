"""Producing to the forwarder's own topics (dead letters, parked copies), with the
errors translated into the ones the writers act on (`engine.write_errors`)."""

from __future__ import annotations

from typing import Any

from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from forwarder.core.events import SourceRecord
from forwarder.engine.write_errors import TooLarge, WriteRejected

_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


async def produce(
    producer: Any,
    topic: str,
    record: SourceRecord,
    headers: list[tuple[str, bytes]],
    partition: int | None = None,
) -> int:
    """Write the record's key and value with `headers`; return the offset it got.

    The producer is the forwarder's own (acks=all), so a return means stored. An
    error Kafka marks as not retriable becomes `WriteRejected` (`TooLarge` for a
    record over a size limit); retriable ones pass through, to be tried again."""
    try:
        metadata = await producer.send_and_wait(
            topic, value=record.value, key=record.key, headers=headers, partition=partition
        )
    except _TOO_LARGE as exc:
        raise TooLarge(str(exc)) from exc
    except KafkaError as exc:
        if exc.retriable:
            raise
        raise WriteRejected(repr(exc)) from exc
    offset: int = metadata.offset
    return offset
