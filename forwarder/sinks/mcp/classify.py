"""What each answer of an MCP server, or of the gateway in front of it, means.

Each line: the answer → the code (the `forwarder_sink_requests_total{code}` label)
→ the `Outcome` (see `sinks.outcome`). docs/mcp.md has the same table for operators.

Tool results (`tools/call` answered):
- no `isError` → `ok` → Delivered.
- `Error: Legiti API <status>: <body>` → `tool_error_<status>` → judged as the REST
  sink judges `<status>`: 4xx Rejected (dead letter with the text), 401/403
  Unauthorized (Legiti's key, held upstream), 404/405/3xx Misconfigured (the MCP
  server's own Legiti URL is wrong), 429 and 5xx Retry.
- a network failure upstream (`Error: fetch failed`, ECONNREFUSED, …) →
  `tool_error_network` → Retry, an outage.
- `[POLICY DENIED]` / `[INTERCEPT POLICY DENIED]` with `Rate limit exceeded …` →
  `rate_limited` → Retry, throttled, when the gateway's calendar-aligned UTC
  window ends; any other denial → `policy_denied` → Denied.
- the tool is unknown → `tool_unknown` → Misconfigured.
- the arguments were refused (a validation error) → `tool_invalid_arguments` → Rejected.
- any other error → `tool_error` → Retry: not understood, so not a verdict on the event.

JSON-RPC errors: -32602 → `rpc_invalid_params` → Rejected (`tool_unknown`,
Misconfigured, when it says the tool is not found); -32601, -32600, -32700 →
`rpc_method_not_found`, `rpc_invalid_request`, `rpc_parse_error` → Misconfigured;
-32603 → `rpc_internal_error`, any other → `rpc_error` → Retry, an outage.

HTTP answers without a usable JSON-RPC response → `http_<status>`: 401/403
Unauthorized (the grant token); 429 Retry, throttled, with Retry-After; 408/425
Retry; 5xx Retry, an outage; 413 Rejected; 3xx, 404 and other 4xx Misconfigured (no
MCP endpoint at the URL, or the protocol refused); anything else Retry.

The session: a session that ended, renewed, and ended again at once →
`session_expired` → Retry. An answer that is not the protocol's → `invalid_answer`
→ Retry, an outage. No answer: `timeout`, `error` → Retry, an outage.

Pure: the wall clock comes in as `now` (Unix seconds), windows as seconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from forwarder.core.retry import MAX_RETRY_AFTER
from forwarder.limits.rate import WINDOWS
from forwarder.sinks.legiti import classify as legiti
from forwarder.sinks.mcp.messages import RpcError
from forwarder.sinks.outcome import (
    Delivered,
    Denied,
    Misconfigured,
    Outcome,
    Rejected,
    Retry,
    Unauthorized,
)

OK: Final = Delivered("ok")
SESSION_EXPIRED: Final = Retry(
    "session_expired", "the MCP session ended, and the new one at once too"
)

POLICY_PREFIXES: Final = ("[POLICY DENIED]", "[INTERCEPT POLICY DENIED]")
DEFAULT_WINDOW: Final = WINDOWS["minute"]
WINDOW_MARGIN: Final = 0.5
"""Seconds past the window's end before trying again: the gateway's clock may lag ours."""

_LEGITI_ERROR = re.compile(r"Error: Legiti API (\d{3})\b:?\s*(.*)", re.DOTALL)
_RATE_LIMIT = re.compile(r"rate[ -]?limit", re.IGNORECASE)
_WINDOW_WORDS = re.compile(
    r"\b(?:(second|minute|hour|day)s?|(secondly|minutely|hourly|daily))\b", re.IGNORECASE
)
_NETWORK = re.compile(
    r"fetch failed|network|socket hang up|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|"
    r"EAI_AGAIN|connection (?:refused|reset|error)|timed out|timeout",
    re.IGNORECASE,
)
_UNKNOWN_TOOL = re.compile(r"unknown tool|tool\b.{0,80}\bnot found|no such tool", re.IGNORECASE)
_INVALID_ARGUMENTS = re.compile(
    r"validation error|invalid (?:arguments|params|input)|input validation", re.IGNORECASE
)
_WORD_WINDOWS: Final = {
    "second": "second",
    "secondly": "second",
    "minute": "minute",
    "minutely": "minute",
    "hour": "hour",
    "hourly": "hour",
    "day": "day",
    "daily": "day",
}
_MISCONFIGURED_RPC: Final = {
    -32601: "rpc_method_not_found",
    -32600: "rpc_invalid_request",
    -32700: "rpc_parse_error",
}


def tool_result(
    result: Mapping[str, Any], tool: str, now: float, windows: Sequence[float] = ()
) -> Outcome:
    """A `tools/call` result. `windows` are the policy's limit windows for this tool, the
    fallback when a rate-limit denial does not name its window."""
    if result.get("isError") is not True:
        return OK
    text = result_text(result)
    stripped = text.lstrip()
    if stripped.startswith(POLICY_PREFIXES):
        if _RATE_LIMIT.search(stripped):
            wait = until_window_ends(stripped, now, windows)
            return Retry(
                "rate_limited",
                f"the gateway's rate limit for {tool}: {text}",
                retry_after=wait,
                throttled=True,
            )
        return Denied("policy_denied", f"the gateway's policy denies {tool}: {text}")
    legiti_error = _LEGITI_ERROR.search(stripped)
    if legiti_error is not None:
        return _legiti(int(legiti_error[1]), legiti_error[2], tool, text)
    if _UNKNOWN_TOOL.search(stripped):
        return Misconfigured("tool_unknown", f"the MCP server does not know {tool}: {text}")
    if _INVALID_ARGUMENTS.search(stripped):
        return Rejected(
            "tool_invalid_arguments",
            f"{tool} refused the event's arguments: {text}",
            text.encode(),
        )
    if _NETWORK.search(stripped):
        return Retry("tool_error_network", f"{tool} could not reach Legiti: {text}", outage=True)
    return Retry("tool_error", f"{tool} failed: {text}")


def _legiti(status: int, body: str, tool: str, text: str) -> Outcome:
    """Legiti's own answer, relayed by the tool: judged as the REST sink judges it."""
    code = f"tool_error_{status}"
    verdict = legiti.classify(status, body.encode(), None)
    if isinstance(verdict, Delivered):
        return Delivered(code)
    if isinstance(verdict, Unauthorized):
        return Unauthorized(code, f"Legiti refused the API key the MCP server holds: {text}")
    if isinstance(verdict, Retry):
        return Retry(code, f"{tool}: {text}", throttled=verdict.throttled, outage=verdict.outage)
    if isinstance(verdict, Misconfigured):
        return Misconfigured(
            code, f"{tool}: the MCP server calls Legiti at the wrong place ({text})"
        )
    return Rejected(code, f"{tool}: {text}", body.encode(), status)


def rpc_error(error: RpcError, tool: str) -> Outcome:
    detail = f"JSON-RPC error {error.code} calling {tool}: {error.message}"
    if error.code == -32602:
        if _UNKNOWN_TOOL.search(error.message):
            return Misconfigured("tool_unknown", detail)
        return Rejected("rpc_invalid_params", detail, error.message.encode())
    misconfigured = _MISCONFIGURED_RPC.get(error.code)
    if misconfigured is not None:
        return Misconfigured(misconfigured, detail)
    if error.code == -32603:
        return Retry("rpc_internal_error", detail, outage=True)
    return Retry("rpc_error", detail, outage=True)


def http_status(status: int, body: bytes, retry_after: float | None) -> Outcome:
    """An HTTP answer that carries no JSON-RPC response the session could use."""
    code = f"http_{status}"
    detail = f"HTTP {status} from the MCP endpoint{_said(body)}"
    if status in (401, 403):
        return Unauthorized(code, f"the MCP endpoint refused the grant token (HTTP {status})")
    if status == 429:
        return Retry(code, detail, retry_after=retry_after, throttled=True)
    if status in (408, 425):
        return Retry(code, detail, retry_after=retry_after)
    if status >= 500:
        return Retry(code, detail, retry_after=retry_after, outage=True)
    if status == 413:
        return Rejected(code, detail, body, status)
    if 300 <= status < 500:
        return Misconfigured(
            code, f"{detail}: is FORWARDER_MCP_URL the MCP endpoint (the gateway's server URL)?"
        )
    return Retry(code, detail, retry_after=retry_after)


def invalid_answer(detail: str) -> Retry:
    return Retry("invalid_answer", f"the MCP endpoint's answer is not MCP: {detail}", outage=True)


def until_window_ends(text: str, now: float, windows: Sequence[float] = ()) -> float:
    """Seconds until the gateway's current window ends, windows being calendar-aligned in
    UTC (a minute ends at :00 seconds, a day at midnight UTC).

    The window is the one the text names ("per hour", "daily"); else the shortest of
    the policy's windows for the tool (a retry that comes too early is only denied
    again); else a minute. Capped like a Retry-After."""
    named = _WINDOW_WORDS.search(text)
    if named is not None:
        window = WINDOWS[_WORD_WINDOWS[(named[1] or named[2]).lower()]]
    elif windows:
        window = min(windows)
    else:
        window = DEFAULT_WINDOW
    return min(window - now % window + WINDOW_MARGIN, MAX_RETRY_AFTER)


def result_text(result: Mapping[str, Any]) -> str:
    """The text blocks of a tool result, joined; what a person or a model would read."""
    content = result.get("content")
    if not isinstance(content, list):
        return ""
    return "\n".join(
        block["text"]
        for block in content
        if isinstance(block, dict) and isinstance(block.get("text"), str)
    )


def _said(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return ""
    return f": {text[:limit]}{'…' if len(text) > limit else ''}"
