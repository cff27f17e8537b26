"""Where a limit's allowance is kept: this process's memory, or a store the group shares.

Three backends: `LocalLimits` (the whole limit in this process, for a lone
process), `ShareLimits` (the member's partition share of the group's limit, when
the group shares no state) and `FleetLimits` (the group's log in Redis, falling
back to the partition share while Redis is unreachable).

The send gate asks a `Limiter` synchronously on the dispatcher's every decision
(`delay`, then `start` and later `finish`), because that decision is made once
per event and must not wait on I/O. A backend whose allowance lives elsewhere
(Redis) keeps a small local stock of permits, refills it in its own task, and
calls the `wake` it was started with when permits arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from forwarder.limits.rate import Rate


class Permit(Protocol):
    def finish(self, now: float) -> None:
        """The send holding this permit ended at `now` (answered, failed or cancelled)."""


class Limiter(Protocol):
    rate: Rate

    def delay(self, now: float) -> float:
        """Seconds until a send may start: 0 now, infinity "until something wakes you"."""

    def start(self, now: float) -> Permit:
        """Count a send that begins now (after `delay` said 0)."""


class LimiterBackend(Protocol):
    def limiter(self, rate: Rate) -> Limiter:
        """The limiter for `rate`. Rates naming the same gateway counter get one limiter."""

    def rebalanced(self, assigned: int, total: int, now: float) -> None:
        """The group gave this member `assigned` of the `total` partitions of its topics
        (called on every rebalance): a backend that splits the group's limits by
        partitions recomputes this member's part."""

    def share(self, now: float) -> float:
        """The fraction of each limit this member may use now (forwarder_rate_limit_share)."""

    async def start(self, wake: Callable[[], None]) -> None:
        """Begin any background work; `wake` tells the dispatcher a delay may have ended."""

    async def aclose(self) -> None: ...


class LimiterSet:
    """The limits one send must pass together (the tool's own and the global ones)."""

    __slots__ = ("_limiters",)

    def __init__(self, *limiters: Limiter) -> None:
        self._limiters = limiters

    def delay(self, now: float) -> float:
        if not self._limiters:  # no limit configured: asked once per send, so keep it cheap
            return 0.0
        return max(limiter.delay(now) for limiter in self._limiters)

    def start(self, now: float) -> tuple[Permit, ...]:
        if not self._limiters:  # the common case, once per send
            return ()
        return tuple(limiter.start(now) for limiter in self._limiters)

    @staticmethod
    def finish(permits: tuple[Permit, ...], now: float) -> None:
        for permit in permits:
            permit.finish(now)
