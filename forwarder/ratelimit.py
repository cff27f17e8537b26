"""Send-rate limits: `N/window` parsed from configuration, enforced as a sliding log.

Why a sliding log and not a token bucket: the gateway in front of Legiti counts
requests per window, and a token bucket that starts full allows up to 2N sends in
some interval of length W (a full bucket spent at the end of one window, refilled
tokens at the start of the next). The sliding log keeps the times of the last N
sends and lets a new one go only when the oldest of them is at least W old, so
*no* interval of length W ever holds more than N sends, while a steady stream
still gets exactly N per W. Memory is N timestamps per limit.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

WINDOWS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+?)s?\s*$")
_ALIASES = {"s": "second", "sec": "second", "min": "minute", "h": "hour", "hr": "hour", "d": "day"}


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` sends in any interval of `window` seconds."""

    count: int
    window: float

    def __str__(self) -> str:
        for name, seconds in WINDOWS.items():
            if seconds == self.window:
                return f"{self.count}/{name}"
        return f"{self.count}/{self.window:g}s"


def parse_rate(text: str) -> Rate:
    """Parse `30/minute`, `5/second`, `1000/hour`, `10/day` (also `5/s`, `100/10s`)."""
    match = _RATE.match(text.lower())
    if not match:
        raise ValueError(f"rate must look like 30/minute, got {text!r}")
    count, multiple, unit = int(match[1]), match[2], _ALIASES.get(match[3], match[3])
    if unit not in WINDOWS:
        raise ValueError(f"unknown window {match[3]!r}; use second, minute, hour or day")
    if count < 1:
        raise ValueError("a rate limit needs a count of at least 1; omit it for unlimited")
    return Rate(count, WINDOWS[unit] * (int(multiple) if multiple else 1))


class SlidingWindowLimiter:
    """Sliding-log limiter over the caller's clock (plain floats, no I/O)."""

    __slots__ = ("_sends", "rate")

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._sends: deque[float] = deque(maxlen=rate.count)

    def delay(self, now: float) -> float:
        """Seconds until a send would be allowed; 0 means now."""
        if len(self._sends) < self.rate.count:
            return 0.0
        return max(0.0, self._sends[0] + self.rate.window - now)

    def record(self, now: float) -> None:
        """Count a send made at `now`; callers check `delay` first."""
        self._sends.append(now)


class LimiterSet:
    """The limits one send must pass together (the tool's own and the global one)."""

    __slots__ = ("_limiters",)

    def __init__(self, *limiters: SlidingWindowLimiter | None) -> None:
        self._limiters = tuple(limiter for limiter in limiters if limiter is not None)

    def delay(self, now: float) -> float:
        return max((limiter.delay(now) for limiter in self._limiters), default=0.0)

    def record(self, now: float) -> None:
        for limiter in self._limiters:
            limiter.record(now)
