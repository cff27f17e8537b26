"""How long to wait before trying again: exponential backoff with full jitter,
and the server's own `Retry-After` when it gives one.

Full jitter (a uniform draw between 0 and the exponential cap) is what spreads a
crowd of retries out after an outage; without it every failed event comes back at
the same instant and knocks the recovering service over again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER = 3600.0


@dataclass(slots=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def cap(self, attempt: int) -> float:
        """The ceiling of the jitter range for the `attempt`-th retry (1-based)."""
        return min(self.maximum, self.initial * 2.0 ** min(max(attempt - 1, 0), 62))

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, self.cap(attempt))


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date).

    Returns None for a missing or unreadable header. A date in the past means 0,
    and absurd values are capped so that a misconfigured server cannot park the
    forwarder for days.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(0.0, when.timestamp() - now_wall), MAX_RETRY_AFTER)
