"""The Legiti sink: one `track_auth` call per event, answered as an `Outcome`.

The URL, the fixed headers and the client are built once; per event only the
small JSON body and the Idempotency-Key change. What an answer *means* lives in
`outcome.py`; what the pipeline does about it lives in `pipeline.py`.
"""

from __future__ import annotations

import string
import time
from urllib.parse import quote

import httpx
import orjson

from forwarder import __version__
from forwarder.backoff import parse_retry_after
from forwarder.credentials import TokenSource
from forwarder.events import AuthEvent
from forwarder.outcome import Outcome, classify, transport_failure
from forwarder.transport import AiohttpTransport

TRACK_AUTH_PATH = "/ticketing/v1/auth"
USER_AGENT = f"legiti-forwarder/{__version__}"
_HEADER_SAFE = string.punctuation.replace("%", "")


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
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport or AiohttpTransport(max_connections),
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
            follow_redirects=False,
        )
        self._url = httpx.URL(base_url + TRACK_AUTH_PATH)

    async def send(self, event: AuthEvent) -> Outcome:
        body = orjson.dumps({"user_id": event.user_id, "action_type": event.action.value})
        try:
            response = await self._client.post(
                self._url,
                content=body,
                headers={
                    "Authorization": f"Bearer {self._token.token}",
                    "Idempotency-Key": idempotency_key(event.key),
                },
            )
        except httpx.TimeoutException as exc:
            return transport_failure("timeout", f"no answer within the timeout: {exc}")
        except httpx.TransportError as exc:
            return transport_failure("error", f"{type(exc).__name__}: {exc}")
        retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
        return classify(response.status_code, response.content, retry_after)

    async def aclose(self) -> None:
        await self._client.aclose()
