"""What each HTTP answer from Legiti's `track_auth` means (see `sinks.outcome`).

- 2xx → Delivered.
- 429 → Retry, throttled, honouring Retry-After.
- 408, 425, 500, 502, 503, 504 → Retry; 5xx are outages (circuit breaker).
- 401, 403 → Unauthorized: halt all sends until the token works; never a dead letter.
- 404, 405 and any 3xx → Misconfigured: Legiti's `track_auth` answers 201, 400,
  401 or 403, so these say the base URL points at the wrong place (a wrong path, a
  redirecting proxy). Halt and report; dead-lettering would empty the stream.
- 400, 409, 413, 422 and any other 4xx → Rejected: dead letter, reason `rejected`.
- anything else (1xx, other 5xx) → Retry: an answer we do not understand is not a
  verdict on the event.
"""

from __future__ import annotations

from forwarder.sinks.outcome import (
    Delivered,
    Misconfigured,
    Outcome,
    Rejected,
    Retry,
    Unauthorized,
)

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
UNAUTHORIZED_STATUSES = frozenset({401, 403})
OUTAGE_STATUSES = frozenset({500, 502, 503, 504})
WRONG_PLACE_STATUSES = frozenset({404, 405})


def classify(status: int, body: bytes, retry_after: float | None, url: str = "") -> Outcome:
    """`url` names the endpoint in a misconfiguration's report."""
    code = str(status)
    if 200 <= status < 300:
        return Delivered(code)
    if status in UNAUTHORIZED_STATUSES:
        return Unauthorized(code, f"legiti answered {status}")
    if status in WRONG_PLACE_STATUSES or 300 <= status < 400:
        return Misconfigured(
            code,
            f"{url or 'the endpoint'} answered {status}; Legiti's track_auth answers 201, 400,"
            " 401 or 403: check FORWARDER_LEGITI_BASE_URL",
        )
    if status in RETRYABLE_STATUSES or not 400 <= status < 500:
        return Retry(
            code=code,
            detail=f"HTTP {status}",
            retry_after=retry_after,
            throttled=status == 429,
            outage=status in OUTAGE_STATUSES or status >= 500,
        )
    return Rejected(code, f"legiti answered {status}", body, status)
