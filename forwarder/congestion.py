"""Learning Legiti's real capacity from its 429s (AIMD on the send rate).

Configured limits are what the operator knows; a 429 is what the server knows.
On the first 429 of an episode the send rate is capped just under what the
server accepted in the last second, and each later 429 episode cuts it by
`decrease`. Successes raise it again by about `increase` of itself per second,
so the forwarder keeps probing for spare capacity instead of settling low. A
rate is used rather than a concurrency window because against a fast server even
one connection far exceeds a per-second limit.

One reaction per episode: all the 429s for sends made before the last cut are
the same news arriving late, and reacting to each would collapse the rate.
"""

from __future__ import annotations

from collections import deque


class AdaptiveRate:
    __slots__ = (
        "_accepted",
        "_floor",
        "_forget_after",
        "_last_cut",
        "_next_send",
        "decrease",
        "increase",
        "rate",
    )

    def __init__(
        self,
        decrease: float = 0.8,
        increase: float = 0.05,
        floor: float = 1.0,
        forget_after: float = 60.0,
    ) -> None:
        self.decrease = decrease
        self.increase = increase
        self._floor = floor
        self._forget_after = forget_after
        self.rate: float | None = None
        self._last_cut = float("-inf")
        self._next_send = 0.0
        self._accepted: deque[float] = deque()

    def delay(self, now: float) -> float:
        if self.rate is None:
            return 0.0
        if now - self._last_cut > self._forget_after:
            self.rate = None
            return 0.0
        return max(0.0, self._next_send - now)

    def record(self, now: float) -> None:
        """Pace sends evenly at the current rate, so a burst cannot trip the server's window."""
        if self.rate is not None:
            self._next_send = max(now, self._next_send) + 1.0 / self.rate

    def on_accepted(self, now: float) -> None:
        accepted = self._accepted
        accepted.append(now)
        while accepted[0] <= now - 1.0:
            accepted.popleft()
        if self.rate is not None:
            self.rate += max(1.0, self.increase * self.rate) / self.rate

    def on_throttled(self, now: float, sent_at: float) -> bool:
        """Returns True when this 429 lowered the rate (the first of its episode)."""
        if sent_at < self._last_cut:
            return False
        while self._accepted and self._accepted[0] <= now - 1.0:
            self._accepted.popleft()
        ceiling = self.rate if self.rate is not None else float(len(self._accepted))
        self.rate = max(self._floor, ceiling * self.decrease)
        self._last_cut = now
        self._next_send = now + 1.0 / self.rate
        return True
