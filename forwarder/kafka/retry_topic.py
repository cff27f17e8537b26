"""The retry topic: parked copies written with the forwarder's own producer, each to
the partition the pipeline chose (the one matching its source partition)."""

from __future__ import annotations

from typing import Any

from forwarder.core.events import SourceRecord
from forwarder.kafka.writes import produce


class KafkaRetryTopic:
    """`partitions` is set by the topic check, which reads the topic's metadata without
    creating it; until then nothing is parked."""

    def __init__(self, producer: Any, topic: str) -> None:
        self._producer = producer
        self.topic = topic
        self.partitions: int | None = None

    async def write(
        self, partition: int, record: SourceRecord, headers: list[tuple[str, bytes]]
    ) -> int:
        return await produce(self._producer, self.topic, record, headers, partition)
