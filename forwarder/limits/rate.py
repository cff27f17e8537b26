"""Send-rate limits as configured: `N/window`, parsed once from settings and policy files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

WINDOWS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+?)s?\s*$")
_ALIASES = {"s": "second", "sec": "second", "min": "minute", "h": "hour", "hr": "hour", "d": "day"}


MAX_COUNT = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` sends in any interval of `window` seconds.

    `counter` names the gateway counter a policy limit feeds: limits of
    different tools that name the same counter share one allowance."""

    count: int
    window: float
    counter: str | None = field(default=None, compare=False)

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
        raise ValueError(f"unknown window in {text!r}; use second, minute, hour or day")
    if count < 1:
        raise ValueError("a rate limit needs a count of at least 1; omit it for unlimited")
    if count > MAX_COUNT:
        raise ValueError(
            f"at most {MAX_COUNT:,} sends per window are supported (each is remembered);"
            " use a shorter window"
        )
    if multiple and int(multiple) < 1:
        raise ValueError(f"a rate limit window must be at least 1 unit long, got {text!r}")
    return Rate(count, WINDOWS[unit] * (int(multiple) if multiple else 1))
