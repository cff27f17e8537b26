"""Settling before a revocation, and draining before a stop.

Both wait for the requests under way and send the events consumed ahead of delivered
ones, so that nothing delivered lies beyond the offsets committed next and the next
owner re-sends nothing; an event with nothing delivered after it is given up unsent
instead (the dispatcher asks `settling_job`), since the next owner reads it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from forwarder.core.scheduler import Job, Partition
from forwarder.engine.context import Context

if TYPE_CHECKING:
    from forwarder.engine.dispatch import Dispatch
    from forwarder.engine.intake import Intake


class Settle:
    def __init__(self, context: Context) -> None:
        self._partitions = context.partitions
        self._wake = context.wake
        self._progress = context.progress
        self._dead_letters = context.dead_letters
        self._parker = context.parker
        self._settling: set[Partition] = set()
        self._settling_all = False

    async def drain(self, grace: float, dispatch: Dispatch, intake: Intake) -> bool:
        """Finish what a clean stop must: the answers to requests under way, the events
        consumed ahead of delivered ones (so that nothing delivered lies beyond the
        offsets committed next, and the next owner re-sends nothing), and pending
        dead-letter writes; then stop. Returns False if `grace` cut it short."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self._settling_all = True
        settled = await self._settle_until(None, deadline)
        intake.markers.close()
        await dispatch.stop()
        # An answer that comes in meanwhile may start a dead-letter or park write: wait for it.
        while (
            pending := dispatch.running()
            | self._dead_letters.pending
            | self._parker.pending
            | intake.releasing()
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

    def settling_job(self, job: Job) -> bool:
        """Whether the job's partition is being settled (a revocation or the shutdown)."""
        return self._settling_all or (
            bool(self._settling) and (job.record.topic, job.record.partition) in self._settling
        )
