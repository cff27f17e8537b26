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

from forwarder.limits.rate import Rate


class Slot:
    """One send's place in a limiter's log: open while the request is under way."""

    __slots__ = ("done_at",)

    def __init__(self) -> None:
        self.done_at: float | None = None


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

    def start(self) -> Slot:
        """Count a send that begins now; callers check `delay` first."""
        slot = Slot()
        self._log.append(slot)
        return slot

    def record(self, now: float) -> None:
        """Count a send that began and finished at `now`."""
        self.start().done_at = now


class LimiterSet:
    """The limits one send must pass together (the tool's own and the global ones)."""

    __slots__ = ("_limiters",)

    def __init__(self, *limiters: SlidingWindowLimiter | None) -> None:
        self._limiters = tuple(limiter for limiter in limiters if limiter is not None)

    def delay(self, now: float) -> float:
        if not self._limiters:  # no limit configured: asked once per send, so keep it cheap
            return 0.0
        return max(limiter.delay(now) for limiter in self._limiters)

    def start(self) -> tuple[Slot, ...]:
        if not self._limiters:  # the common case, once per send
            return ()
        return tuple(limiter.start() for limiter in self._limiters)

    def record(self, now: float) -> None:
        for limiter in self._limiters:
            limiter.record(now)

    @staticmethod
    def finish(slots: tuple[Slot, ...], now: float) -> None:
        for slot in slots:
            slot.done_at = now
