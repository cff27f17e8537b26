"""Reading Kafka the way an operator's command does: a topic's partitions between two
offsets, the offsets themselves, a group's committed offsets and its members.

Nothing here joins a consumer group or commits, so inspecting dead letters or the
group's state never moves a partition between the forwarder's replicas or changes
where anyone resumes. Only the public Kafka protocol is used, through aiokafka's
consumer and admin clients, so it works against any Kafka-compatible broker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import for_code

from forwarder.config import KafkaSettings
from forwarder.core.events import SourceRecord
from forwarder.kafka.options import client_options
from forwarder.kafka.records import to_record

POLL_TIMEOUT_MS = 200
FETCH_MAX_WAIT_MS = 100
"""A command reads what is there and stops; a fetch need not wait long for more."""
STALL_SECONDS = 60.0
"""How long a read may go without any partition advancing before it gives up."""


class ReadError(RuntimeError):
    """What was asked cannot be read (a topic that does not exist, a read that stalls)."""


@dataclass(frozen=True, slots=True)
class Extent:
    """A partition's offsets: the first still stored and the next to be written."""

    start: int
    end: int

    @property
    def records(self) -> int:
        return max(0, self.end - self.start)


@dataclass(frozen=True, slots=True)
class Member:
    """A group member as the coordinator describes it. `partitions` is None when the
    broker does not report assignments (some Kafka-compatible brokers leave it empty)."""

    member_id: str
    client_id: str
    host: str
    partitions: tuple[tuple[str, int], ...] | None


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    state: str
    protocol: str
    members: tuple[Member, ...]


def decode_assignment(data: bytes) -> tuple[tuple[str, int], ...] | None:
    """The partitions in a consumer-protocol member assignment; None when there is none."""
    if not data:
        return None
    assignment = ConsumerProtocolMemberAssignment.decode(data)
    return tuple(sorted((tp.topic, tp.partition) for tp in assignment.partitions()))


def parse_group(raw: tuple[Any, ...]) -> GroupDescription:
    """One group of a DescribeGroups response (its first six fields are the same in every
    version aiokafka speaks: error, id, state, protocol type, protocol, members)."""
    error_code, group_id, state, _protocol_type, protocol, members = raw[:6]
    if error_code:
        raise for_code(error_code)(f"cannot describe group {group_id}")
    return GroupDescription(
        group_id=group_id,
        state=state,
        protocol=protocol,
        members=tuple(
            Member(
                member_id=member[0],
                client_id=member[1],
                host=member[2],
                partitions=decode_assignment(member[4]),
            )
            for member in members
        ),
    )


class KafkaReader:
    """A consumer outside any group and an admin client, for one command's lifetime."""

    def __init__(self, kafka: KafkaSettings) -> None:
        options = client_options(kafka)
        self._consumer = AIOKafkaConsumer(
            **options,
            group_id=None,
            enable_auto_commit=False,
            # A start offset already deleted by retention reads from the oldest kept record.
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=kafka.max_poll_records,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        self._admin = AIOKafkaAdminClient(**options)

    async def __aenter__(self) -> Self:
        try:
            await self._consumer.start()
            await self._admin.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def partitions(self, topic: str) -> list[int]:
        (described,) = await self._admin.describe_topics([topic])
        if described["error_code"]:
            raise ReadError(f"topic {topic}: {for_code(described['error_code']).__name__}")
        partitions = sorted(p["partition"] for p in described["partitions"])
        if not partitions:
            raise ReadError(f"topic {topic} does not exist")
        return partitions

    async def extents(self, topic: str) -> dict[int, Extent]:
        """Every partition's extent now; what a command reads up to, so that it ends even
        while records keep arriving.

        The end is the one a fetch reports (the last stable offset, which is the high
        watermark outside open transactions) as well as the one ListOffsets answers:
        some Kafka-compatible brokers (the sandbox's Tansu 0.6) answer ListOffsets with
        the start of the last batch plus one, which would stop a read short."""
        tps = [TopicPartition(topic, p) for p in await self.partitions(topic)]
        starts = await self._consumer.beginning_offsets(tps)
        listed = await self._consumer.end_offsets(tps)
        fetched = await self._fetched_ends({tp: max(starts[tp], listed[tp] - 1) for tp in tps})
        return {tp.partition: Extent(starts[tp], max(listed[tp], fetched[tp])) for tp in tps}

    async def _fetched_ends(
        self, positions: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        consumer = self._consumer
        consumer.assign(list(positions))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + STALL_SECONDS
        while True:
            ends = {tp: self._fetched_end(tp) for tp in positions}
            known = {tp: end for tp, end in ends.items() if end is not None}
            if len(known) == len(ends):
                return known
            if time.monotonic() > deadline:
                missing = ", ".join(str(tp.partition) for tp in ends if tp not in known)
                raise ReadError(
                    f"no fetch answered for partitions {missing} within {STALL_SECONDS:.0f}s"
                )
            await consumer.getmany(*positions, timeout_ms=POLL_TIMEOUT_MS)

    def _fetched_end(self, tp: TopicPartition) -> int | None:
        stable = self._consumer.last_stable_offset(tp)
        if stable is not None and stable >= 0:
            return int(stable)
        highwater = self._consumer.highwater(tp)
        return None if highwater is None else int(highwater)

    async def committed(self, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """The group's committed offsets; a partition it never committed is left out."""
        offsets = await self._admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in partitions]
        )
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def describe_group(self, group: str) -> GroupDescription:
        responses = await self._admin.describe_consumer_groups([group])
        for response in responses:
            for raw in response.groups:
                if raw[1] == group:
                    return parse_group(raw)
        raise ReadError(f"the brokers did not describe group {group}")

    async def read(
        self, topic: str, ranges: Mapping[int, tuple[int, int]]
    ) -> AsyncIterator[SourceRecord]:
        """The records of each partition from `start` up to, not including, `end`, in order
        within a partition. Ends when every partition has reached its end; raises ReadError
        if none advances for STALL_SECONDS (brokers gone, or records deleted under it)."""
        consumer = self._consumer
        remaining = {
            TopicPartition(topic, p): end for p, (start, end) in ranges.items() if start < end
        }
        if not remaining:
            return  # (assigning no partitions at all would leave the consumer unable to stop)
        consumer.assign(list(remaining))
        for tp in remaining:
            consumer.seek(tp, ranges[tp.partition][0])
        progress_at = time.monotonic()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=POLL_TIMEOUT_MS)
            for tp, messages in batch.items():
                end = remaining.get(tp)
                if end is None:
                    continue
                for message in messages:
                    if message.offset < end:
                        yield to_record(message)
            moved = False
            for tp in list(remaining):
                if batch.get(tp):
                    moved = True
                if await consumer.position(tp) >= remaining[tp]:
                    del remaining[tp]
                    consumer.pause(tp)
            now = time.monotonic()
            if moved:
                progress_at = now
            elif now - progress_at > STALL_SECONDS:
                left = ", ".join(f"{tp.partition} (to {end})" for tp, end in remaining.items())
                raise ReadError(
                    f"reading {topic} stalled for {STALL_SECONDS:.0f}s; partitions {left}"
                )
