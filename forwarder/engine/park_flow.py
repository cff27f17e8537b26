"""Parking, as the engine does it (what to park and when is decided in `core.parking`).

A lane whose head has been failing for `park_after` seconds, or whose head holds back
a partition that has `max_buffered` records read since its committable offset, is
moved whole to the retry topic (`ParkWriter`), unless sending is halted for everyone
(an outage, refused credentials, a Retry-After: parking would not help and nobody is
to blame). Its user's later events follow it there until the lane is unparked; a
dead letter that cannot be written is parked too, and written again when read back.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from forwarder.core import dead_letters as dl
from forwarder.core import parking
from forwarder.core.events import Origin, SourceRecord
from forwarder.core.offsets import PartitionOffsets
from forwarder.core.parking import LaneKey
from forwarder.core.scheduler import Job, Partition
from forwarder.engine.context import Context, job_fields
from forwarder.engine.dead_letter_writer import Headers
from forwarder.engine.park_writer import ParkedWrite

if TYPE_CHECKING:
    from forwarder.engine.outcomes import Outcomes


class ParkFlow:
    def __init__(self, context: Context, outcomes: Outcomes) -> None:
        self._gate = context.gate
        self._parker = context.parker
        self._dead_letters = context.dead_letters
        self._retry_topic = context.retry_topic
        self._parked = context.parked
        self._scheduler = context.scheduler
        self._keys = context.keys
        self._log = context.log
        self._lines = context.lines
        self._wake = context.wake
        self._finish_offset = outcomes.finish_offset
        self._finish_duplicate = outcomes.finish_duplicate
        self._dead_letter = outcomes.dead_letter

    @staticmethod
    def source_lane(job: Job) -> LaneKey:
        origin = job.origin
        if origin is None:
            return job.lane
        return (origin.topic, origin.partition, job.event.user_id)

    def may_park(self, job: Job, now: float) -> bool:
        """Not while sending is halted for everyone, and not without a retry partition."""
        if self._gate.wait(now) > 0 or not self._gate.circuit_closed:
            return False
        return job.origin is not None or self._parker.store.partitions is not None

    def park_lane(self, job: Job, reason: str, now: float) -> bool:
        """Park the lane whose head is `job`, whose answer is in; False if it cannot be
        parked just now (a copy of its lane still on its way to the retry topic)."""
        if job.origin is not None and not all(
            self._parked.may_park_again(self.source_lane(each))
            for each in self._scheduler.lane_of(job)
        ):
            return False
        job.in_flight = False
        jobs, duplicates = self._scheduler.evict(job.lane, now)
        self.park_jobs(jobs, reason, from_lane=True)
        for duplicate in duplicates:
            self._finish_duplicate(duplicate)
        suppressed = self._lines.allow(f"park:{reason}", now)
        if suppressed is not None:
            self._log.warning(
                "user parked: events moved to the retry topic",
                reason=reason,
                events=len(jobs),
                suppressed=suppressed,
                **job_fields(job),
            )
        self._wake.set()
        return True

    def park_jobs(self, jobs: list[Job], reason: str, *, from_lane: bool = False) -> None:
        """Write jobs to the retry topic in order; each offset is finished once stored.
        `from_lane`: they were taken out of a lane (read back, they had counted as such)."""
        partitions = self._parker.store.partitions
        for job in jobs:
            lane = self.source_lane(job)
            if job.origin is None:
                assert partitions is not None  # checked by _may_park before the first park
                retry_partition = parking.retry_partition(job.record.partition, partitions)
                origin = Origin(job.record.topic, job.record.partition, job.record.offset)
            else:
                retry_partition, origin = job.record.partition, job.origin
                if from_lane:
                    self._parked.parking_again(lane)
            if from_lane:  # its claim on the key ends here; the copy claims it when read back
                self._keys.released(job)
            job.cancelled = True
            self._parked.writing(lane, retry_partition)
            headers = parking.parked_headers(
                job.record,
                origin,
                reason=reason,
                attempts=job.attempts,
                give_up_at=job.give_up_at,
            )
            self._parker.write(
                lane,
                ParkedWrite(
                    retry_partition,
                    job.record,
                    headers,
                    reason,
                    (job.record.topic, job.record.partition),
                    on_written=partial(self._parked_stored, job, lane),
                    on_too_large=partial(self._park_too_large, job, lane),
                ),
            )

    def _parked_stored(self, job: Job, lane: LaneKey, offset: int) -> None:
        self._parked.written(lane, offset)
        self._finish_offset(job.record, job.offsets)
        self._parked.settle(lane)

    def _park_too_large(self, job: Job, lane: LaneKey) -> None:
        self._parked.written(lane, None)
        self._dead_letter(
            job.record,
            job.offsets,
            dl.RETRIES_EXHAUSTED,
            "could not be delivered, and is too large for the retry topic to be parked",
            job.attempts,
            job.event.key,
            origin=job.origin,
        )
        self._parked.settle(lane)

    def release_held(self, lane: LaneKey) -> None:
        released = self._parked.releasable(lane)
        if released:
            self.park_jobs(released, parking.FOLLOWS_PARKED)

    def left_retry_topic(self, job: Job) -> None:
        """A job read back from the retry topic is finished: its lane may be unparked."""
        lane = self.source_lane(job)
        self._parked.left(lane)
        self._parked.settle(lane)

    def park_dead_letter(
        self, record: SourceRecord, offsets: PartitionOffsets, tried: SourceRecord, headers: Headers
    ) -> None:
        """A dead letter that cannot be written goes to the retry topic, and is written
        to the dead-letter topic again when it is read back."""
        partitions = self._parker.store.partitions
        if record.topic == self._retry_topic:
            retry_partition: int | None = record.partition
        elif partitions is not None:
            retry_partition = parking.retry_partition(record.partition, partitions)
        else:
            retry_partition = None
        if retry_partition is None:  # nowhere to park it: keep trying the dead-letter topic
            self._rewrite_dead_letter(record, offsets, tried, headers)
            return
        self._parker.write(
            ("dead letters", record.topic, record.partition),
            ParkedWrite(
                retry_partition,
                tried,
                parking.parked_dead_letter_headers(headers),
                parking.DEAD_LETTER,
                (record.topic, record.partition),
                on_written=lambda _offset: self._finish_offset(record, offsets),
                on_too_large=partial(self._rewrite_dead_letter, record, offsets, tried, headers),
            ),
        )

    def _rewrite_dead_letter(
        self, record: SourceRecord, offsets: PartitionOffsets, tried: SourceRecord, headers: Headers
    ) -> None:
        reason = dict(headers).get("x-forwarder-error-reason", b"").decode()
        self._dead_letters.write_as(
            tried,
            headers,
            reason,
            "dead letter written again",
            None,
            on_written=partial(self._finish_offset, record, offsets),
            on_unwritable=partial(self.park_dead_letter, record, offsets),
        )

    def relieve(self, partition: Partition, offsets: PartitionOffsets, now: float) -> None:
        oldest = offsets.oldest_unfinished
        if oldest is None:
            return
        job = self._scheduler.head_at(partition, oldest)
        if (
            job is not None
            and job.first_failure_at is not None
            and not job.in_flight
            and self.may_park(job, now)
        ):
            self.park_lane(job, parking.BUFFER_FULL, now)
