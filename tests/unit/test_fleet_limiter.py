"""The fleet limiter's own decisions, driven by the clock without Redis: the stock of
leased permits, what each call to the shared log carries, the fallback to the
partition share and the sends it records when Redis is back. (The script itself and
the refill task are tested against a real Redis in tests/integration.)"""

from __future__ import annotations

import math

import pytest
import redis.asyncio

from forwarder.limits.fleet import FleetLimiter, FleetLimits
from forwarder.limits.rate import Rate
from forwarder.limits.shared_log import Grant, SharedLog
from forwarder.shared.status import SharedStatus

RATE = Rate(100, 10.0)  # lease lifetime 1 s (a tenth of W), blocks up to 10
SEND_TIMEOUT = 2.0


def fleet(now: float = 0.0) -> FleetLimits:
    # A client that is never used: nothing here talks to a server.
    client = redis.asyncio.Redis(host="127.0.0.1", port=9)
    return FleetLimits(
        SharedLog(client, "forwarder:{g}:"),
        SharedStatus("redis://test"),
        prefix="forwarder:{g}:",
        send_timeout=SEND_TIMEOUT,
        now=now,
    )


def grant(granted: int, wait_us: int = -1, recovering_us: int = 0) -> Grant:
    return Grant(
        server_now_us=0,
        granted=granted,
        wait_us=wait_us,
        recovering_us=recovering_us,
        epoch=b"epoch",
    )


def shared(now: float = 0.0) -> tuple[FleetLimits, FleetLimiter]:
    backend = fleet(now)
    limiter = backend.limiter(RATE)
    backend.up = True
    return backend, limiter


def test_an_empty_stock_asks_for_more_and_waits_to_be_woken() -> None:
    backend, limiter = shared()
    assert limiter.delay(1.0) == math.inf
    assert backend._kick.is_set()
    assert limiter.block == 2
    request = limiter.exchange(1.0, first_id=0, mark_us=0)
    assert request.want == 2
    assert limiter.granted(request, grant(2), sent_at=1.0)
    assert limiter.delay(1.1) == 0.0
    first = limiter.start(1.1)
    assert first.permit_id == request.permit_id(0)


def test_finishes_are_reported_with_their_age() -> None:
    _, limiter = shared()
    limiter.delay(1.0)
    limiter.granted(request := limiter.exchange(1.0, first_id=0, mark_us=0), grant(2), 1.0)
    permit = limiter.start(1.1)
    permit.finish(1.5)
    report = limiter.exchange(2.0, first_id=10, mark_us=0)
    assert report.finished == [(request.permit_id(0), 500_000)]
    limiter.granted(report, grant(0), 2.0)
    assert limiter.exchange(2.5, first_id=20, mark_us=0).finished == []


def test_unused_leases_go_back_when_they_expire_and_the_next_block_is_smaller() -> None:
    _, limiter = shared()
    limiter.delay(1.0)
    leased = limiter.exchange(1.0, first_id=0, mark_us=0)
    limiter.granted(leased, grant(2), 1.0)
    assert limiter.due(1.5) == pytest.approx(1.0 + limiter.lease_ttl)
    assert limiter.delay(1.0 + limiter.lease_ttl) == math.inf
    assert limiter.block == 2  # halved to 1, then doubled again by the new demand
    request = limiter.exchange(2.5, first_id=10, mark_us=0)
    assert request.returned == [leased.permit_id(0), leased.permit_id(1)]


def test_a_full_log_is_asked_again_when_it_frees_a_slot_or_a_finish_may_have() -> None:
    _, limiter = shared()
    limiter.delay(1.0)
    full = limiter.exchange(1.0, first_id=0, mark_us=0)
    limiter.granted(full, grant(0, wait_us=3_000_000), 1.0)
    assert limiter.due(1.5) == 4.0
    assert limiter.exchange(1.5, first_id=10, mark_us=0).want == 0


def test_without_redis_the_partition_share_decides() -> None:
    backend = fleet(now=0.0)
    limiter = backend.limiter(RATE)
    backend.rebalanced(1, 2, 0.0)
    assert not backend.up
    # Nothing before W + the send timeout after start-up and assignment.
    assert limiter.delay(5.0) > 0
    assert limiter.delay(RATE.window + SEND_TIMEOUT - 0.01) > 0
    now = RATE.window + SEND_TIMEOUT
    for _ in range(50):
        assert limiter.delay(now) == 0.0
        limiter.start(now)
    assert limiter.delay(now) == math.inf  # half of 100, all in flight
    assert backend.share(now) == 0.5


def test_sends_made_without_redis_are_recorded_when_it_is_back() -> None:
    backend = fleet(now=0.0)
    limiter = backend.limiter(RATE)
    backend.rebalanced(1, 1, 0.0)
    now = RATE.window + SEND_TIMEOUT
    done = limiter.start(now)
    done.finish(now + 0.25)
    under_way = limiter.start(now)
    backend.up = True
    request = limiter.exchange(now + 1.0, first_id=0, mark_us=0)
    ages = sorted(age for _, age in request.recorded)
    assert ages == [-1, 750_000]
    limiter.granted(request, grant(0), now + 1.0)
    under_way.finish(now + 2.0)
    assert [age for _, age in limiter.exchange(now + 3.0, first_id=5, mark_us=0).finished] == [
        1_000_000
    ]
    assert limiter.exchange(now + 4.0, first_id=9, mark_us=0).recorded == []


def test_after_a_return_both_the_permit_and_the_share_are_needed() -> None:
    backend, limiter = shared()
    backend.rebalanced(1, 4, 0.0)
    limiter.delay(20.0)
    limiter.granted(limiter.exchange(20.0, first_id=0, mark_us=0), grant(2), 20.0)
    assert limiter.delay(20.0) == 0.0
    backend.both_until = 30.0
    for _ in range(25):
        limiter.start(20.0).finish(20.0)
    assert limiter.delay(20.0) > 0  # a quarter of 100 used: the share binds
    assert backend.share(20.0) == 0.25
    backend.both_until = 15.0
    assert backend.share(20.0) == 1.0
