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

Cost: `claim` is one pipelined round trip for a whole poll batch: the keys fall
into 16 groups (a stable hash), each group one Redis Cluster hash slot, and one
script call claims all of a group's keys. Delivered marks, releases and
renewals are queued and written by a background task the same way, one pipeline
per flush (at most one every `MARK_LINGER`, 2 ms): nothing waits for Redis per
event, and the client's per-command cost is paid per group and flush, not per
key. A crash loses at most the marks not yet flushed, the last few milliseconds
of deliveries, whose claims then lapse and whose events the next owner sends
again.

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
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from forwarder.shared.status import SharedStatus

CLOSE_TIMEOUT = 1.0
MARK_LINGER = 0.002

BUCKETS = 16
"""Key groups, each in one Redis Cluster hash slot, so that one script call serves all
of a batch's keys in a group: 16 calls at most per batch, however large it is."""

CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 0
  elseif v == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 0
  elseif v == 'd' then
    out[i] = 1
  else
    out[i] = 2
  end
end
return out
"""
"""Per key: 0 this holder's now (it was free, or already its own), 1 delivered, 2 busy."""

MARK = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, 'd', 'PX', ARGV[i])
end
return #KEYS
"""

OWN = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    if ARGV[2] == '0' then
      redis.call('DEL', key)
    else
      redis.call('PEXPIRE', key, ARGV[2])
    end
  end
end
return #KEYS
"""
"""Release (ARGV[2] = 0) or renew claims, each only while it is still this holder's."""

SCRIPTS = {"claim": CLAIM, "mark": MARK, "own": OWN}
Call = tuple[str, list[str], list[bytes | int]]
"""A script's name, its keys (one hash slot) and its arguments."""


def bucket(key: str) -> int:
    """The key's group: a hash that is the same in every replica, modulo BUCKETS."""
    return zlib.crc32(key.encode()) % BUCKETS


def redis_key(prefix: str, key: str) -> str:
    """Where an event key lives: `<prefix>{<bucket>}:<key>` (the braces: its slot)."""
    return f"{prefix}{{{bucket(key)}}}:{key}"


class Claim(enum.Enum):
    MINE = "mine"
    """This replica holds the key now: send it."""
    DELIVERED = "delivered"
    """A replica delivered it within the TTL: a duplicate."""
    BUSY = "busy"
    """Another replica is sending it: wait, then ask again."""


_CLAIMS = (Claim.MINE, Claim.DELIVERED, Claim.BUSY)


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
        self._renew_at = -math.inf
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
        groups = self._grouped(dict.fromkeys(keys))
        if not groups:
            return {}
        arguments: list[bytes | int] = [self._holder, self._claim_ms]
        calls: list[Call] = [
            ("claim", [redis_key(self._prefix, key) for key in group], arguments)
            for group in groups.values()
        ]
        try:
            replies = await self._scripted(calls)
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return None
        self._status.reached()
        now = self._clock()
        claims: dict[str, Claim] = {}
        for group, reply in zip(groups.values(), replies, strict=True):
            for key, verdict in zip(group, reply, strict=True):
                claims[key] = _CLAIMS[verdict]
                if verdict == 0:
                    self._held[key] = now
        return claims

    @staticmethod
    def _grouped(keys: Iterable[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = {}
        for key in keys:
            groups.setdefault(bucket(key), []).append(key)
        return groups

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
            if self._kick.is_set() and self._status.up:
                # Let the deliveries of the next moment join this write: one pipeline
                # per few milliseconds, not one per delivery, is what keeps the fleet
                # mode cheap; a crash forgets at most these milliseconds' marks.
                await asyncio.sleep(MARK_LINGER)
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
        renewals: list[str] = []
        if now >= self._renew_at:
            # A pass over every held claim: only every third of the claim TTL, since a
            # flush follows every delivery and there may be thousands of claims.
            self._renew_at = now + self.claim_ttl / 3
            renew_before = now - self.claim_ttl / 3
            renewals = [key for key, at in self._held.items() if at <= renew_before]
        lifetimes = {
            key: max(1, math.floor((self._ttl - (now - at)) * 1000))
            for key, at in marks
            if self._ttl - (now - at) > 0
        }
        calls: list[Call] = []
        prefix = self._prefix
        for group in self._grouped(lifetimes).values():
            keys = [redis_key(prefix, key) for key in group]
            calls.append(("mark", keys, [lifetimes[key] for key in group]))
        for group in self._grouped(releases).values():
            calls.append(("own", [redis_key(prefix, key) for key in group], [self._holder, 0]))
        for group in self._grouped(renewals).values():
            keys = [redis_key(prefix, key) for key in group]
            calls.append(("own", keys, [self._holder, self._claim_ms]))
        if calls:
            await self._scripted(calls)
        elif not self._status.up:
            await self._client.ping()
        for _ in marks:
            self._marks.popleft()
        del self._releases[: len(releases)]
        for key in renewals:
            if key in self._held:
                self._held[key] = now

    async def _scripted(self, calls: Sequence[Call]) -> list[Any]:
        """The scripts in one pipeline; their replies, in order."""
        for attempt in (1, 2):
            if not self._shas:
                self._shas = {
                    name: str(await self._client.script_load(text))
                    for name, text in SCRIPTS.items()
                }
            pipe = self._client.pipeline(transaction=False)
            for script, keys, args in calls:
                pipe.evalsha(self._shas[script], len(keys), *keys, *args)
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
            return replies
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _lost(self, error: BaseException) -> None:
        self._retry_at = self._clock() + self._retry_interval
        self._status.lost(error)
