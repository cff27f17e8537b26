"""Limits the whole consumer group shares through Redis, with the partition share as fallback.

The dispatcher asks a limiter synchronously, once per event, so a `FleetLimiter`
answers from a small local stock of permits leased from the group's log in
Redis (`forwarder.limits.shared_log`); `FleetLimits.start` runs the task that
refills the stocks, reports finishes, returns unused permits, and calls `wake`
when permits arrive. Stocks start at one permit and double while they run dry
(up to a tenth of the limit, at most `max_block`), and halve when permits expire
unused, so that an idle member holds back little of the group's allowance; a
lease lives a tenth of the window (at most `max_lease` seconds), after which an
unused permit is returned.

Modes, decided by whether the last call to Redis worked:

- **shared**: a send needs a permit from the stock.
- **fallback** (Redis unreachable, at start or later): a send needs room in the
  member's partition share (`forwarder.limits.partition_share`). Other members
  may have spent the whole allowance through Redis just before it went, up to
  the end of the last leases they could hold, so the share counts only W after
  that (`PartitionShare.busy_until`). Redis is tried again every
  `retry_interval` seconds. One warning line and `forwarder_shared_state_up 0`
  say so (`forwarder.shared.status`).
- **both**, after a return: the member's own fallback sends of the last W are
  recorded into the shared log, and until everyone has noticed the return (within
  `retry_interval`) and the member's own share counts again, it needs a permit
  *and* room in its share. Members still in fallback send without recording; as
  long as everyone keeps its share too, the group stays within N. The returning
  member sets a marker in Redis for that long, and every member that sees it (in
  its script answers) keeps its share as well until it expires.
- **Redis lost its data** (restarted without persistence, while the connections
  looked fine): the log's epoch changed, so the sends of the last window are
  forgotten. Every member that sees the new epoch treats it like an outage that
  just ended: it sends nothing until the sends Redis forgot have left the window
  (the share's wait), and sets the marker so that members starting meanwhile
  keep their share too.

The share log sees every send in every mode, so it is complete whenever the
share is enforced. What is weaker while Redis is away or partly away is in
docs/fleet.md: a replica cut off from a Redis that the others still reach, or
one that starts in the `retry_interval` after Redis came back before any
returning member marked it, can add its share to the group's N.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import deque
from collections.abc import Callable

from redis.exceptions import RedisError

from forwarder.limits.partition_share import PartitionShare, ShareLimiter
from forwarder.limits.rate import Rate
from forwarder.limits.shared_log import Exchange, Grant, SharedLog
from forwarder.limits.sliding_log import Slot
from forwarder.shared.status import SharedStatus

MICROS = 1_000_000
CLOSE_TIMEOUT = 1.0


def _micros(seconds: float) -> int:
    return max(0, math.floor(seconds * MICROS))


class FleetPermit:
    """One send's permit: its place in the share log and, once known to Redis, its id."""

    __slots__ = ("limiter", "permit_id", "recorded", "slot")

    def __init__(self, limiter: FleetLimiter, slot: Slot, permit_id: str | None) -> None:
        self.limiter = limiter
        self.slot = slot
        self.permit_id = permit_id
        self.recorded = permit_id is not None

    def finish(self, now: float) -> None:
        self.slot.finish(now)
        if self.recorded:
            self.limiter.finished(self, now)


class FleetLimiter:
    """One limit of the group: a stock of leased permits and this member's share log.

    Synchronous and clock-driven like every limiter; `FleetLimits` moves the data
    between it and Redis (`exchange` builds a call, `granted` applies the answer).
    """

    def __init__(self, rate: Rate, key: str, fleet: FleetLimits) -> None:
        self.rate = rate
        self.key = key
        self._fleet = fleet
        self.share_log = ShareLimiter(rate, fleet.partition_share)
        self.lease_ttl = min(fleet.max_lease, rate.window / 10)
        self.max_block = max(1, min(fleet.max_block, rate.count // 10))
        self.block = 1
        self._stock: deque[tuple[str, float]] = deque()
        self._finished: list[tuple[str, float]] = []
        self._returned: list[str] = []
        self._unrecorded: deque[FleetPermit] = deque()
        self._replaying: list[FleetPermit] = []
        self._wanted = False
        self._not_before = 0.0

    # The dispatcher's side --------------------------------------------------------

    def delay(self, now: float) -> float:
        fleet = self._fleet
        if not fleet.up:
            return self.share_log.delay(now)
        self._expire(now)
        if self._stock:
            stock_wait = 0.0
        else:
            if not self._wanted:
                self._wanted = True
                self.block = min(self.block * 2, self.max_block)
                fleet.kick()
            stock_wait = math.inf
        if now < fleet.both_until:
            return max(stock_wait, self.share_log.delay(now))
        self.share_log.prune(now)  # it keeps every send, for when the share counts again
        return stock_wait

    def start(self, now: float) -> FleetPermit:
        slot = self.share_log.start(now)
        if self._fleet.up and self._stock:
            permit_id, _ = self._stock.popleft()
            if len(self._stock) <= self.block // 2:
                self._wanted = True
                self._fleet.kick()
            return FleetPermit(self, slot, permit_id)
        permit = FleetPermit(self, slot, None)
        self._unrecorded.append(permit)
        return permit

    def finished(self, permit: FleetPermit, now: float) -> None:
        assert permit.permit_id is not None
        self._finished.append((permit.permit_id, now))
        self._fleet.kick()

    # The refill task's side ------------------------------------------------------

    def _expire(self, now: float) -> None:
        """Leases past their use-by time go back to the log, and the next block is smaller."""
        stock = self._stock
        if stock and stock[0][1] <= now:
            while stock and stock[0][1] <= now:
                self._returned.append(stock.popleft()[0])
            self.block = max(1, self.block // 2)

    def due(self, now: float) -> float:
        """When this limiter next needs the refill task (∞: only when kicked)."""
        if self._finished or self._returned or self._unrecorded:
            return now
        moments = [math.inf]
        if self._stock:
            moments.append(self._stock[0][1])
        if self._wanted:
            moments.append(self._not_before)
        return min(moments)

    def exchange(self, now: float, *, first_id: int, mark_us: int, epoch: str = "") -> Exchange:
        """The call to make now: finishes, returns, sends made without Redis, and how
        many permits to ask for (a finish may have freed a slot, so it asks again)."""
        self._expire(now)
        want = 0
        if self._wanted and (now >= self._not_before or self._finished):
            want = max(0, self.block - len(self._stock))
        request = Exchange(
            key=self.key,
            count=self.rate.count,
            window_us=_micros(self.rate.window),
            lease_bound_us=_micros(self.lease_ttl + self._fleet.send_timeout) + 1,
            send_bound_us=_micros(self._fleet.send_timeout) + 1,
            holder=self._fleet.holder,
            first_id=first_id,
            want=want,
            mark_us=mark_us,
            epoch=epoch,
            finished=[(permit, _micros(now - at)) for permit, at in self._finished],
            returned=list(self._returned),
        )
        if self._unrecorded:
            self._replaying = self._replayable(now)
            for permit in self._replaying:
                if permit.permit_id is None:
                    permit.permit_id = f"{self._fleet.holder}r{self._fleet.take_ids(1)}"
                done = permit.slot.done_at
                request.recorded.append(
                    (permit.permit_id, -1 if done is None else _micros(now - done))
                )
        return request

    def _replayable(self, now: float) -> list[FleetPermit]:
        """Fallback sends that may still be in the window, to be recorded in Redis."""
        unrecorded, window = self._unrecorded, self.rate.window
        while unrecorded and (done := unrecorded[0].slot.done_at) is not None:
            if done + window > now:
                break
            unrecorded.popleft()
        return list(unrecorded)

    def granted(self, request: Exchange, grant: Grant, sent_at: float) -> bool:
        """Apply the answer to `request`, built at `sent_at`; True when permits arrived."""
        sent = {permit for permit, _ in request.finished}
        self._finished = [entry for entry in self._finished if entry[0] not in sent]
        del self._returned[: len(request.returned)]
        for permit in self._replaying:
            # Sent without Redis; now in its log. Its finish from now on is reported,
            # and one that came while the call was under way is reported next time.
            permit.recorded = True
            self._unrecorded.popleft()
            if permit.slot.done_at is not None and permit.slot.done_at > sent_at:
                self._finished.append((permit.permit_id or "", permit.slot.done_at))
        self._replaying = []
        for number in range(grant.granted):
            self._stock.append((request.permit_id(number), sent_at + self.lease_ttl))
        if request.want:
            self._wanted = grant.granted < request.want and not self._stock
            if grant.granted < request.want and grant.wait_us >= 0:
                self._not_before = sent_at + grant.wait_us / MICROS
        return grant.granted > 0

    def fall_back(self) -> None:
        """Redis is gone: leased permits are not used any more (their entries expire)."""
        self._stock.clear()
        self._wanted = False
        self._not_before = 0.0

    def leftovers(self, now: float) -> Exchange | None:
        """At shutdown: the unused permits to give back, and the finishes not yet told."""
        returned = self._returned + [permit for permit, _ in self._stock]
        self._stock.clear()
        if not returned and not self._finished:
            return None
        return Exchange(
            key=self.key,
            count=self.rate.count,
            window_us=_micros(self.rate.window),
            lease_bound_us=0,
            send_bound_us=_micros(self._fleet.send_timeout) + 1,
            holder=self._fleet.holder,
            first_id=0,
            want=0,
            finished=[(permit, _micros(now - at)) for permit, at in self._finished],
            returned=returned,
        )


class FleetLimits:
    """The backend for a group with Redis: shared logs, the partition share as fallback."""

    def __init__(
        self,
        log: SharedLog,
        status: SharedStatus,
        *,
        prefix: str,
        send_timeout: float,
        now: float,
        retry_interval: float = 1.0,
        max_block: int = 32,
        max_lease: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._status = status
        self._prefix = prefix
        self.send_timeout = send_timeout
        self.retry_interval = retry_interval
        self.max_block = max_block
        self.max_lease = max_lease
        self._clock = clock
        self.partition_share = PartitionShare(now, send_timeout)
        self.holder = f"{uuid.uuid4().hex[:12]}:"
        self.up = False
        self._down = False
        """In fallback after a failed call (not merely before the first one)."""
        self.both_until = -math.inf
        self._both_ends = False
        self._mark_until = -math.inf
        """Until when this member keeps the group's recovery marker up."""
        self._epoch: bytes | None = None
        self._retry_at = now
        self._next_id = 0
        self._limiters: dict[tuple[str, int, float], FleetLimiter] = {}
        self._kick = asyncio.Event()
        self._closing = False
        self._wake: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None

    # LimiterBackend -----------------------------------------------------------------

    def limiter(self, rate: Rate) -> FleetLimiter:
        name = rate.counter if rate.counter is not None else "rate"
        key = (name, rate.count, rate.window)
        limiter = self._limiters.get(key)
        if limiter is None:
            redis_key = f"{self._prefix}limit:{name}:{rate.count}/{rate.window:g}s"
            limiter = self._limiters[key] = FleetLimiter(rate, redis_key, self)
        return limiter

    def rebalanced(self, assigned: int, total: int, now: float) -> None:
        self.partition_share.rebalanced(assigned, total, now)
        self._wake()

    def share(self, now: float) -> float:
        """1 in shared mode (any member may use the whole limit); the partition share else."""
        if self.up and now >= self.both_until:
            return 1.0
        longest = max((limiter.rate.window for limiter in self._limiters.values()), default=0.0)
        return self.partition_share.fraction(now, longest)

    async def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._task = asyncio.create_task(self._run(), name="fleet-limits")

    async def aclose(self) -> None:
        """Stop the refill task (after the call under way, if any: cancelling it inside
        `asyncio.timeout` can be lost on Python 3.11), then give back unused permits."""
        self._closing = True
        self._kick.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self.up:
            now = self._clock()
            leftovers = [
                request for lim in self._limiters.values() if (request := lim.leftovers(now))
            ]
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._log.exchange(leftovers)
        await self._log.aclose()

    # The refill task ------------------------------------------------------------------

    def kick(self) -> None:
        self._kick.set()

    def take_ids(self, count: int) -> int:
        first = self._next_id
        self._next_id += count
        return first

    def _due(self, now: float) -> float:
        if not self.up:
            return self._retry_at
        moments = [limiter.due(now) for limiter in self._limiters.values()]
        if now < self.both_until:
            moments.append(self.both_until)
        return min(moments, default=math.inf)

    async def _run(self) -> None:
        if not self._limiters:
            return  # no limit configured: nothing to share
        while not self._closing:
            wait = self._due(self._clock()) - self._clock()
            if wait > 0 and not self._kick.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if wait == math.inf else wait):
                        await self._kick.wait()
            self._kick.clear()
            if self._closing:
                return
            now = self._clock()
            if self._both_ends and now >= self.both_until:
                self._both_ends = False
                self._wake()  # the share no longer binds: a delay it set may be over
            if not self.up and now < self._retry_at:
                continue
            await self._exchange(now)

    async def _exchange(self, now: float) -> None:
        longest = max(limiter.rate.window for limiter in self._limiters.values())
        if self._down:
            # Coming back: keep the share too until everyone noticed the return (within
            # a retry interval) and until this member's own share counts again.
            self._mark_until = max(
                now + self.retry_interval + longest,
                self.partition_share.busy_end + longest,
            )
        mark_us = _micros(self._mark_until - now) if self._mark_until > now else 0
        # Fresh for every call: the epoch a member proposes must never be one it knew.
        epoch = uuid.uuid4().hex
        calls: list[tuple[FleetLimiter, Exchange]] = []
        for limiter in self._limiters.values():
            if self.up and limiter.due(now) > now and now >= self._mark_until:
                continue
            first = self.take_ids(limiter.block)
            request = limiter.exchange(now, first_id=first, mark_us=mark_us, epoch=epoch)
            calls.append((limiter, request))
        try:
            grants = await self._log.exchange([request for _, request in calls])
        except (RedisError, OSError, TimeoutError) as exc:
            self._fall_back(now, exc)
            return
        answered = self._clock()
        arrived = False
        for (limiter, request), grant in zip(calls, grants, strict=True):
            arrived |= limiter.granted(request, grant, now)
            if grant.recovering_us:
                self.both_until = max(self.both_until, answered + grant.recovering_us / MICROS)
                self._both_ends = True
            if self._epoch is not None and grant.epoch != self._epoch:
                self._forgotten(now)
            self._epoch = grant.epoch
        if not self.up:
            self.up = True
            self._down = False
            self._status.reached()
            arrived = True
        if arrived:
            self._wake()

    def _forgotten(self, now: float) -> None:
        """Redis lost its data: the sends of the last window are gone from the log. As
        after an outage, nothing is sent until the last of them has left the window
        (the share's wait), and the marker tells every member to keep its share."""
        longest = max(limiter.rate.window for limiter in self._limiters.values())
        longest_lease = max(limiter.lease_ttl for limiter in self._limiters.values())
        self.partition_share.busy_until(now + longest_lease + self.send_timeout)
        self._mark_until = self.partition_share.busy_end + longest
        self.both_until = max(self.both_until, self._mark_until)
        self._both_ends = True
        self._status.forgotten()
        self._kick.set()

    def _fall_back(self, now: float, error: BaseException) -> None:
        if not self._down:
            # Until the last lease any member could hold ends, others may be sending;
            # at start-up too (they may have been using Redis until just now).
            longest_lease = max(limiter.lease_ttl for limiter in self._limiters.values())
            self.partition_share.busy_until(now + longest_lease + self.send_timeout)
        self._down = True
        self.up = False
        self._retry_at = now + self.retry_interval
        for limiter in self._limiters.values():
            limiter.fall_back()
        self._status.lost(error)
        self._wake()
