"""Dead-letter writes: retried until they stick, counted when they fail, offset finished after."""

from __future__ import annotations

import asyncio
import time

from forwarder.core.dead_letters import REJECTED
from forwarder.core.events import SourceRecord
from forwarder.core.retry import Backoff
from forwarder.engine import dead_letter_writer
from forwarder.engine.dead_letter_writer import DeadLetterWriter
from forwarder.ops.metrics import Metrics
from tests.conftest import eventually

RECORD = SourceRecord("auth", 0, 7, b"k", b"{}", (), 0)


class FailingStore:
    """Fails the first `failures` writes, as a topic with no leader would."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.stored: list[list[tuple[str, bytes]]] = []

    async def write(self, record: SourceRecord, headers: list[tuple[str, bytes]]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("no leader for the partition")
        self.stored.append(headers)


async def test_a_failing_write_is_retried_counted_and_only_then_finishes_the_offset(
    monkeypatch,
) -> None:
    monkeypatch.setattr(dead_letter_writer, "WRITE_RETRY", Backoff(0.001, 0.002))
    store, metrics, written = FailingStore(failures=3), Metrics(), asyncio.Event()
    writer = DeadLetterWriter(store, metrics, time.monotonic)
    writer.write(
        RECORD, REJECTED, "legiti answered 400", attempts=1, key="k", on_written=written.set
    )
    await asyncio.wait_for(written.wait(), 5)
    assert len(store.stored) == 1
    assert dict(store.stored[0])["x-forwarder-error-reason"] == b"rejected"
    sample = metrics.registry.get_sample_value
    assert sample("forwarder_dead_letter_write_failures_total") == 3
    assert sample("forwarder_events_dead_lettered_total", {"reason": "rejected"}) == 1
    await eventually(lambda: not writer.pending)


async def test_pending_writes_are_visible_until_stored() -> None:
    store = FailingStore(failures=0)
    writer = DeadLetterWriter(store, Metrics(), time.monotonic)
    writer.write(RECORD, REJECTED, "x", attempts=1, key=None, on_written=lambda: None)
    assert len(writer.pending) == 1
    await eventually(lambda: not writer.pending)
    assert len(store.stored) == 1
