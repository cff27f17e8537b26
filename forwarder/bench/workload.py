"""The benchmark's events: a realistic, reproducible mix, and the fastest way to load them.

The mix is what a forwarder meets in production: half native JSON, a quarter
CloudEvents in structured mode and a quarter in binary mode (headers), 5,000
users, logins far more common than logouts, and about 2% of the records copies of
a recent one (upstream retries), which the forwarder must count, not send.
Generation is seeded, so every run and every machine sees the same records.
"""

from __future__ import annotations

import random
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaProducer

from forwarder.core.decode import CloudEventTypes, cloudevent_key, decode
from forwarder.core.events import AuthEvent
from forwarder.sinks.legiti.client import idempotency_key
from forwarder.sinks.mcp.messages import tool_arguments

USERS = 5_000
DUPLICATE_FRACTION = 0.02
DUPLICATE_REACH = 500
"""A duplicate copies one of the last this-many originals, as an upstream retry would."""

PARTITIONS = 4
_SOURCES = ("//auth.example.com/web", "//auth.example.com/mobile", "//sso.example.com/eu")
_CE_TYPES = {
    "login_success": "com.example.auth.login.succeeded",
    "login_failure": "com.example.auth.login.failed",
    "logout": "com.example.auth.logout",
}
_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "okhttp/4.12.0",
)
_PRODUCE_BATCH_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class BenchRecord:
    """One Kafka record and what the forwarder should make of it."""

    partition: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    event_key: str
    user_id: str
    action_type: str
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Delivery:
    """What an HTTP client posts for one event: the same body and headers the forwarder sends."""

    body: bytes
    idempotency_key: str


def _action(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.70:
        return "login_success"
    if roll < 0.90:
        return "login_failure"
    return "logout"


def _original(rng: random.Random, index: int, prefix: str) -> BenchRecord:
    user_id = f"user-{rng.randrange(USERS):05d}"
    action = _action(rng)
    event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    occurred_at = f"2026-11-20T12:{index // 60000 % 60:02d}:{index // 1000 % 60:02d}Z"
    key = user_id.encode()
    partition = zlib.crc32(key) % PARTITIONS
    shape = rng.random()
    if shape < 0.5:
        native: dict[str, object] = {
            "event_id": f"{prefix}{event_id}",
            "type": "logout" if action == "logout" else "login",
            "user_id": user_id,
            "occurred_at": occurred_at,
            "ip": f"203.0.{rng.randrange(256)}.{rng.randrange(256)}",
            "user_agent": rng.choice(_AGENTS),
        }
        if action != "logout":
            native["success"] = action == "login_success"
        return BenchRecord(
            partition, key, orjson.dumps(native), (), f"{prefix}{event_id}", user_id, action, False
        )
    source = rng.choice(_SOURCES)
    ce_id = f"{prefix}{event_id}"
    data = {"user_id": user_id, "ip": f"198.51.100.{rng.randrange(256)}"}
    if shape < 0.75:
        structured = {
            "specversion": "1.0",
            "id": ce_id,
            "source": source,
            "type": _CE_TYPES[action],
            "time": occurred_at,
            "datacontenttype": "application/json",
            "data": data,
        }
        headers: tuple[tuple[str, bytes], ...] = (
            ("content-type", b"application/cloudevents+json"),
        )
        value = orjson.dumps(structured)
    else:
        headers = (
            ("ce_specversion", b"1.0"),
            ("ce_id", ce_id.encode()),
            ("ce_source", source.encode()),
            ("ce_type", _CE_TYPES[action].encode()),
            ("ce_time", occurred_at.encode()),
            ("content-type", b"application/json"),
        )
        value = orjson.dumps(data)
    return BenchRecord(
        partition, key, value, headers, cloudevent_key(source, ce_id), user_id, action, False
    )


def generate(count: int, seed: int = 4, prefix: str = "") -> Iterator[BenchRecord]:
    """`count` records, lazily (a million records are not held in memory at once).

    `prefix` starts every event id, so separate workloads never share a key."""
    rng = random.Random(seed)
    recent: list[BenchRecord] = []
    for index in range(count):
        if recent and rng.random() < DUPLICATE_FRACTION:
            copy = rng.choice(recent)
            yield BenchRecord(
                copy.partition,
                copy.key,
                copy.value,
                copy.headers,
                copy.event_key,
                copy.user_id,
                copy.action_type,
                True,
            )
            continue
        record = _original(rng, index, prefix)
        recent.append(record)
        if len(recent) > DUPLICATE_REACH:
            del recent[: len(recent) - DUPLICATE_REACH]
        yield record


def deliveries(records: list[BenchRecord]) -> list[Delivery]:
    """The requests a correct forwarder makes for these records: one per original."""
    return [
        Delivery(
            orjson.dumps({"user_id": r.user_id, "action_type": r.action_type}),
            idempotency_key(r.event_key),
        )
        for r in records
        if not r.duplicate
    ]


def tool_calls(records: list[BenchRecord]) -> list[tuple[str, dict[str, object]]]:
    """The MCP calls a correct forwarder makes for these records, one per original: the
    tool and the arguments, decoded exactly as the forwarder decodes them."""
    types = CloudEventTypes()
    calls: list[tuple[str, dict[str, object]]] = []
    for record in records:
        if record.duplicate:
            continue
        event = decode(record.value, record.headers, types)
        assert isinstance(event, AuthEvent), event
        calls.append((event.action.tool, tool_arguments(event)))
    return calls


def _producer(bootstrap: str, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=linger_ms,
        acks=1,
        max_batch_size=_PRODUCE_BATCH_BYTES,
        max_request_size=4 * _PRODUCE_BATCH_BYTES,
    )


async def preload(bootstrap: str, topic: str, records: Iterator[BenchRecord]) -> tuple[int, float]:
    """Write records as fast as the broker takes them; returns (count, seconds).

    Records are appended to one half-megabyte batch per partition and each full
    batch is handed over whole (`send_batch`): per-record futures and the
    accumulator's bookkeeping are what make `send()` slow for a million records.
    A handful of batches stay in flight so the broker always has work."""
    producer = _producer(bootstrap, linger_ms=0)
    await producer.start()
    started = time.perf_counter()
    count = 0
    try:
        batches = {p: producer.create_batch() for p in range(PARTITIONS)}
        pending = []
        for record in records:
            batch = batches[record.partition]
            if (
                batch.append(
                    key=record.key, value=record.value, timestamp=None, headers=list(record.headers)
                )
                is None
            ):
                pending.append(await producer.send_batch(batch, topic, partition=record.partition))
                batch = batches[record.partition] = producer.create_batch()
                batch.append(
                    key=record.key, value=record.value, timestamp=None, headers=list(record.headers)
                )
                if len(pending) >= 8:
                    await pending.pop(0)
            count += 1
        for partition, batch in batches.items():
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=partition))
        for future in pending:
            await future
    finally:
        await producer.stop()
    return count, time.perf_counter() - started
