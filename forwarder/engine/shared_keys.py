"""Which decoded events this replica may hand to its scheduler: the group's de-duplication.

Without shared state (`LocalKeys`) every event goes straight to the scheduler, whose
window of delivered keys is this process's memory. With Redis (`SharedKeys`) a poll
batch's keys are claimed in one round trip first (`forwarder.shared.dedupe`):

- delivered by any replica within the TTL: finished as a duplicate (scope `shared`);
- claimed by this replica (now or before): handed to the scheduler;
- claimed by another replica (in flight there, or the claim of one that died and has
  not lapsed yet): held back, with every later event of the same user in the same
  partition (their order is kept), and asked about again every `recheck` seconds
  until the other replica's outcome is known;
- Redis unreachable: handed to the scheduler (local de-duplication only).

Outcomes go back to the store: a delivery marks the key for the group, a dead letter
or a job dropped at a rebalance releases the claim so that a copy elsewhere may go.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Collection
from typing import Protocol

from forwarder.core.scheduler import Job, LaneKey, Partition
from forwarder.shared.dedupe import Claim, SharedDedupe

Admit = Callable[[Job], None]


class KeyGate(Protocol):
    def bind(self, admit: Admit, duplicate: Admit) -> None:
        """Where jobs go: to the scheduler (`admit`), or finished as duplicates the
        group knew of (`duplicate`)."""

    async def take(self, jobs: list[Job]) -> None:
        """A poll batch's decoded jobs, in consumption order."""

    def delivered(self, job: Job, now: float) -> None: ...

    def released(self, job: Job) -> None:
        """The job ends without a delivery (dead-lettered, or dropped at a rebalance)."""

    def revoked(self, partitions: Collection[Partition]) -> None: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class LocalKeys:
    """No shared state: the scheduler's own window is the only memory of keys."""

    def __init__(self) -> None:
        self._admit: Admit = _unbound

    def bind(self, admit: Admit, duplicate: Admit) -> None:
        self._admit = admit

    async def take(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._admit(job)

    def delivered(self, job: Job, now: float) -> None:
        """Remembered by the scheduler's window."""

    def released(self, job: Job) -> None:
        """Nothing is claimed outside this process."""

    def revoked(self, partitions: Collection[Partition]) -> None:
        """Nothing is held here."""

    async def start(self) -> None:
        """Nothing runs in the background."""

    async def aclose(self) -> None:
        """Nothing to release."""


class SharedKeys:
    def __init__(self, store: SharedDedupe, recheck: float = 0.5) -> None:
        self._store = store
        self._recheck = recheck
        self._admit: Admit = _unbound
        self._duplicate: Admit = _unbound
        self._held: dict[LaneKey, deque[Job]] = {}
        """Lanes waiting behind a key another replica holds, in consumption order."""
        self._mine: dict[str, list[Job]] = {}
        """Keys this replica claimed, with its jobs of each that are not finished."""
        self._closing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def bind(self, admit: Admit, duplicate: Admit) -> None:
        self._admit, self._duplicate = admit, duplicate

    async def take(self, jobs: list[Job]) -> None:
        fresh = [job for job in jobs if job.lane not in self._held]
        claims = await self._store.claim([job.event.key for job in fresh]) if fresh else {}
        for job in jobs:
            held = self._held.get(job.lane)
            if held is not None:
                held.append(job)
            else:
                self._settle(job, None if claims is None else claims[job.event.key])

    def _settle(self, job: Job, claim: Claim | None) -> None:
        if claim is Claim.BUSY:
            self._held[job.lane] = deque([job])
            self._wake.set()
        elif claim is Claim.DELIVERED:
            self._duplicate(job)
        else:
            if claim is Claim.MINE:
                self._mine.setdefault(job.event.key, []).append(job)
            self._admit(job)

    # Outcomes -----------------------------------------------------------------------

    def delivered(self, job: Job, now: float) -> None:
        if self._mine.pop(job.event.key, None) is not None:
            self._store.delivered(job.event.key, now)

    def released(self, job: Job) -> None:
        key = job.event.key
        jobs = self._mine.get(key)
        if jobs is None or job not in jobs:
            return
        jobs.remove(job)
        if not jobs:  # no other copy here will send it: a copy elsewhere may
            del self._mine[key]
            self._store.release(key)

    def revoked(self, partitions: Collection[Partition]) -> None:
        """Jobs of revoked partitions that will not be sent give their claims up, so the
        partitions' new owner need not wait for them to lapse."""
        gone = set(partitions)
        for lane_key in [lane for lane in self._held if lane[:2] in gone]:
            for job in self._held.pop(lane_key):
                if job.event.key not in self._mine:
                    self._store.release(job.event.key)
        for jobs in list(self._mine.values()):
            for job in [job for job in jobs if job.lane[:2] in gone and not job.in_flight]:
                self.released(job)

    # The recheck task ---------------------------------------------------------------

    async def start(self) -> None:
        await self._store.start()
        self._task = asyncio.create_task(self._run(), name="shared-keys")

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._store.aclose()

    async def _run(self) -> None:
        while not self._closing:
            if not self._held:
                await self._wake.wait()
                self._wake.clear()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._recheck):
                    await self._wake.wait()
            self._wake.clear()
            if self._held and not self._closing:
                await self._ask_again()

    async def _ask_again(self) -> None:
        """One round trip for every held job; each lane moves on up to its first job
        whose key another replica still holds."""
        asked = [job for lane in self._held.values() for job in lane]
        claims = await self._store.claim([job.event.key for job in asked])
        seen = {id(job) for job in asked}
        for lane_key in list(self._held):
            lane = self._held.get(lane_key)
            while lane and id(lane[0]) in seen:
                claim = None if claims is None else claims[lane[0].event.key]
                if claim is Claim.BUSY:
                    break
                self._settle(lane.popleft(), claim)
            if lane is not None and not lane:
                del self._held[lane_key]


def _unbound(job: Job) -> None:
    raise RuntimeError("the key gate is not bound to a pipeline")
