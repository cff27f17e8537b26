"""Dead-letter writes: retried until they stick, counted when they fail, offset finished
after; written reduced when too large; handed over to be parked when they cannot stick."""

from __future__ import annotations

import asyncio
import time

import pytest

from forwarder.core.dead_letters import HEADERS_DROPPED, REJECTED, VALUE_TRUNCATED
from forwarder.core.events import SourceRecord
from forwarder.core.retry import Backoff
from forwarder.engine import dead_letter_writer
from forwarder.engine.dead_letter_writer import DeadLetterWriter
from forwarder.engine.write_errors import TooLarge, WriteRejected
from forwarder.ops.metrics import Metrics
from forwarder.ops.topic_health import DEAD_LETTER, RETRY, TopicHealth
from tests.conftest import eventually

RECORD = SourceRecord("auth", 0, 7, b"k", b"{}", (), 0)
Headers = list[tuple[str, bytes]]


class FailingStore:
    """Fails the first `failures` writes with `error`, as a topic with no leader would."""

    def __init__(self, failures: int, error: Exception | None = None, limit: int = 1 << 20) -> None:
        self.failures = failures
        self.error = error or ConnectionError("no leader for the partition")
        self.limit = limit
        self.stored: list[tuple[SourceRecord, Headers]] = []

    async def write(self, record: SourceRecord, headers: Headers) -> None:
        if self.failures:
            self.failures -= 1
            raise self.error
        size = len(record.value or b"") + sum(len(n) + len(v) for n, v in headers)
        if size > self.limit:
            raise TooLarge(f"{size} bytes")
        self.stored.append((record, headers))


def writer(store: FailingStore, metrics: Metrics, give_up_after: float = 60.0) -> DeadLetterWriter:
    health = TopicHealth(metrics, {DEAD_LETTER: "auth.dlq", RETRY: "auth.retry"})
    return DeadLetterWriter(store, metrics, time.monotonic, health, give_up_after)


class Unwritable:
    def __init__(self) -> None:
        self.handed: list[tuple[SourceRecord, Headers]] = []

    def __call__(self, record: SourceRecord, headers: Headers) -> None:
        self.handed.append((record, headers))


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dead_letter_writer, "WRITE_RETRY", Backoff(0.001, 0.002))


async def test_a_failing_write_is_retried_counted_and_only_then_finishes_the_offset() -> None:
    store, metrics, written = FailingStore(failures=3), Metrics(), asyncio.Event()
    dead = writer(store, metrics)
    unwritable = Unwritable()
    dead.write(
        RECORD,
        REJECTED,
        "legiti answered 400",
        attempts=1,
        key="k",
        on_written=written.set,
        on_unwritable=unwritable,
    )
    await asyncio.wait_for(written.wait(), 5)
    assert len(store.stored) == 1
    assert dict(store.stored[0][1])["x-forwarder-error-reason"] == b"rejected"
    sample = metrics.registry.get_sample_value
    assert sample("forwarder_dead_letter_write_failures_total") == 3
    assert sample("forwarder_events_dead_lettered_total", {"reason": "rejected"}) == 1
    assert sample("forwarder_topic_writable", {"role": "dead_letter"}) == 0  # never checked
    assert unwritable.handed == []
    await eventually(lambda: not dead.pending)


async def test_pending_writes_are_visible_until_stored() -> None:
    store = FailingStore(failures=0)
    dead = writer(store, Metrics())
    dead.write(
        RECORD,
        REJECTED,
        "x",
        attempts=1,
        key=None,
        on_written=lambda: None,
        on_unwritable=Unwritable(),
    )
    assert len(dead.pending) == 1
    await eventually(lambda: not dead.pending)
    assert len(store.stored) == 1


async def test_a_dead_letter_too_large_is_written_reduced_with_its_coordinates() -> None:
    big = RECORD._replace(value=b"x" * 1_100_000, headers=(("trace", b"t" * 40_000),))
    store, written = FailingStore(failures=0, limit=1 << 20), asyncio.Event()
    dead = writer(store, Metrics())
    unwritable = Unwritable()
    dead.write(
        big,
        REJECTED,
        "not json",
        attempts=0,
        key=None,
        on_written=written.set,
        on_unwritable=unwritable,
    )
    await asyncio.wait_for(written.wait(), 5)
    ((stored, headers),) = store.stored
    named = dict(headers)
    assert stored.value == b"x" * 16 * 1024
    assert named[VALUE_TRUNCATED] == b"1100000"
    assert named[HEADERS_DROPPED] == b"1"
    assert "trace" not in named
    assert named["x-forwarder-source-offset"] == b"7"
    assert named["x-forwarder-error-reason"] == b"rejected"
    assert unwritable.handed == []


async def test_a_write_that_cannot_succeed_is_handed_over_at_once() -> None:
    store = FailingStore(failures=1, error=WriteRejected("TopicAuthorizationFailedError"))
    metrics = Metrics()
    dead = writer(store, metrics)
    unwritable, written = Unwritable(), asyncio.Event()
    dead.write(
        RECORD,
        REJECTED,
        "x",
        attempts=1,
        key=None,
        on_written=written.set,
        on_unwritable=unwritable,
    )
    await eventually(lambda: len(unwritable.handed) == 1)
    assert not written.is_set()
    assert store.stored == []
    record, headers = unwritable.handed[0]
    assert record == RECORD
    assert dict(headers)["x-forwarder-error-reason"] == b"rejected"
    assert metrics.registry.get_sample_value("forwarder_dead_letter_write_failures_total") == 1


async def test_a_write_failing_for_longer_than_its_patience_is_handed_over() -> None:
    store = FailingStore(failures=10**9)
    dead = writer(store, Metrics(), give_up_after=0.05)
    unwritable = Unwritable()
    dead.write(
        RECORD,
        REJECTED,
        "x",
        attempts=1,
        key=None,
        on_written=lambda: None,
        on_unwritable=unwritable,
    )
    await eventually(lambda: len(unwritable.handed) == 1)
    await eventually(lambda: not dead.pending)
    assert store.stored == []
