"""Rate limits (configured, per tool, from the policy file, and learned from 429s) and
Retry-After, measured where they matter: at the receiving server."""

from __future__ import annotations

import bisect

import orjson

from tests.conftest import eventually
from tests.factories import native
from tests.integration.kafka_helpers import (
    create_topic,
    header,
    metric,
    produce,
    read_all,
    running,
    settings,
    unique,
)


def busiest_window(times: list[float], window: float) -> int:
    """The most requests in any half-open interval [t, t + window)."""
    ordered = sorted(times)
    return max(bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered))


async def test_global_limit_is_never_exceeded_and_fully_used(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    await produce(broker.bootstrap, topic, [native(f"e{i}", f"u{i}") for i in range(100)])
    async with running(settings(broker.bootstrap, topic, legiti.url, rate_limit="20/second")):
        await eventually(lambda: len(legiti.accepted) == 100, timeout=20)
    times = [r.at for r in legiti.requests]
    assert busiest_window(times, 1.0) <= 20
    # After the first window's burst the stream is steady: 80 more sends over ~4 windows.
    steady_rate = 80 / (max(times) - min(times))
    assert steady_rate >= 0.9 * 20, f"only {steady_rate:.1f}/s of an allowed 20/s"


async def test_per_tool_limit_does_not_hold_back_the_other_tool(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    logins = [native(f"in{i}", f"a{i}", "login", True) for i in range(15)]
    logouts = [native(f"out{i}", f"b{i}", "logout") for i in range(15)]
    await produce(
        broker.bootstrap, topic, [v for pair in zip(logins, logouts, strict=True) for v in pair]
    )
    config = settings(broker.bootstrap, topic, legiti.url, rate_limit_login="5/second")
    async with running(config):
        await eventually(lambda: sum(r.action_type == "logout" for r in legiti.accepted) == 15)
        assert sum(r.action_type == "login_success" for r in legiti.accepted) <= 10
        await eventually(lambda: len(legiti.accepted) == 30, timeout=20)
    login_times = [r.at for r in legiti.requests if r.action_type == "login_success"]
    assert busiest_window(login_times, 1.0) <= 5


async def test_policy_file_denies_and_limits(broker, legiti, tmp_path) -> None:
    policy = {
        "version": "1",
        "default": "deny",
        "tools": {
            "track_login": {
                "limits": [
                    {"counter": "track_login_rate", "window": "second", "max": 4, "scope": "grant"}
                ]
            },
            "track_logout": {"action": "deny", "reason": "not used"},
        },
    }
    path = tmp_path / "policy.json"
    path.write_bytes(orjson.dumps(policy))
    topic = await create_topic(broker.bootstrap, unique())
    values = [native(f"in{i}", f"a{i}") for i in range(8)] + [native("out", "b", "logout")]
    await produce(broker.bootstrap, topic, values)
    async with running(settings(broker.bootstrap, topic, legiti.url, policy_file=str(path))) as fwd:
        await eventually(lambda: len(legiti.accepted) == 8, timeout=20)
        dead = await read_all(broker.bootstrap, f"{topic}.dlq", 1)
    assert header(dead[0], "x-forwarder-error-reason") == b"denied_by_policy"
    assert b"not used" in (header(dead[0], "x-forwarder-error-detail") or b"")
    assert all(r.action_type != "logout" for r in legiti.requests)
    assert busiest_window([r.at for r in legiti.requests], 1.0) <= 4
    assert metric(fwd, "forwarder_events_dead_lettered_total", reason="denied_by_policy") == 1


async def test_retry_after_holds_every_send(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    legiti.faults.script.append(429)
    legiti.faults.retry_after = "1"
    await produce(broker.bootstrap, topic, [native(f"e{i}", f"u{i}") for i in range(30)])
    async with running(settings(broker.bootstrap, topic, legiti.url, max_in_flight="1")):
        await eventually(lambda: len(legiti.accepted) == 30, timeout=20)
    throttled = next(r for r in legiti.requests if r.status == 429)
    later = [r.at for r in legiti.requests if r.at > throttled.at]
    assert min(later) - throttled.at >= 1.0


async def test_429s_lower_the_send_rate_to_the_servers_capacity(broker, legiti) -> None:
    """Against a server taking 100 requests/s and refusing the rest, few are refused
    and throughput stays near its capacity."""
    topic = await create_topic(broker.bootstrap, unique(), partitions=4)
    legiti.faults.rate_limit = 100.0
    total = 800
    await produce(broker.bootstrap, topic, [native(f"e{i}", f"u{i % 500}") for i in range(total)])
    async with running(settings(broker.bootstrap, topic, legiti.url)) as forwarder:
        await eventually(lambda: len(legiti.accepted) == total, timeout=40)
    refused = sum(r.status == 429 for r in legiti.requests)
    assert refused / len(legiti.requests) < 0.30, f"{refused} of {len(legiti.requests)} refused"
    accepted = [r.at for r in legiti.accepted]
    throughput = (total - 100) / (max(accepted) - min(accepted))  # first 100 were the burst
    print(f"429s: {refused}/{len(legiti.requests)}; throughput {throughput:.1f}/s of 100/s")
    assert throughput >= 70, f"throughput {throughput:.1f}/s against a 100/s server"
    assert metric(forwarder, "forwarder_sink_requests_total", code="429") == refused
