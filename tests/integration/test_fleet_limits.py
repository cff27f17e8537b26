"""The group's limits in a real Redis, measured where they matter: at the Legiti stand-in.

Each `Replica` is what a forwarder process contributes: its own Redis connection, a
`FleetLimits` backend and a dispatcher that sends to the stand-in whenever its limiter
lets it, as the pipeline's does. The invariant checked is the issue's: no half-open
interval [t, t + W) of the stand-in's arrival times holds more than N requests, across
all replicas; and a steady stream gets at least 90% of N.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from types import TracebackType
from typing import Self

import httpx
import redis.asyncio

from forwarder.limits.fleet import FleetLimiter, FleetLimits, FleetPermit
from forwarder.limits.rate import Rate
from forwarder.limits.shared_log import Exchange, SharedLog
from forwarder.sandbox.legiti import LegitiStub
from forwarder.shared.connection import redis_target
from forwarder.shared.status import SharedStatus
from tests.conftest import eventually, wait_until
from tests.integration.kafka_helpers import unique
from tests.integration.test_fleet import steady_use
from tests.integration.test_limits import busiest_window

SEND_TIMEOUT = 1.0
BODY = b'{"user_id":"u1","action_type":"logout"}'


class Replica:
    """One member of the group: a Redis connection, the fleet limits and a dispatcher."""

    def __init__(
        self,
        redis_url: str,
        group: str,
        legiti: LegitiStub,
        rate: Rate,
        *,
        assigned: int = 1,
        total: int = 1,
        busy: bool = True,
    ) -> None:
        self.target = redis_target(redis_url, group)
        self.rate = rate
        self.legiti = legiti
        self.busy = busy
        """Whether it has a backlog: an idle replica runs its limits but sends nothing."""
        self.modes: list[bool] = []
        self.status = SharedStatus(self.target.display, self.modes.append)
        self.limits = FleetLimits(
            SharedLog(self.target.client(0.5), self.target.prefix),
            self.status,
            prefix=self.target.prefix,
            send_timeout=SEND_TIMEOUT,
            now=time.monotonic(),
            retry_interval=0.2,
        )
        self.limiter: FleetLimiter = self.limits.limiter(rate)
        self.limits.rebalanced(assigned, total, time.monotonic())
        self.sent = 0
        self._wake = asyncio.Event()
        self._http = httpx.AsyncClient(
            base_url=legiti.url,
            headers={"authorization": "Bearer test-token", "content-type": "application/json"},
            timeout=SEND_TIMEOUT,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._dispatcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.limits.start(self._wake.set)
        self._dispatcher = asyncio.create_task(self._dispatch())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.busy = False
        self._stopping = True
        self._wake.set()
        if self._dispatcher is not None:
            await self._dispatcher
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self.limits.aclose()
        await self._http.aclose()

    async def _dispatch(self) -> None:
        while not self._stopping:
            self._wake.clear()
            now = time.monotonic()
            wait = self.limiter.delay(now) if self.busy else math.inf
            if wait <= 0:
                task = asyncio.create_task(self._send(self.limiter.start(now)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if wait == math.inf else wait):
                    await self._wake.wait()

    async def _send(self, permit: FleetPermit) -> None:
        try:
            response = await self._http.post("/ticketing/v1/auth", content=BODY)
            assert response.status_code == 201
            self.sent += 1
        finally:
            permit.finish(time.monotonic())
            self._wake.set()


def arrivals(legiti: LegitiStub) -> list[float]:
    return [request.at for request in legiti.requests]


async def test_three_replicas_share_one_limit_and_use_it(redis_server, legiti) -> None:
    rate = Rate(30, 1.0)
    group = unique()
    async with (
        Replica(redis_server.url, group, legiti, rate) as a,
        Replica(redis_server.url, group, legiti, rate) as b,
        Replica(redis_server.url, group, legiti, rate) as c,
    ):
        await eventually(lambda: len(legiti.requests) >= 5 * 30, timeout=20)
    times = arrivals(legiti)
    assert busiest_window(times, rate.window) <= 30
    assert steady_use(times, 30, rate.window) >= 0.9
    assert min(a.sent, b.sent, c.sent) > 0, "every replica got a part of the allowance"
    assert a.modes == b.modes == c.modes == [True]


async def test_one_busy_replica_gets_the_whole_limit(redis_server, legiti) -> None:
    """Traffic skewed onto one replica: the idle ones hold back nothing for long."""
    rate = Rate(40, 1.0)
    group = unique()
    async with (
        Replica(redis_server.url, group, legiti, rate) as busy,
        Replica(redis_server.url, group, legiti, rate, busy=False),
        Replica(redis_server.url, group, legiti, rate, busy=False),
    ):
        await eventually(lambda: len(legiti.requests) >= 5 * 40, timeout=20)
    times = arrivals(legiti)
    assert busiest_window(times, rate.window) <= 40
    assert steady_use(times, 40, rate.window) >= 0.9
    assert busy.sent == len(times)


async def test_a_restarted_replica_finds_the_window_already_used(redis_server, legiti) -> None:
    """The log outlives the process: a replica started right after another one used the
    whole allowance sends nothing until that window has passed."""
    rate = Rate(20, 2.0)
    group = unique()
    async with Replica(redis_server.url, group, legiti, rate):
        await eventually(lambda: len(legiti.requests) >= 20)
    async with Replica(redis_server.url, group, legiti, rate):
        await eventually(lambda: len(legiti.requests) >= 45, timeout=20)
    assert busiest_window(arrivals(legiti), rate.window) <= 20


async def test_leases_of_a_vanished_holder_expire(redis_server) -> None:
    """A holder killed with its whole block of permits leased and unfinished blocks the
    log only until lease time + lease lifetime + send timeout, then one window more."""
    target = redis_target(redis_server.url, unique())
    key = target.prefix + "limit:test"
    gone = SharedLog(target.client(1.0), target.prefix)
    survivor = SharedLog(target.client(1.0), target.prefix)
    bound_us, window_us = 300_000, 400_000

    def ask(holder: str, want: int) -> Exchange:
        return Exchange(key, 5, window_us, bound_us, bound_us, holder, 0, want)

    try:
        [taken] = await gone.exchange([ask("gone:", 5)])
        assert taken.granted == 5
        await gone.aclose()  # no finish, no return: as after kill -9
        [refused] = await survivor.exchange([ask("survivor:", 1)])
        assert refused.granted == 0
        assert refused.wait_us > 0
        grants = []

        async def granted() -> bool:
            [grant] = await survivor.exchange([ask("survivor:", 1)])
            grants.append(grant)
            return grant.granted == 1

        await wait_until(granted, timeout=10, what="the vanished holder's leases to expire")
        # On the server's clock: the first grant came no sooner than the leases' bound + W.
        assert grants[-1].server_now_us - taken.server_now_us >= bound_us + window_us
        assert all(g.granted == 0 for g in grants[:-1])
    finally:
        await survivor.aclose()


async def test_unused_permits_are_returned_at_shutdown(redis_server) -> None:
    target = redis_target(redis_server.url, unique())
    rate = Rate(100, 60.0)
    limits = FleetLimits(
        SharedLog(target.client(1.0), target.prefix),
        SharedStatus(target.display),
        prefix=target.prefix,
        send_timeout=SEND_TIMEOUT,
        now=time.monotonic(),
    )
    limiter = limits.limiter(rate)
    woken = asyncio.Event()
    await limits.start(woken.set)
    await eventually(lambda: limits.up, what="the first call to Redis")
    assert limiter.delay(time.monotonic()) == math.inf  # asks for a permit
    await eventually(lambda: limiter.delay(time.monotonic()) == 0.0)
    assert limiter.block == 2, "the stock ran dry once, so it doubled"
    limiter.start(time.monotonic()).finish(time.monotonic())
    await limits.aclose()
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        entries = await client.zrange(limiter.key, 0, -1, withscores=True)
    finally:
        await client.aclose()
    # The finished send stays in the window; the stock leased but unused went back.
    assert len(entries) == 1


async def test_redis_lost_and_back_falls_back_to_the_share_and_returns(
    private_redis, legiti
) -> None:
    """Redis stops mid-stream: both replicas fall back to half the limit each (after the
    last leases could have ended and a window more), and return to the shared log by
    themselves when it is back. No interval ever holds more than N."""
    rate = Rate(20, 1.0)
    group = unique()
    async with (
        Replica(private_redis.url, group, legiti, rate, assigned=1, total=2) as a,
        Replica(private_redis.url, group, legiti, rate, assigned=1, total=2) as b,
    ):
        await eventually(lambda: len(legiti.requests) >= 40, timeout=20)
        private_redis.stop()
        await eventually(lambda: a.modes[-1:] == b.modes[-1:] == [False], timeout=10)
        assert not a.limits.up
        lost = len(legiti.requests)
        await eventually(lambda: len(legiti.requests) >= lost + 40, timeout=20)
        assert a.limits.share(time.monotonic()) == 0.5
        private_redis.start()
        await eventually(lambda: a.modes[-1:] == b.modes[-1:] == [True], timeout=10)
        back = len(legiti.requests)
        await eventually(lambda: len(legiti.requests) >= back + 60, timeout=20)
    assert a.modes == b.modes == [True, False, True]
    assert busiest_window(arrivals(legiti), rate.window) <= 20


async def test_redis_losing_its_data_holds_the_group_back_for_a_window(
    redis_server, legiti
) -> None:
    """A Redis that restarts without persistence forgets the window's sends, though the
    connections may survive (FLUSHALL here): the members see the log's epoch change and
    send nothing until what Redis forgot has left the window."""
    rate = Rate(20, 1.0)
    group = unique()
    async with (
        Replica(redis_server.url, group, legiti, rate) as a,
        Replica(redis_server.url, group, legiti, rate),
    ):
        await eventually(lambda: len(legiti.requests) >= 30, timeout=20)
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        forgotten = len(legiti.requests)
        await eventually(lambda: len(legiti.requests) >= forgotten + 40, timeout=30)
    assert busiest_window(arrivals(legiti), rate.window) <= 20
    assert a.modes == [True], "Redis stayed reachable throughout"
