"""The MCP sink: one `tools/call` of Legiti's MCP server per event, answered as an `Outcome`.

Events become calls of two tools, `track_login` and `track_logout` unless the
gateway names them otherwise (`FORWARDER_MCP_LOGIN_TOOL`, `FORWARDER_MCP_LOGOUT_TOOL`);
the session (`session.py`) carries them, `classify.py` says what each answer means.

Before the first event the sink checks, with `tools/list`, that the server offers
both tools and that they accept the arguments it sends. A tool the policy denies
may be missing (a gateway may hide denied tools). When the far end cannot be asked
at start (it is down, the grant token is refused), `open` does not fail: the check
is made before the first send instead, and until it passes each send answers what
stopped it (an outage, Unauthorized, Misconfigured), which the engine halts on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Final

from forwarder.core.events import TRACK_LOGIN, TRACK_LOGOUT, AuthEvent
from forwarder.ops.logs import get_logger
from forwarder.sinks.base import SinkMisconfigured
from forwarder.sinks.credentials import TokenSource
from forwarder.sinks.mcp import classify, schema
from forwarder.sinks.mcp.messages import RpcResponse, tool_arguments
from forwarder.sinks.mcp.session import (
    Expired,
    HttpFailure,
    Incompatible,
    NoAnswer,
    Reply,
    Session,
)
from forwarder.sinks.outcome import Misconfigured, Outcome, transport_failure

TOOL_SETTINGS: Final = {
    TRACK_LOGIN: "FORWARDER_MCP_LOGIN_TOOL",
    TRACK_LOGOUT: "FORWARDER_MCP_LOGOUT_TOOL",
}
MAX_TOOL_PAGES: Final = 1000
"""`tools/list` pages followed at most: a server whose cursor never ends is refused."""


class McpSink:
    def __init__(
        self,
        url: str,
        token: TokenSource | None,
        *,
        timeout: float,
        max_connections: int,
        login_tool: str = TRACK_LOGIN,
        logout_tool: str = TRACK_LOGOUT,
        denied: AbstractSet[str] = frozenset(),
        limit_windows: Mapping[str, Sequence[float]] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`denied` holds the forwarder's tools (`track_login`, `track_logout`) that the
        policy file denies; `limit_windows` the policy's limit windows (seconds) per
        forwarder tool, for a rate-limit denial that does not name its window."""
        self._session = Session(url, token, timeout=timeout, max_connections=max_connections)
        self._names = {TRACK_LOGIN: login_tool, TRACK_LOGOUT: logout_tool}
        self._denied = frozenset(denied)
        self._windows = {tool: tuple((limit_windows or {}).get(tool, ())) for tool in self._names}
        self._wall = wall_clock
        self._checked = False
        self._check_lock = asyncio.Lock()
        self._checks = 0
        self._last_check: Outcome | None = None
        self._log = get_logger("forwarder.sinks.mcp")

    async def open(self) -> None:
        """Start the session and check the tools; raise `SinkMisconfigured` when the
        server cannot take the events as configured."""
        failure = await self._ensure_checked()
        if isinstance(failure, Misconfigured):
            raise SinkMisconfigured(failure.detail)
        if failure is not None:
            self._log.warning(
                "cannot reach the MCP server to check its tools; checking before the first send",
                code=failure.code,
                error=getattr(failure, "detail", ""),
            )

    async def send(self, event: AuthEvent) -> Outcome:
        if not self._checked:
            failure = await self._ensure_checked()
            if failure is not None:
                return failure
        tool = event.action.tool
        name = self._names[tool]
        reply = await self._session.request(
            "tools/call", {"name": name, "arguments": tool_arguments(event)}
        )
        if isinstance(reply, RpcResponse):
            if reply.error is not None:
                return classify.rpc_error(reply.error, name)
            return classify.tool_result(reply.result or {}, name, self._wall(), self._windows[tool])
        return _unanswered(reply)

    async def aclose(self) -> None:
        await self._session.aclose()

    async def _ensure_checked(self) -> Outcome | None:
        """Check the tools once; calls that wait while a check fails share its answer
        instead of each asking again."""
        seen = self._checks
        async with self._check_lock:
            if self._checked:
                return None
            if self._checks != seen and self._last_check is not None:
                return self._last_check
            self._checks += 1
            self._last_check = await self._check()
            self._checked = self._last_check is None
            return self._last_check

    async def _check(self) -> Outcome | None:
        listed: dict[str, Any] = {}
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            reply = await self._session.request(
                "tools/list", None if cursor is None else {"cursor": cursor}
            )
            if not isinstance(reply, RpcResponse):
                return _unanswered(reply)
            if reply.error is not None:
                return classify.rpc_error(reply.error, "tools/list")
            result = reply.result or {}
            tools = result.get("tools")
            if not isinstance(tools, list):
                return classify.invalid_answer(f"tools/list without a list of tools: {result!r}")
            for tool in tools:
                if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                    listed[tool["name"]] = tool.get("inputSchema")
            next_cursor = result.get("nextCursor")
            if not isinstance(next_cursor, str) or not next_cursor:
                break
            cursor = next_cursor
        else:
            return classify.invalid_answer(f"tools/list went on for {MAX_TOOL_PAGES} pages")
        problems = schema.problems(listed, self._names, TOOL_SETTINGS, self._denied)
        if problems:
            return Misconfigured("tool_unavailable", "; ".join(problems))
        live = self._session.established
        self._log.info(
            "MCP tools checked",
            tools=[self._names[tool] for tool in self._names if tool not in self._denied],
            server=live.server if live is not None else None,
        )
        return None


def _unanswered(reply: Reply) -> Outcome:
    """What a request that got no JSON-RPC response means."""
    if isinstance(reply, HttpFailure):
        return classify.http_status(reply.status, reply.body, reply.retry_after)
    if isinstance(reply, NoAnswer):
        if reply.code == "invalid_answer":
            return classify.invalid_answer(reply.detail)
        return transport_failure(reply.code, reply.detail)
    if isinstance(reply, Incompatible):
        return Misconfigured("incompatible_server", reply.detail)
    if isinstance(reply, Expired):
        return classify.SESSION_EXPIRED
    return classify.invalid_answer(f"unexpected reply {reply!r}")
