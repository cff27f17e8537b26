"""The group's memory of event keys: delivered by any replica, or in flight at one.

One Redis key per event key, so that any replica, or a process restarted after
`kill -9`, knows what the group did with it:

- absent: nobody has it; the first to `claim` it sends it.
- a claim (`c:<holder>`, with an expiry of `claim_ttl`, at least the send
  timeout): one replica is sending it. A copy elsewhere waits for the outcome
  (the caller asks again later). A live holder renews its claims while their
  events retry; a dead one's claims lapse within `claim_ttl`.
- `d` (with the de-duplication TTL): delivered; copies are duplicates.

A claim that ends without delivery (dead-lettered, or dropped at a rebalance
before it was sent) is released, so the next copy is sent.

Cost: `claim` is one pipelined round trip for a whole poll batch (a tiny script
per key, one key each, so it works on Redis Cluster too). Delivered marks,
releases and renewals are queued and written by a background task, one pipeline
per flush: nothing waits for Redis per event. A crash loses at most the marks
not yet flushed, a few milliseconds of deliveries, whose claims then lapse and
whose events the next owner sends again.

While Redis is unreachable (as this store or the limits last saw it: they share
one `SharedStatus`) `claim` answers None at once (the caller relies on its local
window), marks wait in a bounded queue and are written when it is back, and a
probe every `retry_interval` notices its return.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from forwarder.shared.status import SharedStatus

DELIVERED_MARK = b"d"
CLOSE_TIMEOUT = 1.0

CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then
  if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return v
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

OWN = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
"""Release (ARGV[2] = 0) or renew a claim, only while it is still this holder's."""


class Claim(enum.Enum):
    MINE = "mine"
    """This replica holds the key now: send it."""
    DELIVERED = "delivered"
    """A replica delivered it within the TTL: a duplicate."""
    BUSY = "busy"
    """Another replica is sending it: wait, then ask again."""


class SharedDedupe:
    def __init__(
        self,
        client: Redis,
        status: SharedStatus,
        *,
        prefix: str,
        ttl: float,
        claim_ttl: float,
        retry_interval: float = 1.0,
        max_pending: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._status = status
        self._prefix = prefix
        self._ttl = ttl
        self._claim_ms = max(1, math.ceil(claim_ttl * 1000))
        self.claim_ttl = claim_ttl
        self._retry_interval = retry_interval
        self._clock = clock
        self._holder = f"c:{uuid.uuid4().hex[:16]}".encode()
        self._shas: dict[str, str] = {}
        self._held: dict[str, float] = {}
        """Keys this replica claimed, with when the claim was last set or renewed."""
        self._marks: deque[tuple[str, float]] = deque(maxlen=max_pending)
        self._releases: list[str] = []
        self._retry_at = -math.inf
        self._kick = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    # The engine's side ---------------------------------------------------------------

    async def claim(self, keys: Sequence[str]) -> dict[str, Claim] | None:
        """Claim a poll batch's keys in one round trip; None while Redis is unreachable.

        Down, it answers at once without trying: the poll loop must not wait out a
        connection timeout per batch. The background task notices the return."""
        if not self._status.up:
            return None
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        try:
            replies = await self._scripted(
                [("claim", self._prefix + key, self._holder, self._claim_ms) for key in unique]
            )
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return None
        self._status.reached()
        now = self._clock()
        claims: dict[str, Claim] = {}
        for key, reply in zip(unique, replies, strict=True):
            if reply is None or reply == self._holder:
                claims[key] = Claim.MINE
                self._held[key] = now
            elif reply == DELIVERED_MARK:
                claims[key] = Claim.DELIVERED
            else:
                claims[key] = Claim.BUSY
        return claims

    def delivered(self, key: str, now: float) -> None:
        """The key was delivered at `now`: mark it for the group (written in the background)."""
        self._held.pop(key, None)
        self._marks.append((key, now))
        self._kick.set()

    def release(self, key: str) -> None:
        """This replica will not deliver the key (dead-lettered, or its partition was
        revoked before it was sent): the next copy anywhere may go."""
        if self._held.pop(key, None) is not None:
            self._releases.append(key)
            self._kick.set()

    @property
    def held(self) -> int:
        return len(self._held)

    # Lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Reach Redis once before the first batch (so that it is claimed, not let
        through), then keep writing and probing in the background."""
        await self._attempt()
        self._task = asyncio.create_task(self._run(), name="shared-dedupe")

    async def aclose(self) -> None:
        """Write what is queued (briefly), give up the claims still held, disconnect."""
        self._closing = True
        self._kick.set()
        if self._task is not None:
            await self._task  # not cancelled: see FleetLimits.aclose
            self._task = None
        self._releases += list(self._held)
        self._held.clear()
        if self._status.up:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._flush()
        await self._client.aclose()

    # Background ----------------------------------------------------------------------------

    async def _run(self) -> None:
        renew_every = self.claim_ttl / 3
        while not self._closing:
            now = self._clock()
            # Down: probe at the retry time. Up: renew due claims now and then.
            wake_at = now + renew_every if self._status.up else max(self._retry_at, now)
            if not self._kick.is_set() and wake_at > now:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wake_at - now):
                        await self._kick.wait()
            self._kick.clear()
            if self._closing:
                return
            if not self._status.up and self._clock() < self._retry_at:
                continue
            await self._attempt()

    async def _attempt(self) -> None:
        try:
            await self._flush()
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return
        self._status.reached()

    async def _flush(self) -> None:
        """Marks, releases and due renewals in one pipeline; a PING when there are none
        and Redis was down, which is how its return is noticed."""
        now = self._clock()
        marks = list(self._marks)
        releases = list(self._releases)
        renew_before = now - self.claim_ttl / 3
        renewals = [key for key, at in self._held.items() if at <= renew_before]
        sets = [
            (self._prefix + key, max(1, math.floor((self._ttl - (now - at)) * 1000)))
            for key, at in marks
            if self._ttl - (now - at) > 0
        ]
        calls = [("own", self._prefix + key, self._holder, 0) for key in releases]
        calls += [("own", self._prefix + key, self._holder, self._claim_ms) for key in renewals]
        if sets or calls:
            await self._scripted(calls, sets)
        elif not self._status.up:
            await self._client.ping()
        for _ in marks:
            self._marks.popleft()
        del self._releases[: len(releases)]
        for key in renewals:
            if key in self._held:
                self._held[key] = now

    async def _scripted(
        self,
        calls: Sequence[tuple[str, str, bytes, int]],
        sets: Sequence[tuple[str, int]] = (),
    ) -> list[Any]:
        """Delivered marks and scripts in one pipeline; the scripts' replies, in order."""
        for attempt in (1, 2):
            if not self._shas:
                self._shas = {
                    "claim": str(await self._client.script_load(CLAIM)),
                    "own": str(await self._client.script_load(OWN)),
                }
            pipe = self._client.pipeline(transaction=False)
            for key, px in sets:
                pipe.set(key, DELIVERED_MARK, px=px)
            for script, key, holder, ms in calls:
                pipe.evalsha(self._shas[script], 1, key, holder, ms)
            try:
                replies: list[Any] = await pipe.execute()
            except NoScriptError:
                self._shas = {}  # the server restarted since they were loaded
                if attempt == 2:
                    raise
                continue
            except BaseException:
                self._shas = {}
                raise
            return replies[len(sets) :]
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _lost(self, error: BaseException) -> None:
        self._retry_at = self._clock() + self._retry_interval
        self._status.lost(error)
