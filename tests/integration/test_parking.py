"""Issue 14, findings 1 and 2, against the real broker and the HTTP stand-in: what cannot
finish holds back only its own user (parked in the retry topic, in order, with its budget),
a dead letter too large is written reduced, the dead-letter topic is watched, and an event
refused on its own does not halt everyone."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from forwarder.core import parking
from forwarder.sandbox.legiti import LegitiStub
from forwarder.sandbox.process import ForwarderProcess
from forwarder.sandbox.settings import sandbox_env
from forwarder.sandbox.topics import create_topic
from tests.conftest import eventually
from tests.factories import native
from tests.integration.kafka_helpers import (
    committable_of,
    committed,
    create_forwarder_topics,
    header,
    metric,
    produce,
    read_all,
    running,
    settings,
    unique,
)


def keys(stub: LegitiStub, user: str | None = None) -> list[str | None]:
    return [r.idempotency_key for r in stub.accepted if user is None or r.user_id == user]


def parked_copies(records: list[Any]) -> list[Any]:
    """Records of the retry topic that are parked events (markers left out)."""
    return [r for r in records if header(r, parking.MARKER) is None]


def event_id(record: Any) -> str:
    return str(orjson.loads(record.value)["event_id"])


# Finding 1a: a dead letter that can never be written ----------------------------------------


async def test_a_poison_record_whose_dead_letter_is_too_large_is_written_reduced(
    broker, legiti
) -> None:
    """A ~1.05 MB record that is not JSON: its dead letter exceeds the producer's 1 MiB
    request limit. Before the fix it was retried forever and held its partition."""
    topic = await create_forwarder_topics(broker.bootstrap, unique("poison"))
    poison = b"\x00not json" + b"x" * 1_100_000
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=4 << 20)
    await producer.start()
    try:
        await producer.send_and_wait(topic, native("before", "u1"))
        await producer.send_and_wait(topic, poison, headers=[("trace", b"t-1")])
        for i in range(20):
            await producer.send_and_wait(topic, native(f"after{i}", f"u{i}"))
    finally:
        await producer.stop()
    config = settings(broker.bootstrap, topic, legiti.url, max_buffered_events="200")
    async with running(config) as forwarder:
        dead = await read_all(broker.bootstrap, f"{topic}.dlq", 1)
        pipeline = forwarder.pipeline
        assert pipeline is not None
        await eventually(lambda: committable_of(pipeline, topic) == {(topic, 0): 22})
    assert len(keys(legiti)) == 21
    (letter,) = dead
    assert header(letter, "x-forwarder-error-reason") == b"invalid_json"
    assert header(letter, "x-forwarder-value-truncated") == str(len(poison)).encode()
    assert letter.value == poison[: 16 * 1024]
    assert header(letter, "trace") == b"t-1"  # small original headers are kept
    assert (
        header(letter, "x-forwarder-source-topic"),
        header(letter, "x-forwarder-source-offset"),
    ) == (
        topic.encode(),
        b"1",
    )
    assert await committed(broker.bootstrap, config.kafka.group_id, topic) == {0: 22}


# Finding 1b: a user Legiti keeps failing ------------------------------------------------------


async def test_a_user_legiti_keeps_failing_is_parked_and_nobody_else_waits(broker, legiti) -> None:
    """5xx for one account only, retried forever (FORWARDER_RETRY_MAX_ELAPSED_SECONDS=0),
    with a buffer of 100 records: before the fix every partition paused once the buffer
    was full and stayed paused. Now the stuck user's events go to the retry topic, in
    order, every other event is delivered and both source partitions are committed."""
    topic = await create_forwarder_topics(broker.bootstrap, unique("stuck"), partitions=2)
    stuck = [native(f"s{i}", "stuck") for i in range(3)]
    first = [stuck[0], *(native(f"a{i}", f"a{i % 40}") for i in range(300)), stuck[1]]
    second = [native(f"b{i}", f"b{i % 40}") for i in range(300)]
    await produce(
        broker.bootstrap,
        topic,
        [*first, *(native(f"c{i}", f"c{i}") for i in range(50)), stuck[2]],
        partition=0,
    )
    await produce(broker.bootstrap, topic, second, partition=1)
    legiti.faults.status_for_user = {"stuck": 503}
    config = settings(
        broker.bootstrap,
        topic,
        legiti.url,
        max_buffered_events="100",
        retry_max_elapsed_seconds="0",
        park_after_seconds="600",  # the full partition parks it, not the clock
        circuit_min_requests="1000",
    )
    others = 300 + 50 + 300
    async with running(config) as forwarder:
        await legiti.wait_for(lambda: len(set(keys(legiti))) == others, timeout=60)
        pipeline = forwarder.pipeline
        assert pipeline is not None
        await eventually(
            lambda: committable_of(pipeline, topic) == {(topic, 0): 353, (topic, 1): 300},
            timeout=30,
            what="both source partitions committed past the stuck user",
        )
        assert metric(forwarder, "forwarder_users_parked") == 1
        assert metric(forwarder, "forwarder_events_parked_total", reason="buffer_full") >= 1
        parked = parked_copies(await read_all(broker.bootstrap, f"{topic}.retry", 4))
        assert [event_id(r) for r in parked][:3] == ["s0", "s1", "s2"]
        assert {header(r, "x-forwarder-source-topic") for r in parked} == {topic.encode()}
        assert keys(legiti, "stuck") == []
        # Legiti takes the account again: its parked events arrive, in their order.
        legiti.faults.status_for_user = {}
        await legiti.wait_for(lambda: len(keys(legiti, "stuck")) == 3, timeout=30)
        await eventually(lambda: metric(forwarder, "forwarder_users_parked") == 0)
    assert keys(legiti, "stuck") == ["s0", "s1", "s2"]
    assert await committed(broker.bootstrap, config.kafka.group_id, topic, 2) == {0: 353, 1: 300}


async def test_a_parked_events_budget_survives_a_restart(broker, legiti) -> None:
    """Finding 1c: the give-up clock must not restart when the record is read again."""
    topic = await create_forwarder_topics(broker.bootstrap, unique("budget"))
    await produce(broker.bootstrap, topic, [native("late", "failing"), native("ok", "u")])
    legiti.faults.status_for_user = {"failing": 503}
    config = settings(
        broker.bootstrap,
        topic,
        legiti.url,
        retry_max_elapsed_seconds="3",
        park_after_seconds="0.3",
        retry_initial_backoff_seconds="0.05",
        retry_max_backoff_seconds="0.1",
    )
    async with running(config):
        (copy,) = parked_copies(await read_all(broker.bootstrap, f"{topic}.retry", 2))
    deadline = int(header(copy, "x-forwarder-give-up-at") or 0) / 1000
    attempts = int(header(copy, "x-forwarder-attempts") or 0)
    assert attempts >= 2
    assert header(copy, "x-forwarder-park-reason") == b"stuck"
    await eventually(lambda: time.time() > deadline, timeout=10, what="the budget ran out")
    sent_before = len([r for r in legiti.requests if r.idempotency_key == "late"])
    async with running(config):
        (dead,) = await read_all(broker.bootstrap, f"{topic}.dlq", 1)
    after_restart = [r for r in legiti.requests if r.idempotency_key == "late"][sent_before:]
    assert len(after_restart) == 1, "retried again after the restart: the budget restarted"
    assert header(dead, "x-forwarder-error-reason") == b"retries_exhausted"
    assert header(dead, "x-forwarder-source-topic") == topic.encode()
    assert header(dead, "x-forwarder-source-offset") == b"0"
    assert header(dead, "x-forwarder-attempts") == str(attempts + 1).encode()
    assert await committed(broker.bootstrap, config.kafka.group_id, topic) == {0: 2}


# Finding 1, the dead-letter topic -------------------------------------------------------------


async def test_a_missing_dead_letter_topic_is_reported_at_start_up(
    broker, legiti, tmp_path
) -> None:
    topic = await create_topic(broker.bootstrap, unique("no-dlq"))
    await create_topic(broker.bootstrap, f"{topic}.retry")
    env = sandbox_env(broker.bootstrap, topic, legiti.url)
    async with ForwarderProcess(env, log_dir=tmp_path) as forwarder:
        await eventually(lambda: bool(forwarder.events("partitions assigned")), timeout=20)
        readiness = await forwarder.readiness()
        assert readiness is not None
        assert readiness[0] == 503
        assert readiness[1]["checks"]["dead_letter_topic"] is False
        assert readiness[1]["checks"]["retry_topic"] is True
        assert await forwarder.metric("forwarder_topic_writable", role="dead_letter") == 0
        lines = [e for e in forwarder.log_lines() if "FORWARDER_DLQ_TOPIC" in str(e["event"])]
        assert len(lines) == 1, lines
        assert lines[0]["level"] == "error"
        assert lines[0]["topic"] == f"{topic}.dlq"
        assert lines[0]["problem"] == "the topic does not exist"
        await create_topic(broker.bootstrap, f"{topic}.dlq")
        await forwarder.wait_ready(within=20)
        assert await forwarder.metric("forwarder_topic_writable", role="dead_letter") == 1


async def test_a_dead_letter_topic_deleted_mid_run_is_reported(broker, legiti) -> None:
    topic = await create_forwarder_topics(broker.bootstrap, unique("deleted-dlq"))
    config = settings(broker.bootstrap, topic, legiti.url)
    async with running(config) as forwarder:
        await eventually(lambda: all(forwarder.readiness().values()), timeout=20)
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([f"{topic}.dlq"])
        finally:
            await admin.close()
        await eventually(lambda: forwarder.readiness()["dead_letter_topic"] is False, timeout=20)
        assert metric(forwarder, "forwarder_topic_writable", role="dead_letter") == 0
        assert forwarder.readiness()["retry_topic"] is True
        await create_topic(broker.bootstrap, f"{topic}.dlq")
        await eventually(lambda: all(forwarder.readiness().values()), timeout=20)


# Finding 2: a 401 that follows one event ------------------------------------------------------


async def test_a_401_that_follows_one_event_is_dead_lettered_and_nobody_else_waits(
    broker, legiti
) -> None:
    """Legiti refuses one account's event with 401 and accepts everyone else's with the
    same token. Before the fix that event was the probe every time: sending stayed halted
    for everyone, forever."""
    topic = await create_forwarder_topics(broker.bootstrap, unique("one-401"))
    legiti.faults.status_for_user = {"odd": 401}
    await produce(broker.bootstrap, topic, [native("odd-0", "odd")])
    config = settings(broker.bootstrap, topic, legiti.url)
    produced = 1
    async with running(config) as forwarder:
        for batch in range(8):  # the stream goes on while that event keeps halting sends
            await eventually(
                lambda: (
                    not forwarder.readiness()["credentials"]
                    or metric(forwarder, "forwarder_events_dead_lettered_total", reason="rejected")
                    > 0
                ),
                timeout=20,
            )
            if metric(forwarder, "forwarder_events_dead_lettered_total", reason="rejected"):
                break
            await produce(
                broker.bootstrap, topic, [native(f"n{batch}-{i}", f"u{i}") for i in range(20)]
            )
            produced += 20
            await eventually(lambda: forwarder.readiness()["credentials"], timeout=20)
        dead_letters = await read_all(broker.bootstrap, f"{topic}.dlq", 1)
        await produce(broker.bootstrap, topic, [native("last", "u-last")])
        produced += 1
        await legiti.wait_for(lambda: len(set(keys(legiti))) == produced - 1, timeout=30)
        await eventually(lambda: forwarder.readiness()["credentials"], timeout=20)
        pipeline = forwarder.pipeline
        assert pipeline is not None
        await eventually(lambda: committable_of(pipeline, topic) == {(topic, 0): produced})
    (letter,) = dead_letters
    assert event_id(letter) == "odd-0"
    assert header(letter, "x-forwarder-error-reason") == b"rejected"
    assert header(letter, "x-forwarder-http-status") == b"401"
    assert "odd-0" not in keys(legiti)
