"""The engine's side of shared de-duplication (`SharedKeys`) against a real Redis: what a
poll batch's jobs become, and that a user's events keep their order behind a key another
replica holds."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import redis.asyncio

from forwarder.core.events import ActionType, AuthEvent
from forwarder.core.offsets import PartitionOffsets
from forwarder.core.scheduler import Job
from forwarder.engine.shared_keys import SharedKeys
from forwarder.shared.connection import redis_target
from forwarder.shared.dedupe import Claim, SharedDedupe, redis_key
from forwarder.shared.status import SharedStatus
from tests.conftest import eventually, wait_until
from tests.factories import record
from tests.integration.kafka_helpers import unique


def store(url: str, group: str) -> SharedDedupe:
    target = redis_target(url, group)
    return SharedDedupe(
        target.client(0.5),
        SharedStatus(target.display),
        prefix=target.dedupe_prefix,
        ttl=60.0,
        claim_ttl=5.0,
    )


def marked(url: str, group: str, key: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        client = redis.asyncio.Redis.from_url(url)
        try:
            key_in_redis = redis_key(redis_target(url, group).dedupe_prefix, key)
            return await client.get(key_in_redis) == b"d"
        finally:
            await client.aclose()

    return check


def job(key: str, user: str, offset: int, partition: int = 0) -> Job:
    return Job(
        record(partition=partition, offset=offset),
        AuthEvent(key, user, ActionType.LOGOUT),
        PartitionOffsets(),
    )


class Sink:
    """Where the key gate sends jobs: what the pipeline would admit or finish."""

    def __init__(self) -> None:
        self.admitted: list[str] = []
        self.duplicates: list[str] = []

    def admit(self, job: Job) -> None:
        self.admitted.append(job.event.key)

    def duplicate(self, job: Job) -> None:
        self.duplicates.append(job.event.key)


async def test_a_users_events_wait_in_order_behind_a_key_another_replica_holds(
    redis_server,
) -> None:
    group = unique()
    other = store(redis_server.url, group)
    keys = SharedKeys(store(redis_server.url, group), recheck=0.05)
    sink = Sink()
    keys.bind(sink.admit, sink.duplicate)
    await keys.start()
    await other.start()
    try:
        assert await other.claim(["k1", "done"]) == {"k1": Claim.MINE, "done": Claim.MINE}
        other.delivered("done", time.monotonic())
        await wait_until(marked(redis_server.url, group, "done"), what="the delivered mark")
        batch = [
            job("k1", "u", 1),  # another replica has it in flight
            job("k2", "u", 2),  # same user: must wait behind k1
            job("k3", "v", 3),  # another user: goes at once
            job("done", "w", 4),  # delivered by the other replica already
        ]
        await keys.take(batch)
        assert sink.admitted == ["k3"]
        assert sink.duplicates == ["done"]
        await keys.take([job("k4", "u", 5)])  # later, same user: behind k1 too
        assert sink.admitted == ["k3"]
        other.delivered("k1", time.monotonic())  # the other replica's outcome
        await eventually(lambda: sink.admitted == ["k3", "k2", "k4"], what="the lane to move")
        assert sink.duplicates == ["done", "k1"]
    finally:
        await keys.aclose()
        await other.aclose()


async def test_a_revoked_partitions_claims_are_given_up(redis_server) -> None:
    group = unique()
    mine = SharedKeys(store(redis_server.url, group))
    successor = store(redis_server.url, group)
    sink = Sink()
    mine.bind(sink.admit, sink.duplicate)
    await mine.start()
    await successor.start()
    try:
        queued = job("q", "u", 1, partition=3)
        await mine.take([queued])
        assert sink.admitted == ["q"]
        assert await successor.claim(["q"]) == {"q": Claim.BUSY}
        mine.revoked([("auth", 3)])  # not sent yet: the new owner need not wait

        async def free() -> bool:
            return await successor.claim(["q"]) == {"q": Claim.MINE}

        await wait_until(free, timeout=5, what="the released claim")
    finally:
        await mine.aclose()
        await successor.aclose()
