"""Holding a newly assigned source partition until its retry partition has been read.

After an assignment the forwarder does not know which users of a source partition
have events parked in its retry partition (an earlier run, or another member, parked
them). It writes a marker to the retry partition and holds the source partition's
records until it reads the marker back: by then every copy parked before is read
and known (`core.parking.ParkedLanes`), and a parked user's new events are parked
behind its copies instead of overtaking them.

A marker that cannot be written within `MARKER_PATIENCE`, or is not read back within
`MARKER_READ_PATIENCE` of being written (a consumer that started at the end of a new
group's retry partition never reads it), releases its partitions with a warning: the
order of a parked user's new events is then not guaranteed, but nothing waits forever.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Iterable
from functools import partial

from forwarder.core import parking
from forwarder.core.events import SourceRecord
from forwarder.core.scheduler import Partition
from forwarder.engine.park_writer import ParkedWrite, ParkWriter
from forwarder.ops.logs import get_logger

MARKER_PATIENCE = 10.0
MARKER_READ_PATIENCE = 60.0


class MarkerHolds:
    """`release(partition, records)` takes up a source partition's held records."""

    def __init__(
        self, parker: ParkWriter, release: Callable[[Partition, list[SourceRecord]], None]
    ) -> None:
        self._parker = parker
        self._topic = parker.store.topic
        self._release = release
        self._holds: dict[Partition, str] = {}
        self._held: dict[Partition, list[SourceRecord]] = {}
        self._names = (f"{uuid.uuid4().hex[:12]}-{number}" for number in itertools.count())
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._log = get_logger("forwarder.engine.markers")

    def __bool__(self) -> bool:
        return bool(self._holds)

    def __contains__(self, partition: object) -> bool:
        return partition in self._holds

    @property
    def held(self) -> set[Partition]:
        return set(self._holds)

    def keep(self, partition: Partition, record: SourceRecord) -> None:
        self._held[partition].append(record)

    def assigned(self, owned: Iterable[Partition], new: Iterable[Partition]) -> None:
        """Hold the newly assigned source partitions, and those whose retry partition is
        newly assigned, until a marker written now to that retry partition is read."""
        partitions = self._parker.store.partitions
        new = set(new)
        if partitions is None or not new:
            return
        owned = set(owned)
        new_retry = {p for t, p in new if t == self._topic}
        owned_retry = {p for t, p in owned if t == self._topic}
        markers: dict[int, str] = {}
        for source in owned:
            if source[0] == self._topic:
                continue
            retry_partition = parking.retry_partition(source[1], partitions)
            if source not in new and retry_partition not in new_retry:
                continue
            if retry_partition not in owned_retry:
                self._log.warning(
                    "retry partition consumed by another member: per-user order of parked"
                    " events is not kept for this partition (give the retry topic as many"
                    " partitions as the source topic)",
                    topic=source[0],
                    partition=source[1],
                    retry_partition=retry_partition,
                )
                continue
            marker = markers.get(retry_partition)
            if marker is None:
                marker = markers[retry_partition] = next(self._names)
                self._write(retry_partition, marker)
            self._holds[source] = marker
            self._held.setdefault(source, [])

    def read(self, record: SourceRecord) -> None:
        """A marker was read back (ours, or an earlier member's: then nothing waits on it)."""
        for name, value in record.headers:
            if name == parking.MARKER:
                self._end(value.decode("utf-8", "replace"))

    def revoked(self, partitions: set[Partition]) -> None:
        for partition in partitions:
            self._holds.pop(partition, None)
            self._held.pop(partition, None)

    def awaited(self) -> set[Partition]:
        """Retry partitions a hold waits to read (never to be paused)."""
        partitions = self._parker.store.partitions
        if partitions is None:
            return set()
        return {
            (self._topic, parking.retry_partition(source[1], partitions)) for source in self._holds
        }

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _write(self, retry_partition: int, marker: str) -> None:
        record = SourceRecord(self._topic, retry_partition, -1, None, marker.encode(), (), 0)
        self._parker.write(
            ("marker", retry_partition),
            ParkedWrite(
                retry_partition,
                record,
                [(parking.MARKER, marker.encode())],
                None,
                (self._topic, retry_partition),
                on_written=lambda _offset: self._written(marker),
                on_too_large=partial(self._end, marker),
                patience=MARKER_PATIENCE,
                on_given_up=partial(self._give_up, marker, "cannot write a marker to"),
            ),
        )

    def _written(self, marker: str) -> None:
        if marker in self._holds.values():
            self._timers[marker] = asyncio.get_running_loop().call_later(
                MARKER_READ_PATIENCE,
                partial(self._give_up, marker, "did not read back in time a marker written to"),
            )

    def _give_up(self, marker: str, what: str) -> None:
        self._log.warning(
            f"{what} the retry topic; reading the source partitions without it"
            " (a parked user's new events may overtake its parked ones)",
            retry_topic=self._topic,
        )
        self._end(marker)

    def _end(self, marker: str) -> None:
        timer = self._timers.pop(marker, None)
        if timer is not None:
            timer.cancel()
        for source, awaited in list(self._holds.items()):
            if awaited == marker:
                del self._holds[source]
                self._release(source, self._held.pop(source, []))
