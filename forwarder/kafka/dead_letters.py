"""The dead-letter topic: dead letters written with the forwarder's own producer."""

from __future__ import annotations

from typing import Any

from forwarder.core.events import SourceRecord
from forwarder.kafka.writes import produce


class KafkaDeadLetters:
    """Writes dead letters with an aiokafka producer (acks=all), keyed like the original."""

    def __init__(self, producer: Any, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def write(self, record: SourceRecord, headers: list[tuple[str, bytes]]) -> None:
        await produce(self._producer, self.topic, record, headers)
