"""Creating a topic and writing records to it: what the demo, the tests and the benchmark
all do before a forwarder has anything to read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One record to write; no partition means the producer's partitioner picks one by key."""

    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    partition: int | None = None


async def create_topic(bootstrap: str, name: str, partitions: int = 1) -> str:
    await create_topics(bootstrap, [name], partitions)
    return name


async def create_forwarder_topics(bootstrap: str, name: str, partitions: int = 1) -> str:
    """A source topic with the dead-letter and retry topics a forwarder reading it uses by
    default (`<name>.dlq`, `<name>.retry`), as an operator creates them: the forwarder is
    not ready without them, and the retry topic has as many partitions as the source."""
    await create_topics(bootstrap, [name, f"{name}.dlq", f"{name}.retry"], partitions)
    return name


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
        )
    finally:
        await admin.close()


async def produce(
    bootstrap: str, topic: str, records: Iterable[Outgoing], *, linger_ms: int = 5
) -> None:
    """Write the records in order and return once the broker has acknowledged all of them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                value=record.value,
                key=record.key,
                headers=list(record.headers),
                partition=record.partition,
            )
            for record in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
