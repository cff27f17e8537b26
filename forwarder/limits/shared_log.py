"""The group's sliding log in Redis: one Lua script leases, records and finishes permits.

Each limit is a sorted set: one member per send (a permit id), scored with when
that send finished, in microseconds of the *Redis server's* clock (`TIME`), so
that replicas with different clocks share one time line. A permit leased and
not yet finished is scored with the latest time it can finish: the lease time
plus the lease's lifetime (the holder starts no send with it after that) plus
the send timeout. The script trims entries at least W old and grants a permit
only while fewer than N entries remain, which is the local sliding log's rule
(next start ≥ N-th previous finish + W) with the finish as the server saw it
or bounded from above, so no interval of W holds more than N sends arriving at
Legiti, whoever sent them. A holder killed with its leases unfinished blocks
their slots until their bound plus W, never for good.

Holders do not ask the server's time. A finish is reported as its age on the
holder's clock when the call was built; the script scores it `TIME - age`,
which is no earlier than the real finish. Unused permits are removed outright
(they never became sends). Sends made while Redis was unreachable are recorded
the same way when it is back (`recorded`), in flight ones with the send timeout
as their bound.

The script also keeps the group's recovery marker (see `forwarder.limits.fleet`):
a key whose time to live says how long members must keep their partition share
as well, after a member came back from an outage; and the epoch, a random id set
when the key is missing, so that a member sees when Redis lost its data (a
restart without persistence) and with it the sends of the last window.

One round trip serves every limit: the calls go in one pipeline. The script is
loaded once per connection and called by its SHA (EVALSHA); a server that lost
it (a restart) is sent it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local count = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local lease_bound = tonumber(ARGV[3])
local send_bound = tonumber(ARGV[4])
local holder = ARGV[5]
local first_id = tonumber(ARGV[6])
local want = tonumber(ARGV[7])
local mark = tonumber(ARGV[8])
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[9]
  redis.call('SET', KEYS[3], epoch)
end
local i = 10
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local id, score = ARGV[i], now - tonumber(ARGV[i + 1]); i = i + 2
  local bound = redis.call('ZSCORE', KEYS[1], id)
  if bound and score < tonumber(bound) then
    redis.call('ZADD', KEYS[1], 'XX', score, id)
  end
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('ZREM', KEYS[1], ARGV[i]); i = i + 1
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local id, age = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  local score = now + send_bound
  if age >= 0 then score = now - age end
  redis.call('ZADD', KEYS[1], 'NX', score, id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local live = redis.call('ZCARD', KEYS[1])
local granted = math.max(math.min(want, count - live), 0)
for g = 0, granted - 1 do
  redis.call('ZADD', KEYS[1], now + lease_bound, holder .. (first_id + g))
end
local wait = -1
if live + granted >= count then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if oldest[2] then wait = math.max(tonumber(oldest[2]) + window - now, 0) end
end
if live + granted > 0 then
  local keep = math.ceil((window + lease_bound + send_bound) / 1000) + 1000
  redis.call('PEXPIRE', KEYS[1], keep)
end
if mark > 0 then
  local mark_ms = math.ceil(mark / 1000)
  if redis.call('PTTL', KEYS[2]) < mark_ms then
    redis.call('SET', KEYS[2], '1', 'PX', mark_ms)
  end
end
local recovering = redis.call('PTTL', KEYS[2])
if recovering < 0 then recovering = 0 end
return {now, granted, wait, recovering * 1000, epoch}
"""


@dataclass(slots=True)
class Exchange:
    """What one limit asks of its log in one call. Times are in microseconds."""

    key: str
    count: int
    window_us: int
    lease_bound_us: int
    send_bound_us: int
    holder: str
    first_id: int
    want: int
    mark_us: int = 0
    epoch: str = ""
    """Set as the epoch if there is none yet."""
    finished: list[tuple[str, int]] = field(default_factory=list)
    """(permit id, microseconds since it finished)"""
    returned: list[str] = field(default_factory=list)
    recorded: list[tuple[str, int]] = field(default_factory=list)
    """(permit id, microseconds since it finished, or -1 while it is in flight)"""

    def permit_id(self, number: int) -> str:
        return f"{self.holder}{self.first_id + number}"

    def args(self) -> list[str | int]:
        args: list[str | int] = [
            self.count,
            self.window_us,
            self.lease_bound_us,
            self.send_bound_us,
            self.holder,
            self.first_id,
            self.want,
            self.mark_us,
            self.epoch,
            len(self.finished),
        ]
        for permit, age in self.finished:
            args += [permit, age]
        args.append(len(self.returned))
        args += self.returned
        args.append(len(self.recorded))
        for permit, age in self.recorded:
            args += [permit, age]
        return args


@dataclass(frozen=True, slots=True)
class Grant:
    """The script's answer: permits granted, and when the log frees a slot next."""

    server_now_us: int
    granted: int
    wait_us: int
    """Until the oldest entry leaves the window when the log is full; -1 when it is not."""
    recovering_us: int
    """Remaining time of the group's recovery marker; 0 when there is none."""
    epoch: bytes
    """The id of the log's data: it changes when Redis lost it."""


class SharedLog:
    """Runs the script for many limits in one pipelined round trip."""

    def __init__(self, client: Redis, prefix: str) -> None:
        """`prefix` is the group's (with its hash tag): the marker and the epoch go
        beside the limits' own keys, in their slot."""
        self._client = client
        self._marker_key = prefix + "recovering"
        self._epoch_key = prefix + "epoch"
        self._sha: str | None = None

    async def exchange(self, requests: Sequence[Exchange]) -> list[Grant]:
        """One round trip; raises the client's errors (the caller falls back on them)."""
        if not requests:
            return []
        try:
            return await self._run(requests)
        except NoScriptError:
            self._sha = None  # the server restarted since it was loaded
            return await self._run(requests)
        except BaseException:
            self._sha = None  # a new connection may reach a server that never had it
            raise

    async def _run(self, requests: Sequence[Exchange]) -> list[Grant]:
        if self._sha is None:
            self._sha = str(await self._client.script_load(SCRIPT))
        pipe = self._client.pipeline(transaction=False)
        for request in requests:
            pipe.evalsha(
                self._sha, 3, request.key, self._marker_key, self._epoch_key, *request.args()
            )
        replies = await pipe.execute()
        return [
            Grant(int(now), int(granted), int(wait), int(recovering), bytes(epoch))
            for now, granted, wait, recovering, epoch in replies
        ]

    async def aclose(self) -> None:
        await self._client.aclose()
