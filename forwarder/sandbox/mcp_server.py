"""A local MCP server for Legiti, built with the official MCP SDK's server.

It offers the two tools of the MCP server that wraps Legiti's API, as that server
defines them:

- `track_login(account_id, success=true, ip?, user_agent?, timestamp?)`
- `track_logout(account_id, ip?, user_agent?, timestamp?)`

and sends each call to the sandbox Legiti's collection endpoint, `POST /auth`, with
`{account_id, action, success, ip, user_agent, timestamp}`. Legiti's answer comes
back as the tool's result (its JSON as text); a refusal as an `isError` result
whose text is `Error: Legiti API <status>: <body>`, and no answer at all as
`Error: fetch failed`, as the real server words them. Like the real server it has
no authentication of its own (the gateway in front of it has) and answers over
Streamable HTTP in SSE unless `json_response` is set.

With `resumable`, every call's event stream is primed with an event id and closed
just before the answer is sent, so a client must resume it (GET with `Last-Event-ID`, after
`retry_ms`), as MCP 2025-11-25 allows a server to make it do.

Run it with `python -m forwarder.sandbox.mcp_server --legiti URL`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import signal
from collections.abc import Sequence
from typing import Final

import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp_types import CallToolResult, JSONRPCMessage, TextContent

from forwarder import __version__
from forwarder.core.events import TRACK_LOGIN, TRACK_LOGOUT
from forwarder.sandbox.asgi import AsgiServer

MCP_PATH: Final = "/mcp"
COLLECT_PATH: Final = "/auth"
LEGITI_TIMEOUT: Final = 10.0


class McpServerStub:
    """The server on a loopback port; `calls` counts the calls each tool received,
    `most_in_flight` how many it was serving at once at most."""

    def __init__(
        self,
        legiti_url: str,
        legiti_token: str = "test-token",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        json_response: bool = False,
        resumable: bool = False,
        retry_ms: int = 20,
    ) -> None:
        self.legiti_url = legiti_url.rstrip("/")
        self.legiti_token = legiti_token
        self.json_response = json_response
        self.resumable = resumable
        self.retry_ms = retry_ms
        self.calls: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.most_in_flight = 0
        self._server = AsgiServer(None, host, port)
        self._legiti: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        host = f"[{self._server.host}]" if ":" in self._server.host else self._server.host
        return f"http://{host}:{self._server.port}{MCP_PATH}"

    async def start(self) -> None:
        """Start with no sessions: a restart ends every session the clients hold."""
        self._legiti = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {self.legiti_token}"},
            timeout=LEGITI_TIMEOUT,
        )
        self._server.app = self._build().streamable_http_app(
            streamable_http_path=MCP_PATH,
            json_response=self.json_response,
            event_store=_MemoryEventStore() if self.resumable else None,
            retry_interval=self.retry_ms if self.resumable else None,
            host=self._server.host,
        )
        try:
            await self._server.start()
        except BaseException:
            await self._legiti.aclose()
            raise

    async def stop(self) -> None:
        await self._server.stop()
        if self._legiti is not None:
            await self._legiti.aclose()
            self._legiti = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> McpServerStub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _build(self) -> MCPServer:
        server = MCPServer("legiti", version=__version__, log_level="WARNING")

        @server.tool(name=TRACK_LOGIN, description="Tell Legiti about a login attempt.")
        async def track_login(
            account_id: str,
            context: Context,
            success: bool = True,
            ip: str | None = None,
            user_agent: str | None = None,
            timestamp: float | None = None,
        ) -> CallToolResult:
            return await self._collect(
                context, TRACK_LOGIN, account_id, "login", success, ip, user_agent, timestamp
            )

        @server.tool(name=TRACK_LOGOUT, description="Tell Legiti about a logout.")
        async def track_logout(
            account_id: str,
            context: Context,
            ip: str | None = None,
            user_agent: str | None = None,
            timestamp: float | None = None,
        ) -> CallToolResult:
            return await self._collect(
                context, TRACK_LOGOUT, account_id, "logout", None, ip, user_agent, timestamp
            )

        return server

    async def _collect(
        self,
        context: Context,
        tool: str,
        account_id: str,
        action: str,
        success: bool | None,
        ip: str | None,
        user_agent: str | None,
        timestamp: float | None,
    ) -> CallToolResult:
        self.calls[tool] += 1
        payload = {
            "account_id": account_id,
            "action": action,
            "success": success,
            "ip": ip,
            "user_agent": user_agent,
            "timestamp": timestamp,
        }
        assert self._legiti is not None
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            response = await self._legiti.post(self.legiti_url + COLLECT_PATH, json=payload)
        except httpx.HTTPError:
            return _result("Error: fetch failed", error=True)
        finally:
            self.in_flight -= 1
            if self.resumable:
                # Hang up before answering: the answer waits in the event store.
                await context.close_sse_stream()
        if response.is_success:
            return _result(response.text)
        return _result(f"Error: Legiti API {response.status_code}: {response.text}", error=True)


def _result(text: str, *, error: bool = False) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=error)


class _MemoryEventStore(EventStore):
    """Every event of every stream, in order, so a stream can be replayed from an id."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._events: list[tuple[str, str, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(next(self._ids))
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        position = next(
            (i for i, (event_id, _, _) in enumerate(self._events) if event_id == last_event_id),
            None,
        )
        if position is None:
            return None
        stream_id = self._events[position][1]
        for event_id, stream, message in self._events[position + 1 :]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m forwarder.sandbox.mcp_server",
        description="Serve the MCP tools track_login and track_logout over a sandbox Legiti.",
    )
    parser.add_argument("--legiti", required=True, help="the sandbox Legiti's URL")
    parser.add_argument("--legiti-token", default="test-token")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the kernel pick one")
    parser.add_argument("--json", action="store_true", help="answer in JSON instead of SSE")
    return parser.parse_args(argv)


async def _serve_until_signalled(server: McpServerStub) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    async with server:
        print(f"listening {server.url}", flush=True)
        await stopping.wait()


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    server = McpServerStub(
        args.legiti,
        args.legiti_token,
        host=args.host,
        port=args.port,
        json_response=args.json,
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_until_signalled(server))
    else:
        uvloop.run(_serve_until_signalled(server))


if __name__ == "__main__":
    main()
