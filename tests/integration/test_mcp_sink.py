"""The MCP sink against real servers: the official SDK's MCP server (`sandbox.mcp_server`)
over the sandbox Legiti, behind the gateway stand-in (`sandbox.gateway`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forwarder.core.events import TRACK_LOGIN, TRACK_LOGOUT, ActionType, AuthEvent
from forwarder.sandbox.gateway import Gateway, GatewayPolicy
from forwarder.sandbox.legiti import LegitiStub
from forwarder.sandbox.mcp_server import McpServerStub
from forwarder.sinks.base import SinkMisconfigured
from forwarder.sinks.credentials import TokenSource
from forwarder.sinks.mcp.client import McpSink
from forwarder.sinks.outcome import (
    Delivered,
    Denied,
    Misconfigured,
    Rejected,
    Retry,
    Unauthorized,
)
from tests.conftest import eventually

GRANT = "grant-token"
LOGIN = AuthEvent("e-1", "user-1", ActionType.LOGIN_FAILURE, "203.0.113.7", "curl/8", 1795176000.5)
LOGOUT = AuthEvent("e-2", "user-1", ActionType.LOGOUT)
DENY_LOGOUT = {
    "version": "1",
    "default": "deny",
    "tools": {"track_login": {}, "track_logout": {"action": "deny", "reason": "not used"}},
}
# 2026-11-20T12:00:30Z: half a minute into a UTC minute.
NOON_AND_A_HALF_MINUTE = 1795176000.0 + 12 * 3600 + 30


@pytest.fixture
async def legiti() -> AsyncIterator[LegitiStub]:
    async with LegitiStub() as stub:
        yield stub


@pytest.fixture(params=["sse", "json"])
async def server(
    request: pytest.FixtureRequest, legiti: LegitiStub
) -> AsyncIterator[McpServerStub]:
    async with McpServerStub(legiti.url, json_response=request.param == "json") as running:
        yield running


@pytest.fixture
async def gateway(server: McpServerStub) -> AsyncIterator[Gateway]:
    async with Gateway(server.url) as running:
        yield running


def sink(url: str, token: TokenSource | None = None, **options: object) -> McpSink:
    if token is None:
        token = TokenSource(token=GRANT)
    return McpSink(url, token, timeout=5.0, max_connections=64, **options)  # type: ignore[arg-type]


async def opened(url: str, token: TokenSource | None = None, **options: object) -> McpSink:
    mcp = sink(url, token, **options)
    await mcp.open()
    return mcp


def event(number: int, action: ActionType = ActionType.LOGIN_SUCCESS) -> AuthEvent:
    return AuthEvent(f"e-{number}", f"user-{number}", action)


# Both answer forms, and what reaches Legiti ------------------------------------------------


async def test_events_reach_legiti_through_the_gateway(
    legiti: LegitiStub, server: McpServerStub, gateway: Gateway
) -> None:
    mcp = await opened(gateway.url)
    try:
        outcomes = [await mcp.send(LOGIN), await mcp.send(LOGOUT)]
    finally:
        await mcp.aclose()

    assert outcomes == [Delivered("ok"), Delivered("ok")]
    login, logout = legiti.accepted
    assert (login.path, login.user_id, login.action_type) == ("/auth", "user-1", "login_failure")
    assert (login.ip, login.event_user_agent, login.timestamp) == (
        "203.0.113.7",
        "curl/8",
        1795176000.5,
    )
    assert (logout.action_type, logout.ip, logout.event_user_agent, logout.timestamp) == (
        "logout",
        None,
        None,
        None,
    )
    assert server.calls == {TRACK_LOGIN: 1, TRACK_LOGOUT: 1}
    assert gateway.calls == {TRACK_LOGIN: 1, TRACK_LOGOUT: 1}


async def test_the_sink_speaks_to_a_server_without_a_gateway(
    legiti: LegitiStub, server: McpServerStub
) -> None:
    mcp = await opened(server.url, token=None)
    mcp_without_token = McpSink(server.url, None, timeout=5.0, max_connections=4)
    await mcp_without_token.open()
    try:
        assert await mcp_without_token.send(LOGIN) == Delivered("ok")
    finally:
        await mcp.aclose()
        await mcp_without_token.aclose()
    assert [r.user_id for r in legiti.accepted] == ["user-1"]


async def test_many_calls_in_flight_on_one_session(
    legiti: LegitiStub, server: McpServerStub, gateway: Gateway
) -> None:
    legiti.faults.latency = 0.3  # long enough for every call to be under way at once
    mcp = await opened(gateway.url)
    try:
        outcomes = await asyncio.gather(*(mcp.send(event(n)) for n in range(40)))
    finally:
        await mcp.aclose()

    assert set(outcomes) == {Delivered("ok")}
    assert sorted(r.user_id or "" for r in legiti.accepted) == sorted(
        f"user-{n}" for n in range(40)
    )
    assert gateway.sessions_started == 1
    assert server.most_in_flight >= 20


async def test_close_ends_the_session(server: McpServerStub, gateway: Gateway) -> None:
    mcp = await opened(gateway.url)
    assert gateway.sessions == 1

    await mcp.aclose()

    assert gateway.sessions == 0


# Sessions that end -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 400])
async def test_a_session_ended_mid_stream_is_renewed_without_losing_a_call(
    legiti: LegitiStub, server: McpServerStub, status: int
) -> None:
    async with Gateway(server.url, unknown_session_status=status) as gateway:
        mcp = await opened(gateway.url)
        try:
            first = await asyncio.gather(*(mcp.send(event(n)) for n in range(20)))
            gateway.end_sessions()
            second = await asyncio.gather(*(mcp.send(event(n)) for n in range(20, 40)))
        finally:
            await mcp.aclose()

        assert set(first) | set(second) == {Delivered("ok")}
        assert gateway.sessions_started == 2  # the twenty calls shared one new session
    assert len(legiti.accepted) == 40


async def test_a_server_restart_behind_the_gateway_is_a_new_session(
    legiti: LegitiStub, server: McpServerStub, gateway: Gateway
) -> None:
    mcp = await opened(gateway.url)
    try:
        assert await mcp.send(event(1)) == Delivered("ok")
        await server.restart()
        assert await mcp.send(event(2)) == Delivered("ok")
    finally:
        await mcp.aclose()
    assert [r.user_id for r in legiti.accepted] == ["user-1", "user-2"]


async def test_a_gateway_restart(
    legiti: LegitiStub, server: McpServerStub, gateway: Gateway
) -> None:
    mcp = await opened(gateway.url)
    try:
        assert await mcp.send(event(1)) == Delivered("ok")
        await gateway.stop()
        down = await mcp.send(event(2))
        await gateway.start()
        back = await mcp.send(event(2))
    finally:
        await mcp.aclose()

    assert isinstance(down, Retry)
    assert (down.code, down.outage) == ("error", True)
    assert back == Delivered("ok")
    assert gateway.sessions_started == 2  # the new gateway knew nothing of the old session
    assert [r.user_id for r in legiti.accepted] == ["user-1", "user-2"]


# What the gateway and the server offer ------------------------------------------------------


async def test_a_tool_missing_from_tools_list_is_a_configuration_error(
    server: McpServerStub,
) -> None:
    policy = GatewayPolicy.parse(DENY_LOGOUT)
    async with Gateway(server.url, policy, hide_denied=True) as gateway:
        with pytest.raises(SinkMisconfigured, match="FORWARDER_MCP_LOGOUT_TOOL") as raised:
            await opened(gateway.url)
        assert "'track_logout'" in str(raised.value)
        assert "offers: track_login" in str(raised.value)

        # With the policy file denying it too, the forwarder never calls it: fine.
        mcp = await opened(gateway.url, denied={TRACK_LOGOUT})
        try:
            assert await mcp.send(LOGIN) == Delivered("ok")
        finally:
            await mcp.aclose()


async def test_a_tool_name_the_server_does_not_know(
    server: McpServerStub, gateway: Gateway
) -> None:
    with pytest.raises(SinkMisconfigured, match=r"'legiti__track_login'.*FORWARDER_MCP_LOGIN_TOOL"):
        await opened(gateway.url, login_tool="legiti__track_login")


@pytest.mark.parametrize("suffix", ["", "nowhere/"])
async def test_a_url_that_is_not_the_endpoint_is_a_configuration_error(
    gateway: Gateway, suffix: str
) -> None:
    url = gateway.url.rstrip("/") + ("/" + suffix if suffix else "")  # 307 to add the slash; 404

    with pytest.raises(SinkMisconfigured, match="FORWARDER_MCP_URL"):
        await opened(url)


async def test_a_policy_that_denies_track_logout_while_the_forwarder_has_none(
    legiti: LegitiStub, server: McpServerStub
) -> None:
    async with Gateway(server.url, GatewayPolicy.parse(DENY_LOGOUT)) as gateway:
        mcp = await opened(gateway.url)
        try:
            logout = await mcp.send(LOGOUT)
            login = await mcp.send(LOGIN)
        finally:
            await mcp.aclose()

        assert isinstance(logout, Denied)
        assert logout.code == "policy_denied"
        assert "not used" in logout.detail
        assert login == Delivered("ok")
        assert gateway.denials == {TRACK_LOGOUT: 1}
    assert [r.action_type for r in legiti.accepted] == ["login_failure"]


async def test_a_rate_limit_denial_waits_for_the_gateways_window(
    legiti: LegitiStub, server: McpServerStub
) -> None:
    now = [NOON_AND_A_HALF_MINUTE]
    policy = GatewayPolicy.parse(
        {
            "version": "1",
            "tools": {
                "track_login": {
                    "limits": [
                        {"counter": "logins", "window": "minute", "max": 2, "scope": "grant"}
                    ]
                }
            },
        }
    )
    async with Gateway(server.url, policy, clock=lambda: now[0]) as gateway:
        mcp = await opened(gateway.url, wall_clock=lambda: now[0])
        try:
            allowed = [await mcp.send(event(1)), await mcp.send(event(2))]
            limited = await mcp.send(event(3))
            other_tool = await mcp.send(event(4, ActionType.LOGOUT))
            now[0] += (
                limited.retry_after if isinstance(limited, Retry) and limited.retry_after else 0
            )
            after_the_window = await mcp.send(event(3))
        finally:
            await mcp.aclose()

        assert allowed == [Delivered("ok"), Delivered("ok")]
        assert isinstance(limited, Retry)
        assert (limited.code, limited.throttled) == ("rate_limited", True)
        assert limited.retry_after == pytest.approx(30.5)
        assert "Rate limit exceeded" in limited.detail
        assert other_tool == Delivered("ok")
        assert after_the_window == Delivered("ok")
        assert gateway.rate_limited == {TRACK_LOGIN: 1}
    assert [r.user_id for r in legiti.accepted] == ["user-1", "user-2", "user-4", "user-3"]


async def test_a_bad_grant_token_heals_when_the_file_is_rewritten(
    tmp_path: Path, legiti: LegitiStub, server: McpServerStub, gateway: Gateway
) -> None:
    token_file = tmp_path / "grant"
    token_file.write_text("wrong-token\n")
    token = TokenSource(path=token_file)
    mcp = sink(gateway.url, token)
    try:
        await mcp.open()  # the far end cannot be asked yet: checked before the first send
        refused = await mcp.send(LOGIN)
        token_file.write_text(GRANT + "\n")
        assert token.refresh()
        healed = await mcp.send(LOGIN)
    finally:
        await mcp.aclose()

    assert isinstance(refused, Unauthorized)
    assert refused.code == "http_401"
    assert healed == Delivered("ok")
    assert gateway.unauthorized >= 1
    assert len(legiti.accepted) == 1


async def test_an_http_429_from_the_gateway_carries_its_retry_after(
    server: McpServerStub, gateway: Gateway
) -> None:
    mcp = await opened(gateway.url)
    try:
        gateway.retry_after = "7"
        gateway.statuses.extend([429, 503])
        limited = await mcp.send(LOGIN)
        outage = await mcp.send(LOGIN)
    finally:
        await mcp.aclose()

    assert isinstance(limited, Retry)
    assert (limited.code, limited.throttled, limited.retry_after) == ("http_429", True, 7.0)
    assert isinstance(outage, Retry)
    assert (outage.code, outage.outage, outage.retry_after) == ("http_503", True, 7.0)


# Legiti's answers, relayed by the tool --------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, Rejected),
        (404, Misconfigured),
        (409, Rejected),
        (422, Rejected),
        (401, Unauthorized),
        (403, Unauthorized),
        (429, Retry),
        (500, Retry),
        (502, Retry),
        (503, Retry),
    ],
)
async def test_each_legiti_status_in_an_is_error_result(
    legiti: LegitiStub, server: McpServerStub, gateway: Gateway, status: int, kind: type
) -> None:
    legiti.faults.status = status
    mcp = await opened(gateway.url)
    try:
        outcome = await mcp.send(LOGIN)
    finally:
        await mcp.aclose()

    assert isinstance(outcome, kind)
    assert outcome.code == f"tool_error_{status}"
    assert f"Error: Legiti API {status}" in outcome.detail
    if isinstance(outcome, Rejected):
        assert outcome.status == status
        assert outcome.body  # Legiti's own words go to the dead letter
    if isinstance(outcome, Retry):
        assert outcome.throttled == (status == 429)
        assert outcome.outage == (status >= 500)


async def test_legiti_out_of_reach_is_an_outage(
    legiti: LegitiStub, server: McpServerStub, gateway: Gateway
) -> None:
    mcp = await opened(gateway.url)
    try:
        await legiti.stop()
        outcome = await mcp.send(LOGIN)
    finally:
        await mcp.aclose()

    assert isinstance(outcome, Retry)
    assert (outcome.code, outcome.outage) == ("tool_error_network", True)
    assert "fetch failed" in outcome.detail


# A server that hangs up to be polled (MCP 2025-11-25) ------------------------------------------


async def test_a_stream_the_server_closes_before_answering_is_resumed(legiti: LegitiStub) -> None:
    async with McpServerStub(legiti.url, resumable=True) as server:
        mcp = await opened(server.url, token=None)
        try:
            outcomes = [await mcp.send(event(n)) for n in range(5)]
        finally:
            await mcp.aclose()

    assert outcomes == [Delivered("ok")] * 5
    assert [r.user_id for r in legiti.accepted] == [f"user-{n}" for n in range(5)]


async def test_unanswered_calls_time_out(legiti: LegitiStub, server: McpServerStub) -> None:
    mcp = McpSink(server.url, None, timeout=0.5, max_connections=4)
    await mcp.open()
    legiti.faults.latency = 1.0
    try:
        outcome = await mcp.send(LOGIN)
    finally:
        await mcp.aclose()
    assert isinstance(outcome, Retry)
    assert (outcome.code, outcome.outage) == ("timeout", True)
    await eventually(lambda: len(legiti.requests) == 1, timeout=5)
