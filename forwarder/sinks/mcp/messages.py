"""The JSON-RPC messages the MCP sink sends, and how it reads the ones it gets back.

Pure: bytes in, plain values out. The bodies are written with orjson in one call;
the request id is the only part of a `tools/call` that the session, not the event,
decides.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import orjson

from forwarder import __version__
from forwarder.core.events import ActionType, AuthEvent

PROTOCOL_VERSIONS: Final = ("2025-11-25", "2025-06-18", "2025-03-26")
"""The MCP revisions this client speaks, newest first; it offers the first."""

CLIENT_INFO: Final = {"name": "legiti-forwarder", "version": __version__}

INITIALIZED: Final = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})


class ProtocolError(ValueError):
    """An answer that is not the JSON-RPC the protocol promises."""


class RpcError(NamedTuple):
    code: int
    message: str
    data: Any = None


class RpcResponse(NamedTuple):
    """The response to one request: exactly one of `result` and `error` is set."""

    result: dict[str, Any] | None
    error: RpcError | None


class ServerRequest(NamedTuple):
    """A request the server sent the client in the middle of its answer (a ping)."""

    id: int | str
    method: str


def request(request_id: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return orjson.dumps(message)


def initialize(request_id: int) -> bytes:
    return request(
        request_id,
        "initialize",
        {"protocolVersion": PROTOCOL_VERSIONS[0], "capabilities": {}, "clientInfo": CLIENT_INFO},
    )


def call_tool(request_id: int, tool: str, arguments: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
    )


def reply(request_id: int | str, result: dict[str, Any] | None, error: RpcError | None) -> bytes:
    """The client's answer to a `ServerRequest`: a result, or an error."""
    if error is not None:
        body = {"code": error.code, "message": error.message}
        return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": body})
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result or {}})


def tool_arguments(event: AuthEvent) -> dict[str, Any]:
    """The tool's arguments for an event: `account_id` is the user id exactly as given,
    `success` is set for logins only, and what the event did not say is left out."""
    arguments: dict[str, Any] = {"account_id": event.user_id}
    action = event.action
    if action is not ActionType.LOGOUT:
        arguments["success"] = action is ActionType.LOGIN_SUCCESS
    if event.ip is not None:
        arguments["ip"] = event.ip
    if event.user_agent is not None:
        arguments["user_agent"] = event.user_agent
    if event.timestamp is not None:
        arguments["timestamp"] = event.timestamp
    return arguments


def read(message: Any, request_id: int) -> RpcResponse | ServerRequest | None:
    """Interpret one JSON-RPC message that came back while waiting for `request_id`.

    Returns the response when this is it, a `ServerRequest` when the server asks
    something, and None for anything to pass over (a notification, a response to
    another request). A batch (a JSON array, allowed in 2025-03-26) is searched."""
    if isinstance(message, list):
        found: RpcResponse | ServerRequest | None = None
        for item in message:
            found = read(item, request_id)
            if isinstance(found, RpcResponse):
                return found
        return found
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise ProtocolError(f"not a JSON-RPC 2.0 message: {_excerpt(message)}")
    method = message.get("method")
    if isinstance(method, str):
        message_id = message.get("id")
        if isinstance(message_id, int | str) and not isinstance(message_id, bool):
            return ServerRequest(message_id, method)
        return None
    if message.get("id") != request_id:
        return None
    error = message.get("error")
    if error is not None:
        if not isinstance(error, dict) or not isinstance(error.get("code"), int):
            raise ProtocolError(f"a JSON-RPC error without a code: {_excerpt(error)}")
        return RpcResponse(
            None, RpcError(error["code"], str(error.get("message", "")), error.get("data"))
        )
    result = message.get("result")
    if not isinstance(result, dict):
        raise ProtocolError(
            f"a JSON-RPC response whose result is not an object: {_excerpt(message)}"
        )
    return RpcResponse(result, None)


def parse(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None


def _excerpt(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
