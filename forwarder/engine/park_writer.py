"""Writing parked copies to the retry topic, one lane's copies strictly in order.

A lane's copies must reach the retry partition in the order they are handed over,
so each lane (a queue key) has one task that writes them one at a time: the next
write starts when the previous one is stored. A producer's own batching could
reorder them when one batch fails and a later one succeeds; one at a time cannot.
Parking is rare and per user, so the cost is a round trip per parked record.

A write is retried with jittered backoff until it sticks: there is nowhere else to
put a record that is being parked. A record too large for the retry topic is
handed back (`on_too_large`) to be dead-lettered instead; a marker that cannot be
written within its patience is handed back (`on_given_up`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from forwarder.core.events import SourceRecord
from forwarder.core.retry import Backoff
from forwarder.core.scheduler import Partition
from forwarder.engine.write_errors import TooLarge
from forwarder.ops.logs import RepeatSuppressor, get_logger
from forwarder.ops.metrics import Metrics
from forwarder.ops.topic_health import RETRY, TopicHealth

WARNING_PERIOD = 10.0
WRITE_RETRY = Backoff(initial=0.5, maximum=30.0)


class RetryStore(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def partitions(self) -> int | None:
        """How many partitions the retry topic has; None while that is not known."""

    async def write(
        self, partition: int, record: SourceRecord, headers: list[tuple[str, bytes]]
    ) -> int:
        """Store the record's key and value with these headers in `partition` durably
        (acks=all) and return its offset, or raise (see `write_errors`)."""


@dataclass(slots=True)
class ParkedWrite:
    """One record on its way to the retry topic."""

    partition: int
    record: SourceRecord
    headers: list[tuple[str, bytes]]
    reason: str | None
    """Why it is parked (the `forwarder_events_parked_total` label); None for a marker."""
    source: Partition
    """The partition whose offset the write finishes (dropped if that one is revoked)."""
    on_written: Callable[[int], None]
    on_too_large: Callable[[], None]
    patience: float | None = None
    on_given_up: Callable[[], None] | None = None


class ParkWriter:
    def __init__(
        self,
        store: RetryStore,
        metrics: Metrics,
        health: TopicHealth,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._log = get_logger("forwarder.engine.park_writer")
        self._lines = RepeatSuppressor(WARNING_PERIOD)
        self._queues: dict[Hashable, deque[ParkedWrite]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def write(self, queue: Hashable, write: ParkedWrite) -> None:
        """Write after everything handed over earlier with the same `queue` key."""
        waiting = self._queues.get(queue)
        if waiting is not None:
            waiting.append(write)
            return
        self._queues[queue] = deque((write,))
        task = asyncio.create_task(self._drain(queue), name="park-writer")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def drop(self, revoked: Callable[[Partition], bool]) -> None:
        """Forget the writes not yet started whose source partition was revoked: the
        partition's new owner reads those records again."""
        for waiting in self._queues.values():
            kept = [write for write in waiting if not revoked(write.source)]
            waiting.clear()
            waiting.extend(kept)

    @property
    def pending(self) -> set[asyncio.Task[None]]:
        """Writes under way or queued (a drain waits for them)."""
        return {task for task in self._tasks if not task.done()}

    async def _drain(self, queue: Hashable) -> None:
        waiting = self._queues[queue]
        try:
            while waiting:
                await self._write(waiting.popleft())
        finally:
            del self._queues[queue]

    async def _write(self, write: ParkedWrite) -> None:
        started = self._clock()
        attempt = 0
        while True:
            try:
                offset = await self.store.write(write.partition, write.record, write.headers)
            except TooLarge as exc:
                self._log.error(
                    "record too large for the retry topic; dead-lettering it instead",
                    error=repr(exc),
                    **self._fields(write),
                )
                write.on_too_large()
                return
            except Exception as exc:
                attempt += 1
                now = self._clock()
                self._health.wrote(RETRY, repr(exc), now)
                if write.patience is not None and now - started >= write.patience:
                    if write.on_given_up is not None:
                        write.on_given_up()
                    return
                if self._lines.allow("retry-write", now) is not None:
                    self._log.error(
                        "cannot write to the retry topic; will retry",
                        error=repr(exc),
                        **self._fields(write),
                    )
                await asyncio.sleep(WRITE_RETRY.delay(attempt))
                continue
            self._health.wrote(RETRY, None, self._clock())
            if write.reason is not None:
                self._metrics.parked.labels(reason=write.reason).inc()
            write.on_written(offset)
            return

    def _fields(self, write: ParkedWrite) -> dict[str, object]:
        record = write.record
        return {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "retry_topic": self.store.topic,
            "retry_partition": write.partition,
        }
