"""The group's de-duplication store in a real Redis, used by several replicas at once
(each `SharedDedupe` has its own connection, as separate processes would)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import redis.asyncio

from forwarder.sandbox.redis import SandboxRedis
from forwarder.shared.connection import redis_target
from forwarder.shared.dedupe import BUCKETS, Claim, SharedDedupe, redis_key
from forwarder.shared.status import SharedStatus
from tests.conftest import eventually, wait_until
from tests.integration.kafka_helpers import unique


def replica(server: SandboxRedis, group: str, *, claim_ttl: float = 5.0) -> SharedDedupe:
    target = redis_target(server.url, group)
    return SharedDedupe(
        target.client(0.5),
        SharedStatus(target.display),
        prefix=target.dedupe_prefix,
        ttl=60.0,
        claim_ttl=claim_ttl,
        retry_interval=0.2,
    )


@asynccontextmanager
async def started(*stores: SharedDedupe) -> AsyncIterator[None]:
    for store in stores:
        await store.start()
    try:
        yield
    finally:
        for store in stores:
            await store.aclose()


async def test_a_key_goes_to_one_replica_and_its_delivery_reaches_the_others(
    redis_server,
) -> None:
    group = unique()
    a, b = replica(redis_server, group), replica(redis_server, group)
    async with started(a, b):
        assert await a.claim(["k1", "k2", "k1"]) == {"k1": Claim.MINE, "k2": Claim.MINE}
        assert await b.claim(["k1", "k3"]) == {"k1": Claim.BUSY, "k3": Claim.MINE}
        assert await a.claim(["k1"]) == {"k1": Claim.MINE}, "its own claim, asked again"
        a.delivered("k1", time.monotonic())
        await wait_until(async_equals(b, "k1", Claim.DELIVERED), what="the delivered mark")
        assert await a.claim(["k1"]) == {"k1": Claim.DELIVERED}
        a.release("k2")  # dead-lettered: a later copy anywhere may go
        await wait_until(async_equals(b, "k2", Claim.MINE), what="the release")
        assert a.held == 0
        assert b.held == 2


async def test_another_group_shares_nothing(redis_server) -> None:
    a, b = replica(redis_server, unique()), replica(redis_server, unique())
    async with started(a, b):
        assert await a.claim(["k"]) == {"k": Claim.MINE}
        a.delivered("k", time.monotonic())
        await wait_until(async_equals(a, "k", Claim.DELIVERED))
        assert await b.claim(["k"]) == {"k": Claim.MINE}


async def test_a_dead_claimants_keys_are_free_after_the_claim_ttl(redis_server) -> None:
    group = unique()
    live = replica(redis_server, group, claim_ttl=0.3)
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        # What a replica killed with -9 leaves behind: its claim, never renewed nor released.
        prefix = redis_target(redis_server.url, group).dedupe_prefix
        await client.set(redis_key(prefix, "k"), b"c:killed-replica", px=300)
    finally:
        await client.aclose()
    async with started(live):
        assert await live.claim(["k"]) == {"k": Claim.BUSY}
        await wait_until(async_equals(live, "k", Claim.MINE), what="the dead claim to lapse")


async def test_a_live_claimant_keeps_its_claims_past_their_ttl(redis_server) -> None:
    """An event retrying for longer than the claim TTL keeps its key: renewals."""
    group = unique()
    holder = replica(redis_server, group, claim_ttl=0.3)
    other = replica(redis_server, group, claim_ttl=0.3)
    async with started(holder, other):
        assert await holder.claim(["k"]) == {"k": Claim.MINE}
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            start = await server_seconds(client)
            await wait_until(
                lambda: server_seconds_since(client, start, 1.0), what="three claim TTLs"
            )
        finally:
            await client.aclose()
        assert await other.claim(["k"]) == {"k": Claim.BUSY}


async def test_a_batch_is_one_script_call_per_key_group_and_no_reload(redis_server) -> None:
    """A poll batch of 500 keys costs one EVALSHA per key group (sent in one pipeline)
    and no script load: the scripts are loaded once per connection."""
    group = unique()
    store = replica(redis_server, group)
    keys = [f"key-{n}" for n in range(500)]
    async with started(store):
        await store.claim(["warm-up"])  # loads the scripts
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            before = await command_calls(client)
            claims = await store.claim(keys)
            after = await command_calls(client)
        finally:
            await client.aclose()
    assert claims == dict.fromkeys(keys, Claim.MINE)
    assert after.get("evalsha", 0) - before.get("evalsha", 0) == BUCKETS
    assert after.get("script", 0) == before.get("script", 0), "no script load per batch"


async def test_redis_lost_and_back(private_redis) -> None:
    """While Redis is away claims answer None at once (local de-duplication only) and
    delivered marks wait; when it is back the marks are written and claims work again."""
    group = unique()
    changes: list[bool] = []
    target = redis_target(private_redis.url, group)
    store = SharedDedupe(
        target.client(0.5),
        SharedStatus(target.display, changes.append),
        prefix=target.dedupe_prefix,
        ttl=60.0,
        claim_ttl=5.0,
        retry_interval=0.2,
    )
    other = replica(private_redis, group)
    async with started(store, other):
        assert await store.claim(["before"]) == {"before": Claim.MINE}
        private_redis.stop()
        assert await store.claim(["during"]) is None
        assert changes == [True, False]
        assert await store.claim(["during"]) is None, "no new attempt before the retry time"
        store.delivered("during", time.monotonic())
        private_redis.start()  # empty: a restart without persistence
        await eventually(lambda: changes == [True, False, True], what="the return")
        await wait_until(async_equals(other, "during", Claim.DELIVERED), what="the late mark")


def async_equals(store: SharedDedupe, key: str, claim: Claim) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await store.claim([key]) == {key: claim}

    return check


async def server_seconds(client: redis.asyncio.Redis) -> float:
    seconds, micros = await client.time()
    return float(seconds) + micros / 1e6


async def server_seconds_since(client: redis.asyncio.Redis, start: float, span: float) -> bool:
    return await server_seconds(client) - start >= span


async def command_calls(client: redis.asyncio.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
