"""The whole forwarder with `FORWARDER_SINK=mcp`: a real broker, the gateway stand-in, the
SDK-built MCP server and the sandbox Legiti. What the REST sink guarantees holds here too:
per-user order, no loss, de-duplication, dead letters with reasons, halts that heal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from forwarder.commands.run import Forwarder
from forwarder.config import Settings, load_settings
from forwarder.core.policy import parse_policy
from forwarder.sandbox.gateway import Gateway, GatewayPolicy
from forwarder.sandbox.legiti import LegitiStub
from forwarder.sandbox.mcp_server import McpServerStub
from forwarder.sandbox.settings import sandbox_env
from forwarder.sinks.base import SinkMisconfigured
from forwarder.sinks.factory import build_sink
from forwarder.sinks.mcp.client import McpSink
from tests.conftest import eventually
from tests.integration.kafka_helpers import (
    committable_of,
    create_topic,
    header,
    metric,
    produce,
    read_all,
    running,
    unique,
)

GRANT = "grant-token"


@pytest.fixture
async def legiti() -> AsyncIterator[LegitiStub]:
    async with LegitiStub() as stub:
        yield stub


@pytest.fixture
async def server(legiti: LegitiStub) -> AsyncIterator[McpServerStub]:
    async with McpServerStub(legiti.url) as running_server:
        yield running_server


def mcp_settings(bootstrap: str, topic: str, url: str, **overrides: str) -> Settings:
    """The sandbox's settings with the MCP sink pointed at `url` (the Legiti URL the
    sandbox settings carry is not used in this mode)."""
    env = sandbox_env(
        bootstrap, topic, "http://127.0.0.1:9", sink="mcp", mcp_url=url, mcp_token=GRANT
    )
    return load_settings(env, overrides)


def login(event_id: str, user: str, sequence: int, kind: str = "login") -> bytes:
    """A native event whose user agent carries its place in the user's sequence."""
    event: dict[str, Any] = {
        "event_id": event_id,
        "type": kind,
        "user_id": user,
        "user_agent": f"seq-{sequence}",
        "ip": "203.0.113.7",
        "occurred_at": "2026-11-20T12:00:00Z",
    }
    if kind == "login":
        event["success"] = sequence % 2 == 0
    return orjson.dumps(event)


async def produce_per_user(bootstrap: str, topic: str, values: list[tuple[str, bytes]]) -> None:
    """Each user's events keyed by the user, so they share a partition, in this order."""
    by_user: dict[str, list[bytes]] = defaultdict(list)
    for user, value in values:
        by_user[user].append(value)
    for user, events in by_user.items():
        await produce(bootstrap, topic, events, key=user.encode())


async def test_order_no_loss_and_dedupe_through_sessions_ending_and_faults(
    broker, legiti: LegitiStub, server: McpServerStub
) -> None:
    topic = await create_topic(broker.bootstrap, unique("mcp"), partitions=3)
    users = [f"u{n}" for n in range(12)]
    events = [(user, login(f"{user}-{i}", user, i, "logout" if i % 3 == 2 else "login"))
              for i in range(10) for user in users]  # fmt: skip
    copies = [events[5], events[40], events[77]]  # re-published copies of sent events
    legiti.faults.script.extend([503, "ok", 500, "ok", 503])
    async with Gateway(server.url) as gateway:
        await produce_per_user(broker.bootstrap, topic, events)
        config = mcp_settings(broker.bootstrap, topic, gateway.url)
        async with running(config) as forwarder:
            await eventually(lambda: len(legiti.accepted) >= 40, what="a first part")
            gateway.end_sessions()
            gateway.statuses.append(429)
            await eventually(lambda: len(legiti.accepted) >= 80, what="a second part")
            await server.restart()
            await produce_per_user(broker.bootstrap, topic, copies)
            await eventually(lambda: len(legiti.accepted) == 120, what="every event", timeout=30)
            pipeline = forwarder.pipeline
            assert pipeline is not None
            await eventually(lambda: sum(committable_of(pipeline, topic).values()) == 123)
            assert metric(forwarder, "forwarder_events_duplicate_total", scope="local") == 3
            assert metric(forwarder, "forwarder_sink_requests_total", code="http_429") == 1
            assert metric(forwarder, "forwarder_sink_requests_total", code="tool_error_503") >= 1
        assert gateway.sessions_started >= 3  # the first, after end_sessions, after the restart
    sent = defaultdict(list)
    for received in legiti.accepted:
        sent[received.user_id].append(received.event_user_agent)
    for user in users:
        assert sent[user] == [f"seq-{i}" for i in range(10)], user
    assert {r.action_type for r in legiti.accepted} == {"login_success", "login_failure", "logout"}


async def test_a_tool_the_gateway_denies_is_dead_lettered_and_not_called_again(
    broker, legiti: LegitiStub, server: McpServerStub
) -> None:
    topic = await create_topic(broker.bootstrap, unique("mcp"))
    policy = GatewayPolicy.parse({"version": "1", "default": "deny", "tools": {"track_login": {}}})
    values = [login(f"e{i}", "same-user", i, "logout" if i % 2 else "login") for i in range(8)]
    async with Gateway(server.url, policy) as gateway:
        await produce(broker.bootstrap, topic, values)
        async with running(mcp_settings(broker.bootstrap, topic, gateway.url)) as forwarder:
            dead = await read_all(broker.bootstrap, f"{topic}.dlq", 4)
            await eventually(lambda: len(legiti.accepted) == 4)
            assert metric(forwarder, "forwarder_sink_requests_total", code="policy_denied") == 1
        assert gateway.denials == {"track_logout": 1}
    assert {header(record, "x-forwarder-error-reason") for record in dead} == {b"denied_by_policy"}
    assert [r.action_type for r in legiti.accepted] == ["login_success"] * 4


async def test_a_missing_tool_holds_everything_until_the_gateway_offers_it(
    broker, legiti: LegitiStub, server: McpServerStub
) -> None:
    topic = await create_topic(broker.bootstrap, unique("mcp"))
    denying = GatewayPolicy.parse(
        {"version": "1", "tools": {"track_logout": {"action": "deny", "reason": "off"}}}
    )
    await produce(broker.bootstrap, topic, [login(f"e{i}", f"u{i}", i) for i in range(5)])
    gateway = Gateway(server.url, denying, hide_denied=True)
    async with gateway, running(mcp_settings(broker.bootstrap, topic, gateway.url)) as forwarder:
        await eventually(lambda: forwarder.readiness()["consumer_group"])
        assert not forwarder.readiness()["sink_configuration"]
        assert metric(forwarder, "forwarder_sink_misconfigured") == 1
        gateway.policy = GatewayPolicy()
        await eventually(lambda: len(legiti.accepted) == 5, what="sent once the tool is back")
        await eventually(lambda: forwarder.readiness()["sink_configuration"])
        assert metric(forwarder, "forwarder_events_dead_lettered_total", reason="rejected") == 0


async def test_a_bad_grant_token_halts_until_the_file_is_fixed(
    tmp_path: Path, broker, legiti: LegitiStub, server: McpServerStub
) -> None:
    topic = await create_topic(broker.bootstrap, unique("mcp"))
    token_file = tmp_path / "grant"
    token_file.write_text("not-the-grant\n")
    await produce(broker.bootstrap, topic, [login(f"e{i}", f"u{i}", i) for i in range(5)])
    async with Gateway(server.url) as gateway:
        config = mcp_settings(
            broker.bootstrap, topic, gateway.url, mcp_token="", mcp_token_file=str(token_file)
        )
        async with running(config) as forwarder:
            await eventually(lambda: not forwarder.readiness()["credentials"], what="halted")
            assert legiti.accepted == []
            token_file.write_text(GRANT + "\n")
            await eventually(lambda: len(legiti.accepted) == 5, what="healed by the new file")
            assert forwarder.readiness()["credentials"]
        assert gateway.unauthorized >= 1


async def test_rate_limit_denials_are_retried_after_the_window(
    broker, legiti: LegitiStub, server: McpServerStub
) -> None:
    topic = await create_topic(broker.bootstrap, unique("mcp"))
    limits = [{"counter": "logins", "window": "second", "max": 5, "scope": "grant"}]
    policy = GatewayPolicy.parse({"version": "1", "tools": {"track_login": {"limits": limits}}})
    await produce(broker.bootstrap, topic, [login(f"e{i}", f"u{i}", i) for i in range(15)])
    async with Gateway(server.url, policy) as gateway:
        async with running(mcp_settings(broker.bootstrap, topic, gateway.url)) as forwarder:
            await eventually(lambda: len(legiti.accepted) == 15, timeout=30)
            assert metric(forwarder, "forwarder_sink_requests_total", code="rate_limited") >= 1
        assert gateway.rate_limited["track_login"] >= 1
    assert sorted(r.user_id or "" for r in legiti.accepted) == sorted(f"u{i}" for i in range(15))


def test_the_forwarder_builds_the_mcp_sink_from_its_settings() -> None:
    config = mcp_settings("127.0.0.1:9", "t", "http://127.0.0.1:9/mcp/x/", mcp_login_tool="a__l")
    forwarder = Forwarder(config)
    assert forwarder.credentials is not None
    assert forwarder.credentials.token == GRANT
    assert isinstance(forwarder.sink, McpSink)


async def test_the_policy_file_lets_a_denied_tool_be_missing(server: McpServerStub) -> None:
    policy = parse_policy({"version": "1", "tools": {"track_logout": {"action": "deny"}}})
    hiding = GatewayPolicy.parse({"version": "1", "tools": {"track_logout": {"action": "deny"}}})
    async with Gateway(server.url, hiding, hide_denied=True) as gateway:
        config = mcp_settings("127.0.0.1:9", "t", gateway.url)
        without_policy = build_sink(config.sink).sink
        with_policy = build_sink(config.sink, policy).sink
        try:
            with pytest.raises(SinkMisconfigured, match="track_logout"):
                await without_policy.open()
            await with_policy.open()
        finally:
            await without_policy.aclose()
            await with_policy.aclose()


def test_demo_through_the_gateway_prints_the_mcp_summary() -> None:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("FORWARDER_")}
    result = subprocess.run(
        [sys.executable, "-m", "forwarder", "demo", "--sink", "mcp", "--events", "600",
         "--metrics-port", "0"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in out + result.stderr
    assert "MCP gateway, MCP server and Legiti API" in out
    consumed = _number(r"^\s*consumed\s+(\d+)\s*$", out)
    calls = {tool: _number(rf"^\s*mcp calls {tool}\s+(\d+)", out) for tool in TOOL_NAMES}
    forwarded = sum(int(n) for n in re.findall(r"^\s*forwarded \w+\s+(\d+)", out, re.M))
    finished = sum(
        int(n) for n in re.findall(r"^\s*(?:duplicates|dead-lettered \w+)\s+(\d+)", out, re.M)
    )
    accepted = _number(r"legiti accepted\s+(\d+)", out)
    assert forwarded + finished == consumed >= 600
    assert accepted == forwarded
    assert sum(calls.values()) >= forwarded  # the 503s Legiti injects are called again
    assert re.search(r"^\s*mcp sessions\s+1$", out, re.MULTILINE), out


TOOL_NAMES = ("track_login", "track_logout")


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{pattern!r} not in the demo's output:\n{text}"
    return int(match[1])
