"""The sandbox Legiti must answer like the real API, or tests built on it prove nothing."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from forwarder.sandbox.legiti import DROPPED, Faults, LegitiStub

AUTH = "/ticketing/v1/auth"
HEADERS = {
    "Authorization": "Bearer test-token",
    "Idempotency-Key": "key-1",
    "User-Agent": "forwarder-tests",
}
EVENT = {"user_id": "user-1", "action_type": "login_success"}


@pytest.fixture
async def stub() -> AsyncIterator[LegitiStub]:
    async with LegitiStub() as running:
        yield running


@pytest.fixture
async def client(stub: LegitiStub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stub.url, headers=HEADERS) as http:
        yield http


def _raw_request(body: bytes, connection: str = "keep-alive") -> bytes:
    return (
        f"POST {AUTH} HTTP/1.1\r\nHost: stub\r\nAuthorization: Bearer test-token\r\n"
        f"Content-Type: application/json\r\nConnection: {connection}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


async def test_accepts_a_valid_event_and_records_what_was_sent(
    stub: LegitiStub, client: httpx.AsyncClient
) -> None:
    before = time.monotonic()

    response = await client.post(AUTH, json=EVENT)

    assert response.status_code == 201
    assert response.json() == {"message": "auth tracked"}
    assert response.headers["connection"] == "keep-alive"
    [received] = stub.accepted
    assert stub.requests == [received]
    assert received.user_id == "user-1"
    assert received.action_type == "login_success"
    assert received.idempotency_key == "key-1"
    assert received.authorization == "Bearer test-token"
    assert received.user_agent == "forwarder-tests"
    assert received.status == 201
    assert before <= received.at <= time.monotonic()
    assert stub.status_counts == {201: 1}
    assert (stub.total_count, stub.accepted_count) == (1, 1)


@pytest.mark.parametrize(
    ("content", "bad_field"),
    [
        (b'["user-1", "login_success"]', "_schema"),
        (b"not json", "_schema"),
        (b'{"action_type": "logout"}', "user_id"),
        (b'{"user_id": "", "action_type": "logout"}', "user_id"),
        (b'{"user_id": 7, "action_type": "logout"}', "user_id"),
        (b'{"user_id": "user-1", "action_type": "signup"}', "action_type"),
        (b'{"user_id": "user-1", "action_type": ["logout"]}', "action_type"),
    ],
)
async def test_rejects_invalid_payloads_keyed_by_the_bad_field(
    stub: LegitiStub, client: httpx.AsyncClient, content: bytes, bad_field: str
) -> None:
    response = await client.post(AUTH, content=content)

    assert response.status_code == 400
    assert list(response.json()["error_message"]) == [bad_field]
    assert stub.accepted == []
    assert stub.status_counts == {400: 1}


@pytest.mark.parametrize(
    "authorization", ["Bearer wrong-token", "test-token", "Basic dGVzdC10b2tlbg=="]
)
async def test_rejects_credentials_outside_the_accepted_set(
    stub: LegitiStub, client: httpx.AsyncClient, authorization: str
) -> None:
    response = await client.post(AUTH, json=EVENT, headers={"Authorization": authorization})

    assert response.status_code == 401
    assert response.json() == {"message": "invalid credentials"}
    assert [r.authorization for r in stub.requests] == [authorization]
    assert stub.accepted == []


async def test_unknown_paths_are_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/ticketing/v1/other", json=EVENT)

    assert response.status_code == 404
    assert response.json() == {"message": "not found"}


async def test_script_steps_are_consumed_one_per_request(
    stub: LegitiStub, client: httpx.AsyncClient
) -> None:
    stub.faults.script.extend(["drop", 503, "ok"])

    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(AUTH, json=EVENT)
    unavailable = await client.post(AUTH, json=EVENT)
    accepted = await client.post(AUTH, json=EVENT)

    assert unavailable.status_code == 503
    assert accepted.status_code == 201
    assert [r.status for r in stub.requests] == [DROPPED, 503, 201]
    assert not stub.faults.script


async def test_forced_status_carries_retry_after(
    stub: LegitiStub, client: httpx.AsyncClient
) -> None:
    stub.faults.status = 503
    stub.faults.retry_after = "2"

    unavailable = await client.post(AUTH, json=EVENT)
    stub.faults.status = None
    accepted = await client.post(AUTH, json=EVENT)

    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "2"
    assert accepted.status_code == 201
    assert "retry-after" not in accepted.headers


async def test_per_user_faults_only_hit_those_users(
    stub: LegitiStub, client: httpx.AsyncClient
) -> None:
    stub.faults.reject_user_ids.add("poison")
    stub.faults.status_for_user["flaky"] = 500

    rejected = await client.post(AUTH, json={**EVENT, "user_id": "poison"})
    failed = await client.post(AUTH, json={**EVENT, "user_id": "flaky"})
    accepted = await client.post(AUTH, json=EVENT)

    assert rejected.status_code == 400
    assert list(rejected.json()["error_message"]) == ["user_id"]
    assert failed.status_code == 500
    assert accepted.status_code == 201
    assert [r.user_id for r in stub.accepted] == ["user-1"]


async def test_rate_limit_answers_429_once_the_burst_is_spent(
    stub: LegitiStub, client: httpx.AsyncClient
) -> None:
    stub.faults.rate_limit = 0.001
    stub.faults.rate_limit_burst = 2

    invalid = await client.post(AUTH, json={"user_id": "user-1"})
    statuses = [(await client.post(AUTH, json=EVENT)).status_code for _ in range(2)]
    limited = await client.post(AUTH, json=EVENT)
    stub.faults.retry_after = "30"
    limited_again = await client.post(AUTH, json=EVENT)

    assert invalid.status_code == 400, "invalid requests must not spend tokens"
    assert statuses == [201, 201]
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert limited_again.status_code == 429
    assert limited_again.headers["retry-after"] == "30"
    assert stub.status_counts == {400: 1, 201: 2, 429: 2}


async def test_random_faults_are_reproducible_with_a_seed() -> None:
    async def statuses(seed: int) -> list[int]:
        faults = Faults(error_rate=0.5, seed=seed)
        async with (
            LegitiStub(faults=faults) as stub,
            httpx.AsyncClient(base_url=stub.url, headers=HEADERS) as http,
        ):
            return [(await http.post(AUTH, json=EVENT)).status_code for _ in range(20)]

    first, second = await statuses(7), await statuses(7)

    assert first == second
    assert set(first) == {201, 503}


async def test_latency_delays_answers_and_overlaps_across_connections(
    stub: LegitiStub, client: httpx.AsyncClient
) -> None:
    stub.faults.latency = 0.3

    started = time.monotonic()
    responses = await asyncio.gather(*(client.post(AUTH, json=EVENT) for _ in range(5)))
    elapsed = time.monotonic() - started

    assert [r.status_code for r in responses] == [201] * 5
    assert 0.3 <= elapsed < 1.0, "five delayed answers should overlap, not queue"


async def test_pipelined_requests_are_answered_in_order_and_close_is_honoured(
    stub: LegitiStub,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stub.port)
    writer.write(
        _raw_request(b'{"user_id": "a", "action_type": "logout"}')
        + _raw_request(b"{}")
        + _raw_request(b'{"user_id": "b", "action_type": "logout"}', connection="close")
    )

    answers = [await _read_response(reader) for _ in range(3)]
    trailing = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()

    assert [head.split(b" ")[1] for head, _ in answers] == [b"201", b"400", b"201"]
    assert b"Connection: close" in answers[2][0]
    assert trailing == b"", "the stub must hang up after Connection: close"
    assert [r.user_id for r in stub.accepted] == ["a", "b"]


async def test_post_without_content_length_is_411(stub: LegitiStub) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stub.port)
    writer.write(f"POST {AUTH} HTTP/1.1\r\nHost: stub\r\n\r\n".encode())

    head, _ = await _read_response(reader)
    writer.close()

    assert head.startswith(b"HTTP/1.1 411 ")
    assert stub.total_count == 0


async def test_stop_hangs_up_on_idle_clients() -> None:
    stub = LegitiStub()
    await stub.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", stub.port)
    writer.write(_raw_request(b'{"user_id": "a", "action_type": "logout"}'))
    await _read_response(reader)

    await asyncio.wait_for(stub.stop(), timeout=5)

    assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    writer.close()


async def test_stats_and_reset_control_paths(stub: LegitiStub, client: httpx.AsyncClient) -> None:
    await client.post(AUTH, json=EVENT)
    await client.post(AUTH, json={**EVENT, "user_id": "user-2"})
    await client.post(AUTH, json={})

    stats = (await client.get("/_stub/stats")).json()

    assert stats["total"] == 3
    assert stats["accepted"] == 2
    assert stats["status_counts"] == {"201": 2, "400": 1}
    assert stats["first_accepted_at"] == stub.accepted[0].at
    assert stats["last_accepted_at"] == stub.accepted[1].at
    assert stats["wall_first_accepted_at"] <= stats["wall_last_accepted_at"] <= time.time()

    assert (await client.post("/_stub/reset")).status_code == 200
    after: dict[str, Any] = (await client.get("/_stub/stats")).json()

    assert after["total"] == 0
    assert after["first_accepted_at"] is None
    assert stub.requests == []


async def test_without_recording_only_counters_move(
    stub: LegitiStub, client: httpx.AsyncClient
) -> None:
    stub.recording = False

    await client.post(AUTH, json=EVENT)
    await client.post(AUTH, json={})

    assert stub.requests == []
    assert stub.accepted == []
    assert (stub.total_count, stub.accepted_count) == (2, 1)


async def test_wait_for_explains_what_it_was_waiting_for(stub: LegitiStub) -> None:
    with pytest.raises(TimeoutError, match=r"still false after 0\.05s; the stub saw 0 requests"):
        await stub.wait_for(lambda: len(stub.accepted) > 0, timeout=0.05)


async def test_runs_as_a_separate_process() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forwarder.sandbox.legiti",
        "--port",
        "0",
        "--token",
        "secret",
        "--no-record",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        assert line.startswith(b"listening http://127.0.0.1:")
        url = line.split()[1].decode()
        async with httpx.AsyncClient(base_url=url) as http:
            accepted = await http.post(AUTH, json=EVENT, headers={"Authorization": "Bearer secret"})
            refused = await http.post(AUTH, json=EVENT, headers=HEADERS)
            stats = (await http.get("/_stub/stats")).json()
    finally:
        process.terminate()
        returncode = await process.wait()

    assert (accepted.status_code, refused.status_code) == (201, 401)
    assert stats["total"] == 2
    assert stats["status_counts"] == {"201": 1, "401": 1}
    assert returncode == 0


# The collection endpoint the MCP server for Legiti calls ---------------------------------

COLLECT = "/auth"
LOGIN = {
    "account_id": "acct-1",
    "action": "login",
    "success": False,
    "ip": "203.0.113.7",
    "user_agent": "Mozilla/5.0",
    "timestamp": 1795176000.5,
}


async def test_collection_call_is_recorded_in_track_auth_terms(
    stub: LegitiStub, client: httpx.AsyncClient
) -> None:
    response = await client.post(COLLECT, json=LOGIN)
    logout = await client.post(
        COLLECT,
        json={"account_id": "acct-1", "action": "logout", "success": None, "ip": None},
    )

    assert (response.status_code, logout.status_code) == (201, 201)
    first, second = stub.accepted
    assert (first.path, first.user_id, first.action_type) == ("/auth", "acct-1", "login_failure")
    assert (first.ip, first.event_user_agent, first.timestamp) == (
        "203.0.113.7",
        "Mozilla/5.0",
        1795176000.5,
    )
    assert first.user_agent == "forwarder-tests"
    assert (second.action_type, second.ip, second.timestamp) == ("logout", None, None)
    assert stub.stats()["accepted"] == 2


@pytest.mark.parametrize(
    ("change", "bad_fields"),
    [
        ({"account_id": None}, ["account_id"]),
        ({"account_id": ""}, ["account_id"]),
        ({"action": "signup"}, ["action"]),
        ({"success": None}, ["success"]),
        ({"success": "yes"}, ["success"]),
        ({"ip": 7, "user_agent": ["x"]}, ["ip", "user_agent"]),
        ({"timestamp": "now"}, ["timestamp"]),
        ({"timestamp": True}, ["timestamp"]),
    ],
)
async def test_collection_call_refuses_bad_fields(
    stub: LegitiStub, client: httpx.AsyncClient, change: dict[str, Any], bad_fields: list[str]
) -> None:
    response = await client.post(COLLECT, json={**LOGIN, **change})

    assert response.status_code == 400
    assert sorted(response.json()["error_message"]) == bad_fields
    assert stub.accepted == []


async def test_collection_call_obeys_the_same_faults_and_credentials(
    stub: LegitiStub, client: httpx.AsyncClient
) -> None:
    stub.faults.script.extend([503, "ok"])
    stub.faults.status_for_user["acct-429"] = 429

    outage = await client.post(COLLECT, json=LOGIN)
    ok = await client.post(COLLECT, json=LOGIN)
    limited = await client.post(COLLECT, json={**LOGIN, "account_id": "acct-429"})
    refused = await client.post(COLLECT, json=LOGIN, headers={"Authorization": "Bearer nope"})
    wrong_method = await client.get(COLLECT)

    assert [outage.status_code, ok.status_code, limited.status_code, refused.status_code] == [
        503,
        201,
        429,
        401,
    ]
    assert limited.headers["retry-after"] == "1"
    assert wrong_method.status_code == 405
    assert [r.status for r in stub.requests] == [503, 201, 429, 401]
