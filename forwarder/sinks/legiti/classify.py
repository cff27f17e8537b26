"""What each HTTP answer from Legiti's `track_auth` means (see `sinks.outcome`).

- 2xx → Delivered.
- 429 → Retry, throttled, honouring Retry-After.
- 408, 425, 500, 502, 503, 504 → Retry; 5xx are outages (circuit breaker).
- 401, 403 → Unauthorized: halt all sends until the token works; never a dead letter.
- 400, 404, 409, 413, 422 and any other 4xx → Rejected: dead letter, reason `rejected`.
- anything else (1xx, 3xx, other 5xx) → Retry: an answer we do not understand
  is not a verdict on the event.
"""

from __future__ import annotations

from forwarder.sinks.outcome import Delivered, Outcome, Rejected, Retry, Unauthorized

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
UNAUTHORIZED_STATUSES = frozenset({401, 403})
OUTAGE_STATUSES = frozenset({500, 502, 503, 504})


def classify(status: int, body: bytes, retry_after: float | None) -> Outcome:
    code = str(status)
    if 200 <= status < 300:
        return Delivered(code)
    if status in UNAUTHORIZED_STATUSES:
        return Unauthorized(code, f"legiti answered {status}")
    if status in RETRYABLE_STATUSES or not 400 <= status < 500:
        return Retry(
            code=code,
            detail=f"HTTP {status}",
            retry_after=retry_after,
            throttled=status == 429,
            outage=status in OUTAGE_STATUSES or status >= 500,
        )
    return Rejected(code, f"legiti answered {status}", body, status)
