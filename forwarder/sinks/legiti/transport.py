"""An httpx transport that runs on pyreqwest (Rust's reqwest, hyper and rustls).

httpx is the client API the sink is written against; what runs under it decides
the cost of every event. httpx's stock transport (httpcore) slows down as
connections grow; aiohttp is the fastest pure-asyncio client, but its request
machinery (a task per request body, header multidicts, payload objects, timers)
was over half of the forwarder's CPU. pyreqwest does the HTTP exchange in Rust,
on its own thread and without holding the GIL, so the event loop only builds
the request and reads the answer (see the README's Performance section).

Behaviour an operator relies on is set explicitly rather than left to defaults:
no redirects are followed (a 3xx is an answer to classify, not to chase), no
cookies are kept, nothing is decompressed (the sink asks for `identity`), idle
connections are closed after 30 s, and certificates are verified against the
system's trust store, or the one `SSL_CERT_FILE` / `SSL_CERT_DIR` name (how a
private CA is trusted). `HTTPS_PROXY` / `NO_PROXY` are honoured, as reqwest does.

The answer is read whole (Legiti's answers are small), so no stream outlives
the call and `aclose` on the response is never needed.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import (
    ConnectError,
    ConnectTimeoutError,
    PoolTimeoutError,
    PyreqwestError,
    ReadTimeoutError,
    RequestTimeoutError,
    WriteTimeoutError,
)
from pyreqwest.http import Url
from pyreqwest.request import RequestBuilder

IDLE_CONNECTION_SECONDS = 30.0

_TIMEOUTS: dict[type[PyreqwestError], type[httpx.TimeoutException]] = {
    ConnectTimeoutError: httpx.ConnectTimeout,
    ReadTimeoutError: httpx.ReadTimeout,
    WriteTimeoutError: httpx.WriteTimeout,
    PoolTimeoutError: httpx.PoolTimeout,
}


class ReqwestTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._client: Client | None = None
        self._timeouts: dict[float, timedelta] = {}
        self._last_url: tuple[httpx.URL, Url] | None = None

    def _connected(self) -> Client:
        """The client is built on first use, inside the running event loop it belongs to."""
        if self._client is None:
            self._client = (
                ClientBuilder()
                .max_connections(self._max_connections)
                .pool_idle_timeout(timedelta(seconds=IDLE_CONNECTION_SECONDS))
                .follow_redirects(False)
                .default_cookie_store(False)
                .gzip(False)
                .brotli(False)
                .zstd(False)
                .deflate(False)
                .build()
            )
        return self._client

    def _parsed(self, url: httpx.URL) -> Url:
        """The sink sends every event to the same `httpx.URL` object: render and parse
        it once (a parsed `Url` saves reqwest 1 µs a request over a string)."""
        last = self._last_url
        if last is None or last[0] is not url:
            last = self._last_url = (url, Url(str(url)))
        return last[1]

    def _total(self, seconds: float) -> timedelta:
        cached = self._timeouts.get(seconds)
        if cached is None:
            cached = self._timeouts[seconds] = timedelta(seconds=seconds)
        return cached

    async def _request(self, request: httpx.Request) -> RequestBuilder:
        """The reqwest request for an httpx one: body, headers and the time limit."""
        stream = request.stream
        # An in-memory body (what the sinks send) is taken as it is; anything else is read.
        body = b"".join(stream) if isinstance(stream, httpx.ByteStream) else await request.aread()
        headers = request.headers
        encoding = headers.encoding  # worked out once per request, not once per header
        builder = (
            self._connected()
            .request(request.method, self._parsed(request.url))
            .headers([(key.decode(encoding), value.decode(encoding)) for key, value in headers.raw])
        )
        if body:
            builder = builder.body_bytes(body)
        # reqwest's per-request timeout covers the whole exchange, connecting included.
        if (read := request.extensions.get("timeout", {}).get("read")) is not None:
            builder = builder.timeout(self._total(read))
        return builder

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        builder = await self._request(request)
        try:
            response = await builder.build().send()
            content = bytes(await response.bytes())
        except PyreqwestError as exc:
            raise translated(exc, request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.headers.items()),
            stream=httpx.ByteStream(content),
            request=request,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def translated(exc: PyreqwestError, request: httpx.Request) -> httpx.TransportError:
    """A reqwest failure as the httpx exception a sink expects (timeouts apart)."""
    if isinstance(exc, RequestTimeoutError):
        return _TIMEOUTS.get(type(exc), httpx.TimeoutException)(
            str(exc) or "timed out", request=request
        )
    if isinstance(exc, ConnectError):
        return httpx.ConnectError(str(exc), request=request)
    return httpx.TransportError(str(exc) or type(exc).__name__, request=request)
