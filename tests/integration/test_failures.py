"""Retries, give-ups, outages and back-pressure against a misbehaving HTTP server."""

from __future__ import annotations

from forwarder.core.halts import HaltState
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


async def test_transient_failures_are_retried_until_delivered(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    legiti.faults.script.extend([503, "drop", 500, 408, 425, 502, 504, 429])
    await produce(broker.bootstrap, topic, [native("only", "u")])
    async with running(settings(broker.bootstrap, topic, legiti.url)) as forwarder:
        await eventually(lambda: len(legiti.accepted) == 1, timeout=20)
    assert [r.status for r in legiti.requests] == [503, 0, 500, 408, 425, 502, 504, 429, 201]
    assert metric(forwarder, "forwarder_retries_total") == 8
    assert metric(forwarder, "forwarder_sink_requests_total", code="error") == 1
    assert metric(forwarder, "forwarder_sink_requests_total", code="503") == 1


async def test_slow_answers_time_out_and_are_retried(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    legiti.faults.latency = 1.0
    await produce(broker.bootstrap, topic, [native("slow", "u")])
    config = settings(broker.bootstrap, topic, legiti.url, http_timeout_seconds="0.2")
    async with running(config) as forwarder:
        await eventually(
            lambda: metric(forwarder, "forwarder_sink_requests_total", code="timeout") >= 2
        )
        legiti.faults.latency = 0.0
        await eventually(lambda: len(legiti.accepted) >= 1)
    assert metric(forwarder, "forwarder_events_forwarded_total", action_type="login_success") == 1


async def test_retries_give_up_into_the_dead_letter_topic(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    legiti.faults.status_for_user = {"doomed": 503}
    await produce(broker.bootstrap, topic, [native("d1", "doomed"), native("fine", "u")])
    config = settings(broker.bootstrap, topic, legiti.url, retry_max_elapsed_seconds="1")
    async with running(config) as forwarder:
        dead = await read_all(broker.bootstrap, f"{topic}.dlq", 1)
        pipeline = forwarder.pipeline
        assert pipeline is not None
        await eventually(lambda: pipeline.committable() == {(topic, 0): 2})
    assert header(dead[0], "x-forwarder-error-reason") == b"retries_exhausted"
    assert int(header(dead[0], "x-forwarder-attempts") or 0) >= 2
    assert b"503" in (header(dead[0], "x-forwarder-error-detail") or b"")
    assert [r.idempotency_key for r in legiti.accepted] == ["fine"]


async def test_outage_opens_the_circuit_instead_of_hammering(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique(), partitions=2)
    legiti.faults.status = 503
    await produce(broker.bootstrap, topic, [native(f"e{i}", f"u{i}") for i in range(300)])
    config = settings(
        broker.bootstrap,
        topic,
        legiti.url,
        circuit_min_requests="10",
        retry_initial_backoff_seconds="0.01",
        retry_max_backoff_seconds="0.05",
    )
    async with running(config) as forwarder:
        await eventually(lambda: metric(forwarder, "forwarder_circuit_state") == HaltState.OPEN)
        assert forwarder.readiness()["circuit"] is False
        # Requests under way when it opened still land: count from when none is in flight.
        pipeline = forwarder.pipeline
        assert pipeline is not None
        await eventually(lambda: pipeline.in_flight == 0)
        opened_with = len(legiti.requests)
        # While open, only single probes go out, with growing pauses between them.
        await eventually(lambda: len(legiti.requests) >= opened_with + 2, timeout=10)
        assert len(legiti.requests) <= opened_with + 5
        assert len(legiti.accepted) == 0
        legiti.faults.status = None
        await eventually(lambda: len(legiti.accepted) == 300, timeout=30)
        assert metric(forwarder, "forwarder_circuit_state") == HaltState.CLOSED
        assert forwarder.readiness()["circuit"] is True
    assert (
        metric(forwarder, "forwarder_events_dead_lettered_total", reason="retries_exhausted") == 0
    )


async def test_a_held_pipeline_pauses_fetching_without_leaving_the_group(broker, legiti) -> None:
    """A tight rate limit holds the pipeline far longer than max_poll_interval_ms:
    the partitions pause, memory stays bounded and no rebalance happens."""
    topic = await create_topic(broker.bootstrap, unique())
    await produce(broker.bootstrap, topic, [native(f"e{i}", f"u{i}") for i in range(600)])
    config = settings(
        broker.bootstrap,
        topic,
        legiti.url,
        rate_limit="100/second",
        max_buffered_events="50",
        kafka_max_poll_records="20",
        kafka_max_poll_interval_ms="4000",
    )
    peak = 0
    async with running(config) as forwarder:
        pipeline = forwarder.pipeline

        def delivered_all() -> bool:
            nonlocal peak
            if pipeline is not None:
                peak = max(peak, pipeline.buffered)
            return len(legiti.accepted) == 600

        await eventually(lambda: forwarder.pipeline is not None)
        pipeline = forwarder.pipeline
        await eventually(delivered_all, timeout=60)
    assert peak <= 50 + 20
    assert metric(forwarder, "forwarder_rebalances_total") == 1
