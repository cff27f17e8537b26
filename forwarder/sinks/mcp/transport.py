"""The project's pyreqwest transport, with answers read as they arrive.

An MCP answer may be an event stream that the server keeps open after the
response, or closes before it to be polled, so the session must read events as
they come rather than wait for the whole body; the REST sink's transport
(`sinks.legiti.transport`) reads every body whole. This one streams the body and
is otherwise the same client, configured the same way (no redirects followed, no
cookies, nothing decompressed, the system's trust store, `HTTPS_PROXY` honoured).

httpx's own transport (httpcore) is not used: on this machine its connection pool
cost the event loop 5 ms of CPU per call at 64 connections (it walks every request
against every connection, and asks which async library runs on each request),
against 0.2 ms for the whole exchange with aiohttp.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from pyreqwest.exceptions import (
    PyreqwestError,
)
from pyreqwest.request import StreamRequest
from pyreqwest.response import ResponseBodyReader

from forwarder.sinks.legiti.transport import ReqwestTransport, translated


class StreamingTransport(ReqwestTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        builder = await self._request(request)
        # reqwest hands the response over once this much of the body is in, or all of it:
        # one byte, so an event stream that stays open is seen as soon as it starts.
        exchange = builder.streamed_read_buffer_limit(1).build_streamed()
        try:
            response = await exchange.__aenter__()
        except PyreqwestError as exc:
            raise translated(exc, request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.headers.items()),
            stream=_Body(exchange, response.body_reader, request),
            request=request,
        )


class _Body(httpx.AsyncByteStream):
    """The body as reqwest hands it over; closing it ends the exchange."""

    def __init__(
        self, exchange: StreamRequest, reader: ResponseBodyReader, request: httpx.Request
    ) -> None:
        self._exchange = exchange
        self._reader = reader
        self._request = request
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await self._reader.read_chunk()
            except PyreqwestError as exc:
                raise translated(exc, self._request) from exc
            if chunk is None:
                return
            yield bytes(chunk)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._exchange.__aexit__(None, None, None)
