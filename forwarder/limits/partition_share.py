"""A member's part of each limit when the group shares no state: its share of the partitions.

A limit of N sends per W is the consumer group's. Without Redis (or while it is
unreachable) every member enforces `floor(N x assigned / total)`, where `assigned`
is the number of partitions it holds and `total` the number of partitions of the
subscribed topics. Kafka gives every partition to at most one member at a time
(a partition is revoked before it is assigned elsewhere), so the members' counts
add up to at most N whenever traffic is spread over the partitions. The floor
keeps the sum exact; its cost is that a member whose share of N is below one
send gets none and waits (its events are kept, not lost) until the assignment,
or Redis, changes: a limit lower than the number of partitions cannot be split.

Changes of assignment, for every interval of length W to stay within N:
- A lost share is given up at once: the count drops when the partition goes.
- A gained share counts only once W has passed since the assignment, because the
  partition's previous owner may have used its share within the last W; plus
  `settle`, the send timeout, because the previous owner's requests under way
  at the revocation still arrive after it. The count in force at `now` is
  therefore the lowest of the counts of the assignments in force during
  `[now - W - settle, now]`.
- At start-up, the previous process (this pod before a restart, or any member
  whose partitions this one now holds) may have used its share in the last W,
  and this process cannot know how much or when. A ramp does not help: the old
  sends may all sit at the very end of their window, so any send before W has
  passed could be the N+1-th. The member therefore *waits*: it holds no share
  until W after it started (per limit: a 1/second limit waits a second, a
  1000/hour limit an hour). `busy_until` extends the wait the same way when the
  replica falls back from the shared log, whose other users may have spent the
  whole allowance just before.

Why the sum holds: the log of `ShareLimiter` keeps every send of this member
that is in flight or finished less than W ago, and a send starts only while
that log holds fewer than the count in force. A send arriving in an interval
`[t, t + W)` finished after `t`, so the last send of the interval saw all the
earlier ones in its log, and the member sent at most the count in force then.
That count is at most the one for the assignment it held at any moment of the
preceding W + settle, and its sends started before then have ended by `t`
(a send lasts at most `settle`). So the member's sends in the interval are at
most its count for what it held at some common moment, and summed over the
members, which hold disjoint partitions at every moment, that is at most N. A
killed member's requests end with it, so a restart needs no settling.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from forwarder.limits.rate import Rate
from forwarder.limits.sliding_log import Slot


@dataclass(frozen=True, slots=True)
class _Step:
    """From `since` on, this member held `assigned` of `total` partitions."""

    since: float
    assigned: int
    total: int


class PartitionShare:
    """This member's assignment over time, and the count of each limit it may use.

    Pure: every method takes the caller's clock. Created at start-up holding
    nothing, with the start as the first `busy_until` (see the module docstring).
    """

    __slots__ = ("_busy_until", "_horizon", "_steps", "settle")

    def __init__(self, now: float, settle: float = 0.0) -> None:
        self.settle = settle
        self._steps: deque[_Step] = deque([_Step(now, 0, 1)])
        self._busy_until = now
        self._horizon = 0.0

    def watch(self, window: float) -> None:
        """Keep enough history for a limit of this window."""
        self._horizon = max(self._horizon, window + self.settle)

    def rebalanced(self, assigned: int, total: int, now: float) -> None:
        """The group's assignment changed: this member now holds `assigned` of `total`."""
        if total < 1 or not 0 <= assigned <= total:
            raise ValueError(f"assigned {assigned} of {total} partitions is not a share")
        self._steps.append(_Step(now, assigned, total))
        # Drop steps that no window can reach any more; keep the one in force at the edge.
        edge = now - self._horizon
        while len(self._steps) > 1 and self._steps[1].since <= edge:
            self._steps.popleft()

    @property
    def busy_end(self) -> float:
        """Until when others may have used the whole of every limit."""
        return self._busy_until

    def busy_until(self, when: float) -> None:
        """Others may have used the whole of every limit until `when`: nothing counts
        for this member before `when` + W."""
        self._busy_until = max(self._busy_until, when)

    def _reachable(self, now: float, window: float) -> list[_Step]:
        """The steps in force at some moment of `[now - window, now]`."""
        edge = now - window
        steps = self._steps
        first = 0
        for index in range(len(steps) - 1, -1, -1):
            if steps[index].since <= edge:
                first = index
                break
        return [step for step in list(steps)[first:] if step.since <= now]

    def count(self, rate: Rate, now: float) -> int:
        """Sends this member may have in any interval of the rate's window, from `now` on."""
        if now < self._busy_until + rate.window:
            return 0
        reachable = self._reachable(now, rate.window + self.settle)
        return min(rate.count * step.assigned // step.total for step in reachable)

    def fraction(self, now: float, window: float) -> float:
        """The fraction of a limit of this window the member holds now (for the gauge)."""
        if now < self._busy_until + window:
            return 0.0
        reachable = self._reachable(now, window + self.settle)
        return min(step.assigned / step.total for step in reachable)

    def next_change(self, now: float, window: float) -> float:
        """The next moment after `now` when the count for this window may rise (∞ if none):
        when the busy time ends, or when an older, smaller step leaves the window."""
        moments = [self._busy_until + window]
        moments += [step.since + window + self.settle for step in self._steps]
        later = [moment for moment in moments if moment > now]
        return min(later) if later else math.inf


class ShareLimiter:
    """A sliding log whose capacity is the member's partition share of the rate.

    The log holds every send of this member still in flight or finished less than
    the window ago, in start order; a send may start while it holds fewer than the
    count in force. An expired send stuck behind one still in flight stays counted
    until that one ends, which can only make the limiter stricter.
    """

    __slots__ = ("_log", "_share", "rate")

    def __init__(self, rate: Rate, share: PartitionShare) -> None:
        self.rate = rate
        self._share = share
        self._log: deque[Slot] = deque()
        share.watch(rate.window)

    def prune(self, now: float) -> None:
        """Forget sends finished at least a window ago (up to the first still in flight)."""
        log, window = self._log, self.rate.window
        while log and (done := log[0].done_at) is not None and done + window <= now:
            log.popleft()

    def delay(self, now: float) -> float:
        self.prune(now)
        log, window = self._log, self.rate.window
        if len(log) < self._share.count(self.rate, now):
            return 0.0
        wait = self._share.next_change(now, window) - now
        if log and (done := log[0].done_at) is not None:
            wait = min(wait, done + window - now)
        return wait

    def start(self, now: float) -> Slot:
        slot = Slot()
        self._log.append(slot)
        return slot


class ShareLimits:
    """The backend without shared state: every limit is this member's partition share.

    `settle` is the longest a send can take (the sink's request timeout)."""

    def __init__(self, now: float, settle: float) -> None:
        self.partition_share = PartitionShare(now, settle)
        self._by_counter: dict[tuple[str, int, float], ShareLimiter] = {}
        self._longest = 0.0

    def limiter(self, rate: Rate) -> ShareLimiter:
        self._longest = max(self._longest, rate.window)
        if rate.counter is None:
            return ShareLimiter(rate, self.partition_share)
        key = (rate.counter, rate.count, rate.window)
        return self._by_counter.setdefault(key, ShareLimiter(rate, self.partition_share))

    def rebalanced(self, assigned: int, total: int, now: float) -> None:
        self.partition_share.rebalanced(assigned, total, now)

    def share(self, now: float) -> float:
        """The fraction of the limits held now, for the longest window (the last to count)."""
        return self.partition_share.fraction(now, self._longest)

    async def start(self, wake: Callable[[], None]) -> None:
        """Nothing runs in the background: the limiters' delays name their own wake-ups."""

    async def aclose(self) -> None:
        """Nothing to release."""
