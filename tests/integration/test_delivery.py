"""At-least-once, de-duplication, per-user order and dead letters, against a real broker
and a real HTTP server."""

from __future__ import annotations

from collections import Counter

import orjson

from forwarder.core.events import SourceRecord
from forwarder.kafka.dead_letters import KafkaDeadLetters
from tests.conftest import eventually
from tests.factories import native
from tests.integration.kafka_helpers import (
    committable_of,
    committed,
    create_topic,
    header,
    metric,
    produce,
    read_all,
    running,
    settings,
    unique,
)


async def test_commit_waits_for_the_unfinished_event(broker, legiti) -> None:
    """A retrying event holds the committed offset back; later events still go out."""
    topic = await create_topic(broker.bootstrap, unique())
    legiti.faults.status_for_user = {"stuck": 503}
    values = [
        native("e0", "a"),
        native("e1", "stuck"),
        *(native(f"e{i}", f"u{i}") for i in range(2, 20)),
    ]
    await produce(broker.bootstrap, topic, values)
    config = settings(broker.bootstrap, topic, legiti.url)
    async with running(config) as forwarder:
        await eventually(lambda: len(legiti.accepted) == 19, what="all but the stuck event")
        pipeline = forwarder.pipeline
        assert pipeline is not None
        await eventually(
            lambda: committable_of(pipeline, topic) == {(topic, 0): 1}, what="prefix up to e1"
        )
        await eventually(
            lambda: metric(forwarder, "forwarder_offset_commits_total", result="ok") >= 1
        )
        assert await committed(broker.bootstrap, config.kafka.group_id, topic) == {0: 1}
        legiti.faults.status_for_user = {}
        await eventually(lambda: len(legiti.accepted) == 20, what="the stuck event after healing")
        await eventually(lambda: committable_of(pipeline, topic) == {(topic, 0): 20})
    assert await committed(broker.bootstrap, config.kafka.group_id, topic) == {0: 20}


class FlakyDeadLetters:
    """The real dead-letter producer, failing until told to work (a broker-side outage)."""

    def __init__(self, inner: KafkaDeadLetters) -> None:
        self.inner = inner
        self.failing = True
        self.attempts = 0

    async def write(self, record: SourceRecord, headers: list[tuple[str, bytes]]) -> None:
        self.attempts += 1
        if self.failing:
            raise ConnectionError("dead-letter topic unavailable")
        await self.inner.write(record, headers)


async def test_failed_dead_letter_write_blocks_the_commit(broker, legiti) -> None:
    from aiokafka import AIOKafkaProducer

    topic = await create_topic(broker.bootstrap, unique())
    await produce(broker.bootstrap, topic, [native("ok-0", "u"), b"{broken", native("ok-2", "v")])
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    flaky = FlakyDeadLetters(KafkaDeadLetters(producer, f"{topic}.dlq"))
    config = settings(broker.bootstrap, topic, legiti.url)
    try:
        async with running(config, dead_letters=flaky) as forwarder:
            await eventually(lambda: len(legiti.accepted) == 2 and flaky.attempts >= 2)
            pipeline = forwarder.pipeline
            assert pipeline is not None
            assert committable_of(pipeline, topic) == {(topic, 0): 1}
            flaky.failing = False
            await eventually(lambda: committable_of(pipeline, topic) == {(topic, 0): 3})
        dead = await read_all(broker.bootstrap, f"{topic}.dlq", 1)
        assert dead[0].value == b"{broken"
        assert await committed(broker.bootstrap, config.kafka.group_id, topic) == {0: 3}
    finally:
        await producer.stop()


async def test_duplicates_are_counted_not_sent(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    first = [native(f"e{i}", f"u{i % 3}") for i in range(10)]
    await produce(broker.bootstrap, topic, first)
    async with running(settings(broker.bootstrap, topic, legiti.url)) as forwarder:
        await eventually(lambda: len(legiti.accepted) == 10)
        await produce(broker.bootstrap, topic, first[:4])
        await eventually(
            lambda: metric(forwarder, "forwarder_events_duplicate_total", scope="local") == 4
        )
    assert len(legiti.requests) == 10
    assert metric(forwarder, "forwarder_events_consumed_total") == 14


async def test_copy_in_flight_waits_for_the_first_copy(broker, legiti) -> None:
    """Two copies in different partitions: only one request, never two at once."""
    topic = await create_topic(broker.bootstrap, unique(), partitions=2)
    legiti.faults.latency = 0.3
    await produce(broker.bootstrap, topic, [native("same", "u1")], partition=0)
    await produce(broker.bootstrap, topic, [native("same", "u1")], partition=1)
    async with running(settings(broker.bootstrap, topic, legiti.url)) as forwarder:
        await eventually(
            lambda: metric(forwarder, "forwarder_events_duplicate_total", scope="local") == 1
        )
        pipeline = forwarder.pipeline
        assert pipeline is not None
        await eventually(lambda: committable_of(pipeline, topic) == {(topic, 0): 1, (topic, 1): 1})
    assert [r.idempotency_key for r in legiti.requests] == ["same"]


async def test_copy_is_sent_when_the_first_was_dead_lettered(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique(), partitions=2)
    legiti.faults.latency = 0.2
    legiti.faults.script.append(400)
    await produce(broker.bootstrap, topic, [native("k", "u1")], partition=0)
    await produce(broker.bootstrap, topic, [native("k", "u1")], partition=1)
    async with running(settings(broker.bootstrap, topic, legiti.url)) as forwarder:
        await eventually(lambda: len(legiti.accepted) == 1)
        await eventually(
            lambda: (
                metric(forwarder, "forwarder_events_dead_lettered_total", reason="rejected") == 1
            )
        )
    assert [r.status for r in legiti.requests] == [400, 201]
    assert metric(forwarder, "forwarder_events_duplicate_total", scope="local") == 0


async def test_per_user_order_survives_retries(broker, legiti) -> None:
    """A user's retried event holds back that user's later events, nobody else's."""
    topic = await create_topic(broker.bootstrap, unique())
    legiti.faults.status_for_user = {"slow-user": 503}
    values = [native(f"s{i}", "slow-user", "login", i % 2 == 0) for i in range(5)]
    values += [native(f"o{i}", f"other-{i}") for i in range(20)]
    await produce(broker.bootstrap, topic, values)
    async with running(settings(broker.bootstrap, topic, legiti.url)):
        await eventually(lambda: len(legiti.accepted) == 20, what="the other users")
        slow_requests = [r for r in legiti.requests if r.user_id == "slow-user"]
        assert {r.idempotency_key for r in slow_requests} == {"s0"}, "later events held back"
        legiti.faults.status_for_user = {}
        await eventually(lambda: len(legiti.accepted) == 25)
    slow = [r.idempotency_key for r in legiti.accepted if r.user_id == "slow-user"]
    assert slow == [f"s{i}" for i in range(5)]


async def test_malformed_records_are_dead_lettered_with_reasons(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    legiti.faults.reject_user_ids = {"bad-user"}
    values = [
        (b"{not json", [("trace-id", b"t-1")]),
        b"\xff\xfe",
        (None, []),
        orjson.dumps({"event_id": "x", "type": "login", "success": True}),
        orjson.dumps({"event_id": "y", "type": "signup", "user_id": "u"}),
        native("rejected-1", "bad-user"),
        native("good", "u"),
    ]
    await produce(broker.bootstrap, topic, values, key=b"k")
    async with running(settings(broker.bootstrap, topic, legiti.url)):
        await eventually(lambda: len(legiti.requests) == 2)
        dead = await read_all(broker.bootstrap, f"{topic}.dlq", 6)
    reasons = [header(record, "x-forwarder-error-reason") for record in dead]
    assert Counter(reasons) == Counter(
        [
            b"invalid_json",
            b"invalid_json",
            b"empty_value",
            b"invalid_event",
            b"invalid_event",
            b"rejected",
        ]
    )
    first = next(r for r in dead if header(r, "x-forwarder-source-offset") == b"0")
    assert first.key == b"k"
    assert first.value == b"{not json"
    assert header(first, "trace-id") == b"t-1"
    assert header(first, "x-forwarder-source-topic") == topic.encode()
    assert header(first, "x-forwarder-source-partition") == b"0"
    assert header(first, "x-forwarder-attempts") == b"0"
    assert b"JSON" in (header(first, "x-forwarder-error-detail") or b"")
    rejected = next(r for r in dead if header(r, "x-forwarder-error-reason") == b"rejected")
    assert header(rejected, "x-forwarder-http-status") == b"400"
    assert header(rejected, "x-forwarder-attempts") == b"1"
    assert b"error_message" in (header(rejected, "x-forwarder-response-body") or b"")


async def test_cloudevents_in_both_modes(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    structured = orjson.dumps(
        {
            "specversion": "1.0",
            "id": "ce-1",
            "source": "/auth/web",
            "type": "com.example.auth.login.failed",
            "data": {"user_id": 42},
        }
    )
    binary = (
        orjson.dumps({"user_id": "ü-7"}),
        [
            ("ce_specversion", b"1.0"),
            ("ce_id", b"ce-2"),
            ("ce_source", b"/auth/mobile"),
            ("ce_type", b"com.example.auth.logout"),
        ],
    )
    await produce(broker.bootstrap, topic, [structured, binary])
    async with running(settings(broker.bootstrap, topic, legiti.url)):
        await eventually(lambda: len(legiti.accepted) == 2)
    by_user = {r.user_id: r for r in legiti.accepted}
    assert by_user["42"].action_type == "login_failure"
    assert "ce-1" in (by_user["42"].idempotency_key or "")
    assert by_user["ü-7"].action_type == "logout"
    assert "ce-2" in (by_user["ü-7"].idempotency_key or "")
    assert all(r.authorization == "Bearer test-token" for r in legiti.accepted)
    assert all((r.user_agent or "").startswith("legiti-forwarder/") for r in legiti.accepted)


async def test_unicode_user_id_is_sent_exactly(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    user = "用户-ñ-🙂"
    await produce(broker.bootstrap, topic, [native("e-ü", user, "logout")])
    async with running(settings(broker.bootstrap, topic, legiti.url)):
        await eventually(lambda: len(legiti.accepted) == 1)
    assert legiti.accepted[0].user_id == user
