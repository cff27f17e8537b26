"""Halting all sends while Legiti cannot take them, and probing for its return.

Two things stop the whole forwarder rather than one event: an outage (most recent
sends failing) and rejected credentials (every later call would fail the same way).
Both are a `Halt`: closed to sends, then after a growing pause one probe is let
through, and its outcome decides. The probe is a real event, so recovery needs
no special endpoint and costs no extra call.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

from forwarder.core.retry import Backoff


class HaltState(IntEnum):
    """Values are the `forwarder_circuit_state` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Halt:
    """Open/half-open/closed with exponential pauses between probes."""

    __slots__ = ("_failures", "_pauses", "_probe_at", "state")

    def __init__(self, first_pause: float, max_pause: float) -> None:
        self._pauses = Backoff(first_pause, max_pause)
        self._failures = 0
        self._probe_at = 0.0
        self.state = HaltState.CLOSED

    @property
    def is_closed(self) -> bool:
        return self.state is HaltState.CLOSED

    def open(self, now: float) -> None:
        """Stop sends; each consecutive opening doubles the pause, up to the maximum."""
        self._failures += 1
        self._probe_at = now + self._pauses.cap(self._failures)
        self.state = HaltState.OPEN

    def probe_now(self, now: float) -> None:
        """Let the next send through at once as a new probe (the token file changed, say),
        even while an earlier probe is still out."""
        if self.state is not HaltState.CLOSED:
            self.state = HaltState.OPEN
            self._probe_at = now

    def delay(self, now: float) -> float:
        """0 when a send may go now (normally, or as the probe); else seconds to wait.

        While a probe is out (half-open) nothing else goes: infinity means
        "wait until the probe's outcome wakes you".
        """
        if self.state is HaltState.CLOSED:
            return 0.0
        if self.state is HaltState.HALF_OPEN:
            return float("inf")
        return max(0.0, self._probe_at - now)

    def sent(self) -> None:
        """The dispatcher sent while open and due: that send is the probe."""
        if self.state is HaltState.OPEN:
            self.state = HaltState.HALF_OPEN

    def close(self) -> None:
        self.state = HaltState.CLOSED
        self._failures = 0

    @property
    def next_probe_at(self) -> float:
        return self._probe_at


class CircuitBreaker:
    """Opens when, within the last `window` seconds, at least `min_requests` sends
    were counted and `failure_ratio` of them were outage failures (5xx, timeouts,
    refused connections). The caller says what an answer counts as: a failure, a
    success, or neither (`failed=None`: a 429 or a refused token comes from a service
    that is up, but says nothing about whether it is healthy)."""

    __slots__ = ("_failure_ratio", "_failures", "_min_requests", "_results", "_window", "halt")

    def __init__(
        self,
        failure_ratio: float = 0.5,
        min_requests: int = 20,
        window: float = 30.0,
        max_pause: float = 60.0,
    ) -> None:
        self._failure_ratio = failure_ratio
        self._min_requests = min_requests
        self._window = window
        self._results: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self.halt = Halt(1.0, max_pause)

    def record(self, now: float, *, failed: bool | None, probe: bool) -> bool:
        """Count one outcome; returns True when it changed the state.

        Only the probe's outcome moves an open breaker: answers to sends made
        before it opened are stale news and would otherwise re-open it over and
        over, doubling the pause each time. Any answer but a failure closes it:
        the service is answering again.
        """
        before = self.halt.state
        if probe:
            if failed:
                self.halt.open(now)
            else:
                self.halt.close()
                self._forget()
        elif self.halt.is_closed and failed is not None:
            self._count(now, failed)
        return self.halt.state is not before

    def _count(self, now: float, failed: bool) -> None:
        results = self._results
        results.append((now, failed))
        self._failures += failed
        horizon = now - self._window
        while results and results[0][0] <= horizon:
            _, old_failed = results.popleft()
            self._failures -= old_failed
        if (
            failed
            and len(results) >= self._min_requests
            and self._failures >= self._failure_ratio * len(results)
        ):
            self.halt.open(now)
            self._forget()

    def _forget(self) -> None:
        self._results.clear()
        self._failures = 0
