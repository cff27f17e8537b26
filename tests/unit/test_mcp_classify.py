"""Every row of the MCP failure table: what each answer of the server or the gateway means."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.core.retry import MAX_RETRY_AFTER
from forwarder.sinks.legiti.classify import classify as legiti_classify
from forwarder.sinks.mcp import classify
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

NOW = 1795176000.0 + 12 * 3600 + 15 * 60 + 20.25  # 2026-11-20T12:15:20.25Z
TOOL = "track_login"


def result(text: str, *, is_error: bool = True, **extra: Any) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": is_error, **extra}


def judge(text: str, windows: tuple[float, ...] = ()) -> Outcome:
    return classify.tool_result(result(text), TOOL, NOW, windows)


# Tool results ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        result('{"message":"auth tracked"}', is_error=False),
        {"content": [{"type": "text", "text": "{}"}]},
        {"content": []},
        {"content": [], "isError": "true"},  # only the boolean true is an error
        {"content": [{"type": "text", "text": "x"}], "structuredContent": {"ok": True}},
    ],
)
def test_a_result_without_is_error_is_delivered(answer: dict[str, Any]) -> None:
    assert classify.tool_result(answer, TOOL, NOW) == Delivered("ok")


@pytest.mark.parametrize("status", [400, 409, 413, 422, 418])
def test_legiti_4xx_is_a_rejection_carrying_the_text(status: int) -> None:
    outcome = judge(f'Error: Legiti API {status}: {{"error_message": {{"user_id": ["bad"]}}}}')

    assert isinstance(outcome, Rejected)
    assert outcome.code == f"tool_error_{status}"
    assert outcome.status == status
    assert outcome.body == b'{"error_message": {"user_id": ["bad"]}}'
    assert f"Legiti API {status}" in outcome.detail


@pytest.mark.parametrize("status", [404, 405, 301])
def test_legiti_at_the_wrong_place_is_the_servers_misconfiguration(status: int) -> None:
    outcome = judge(f"Error: Legiti API {status}: Not Found")

    assert isinstance(outcome, Misconfigured)
    assert outcome.code == f"tool_error_{status}"
    assert "MCP server calls Legiti at the wrong place" in outcome.detail


@pytest.mark.parametrize("status", [401, 403])
def test_legiti_refusing_its_key_is_a_credentials_halt(status: int) -> None:
    outcome = judge(f'Error: Legiti API {status}: {{"message":"invalid credentials"}}')

    assert outcome == Unauthorized(f"tool_error_{status}", outcome.detail)
    assert isinstance(outcome, Unauthorized)
    assert "key the MCP server holds" in outcome.detail


@pytest.mark.parametrize(
    ("status", "throttled", "outage"),
    [(429, True, False), (500, False, True), (502, False, True), (503, False, True),
     (504, False, True), (408, False, False), (425, False, False)],
)  # fmt: skip
def test_legiti_429_and_5xx_are_retried(status: int, throttled: bool, outage: bool) -> None:
    outcome = judge(f"Error: Legiti API {status}: busy")

    assert isinstance(outcome, Retry)
    assert (outcome.code, outcome.throttled, outcome.outage) == (
        f"tool_error_{status}",
        throttled,
        outage,
    )
    assert outcome.retry_after is None


@pytest.mark.parametrize("status", range(100, 600, 7))
def test_legiti_statuses_are_judged_as_the_rest_sink_judges_them(status: int) -> None:
    mcp = judge(f"Error: Legiti API {status}: body")
    rest = legiti_classify(status, b"body", None)

    assert type(mcp) is type(rest)
    assert mcp.code == f"tool_error_{status}"


@pytest.mark.parametrize(
    "text",
    [
        "Error: fetch failed",
        "Error: connect ECONNREFUSED 10.0.0.5:443",
        "Error: read ECONNRESET",
        "Error: getaddrinfo ENOTFOUND api.legiti.com",
        "Error: The operation was aborted due to timeout",
        "Error: socket hang up",
    ],
)
def test_network_failures_upstream_are_outages(text: str) -> None:
    outcome = judge(text)

    assert isinstance(outcome, Retry)
    assert (outcome.code, outcome.outage, outcome.throttled) == ("tool_error_network", True, False)
    assert text in outcome.detail


@pytest.mark.parametrize("prefix", ["[POLICY DENIED]", "[INTERCEPT POLICY DENIED]"])
def test_a_policy_denial_is_denied(prefix: str) -> None:
    outcome = judge(f"{prefix} track_login is not allowed for this grant")

    assert isinstance(outcome, Denied)
    assert outcome.code == "policy_denied"
    assert "not allowed for this grant" in outcome.detail


@pytest.mark.parametrize(
    ("text", "seconds_left"),
    [
        # 12:15:20.25: 39.75 s to the minute, 44:39.75 to the hour, 11:44:39.75 to midnight.
        ("[POLICY DENIED] Rate limit exceeded: 30 calls per minute", 39.75),
        ("[POLICY DENIED] Rate limit exceeded: 1000 calls per hour (track_login_rate)", 2679.75),
        ("[INTERCEPT POLICY DENIED] Hourly rate limit of 5 reached", 2679.75),
        ("[POLICY DENIED] rate limit exceeded: 2 per second", 0.75),
    ],
)
def test_a_rate_limit_denial_waits_for_the_window_named(text: str, seconds_left: float) -> None:
    outcome = judge(text)

    assert isinstance(outcome, Retry)
    assert (outcome.code, outcome.throttled, outcome.outage) == ("rate_limited", True, False)
    assert outcome.retry_after == seconds_left + classify.WINDOW_MARGIN


def test_a_daily_rate_limit_waits_at_most_as_long_as_any_retry_after() -> None:
    outcome = judge("[POLICY DENIED] Rate limit exceeded: 10 calls per day")

    assert isinstance(outcome, Retry)
    assert outcome.retry_after == MAX_RETRY_AFTER


def test_a_rate_limit_denial_without_a_window_takes_the_policys_shortest() -> None:
    text = "[POLICY DENIED] Rate limit exceeded (track_login_rate)"

    with_policy = judge(text, windows=(3600.0, 60.0))
    without = judge(text)

    assert isinstance(with_policy, Retry)
    assert isinstance(without, Retry)
    assert with_policy.retry_after == 39.75 + classify.WINDOW_MARGIN
    assert without.retry_after == 39.75 + classify.WINDOW_MARGIN
    hourly = judge(text, windows=(3600.0,))
    assert isinstance(hourly, Retry)
    assert hourly.retry_after == 2679.75 + classify.WINDOW_MARGIN


@given(now=st.floats(min_value=0, max_value=4e9), window=st.sampled_from([1.0, 60.0, 3600.0]))
def test_the_wait_always_ends_just_after_a_window_boundary(now: float, window: float) -> None:
    wait = classify.until_window_ends("rate limit", now, (window,))

    assert 0 < wait <= min(window + classify.WINDOW_MARGIN, MAX_RETRY_AFTER)
    if wait < MAX_RETRY_AFTER:
        boundary = now + wait - classify.WINDOW_MARGIN
        assert abs(boundary / window - round(boundary / window)) < 1e-6


@pytest.mark.parametrize(
    "text",
    [
        "Unknown tool: track_login",
        "Tool track_login not found",
        "MCP error -32602: Tool x not found",
    ],
)
def test_an_unknown_tool_is_a_configuration_error(text: str) -> None:
    outcome = judge(text)

    assert isinstance(outcome, Misconfigured)
    assert outcome.code == "tool_unknown"


@pytest.mark.parametrize(
    "text",
    [
        "Error executing tool track_login: 1 validation error for track_loginArguments\n"
        "account_id\n  Input should be a valid string",
        "MCP error -32602: Input validation error: Invalid arguments for tool track_login",
    ],
)
def test_refused_arguments_are_a_rejection(text: str) -> None:
    outcome = judge(text)

    assert isinstance(outcome, Rejected)
    assert outcome.code == "tool_invalid_arguments"
    assert outcome.body == text.encode()
    assert outcome.status is None


def test_any_other_tool_error_is_retried_without_counting_as_an_outage() -> None:
    outcome = judge("Error executing tool track_login")

    assert isinstance(outcome, Retry)
    assert (outcome.code, outcome.outage, outcome.throttled) == ("tool_error", False, False)


def test_the_text_is_every_text_block_joined() -> None:
    answer = {
        "isError": True,
        "content": [
            {"type": "text", "text": "Error: Legiti API 400:"},
            {"type": "image", "data": "…"},
            {"type": "text", "text": "bad user"},
        ],
    }

    outcome = classify.tool_result(answer, TOOL, NOW)

    assert isinstance(outcome, Rejected)
    assert classify.result_text(answer) == "Error: Legiti API 400:\nbad user"


# JSON-RPC errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (RpcError(-32602, "Invalid params: account_id"), Rejected, "rpc_invalid_params"),
        (RpcError(-32602, "Tool track_login not found"), Misconfigured, "tool_unknown"),
        (RpcError(-32601, "Method not found"), Misconfigured, "rpc_method_not_found"),
        (RpcError(-32600, "Invalid Request"), Misconfigured, "rpc_invalid_request"),
        (RpcError(-32700, "Parse error"), Misconfigured, "rpc_parse_error"),
        (RpcError(-32603, "Internal error"), Retry, "rpc_internal_error"),
        (RpcError(-32001, "Request timed out"), Retry, "rpc_error"),
        (RpcError(7, "custom"), Retry, "rpc_error"),
    ],
)
def test_json_rpc_errors(error: RpcError, kind: type, code: str) -> None:
    outcome = classify.rpc_error(error, TOOL)

    assert isinstance(outcome, kind)
    assert outcome.code == code
    assert str(error.code) in outcome.detail
    if isinstance(outcome, Retry):
        assert outcome.outage


def test_invalid_params_dead_letter_carries_the_message() -> None:
    outcome = classify.rpc_error(RpcError(-32602, "account_id: required"), TOOL)

    assert outcome == Rejected(
        "rpc_invalid_params",
        "JSON-RPC error -32602 calling track_login: account_id: required",
        b"account_id: required",
    )


# HTTP answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_http_401_and_403_halt_on_the_grant_token(status: int) -> None:
    outcome = classify.http_status(status, b'{"error":"invalid_token"}', None)

    assert isinstance(outcome, Unauthorized)
    assert outcome.code == f"http_{status}"
    assert "grant token" in outcome.detail


def test_http_429_is_throttled_and_keeps_retry_after() -> None:
    assert classify.http_status(429, b"slow down", 12.0) == Retry(
        "http_429", "HTTP 429 from the MCP endpoint: slow down", retry_after=12.0, throttled=True
    )


@pytest.mark.parametrize(
    ("status", "outage"),
    [(500, True), (502, True), (503, True), (599, True), (408, False), (425, False)],
)
def test_http_5xx_408_425_are_retried(status: int, outage: bool) -> None:
    outcome = classify.http_status(status, b"", 3.0)

    assert isinstance(outcome, Retry)
    assert (outcome.code, outcome.outage, outcome.retry_after) == (f"http_{status}", outage, 3.0)
    assert not outcome.throttled


@pytest.mark.parametrize("status", [301, 307, 308, 400, 404, 405, 406, 415, 422])
def test_http_3xx_and_4xx_point_at_the_configuration(status: int) -> None:
    outcome = classify.http_status(status, b"Not Found", None)

    assert isinstance(outcome, Misconfigured)
    assert outcome.code == f"http_{status}"
    assert "FORWARDER_MCP_URL" in outcome.detail


def test_http_413_rejects_the_event() -> None:
    outcome = classify.http_status(413, b"too large", None)

    assert outcome == Rejected(
        "http_413", "HTTP 413 from the MCP endpoint: too large", b"too large", 413
    )


@pytest.mark.parametrize("status", [100, 201, 204, 299])
def test_other_http_statuses_are_retried(status: int) -> None:
    outcome = classify.http_status(status, b"", None)

    assert isinstance(outcome, Retry)
    assert outcome.code == f"http_{status}"


def test_a_long_body_is_cut_in_the_detail() -> None:
    outcome = classify.http_status(502, b"x" * 5000, None)

    assert isinstance(outcome, Retry)
    assert len(outcome.detail) < 400


# The session and the answer itself ------------------------------------------------------------


def test_a_session_that_ends_again_at_once_is_retried() -> None:
    assert classify.SESSION_EXPIRED.code == "session_expired"
    assert not classify.SESSION_EXPIRED.outage


def test_an_answer_that_is_not_mcp_is_an_outage() -> None:
    outcome = classify.invalid_answer("not JSON")

    assert (outcome.code, outcome.outage) == ("invalid_answer", True)
    assert "not JSON" in outcome.detail
