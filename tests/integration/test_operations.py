"""What an operator sees of a running `forwarder run`: /metrics, /healthz, /readyz,
consumer lag, JSON logs, and a wrong API token that heals from the token file."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from forwarder import __version__
from forwarder.sandbox.process import ForwarderProcess
from forwarder.sandbox.samples import sample_key
from forwarder.sandbox.settings import sandbox_env
from tests.conftest import wait_until
from tests.factories import native, native_series
from tests.integration.kafka_helpers import create_forwarder_topics, produce, unique

ACTIONS = {0: "login_success", 1: "login_failure", 2: "logout"}
"""Event i of `native_series` is of action ACTIONS[i % 3]."""


def check_json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the log is one JSON object with the fields a log pipeline needs."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = json.loads(line)  # raises on anything that is not JSON
        assert isinstance(entry, dict), (number, line)
        for field in ("event", "level", "timestamp"):
            assert field in entry, (number, line)
        entries.append(entry)
    assert entries, "no log lines at all"
    return entries


async def test_metrics_health_and_lag_after_traffic(broker, legiti, tmp_path) -> None:
    topic = await create_forwarder_topics(broker.bootstrap, unique("ops"), partitions=2)
    dlq = f"{topic}.dlq"
    events = native_series("e", 60, users=5)
    first = [*events[0::2], native("e60", "user-rejected")]  # Legiti answers 400: dead letter
    second = [*events[1::2], b"{not json", events[0]]  # invalid_json, and a copy of e0
    await produce(broker.bootstrap, topic, first, partition=0)
    await produce(broker.bootstrap, topic, second, partition=1)
    consumed = len(first) + len(second)
    legiti.faults.reject_user_ids = {"user-rejected"}
    legiti.faults.script.append(503)  # the first request fails once and is retried
    env = sandbox_env(
        broker.bootstrap,
        topic,
        legiti.url,
        dlq_topic=dlq,
        rate_limit="1000/second",
        log_level="INFO",
    )

    async with ForwarderProcess(env, log_dir=tmp_path) as forwarder:
        await forwarder.wait_ready()
        await legiti.wait_for(lambda: legiti.accepted_count >= 60, timeout=30)

        async def settled() -> bool:
            m = await forwarder.metrics()
            return (
                m.get("forwarder_events_consumed_total") == consumed
                and m.get(sample_key("forwarder_events_duplicate_total", {"scope": "local"})) == 1
                and m.get(dead("invalid_json")) == 1
                and m.get(dead("rejected")) == 1
                and m.get("forwarder_in_flight_events") == 0
                and all(m.get(lag(topic, p)) == 0 for p in (0, 1))
            )

        await wait_until(settled, what="all records finished and the consumer lag at 0")
        m = await forwarder.metrics()
        health = await forwarder.get("/healthz")
        ready = await forwarder.get("/readyz")

    for index, action in ACTIONS.items():
        expected = len([i for i in range(60) if i % 3 == index])
        assert m[sample_key("forwarder_events_forwarded_total", {"action_type": action})] == (
            expected
        )
    assert m["forwarder_events_consumed_total"] == consumed
    assert m[sample_key("forwarder_events_duplicate_total", {"scope": "local"})] == 1
    for reason in ("empty_value", "invalid_event", "retries_exhausted", "denied_by_policy"):
        assert m[dead(reason)] == 0
    assert m[sink("201")] == 60
    assert m[sink("503")] == 1
    assert m[sink("400")] == 1
    assert sum(v for k, v in m.items() if k.startswith("forwarder_sink_requests_total{")) == (
        legiti.total_count
    )
    assert m["forwarder_sink_request_duration_seconds_count"] == legiti.total_count
    assert m[sample_key("forwarder_sink_request_duration_seconds_bucket", {"le": "+Inf"})] == (
        legiti.total_count
    )
    assert m["forwarder_retries_total"] == 1
    assert m["forwarder_rate_limit_delay_seconds_count"] == legiti.total_count
    assert "forwarder_rate_limit_delay_seconds_sum" in m
    assert m["forwarder_in_flight_events"] == 0
    assert m[lag(topic, 0)] == 0
    assert m[lag(topic, 1)] == 0
    assert m["forwarder_event_delivery_latency_seconds_count"] == 60
    assert m["forwarder_event_delivery_latency_seconds_sum"] > 0
    assert m["forwarder_ready"] == 1
    assert m[sample_key("forwarder_build_info", {"version": __version__})] == 1

    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "consumer_group": True,
        "credentials": True,
        "circuit": True,
        "sink_configuration": True,
        "dead_letter_topic": True,
        "retry_topic": True,
    }

    entries = check_json_lines(forwarder.output())
    # Per-event success is logged at debug only; this forwarder runs at info.
    assert not [e for e in entries if e["event"] == "event forwarded"]
    # A per-event line carries the event's key, topic, partition and offset.
    rejected = [e for e in entries if e.get("reason") == "rejected"]
    assert rejected, "the dead-lettered event was not logged"
    assert rejected[0]["event_key"] == "e60"
    assert rejected[0]["topic"] == topic
    assert rejected[0]["partition"] == 0
    assert rejected[0]["offset"] == 30
    assert "Traceback" not in forwarder.output()


def dead(reason: str) -> str:
    return sample_key("forwarder_events_dead_lettered_total", {"reason": reason})


def sink(code: str) -> str:
    return sample_key("forwarder_sink_requests_total", {"code": code})


def lag(topic: str, partition: int) -> str:
    return sample_key("forwarder_consumer_lag", {"topic": topic, "partition": str(partition)})


async def test_wrong_token_halts_without_dead_letters_and_heals_from_the_file(
    broker, legiti, tmp_path: Path
) -> None:
    wrong, right = "wrong-token-8c1d0e", "test-token"
    total, max_in_flight = 100, 4
    token_file = tmp_path / "token"
    token_file.write_text(wrong + "\n", encoding="utf-8")
    topic = await create_forwarder_topics(broker.bootstrap, unique("token"), partitions=2)
    await produce(broker.bootstrap, topic, native_series("e", total, users=10))
    env = sandbox_env(
        broker.bootstrap,
        topic,
        legiti.url,
        max_in_flight=max_in_flight,
        legiti_api_token_file=str(token_file),
        log_level="DEBUG",
    )
    del env["FORWARDER_LEGITI_API_TOKEN"]

    async with ForwarderProcess(env, log_dir=tmp_path) as forwarder:

        async def halted() -> bool:
            readiness = await forwarder.readiness()
            return (
                readiness is not None
                and readiness[0] == 503
                and readiness[1]["checks"]
                == {
                    "consumer_group": True,
                    "credentials": False,
                    "circuit": True,
                    "sink_configuration": True,
                    "dead_letter_topic": True,
                    "retry_topic": True,
                }
                and await forwarder.metric("forwarder_in_flight_events") == 0
            )

        await wait_until(halted, what="not ready because of the credentials, nothing in flight")
        # Before the first 401 came back up to max_in_flight requests were out; after it,
        # only probes, spaced by a backoff that starts at one second.
        start = legiti.requests[0].at
        burst = len([r for r in legiti.requests if r.at - start < 0.5])
        assert 1 <= burst <= max_in_flight, "more than the in-flight bound before the halt"
        await legiti.wait_for(lambda: legiti.total_count >= burst + 2, timeout=20)
        probes = legiti.requests[burst : burst + 2]
        assert legiti.total_count <= burst + 2, "probing faster than the backoff allows"
        assert probes[1].at - probes[0].at >= 0.5, "the probes are not backed off"
        assert {r.status for r in legiti.requests} == {401}
        m = await forwarder.metrics()
        assert m["forwarder_ready"] == 0
        assert m["forwarder_credentials_valid"] == 0
        assert sum(v for k, v in m.items() if k.startswith("forwarder_events_dead_lettered")) == 0
        assert m["forwarder_events_consumed_total"] == total  # held, not dropped
        errors = [e for e in forwarder.log_lines() if "rejected the API token" in e["event"]]
        assert len(errors) == 1, "the credentials error must not be logged per request"
        assert errors[0]["level"] == "error"

        # Fix the Secret the way Kubernetes updates a mounted one: an atomic replace.
        fixed = tmp_path / "token.new"
        fixed.write_text(right + "\n", encoding="utf-8")
        os.replace(fixed, token_file)
        await forwarder.wait_ready(within=20)
        await legiti.wait_for(lambda: len({r.idempotency_key for r in legiti.accepted}) == total)
        m = await forwarder.metrics()
        stderr = forwarder.output()

    assert Counter(r.idempotency_key for r in legiti.accepted).keys() == {
        f"e{i}" for i in range(total)
    }
    assert sum(v for k, v in m.items() if k.startswith("forwarder_events_dead_lettered")) == 0
    assert m["forwarder_credentials_valid"] == 1
    assert all(r.authorization == f"Bearer {right}" for r in legiti.accepted)
    # The token never appears in the log, wrong or right, even at debug level.
    assert wrong not in stderr
    assert right not in stderr
    assert not re.search(r"(?i)bearer\s+(?!\[redacted\])\S", stderr)
    entries = check_json_lines(stderr)
    assert any(e["event"] == "API token file changed; using the new token" for e in entries)
    forwarded = [e for e in entries if e["event"] == "event forwarded"]
    assert forwarded, "per-event success lines are expected at debug level"
    assert all(
        {"event_key", "topic", "partition", "offset"} <= e.keys() and e["level"] == "debug"
        for e in forwarded
    )
