"""When a failed send is tried again, and when it is given up: exponential backoff
with full jitter, the server's own `Retry-After` when it gives one, and a budget
of time after the first failure.

Full jitter (a uniform draw between 0 and the exponential cap) is what spreads a
crowd of retries out after an outage; without it every failed event comes back at
the same instant and knocks the recovering service over again.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER = 3600.0
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


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
    if _DELTA_SECONDS.fullmatch(text):
        # RFC 9110 says whole seconds; gateways send "1.5" too, and ignoring it would
        # turn a polite pause into the default backoff.
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(0.0, when.timestamp() - now_wall), MAX_RETRY_AFTER)


@dataclass(slots=True)
class RetryPolicy:
    """`max_elapsed` seconds after an event's first failure it is given up (0: never)."""

    max_elapsed: float
    backoff: Backoff

    def delay(self, attempts: int, failing_for: float, retry_after: float | None) -> float | None:
        """Seconds until the next attempt, or None to give up.

        The server's Retry-After wins over the backoff; no wait reaches past the budget,
        so the last attempt comes at its end rather than a long wait beyond it."""
        limit = self.max_elapsed
        if limit and failing_for >= limit:
            return None
        delay = retry_after if retry_after is not None else self.backoff.delay(attempts)
        return min(delay, limit - failing_for) if limit else delay
