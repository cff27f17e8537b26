"""One MCP session over the Streamable HTTP transport, shared by every call in flight.

The client is written over httpx (on the project's pyreqwest client, see
`transport.py`) rather than with the official SDK's client: the SDK turns HTTP 401,
429 and 5xx into one generic JSON-RPC error (-32603), losing the status and the
`Retry-After` that the forwarder's credentials halt, throttling and circuit breaker
act on. The server-sent events of an answer are read with `httpx-sse`, so no
event-stream parsing is written here.

What the transport asks of a client, and where it is done:
- every message is a POST to the one endpoint, accepting JSON or an event stream;
  an answer is one JSON object, or an SSE stream carrying it among notifications
  and requests the server makes (a ping is answered, anything else refused);
- `initialize` offers the newest revision this client speaks and takes the one the
  server chose, then `notifications/initialized`; the `Mcp-Session-Id` it returned
  and `MCP-Protocol-Version` go on every later request;
- a session may end at any time: HTTP 404 on a request with a session id, or HTTP
  400 with JSON-RPC error -32000, starts a new session and the request is sent once
  more; many calls that meet the same ended session start one new session together;
- a stream that ends before the response, after an event id (2025-11-25 lets a
  server hang up to be polled), is resumed with a GET carrying `Last-Event-ID`,
  after the `retry` the server asked for;
- the session is ended with DELETE on close.

Each exchange has one deadline, `timeout`, however the answer is delivered.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import httpx
from httpx_sse import EventSource, SSEError

from forwarder import __version__
from forwarder.core.retry import parse_retry_after
from forwarder.ops.logs import RepeatSuppressor, get_logger
from forwarder.sinks.credentials import TokenSource
from forwarder.sinks.mcp import messages
from forwarder.sinks.mcp.messages import (
    PROTOCOL_VERSIONS,
    ProtocolError,
    RpcError,
    RpcResponse,
    ServerRequest,
)
from forwarder.sinks.mcp.transport import StreamingTransport

USER_AGENT: Final = f"legiti-forwarder/{__version__}"
SESSION_HEADER: Final = "Mcp-Session-Id"
VERSION_HEADER: Final = "MCP-Protocol-Version"
SESSION_NOT_FOUND: Final = -32000
CLOSE_TIMEOUT: Final = 2.0
RENEWAL_LOG_PERIOD: Final = 60.0
Headers = tuple[tuple[bytes, bytes], ...]
_POST: Final = (
    (b"Accept", b"application/json, text/event-stream"),
    (b"Content-Type", b"application/json"),
    (b"Accept-Encoding", b"identity"),
)
_RESUME: Final = ((b"Accept", b"text/event-stream"), (b"Accept-Encoding", b"identity"))


class HttpFailure(NamedTuple):
    """An HTTP answer that carries no JSON-RPC response."""

    status: int
    body: bytes
    retry_after: float | None


class NoAnswer(NamedTuple):
    """No answer (`timeout`, `error`), or one that is not MCP (`invalid_answer`)."""

    code: str
    detail: str


class Incompatible(NamedTuple):
    """The server would not start a session this client can speak."""

    detail: str


class Expired(NamedTuple):
    """The session ended, a new one was started, and it ended at once too."""


Reply = RpcResponse | HttpFailure | NoAnswer | Incompatible | Expired
_ACCEPTED: Final = RpcResponse({}, None)  # what a notification gets: HTTP 202 and no body
_EXPIRED: Final = Expired()


@dataclass(frozen=True, slots=True)
class Established:
    """A session the server accepted; `session_id` is None for a server without sessions.
    `headers` are what every request of the session carries."""

    session_id: str | None
    protocol_version: str
    server: str
    headers: Headers


class Session:
    def __init__(
        self,
        url: str,
        token: TokenSource | None,
        *,
        timeout: float,
        max_connections: int,
    ) -> None:
        self._url = httpx.URL(url)
        self._token = token
        self._timeout = timeout
        # Keep-alive connections for every call that may be in flight, and two more for
        # what a session does beside them (a renewal, an answer to a ping). Requests go
        # to the transport as they are, as the REST sink's do: `httpx.AsyncClient`'s
        # per-request machinery (header merging, cookies, auth and redirect hooks) cost
        # more CPU than the exchange itself, and none of it is wanted (a redirect is an
        # answer to classify, not to follow).
        self._transport = StreamingTransport(max_connections + 2)
        self._extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        self._fixed: Headers = ((b"Host", self._url.netloc), (b"User-Agent", USER_AGENT.encode()))
        self._live: Established | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._bearer_for: str | None = None
        self._authorization: Headers = ()
        self._log = get_logger("forwarder.sinks.mcp")
        self._repeats = RepeatSuppressor(RENEWAL_LOG_PERIOD)

    @property
    def established(self) -> Established | None:
        return self._live

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Reply:
        """Send one request and return its answer, starting or renewing the session as
        needed; never raises for what the far end does."""
        live = self._live or await self._establish(None)
        if not isinstance(live, Established):
            return live
        reply = await self._post(method, params, live)
        if not isinstance(reply, Expired):
            return reply
        renewed = await self._establish(live)
        if not isinstance(renewed, Established):
            return renewed
        return await self._post(method, params, renewed)

    async def aclose(self) -> None:
        """End the session (a server that does not allow it answers 405: fine) and
        close the connections."""
        live, self._live = self._live, None
        try:
            if live is not None and live.session_id is not None:
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        response = await self._send("DELETE", live.headers)
                        await response.aclose()
                except (TimeoutError, httpx.HTTPError) as exc:
                    self._log.info("could not end the MCP session", error=repr(exc))
        finally:
            await self._transport.aclose()

    # Session set-up ----------------------------------------------------------------

    async def _establish(self, ended: Established | None) -> Established | Reply:
        """The live session; a new one when there is none or `ended` is still the live one.

        Under a lock, so the calls that met the same ended session start one together."""
        async with self._lock:
            live = self._live
            if live is not None and live is not ended:
                return live
            self._live = None
            if ended is not None:
                suppressed = self._repeats.allow("renewal", time.monotonic())
                if suppressed is not None:
                    self._log.info(
                        "the MCP session ended; starting a new one", suppressed=suppressed
                    )
            started = await self._initialize()
            if isinstance(started, Established):
                self._live = started
            return started

    async def _initialize(self) -> Established | Reply:
        request_id = next(self._ids)
        reply, headers = await self._exchange(messages.initialize(request_id), (), request_id, None)
        if not isinstance(reply, RpcResponse):
            return reply
        if reply.error is not None:
            return Incompatible(f"initialize refused: {reply.error.code} {reply.error.message}")
        result = reply.result or {}
        version = result.get("protocolVersion")
        if version not in PROTOCOL_VERSIONS:
            return Incompatible(
                f"the server speaks MCP {version!r}; this forwarder speaks "
                f"{', '.join(PROTOCOL_VERSIONS)}"
            )
        info = result.get("serverInfo")
        server = (
            f"{info.get('name')} {info.get('version')}" if isinstance(info, dict) else "unknown"
        )
        session_id = headers.get(SESSION_HEADER) if headers is not None else None
        fixed: Headers = ((VERSION_HEADER.encode(), version.encode()),)
        if session_id is not None:
            fixed += ((SESSION_HEADER.encode(), session_id.encode("latin-1")),)
        established = Established(session_id, version, server, fixed)
        reply, _ = await self._exchange(messages.INITIALIZED, fixed, None, established)
        if not isinstance(reply, RpcResponse):
            return reply
        self._log.info(
            "MCP session started",
            server=server,
            protocol_version=version,
            session=session_id is not None,
        )
        return established

    # Exchanges ---------------------------------------------------------------------

    async def _post(self, method: str, params: dict[str, Any] | None, live: Established) -> Reply:
        request_id = next(self._ids)
        body = messages.request(request_id, method, params)
        reply, _ = await self._exchange(body, live.headers, request_id, live)
        return reply

    def _send(
        self, method: str, headers: Headers, body: bytes | None = None
    ) -> Awaitable[httpx.Response]:
        """One request, with the fixed headers, the session's and the grant token."""
        token = self._token
        if token is not None and token.token is not self._bearer_for:
            self._bearer_for = token.token
            self._authorization = ((b"Authorization", f"Bearer {token.token}".encode()),)
        if body is None:
            every = (*self._fixed, *headers, *self._authorization)
        else:
            length = (b"Content-Length", b"%d" % len(body))
            every = (*self._fixed, *_POST, *headers, *self._authorization, length)
        request = httpx.Request(
            method,
            self._url,
            headers=list(every),
            stream=httpx.ByteStream(body or b""),
            extensions=self._extensions,
        )
        # httpx copies the URL into every Request; the transport's parsed-URL cache wants
        # the session's own object back.
        request.url = self._url
        return self._transport.handle_async_request(request)

    async def _exchange(
        self,
        body: bytes,
        headers: Headers,
        request_id: int | None,
        live: Established | None,
    ) -> tuple[Reply, httpx.Headers | None]:
        """POST one message and read its answer; `request_id` None for a notification."""
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._send("POST", headers, body)
                try:
                    return await self._answer(response, request_id, live), response.headers
                finally:
                    await response.aclose()
        except TimeoutError:
            return NoAnswer("timeout", f"no answer within {self._timeout:g}s"), None
        except httpx.TimeoutException as exc:
            return NoAnswer("timeout", f"no answer within the timeout: {exc!r}"), None
        except httpx.TransportError as exc:
            return NoAnswer("error", f"{type(exc).__name__}: {exc}"), None
        except (ProtocolError, SSEError, UnicodeDecodeError) as exc:
            return NoAnswer("invalid_answer", str(exc)), None

    async def _answer(
        self, response: httpx.Response, request_id: int | None, live: Established | None
    ) -> Reply:
        status = response.status_code
        if request_id is None:
            if status in (200, 202, 204):
                return _ACCEPTED
        elif status == 200:
            kind = _media_type(response)
            if kind == "application/json":
                found = messages.read(messages.parse(await response.aread()), request_id)
                if isinstance(found, RpcResponse):
                    return found
                raise ProtocolError(f"a JSON answer without the response to request {request_id}")
            if kind == "text/event-stream":
                return await self._events(response, request_id, live)
            raise ProtocolError(f"an answer of type {kind or 'none'!r}")
        body = await response.aread()
        if live is not None and live.session_id is not None and _session_ended(status, body):
            return _EXPIRED
        return HttpFailure(
            status, body, parse_retry_after(response.headers.get("retry-after"), time.time())
        )

    async def _events(
        self, response: httpx.Response, request_id: int, live: Established | None
    ) -> RpcResponse:
        """Read the event stream until the response to `request_id`, resuming it if the
        server hangs up first after an event id."""
        last_event_id: str | None = None
        retry_ms: int | None = None
        stream = response
        try:
            while True:
                async for event in EventSource(stream).aiter_sse():
                    if event.id:
                        last_event_id = event.id
                    if event.retry is not None:
                        retry_ms = event.retry
                    if not event.data:  # a priming event: only its id counts
                        continue
                    found = messages.read(messages.parse(event.data), request_id)
                    if isinstance(found, RpcResponse):
                        return found
                    if isinstance(found, ServerRequest) and live is not None:
                        await self._reply_to(found, live)
                if last_event_id is None or live is None:
                    raise ProtocolError("the event stream ended without the response")
                if stream is not response:
                    await stream.aclose()
                if retry_ms:
                    await asyncio.sleep(retry_ms / 1000)
                stream = await self._resume(last_event_id, live)
        finally:
            if stream is not response:
                await stream.aclose()

    async def _resume(self, last_event_id: str, live: Established) -> httpx.Response:
        resume = (*_RESUME, *live.headers, (b"Last-Event-ID", last_event_id.encode("latin-1")))
        stream = await self._send("GET", resume)
        if stream.status_code != 200 or _media_type(stream) != "text/event-stream":
            status = stream.status_code
            await stream.aclose()
            raise ProtocolError(f"resuming the event stream was answered HTTP {status}")
        return stream

    async def _reply_to(self, asked: ServerRequest, live: Established) -> None:
        """Answer what the server asked mid-answer: a ping, yes; nothing else is offered."""
        if asked.method == "ping":
            body = messages.reply(asked.id, {}, None)
        else:
            body = messages.reply(asked.id, None, RpcError(-32601, f"{asked.method} not supported"))
        try:
            response = await self._send("POST", live.headers, body)
            await response.aclose()
        except httpx.HTTPError as exc:
            self._log.debug("could not answer the MCP server", method=asked.method, error=repr(exc))


def _media_type(response: httpx.Response) -> str:
    content_type: str = response.headers.get("content-type", "")
    return content_type.partition(";")[0].strip().lower()


def _session_ended(status: int, body: bytes) -> bool:
    """HTTP 404 on a request with a session id; or, from some servers, HTTP 400 with
    JSON-RPC error -32000."""
    if status == 404:
        return True
    if status != 400:
        return False
    try:
        message = messages.parse(body)
    except ProtocolError:
        return False
    error = message.get("error") if isinstance(message, dict) else None
    return isinstance(error, dict) and error.get("code") == SESSION_NOT_FOUND
