"""The engine: moves each record from the Kafka source to the sink and back to its offset.

    submit(record) → Intake: decode → policy → Scheduler (per-user lanes, dedupe)
        → Dispatch: SendGate (halts, Retry-After) → an idle sender
          → SendGate (limits, learned rate) → Sink.send → Outcome
        → Outcomes: delivered / retried later (RetryPolicy) / dead-lettered
          (DeadLetterWriter) / parked in the retry topic (ParkFlow: ParkWriter, ParkedLanes)
        → the record's offset finished

Every decision is made by the pure pieces it holds (`Scheduler`, `SendGate`,
`RetryPolicy`, `ParkedLanes`, `decode`); the engine's modules only move jobs between
them and own the asyncio tasks. This class wires those modules together (they share
one `Context`), and answers the Kafka source: which partitions are assigned, what is
committable, which partitions to pause. Settling before a revocation and draining
before a stop are `Settle`'s.

What cannot finish is parked (see `core.parking` and `park_flow`). Records the
forwarder reads back from the retry topic go through the same pipeline, with the
budget and attempts they carry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from forwarder.core.decode import CloudEventTypes
from forwarder.core.events import SourceRecord
from forwarder.core.offsets import PartitionOffsets
from forwarder.core.parking import ParkedLanes
from forwarder.core.policy import Policy
from forwarder.core.retry import RetryPolicy
from forwarder.core.scheduler import Job, Partition, Scheduler
from forwarder.engine.context import Context
from forwarder.engine.dead_letter_writer import DeadLetterWriter
from forwarder.engine.dispatch import Dispatch
from forwarder.engine.intake import Intake
from forwarder.engine.outcomes import Outcomes
from forwarder.engine.park_writer import ParkWriter
from forwarder.engine.settle import Settle
from forwarder.engine.shared_keys import KeyGate, LocalKeys
from forwarder.limits.gate import SendGate
from forwarder.ops.logs import RepeatSuppressor, get_logger
from forwarder.ops.metrics import Metrics
from forwarder.sinks.base import Sink

WARNING_PERIOD = 10.0
RESUME_FRACTION = 0.5


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
        self.gate = gate
        self.max_in_flight = max_in_flight
        self.max_buffered = max_buffered
        self.max_buffered_bytes = max_buffered_bytes
        self._metrics = metrics
        self._scheduler = scheduler
        self._keys: KeyGate = keys or LocalKeys()
        self._parker = parker
        self._clock = clock
        self._partitions: dict[Partition, PartitionOffsets] = {}
        self._parked: ParkedLanes[Job] = ParkedLanes()
        self._wake = asyncio.Event()
        context = Context(
            gate=gate,
            dead_letters=dead_letters,
            parker=parker,
            metrics=metrics,
            scheduler=scheduler,
            keys=self._keys,
            clock=clock,
            wall=wall_clock,
            log=get_logger("forwarder.engine.pipeline"),
            lines=RepeatSuppressor(WARNING_PERIOD),
            partitions=self._partitions,
            parked=self._parked,
            wake=self._wake,
            progress=asyncio.Event(),
            denied_tools=set(),
        )
        self._retry_topic = context.retry_topic
        self._settle = Settle(context)
        outcomes = Outcomes(
            context, self._settle, retry=retry, park_after=park_after, max_buffered=max_buffered
        )
        self._finish_duplicate = outcomes.finish_duplicate
        self._park_flow = outcomes.parking
        self._intake = Intake(context, outcomes, policy=policy, cloudevent_types=cloudevent_types)
        self._markers = self._intake.markers
        self._keys.bind(self._intake.admit, outcomes.finish_shared_duplicate)
        self._dispatch = Dispatch(
            context,
            sink,
            outcomes,
            self._settle,
            retry=retry,
            max_in_flight=max_in_flight,
        )
        self._full: set[Partition] = set()
        self._all_full = False
        dispatch, parked = self._dispatch, self._parked
        metrics.in_flight.set_function(lambda: dispatch.in_flight)
        metrics.users_waiting.set_function(lambda: scheduler.lanes)
        metrics.users_parked.set_function(lambda: len(parked))

    # Lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._dispatch.start()

    def wake(self) -> None:
        """Something outside changed what may be sent (new permits, new credentials)."""
        self._wake.set()

    async def drain(self, grace: float) -> bool:
        """Finish what a clean stop must (see `Settle.drain`), then stop. Returns False
        if `grace` cut it short."""
        return await self._settle.drain(grace, self._dispatch, self._intake)

    async def settle(self, partitions: set[Partition], within: float) -> bool:
        """Before these partitions are revoked: wait for their requests under way and send
        the events consumed ahead of delivered ones, while other partitions flow on.
        Returns False if `within` seconds ran out first."""
        return await self._settle.settle(partitions, within)

    # Intake -------------------------------------------------------------------------

    async def submit_batch(self, records: list[SourceRecord]) -> None:
        """A poll batch, in consumption order (see `Intake.submit_batch`)."""
        await self._intake.submit_batch(records)

    def submit(self, record: SourceRecord) -> None:
        """One record, straight to the scheduler (no shared de-duplication)."""
        self._intake.submit(record)

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
                self._intake.schedule(job)
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
        return self._dispatch.in_flight

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
                self._park_flow.relieve(partition, offsets, now)
            elif span <= resume:
                self._full.discard(partition)
        paused = set(self._partitions) if self._all_full else set(self._full)
        if self._markers or self._parked:
            paused.update(self._markers.held)
            paused -= self._awaited_retry_partitions()
        return paused

    def _awaited_retry_partitions(self) -> set[Partition]:
        """Retry partitions that must be read for something held to go on: a marker, or
        a parked lane's stragglers."""
        awaited = {(self._retry_topic, r) for r in self._parked.awaited_retry_partitions()}
        return awaited | self._markers.awaited()
