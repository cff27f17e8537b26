"""Learning Legiti's real capacity from its 429s: a CUBIC-shaped send-rate ceiling.

Configured limits are what the operator knows; a 429 is what the server knows.
A rate (not a concurrency window) is controlled, because against a fast server
even one connection far exceeds a per-second limit.

- No ceiling until the first 429. Then the ceiling's *peak* is estimated as what
  the server accepted in the last second plus what is still in flight (answers
  not yet back would otherwise make the estimate collapse), and the rate drops
  to `decrease` times the peak.
- Between 429s the rate follows RFC 8312's cubic curve from there: it climbs
  back to the peak over `recovery` seconds, flattens out around it (where the
  server's limit most likely is, so 429s and the global Retry-After pauses they
  bring stay rare), and only then accelerates to probe for more.
- Each later 429 episode takes the current rate as the new peak.
- One reaction per episode: 429s for sends made before the last cut are the
  same news arriving late; reacting to each would collapse the rate.
- Sends are paced evenly at the ceiling, so a burst cannot trip the server's window.
"""

from __future__ import annotations

from collections import deque


class AdaptiveRate:
    __slots__ = (
        "_accepted",
        "_cubic",
        "_cut_at",
        "_floor",
        "_forget_after",
        "_next_send",
        "_peak",
        "decrease",
        "recovery",
    )

    def __init__(
        self,
        decrease: float = 0.8,
        recovery: float = 4.0,
        floor: float = 1.0,
        forget_after: float = 60.0,
    ) -> None:
        self.decrease = decrease
        self.recovery = recovery
        self._cubic = (1.0 - decrease) / recovery**3
        self._floor = floor
        self._forget_after = forget_after
        self._peak: float | None = None
        self._cut_at = float("-inf")
        self._next_send = 0.0
        self._accepted: deque[float] = deque()

    def ceiling(self, now: float) -> float | None:
        """Requests per second allowed now; None when no 429 was seen recently."""
        if self._peak is None:
            return None
        elapsed = now - self._cut_at
        if elapsed > self._forget_after:
            self._peak = None
            return None
        growth = 1.0 + self._cubic * (elapsed - self.recovery) ** 3
        return max(self._floor, self._peak * growth)

    def delay(self, now: float) -> float:
        if self.ceiling(now) is None:
            return 0.0
        return max(0.0, self._next_send - now)

    def record(self, now: float) -> None:
        rate = self.ceiling(now)
        if rate is not None:
            self._next_send = max(now, self._next_send) + 1.0 / rate

    def on_accepted(self, now: float) -> None:
        self._accepted.append(now)
        self._forget_accepted(now)

    def on_throttled(self, now: float, sent_at: float, in_flight: int) -> None:
        """Lower the rate, unless a cut for this episode was already made."""
        if sent_at < self._cut_at:
            return
        current = self.ceiling(now)
        if current is None:
            self._forget_accepted(now)
            current = float(len(self._accepted) + in_flight)
        self._peak = max(self._floor, current)
        self._cut_at = now
        self._next_send = now + 1.0 / max(self._floor, self.decrease * self._peak)

    def _forget_accepted(self, now: float) -> None:
        accepted = self._accepted
        while accepted and accepted[0] <= now - 1.0:
            accepted.popleft()
