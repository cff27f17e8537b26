"""The sink's lean request path still says and hears everything the slow one did.

The sink builds `httpx.Request`s by hand and calls the transport directly for speed
(see `forwarder/sink.py`); these tests pin down that nothing a client would have
added for it (Host, Content-Length, headers, timeouts, reading error bodies) was
lost on the way, with the pyreqwest transport, with httpx's own transport and with
a mock one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from forwarder.core.events import ActionType, AuthEvent
from forwarder.sandbox.broker import free_port
from forwarder.sandbox.legiti import LegitiStub
from forwarder.sinks.credentials import TokenSource
from forwarder.sinks.legiti.client import USER_AGENT, LegitiSink
from forwarder.sinks.outcome import Delivered, Rejected, Retry, Unauthorized

TOKEN = "test-token"
EVENT = AuthEvent("//auth.example.com/web#ü-1", "user-ü", ActionType.LOGIN_FAILURE)


@pytest.fixture
async def stub() -> AsyncIterator[LegitiStub]:
    async with LegitiStub() as running:
        yield running


@pytest.fixture
async def sink(stub: LegitiStub) -> AsyncIterator[LegitiSink]:
    sink = LegitiSink(stub.url, TokenSource(token=TOKEN), timeout=2.0, max_connections=4)
    yield sink
    await sink.aclose()


async def test_a_delivered_event_carries_body_and_headers(
    stub: LegitiStub, sink: LegitiSink
) -> None:
    assert await sink.send(EVENT) == Delivered("201")
    [received] = stub.accepted
    assert (received.user_id, received.action_type) == ("user-ü", "login_failure")
    assert received.authorization == f"Bearer {TOKEN}"
    assert received.user_agent == USER_AGENT
    assert received.idempotency_key == "//auth.example.com/web#%C3%BC-1"


async def test_error_answers_are_read_and_classified(stub: LegitiStub, sink: LegitiSink) -> None:
    stub.faults.script.extend([400, 401, 429, 503])
    stub.faults.retry_after = "7"
    rejected, unauthorized, throttled, unavailable = [await sink.send(EVENT) for _ in range(4)]
    assert isinstance(rejected, Rejected)
    assert rejected.status == 400
    assert orjson.loads(rejected.body)["error_message"]
    assert isinstance(unauthorized, Unauthorized)
    assert isinstance(throttled, Retry)
    assert throttled.throttled
    assert throttled.retry_after == 7.0
    assert isinstance(unavailable, Retry)
    assert unavailable.outage


async def test_a_slow_answer_is_a_timeout(stub: LegitiStub) -> None:
    stub.faults.latency = 1.0
    sink = LegitiSink(stub.url, TokenSource(token=TOKEN), timeout=0.2, max_connections=4)
    try:
        outcome = await sink.send(EVENT)
    finally:
        await sink.aclose()
    assert isinstance(outcome, Retry)
    assert outcome.code == "timeout"


async def test_no_server_is_a_transport_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    sink = LegitiSink(url, TokenSource(token=TOKEN), timeout=1.0, max_connections=4)
    try:
        outcome = await sink.send(EVENT)
    finally:
        await sink.aclose()
    assert isinstance(outcome, Retry)
    assert (outcome.code, outcome.outage) == ("error", True)


async def test_a_rotated_token_is_used_from_the_next_send(stub: LegitiStub, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old-token")
    source = TokenSource(path=token_file)
    sink = LegitiSink(stub.url, source, timeout=2.0, max_connections=4)
    try:
        assert isinstance(await sink.send(EVENT), Unauthorized)
        token_file.write_text(TOKEN)
        assert source.refresh()
        assert await sink.send(EVENT) == Delivered("201")
    finally:
        await sink.aclose()


async def test_concurrent_sends_share_the_pool(stub: LegitiStub, sink: LegitiSink) -> None:
    events = [AuthEvent(f"e{i}", f"u{i}", ActionType.LOGOUT) for i in range(50)]
    outcomes = await asyncio.gather(*(sink.send(event) for event in events))
    assert outcomes == [Delivered("201")] * 50
    assert sorted(r.idempotency_key or "" for r in stub.accepted) == sorted(e.key for e in events)


async def test_works_over_httpx_own_transport(stub: LegitiStub) -> None:
    """Any httpx transport fits: streaming answers are read when needed, and closed."""
    sink = LegitiSink(
        stub.url,
        TokenSource(token=TOKEN),
        timeout=2.0,
        max_connections=4,
        transport=httpx.AsyncHTTPTransport(),
    )
    try:
        assert await sink.send(EVENT) == Delivered("201")
        stub.faults.script.append(400)
        rejected = await sink.send(EVENT)
        assert isinstance(rejected, Rejected)
        assert b"error_message" in rejected.body
        assert await sink.send(EVENT) == Delivered("201")
    finally:
        await sink.aclose()
    assert len(stub.accepted) == 2


async def test_the_request_is_complete_for_any_transport() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(409, json={"error_message": {"user_id": ["taken"]}})

    sink = LegitiSink(
        "http://legiti.test/",
        TokenSource(token=TOKEN),
        timeout=3.0,
        max_connections=4,
        transport=httpx.MockTransport(answer),
    )
    outcome = await sink.send(EVENT)
    await sink.aclose()
    assert isinstance(outcome, Rejected)
    assert orjson.loads(outcome.body) == {"error_message": {"user_id": ["taken"]}}
    [request] = seen
    assert (request.method, str(request.url)) == ("POST", "http://legiti.test/ticketing/v1/auth")
    assert orjson.loads(request.content) == {"user_id": "user-ü", "action_type": "login_failure"}
    assert request.headers["host"] == "legiti.test"
    assert request.headers["content-length"] == str(len(request.content))
    assert request.headers["content-type"] == "application/json"
    assert request.extensions["timeout"]["read"] == 3.0
