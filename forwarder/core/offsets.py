"""Which offset of a partition may be committed: the end of the finished prefix.

Events finish out of order (one user's retry must not hold back another user),
but Kafka keeps one committed offset per partition. Committing only past the
prefix in which *every* record is finished is what makes a crash lose nothing:
whatever was not finished is read again.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Offsets of one partition in consumption order, and which of them are finished."""

    __slots__ = ("_done", "_last_done", "_pending", "_watermark", "held_bytes", "in_flight")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._watermark: int | None = None
        self._last_done = -1
        self.held_bytes = 0
        """Size of the records tracked and not yet finished (the bytes they hold)."""
        self.in_flight = 0
        """Records of this partition whose request is under way."""

    def track(self, offset: int, size: int = 0) -> None:
        """Register a consumed offset of a record of `size` bytes; offsets arrive in
        increasing order per partition."""
        # With nothing pending, the last tracked offset is the one just below the watermark.
        if self._pending:
            last: int | None = self._pending[-1]
        else:
            last = None if self._watermark is None else self._watermark - 1
        if last is not None and offset <= last:
            raise ValueError(f"offset {offset} is not after {last}")
        self._pending.append(offset)
        self.held_bytes += size

    def finish(self, offset: int, size: int = 0) -> None:
        self.held_bytes -= size
        if offset > self._last_done:
            self._last_done = offset
        self._done.add(offset)
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            finished = pending.popleft()
            done.discard(finished)
            self._watermark = finished + 1

    @property
    def committable(self) -> int | None:
        """The offset to commit (Kafka's "next record to read"), or None if nothing finished."""
        return self._watermark

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def finished_after(self, offset: int) -> bool:
        """Whether a later record of the partition is finished: then this one must finish
        too before the commit can cover what was delivered after it."""
        return offset < self._last_done

    @property
    def settled(self) -> bool:
        """Nothing finished waits behind an unfinished record: the committable offset
        covers every record that was delivered or dead-lettered."""
        return not self._done
