"""What a sink's answer means for the event that got it, in terms every sink shares.

Each sink turns its own answers (HTTP statuses, MCP tool results) into one of
these with its own `classify`; the engine acts on the variant and never looks at
the protocol. `code` is the sink's short name for what happened, used as the
`forwarder_sink_requests_total{code}` label: for the REST sink the HTTP status
(`201`, `429`) or `timeout` / `error` when no answer came.

- Delivered: the key enters the de-duplication window.
- Retry: try again later. `throttled` (a 429 or a rate-limit denial) lowers the
  learned rate and, with `retry_after`, pauses every send; `outage` (5xx,
  timeouts, refused connections) counts towards the circuit breaker.
- Rejected: the event itself is refused; dead letter, reason `rejected`.
- Unauthorized: the credentials are refused; halt every send, never a dead letter.
- Denied: the gateway's policy refuses this tool; dead letter `denied_by_policy`,
  and the tool is treated as denied from then on (no hammering).
- Misconfigured: the far end says the forwarder is pointed at the wrong place or
  calls what it does not offer; halt every send (not ready), never a dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Delivered:
    code: str


@dataclass(frozen=True, slots=True)
class Retry:
    code: str
    detail: str
    retry_after: float | None = None
    throttled: bool = False
    outage: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    """`status` is the HTTP status the verdict came with, when there was one (a header
    of the dead letter); `body` is what the service said about the event."""

    code: str
    detail: str
    body: bytes
    status: int | None = None


@dataclass(frozen=True, slots=True)
class Unauthorized:
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Denied:
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Misconfigured:
    code: str
    detail: str


Outcome = Delivered | Retry | Rejected | Unauthorized | Denied | Misconfigured


def transport_failure(code: str, detail: str) -> Retry:
    """A request that got no answer: `code` is `timeout` or `error`."""
    return Retry(code=code, detail=detail, outage=True)
