"""The Legiti sink: one `track_auth` call per event, answered as an `Outcome`.

The sink is written against httpx's interface: it builds an `httpx.Request` and
hands it to an httpx transport (pyreqwest-backed by default, see `transport.py`),
which answers with an `httpx.Response`. It does not go through
`httpx.AsyncClient`: the client's per-request machinery (URL merging, header
merging and re-validation, cookies, auth and redirect hooks) is work this sink
never needs, and at thousands of events a second it cost more CPU than the HTTP
exchange itself (see the Performance section of the README). So everything
that does not change between events is built once: the URL, the fixed headers
and the timeout settings; per event only the small JSON body, its length and
the Idempotency-Key are new, and the request body is handed over as a ready
stream, so httpx does not re-encode it or recompute headers.

What an answer *means* lives in `classify.py`; what the engine does about it
lives in the engine.
"""

from __future__ import annotations

import string
import time
from urllib.parse import quote

import httpx
import orjson

from forwarder import __version__
from forwarder.core.events import AuthEvent
from forwarder.core.retry import parse_retry_after
from forwarder.sinks.credentials import TokenSource
from forwarder.sinks.legiti.classify import classify
from forwarder.sinks.legiti.transport import ReqwestTransport
from forwarder.sinks.outcome import Delivered, Outcome, transport_failure

TRACK_AUTH_PATH = "/ticketing/v1/auth"
USER_AGENT = f"legiti-forwarder/{__version__}"
_HEADER_SAFE = string.punctuation.replace("%", "")
_DELIVERED = {status: Delivered(str(status)) for status in range(200, 300)}


def idempotency_key(event_key: str) -> str:
    """The event key as an HTTP header value: percent-encoded where it is not plain ASCII.

    The mapping is fixed, so every copy of an event carries the same header."""
    return quote(event_key, safe=_HEADER_SAFE)


class LegitiSink:
    def __init__(
        self,
        base_url: str,
        token: TokenSource,
        *,
        timeout: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._token = token
        self._transport = transport or ReqwestTransport(max_connections)
        self._url = httpx.URL(base_url.rstrip("/") + TRACK_AUTH_PATH)
        self._where = str(self._url)
        self._extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        # Every header a client would add on its own is given here, so no transport has to
        # work out defaults per request; `identity` keeps rejected bodies readable as sent.
        self._fixed: list[tuple[bytes, bytes]] = [
            (b"Host", self._url.netloc),
            (b"Accept", b"application/json"),
            (b"Accept-Encoding", b"identity"),
            (b"Content-Type", b"application/json"),
            (b"User-Agent", USER_AGENT.encode()),
        ]
        self._bearer_for = ""
        self._authorization = b""

    def _authorization_header(self) -> bytes:
        """`Bearer <token>`, rebuilt only when the token changed (a rotated Secret file)."""
        token = self._token.token
        if token is not self._bearer_for:
            self._authorization = f"Bearer {token}".encode("ascii")
            self._bearer_for = token
        return self._authorization

    async def open(self) -> None:
        """Nothing to prepare: the first request opens the first connection."""

    async def send(self, event: AuthEvent) -> Outcome:
        # orjson writes an enum as its value, faster than reading `.value` here.
        body = orjson.dumps({"user_id": event.user_id, "action_type": event.action})
        request = httpx.Request(
            "POST",
            self._url,
            headers=[
                *self._fixed,
                (b"Authorization", self._authorization_header()),
                (b"Idempotency-Key", idempotency_key(event.key).encode("ascii")),
                (b"Content-Length", b"%d" % len(body)),
            ],
            stream=httpx.ByteStream(body),
            extensions=self._extensions,
        )
        # httpx copies the URL into every Request; giving the transport back the sink's own
        # object lets it reuse what it rendered and parsed for the first event.
        request.url = self._url
        try:
            response = await self._transport.handle_async_request(request)
            try:
                delivered = _DELIVERED.get(response.status_code)
                if delivered is not None:
                    # A success says nothing in its body: not decoding it saves about half
                    # of what httpx costs per event.
                    return delivered
                content = await response.aread()
            finally:
                # An answer already in memory holds no connection: nothing to release.
                if not isinstance(response.stream, httpx.ByteStream):
                    await response.aclose()
        except httpx.TimeoutException as exc:
            return transport_failure("timeout", f"no answer within the timeout: {exc}")
        except httpx.TransportError as exc:
            return transport_failure("error", f"{type(exc).__name__}: {exc}")
        retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
        return classify(response.status_code, content, retry_after, self._where)

    async def aclose(self) -> None:
        await self._transport.aclose()
