"""A local stand-in for an MCP gateway in front of the sandbox MCP server.

It does what the forwarder meets in a real gateway:

- a grant token per client (`Authorization: Bearer …`); a missing or unknown one is
  answered HTTP 401 before anything reaches the server;
- a policy file in the gateway's format, enforced on every `tools/call`: default
  deny or allow, tools denied outright, limits of N calls per calendar-aligned UTC
  second, minute, hour or day, counted per grant (`"scope": "grant"`) or for all,
  limits naming the same `counter` sharing one count, and a `track_auth` entry
  standing for both tools; a refused call is answered, as PolicyLayer-style gateways
  do, with HTTP 200 and an `isError` tool result whose text starts `[POLICY DENIED]`
  (`Rate limit exceeded: …` for a limit);
- sessions of its own: it hands out its own `Mcp-Session-Id` for each session of
  the server; `end_sessions` forgets them, and so does a restart, after which a
  client must initialize again (HTTP 404, or 400 with JSON-RPC -32000 if told so);
- optionally, denied tools hidden from `tools/list`;
- everything else proxied unchanged, event streams as they come.

It is written on Starlette and httpx (with httpx-sse to read a `tools/list` it
filters), and served in this process (`sandbox.asgi`).
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import httpx
import orjson
from httpx_sse import EventSource
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from forwarder.sandbox.asgi import AsgiServer

DENIED: Final = "[POLICY DENIED]"
SHARED_TOOL: Final = "track_auth"
WINDOWS: Final = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_FORWARDED_HEADERS: Final = ("accept", "content-type", "mcp-protocol-version", "last-event-id")
_RETURNED_HEADERS: Final = ("content-type", "cache-control")


class PolicyFileError(ValueError):
    """The gateway cannot use the policy document."""


class _Limit(NamedTuple):
    counter: str
    window: str
    max: int
    per_grant: bool


class _Rule(NamedTuple):
    allowed: bool
    reason: str
    limits: tuple[_Limit, ...]


@dataclass(frozen=True)
class GatewayPolicy:
    """The policy as the gateway enforces it."""

    default_allow: bool = True
    rules: Mapping[str, _Rule] = field(default_factory=dict)

    @classmethod
    def parse(cls, document: Any) -> GatewayPolicy:
        if not isinstance(document, dict) or str(document.get("version", "1")) != "1":
            raise PolicyFileError("a policy is a JSON object of version 1")
        default = document.get("default", "allow")
        if default not in ("allow", "deny"):
            raise PolicyFileError(f"default must be allow or deny, got {default!r}")
        tools = document.get("tools", {})
        if not isinstance(tools, dict):
            raise PolicyFileError("tools must be an object")
        return cls(default == "allow", {name: _rule(name, entry) for name, entry in tools.items()})

    @classmethod
    def load(cls, path: Path) -> GatewayPolicy:
        return cls.parse(orjson.loads(path.read_bytes()))

    def rule(self, tool: str) -> _Rule:
        """A tool's own entry; else the shared `track_auth` entry for the two tracking
        tools; else the default. The shared entry's limits apply to both tools too."""
        own = self.rules.get(tool)
        shared = self.rules.get(SHARED_TOOL) if tool.startswith("track_") else None
        if shared is not None and not shared.allowed:
            return shared
        extra = shared.limits if shared is not None and tool != SHARED_TOOL else ()
        if own is not None:
            return own._replace(limits=own.limits + extra)
        if shared is not None:
            return shared
        if self.default_allow:
            return _Rule(True, "", ())
        return _Rule(False, f"{tool} is not in the policy, whose default is deny", ())


def _rule(name: str, entry: Any) -> _Rule:
    if not isinstance(entry, dict):
        raise PolicyFileError(f"tools.{name} must be an object")
    if entry.get("action", "allow") == "deny":
        return _Rule(False, str(entry.get("reason") or f"{name} is denied by the policy"), ())
    limits = []
    for index, limit in enumerate(entry.get("limits", [])):
        window, count = limit.get("window"), limit.get("max")
        if window not in WINDOWS or not isinstance(count, int) or count < 1:
            raise PolicyFileError(f"tools.{name}.limits[{index}] needs a window and a max")
        counter = limit.get("counter") or f"{name}:{window}"
        limits.append(_Limit(counter, window, count, limit.get("scope") == "grant"))
    return _Rule(True, "", tuple(limits))


class Gateway:
    """The gateway on a loopback port, in front of the MCP server at `upstream`.

    `calls` counts the calls it let through per tool, `denials` those its policy
    refused (rate limits included) and `rate_limited` the rate-limit refusals alone;
    `sessions` is how many sessions it holds, `sessions_started` how many it opened,
    `unauthorized` how many requests it refused for their grant token.
    `statuses` are HTTP statuses to answer the next requests with, one each, before
    anything else is looked at (a 429 or 503 carries `Retry-After: retry_after`)."""

    def __init__(
        self,
        upstream: str,
        policy: GatewayPolicy | None = None,
        grant_tokens: frozenset[str] = frozenset({"grant-token"}),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/mcp/legiti/",
        hide_denied: bool = False,
        unknown_session_status: int = 404,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.upstream = upstream
        self.policy = policy or GatewayPolicy()
        self.grant_tokens = grant_tokens
        self.path = path
        self.hide_denied = hide_denied
        self.unknown_session_status = unknown_session_status
        self.statuses: collections.deque[int] = collections.deque()
        self.retry_after = "1"
        self.calls: collections.Counter[str] = collections.Counter()
        self.denials: collections.Counter[str] = collections.Counter()
        self.rate_limited: collections.Counter[str] = collections.Counter()
        self.unauthorized = 0
        self.sessions_started = 0
        self._clock = clock
        self._counts: dict[tuple[str, str, int], int] = {}
        self._sessions: dict[str, str] = {}
        self._client: httpx.AsyncClient | None = None
        self._server = AsgiServer(
            Starlette(routes=[Route(path, self._handle, methods=["GET", "POST", "DELETE"])]),
            host,
            port,
        )

    @property
    def url(self) -> str:
        host = f"[{self._server.host}]" if ":" in self._server.host else self._server.host
        return f"http://{host}:{self._server.port}{self.path}"

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def end_sessions(self) -> None:
        """Forget every session: the next request of each client is told it has none."""
        self._sessions.clear()

    async def start(self) -> None:
        self._sessions.clear()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(30.0))
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # Requests ------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        if self.statuses:
            status = self.statuses.popleft()
            headers = {"Retry-After": self.retry_after} if status in (429, 503) else {}
            return JSONResponse({"error": f"injected {status}"}, status, headers)
        scheme, _, grant = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or grant.strip() not in self.grant_tokens:
            self.unauthorized += 1
            return JSONResponse(
                {"error": "invalid_token"},
                401,
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        session = request.headers.get("mcp-session-id")
        upstream_session = None
        if session is not None:
            upstream_session = self._sessions.get(session)
            if upstream_session is None:
                return self._unknown_session()
        body = await request.body()
        message = _json(body) if request.method == "POST" else None
        method = message.get("method") if isinstance(message, dict) else None
        if method == "tools/call" and isinstance(message, dict):
            refusal = self._refusal(message, grant.strip())
            if refusal is not None:
                return refusal
        headers = {
            name: request.headers[name] for name in _FORWARDED_HEADERS if name in request.headers
        }
        if upstream_session is not None:
            headers["mcp-session-id"] = upstream_session
        assert self._client is not None
        upstream = self._client.build_request(
            request.method, self.upstream, content=body, headers=headers
        )
        try:
            response = await self._client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            return JSONResponse({"error": f"upstream: {exc!r}"}, 502)
        returned = {
            name: response.headers[name] for name in _RETURNED_HEADERS if name in response.headers
        }
        if "mcp-session-id" in response.headers:
            if session is None:
                session = uuid.uuid4().hex
                self._sessions[session] = response.headers["mcp-session-id"]
                self.sessions_started += 1
            returned["mcp-session-id"] = session
        if request.method == "DELETE" and session is not None and response.is_success:
            self._sessions.pop(session, None)
        if method == "tools/list" and self.hide_denied and response.status_code == 200:
            try:
                return await self._without_denied(response, returned)
            finally:
                await response.aclose()
        return StreamingResponse(
            response.aiter_raw(),
            response.status_code,
            returned,
            background=BackgroundTask(response.aclose),
        )

    def _unknown_session(self) -> Response:
        error = {"code": -32000, "message": "Session not found"}
        return JSONResponse(
            {"jsonrpc": "2.0", "id": None, "error": error}, self.unknown_session_status
        )

    def _refusal(self, message: dict[str, Any], grant: str) -> Response | None:
        params = message.get("params")
        tool = params.get("name") if isinstance(params, dict) else None
        if not isinstance(tool, str):
            return None
        text = self._decide(tool, grant, self._clock())
        if text is None:
            self.calls[tool] += 1
            return None
        self.denials[tool] += 1
        result = {"content": [{"type": "text", "text": text}], "isError": True}
        return JSONResponse({"jsonrpc": "2.0", "id": message.get("id"), "result": result})

    def _decide(self, tool: str, grant: str, now: float) -> str | None:
        """The denial text for this call, or None to let it through (and count it)."""
        rule = self.policy.rule(tool)
        if not rule.allowed:
            return f"{DENIED} {rule.reason}"
        keys = []
        for limit in rule.limits:
            key = (
                limit.counter,
                grant if limit.per_grant else "*",
                int(now // WINDOWS[limit.window]),
            )
            if self._counts.get(key, 0) >= limit.max:
                self.rate_limited[tool] += 1
                return (
                    f"{DENIED} Rate limit exceeded: {limit.max} calls per {limit.window} "
                    f"for {tool} (counter {limit.counter})"
                )
            keys.append(key)
        for key in keys:
            self._counts[key] = self._counts.get(key, 0) + 1
        return None

    async def _without_denied(self, response: httpx.Response, headers: dict[str, str]) -> Response:
        """A `tools/list` answer without the tools the policy denies, as one JSON object."""
        await response.aread()
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            messages = [
                _json(event.data.encode())
                async for event in EventSource(response).aiter_sse()
                if event.data
            ]
        else:
            messages = [_json(response.content)]
        answer = next((m for m in messages if isinstance(m, dict) and "result" in m), None)
        if answer is None:
            return Response(response.content, response.status_code, headers)
        tools = answer["result"].get("tools", [])
        answer["result"]["tools"] = [
            t for t in tools if self.policy.rule(t.get("name", "")).allowed
        ]
        headers["content-type"] = "application/json"
        return Response(orjson.dumps(answer), 200, headers)


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
