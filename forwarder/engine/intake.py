"""Intake: each record read, from its offset to a job in the scheduler.

    record → offset tracked → (held while its partition waits for a marker)
      → decode → policy → (shared key gate) → behind its user's parked events,
        or into the scheduler

A record that cannot be sent (undecodable, denied by the policy) is dead-lettered
here; a record of the retry topic is a marker, a parked dead letter, or a parked
event that goes on with the budget and attempts it carries.

After an assignment, a source partition's records wait until the forwarder has
read its retry partition up to a marker it wrote there (`MarkerHolds`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from functools import partial

from forwarder.core import dead_letters as dl
from forwarder.core import parking
from forwarder.core.decode import CloudEventTypes, decode
from forwarder.core.events import AuthEvent, Invalid, Origin, SourceRecord
from forwarder.core.offsets import PartitionOffsets
from forwarder.core.parking import Admission
from forwarder.core.policy import Policy
from forwarder.core.scheduler import Job, Partition
from forwarder.engine.context import Context, record_size
from forwarder.engine.markers import MarkerHolds
from forwarder.engine.outcomes import Outcomes


class Intake:
    def __init__(
        self,
        context: Context,
        outcomes: Outcomes,
        *,
        policy: Policy,
        cloudevent_types: CloudEventTypes,
    ) -> None:
        self._metrics = context.metrics
        self._scheduler = context.scheduler
        self._keys = context.keys
        self._clock = context.clock
        self._log = context.log
        self._wake = context.wake
        self._partitions = context.partitions
        self._parked = context.parked
        self._dead_letters = context.dead_letters
        self._retry_topic = context.retry_topic
        self._denied_tools = context.denied_tools
        self._policy = policy
        self._types = cloudevent_types
        self._dead_letter = outcomes.dead_letter
        self._finish_offset = outcomes.finish_offset
        self._finish_duplicate = outcomes.finish_duplicate
        flow = outcomes.parking
        self._park_jobs = flow.park_jobs
        self._release_held = flow.release_held
        self._park_dead_letter = flow.park_dead_letter
        self._source_lane = flow.source_lane
        self.markers = MarkerHolds(context.parker, self._release_partition)
        self._releases: deque[list[Job]] = deque()
        self._release_tasks: set[asyncio.Task[None]] = set()
        self._taking = asyncio.Lock()

    def releasing(self) -> set[asyncio.Task[None]]:
        """The tasks taking up records a marker released, not yet ended."""
        return {task for task in self._release_tasks if not task.done()}

    async def submit_batch(self, records: list[SourceRecord]) -> None:
        """A poll batch, in consumption order: decoded, then its keys checked with the
        group's shared state (one round trip) before the scheduler sees them. Records a
        marker released since the last batch go first: they were read before."""
        jobs = [job for record in records if (job := self._accept(record)) is not None]
        async with self._taking:
            while self._releases:
                await self._keys.take(self._releases.popleft())
            if jobs:
                await self._keys.take(jobs)

    def submit(self, record: SourceRecord) -> None:
        """One record, straight to the scheduler (no shared de-duplication)."""
        job = self._accept(record)
        if job is not None:
            self.admit(job)

    def admit(self, job: Job) -> None:
        """Hand a job to the scheduler, unless its user is parked: then its event goes
        behind the user's parked ones (the key gate may hand a job over late)."""
        if self._parked and job.origin is None:
            admission = self._parked.from_source(job.lane)
            if admission is Admission.PARK:
                self._park_jobs([job], parking.FOLLOWS_PARKED)
                return
            if admission is Admission.HOLD:
                self._parked.hold(job.lane, job)
                return
        self.schedule(job)

    def schedule(self, job: Job) -> None:
        for duplicate in self._scheduler.admit(job, self._clock()):
            self._finish_duplicate(duplicate)
        self._wake.set()

    def _accept(self, record: SourceRecord) -> Job | None:
        """Track the record's offset, then take it up unless its partition waits for a
        marker; None when there is nothing to schedule (held, dead-lettered, parked)."""
        partition = (record.topic, record.partition)
        offsets = self._partitions.get(partition)
        if offsets is None:
            offsets = self._partitions[partition] = PartitionOffsets()
        size = record_size(record)
        try:
            offsets.track(record.offset, size)
        except ValueError:
            # The consumer went back (an offset reset): what is tracked is stale.
            self._log.warning(
                "partition offset went backwards; tracking it anew",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            offsets = self._partitions[partition] = PartitionOffsets()
            offsets.track(record.offset, size)
        if self.markers and partition in self.markers:
            self.markers.keep(partition, record)
            return None
        return self._take_up(record, offsets)

    def _take_up(self, record: SourceRecord, offsets: PartitionOffsets) -> Job | None:
        """Decode the record and check the policy (counted as consumed when it comes
        from a source topic); a record of the retry topic goes its own way."""
        if record.topic == self._retry_topic:
            return self._take_up_parked(record, offsets)
        self._metrics.consumed.inc()
        event = self._event(record, offsets, None, 0)
        return None if event is None else Job(record, event, offsets)

    def _event(
        self, record: SourceRecord, offsets: PartitionOffsets, origin: Origin | None, attempts: int
    ) -> AuthEvent | None:
        """The record's event, or None when it was dead-lettered instead."""
        decoded = decode(record.value, record.headers, self._types)
        if isinstance(decoded, Invalid):
            self._dead_letter(
                record, offsets, decoded.reason, decoded.detail, attempts, None, origin=origin
            )
            return None
        tool = decoded.action.tool
        policy = self._policy.for_tool(tool)
        if not policy.allowed or tool in self._denied_tools:
            reason = policy.reason if not policy.allowed else "the gateway denied it"
            detail = f"{tool} is denied by the policy: {reason}"
            self._dead_letter(
                record, offsets, dl.DENIED_BY_POLICY, detail, attempts, decoded.key, origin=origin
            )
            return None
        return decoded

    def _take_up_parked(self, record: SourceRecord, offsets: PartitionOffsets) -> Job | None:
        """A record read back from the retry topic: a marker, a parked dead letter, or
        a parked event that goes on with the budget and attempts it carries (the job to
        schedule, unless it is a straggler to park again)."""
        if parking.is_marker(record):
            self._finish_offset(record, offsets)
            self.markers.read(record)
            return None
        copy = parking.read_parked(record)
        if copy is not None and copy.dead_letter:
            headers = parking.dead_letter_headers_of(list(record.headers))
            reason = dict(headers).get("x-forwarder-error-reason", b"").decode()
            self._dead_letters.write_as(
                record,
                headers,
                reason,
                "parked dead letter read back",
                None,
                on_written=partial(self._finish_offset, record, offsets),
                on_unwritable=partial(self._park_dead_letter, record, offsets),
            )
            return None
        origin = copy.origin if copy is not None else None
        attempts = copy.attempts if copy is not None else 0
        event = self._event(record, offsets, origin, attempts)
        if event is None:
            return None
        job = Job(
            record,
            event,
            offsets,
            origin=origin or Origin(record.topic, record.partition, record.offset),
            attempts=attempts,
            give_up_at=copy.give_up_at if copy is not None else None,
        )
        lane = self._source_lane(job)
        if self._parked.from_retry(lane, record.partition, record.offset) is Admission.PARK:
            self._park_jobs([job], parking.FOLLOWS_PARKED)
            taken: Job | None = None
        else:
            taken = job
        self._release_held(lane)
        return taken

    def _release_partition(self, partition: Partition, records: list[SourceRecord]) -> None:
        """A held partition's marker was read back: take up what was held, in order,
        through the key gate before the next batch's records (`submit_batch`)."""
        offsets = self._partitions.get(partition)
        if offsets is None:
            return
        jobs = [job for record in records if (job := self._take_up(record, offsets))]
        if jobs:
            self._releases.append(jobs)
            task = asyncio.create_task(self._take_released(), name="marker-release")
            self._release_tasks.add(task)
            task.add_done_callback(self._release_tasks.discard)

    async def _take_released(self) -> None:
        """Released jobs go through the key gate even when no batch follows soon; one
        taking at a time, so that they go before what is read after them."""
        async with self._taking:
            while self._releases:
                await self._keys.take(self._releases.popleft())
