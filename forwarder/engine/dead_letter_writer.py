"""Writing dead letters, and what happens when a write fails.

A record's offset is finished only once its dead letter is stored, so a failed
write is retried with jittered backoff (0.5 s doubling to 30 s), counted in
`forwarder_dead_letter_write_failures_total`, and logged once per period with
the number of repeats held back, never once per attempt. Each write runs in its
own task so that a slow or failing dead-letter topic never holds up the events
that are being delivered meanwhile.

A write must not hold its partition forever either. A dead letter too large for
the topic is written reduced (`dead_letters.reduced`: the value cut, the source
coordinates kept). One that fails for good (no permission, say), or keeps
failing for `give_up_after` seconds, is handed to `on_unwritable`, which parks it
in the retry topic to be dead-lettered again when it is read back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from forwarder.core.dead_letters import dead_letter_headers, reduced
from forwarder.core.events import Origin, SourceRecord
from forwarder.core.retry import Backoff
from forwarder.engine.write_errors import TooLarge, WriteRejected
from forwarder.ops.logs import RepeatSuppressor, event_fields, get_logger
from forwarder.ops.metrics import Metrics
from forwarder.ops.topic_health import DEAD_LETTER, TopicHealth

WARNING_PERIOD = 10.0
WRITE_RETRY = Backoff(initial=0.5, maximum=30.0)

Headers = list[tuple[str, bytes]]
Unwritable = Callable[[SourceRecord, Headers], None]
"""Takes over a dead letter that cannot be written: the record as last tried (reduced,
perhaps) and its dead-letter headers."""


class DeadLetterStore(Protocol):
    async def write(self, record: SourceRecord, headers: list[tuple[str, bytes]]) -> None:
        """Store the dead letter durably or raise (see `write_errors`); the source
        offset waits for it."""


class DeadLetterWriter:
    def __init__(
        self,
        store: DeadLetterStore,
        metrics: Metrics,
        clock: Callable[[], float],
        health: TopicHealth,
        give_up_after: float,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._health = health
        self._give_up_after = give_up_after
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
        on_unwritable: Unwritable,
        status: int | None = None,
        body: bytes | None = None,
        origin: Origin | None = None,
    ) -> None:
        """Start writing; `on_written` runs once the dead letter is stored."""
        headers = dead_letter_headers(
            record, reason, detail, attempts, status=status, body=body, origin=origin
        )
        self.write_as(record, headers, reason, detail, key, on_written, on_unwritable)

    def write_as(
        self,
        record: SourceRecord,
        headers: Headers,
        reason: str,
        detail: str,
        key: str | None,
        on_written: Callable[[], None],
        on_unwritable: Unwritable,
    ) -> None:
        """Write with headers made earlier (a parked dead letter read back)."""
        task = asyncio.create_task(
            self._write(record, headers, reason, detail, key, on_written, on_unwritable)
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    @property
    def pending(self) -> set[asyncio.Task[None]]:
        """Writes under way (a drain waits for them)."""
        return {task for task in self._writes if not task.done()}

    async def _write(
        self,
        record: SourceRecord,
        headers: Headers,
        reason: str,
        detail: str,
        key: str | None,
        on_written: Callable[[], None],
        on_unwritable: Unwritable,
    ) -> None:
        fields = event_fields(record.topic, record.partition, record.offset, key)
        attempt = 0
        failing_since: float | None = None
        shrunk = False
        while True:
            try:
                await self._store.write(record, headers)
                break
            except TooLarge as exc:
                if shrunk:
                    self._unwritable(exc, fields)
                    on_unwritable(record, headers)
                    return
                value, headers = reduced(record.value, headers)
                record, shrunk = record._replace(value=value), True
                self._log.warning(
                    "dead letter too large for its topic; writing it reduced",
                    error=repr(exc),
                    **fields,
                )
            except WriteRejected as exc:
                self._unwritable(exc, fields)
                on_unwritable(record, headers)
                return
            except Exception as exc:
                attempt += 1
                now = self._clock()
                failing_since = now if failing_since is None else failing_since
                self._metrics.dead_letter_write_failures.inc()
                self._health.wrote(DEAD_LETTER, repr(exc), now)
                if now - failing_since >= self._give_up_after:
                    self._log.error(
                        "cannot write dead letter; parking it to try again later",
                        error=repr(exc),
                        **fields,
                    )
                    on_unwritable(record, headers)
                    return
                if self._lines.allow("dlq-write", now) is not None:
                    self._log.error(
                        "cannot write dead letter; will retry", error=repr(exc), **fields
                    )
                await asyncio.sleep(WRITE_RETRY.delay(attempt))
        now = self._clock()
        self._health.wrote(DEAD_LETTER, None, now)
        self._metrics.dead_lettered.labels(reason=reason).inc()
        suppressed = self._lines.allow(f"dead-letter:{reason}", now)
        if suppressed is not None:
            self._log.warning(
                "event dead-lettered", reason=reason, detail=detail, suppressed=suppressed, **fields
            )
        on_written()

    def _unwritable(self, exc: Exception, fields: dict[str, object]) -> None:
        self._metrics.dead_letter_write_failures.inc()
        self._health.wrote(DEAD_LETTER, repr(exc), self._clock())
        self._log.error(
            "dead letter cannot be written; parking it to try again later",
            error=repr(exc),
            **fields,
        )
