"""One benchmark: a broker, a sink, a preloaded topic, and every measurement against them.

Runs are interleaved (forwarder, aiohttp ceiling, consume ceiling, naive; then
again) so that a machine that slows down half-way skews all of them alike and
the ratios stay honest; so are the latency runs (forwarder and reference relay,
in turns going first), and the MCP runs (the forwarder with `FORWARDER_SINK=mcp`
and aiohttp posting the same tool calls, through the sandbox MCP server answering
in JSON, in front of the same Legiti stand-in). Every number is the median of
`runs` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from forwarder import __version__
from forwarder.bench.processes import (
    BenchError,
    McpServerProcess,
    SinkProcess,
    cpu_seconds,
    delivery_rate,
    peak_rss_mb,
    rss_mb,
    run_worker,
    runqueue_wait_seconds,
    stolen_cpu_seconds,
    wait_line,
    worker_child,
)
from forwarder.bench.workers import READY
from forwarder.bench.workload import (
    DUPLICATE_FRACTION,
    PARTITIONS,
    USERS,
    BenchRecord,
    generate,
    preload,
)
from forwarder.sandbox.broker import SandboxBroker
from forwarder.sandbox.process import Child, ForwarderProcess
from forwarder.sandbox.redis import SandboxRedis
from forwarder.sandbox.settings import sandbox_env
from forwarder.sandbox.topics import create_forwarder_topics
from forwarder.sinks.legiti.client import idempotency_key

SEED = 4
MCP_PREFIX = "mcp-"
MAX_IN_FLIGHT = 64
FETCH_MAX_WAIT_MS = 10
"""Tansu holds an empty fetch until its wait runs out even when records arrive
meanwhile (Kafka answers as soon as there are any), so on Tansu the consumer's
fetch_max_wait_ms (aiokafka's default: 500) is added to every record's latency: a
bare aiokafka consumer sees p50 ≈ 130 ms, p99 ≈ 250 ms. The latency runs measure the
forwarder, not that quirk, so the forwarder and the relay both wait less."""
Reading = Callable[[str, str, str], AbstractAsyncContextManager[Child]]
"""Starts a reader of a topic that posts to a sink URL, and hands it over once it is ready."""


_LATENCY_SETTLE_SECONDS = 1.0
_SAMPLE_INTERVAL = 0.25
BACKLOG_HTTP_TIMEOUT = "2"
"""The backlog forwarder's request timeout: the stand-in answers in milliseconds."""
_PACING_TICK = 0.01
"""The paced producer hands records over every 10 ms, as a producer lingering 10 ms would:
ticking every 2 ms cost the benchmark process and the broker three times the CPU (32% and
16% at 1,300 records/s), taken from the forwarder it is measuring."""


@dataclass(frozen=True)
class BenchOptions:
    events: int = 100_000
    runs: int = 3
    naive_events: int = 2_000
    naive_seconds: float = 20.0
    latency_seconds: float = 10.0
    latency_rate: float | None = None
    """Records per second for the latency runs; None: half the forwarder's measured rate."""
    backlog: bool = False
    backlog_events: int = 1_000_000
    backlog_compare_events: int = 100_000
    backlog_rate: str = "200/second"
    backlog_seconds: float = 30.0
    log_dir: Path = field(default_factory=lambda: Path("bench-results/logs"))
    mcp_events: int = 5_000
    """Records for the MCP runs: the SDK's server takes a few hundred calls a second, so
    the REST workload would take minutes a run."""


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _allowance(events: float, floor_rate: float = 200.0) -> float:
    """Generous: a run that takes this long is broken, not slow."""
    return 30.0 + events / floor_rate


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


class Bench:
    def __init__(self, options: BenchOptions, broker: SandboxBroker, sink: SinkProcess) -> None:
        self.options = options
        self.broker = broker
        self.sink = sink
        self.log_dir = options.log_dir

    def _forwarder(self, name: str, topic: str, sink_url: str, **extra: str) -> ForwarderProcess:
        """`forwarder run` in a fresh consumer group; stopping it sends SIGTERM, as Kubernetes
        would. Its exit code is reported, not judged: a shutdown problem is the daemon's
        tests' business, and the numbers were taken before."""
        env = sandbox_env(
            self.broker.bootstrap,
            topic,
            sink_url,
            kafka_group_id=_unique("bench"),
            kafka_fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_in_flight=MAX_IN_FLIGHT,
            **extra,
        )
        return ForwarderProcess(env, log_dir=self.log_dir, name=name)

    # Throughput ------------------------------------------------------------------------

    async def forwarder_run(
        self, index: int, topic: str, records: int, expected: int, redis_url: str | None = None
    ) -> dict[str, Any]:
        """Drain the preloaded topic with a fresh consumer group; rate as the sink saw it.
        With `redis_url`, the same forwarder with the group's state in Redis (the fleet
        row: shared de-duplication on, no rate limit)."""
        await self.sink.reset()
        extra = {} if redis_url is None else {"redis_url": redis_url}
        name = f"forwarder-{index}" if redis_url is None else f"fleet-{index}"
        async with self._forwarder(name, topic, self.sink.url, **extra) as forwarder:
            await forwarder.wait_started()
            # From here on, CPU time is the pipeline's, not the imports'.
            cpu_at_start = cpu_seconds(forwarder.pid)
            stats = await self.sink.wait_accepted(expected, _allowance(records), watch=forwarder)
            cpu = cpu_seconds(forwarder.pid) - cpu_at_start
            peak = peak_rss_mb(forwarder.pid)
            consumed, duplicates = await self._settled_counts(forwarder, records)
            stats = await self.sink.stats()
        return {
            "exit_code": forwarder.returncode,
            "events_per_second": delivery_rate(stats),
            "seconds": stats["wall_last_accepted_at"] - stats["wall_first_accepted_at"],
            "deliveries": stats["accepted"],
            "requests": stats["total"],
            "consumed": consumed,
            "duplicates": duplicates,
            "peak_rss_mb": peak,
            "cpu_seconds": cpu,
            "cpu_seconds_per_1000_events": cpu / records * 1000,
        }

    async def _settled_counts(self, forwarder: ForwarderProcess, records: int) -> tuple[int, int]:
        """Records consumed and duplicates counted, once the trailing copies are read too."""
        deadline = time.monotonic() + 10.0
        while True:
            metrics = await forwarder.metrics()
            consumed = int(metrics.total("forwarder_events_consumed_total"))
            duplicates = int(metrics.total("forwarder_events_duplicate_total"))
            if consumed >= records or time.monotonic() > deadline:
                return consumed, duplicates
            await asyncio.sleep(0.05)

    async def aiohttp_run(self, index: int, expected: int) -> dict[str, Any]:
        await self.sink.reset()
        result = await run_worker(
            self.log_dir,
            f"aiohttp-{index}",
            "forwarder.bench.workers",
            {
                "kind": "aiohttp",
                "url": self.sink.url,
                "events": self.options.events,
                "seed": SEED,
                "concurrency": MAX_IN_FLIGHT,
            },
        )
        stats = await self.sink.stats()
        if stats["accepted"] != expected or result["failures"]:
            raise BenchError(f"aiohttp ceiling: {stats['accepted']} of {expected} accepted")
        return {
            "events_per_second": delivery_rate(stats),
            "deliveries": stats["accepted"],
            "cpu_seconds_per_1000_events": result["cpu_seconds"] / expected * 1000,
        }

    async def consume_run(self, index: int, topic: str) -> dict[str, Any]:
        result = await run_worker(
            self.log_dir,
            f"consume-{index}",
            "forwarder.bench.workers",
            {
                "kind": "consume",
                "bootstrap": self.broker.bootstrap,
                "topic": topic,
                "events": self.options.events,
            },
        )
        return {
            "events_per_second": result["events_per_second"],
            "records": result["records"],
            "cpu_seconds_per_1000_events": result["cpu_seconds"] / result["records"] * 1000,
        }

    async def naive_run(self, index: int, topic: str, keep_alive: bool) -> dict[str, Any]:
        await self.sink.reset()
        events = min(self.options.naive_events, self.options.events)
        result = await run_worker(
            self.log_dir,
            f"naive-{'keepalive-' if keep_alive else ''}{index}",
            "forwarder.bench.workers",
            {
                "kind": "naive",
                "bootstrap": self.broker.bootstrap,
                "topic": topic,
                "group": _unique("naive"),
                "url": self.sink.url,
                "events": events,
                "seconds": self.options.naive_seconds,
                "keep_alive": keep_alive,
            },
        )
        stats = await self.sink.stats()
        if stats["accepted"] != result["sent"]:
            raise BenchError(f"naive: {stats['accepted']} of {result['sent']} accepted")
        return {"events_per_second": delivery_rate(stats), "deliveries": stats["accepted"]}

    # MCP ---------------------------------------------------------------------------------

    async def mcp_forwarder_run(
        self, index: int, topic: str, server: McpServerProcess, records: int, expected: int
    ) -> dict[str, Any]:
        """The forwarder with the MCP sink, draining `topic` through the MCP server; the
        rate as Legiti saw it."""
        await self.sink.reset()
        name = f"forwarder-mcp-{index}"
        async with self._forwarder(
            name, topic, self.sink.url, sink="mcp", mcp_url=server.url
        ) as forwarder:
            await forwarder.wait_started()
            cpu_at_start = cpu_seconds(forwarder.pid)
            stats = await self.sink.wait_accepted(
                expected, _allowance(records, floor_rate=50.0), watch=forwarder
            )
            cpu = cpu_seconds(forwarder.pid) - cpu_at_start
            consumed, duplicates = await self._settled_counts(forwarder, records)
            stats = await self.sink.stats()
        return {
            "exit_code": forwarder.returncode,
            "events_per_second": delivery_rate(stats),
            "deliveries": stats["accepted"],
            "requests": stats["total"],
            "consumed": consumed,
            "duplicates": duplicates,
            "cpu_seconds": cpu,
            "cpu_seconds_per_1000_events": cpu / records * 1000,
        }

    async def mcp_aiohttp_run(
        self, index: int, server: McpServerProcess, expected: int
    ) -> dict[str, Any]:
        await self.sink.reset()
        result = await run_worker(
            self.log_dir,
            f"mcp-aiohttp-{index}",
            "forwarder.bench.workers",
            {
                "kind": "mcp_aiohttp",
                "url": server.url,
                "events": self.options.mcp_events,
                "seed": SEED,
                "prefix": MCP_PREFIX,
                "concurrency": MAX_IN_FLIGHT,
            },
        )
        stats = await self.sink.stats()
        if stats["accepted"] != expected or result["failures"]:
            raise BenchError(f"MCP aiohttp ceiling: {stats['accepted']} of {expected} accepted")
        return {
            "events_per_second": delivery_rate(stats),
            "deliveries": stats["accepted"],
            "cpu_seconds_per_1000_events": result["cpu_seconds"] / expected * 1000,
        }

    # Latency ---------------------------------------------------------------------------

    async def latency_run(self, index: int, rate: float) -> dict[str, Any]:
        """The forwarder's delivery latency at `rate`."""
        return await self._latency(index, rate, "forwarder", self._forwarder_reading)

    async def relay_latency_run(self, index: int, rate: float) -> dict[str, Any]:
        """The same records at the same rate through the bare relay (aiokafka + aiohttp):
        what the broker, the libraries and this machine alone add."""
        return await self._latency(index, rate, "relay", self._relay_reading)

    async def _latency(
        self, index: int, rate: float, name: str, reading: Reading
    ) -> dict[str, Any]:
        """Produce at `rate` while a reader runs; latency is record timestamp → sink.

        A fresh topic and a recording sink per run; the reader joins first, so every
        record is read as soon as it is written, as in steady production traffic. The
        records are the same for every reader of round `index`."""
        count = max(10, int(rate * self.options.latency_seconds))
        records = list(generate(count, SEED + 1 + index, prefix=f"lat{index}-"))
        expected = sum(not r.duplicate for r in records)
        topic = _unique("bench-latency")
        await create_forwarder_topics(self.broker.bootstrap, topic, PARTITIONS)
        dump = self.log_dir / f"{name}-latency-{index}.json"
        sink = await SinkProcess(self.log_dir, recording_to=dump).start()
        try:
            async with reading(f"{name}-latency-{index}", topic, sink.url) as reader:
                await asyncio.sleep(_LATENCY_SETTLE_SECONDS)
                waited = runqueue_wait_seconds(reader.pid)
                started = time.monotonic()
                sent_at = await self._paced_produce(topic, records, rate)
                await sink.wait_accepted(expected, _allowance(count), watch=reader)
                waited = runqueue_wait_seconds(reader.pid) - waited
                elapsed = time.monotonic() - started
        finally:
            await sink.stop()
        arrivals: list[tuple[str, float]] = orjson.loads(dump.read_bytes())
        latencies = sorted(at - sent_at[key] for key, at in arrivals)
        if len(latencies) != expected:
            raise BenchError(f"{name} latency: {len(latencies)} of {expected} deliveries recorded")
        return {
            "rate": rate,
            "deliveries": len(latencies),
            "p50_ms": _percentile(latencies, 0.50) * 1000,
            "p99_ms": _percentile(latencies, 0.99) * 1000,
            "max_ms": latencies[-1] * 1000,
            "runqueue_wait_share": waited / elapsed,
        }

    @contextlib.asynccontextmanager
    async def _forwarder_reading(
        self, name: str, topic: str, sink_url: str
    ) -> AsyncIterator[Child]:
        async with self._forwarder(name, topic, sink_url) as forwarder:
            await forwarder.wait_ready()
            yield forwarder

    @contextlib.asynccontextmanager
    async def _relay_reading(self, name: str, topic: str, sink_url: str) -> AsyncIterator[Child]:
        arguments = {
            "kind": "relay",
            "bootstrap": self.broker.bootstrap,
            "topic": topic,
            "group": _unique("relay"),
            "url": sink_url,
            "concurrency": MAX_IN_FLIGHT,
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        }
        relay = worker_child(self.log_dir, name, "forwarder.bench.workers", arguments)
        try:
            await wait_line(relay, READY)
            yield relay
        except BaseException:
            await relay.stop()
            raise
        # A reference that failed quietly would make the forwarder look good.
        code = await relay.stop()
        last = (relay.output().splitlines() or [""])[-1]
        if code != 0 or orjson.loads(last)["failures"]:
            raise BenchError(f"{name}: exit code {code}, {last!r}; see {relay.log_path}")

    async def _paced_produce(
        self, topic: str, records: list[BenchRecord], rate: float
    ) -> dict[str, float]:
        """Write records at `rate`, each stamped with the moment it is handed over.

        Returns, per Idempotency-Key of a first copy, that moment on the monotonic
        clock (the sink's arrival times are on the same clock)."""
        producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, acks=1)
        await producer.start()
        sent_at: dict[str, float] = {}
        # This process holds the benchmark's results and workloads: a full collection here
        # took 43 ms, holding back records already stamped, which the reader was then
        # charged for. The producer stands for the upstream services, not for the reader.
        collecting = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            started = time.monotonic()
            sent = 0
            while sent < len(records):
                due = min(len(records), int((time.monotonic() - started) * rate) + 1)
                for record in records[sent:due]:
                    now = time.monotonic()
                    await producer.send(
                        topic,
                        value=record.value,
                        key=record.key,
                        headers=list(record.headers),
                        partition=record.partition,
                        timestamp_ms=int(time.time() * 1000),
                    )
                    if not record.duplicate:
                        sent_at[idempotency_key(record.event_key)] = now
                sent = due
                await asyncio.sleep(_PACING_TICK)
            await producer.flush()
        finally:
            if collecting:
                gc.enable()
            await producer.stop()
        return sent_at

    # Backlog ---------------------------------------------------------------------------

    async def backlog_run(self, events: int) -> dict[str, Any]:
        """A forwarder in front of `events` queued records behind a tight rate limit:
        RSS is sampled while its consumer sits paused. Without shared state its limit
        counts only a window plus the request timeout after the partitions are assigned
        (their previous owner may have used it): a short timeout keeps that wait short."""
        topic = _unique("bench-backlog")
        await create_forwarder_topics(self.broker.bootstrap, topic, PARTITIONS)
        produced, produce_seconds = await preload(
            self.broker.bootstrap, topic, generate(events, SEED, prefix="backlog-")
        )
        await self.sink.reset()
        rss: list[float] = []
        async with self._forwarder(
            f"forwarder-backlog-{events}",
            topic,
            self.sink.url,
            rate_limit=self.options.backlog_rate,
            http_timeout_seconds=BACKLOG_HTTP_TIMEOUT,
        ) as forwarder:
            await forwarder.wait_ready()
            started = time.monotonic()
            while time.monotonic() - started < self.options.backlog_seconds:
                await asyncio.sleep(_SAMPLE_INTERVAL)
                forwarder.check_alive()
                rss.append(rss_mb(forwarder.pid))
            elapsed = time.monotonic() - started
            peak = peak_rss_mb(forwarder.pid)
            stats = await self.sink.stats()
            metrics = await forwarder.metrics()
        return {
            "exit_code": forwarder.returncode,
            "events": produced,
            "produce_seconds": produce_seconds,
            "produce_events_per_second": produced / produce_seconds,
            "rate_limit": self.options.backlog_rate,
            "seconds": elapsed,
            "deliveries": stats["accepted"],
            "deliveries_per_second": stats["accepted"] / elapsed,
            "consumed": int(metrics.total("forwarder_events_consumed_total")),
            "buffered_events_at_end": int(metrics.total("forwarder_buffered_events")),
            "peak_rss_mb": peak,
            "rss_mb_samples": rss[:: max(1, round(1 / _SAMPLE_INTERVAL))],
        }


async def _mcp_runs(bench: Bench, options: BenchOptions) -> dict[str, Any]:
    """The MCP sink and the raw MCP ceiling, in turns, on a topic of their own."""
    records = list(generate(options.mcp_events, SEED, prefix=MCP_PREFIX))
    expected = sum(not r.duplicate for r in records)
    topic = _unique("bench-mcp")
    await create_forwarder_topics(bench.broker.bootstrap, topic, PARTITIONS)
    produced, _ = await preload(bench.broker.bootstrap, topic, iter(records))
    server = await McpServerProcess(options.log_dir, bench.sink.url).start()
    forwarder, ceiling = [], []
    try:
        for index in range(options.runs):
            forwarder.append(
                await bench.mcp_forwarder_run(index, topic, server, produced, expected)
            )
            ceiling.append(await bench.mcp_aiohttp_run(index, server, expected))
    finally:
        await server.stop()
    return {
        "events": produced,
        "deliveries": expected,
        "forwarder": _summary(forwarder, "events_per_second", "cpu_seconds_per_1000_events"),
        "aiohttp_ceiling": _summary(ceiling, "events_per_second", "cpu_seconds_per_1000_events"),
        "forwarder_vs_aiohttp_pairs": _median(
            [
                f["events_per_second"] / a["events_per_second"]
                for f, a in zip(forwarder, ceiling, strict=True)
            ]
        ),
    }


def _summary(runs: list[dict[str, Any]], *keys: str) -> dict[str, Any]:
    return {key: _median([run[key] for run in runs]) for key in keys} | {"runs": runs}


def machine() -> dict[str, Any]:
    """The machine, and how busy it was: other work on a 2-core box moves every number."""
    return {
        "load_average_1m": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "forwarder_version": __version__,
    }


async def run_benchmark(options: BenchOptions) -> dict[str, Any]:
    options.log_dir.mkdir(parents=True, exist_ok=True)
    machine_before = machine()
    stolen_before = stolen_cpu_seconds()
    records = list(generate(options.events, SEED))
    duplicates = sum(r.duplicate for r in records)
    expected = len(records) - duplicates
    with SandboxBroker() as broker, SandboxRedis() as redis:
        sink = await SinkProcess(options.log_dir).start()
        try:
            bench = Bench(options, broker, sink)
            topic = _unique("bench")
            await create_forwarder_topics(broker.bootstrap, topic, PARTITIONS)
            produced, produce_seconds = await preload(broker.bootstrap, topic, iter(records))
            del records
            forwarder, fleet, aiohttp, consume, naive, keepalive = [], [], [], [], [], []
            for index in range(options.runs):
                forwarder.append(await bench.forwarder_run(index, topic, produced, expected))
                fleet.append(await bench.forwarder_run(index, topic, produced, expected, redis.url))
                aiohttp.append(await bench.aiohttp_run(index, expected))
                consume.append(await bench.consume_run(index, topic))
                naive.append(await bench.naive_run(index, topic, keep_alive=False))
                keepalive.append(await bench.naive_run(index, topic, keep_alive=True))
            forwarder_summary = _summary(
                forwarder,
                "events_per_second",
                "peak_rss_mb",
                "cpu_seconds_per_1000_events",
            )
            mcp = await _mcp_runs(bench, options)
            rate = options.latency_rate or forwarder_summary["events_per_second"] / 2
            latency, relay = [], []
            for index in range(options.runs):
                if index % 2:
                    relay.append(await bench.relay_latency_run(index, rate))
                latency.append(await bench.latency_run(index, rate))
                if not index % 2:
                    relay.append(await bench.relay_latency_run(index, rate))
            backlog = None
            if options.backlog:
                backlog = {
                    "large": await bench.backlog_run(options.backlog_events),
                    "small": await bench.backlog_run(options.backlog_compare_events),
                }
        finally:
            await sink.stop()
    results = {
        "machine": {
            **machine_before,
            "load_average_1m_after": os.getloadavg()[0],
            "cpu_stolen_seconds": stolen_cpu_seconds() - stolen_before,
        },
        "workload": {
            "events": produced,
            "deliveries": expected,
            "duplicates": duplicates,
            "duplicate_fraction": DUPLICATE_FRACTION,
            "users": USERS,
            "partitions": PARTITIONS,
            "formats": {"native": 0.5, "cloudevents_structured": 0.25, "cloudevents_binary": 0.25},
            "max_in_flight": MAX_IN_FLIGHT,
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
            "runs": options.runs,
            "naive_events": min(options.naive_events, options.events),
            "preload_seconds": produce_seconds,
            "preload_events_per_second": produced / produce_seconds,
        },
        "forwarder": forwarder_summary,
        "fleet": _summary(fleet, "events_per_second", "peak_rss_mb", "cpu_seconds_per_1000_events"),
        "latency": _summary(latency, "rate", "p50_ms", "p99_ms", "max_ms"),
        "relay_latency": _summary(relay, "rate", "p50_ms", "p99_ms", "max_ms"),
        "aiohttp_ceiling": _summary(aiohttp, "events_per_second", "cpu_seconds_per_1000_events"),
        "consume_ceiling": _summary(consume, "events_per_second", "cpu_seconds_per_1000_events"),
        "naive": _summary(naive, "events_per_second"),
        "naive_keepalive": _summary(keepalive, "events_per_second"),
        "mcp": mcp,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
    }
    fwd = results["forwarder"]["events_per_second"]
    results["ratios"] = {
        "forwarder_vs_aiohttp": fwd / results["aiohttp_ceiling"]["events_per_second"],
        # Each forwarder run over the aiohttp run right after it, so both sides of a ratio
        # come from the same minutes; the ratio of medians may divide different minutes.
        "forwarder_vs_aiohttp_pairs": _median(
            [
                f["events_per_second"] / a["events_per_second"]
                for f, a in zip(forwarder, aiohttp, strict=True)
            ]
        ),
        "forwarder_vs_naive": fwd / results["naive"]["events_per_second"],
        "forwarder_vs_naive_keepalive": fwd / results["naive_keepalive"]["events_per_second"],
        "forwarder_vs_consume": fwd / results["consume_ceiling"]["events_per_second"],
        # Same minutes, same topic: the forwarder with FORWARDER_REDIS_URL over without.
        "fleet_vs_forwarder": results["fleet"]["events_per_second"] / fwd,
        "mcp_vs_mcp_aiohttp": mcp["forwarder"]["events_per_second"]
        / mcp["aiohttp_ceiling"]["events_per_second"],
        "mcp_vs_rest": mcp["forwarder"]["events_per_second"] / fwd,
    }
    if backlog is not None:
        results["backlog"] = backlog
    return results
