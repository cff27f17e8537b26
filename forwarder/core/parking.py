"""Parking: moving what cannot finish out of its partition, into the retry topic.

Kafka keeps one committed offset per partition, so a record that cannot finish
(a user whose events Legiti keeps failing, a dead letter that cannot be written)
would hold its partition's commit, and with it the buffer, for as long as it
fails. Parking writes such a user's pending events, in order, to the retry topic
(acks=all) and only then finishes their source offsets: the source partition moves
on, and the retry topic, which the forwarder also consumes, brings the events back.

A parked copy is the original record (key, value and headers byte for byte) plus
`x-forwarder-*` headers: where it was first read, how often it was sent, and the
wall-clock end of its retry budget, so that neither a restart nor a rebalance
restarts that budget.

Per-user order is kept by `ParkedLanes`. While a lane (a user in a source
partition) has copies in the retry topic that are not finished, its new events
from the source are parked behind them instead of being sent. Copies read back
from the retry topic are sent in the order they were written, and when they get
stuck there they are parked again, at the end of the retry partition: any of the
lane's copies still unread before that point (*stragglers*) are moved behind them
as they are read, and the lane's new source events wait in memory until the last
straggler has been read. The rules need every copy of a lane to be written and
read by one forwarder, which is why a lane's copies go to the retry partition
with the number of its source partition (modulo the retry topic's size), and
the consumer assigns equal partition numbers of all its topics to one member.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, NamedTuple, TypeVar

from forwarder.core.dead_letters import (
    ATTEMPTS_HEADER,
    HEADER_PREFIX,
    REASON_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
    origin_headers,
    original_headers,
)
from forwarder.core.events import Origin, SourceRecord

LaneKey = tuple[str, int, str]
T = TypeVar("T")

PARK_REASON = "x-forwarder-park-reason"
GIVE_UP_AT = "x-forwarder-give-up-at"
"""The wall-clock end of the retry budget, in Unix milliseconds (absent: none)."""
MARKER = "x-forwarder-marker"
"""A record the forwarder writes to a retry partition it was just assigned: when it
reads it back, it has read every copy parked there before."""

STUCK = "stuck"
BUFFER_FULL = "buffer_full"
FOLLOWS_PARKED = "follows_parked"
DEAD_LETTER = "dead_letter"
PARK_REASONS = (STUCK, BUFFER_FULL, FOLLOWS_PARKED, DEAD_LETTER)


class ParkedCopy(NamedTuple):
    """What a record read from the retry topic carries over from its earlier life."""

    origin: Origin
    attempts: int
    give_up_at: float | None
    dead_letter: bool
    """True for a dead letter that could not be written when it was parked."""


def parked_headers(
    record: SourceRecord,
    origin: Origin,
    *,
    reason: str,
    attempts: int,
    give_up_at: float | None,
) -> list[tuple[str, bytes]]:
    headers = [*original_headers(record.headers), *origin_headers(origin)]
    headers += [(ATTEMPTS_HEADER, str(attempts).encode()), (PARK_REASON, reason.encode())]
    if give_up_at is not None:
        headers.append((GIVE_UP_AT, str(round(give_up_at * 1000)).encode()))
    return headers


def parked_dead_letter_headers(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """A dead letter that could not be written, as a parked copy: read back, it is
    written to the dead-letter topic with these same headers, less the park reason."""
    return [*dead_letter_headers_of(headers), (PARK_REASON, DEAD_LETTER.encode())]


def dead_letter_headers_of(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [(name, value) for name, value in headers if name != PARK_REASON]


def read_parked(record: SourceRecord) -> ParkedCopy | None:
    """The parked copy's own headers, or None when the record does not carry them
    (something else wrote to the retry topic: it is then treated as read from there)."""
    ours = {name: value for name, value in record.headers if name.startswith(HEADER_PREFIX)}
    try:
        origin = Origin(
            ours[SOURCE_TOPIC_HEADER].decode(),
            int(ours[SOURCE_PARTITION_HEADER]),
            int(ours[SOURCE_OFFSET_HEADER]),
        )
        attempts = int(ours.get(ATTEMPTS_HEADER, b"0"))
        deadline = ours.get(GIVE_UP_AT)
        give_up_at = int(deadline) / 1000 if deadline is not None else None
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    return ParkedCopy(origin, attempts, give_up_at, REASON_HEADER in ours)


def is_marker(record: SourceRecord) -> bool:
    return any(name == MARKER for name, _ in record.headers)


def retry_partition(source_partition: int, partitions: int) -> int:
    """The retry partition that takes a source partition's parked copies."""
    return source_partition % partitions


class Admission(Enum):
    SEND = "send"
    PARK = "park"
    HOLD = "hold"


@dataclass(slots=True)
class ParkedLane(Generic[T]):
    """One lane's copies in the retry topic, as far as this forwarder knows them."""

    retry_partition: int
    writes: int = 0
    written_through: int = -1
    read_through: int = -1
    in_memory: int = 0
    stragglers_through: int = -1
    held: deque[T] = field(default_factory=deque)

    @property
    def idle(self) -> bool:
        """Nothing of the lane is in the retry topic, in memory or on its way there."""
        return (
            self.writes == 0
            and self.in_memory == 0
            and self.read_through >= self.written_through
            and not self.held
        )


class ParkedLanes(Generic[T]):
    """The lanes with copies in the retry topic, and what their next record must do.

    Every call names the lane by its *source* coordinates (topic, partition, user),
    also for a copy read back from the retry topic. Pure bookkeeping: the pipeline
    writes, reads and sends; this says which."""

    def __init__(self) -> None:
        self._lanes: dict[LaneKey, ParkedLane[T]] = {}

    def __len__(self) -> int:
        return len(self._lanes)

    def __contains__(self, lane: object) -> bool:
        return lane in self._lanes

    # A lane's records --------------------------------------------------------

    def from_source(self, lane: LaneKey) -> Admission:
        """A new record of this lane read from its source: send it, park it behind the
        lane's copies, or hold it until the lane's stragglers are all read."""
        entry = self._lanes.get(lane)
        if entry is None:
            return Admission.SEND
        if entry.held or entry.read_through < entry.stragglers_through:
            return Admission.HOLD
        return Admission.PARK

    def hold(self, lane: LaneKey, item: T) -> None:
        self._lanes[lane].held.append(item)

    def from_retry(self, lane: LaneKey, retry_partition: int, offset: int) -> Admission:
        """A copy of this lane read back from the retry topic: send it (after the lane's
        copies read before it), or park it again when it is a straggler."""
        entry = self._entry(lane, retry_partition)
        entry.read_through = max(entry.read_through, offset)
        if offset <= entry.stragglers_through:
            return Admission.PARK
        entry.in_memory += 1
        return Admission.SEND

    def releasable(self, lane: LaneKey) -> list[T]:
        """Held records that may now be parked: the lane's stragglers are all read."""
        entry = self._lanes.get(lane)
        if entry is None or not entry.held or entry.read_through < entry.stragglers_through:
            return []
        released = list(entry.held)
        entry.held.clear()
        return released

    # Writes ------------------------------------------------------------------

    def writing(self, lane: LaneKey, retry_partition: int) -> None:
        """A copy of this lane is on its way to the retry topic."""
        self._entry(lane, retry_partition).writes += 1

    def written(self, lane: LaneKey, offset: int | None) -> None:
        """The write ended: stored at `offset`, or None if it was given up (the record
        went to the dead-letter topic instead)."""
        entry = self._lanes.get(lane)
        if entry is None:
            return
        entry.writes -= 1
        if offset is not None:
            entry.written_through = max(entry.written_through, offset)

    # Copies read back ----------------------------------------------------------

    def left(self, lane: LaneKey) -> None:
        """A copy read back is finished: delivered, dead-lettered or a duplicate."""
        entry = self._lanes.get(lane)
        if entry is not None:
            entry.in_memory -= 1

    def may_park_again(self, lane: LaneKey) -> bool:
        """Copies read back may be parked again once no write of the lane is under way
        (its offset would be unknown, so no straggler could be recognised)."""
        entry = self._lanes.get(lane)
        return entry is None or entry.writes == 0

    def parking_again(self, lane: LaneKey) -> None:
        """A copy read back is being parked again, at the end of its retry partition:
        the lane's copies not yet read are stragglers, to be moved behind it."""
        entry = self._lanes.get(lane)
        if entry is None:
            return
        entry.in_memory -= 1
        if entry.read_through < entry.written_through:
            entry.stragglers_through = entry.written_through

    def awaited_retry_partitions(self) -> set[int]:
        """Retry partitions that lanes wait to read stragglers from (never to be paused)."""
        return {
            entry.retry_partition
            for entry in self._lanes.values()
            if entry.read_through < entry.stragglers_through
        }

    # Ending --------------------------------------------------------------------

    def settle(self, lane: LaneKey) -> bool:
        """Forget the lane if nothing of it is left in the retry topic: its next events
        are sent from the source again. Returns True if it was forgotten."""
        entry = self._lanes.get(lane)
        if entry is None or not entry.idle:
            return False
        del self._lanes[lane]
        return True

    def forget(self, revoked: Callable[[LaneKey, int], bool]) -> list[T]:
        """Drop the lanes for which `revoked(lane, retry_partition)` holds (their source
        or retry partition moved to another member, which rebuilds what it needs by
        reading the retry topic); returns what they held, for the caller to finish."""
        dropped: list[T] = []
        for lane, entry in list(self._lanes.items()):
            if revoked(lane, entry.retry_partition):
                dropped.extend(entry.held)
                del self._lanes[lane]
        return dropped

    def _entry(self, lane: LaneKey, retry_partition: int) -> ParkedLane[T]:
        entry = self._lanes.get(lane)
        if entry is None:
            entry = self._lanes[lane] = ParkedLane(retry_partition)
        return entry
