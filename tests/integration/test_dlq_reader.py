"""The Kafka reader the commands use, against the real broker: extents that match what is
stored, reads that stop at the end seen at the start, and a group described as the
coordinator sees it, all without joining any group."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer

from forwarder.kafka.reader import Extent, KafkaReader
from forwarder.sandbox.topics import Outgoing
from forwarder.sandbox.topics import produce as produce_records
from tests.conftest import wait_until
from tests.integration.kafka_helpers import create_topic, unique
from tests.integration.test_dlq import kafka_settings


async def test_extents_count_every_record_even_in_multi_record_batches(broker) -> None:
    topic = await create_topic(broker.bootstrap, unique(), partitions=2)
    await produce_records(
        broker.bootstrap, topic, [Outgoing(b"%d" % i, partition=0) for i in range(7)]
    )
    await produce_records(broker.bootstrap, topic, [Outgoing(b"x", partition=1)])
    async with KafkaReader(kafka_settings(broker.bootstrap, topic)) as reader:
        assert await reader.extents(topic) == {0: Extent(0, 7), 1: Extent(0, 1)}


async def test_a_read_stops_at_the_end_it_was_given_while_records_keep_coming(broker) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    await produce_records(broker.bootstrap, topic, [Outgoing(b"%d" % i, b"k") for i in range(5)])
    async with KafkaReader(kafka_settings(broker.bootstrap, topic)) as reader:
        extent = (await reader.extents(topic))[0]
        await produce_records(broker.bootstrap, topic, [Outgoing(b"later")])
        values = [record.value async for record in reader.read(topic, {0: (1, extent.end)})]
        assert values == [b"1", b"2", b"3", b"4"]
        assert [r.offset async for r in reader.read(topic, {0: (4, 6)})] == [4, 5]
        assert [r async for r in reader.read(topic, {0: (6, 6)})] == []


async def test_a_group_is_described_and_its_offsets_read_without_joining_it(broker) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    group = f"group-{topic}"
    await produce_records(broker.bootstrap, topic, [Outgoing(b"v") for _ in range(3)])
    member = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        client_id="the-member",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    await member.start()
    try:
        await wait_until(lambda: _polled(member), what="the member joined and read")
        await member.commit()
        async with KafkaReader(kafka_settings(broker.bootstrap, topic)) as reader:
            described = await reader.describe_group(group)
            assert described.group_id == group
            assert described.state == "Stable"
            assert [m.member_id.startswith("the-member") for m in described.members] == [True]
            assert await reader.committed(group, topic, [0]) == {0: 3}
            assert await reader.committed(f"{group}-never", topic, [0]) == {}
            unknown = await reader.describe_group(f"{group}-never")
            assert unknown.members == ()
    finally:
        await member.stop()


async def _polled(consumer: AIOKafkaConsumer) -> bool:
    await consumer.getmany(timeout_ms=100)
    return (
        bool(consumer.assignment())
        and await consumer.position(next(iter(consumer.assignment()))) == 3
    )
