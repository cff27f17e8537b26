"""An httpx transport that runs on aiohttp's connection pool.

httpx is the client API the sink is written against; its stock transport
(httpcore) is the slowest part of a request at high concurrency on a keep-alive
connection pool. This transport keeps the httpx interface and hands the wire to
aiohttp, reading the (small) answer whole so no stream object outlives the call.

It is on the hot path of every event, so it does per request only what a
request needs: aiohttp timeout objects are built once per distinct timeout
setting, the cookie jar is a no-op, and the answer becomes an `httpx.Response`
over the bytes already read (no content re-encoding, no header re-computation).
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import httpx


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self._max_connections = max_connections
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[Any, Any], aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, ssl=self._ssl, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        timeout = request.extensions.get("timeout", {})
        key = (timeout.get("read"), timeout.get("connect"))
        cached = self._timeouts.get(key)
        if cached is None:
            cached = self._timeouts[key] = aiohttp.ClientTimeout(total=key[0], sock_connect=key[1])
        return cached

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        stream = request.stream
        # An in-memory body (what the sink sends) is taken as it is; anything else is read.
        body = b"".join(stream) if isinstance(stream, httpx.ByteStream) else await request.aread()
        try:
            async with self._client().request(
                request.method,
                str(request.url),
                headers=[
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                ],
                data=body or None,
                allow_redirects=False,
                timeout=self._timeout(request),
            ) as response:
                content = await response.read()
        except TimeoutError as exc:
            raise httpx.TimeoutException(str(exc) or "timed out", request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(str(exc) or type(exc).__name__, request=request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=httpx.ByteStream(content),
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
