"""What a store of the forwarder's own topics (dead letters, parked copies) raises
when a write cannot succeed as it is, so that the writers decide without knowing Kafka.

Any other exception is taken as passing (a broker away, a leader moving) and the
write is tried again."""

from __future__ import annotations


class WriteRejected(Exception):
    """Trying the same write again cannot succeed (no permission, an invalid topic)."""


class TooLarge(WriteRejected):
    """The record is bigger than the topic or the producer takes."""
