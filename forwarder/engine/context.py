"""What every piece of the engine shares, held once so the pieces agree on it.

The pipeline's pieces (intake, dispatch, outcomes, park flow, settling) each copy
the references they use from here when built: a reference read per event is then
one attribute load, as it was when the pipeline was one class. Mutable scalars are
not kept here: each has one owner that the others ask (`Dispatch.in_flight`,
`Settle.settling_job`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from forwarder.core.events import SourceRecord
from forwarder.core.offsets import PartitionOffsets
from forwarder.core.parking import ParkedLanes
from forwarder.core.scheduler import Job, Partition, Scheduler
from forwarder.engine.dead_letter_writer import DeadLetterWriter
from forwarder.engine.park_writer import ParkWriter
from forwarder.engine.shared_keys import KeyGate
from forwarder.limits.gate import SendGate
from forwarder.ops.logs import RepeatSuppressor, event_fields
from forwarder.ops.metrics import Metrics


@dataclass(frozen=True, slots=True)
class Context:
    gate: SendGate
    dead_letters: DeadLetterWriter
    parker: ParkWriter
    metrics: Metrics
    scheduler: Scheduler
    keys: KeyGate
    clock: Callable[[], float]
    wall: Callable[[], float]
    log: Any
    lines: RepeatSuppressor
    """Warnings repeated within a period are counted, not written, by every piece."""
    partitions: dict[Partition, PartitionOffsets]
    """Every assigned (or read) partition's offsets; the pipeline assigns and revokes."""
    parked: ParkedLanes[Job]
    wake: asyncio.Event
    """Set when something may have become sendable: the dispatcher looks again."""
    progress: asyncio.Event
    """Set when an offset was finished or a send answered: settling looks again."""
    denied_tools: set[str]
    """Tools the gateway denied to an earlier call: their events are not sent again."""

    @property
    def retry_topic(self) -> str:
        return self.parker.store.topic


def record_size(record: SourceRecord) -> int:
    """What a held record costs in memory, near enough: its value and key."""
    return len(record.value or b"") + len(record.key or b"")


def job_fields(job: Job) -> dict[str, object]:
    record = job.record
    return event_fields(record.topic, record.partition, record.offset, job.event.key)
