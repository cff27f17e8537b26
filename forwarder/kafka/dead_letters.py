"""The dead-letter topic: dead letters written with the forwarder's own producer."""

from __future__ import annotations

from typing import Any

from forwarder.core.events import SourceRecord


class KafkaDeadLetters:
    """Writes dead letters with an aiokafka producer (acks=all), keyed like the original."""

    def __init__(self, producer: Any, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def write(self, record: SourceRecord, headers: list[tuple[str, bytes]]) -> None:
        await self._producer.send_and_wait(
            self.topic, value=record.value, key=record.key, headers=headers
        )
