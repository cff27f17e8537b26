"""The MCP session against a scripted Streamable HTTP endpoint (a real aiohttp server),
for the parts of the protocol the SDK's server does not exercise: other protocol
revisions, servers without sessions, paginated tool lists, requests and notifications
in the middle of an answer, streams left open, and answers that are not MCP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from forwarder.core.events import ActionType, AuthEvent
from forwarder.sinks.base import SinkMisconfigured
from forwarder.sinks.mcp.client import McpSink
from forwarder.sinks.outcome import Delivered, Misconfigured, Rejected, Retry

LOGIN = AuthEvent("e-1", "user-1", ActionType.LOGIN_SUCCESS)
SCHEMA = {"type": "object", "properties": {"account_id": {"type": "string"}}}
TOOLS = [
    {"name": "track_login", "inputSchema": SCHEMA},
    {"name": "track_logout", "inputSchema": SCHEMA},
]
Handler = Callable[[dict[str, Any]], Any]


@dataclass
class Endpoint:
    """A Streamable HTTP endpoint whose answers the test decides.

    `answer(message)` returns the JSON-RPC result for a request (or a `web.Response`
    to send as it is); `sse` answers requests as event streams, `held_open` keeps
    such a stream open after the response and `before` is what a stream carries
    first. Every message received, and its headers, is kept in `received`."""

    answer: Handler
    version: str = "2025-11-25"
    session_id: str | None = "s-1"
    sse: bool = False
    held_open: bool = False
    before: list[dict[str, Any]] = field(default_factory=list)
    received: list[tuple[str, dict[str, Any] | None, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        message = orjson.loads(body) if body else None
        seen = {name.lower(): value for name, value in request.headers.items()}
        self.received.append((request.method, message, seen))
        if request.method == "DELETE":
            return web.Response(status=200)
        if not isinstance(message, dict) or "id" not in message:
            return web.Response(status=202)
        headers = {} if self.session_id is None else {"Mcp-Session-Id": self.session_id}
        if message.get("method") == "initialize":
            result: Any = {
                "result": {
                    "protocolVersion": self.version,
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "scripted", "version": "1"},
                }
            }
        elif "method" not in message:  # the client's reply to our request
            return web.Response(status=202)
        else:
            result = self.answer(message)
        if isinstance(result, web.StreamResponse):
            return result
        response = {"jsonrpc": "2.0", "id": message["id"], **result}
        if not self.sse:
            return web.json_response(response, headers=headers)
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
        await stream.prepare(request)
        await stream.write(b": a comment line\n\nid: 1\ndata:\n\n")  # a priming event
        for early in self.before:
            await stream.write(b"event: message\ndata: " + orjson.dumps(early) + b"\n\n")
        await stream.write(b"id: 2\ndata: " + orjson.dumps(response) + b"\n\n")
        if self.held_open:
            await stream.write(b": still here\n\n")
            return stream  # aiohttp ends it only when the client hangs up or the app stops
        await stream.write_eof()
        return stream


def tools_and_calls(
    call: Handler = lambda _: {"result": {"content": [{"type": "text", "text": "{}"}]}},
) -> Handler:
    def answer(message: dict[str, Any]) -> Any:
        if message["method"] == "tools/list":
            return {"result": {"tools": TOOLS}}
        return call(message)

    return answer


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Endpoint], Any]]:
    runners: list[web.AppRunner] = []

    async def start(endpoint: Endpoint) -> Endpoint:
        app = web.Application()
        app.router.add_route("*", "/mcp", endpoint.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        endpoint.url = f"http://127.0.0.1:{port}/mcp"
        return endpoint

    yield start
    for runner in runners:
        await runner.cleanup()


def sink(endpoint: Endpoint, timeout: float = 5.0) -> McpSink:
    return McpSink(endpoint.url, None, timeout=timeout, max_connections=8)


def methods(endpoint: Endpoint) -> list[str]:
    return [
        str(message.get("method", "reply")) if message else method
        for method, message, _ in endpoint.received
    ]


async def test_an_event_stream_with_requests_and_notifications_before_the_answer(serve) -> None:
    ping = {"jsonrpc": "2.0", "id": "srv-1", "method": "ping"}
    sampling = {"jsonrpc": "2.0", "id": "srv-2", "method": "sampling/createMessage"}
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    endpoint = await serve(
        Endpoint(tools_and_calls(), sse=True, held_open=True, before=[progress, ping, sampling])
    )
    mcp = sink(endpoint)
    await mcp.open()
    try:
        outcome = await mcp.send(LOGIN)
    finally:
        await mcp.aclose()

    assert outcome == Delivered("ok")
    replies = [
        message for _, message, _ in endpoint.received if message and "method" not in message
    ]
    assert {"jsonrpc": "2.0", "id": "srv-1", "result": {}} in replies
    assert any(r["id"] == "srv-2" and r["error"]["code"] == -32601 for r in replies)


async def test_the_session_headers_and_the_negotiated_revision(serve) -> None:
    endpoint = await serve(Endpoint(tools_and_calls(), version="2025-03-26"))
    mcp = sink(endpoint)
    await mcp.open()
    await mcp.send(LOGIN)
    await mcp.aclose()

    assert methods(endpoint) == [
        "initialize",
        "notifications/initialized",
        "tools/list",
        "tools/call",
        "DELETE",
    ]
    initialize = endpoint.received[0]
    assert initialize[1] is not None
    assert initialize[1]["params"]["protocolVersion"] == "2025-11-25"
    assert "mcp-session-id" not in initialize[2]
    for _, _, headers in endpoint.received[1:]:
        assert headers["mcp-session-id"] == "s-1"
        assert headers["mcp-protocol-version"] == "2025-03-26"
    assert "application/json" in endpoint.received[3][2]["accept"]
    assert "text/event-stream" in endpoint.received[3][2]["accept"]


async def test_a_server_without_sessions(serve) -> None:
    endpoint = await serve(Endpoint(tools_and_calls(), session_id=None))
    mcp = sink(endpoint)
    await mcp.open()
    outcome = await mcp.send(LOGIN)
    await mcp.aclose()

    assert outcome == Delivered("ok")
    assert "DELETE" not in methods(endpoint)
    assert all("mcp-session-id" not in headers for _, _, headers in endpoint.received)


async def test_a_server_of_an_unknown_revision_is_refused(serve) -> None:
    endpoint = await serve(Endpoint(tools_and_calls(), version="2024-11-05"))

    with pytest.raises(SinkMisconfigured, match="2024-11-05"):
        await sink(endpoint).open()


async def test_tools_list_pages_are_followed(serve) -> None:
    pages = {None: ([TOOLS[0]], "p2"), "p2": ([], "p3"), "p3": ([TOOLS[1]], None)}

    def answer(message: dict[str, Any]) -> Any:
        if message["method"] != "tools/list":
            return {"result": {"content": []}}
        tools, cursor = pages[(message.get("params") or {}).get("cursor")]
        return {"result": {"tools": tools, **({"nextCursor": cursor} if cursor else {})}}

    endpoint = await serve(Endpoint(answer))
    mcp = sink(endpoint)
    await mcp.open()
    await mcp.aclose()

    assert methods(endpoint).count("tools/list") == 3


async def test_a_cursor_that_never_ends_is_not_followed_forever(serve) -> None:
    def answer(message: dict[str, Any]) -> Any:
        return {"result": {"tools": [], "nextCursor": "again"}}

    endpoint = await serve(Endpoint(answer))
    mcp = sink(endpoint)
    try:
        await mcp.open()  # not a configuration error: the check is made again before sending
        outcome = await mcp.send(LOGIN)
    finally:
        await mcp.aclose()

    assert isinstance(outcome, Retry)
    assert outcome.code == "invalid_answer"


async def test_a_server_without_tools_is_a_configuration_error(serve) -> None:
    def answer(message: dict[str, Any]) -> Any:
        return {"error": {"code": -32601, "message": "Method not found"}}

    endpoint = await serve(Endpoint(answer))

    with pytest.raises(SinkMisconfigured, match="-32601"):
        await sink(endpoint).open()


async def test_invalid_params_rejects_the_event(serve) -> None:
    refusal = {"error": {"code": -32602, "message": "account_id: expected string"}}
    endpoint = await serve(Endpoint(tools_and_calls(lambda _: refusal), sse=True))
    mcp = sink(endpoint)
    await mcp.open()
    try:
        outcome = await mcp.send(LOGIN)
    finally:
        await mcp.aclose()

    assert isinstance(outcome, Rejected)
    assert outcome.code == "rpc_invalid_params"
    assert outcome.body == b"account_id: expected string"


async def test_an_answer_that_is_not_mcp(serve) -> None:
    page = web.Response(text="<html>maintenance</html>", content_type="text/html")
    endpoint = await serve(Endpoint(tools_and_calls(lambda _: page)))
    mcp = sink(endpoint)
    await mcp.open()
    try:
        outcome = await mcp.send(LOGIN)
    finally:
        await mcp.aclose()

    assert isinstance(outcome, Retry)
    assert (outcome.code, outcome.outage) == ("invalid_answer", True)
    assert "text/html" in outcome.detail


async def test_the_check_waits_for_a_far_end_that_was_down_at_start(serve) -> None:
    state = {"up": False}

    def answer(message: dict[str, Any]) -> Any:
        if not state["up"]:
            return web.Response(status=503, headers={"Retry-After": "2"})
        return tools_and_calls()(message)

    endpoint = await serve(Endpoint(answer))
    mcp = sink(endpoint)
    try:
        await mcp.open()  # initialize works, tools/list does not: no configuration error yet
        down = await mcp.send(LOGIN)
        state["up"] = True
        up = await mcp.send(LOGIN)
    finally:
        await mcp.aclose()

    assert isinstance(down, Retry)
    assert (down.code, down.outage, down.retry_after) == ("http_503", True, 2.0)
    assert up == Delivered("ok")
    assert methods(endpoint).count("tools/call") == 1


async def test_a_tool_that_disappears_later_is_a_configuration_error(serve) -> None:
    text = {"type": "text", "text": "Unknown tool: track_login"}
    unknown = {"result": {"content": [text], "isError": True}}
    endpoint = await serve(Endpoint(tools_and_calls(lambda _: unknown)))
    mcp = sink(endpoint)
    await mcp.open()
    try:
        outcome = await mcp.send(LOGIN)
    finally:
        await mcp.aclose()

    assert isinstance(outcome, Misconfigured)
    assert outcome.code == "tool_unknown"
