"""The engine: moves each record from the Kafka source to the sink and back to its offset.

    submit(record) → decode → policy → Scheduler (per-user lanes, dedupe)
        → dispatcher: SendGate (halts, Retry-After) → an idle sender
          → SendGate (limits, learned rate) → Sink.send → Outcome
        → delivered / retried later (RetryPolicy) / dead-lettered (DeadLetterWriter)
          / parked in the retry topic (ParkWriter, ParkedLanes)
        → the record's offset finished

Every decision is made by the pure pieces it holds (`Scheduler`, `SendGate`,
`RetryPolicy`, `ParkedLanes`, `decode`); this module only moves jobs between them
and owns the asyncio tasks. One dispatcher task makes every send decision, so no
two coroutines ever race for a rate-limit permit.

What cannot finish is parked (see `core.parking`): a lane whose head has been
failing for `park_after` seconds, or whose head holds back a partition that has
`max_buffered` records read since its committable offset, is moved whole to the
retry topic, unless sending is halted for everyone (an outage, refused
credentials, a Retry-After: parking would not help and nobody is to blame).
Records the forwarder reads back from the retry topic go through the same
pipeline, with the budget and attempts they carry.

After an assignment, a source partition's records wait until the forwarder has
read its retry partition up to a marker it wrote there (`MarkerHolds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial

from forwarder.core import dead_letters as dl
from forwarder.core import parking
from forwarder.core.decode import CloudEventTypes, decode
from forwarder.core.events import TOOLS, ActionType, AuthEvent, Invalid, Origin, SourceRecord
from forwarder.core.offsets import PartitionOffsets
from forwarder.core.parking import Admission, LaneKey, ParkedLanes
from forwarder.core.policy import Policy
from forwarder.core.retry import RetryPolicy
from forwarder.core.scheduler import Job, Partition, Scheduler
from forwarder.engine.dead_letter_writer import DeadLetterWriter, Headers
from forwarder.engine.markers import MarkerHolds
from forwarder.engine.park_writer import ParkedWrite, ParkWriter
from forwarder.engine.shared_keys import KeyGate, LocalKeys
from forwarder.limits.gate import SendGate, Ticket
from forwarder.ops.logs import RepeatSuppressor, event_fields, get_logger
from forwarder.ops.metrics import Metrics, Tally
from forwarder.sinks.base import Sink
from forwarder.sinks.outcome import (
    Delivered,
    Denied,
    Misconfigured,
    Rejected,
    Retry,
    Unauthorized,
    transport_failure,
)

WARNING_PERIOD = 10.0
RESUME_FRACTION = 0.5
REFUSALS_ON_ITS_OWN = 2
"""An event refused (401/403) again this many times, each time after the credentials
were accepted for another event sent no earlier than its previous refused send, is
dead-lettered on its own instead of halting every send again."""
PROBE_LEAD = 0.05
"""How long after the next probe may go a job that just failed as one becomes due again:
long enough for another waiting job to be that probe."""


class Pipeline:
    def __init__(
        self,
        sink: Sink,
        gate: SendGate,
        dead_letters: DeadLetterWriter,
        parker: ParkWriter,
        metrics: Metrics,
        *,
        scheduler: Scheduler,
        retry: RetryPolicy,
        park_after: float,
        policy: Policy,
        cloudevent_types: CloudEventTypes,
        max_in_flight: int,
        max_buffered: int,
        max_buffered_bytes: int,
        keys: KeyGate | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self.gate = gate
        self._dead_letters = dead_letters
        self._parker = parker
        self._retry_topic = parker.store.topic
        self._park_after = park_after
        self._parked: ParkedLanes[Job] = ParkedLanes()
        self._markers = MarkerHolds(parker, self._release_partition)
        self._releases: deque[list[Job]] = deque()
        self._release_tasks: set[asyncio.Task[None]] = set()
        self._taking = asyncio.Lock()
        self._full: set[Partition] = set()
        self._all_full = False
        self._last_delivered_sent_at = float("-inf")
        self._metrics = metrics
        self._scheduler = scheduler
        self._keys: KeyGate = keys or LocalKeys()
        self._keys.bind(self._admit, self._finish_shared_duplicate)
        self._retry_policy = retry
        self._policy = policy
        self._denied_tools: set[str] = set()
        self._types = cloudevent_types
        self.max_in_flight = max_in_flight
        self.max_buffered = max_buffered
        self.max_buffered_bytes = max_buffered_bytes
        self._clock = clock
        self._wall = wall_clock
        self._log = get_logger("forwarder.engine.pipeline")
        self._lines = RepeatSuppressor(WARNING_PERIOD)
        self._partitions: dict[Partition, PartitionOffsets] = {}
        self._in_flight = 0
        metrics.in_flight.set_function(lambda: self._in_flight)
        metrics.users_waiting.set_function(lambda: scheduler.lanes)
        metrics.users_parked.set_function(lambda: len(self._parked))
        self._requests_by_code: dict[str, Tally] = {}
        self._forwarded_by_action = {
            action: metrics.forwarded.labels(action_type=action.value) for action in ActionType
        }
        self._senders: list[asyncio.Task[None]] = []
        self._idle: list[asyncio.Future[tuple[Job, Ticket] | None]] = []
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._settling: set[Partition] = set()
        self._settling_all = False
        self._dispatching = False
        self._dispatcher: asyncio.Task[None] | None = None

    # Lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._dispatching = True
        self._senders = [
            asyncio.create_task(self._sender_loop(), name=f"sender-{number}")
            for number in range(self.max_in_flight)
        ]
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="dispatcher")

    def wake(self) -> None:
        """Something outside changed what may be sent (new permits, new credentials)."""
        self._wake.set()

    async def drain(self, grace: float) -> bool:
        """Finish what a clean stop must: the answers to requests under way, the events
        consumed ahead of delivered ones (so that nothing delivered lies beyond the
        offsets committed next, and the next owner re-sends nothing), and pending
        dead-letter writes; then stop. Returns False if `grace` cut it short."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self._settling_all = True
        settled = await self._settle_until(None, deadline)
        self._dispatching = False
        self._wake.set()
        self._markers.close()
        if self._dispatcher is not None:
            await self._dispatcher
        for handoff in self._idle:
            if not handoff.done():
                handoff.set_result(None)
        self._idle.clear()
        # An answer that comes in meanwhile may start a dead-letter or park write: wait for it.
        while (
            pending := {task for task in self._senders if not task.done()}
            | self._dead_letters.pending
            | self._parker.pending
            | {task for task in self._release_tasks if not task.done()}
        ):
            remaining = deadline - loop.time()
            if remaining > 0:
                await asyncio.wait(pending, timeout=remaining)
                continue
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
            return False
        return settled

    async def settle(self, partitions: set[Partition], within: float) -> bool:
        """Before these partitions are revoked: wait for their requests under way and send
        the events consumed ahead of delivered ones, while other partitions flow on.
        Returns False if `within` seconds ran out first."""
        self._settling |= partitions
        try:
            return await self._settle_until(partitions, asyncio.get_running_loop().time() + within)
        finally:
            self._settling -= partitions

    async def _settle_until(self, partitions: set[Partition] | None, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        self._wake.set()
        while not self._settled(partitions):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    def _settled(self, partitions: set[Partition] | None) -> bool:
        for partition, offsets in self._partitions.items():
            if partitions is not None and partition not in partitions:
                continue
            if offsets.in_flight or not offsets.settled:
                return False
        return True

    def _settling_job(self, job: Job) -> bool:
        """Whether the job's partition is being settled (a revocation or the shutdown)."""
        return self._settling_all or (
            bool(self._settling) and (job.record.topic, job.record.partition) in self._settling
        )

    # Partitions and offsets ------------------------------------------------------

    def assign(self, partitions: Iterable[Partition]) -> None:
        assigned = list(partitions)
        new = [partition for partition in assigned if partition not in self._partitions]
        for partition in assigned:
            self._partitions.setdefault(partition, PartitionOffsets())
        self._markers.assigned(self._partitions, new)

    def revoke(self, partitions: Iterable[Partition]) -> None:
        revoked = {p for p in partitions if p in self._partitions}
        for partition in revoked:
            del self._partitions[partition]
            self._full.discard(partition)
        self._markers.revoked(revoked)
        for job in self._scheduler.cancel(revoked, self._clock()):
            self._finish_duplicate(job)
        self._keys.revoked(revoked)
        self._parker.drop(revoked.__contains__)
        retry_topic = self._retry_topic
        for job in self._parked.forget(
            lambda lane, r: lane[:2] in revoked or (retry_topic, r) in revoked
        ):
            if job.lane[:2] not in revoked:
                self._schedule(job)
        self._wake.set()

    def committable(self) -> dict[Partition, int]:
        """Per partition, the offset up to which every record is finished."""
        return {
            partition: offsets.committable
            for partition, offsets in self._partitions.items()
            if offsets.committable is not None
        }

    @property
    def buffered(self) -> int:
        """Records read and not yet finished: what the pipeline holds in memory."""
        return sum(offsets.unfinished for offsets in self._partitions.values())

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def buffered_bytes(self) -> int:
        return sum(offsets.held_bytes for offsets in self._partitions.values())

    def partitions_to_pause(self) -> set[Partition]:
        """The partitions not to fetch from now, asked before every poll.

        All of them while `max_buffered` records or `max_buffered_bytes` are held in
        memory (until half of both is free again); one whose commit lags `max_buffered`
        records behind what was read (until half of that is committable), after
        parking its oldest record's lane if that one is failing; and those waiting for
        their retry partition's marker. A retry partition that one of those, or a parked
        lane's stragglers, waits for is never paused: reading it ends the wait."""
        buffered, held_bytes = self.buffered, self.buffered_bytes
        self._metrics.buffered.set(buffered)
        limit, resume = self.max_buffered, self.max_buffered * RESUME_FRACTION
        if self._all_full:
            self._all_full = (
                buffered > resume or held_bytes > self.max_buffered_bytes * RESUME_FRACTION
            )
        else:
            self._all_full = buffered >= limit or held_bytes >= self.max_buffered_bytes
        now = self._clock()
        for partition, offsets in self._partitions.items():
            span = offsets.span
            if span >= limit:
                self._full.add(partition)
                self._relieve(partition, offsets, now)
            elif span <= resume:
                self._full.discard(partition)
        paused = set(self._partitions) if self._all_full else set(self._full)
        if self._markers or self._parked:
            paused.update(self._markers.held)
            paused -= self._awaited_retry_partitions()
        return paused

    def _relieve(self, partition: Partition, offsets: PartitionOffsets, now: float) -> None:
        oldest = offsets.oldest_unfinished
        if oldest is None:
            return
        job = self._scheduler.head_at(partition, oldest)
        if (
            job is not None
            and job.first_failure_at is not None
            and not job.in_flight
            and self._may_park(job, now)
        ):
            self._park_lane(job, parking.BUFFER_FULL, now)

    # Intake -------------------------------------------------------------------------

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
            self._admit(job)

    def _admit(self, job: Job) -> None:
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
        self._schedule(job)

    def _schedule(self, job: Job) -> None:
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
        size = _size(record)
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
        if self._markers and partition in self._markers:
            self._markers.keep(partition, record)
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
            self._markers.read(record)
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

    # Parking -------------------------------------------------------------------------

    @staticmethod
    def _source_lane(job: Job) -> LaneKey:
        origin = job.origin
        if origin is None:
            return job.lane
        return (origin.topic, origin.partition, job.event.user_id)

    def _may_park(self, job: Job, now: float) -> bool:
        """Not while sending is halted for everyone, and not without a retry partition."""
        if self.gate.wait(now) > 0 or not self.gate.circuit_closed:
            return False
        return job.origin is not None or self._parker.store.partitions is not None

    def _park_lane(self, job: Job, reason: str, now: float) -> bool:
        """Park the lane whose head is `job`, whose answer is in; False if it cannot be
        parked just now (a copy of its lane still on its way to the retry topic)."""
        if job.origin is not None and not all(
            self._parked.may_park_again(self._source_lane(each))
            for each in self._scheduler.lane_of(job)
        ):
            return False
        job.in_flight = False
        jobs, duplicates = self._scheduler.evict(job.lane, now)
        self._park_jobs(jobs, reason, from_lane=True)
        for duplicate in duplicates:
            self._finish_duplicate(duplicate)
        suppressed = self._lines.allow(f"park:{reason}", now)
        if suppressed is not None:
            self._log.warning(
                "user parked: events moved to the retry topic",
                reason=reason,
                events=len(jobs),
                suppressed=suppressed,
                **self._fields(job),
            )
        self._wake.set()
        return True

    def _park_jobs(self, jobs: list[Job], reason: str, *, from_lane: bool = False) -> None:
        """Write jobs to the retry topic in order; each offset is finished once stored.
        `from_lane`: they were taken out of a lane (read back, they had counted as such)."""
        partitions = self._parker.store.partitions
        for job in jobs:
            lane = self._source_lane(job)
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

    def _release_held(self, lane: LaneKey) -> None:
        released = self._parked.releasable(lane)
        if released:
            self._park_jobs(released, parking.FOLLOWS_PARKED)

    def _left_retry_topic(self, job: Job) -> None:
        """A job read back from the retry topic is finished: its lane may be unparked."""
        lane = self._source_lane(job)
        self._parked.left(lane)
        self._parked.settle(lane)

    def _park_dead_letter(
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
            on_unwritable=partial(self._park_dead_letter, record, offsets),
        )

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

    def _awaited_retry_partitions(self) -> set[Partition]:
        """Retry partitions that must be read for something held to go on: a marker, or
        a parked lane's stragglers."""
        awaited = {(self._retry_topic, r) for r in self._parked.awaited_retry_partitions()}
        return awaited | self._markers.awaited()

    # Dispatch -------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while self._dispatching:
            self._wake.clear()
            try:
                wait = self._dispatch_ready()
            except Exception:  # a bug here must not silently stop all sending
                self._log.exception("dispatcher error; continuing")
                wait = 1.0
            if not self._dispatching:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if wait == float("inf") else wait):
                    await self._wake.wait()

    def _dispatch_ready(self) -> float:
        """Send everything that may go now, oldest first across both tools; return how
        long until something might become sendable without being woken.

        The other tool's oldest event goes ahead only when this tool's own limit
        holds: one tool's limit never blocks the other."""
        gate = self.gate
        while self._dispatching:
            now = self._clock()
            wait = float("inf")
            candidates: list[tuple[int, str, Job]] = []
            for tool in TOOLS:
                job = self._scheduler.peek(tool, now)
                if job is not None:
                    candidates.append((job.seq, tool, job))
                elif (due := self._scheduler.next_due(tool)) is not None:
                    wait = min(wait, due - now)
            if not candidates or not self._sender_ready():
                return max(wait, 0.001)
            halted = gate.wait(now)
            if halted > 0:
                return max(min(wait, halted), 0.001)
            candidates.sort()  # oldest first; sequence numbers are unique, so jobs never compare
            for _, tool, job in candidates:
                if self._settling_job(job) and not job.offsets.finished_after(job.record.offset):
                    # Nothing delivered after it: the next owner reads it again, unsent.
                    self._abandon(self._scheduler.take(tool), now)
                    break
                if tool in self._denied_tools:
                    self._fail(self._scheduler.take(tool), dl.DENIED_BY_POLICY, _DENIED_DETAIL)
                    break
                limit = gate.limit_delay(tool, now)
                if limit <= 0:
                    self._launch(self._scheduler.take(tool), tool, now)
                    break
                if job.limited_since is None:
                    job.limited_since = now
                wait = min(wait, limit)
            else:
                return max(wait, 0.001)
        return float("inf")

    def _sender_ready(self) -> bool:
        """Whether a sender waits for a job; none does when max_in_flight are under way.

        A sender task cancelled from outside while it waited leaves a cancelled
        hand-off behind: it is dropped here, before any job is taken for it."""
        idle = self._idle
        while idle and idle[-1].done():
            idle.pop()
        return bool(idle)

    def _launch(self, job: Job, tool: str, now: float) -> None:
        ticket = self.gate.launch(tool, now)
        self._metrics.rate_limit_delay.observe(
            now - job.limited_since if job.limited_since else 0.0
        )
        job.limited_since = None
        self._in_flight += 1
        job.offsets.in_flight += 1
        self._idle.pop().set_result((job, ticket))

    async def _sender_loop(self) -> None:
        """One of `max_in_flight` long-lived senders, each handed one job at a time.

        A task per send cost the event-loop thread more than the send's own
        bookkeeping (creating and registering the task, its done callback). A sender
        is back in `_idle` before the dispatcher next runs: between the end of
        `_send` and the next `await` nothing yields."""
        loop = asyncio.get_running_loop()
        while self._dispatching:
            handoff: asyncio.Future[tuple[Job, Ticket] | None] = loop.create_future()
            self._idle.append(handoff)
            work = await handoff
            if work is None:  # draining
                return
            try:
                await self._send(*work)
            except Exception:  # a bug must not take a sender away for good, nor an event
                self._log.exception("sender error; continuing")
                job = work[0]
                if job.in_flight:  # no outcome was applied: send it again later
                    self._retry_at(job, self._clock() + self._retry_policy.backoff.delay(1))

    async def _send(self, job: Job, ticket: Ticket) -> None:
        try:
            outcome = await self._sink.send(job.event)
        except Exception as exc:  # a bug must cost a retry, never a lost event
            outcome = transport_failure("error", f"unexpected {exc!r}")
            self._log.exception("unexpected error while sending", **self._fields(job))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # this sender is being stopped
                raise
            # A client cancelled its own work: the event is retried like any failed send.
            outcome = transport_failure("error", "the send was cancelled inside the client")
        finally:
            self.gate.finish(ticket, self._clock())
            self._in_flight -= 1
            job.offsets.in_flight -= 1
            self._wake.set()
            self._progress.set()
        now = self._clock()
        code = outcome.code
        requests = self._requests_by_code.get(code)
        if requests is None:
            requests = self._metrics.sink_requests.labels(code=code)
            self._requests_by_code[code] = requests
        requests.inc()
        self._metrics.sink_duration.observe(now - ticket.sent_at)
        job.attempts += 1
        outcome = self.gate.observe(outcome, ticket, now, self._in_flight, job.event.user_id)
        probe = ticket.probes_credentials or ticket.probes_circuit or ticket.probes_configuration
        if isinstance(outcome, Delivered):
            self._last_delivered_sent_at = max(self._last_delivered_sent_at, ticket.sent_at)
            self._delivered(job, now)
        elif isinstance(outcome, Retry):
            self._retry(job, outcome, now, self._after_next_probe(now) if probe else 0.0)
        elif isinstance(outcome, Unauthorized):
            # Normally not the event's fault: it waits, attempt uncounted, behind the halt.
            job.attempts -= 1
            if not self._refused_on_its_own(job, outcome, ticket):
                self._retry_at(job, now + self._after_next_probe(now))
        elif isinstance(outcome, Misconfigured):
            job.attempts -= 1
            self._retry_at(job, now + (self._after_next_probe(now) if probe else 0.0))
        elif isinstance(outcome, Denied):
            self._denied_tools.add(job.event.action.tool)
            self._fail(job, dl.DENIED_BY_POLICY, outcome.detail)
        else:
            self._rejected(job, outcome)

    # Outcomes ------------------------------------------------------------------------

    def _after_next_probe(self, now: float) -> float:
        """How long a job that just failed as a probe, or opened a halt, waits: until just
        after the next probe may go. The probe is then another waiting job, if there is
        one, so that an event failing for reasons of its own is not probed again and
        again while the halt stays shut for everyone."""
        halted = self.gate.wait(now)
        return (halted if halted != float("inf") else 0.0) + PROBE_LEAD

    def _refused_on_its_own(self, job: Job, outcome: Unauthorized, ticket: Ticket) -> bool:
        """Dead-letter an event that keeps being refused while the same credentials are
        accepted for others; True if it was. A refusal counts when an event sent no
        earlier than the previous refused send was delivered: the credentials worked
        then. Waiting past the next probe after each refusal, the event is not that
        probe while others wait, so it is the others that prove the credentials."""
        if job.refused_at is not None and self._last_delivered_sent_at >= job.refused_at:
            job.refusals += 1
        job.refused_at = ticket.sent_at
        if job.refusals < REFUSALS_ON_ITS_OWN:
            return False
        detail = (
            f"refused ({outcome.code}: {outcome.detail}) {job.refusals} times while the"
            " same credentials were accepted for other events"
        )
        status = int(outcome.code) if outcome.code.isdigit() else None
        self._fail(job, dl.REJECTED, detail, status)
        return True

    def _delivered(self, job: Job, now: float) -> None:
        self._forwarded_by_action[job.event.action].inc()
        latency = self._wall() - job.record.timestamp_ms / 1000.0
        self._metrics.delivery_latency.observe(max(0.0, latency))
        if self._log.is_enabled_for(logging.DEBUG):  # the fields cost more than the no-op call
            self._log.debug("event forwarded", **self._fields(job), attempts=job.attempts)
        duplicates = self._scheduler.complete(job, delivered=True, now=now)
        self._keys.delivered(job, now)
        self._finish(job)
        for duplicate in duplicates:
            self._finish_duplicate(duplicate)

    def _retry(self, job: Job, outcome: Retry, now: float, at_least: float) -> None:
        """Retry later (not sooner than `at_least` seconds), give up (dead letter), or
        park the lane.

        The budget is a wall-clock deadline set at the first failure (or carried in
        from the retry topic), so reading the record again never restarts it."""
        if job.first_failure_at is None:
            job.first_failure_at = now
        limit = self._retry_policy.max_elapsed
        wall = self._wall()
        if limit and job.give_up_at is None:
            job.give_up_at = wall + limit
        if job.give_up_at is not None:
            failing_for = limit - (job.give_up_at - wall)
        else:
            failing_for = now - job.first_failure_at
        delay = self._retry_policy.delay(job.attempts, failing_for, outcome.retry_after)
        if delay is None:
            detail = f"gave up after {job.attempts} attempts; last: {outcome.detail}"
            self._fail(job, dl.RETRIES_EXHAUSTED, detail)
            return
        if not outcome.throttled and self._may_park(job, now):
            offsets = job.offsets
            if now - job.first_failure_at >= self._park_after or (
                # Settling before a revocation or a stop, it would hold back what was
                # delivered after it: parked, it is finished at once.
                self._settling_job(job) and offsets.finished_after(job.record.offset)
            ):
                reason: str | None = parking.STUCK
            elif offsets.span >= self.max_buffered and offsets.oldest_unfinished == (
                job.record.offset
            ):
                reason = parking.BUFFER_FULL
            else:
                reason = None
            if reason is not None and self._park_lane(job, reason, now):
                return
        self._metrics.retries.inc()
        self._log.debug(
            "send failed; will retry",
            **self._fields(job),
            error=outcome.detail,
            attempts=job.attempts,
            retry_in_seconds=round(delay, 3),
        )
        suppressed = self._lines.allow(f"retry:{outcome.code}", now)
        if suppressed is not None and not outcome.throttled:
            self._log.warning(
                "sends failing; retrying with backoff",
                error=outcome.detail,
                suppressed=suppressed,
                **self._fields(job),
            )
        self._retry_at(job, now + max(delay, at_least))

    def _retry_at(self, job: Job, when: float) -> None:
        if job.cancelled:  # its partition was revoked while it was under way: dropped
            self._keys.released(job)
        for duplicate in self._scheduler.retry_at(job, when):
            self._finish_duplicate(duplicate)

    def _rejected(self, job: Job, outcome: Rejected) -> None:
        self._fail(job, dl.REJECTED, outcome.detail, outcome.status, outcome.body)

    def _fail(
        self,
        job: Job,
        reason: str,
        detail: str,
        status: int | None = None,
        body: bytes | None = None,
    ) -> None:
        """Dead-letter a job; its copies may now be sent, since this one never arrived."""
        duplicates = self._scheduler.complete(job, delivered=False, now=self._clock())
        self._keys.released(job)
        if not job.cancelled:
            self._dead_letter(
                job.record,
                job.offsets,
                reason,
                detail,
                job.attempts,
                job.event.key,
                status,
                body,
                origin=job.origin,
            )
            if job.origin is not None:
                self._left_retry_topic(job)
        for duplicate in duplicates:
            self._finish_duplicate(duplicate)

    def _abandon(self, job: Job, now: float) -> None:
        """Give a job up unsent while its partition settles: its offset stays unfinished
        (so it is read again), its key and its lane are released."""
        for duplicate in self._scheduler.complete(job, delivered=False, now=now):
            self._finish_duplicate(duplicate)

    # Finishing -----------------------------------------------------------------------

    def _finish_duplicate(self, job: Job) -> None:
        self._metrics.duplicates.inc()
        if self._log.is_enabled_for(logging.DEBUG):
            self._log.debug("duplicate event not sent again", **self._fields(job))
        self._finish(job)

    def _finish_shared_duplicate(self, job: Job) -> None:
        """A copy another replica (or an earlier process) delivered, as the group knows."""
        self._metrics.duplicates_shared.inc()
        if self._log.is_enabled_for(logging.DEBUG):
            self._log.debug("duplicate event delivered by the group", **self._fields(job))
        self._finish(job)

    def _finish(self, job: Job) -> None:
        if job.cancelled:
            return
        self._finish_offset(job.record, job.offsets)
        if job.origin is not None:
            self._left_retry_topic(job)

    def _finish_offset(self, record: SourceRecord, offsets: PartitionOffsets) -> None:
        offsets.finish(record.offset, _size(record))
        self._progress.set()

    def _dead_letter(
        self,
        record: SourceRecord,
        offsets: PartitionOffsets,
        reason: str,
        detail: str,
        attempts: int,
        key: str | None,
        status: int | None = None,
        body: bytes | None = None,
        *,
        origin: Origin | None = None,
    ) -> None:
        """The offset is finished only once the dead letter is stored (or parked)."""
        self._dead_letters.write(
            record,
            reason,
            detail,
            attempts=attempts,
            key=key,
            status=status,
            body=body,
            origin=origin,
            on_written=partial(self._finish_offset, record, offsets),
            on_unwritable=partial(self._park_dead_letter, record, offsets),
        )

    @staticmethod
    def _fields(job: Job) -> dict[str, object]:
        record = job.record
        return event_fields(record.topic, record.partition, record.offset, job.event.key)


def _size(record: SourceRecord) -> int:
    """What a held record costs in memory, near enough: its value and key."""
    return len(record.value or b"") + len(record.key or b"")


_DENIED_DETAIL = "the gateway denied this tool to an earlier call; not sent again"
