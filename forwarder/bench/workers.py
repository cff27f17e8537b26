"""The yardsticks the forwarder is measured against, each run as a process of its own.

- `aiohttp`: the raw HTTP ceiling. aiohttp (the fastest Python HTTP client) posts
  exactly the bodies and headers the forwarder sends, at the same concurrency,
  to the same sink, and does nothing else: no Kafka, no decoding, no bookkeeping.
- `consume`: the raw consume ceiling. aiokafka reads the topic and JSON-decodes
  every value, and does nothing else.
- `naive`: the forwarder most people write first: one record at a time, decode,
  `httpx.post`, commit.
- `mcp_aiohttp`: the raw MCP ceiling. aiohttp initializes one MCP session with the
  sandbox MCP server and posts exactly the `tools/call` bodies the forwarder sends
  for the workload, on that session, at the same concurrency, and nothing else.
- `relay`: the latency reference. aiokafka reads (with the forwarder's consumer
  settings and garbage-collector tuning), each record is decoded and its first copy
  posted by aiohttp, at the same concurrency, and nothing else: no order, no
  retries, no limits, no offsets committed. What the libraries alone take from a
  record's production to its arrival, on the same machine at the same rate.

Run: `python -m forwarder.bench.workers '{"kind": "...", ...}'`; the result is
the JSON line printed last. Separate processes keep each yardstick's event loop,
memory and CPU time its own, as the forwarder's are.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import aiohttp
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from forwarder.bench.workload import Delivery, deliveries, generate, tool_calls
from forwarder.config import KafkaSettings
from forwarder.core.decode import CloudEventTypes, decode
from forwarder.core.events import AuthEvent
from forwarder.runtime import install_signal_handlers, run_event_loop, tune_garbage_collector
from forwarder.sandbox.legiti import TOKEN
from forwarder.sandbox.settings import HEARTBEAT_INTERVAL_MS, SESSION_TIMEOUT_MS
from forwarder.sinks.legiti.client import TRACK_AUTH_PATH, USER_AGENT, idempotency_key
from forwarder.sinks.mcp import messages as mcp_messages

MAX_POLL_RECORDS: int = KafkaSettings.model_fields["max_poll_records"].default
READY = "ready"
"""The line the relay prints once its partitions are assigned."""

FIXED_HEADERS = {
    "Authorization": f"Bearer {TOKEN}",
    "Accept": "application/json",
    "Accept-Encoding": "identity",
    "Content-Type": "application/json",
    "User-Agent": USER_AGENT,
}
"""Every header the forwarder sends but the Idempotency-Key (aiohttp adds Host and
Content-Length itself)."""


async def aiohttp_ceiling(url: str, events: int, seed: int, concurrency: int) -> dict[str, Any]:
    todo: Iterator[Delivery] = iter(deliveries(list(generate(events, seed))))
    # The workload is the benchmark's, not the client's: keep the collector from walking
    # a hundred thousand objects that a real client would never hold.
    gc.collect()
    gc.freeze()
    target = url + TRACK_AUTH_PATH
    failures = 0

    async def post_all(session: aiohttp.ClientSession) -> int:
        nonlocal failures
        posted = 0
        for delivery in todo:
            headers = {**FIXED_HEADERS, "Idempotency-Key": delivery.idempotency_key}
            async with session.post(target, data=delivery.body, headers=headers) as response:
                await response.read()
                failures += response.status != 201
            posted += 1
        return posted

    cpu = time.process_time()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        posted = sum(await asyncio.gather(*(post_all(session) for _ in range(concurrency))))
    return {"posted": posted, "failures": failures, "cpu_seconds": time.process_time() - cpu}


async def mcp_aiohttp_ceiling(
    url: str, events: int, seed: int, prefix: str, concurrency: int
) -> dict[str, Any]:
    calls = tool_calls(list(generate(events, seed, prefix=prefix)))
    bodies = iter(
        mcp_messages.call_tool(number, tool, arguments)
        for number, (tool, arguments) in enumerate(calls, start=2)
    )
    gc.collect()
    gc.freeze()
    failures = 0
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

    async def post_all(session: aiohttp.ClientSession, headers: dict[str, str]) -> int:
        nonlocal failures
        posted = 0
        for body in bodies:
            async with session.post(url, data=body, headers=headers) as response:
                answer = orjson.loads(await response.read())
                failures += response.status != 200 or answer["result"].get("isError", False)
            posted += 1
        return posted

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(url, data=mcp_messages.initialize(1), headers=accept) as response:
            answer = orjson.loads(await response.read())
            headers = {
                **accept,
                "MCP-Protocol-Version": answer["result"]["protocolVersion"],
                "Mcp-Session-Id": response.headers["Mcp-Session-Id"],
            }
        async with session.post(url, data=mcp_messages.INITIALIZED, headers=headers) as response:
            await response.read()
        cpu = time.process_time()
        posted = sum(
            await asyncio.gather(*(post_all(session, headers) for _ in range(concurrency)))
        )
        cpu = time.process_time() - cpu
    return {"posted": posted, "failures": failures, "cpu_seconds": cpu}


async def consume_ceiling(bootstrap: str, topic: str, events: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        decoded = 0
        cpu = time.process_time()
        started = time.perf_counter()
        while decoded < events:
            batch = await consumer.getmany(timeout_ms=100)
            for messages in batch.values():
                for message in messages:
                    orjson.loads(message.value)
                    decoded += 1
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        await consumer.stop()
    return {
        "records": decoded,
        "seconds": seconds,
        "events_per_second": decoded / seconds,
        "cpu_seconds": cpu,
    }


def _group_consumer(bootstrap: str, group: str, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A member of a new consumer group on the sandbox broker, joining as fast as the
    forwarder does, reading from the start and committing only when told."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        **options,
    )


async def naive(
    bootstrap: str,
    topic: str,
    group: str,
    url: str,
    events: int,
    seconds: float,
    keep_alive: bool,
) -> dict[str, Any]:
    """One record at a time, for `events` records or `seconds`, whichever ends first
    (the rate is what is compared, and a slow baseline need not be run for minutes).

    `httpx.post` opens a new client (TLS context, pool and a TCP connection) per
    call, which is most of its cost; `keep_alive` reuses one `httpx.Client`
    instead, the first thing anyone fixes, as a stricter baseline."""
    client = httpx.Client() if keep_alive else None
    post = client.post if client is not None else httpx.post
    consumer = _group_consumer(bootstrap, group, topic)
    await consumer.start()
    types = CloudEventTypes()
    sent = 0
    deadline = time.monotonic() + seconds
    try:
        for _ in range(events):
            if time.monotonic() > deadline:
                break
            message = await consumer.getone()
            event = decode(message.value, tuple(message.headers), types)
            if isinstance(event, AuthEvent):
                post(
                    url + TRACK_AUTH_PATH,
                    json={"user_id": event.user_id, "action_type": event.action.value},
                    headers={
                        "Authorization": f"Bearer {TOKEN}",
                        "Idempotency-Key": idempotency_key(event.key),
                        "User-Agent": USER_AGENT,
                    },
                ).raise_for_status()
                sent += 1
            await consumer.commit()
    finally:
        await consumer.stop()
        if client is not None:
            client.close()
    return {"sent": sent}


class _PrintReady(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if assigned:
            print(READY, flush=True)


async def relay(
    bootstrap: str,
    topic: str,
    group: str,
    url: str,
    concurrency: int,
    fetch_max_wait_ms: int,
) -> dict[str, Any]:
    """Relay records until SIGTERM; prints READY once it will see what is produced next.

    Copies are skipped by key (a set, which never forgets) so that the sink receives the
    same requests as from the forwarder, which the latency run checks. A record that
    does not decode ends the relay at once: the workload has none, so it is a bug."""
    stopping = asyncio.Event()
    install_signal_handlers(stopping)
    consumer = _group_consumer(
        bootstrap,
        group,
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_poll_records=MAX_POLL_RECORDS,
        isolation_level="read_committed",
    )
    consumer.subscribe([topic], listener=_PrintReady())
    queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
    target = url + TRACK_AUTH_PATH
    posted = failures = 0

    async def post(session: aiohttp.ClientSession) -> None:
        nonlocal posted, failures
        while True:
            body, key = await queue.get()
            headers = {**FIXED_HEADERS, "Idempotency-Key": key}
            async with session.post(target, data=body, headers=headers) as response:
                await response.read()
                failures += response.status != 201
            posted += 1

    async def read() -> None:
        types = CloudEventTypes()
        seen: set[str] = set()
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for messages in batch.values():
                for message in messages:
                    event = decode(message.value, tuple(message.headers), types)
                    if not isinstance(event, AuthEvent):
                        where = f"{message.topic}-{message.partition}@{message.offset}"
                        raise ValueError(f"record {where} did not decode: {event}")
                    key = idempotency_key(event.key)
                    if key not in seen:
                        seen.add(key)
                        body = {"user_id": event.user_id, "action_type": event.action.value}
                        queue.put_nowait((orjson.dumps(body), key))

    await consumer.start()
    tune_garbage_collector()
    try:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(read())]
            tasks += [asyncio.create_task(post(session)) for _ in range(concurrency)]
            stop = asyncio.create_task(stopping.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in (stop, *tasks):
                task.cancel()
            await asyncio.gather(stop, *tasks, return_exceptions=True)
            for task in done - {stop}:
                task.result()  # the reader and posters only end by failing: say why
    finally:
        await consumer.stop()
    return {"posted": posted, "failures": failures}


def main(argv: list[str] | None = None) -> None:
    arguments: dict[str, Any] = orjson.loads((argv or sys.argv[1:])[0])
    kind = arguments.pop("kind")
    runners: dict[str, Callable[..., Coroutine[Any, Any, dict[str, Any]]]] = {
        "aiohttp": aiohttp_ceiling,
        "mcp_aiohttp": mcp_aiohttp_ceiling,
        "consume": consume_ceiling,
        "naive": naive,
        "relay": relay,
    }
    runner = runners[kind]
    result = run_event_loop(runner(**arguments))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
