"""Send-rate limits: `N/window` parsed from configuration, enforced as a sliding log.

Why a sliding log and not a token bucket: the gateway in front of Legiti counts
requests per window, and a token bucket that starts full allows up to 2N sends in
some interval of length W (a full bucket spent at the end of one window, refilled
tokens at the start of the next). The sliding log keeps the last N sends and lets
a new one go only when the oldest of them is at least W old, so *no* interval of
length W ever holds more than N sends, while a steady stream still gets N per
W (less one round trip). Memory is N small objects per limit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from forwarder.limits.rate import Rate


class Slot:
    """One send's place in a limiter's log: open while the request is under way."""

    __slots__ = ("done_at",)

    def __init__(self) -> None:
        self.done_at: float | None = None

    def finish(self, now: float) -> None:
        self.done_at = now


class SlidingWindowLimiter:
    """Sliding-log limiter over the caller's clock (plain floats, no I/O).

    The log holds when each of the last N sends *finished*, not when it started:
    the server counts a request when it arrives, which is somewhere between the
    two, and only "next start ≥ N-th previous finish + W" guarantees its count
    whatever the network's delay (a warm connection delivers faster than the cold
    one before it). A send still under way blocks the slot until it finishes.
    """

    __slots__ = ("_log", "rate")

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._log: deque[Slot] = deque(maxlen=rate.count)

    def delay(self, now: float) -> float:
        """Seconds until a send would be allowed; 0 means now, infinity means
        "when the oldest send in the window finishes"."""
        if len(self._log) < self.rate.count:
            return 0.0
        done_at = self._log[0].done_at
        if done_at is None:
            return float("inf")
        return max(0.0, done_at + self.rate.window - now)

    def start(self, now: float) -> Slot:
        """Count a send that begins now; callers check `delay` first."""
        slot = Slot()
        self._log.append(slot)
        return slot


class LocalLimits:
    """The backend that keeps every limit in this process's memory."""

    def __init__(self) -> None:
        self._by_counter: dict[tuple[str, int, float], SlidingWindowLimiter] = {}

    def limiter(self, rate: Rate) -> SlidingWindowLimiter:
        if rate.counter is None:
            return SlidingWindowLimiter(rate)
        key = (rate.counter, rate.count, rate.window)
        return self._by_counter.setdefault(key, SlidingWindowLimiter(rate))

    def rebalanced(self, assigned: int, total: int, now: float) -> None:
        """This process enforces the whole of every limit, whatever it is assigned."""

    def share(self, now: float) -> float:
        return 1.0

    async def start(self, wake: Callable[[], None]) -> None:
        """Nothing runs in the background: every decision is made from memory."""

    async def aclose(self) -> None:
        """Nothing to release."""
