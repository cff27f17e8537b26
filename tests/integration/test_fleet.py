"""A fleet: three `forwarder run` processes in one consumer group, one Legiti stand-in,
a real broker and a real Redis. The limits are the group's and are measured where
they matter, at the stand-in: no half-open interval [t, t + W) of its arrival times
holds more than N requests (`busiest_window`)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from forwarder.sandbox.legiti import LegitiStub
from forwarder.sandbox.process import ForwarderProcess
from forwarder.sandbox.redis import SandboxRedis
from forwarder.sandbox.settings import sandbox_env
from forwarder.shared.status import LOST
from tests.conftest import eventually, wait_until
from tests.factories import native
from tests.integration.kafka_helpers import create_forwarder_topics, produce, unique
from tests.integration.test_limits import busiest_window

REPLICAS = 3
HTTP_TIMEOUT = "2"
"""Short, so that a dead replica's claims (and a gained partition share) settle fast."""


def fleet_env(
    bootstrap: str, topic: str, legiti: LegitiStub, redis: SandboxRedis | None, **overrides: str
) -> dict[str, str]:
    if redis is not None:
        overrides["redis_url"] = redis.url
    return sandbox_env(bootstrap, topic, legiti.url, http_timeout_seconds=HTTP_TIMEOUT, **overrides)


@contextlib.asynccontextmanager
async def fleet(
    env: dict[str, str], log_dir: Path, replicas: int = REPLICAS
) -> AsyncIterator[list[ForwarderProcess]]:
    """`replicas` forwarders, each ready (in the group, holding partitions) on entry."""
    processes = [
        ForwarderProcess(env, log_dir=log_dir, name=f"forwarder-{number}")
        for number in range(replicas)
    ]
    try:
        for process in processes:
            await process.wait_ready()
        yield processes
    finally:
        for process in processes:
            await process.stop()


def keys(legiti: LegitiStub) -> Counter[str | None]:
    return Counter(request.idempotency_key for request in legiti.accepted)


def times(legiti: LegitiStub) -> list[float]:
    return [request.at for request in legiti.requests]


def steady_use(arrivals: list[float], limit: int, window: float) -> float:
    """The fraction of the allowance used while there was a backlog: the sends in each
    window [t0 + kW, t0 + (k+1)W) from the first send on, averaged over all windows but
    the last (where the backlog ran out), over N."""
    start = min(arrivals)
    counts = Counter(int((at - start) // window) for at in arrivals)
    full = range(max(counts))
    assert full, "the run is too short to measure: a single window"
    return sum(counts[k] for k in full) / (len(full) * limit)


def events(prefix: str, count: int) -> list[bytes]:
    return [native(f"{prefix}{n}", f"user-{n % 40}") for n in range(count)]


async def total(processes: list[ForwarderProcess], name: str, **labels: str) -> float:
    """A metric summed over the processes (and over its label values unless given)."""
    samples = [await process.metrics() for process in processes]
    if labels:
        return sum(sample.value(name, **labels) for sample in samples)
    return sum(sample.total(name) for sample in samples)


async def test_three_replicas_hold_one_limit_with_skewed_traffic(
    broker, legiti, redis_server, tmp_path
) -> None:
    """60% of the traffic on one partition, so on one replica, which then sends alone:
    the group's busiest second holds at most N and the stream gets >= 90% of N."""
    topic = await create_forwarder_topics(broker.bootstrap, unique(), partitions=3)
    env = fleet_env(broker.bootstrap, topic, legiti, redis_server, rate_limit="40/second")
    async with fleet(env, tmp_path):
        await produce(broker.bootstrap, topic, events("hot", 240), partition=0)
        await produce(broker.bootstrap, topic, events("warm", 80), partition=1)
        await produce(broker.bootstrap, topic, events("cool", 80), partition=2)
        await eventually(lambda: len(legiti.accepted) == 400, timeout=40)
    arrivals = times(legiti)
    assert busiest_window(arrivals, 1.0) <= 40
    assert steady_use(arrivals, 40, 1.0) >= 0.9
    assert len(keys(legiti)) == 400


async def test_copies_in_partitions_of_other_replicas_are_not_sent(
    broker, legiti, redis_server, tmp_path
) -> None:
    topic = await create_forwarder_topics(broker.bootstrap, unique(), partitions=3)
    env = fleet_env(broker.bootstrap, topic, legiti, redis_server)
    originals = events("copy", 30)
    async with fleet(env, tmp_path) as processes:
        await produce(broker.bootstrap, topic, originals, partition=0)
        await eventually(lambda: len(legiti.accepted) == 30)
        await produce(broker.bootstrap, topic, originals, partition=1)
        await produce(broker.bootstrap, topic, originals, partition=2)

        async def all_suppressed() -> bool:
            return await total(processes, "forwarder_events_duplicate_total") == 60

        await wait_until(all_suppressed, what="the 60 copies counted as duplicates")
        shared = await total(processes, "forwarder_events_duplicate_total", scope="shared")
    assert len(legiti.requests) == 30
    assert shared >= 40, "the copies in the other replicas' partitions were known by Redis"


async def test_kill_9_loses_nothing_and_resends_at_most_what_was_in_flight(
    broker, legiti, redis_server, tmp_path
) -> None:
    topic = await create_forwarder_topics(broker.bootstrap, unique(), partitions=3)
    env = fleet_env(
        broker.bootstrap, topic, legiti, redis_server, rate_limit="60/second", max_in_flight="4"
    )
    async with fleet(env, tmp_path) as processes:
        for partition in range(3):
            await produce(
                broker.bootstrap, topic, events(f"p{partition}-", 150), partition=partition
            )
        await eventually(lambda: len(legiti.accepted) >= 120, timeout=20)
        processes[0].kill()
        await eventually(lambda: len(keys(legiti)) == 450, timeout=60, what="every event")
    resent = len(legiti.accepted) - len(keys(legiti))
    assert resent <= 4, f"{resent} events sent twice; the killed replica had at most 4 in flight"
    assert busiest_window(times(legiti), 1.0) <= 60


async def test_a_rolling_restart_inside_one_window_keeps_the_window(
    broker, legiti, redis_server, tmp_path
) -> None:
    """Every replica is replaced (stopped, a new one started and ready) after the group
    spent a 20-second window's allowance: the log is in Redis, so the new processes
    see what the old ones sent, and the next sends wait for the window to pass."""
    topic = await create_forwarder_topics(broker.bootstrap, unique(), partitions=3)
    env = fleet_env(broker.bootstrap, topic, legiti, redis_server, rate_limit="20/20s")
    for partition in range(3):
        await produce(broker.bootstrap, topic, events(f"r{partition}-", 40), partition=partition)
    async with fleet(env, tmp_path) as processes:
        await eventually(lambda: len(legiti.accepted) >= 20, timeout=20)
        for number, old in enumerate(list(processes)):
            await old.stop()
            processes[number] = ForwarderProcess(
                env, log_dir=tmp_path, name=f"forwarder-new-{number}"
            )
            await processes[number].wait_ready()
        await eventually(lambda: len(legiti.accepted) >= 25, timeout=40)
    assert busiest_window(times(legiti), 20.0) <= 20


async def test_redis_stopped_and_started_mid_stream(
    broker, legiti, private_redis, tmp_path
) -> None:
    """No event lost, the limit held by the partition shares meanwhile, one warning per
    replica, and shared mode back by itself."""
    topic = await create_forwarder_topics(broker.bootstrap, unique(), partitions=3)
    env = fleet_env(broker.bootstrap, topic, legiti, private_redis, rate_limit="30/second")
    async with fleet(env, tmp_path) as processes:
        for partition in range(3):
            await produce(
                broker.bootstrap, topic, events(f"o{partition}-", 150), partition=partition
            )
        await eventually(lambda: len(legiti.accepted) >= 90, timeout=20)
        private_redis.stop()

        async def all_fell_back() -> bool:
            return await total(processes, "forwarder_shared_state_up") == 0

        await wait_until(all_fell_back, timeout=20, what="every replica in fallback")
        during = len(legiti.accepted)
        await eventually(lambda: len(legiti.accepted) >= during + 60, timeout=30)
        private_redis.start()

        async def all_back() -> bool:
            return await total(processes, "forwarder_shared_state_up") == REPLICAS

        await wait_until(all_back, timeout=20, what="every replica back in shared mode")
        await eventually(lambda: len(keys(legiti)) == 450, timeout=60, what="every event")
        warnings = [len(process.events(LOST)) for process in processes]
    assert busiest_window(times(legiti), 1.0) <= 30
    assert warnings == [1, 1, 1]


async def test_without_redis_three_replicas_stay_within_the_limit_across_a_rebalance(
    broker, legiti, tmp_path
) -> None:
    topic = await create_forwarder_topics(broker.bootstrap, unique(), partitions=6)
    env = fleet_env(broker.bootstrap, topic, legiti, None, rate_limit="30/second")
    async with fleet(env, tmp_path) as processes:
        for partition in range(6):
            await produce(
                broker.bootstrap, topic, events(f"s{partition}-", 60), partition=partition
            )
        await eventually(lambda: len(legiti.accepted) >= 90, timeout=30)
        await processes[2].stop()  # its partitions move to the other two
        await eventually(lambda: len(keys(legiti)) == 360, timeout=60, what="every event")
    assert busiest_window(times(legiti), 1.0) <= 30
