"""Writing dead letters, and what happens when a write fails.

A record's offset is finished only once its dead letter is stored, so a dead
letter is written until it sticks: a failed write is retried with jittered
backoff (0.5 s doubling to 30 s), counted in
`forwarder_dead_letter_write_failures_total`, and logged once per period with
the number of repeats held back, never once per attempt. Each write runs in its
own task so that a slow or failing dead-letter topic never holds up the events
that are being delivered meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from forwarder.core.dead_letters import dead_letter_headers
from forwarder.core.events import SourceRecord
from forwarder.core.retry import Backoff
from forwarder.ops.logs import RepeatSuppressor, event_fields, get_logger
from forwarder.ops.metrics import Metrics

WARNING_PERIOD = 10.0
WRITE_RETRY = Backoff(initial=0.5, maximum=30.0)


class DeadLetterStore(Protocol):
    async def write(self, record: SourceRecord, headers: list[tuple[str, bytes]]) -> None:
        """Store the dead letter durably or raise; the source offset waits for it."""


class DeadLetterWriter:
    def __init__(
        self,
        store: DeadLetterStore,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._log = get_logger("forwarder.engine.dead_letters")
        self._lines = RepeatSuppressor(WARNING_PERIOD)
        self._writes: set[asyncio.Task[None]] = set()

    def write(
        self,
        record: SourceRecord,
        reason: str,
        detail: str,
        *,
        attempts: int,
        key: str | None,
        on_written: Callable[[], None],
        status: int | None = None,
        body: bytes | None = None,
    ) -> None:
        """Start writing; `on_written` runs once the dead letter is stored."""
        headers = dead_letter_headers(record, reason, detail, attempts, status=status, body=body)
        task = asyncio.create_task(self._write(record, headers, reason, detail, key, on_written))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    @property
    def pending(self) -> set[asyncio.Task[None]]:
        """Writes under way (a drain waits for them)."""
        return {task for task in self._writes if not task.done()}

    async def _write(
        self,
        record: SourceRecord,
        headers: list[tuple[str, bytes]],
        reason: str,
        detail: str,
        key: str | None,
        on_written: Callable[[], None],
    ) -> None:
        fields = event_fields(record.topic, record.partition, record.offset, key)
        attempt = 0
        while True:
            try:
                await self._store.write(record, headers)
                break
            except Exception as exc:
                attempt += 1
                self._metrics.dead_letter_write_failures.inc()
                if self._lines.allow("dlq-write", self._clock()) is not None:
                    self._log.error(
                        "cannot write dead letter; will retry", error=repr(exc), **fields
                    )
                await asyncio.sleep(WRITE_RETRY.delay(attempt))
        self._metrics.dead_lettered.labels(reason=reason).inc()
        suppressed = self._lines.allow(f"dead-letter:{reason}", self._clock())
        if suppressed is not None:
            self._log.warning(
                "event dead-lettered", reason=reason, detail=detail, suppressed=suppressed, **fields
            )
        on_written()
