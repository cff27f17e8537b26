"""Which event may be sent next: per-user order, one copy of a key at a time.

Events wait in *lanes*, one per (topic, partition, user_id); only a lane's head
may be sent, and it stays the head while it is retried, so a user's later events
wait for it and nobody else's do. A head whose key is already claimed by another
event (a copy still in flight, or retrying) parks until that copy ends: if it was
delivered the parked copy is a duplicate, if it was dead-lettered the parked copy
goes out. Keys delivered earlier are found in the `DeliveredWindow`.

Everything here is synchronous and clock-free: the pipeline passes `now` in and
acts on what comes back, which is what lets the tests drive every interleaving.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from forwarder.core.dedupe import DeliveredWindow
from forwarder.core.events import TOOLS, AuthEvent, SourceRecord
from forwarder.core.offsets import PartitionOffsets

Partition = tuple[str, int]
LaneKey = tuple[str, int, str]


@dataclass(eq=False, slots=True)
class Job:
    """One decoded record on its way to Legiti."""

    record: SourceRecord
    event: AuthEvent
    offsets: PartitionOffsets
    attempts: int = 0
    first_failure_at: float | None = None
    limited_since: float | None = None
    in_flight: bool = False
    cancelled: bool = False
    seq: int = 0

    @property
    def lane(self) -> LaneKey:
        return (self.record.topic, self.record.partition, self.event.user_id)


class Scheduler:
    def __init__(self, delivered: DeliveredWindow) -> None:
        self.delivered = delivered
        self._lanes: dict[LaneKey, deque[Job]] = {}
        self._claims: dict[str, Job] = {}
        self._parked: dict[str, deque[Job]] = {}
        self._ready: dict[str, list[tuple[int, Job]]] = {tool: [] for tool in TOOLS}
        self._retries: dict[str, list[tuple[float, int, Job]]] = {tool: [] for tool in TOOLS}
        self._sequence = itertools.count()

    # Admission and completion -------------------------------------------------

    def admit(self, job: Job, now: float) -> list[Job]:
        """Queue a job behind its user's earlier events; returns jobs finished as duplicates."""
        job.seq = next(self._sequence)
        lane_key = job.lane
        lane = self._lanes.get(lane_key)
        if lane is None:
            lane = self._lanes[lane_key] = deque()
        lane.append(job)
        duplicates: list[Job] = []
        if len(lane) == 1:
            self._activate(lane_key, now, duplicates)
        return duplicates

    def complete(self, job: Job, *, delivered: bool, now: float) -> list[Job]:
        """The job is finished (delivered or dead-lettered); returns jobs that thereby
        became duplicates. Its lane moves on and parked copies of its key are settled."""
        job.in_flight = False
        key = job.event.key
        if delivered:
            self.delivered.add(key, now)
        duplicates: list[Job] = []
        if self._claims.get(key) is job:
            del self._claims[key]
            self._settle_parked(key, now, duplicates)
        if not job.cancelled:
            self._advance(job.lane, now, duplicates)
        return duplicates

    def _settle_parked(self, key: str, now: float, duplicates: list[Job]) -> None:
        parked = self._parked.get(key)
        while parked:
            waiter = parked.popleft()
            if waiter.cancelled:
                continue
            if self.delivered.contains(key, now):
                duplicates.append(waiter)
                self._advance(waiter.lane, now, duplicates)
            else:
                self._claim(waiter)
                break
        if parked is not None and not parked:
            del self._parked[key]

    def _advance(self, lane_key: LaneKey, now: float, duplicates: list[Job]) -> None:
        lane = self._lanes[lane_key]
        lane.popleft()
        if lane:
            self._activate(lane_key, now, duplicates)
        else:
            del self._lanes[lane_key]

    def _activate(self, lane_key: LaneKey, now: float, duplicates: list[Job]) -> None:
        """Make the lane's head sendable, skipping heads that are duplicates."""
        lane = self._lanes[lane_key]
        while lane:
            head = lane[0]
            key = head.event.key
            if self.delivered.contains(key, now):
                duplicates.append(head)
                lane.popleft()
                continue
            if key in self._claims:
                self._parked.setdefault(key, deque()).append(head)
                return
            self._claim(head)
            return
        del self._lanes[lane_key]

    def _claim(self, job: Job) -> None:
        self._claims[job.event.key] = job
        heapq.heappush(self._ready[job.event.action.tool], (job.seq, job))

    # Dispatch ------------------------------------------------------------------

    def peek(self, tool: str, now: float) -> Job | None:
        """The oldest job of this tool (in consumption order) that may go now, or None.

        Oldest first, not round-robin over users, keeps the committable prefix
        close behind what was delivered, which bounds what a crash re-sends."""
        retries, ready = self._retries[tool], self._ready[tool]
        while retries and retries[0][0] <= now:
            _, seq, job = heapq.heappop(retries)
            heapq.heappush(ready, (seq, job))
        while ready and ready[0][1].cancelled:
            heapq.heappop(ready)
        return ready[0][1] if ready else None

    def take(self, tool: str) -> Job:
        """Remove and return what `peek` returned; the job is now in flight."""
        job = heapq.heappop(self._ready[tool])[1]
        job.in_flight = True
        return job

    def next_due(self, tool: str) -> float | None:
        """When the earliest waiting retry of this tool becomes due."""
        retries = self._retries[tool]
        return retries[0][0] if retries else None

    def retry_at(self, job: Job, when: float) -> list[Job]:
        """The job keeps its place at the head of its lane and its claim on the key.

        A job cancelled while in flight is not retried (its partition's owner reads
        it again): it ends as a failed one, releasing its key, and the copies that
        thereby became duplicates are returned. Otherwise nothing is returned."""
        if job.cancelled:
            return self.complete(job, delivered=False, now=when)
        job.in_flight = False
        heapq.heappush(self._retries[job.event.action.tool], (when, job.seq, job))
        return []

    # Rebalances ----------------------------------------------------------------

    def cancel(self, partitions: Iterable[Partition], now: float) -> list[Job]:
        """Forget every job of these partitions (they were revoked; their new owner
        reads them again from the committed offset). Returns the copies elsewhere
        that their release settled as duplicates.

        A cancelled job that is in flight keeps its claim until its answer comes,
        so a copy of it elsewhere is still never sent at the same time."""
        revoked = set(partitions)
        cancelled: list[Job] = []
        for lane_key in [key for key in self._lanes if key[:2] in revoked]:
            for job in self._lanes.pop(lane_key):
                job.cancelled = True
                cancelled.append(job)
        duplicates: list[Job] = []
        for job in cancelled:
            key = job.event.key
            if not job.in_flight and self._claims.get(key) is job:
                del self._claims[key]
                self._settle_parked(key, now, duplicates)
        return duplicates

    @property
    def lanes(self) -> int:
        """Users with events waiting or in flight (the `forwarder_users_waiting` gauge)."""
        return len(self._lanes)
