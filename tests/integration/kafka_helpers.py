"""Helpers for integration tests: topics, producing, reading dead letters, committed offsets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from forwarder.commands.run import Forwarder
from forwarder.config import Settings, load_settings
from forwarder.sandbox.topics import Outgoing
from forwarder.sandbox.topics import create_topic as create_topic
from forwarder.sandbox.topics import produce as produce_records

TOKEN = "test-token"
_counter = itertools.count()


def unique(prefix: str = "auth") -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


def native(
    event_id: str, user_id: str | int, kind: str = "login", success: bool | None = True
) -> bytes:
    event: dict[str, Any] = {"event_id": event_id, "type": kind, "user_id": user_id}
    if kind == "login":
        event["success"] = success
    return orjson.dumps(event)


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


def settings(bootstrap: str, topic: str, legiti_url: str, **overrides: Any) -> Settings:
    env = {
        "FORWARDER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "FORWARDER_KAFKA_TOPICS": topic,
        "FORWARDER_KAFKA_GROUP_ID": f"group-{topic}",
        "FORWARDER_LEGITI_BASE_URL": legiti_url,
        "FORWARDER_LEGITI_API_TOKEN": TOKEN,
        "FORWARDER_METRICS_PORT": "0",
        "FORWARDER_METRICS_HOST": "127.0.0.1",
        "FORWARDER_COMMIT_INTERVAL_SECONDS": "0.2",
        "FORWARDER_RETRY_INITIAL_BACKOFF_SECONDS": "0.05",
        "FORWARDER_RETRY_MAX_BACKOFF_SECONDS": "0.5",
        "FORWARDER_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "FORWARDER_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
    }
    return load_settings(env, overrides)


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
    return forwarder.metrics.registry.get_sample_value(name, labels) or 0.0


def header(record: Any, name: str) -> bytes | None:
    return next((value for key, value in record.headers if key == name), None)
