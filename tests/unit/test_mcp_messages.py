"""The JSON-RPC the MCP sink writes and how it reads what comes back."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.core.events import ActionType, AuthEvent
from forwarder.sinks.mcp import messages
from forwarder.sinks.mcp.messages import ProtocolError, RpcError, RpcResponse, ServerRequest


def test_initialize_offers_the_newest_revision() -> None:
    body = orjson.loads(messages.initialize(1))

    assert body["method"] == "initialize"
    assert body["id"] == 1
    assert body["params"]["protocolVersion"] == "2025-11-25"
    assert body["params"]["clientInfo"]["name"] == "legiti-forwarder"
    assert messages.PROTOCOL_VERSIONS == ("2025-11-25", "2025-06-18", "2025-03-26")


def test_initialized_is_a_notification() -> None:
    assert orjson.loads(messages.INITIALIZED) == {
        "jsonrpc": "2.0",
        "method": "notifications/initialized",
    }


def test_a_request_carries_params_only_when_there_are_some() -> None:
    assert orjson.loads(messages.request(3, "tools/list")) == {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/list",
    }
    assert orjson.loads(messages.request(4, "tools/list", {"cursor": "p2"}))["params"] == {
        "cursor": "p2"
    }


def test_a_tool_call() -> None:
    body = orjson.loads(messages.call_tool(9, "track_login", {"account_id": "u"}))

    assert body == {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {"name": "track_login", "arguments": {"account_id": "u"}},
    }


@pytest.mark.parametrize(
    ("action", "success"),
    [(ActionType.LOGIN_SUCCESS, True), (ActionType.LOGIN_FAILURE, False)],
)
def test_login_arguments(action: ActionType, success: bool) -> None:
    event = AuthEvent("k", "ユーザー 1", action, "203.0.113.7", "curl/8", 1795176000.5)

    assert messages.tool_arguments(event) == {
        "account_id": "ユーザー 1",
        "success": success,
        "ip": "203.0.113.7",
        "user_agent": "curl/8",
        "timestamp": 1795176000.5,
    }


def test_logout_arguments_have_no_success_and_leave_out_what_the_event_did_not_say() -> None:
    event = AuthEvent("k", "u-1", ActionType.LOGOUT, None, "curl/8", None)

    assert messages.tool_arguments(event) == {"account_id": "u-1", "user_agent": "curl/8"}


def test_a_result_is_read() -> None:
    message = {"jsonrpc": "2.0", "id": 5, "result": {"content": []}}

    assert messages.read(message, 5) == RpcResponse({"content": []}, None)


def test_an_error_is_read() -> None:
    message = {"jsonrpc": "2.0", "id": 5, "error": {"code": -32602, "message": "bad", "data": 1}}

    assert messages.read(message, 5) == RpcResponse(None, RpcError(-32602, "bad", 1))


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}},
        {"jsonrpc": "2.0", "id": 6, "result": {}},  # another request's response
    ],
)
def test_what_is_not_the_answer_is_passed_over(message: dict[str, Any]) -> None:
    assert messages.read(message, 5) is None


def test_a_request_from_the_server_is_recognised() -> None:
    message = {"jsonrpc": "2.0", "id": "s-1", "method": "ping"}

    assert messages.read(message, 5) == ServerRequest("s-1", "ping")


def test_a_batch_is_searched_for_the_response() -> None:
    batch = [
        {"jsonrpc": "2.0", "method": "notifications/message", "params": {}},
        {"jsonrpc": "2.0", "id": 5, "result": {"ok": 1}},
    ]

    assert messages.read(batch, 5) == RpcResponse({"ok": 1}, None)


@pytest.mark.parametrize(
    "message",
    [
        {"id": 5, "result": {}},
        {"jsonrpc": "1.0", "id": 5, "result": {}},
        {"jsonrpc": "2.0", "id": 5, "result": "done"},
        {"jsonrpc": "2.0", "id": 5, "error": {"message": "no code"}},
        "text",
        7,
    ],
)
def test_what_is_not_json_rpc_is_a_protocol_error(message: Any) -> None:
    with pytest.raises(ProtocolError):
        messages.read(message, 5)


def test_parse_refuses_what_is_not_json() -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        messages.parse(b"<html>")


def test_replies_to_the_server() -> None:
    assert orjson.loads(messages.reply("s-1", {}, None)) == {
        "jsonrpc": "2.0",
        "id": "s-1",
        "result": {},
    }
    assert orjson.loads(messages.reply(4, None, RpcError(-32601, "no"))) == {
        "jsonrpc": "2.0",
        "id": 4,
        "error": {"code": -32601, "message": "no"},
    }


@given(
    user_id=st.text(min_size=1),
    action=st.sampled_from(ActionType),
    ip=st.none() | st.text(),
    user_agent=st.none() | st.text(),
    timestamp=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
def test_arguments_round_trip_through_json(
    user_id: str,
    action: ActionType,
    ip: str | None,
    user_agent: str | None,
    timestamp: float | None,
) -> None:
    """Whatever the event holds, the body is valid JSON and says exactly that."""
    event = AuthEvent("k", user_id, action, ip, user_agent, timestamp)

    sent = orjson.loads(messages.call_tool(1, action.tool, messages.tool_arguments(event)))
    arguments = sent["params"]["arguments"]

    assert arguments["account_id"] == user_id
    assert arguments.get("success") == (
        None if action is ActionType.LOGOUT else action is ActionType.LOGIN_SUCCESS
    )
    assert (arguments.get("ip"), arguments.get("user_agent"), arguments.get("timestamp")) == (
        ip,
        user_agent,
        timestamp,
    )
