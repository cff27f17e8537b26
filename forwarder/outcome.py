"""What each answer from Legiti means for the event that got it.

- 2xx → Delivered: the key enters the de-duplication window.
- 429 → Retry (throttled): back off, honour Retry-After for *every* send, lower
  the send rate (see `congestion.py`).
- 408, 425, 500, 502, 503, 504, timeouts, connection errors → Retry: back off;
  5xx and transport failures feed the circuit breaker (`circuit.py`).
- 401, 403 → Unauthorized: halt all sends until the token works; never a dead letter.
- 400, 404, 409, 413, 422 and any other 4xx → Rejected: dead letter, reason `rejected`.
- anything else (1xx, 3xx, other 5xx) → Retry: an answer we do not understand
  is not a verdict on the event.

Pure: the sink turns a response into one of these, and the pipeline acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
UNAUTHORIZED_STATUSES = frozenset({401, 403})
OUTAGE_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again later. `outage` marks failures that say the service is unwell
    (they count towards the circuit breaker); `throttled` marks a 429."""

    code: str
    detail: str
    retry_after: float | None = None
    throttled: bool = False
    outage: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Unauthorized:
    status: int
    body: bytes


Outcome = Delivered | Retry | Rejected | Unauthorized


def classify(status: int, body: bytes, retry_after: float | None) -> Outcome:
    if 200 <= status < 300:
        return Delivered(status)
    if status in UNAUTHORIZED_STATUSES:
        return Unauthorized(status, body)
    if status in RETRYABLE_STATUSES or not 400 <= status < 500:
        return Retry(
            code=str(status),
            detail=f"HTTP {status}",
            retry_after=retry_after,
            throttled=status == 429,
            outage=status in OUTAGE_STATUSES or status >= 500,
        )
    return Rejected(status, body)


def transport_failure(code: str, detail: str) -> Retry:
    """A request that got no answer: `code` is `timeout` or `error` (the metric label)."""
    return Retry(code=code, detail=detail, outage=True)
