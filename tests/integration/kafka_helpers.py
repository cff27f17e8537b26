"""Helpers for integration tests: topics, producing, reading dead letters, committed offsets,
and a forwarder in this process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from forwarder.commands.run import Forwarder
from forwarder.config import Settings, load_settings
from forwarder.sandbox.samples import Samples
from forwarder.sandbox.settings import sandbox_env
from forwarder.sandbox.topics import Outgoing
from forwarder.sandbox.topics import create_topic as create_topic
from forwarder.sandbox.topics import produce as produce_records

_counter = itertools.count()


def unique(prefix: str = "auth") -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


Message = bytes | None | tuple[bytes | None, Sequence[tuple[str, bytes]]]


async def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[Message],
    *,
    partition: int | None = None,
    key: bytes | None = None,
) -> None:
    def outgoing(item: Message) -> Outgoing:
        value, headers = item if isinstance(item, tuple) else (item, ())
        return Outgoing(value, key, headers, partition)

    await produce_records(bootstrap, topic, map(outgoing, values))


async def read_all(bootstrap: str, topic: str, expected: int, within: float = 15.0) -> list[Any]:
    """Read `expected` records from the start of `topic` (all partitions)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(within):
            while len(records) < expected:
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    records.extend(messages)
    finally:
        await consumer.stop()
    return records


async def committed(
    bootstrap: str, group: str, topic: str, partitions: int = 1
) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


def settings(bootstrap: str, topic: str, legiti_url: str, **overrides: str) -> Settings:
    return load_settings(sandbox_env(bootstrap, topic, legiti_url, **overrides))


@contextlib.asynccontextmanager
async def running(config: Settings, **parts: Any) -> AsyncIterator[Forwarder]:
    """A forwarder in this process, stopped (drained, committed) on exit."""
    forwarder = Forwarder(config, **parts)
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop))
    try:
        yield forwarder
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def metric(forwarder: Forwarder, name: str, **labels: str) -> float:
    return Samples.of_registry(forwarder.metrics.registry).value(name, **labels)


def header(record: Any, name: str) -> bytes | None:
    return next((value for key, value in record.headers if key == name), None)
