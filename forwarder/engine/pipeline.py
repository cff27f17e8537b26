"""The engine: moves each record from the Kafka source to the sink and back to its offset.

    submit(record) → decode → policy → Scheduler (per-user lanes, dedupe)
        → dispatcher: SendGate (halts, Retry-After) → an idle sender
          → SendGate (limits, learned rate) → Sink.send → Outcome
        → delivered / retried later (RetryPolicy) / dead-lettered (DeadLetterWriter)
        → the record's offset finished

Every decision is made by the pure pieces it holds (`Scheduler`, `SendGate`,
`RetryPolicy`, `decode`); this module only moves jobs between them and owns the
asyncio tasks. One dispatcher task makes every send decision, so no two
coroutines ever race for a rate-limit permit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from forwarder.core import dead_letters as dl
from forwarder.core.decode import CloudEventTypes, decode
from forwarder.core.events import TOOLS, ActionType, Invalid, SourceRecord
from forwarder.core.offsets import PartitionOffsets
from forwarder.core.policy import Policy
from forwarder.core.retry import RetryPolicy
from forwarder.core.scheduler import Job, Partition, Scheduler
from forwarder.engine.dead_letter_writer import DeadLetterWriter
from forwarder.engine.shared_keys import KeyGate, LocalKeys
from forwarder.limits.gate import SendGate, Ticket
from forwarder.ops.logs import RepeatSuppressor, event_fields, get_logger
from forwarder.ops.metrics import Metrics, Tally
from forwarder.sinks.base import Sink
from forwarder.sinks.outcome import (
    Delivered,
    Denied,
    Misconfigured,
    Rejected,
    Retry,
    Unauthorized,
    transport_failure,
)

WARNING_PERIOD = 10.0


class Pipeline:
    def __init__(
        self,
        sink: Sink,
        gate: SendGate,
        dead_letters: DeadLetterWriter,
        metrics: Metrics,
        *,
        scheduler: Scheduler,
        retry: RetryPolicy,
        policy: Policy,
        cloudevent_types: CloudEventTypes,
        max_in_flight: int,
        max_buffered: int,
        max_buffered_bytes: int,
        keys: KeyGate | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self.gate = gate
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._scheduler = scheduler
        self._keys: KeyGate = keys or LocalKeys()
        self._keys.bind(self._admit, self._finish_shared_duplicate)
        self._retry_policy = retry
        self._policy = policy
        self._denied_tools: set[str] = set()
        self._types = cloudevent_types
        self.max_in_flight = max_in_flight
        self.max_buffered = max_buffered
        self.max_buffered_bytes = max_buffered_bytes
        self._clock = clock
        self._wall = wall_clock
        self._log = get_logger("forwarder.engine.pipeline")
        self._lines = RepeatSuppressor(WARNING_PERIOD)
        self._partitions: dict[Partition, PartitionOffsets] = {}
        self._in_flight = 0
        metrics.in_flight.set_function(lambda: self._in_flight)
        metrics.users_waiting.set_function(lambda: scheduler.lanes)
        self._requests_by_code: dict[str, Tally] = {}
        self._forwarded_by_action = {
            action: metrics.forwarded.labels(action_type=action.value) for action in ActionType
        }
        self._senders: list[asyncio.Task[None]] = []
        self._idle: list[asyncio.Future[tuple[Job, Ticket] | None]] = []
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._settling: set[Partition] = set()
        self._settling_all = False
        self._dispatching = False
        self._dispatcher: asyncio.Task[None] | None = None

    # Lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._dispatching = True
        self._senders = [
            asyncio.create_task(self._sender_loop(), name=f"sender-{number}")
            for number in range(self.max_in_flight)
        ]
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="dispatcher")

    def wake(self) -> None:
        """Something outside changed what may be sent (new permits, new credentials)."""
        self._wake.set()

    async def drain(self, grace: float) -> bool:
        """Finish what a clean stop must: the answers to requests under way, the events
        consumed ahead of delivered ones (so that nothing delivered lies beyond the
        offsets committed next, and the next owner re-sends nothing), and pending
        dead-letter writes; then stop. Returns False if `grace` cut it short."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self._settling_all = True
        settled = await self._settle_until(None, deadline)
        self._dispatching = False
        self._wake.set()
        if self._dispatcher is not None:
            await self._dispatcher
        for handoff in self._idle:
            if not handoff.done():
                handoff.set_result(None)
        self._idle.clear()
        # An answer that comes in meanwhile may start a dead-letter write: wait for it too.
        while (
            pending := {task for task in self._senders if not task.done()}
            | self._dead_letters.pending
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

    def _settling_job(self, job: Job) -> bool:
        """Whether the job's partition is being settled (a revocation or the shutdown)."""
        return self._settling_all or (
            bool(self._settling) and (job.record.topic, job.record.partition) in self._settling
        )

    # Partitions and offsets ------------------------------------------------------

    def assign(self, partitions: Iterable[Partition]) -> None:
        for partition in partitions:
            self._partitions.setdefault(partition, PartitionOffsets())

    def revoke(self, partitions: Iterable[Partition]) -> None:
        revoked = [p for p in partitions if p in self._partitions]
        for partition in revoked:
            del self._partitions[partition]
        for job in self._scheduler.cancel(revoked, self._clock()):
            self._finish_duplicate(job)
        self._keys.revoked(revoked)
        self._wake.set()

    def committable(self) -> dict[Partition, int]:
        """Per partition, the offset up to which every record is finished."""
        return {
            partition: offsets.committable
            for partition, offsets in self._partitions.items()
            if offsets.committable is not None
        }

    @property
    def buffered(self) -> int:
        return sum(offsets.outstanding for offsets in self._partitions.values())

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def buffered_bytes(self) -> int:
        return sum(offsets.held_bytes for offsets in self._partitions.values())

    def has_room(self, fraction: float) -> bool:
        """Whether what is held is within `fraction` of both bounds (records and bytes)."""
        return (
            self.buffered <= self.max_buffered * fraction
            and self.buffered_bytes <= self.max_buffered_bytes * fraction
        )

    def should_pause(self) -> bool:
        buffered = self.buffered
        self._metrics.buffered.set(buffered)
        return buffered >= self.max_buffered or self.buffered_bytes >= self.max_buffered_bytes

    # Intake -------------------------------------------------------------------------

    async def submit_batch(self, records: list[SourceRecord]) -> None:
        """A poll batch, in consumption order: decoded, then its keys checked with the
        group's shared state (one round trip) before the scheduler sees them."""
        jobs = [job for record in records if (job := self._accept(record)) is not None]
        if jobs:
            await self._keys.take(jobs)

    def submit(self, record: SourceRecord) -> None:
        """One record, straight to the scheduler (no shared de-duplication)."""
        job = self._accept(record)
        if job is not None:
            self._admit(job)

    def _admit(self, job: Job) -> None:
        for duplicate in self._scheduler.admit(job, self._clock()):
            self._finish_duplicate(duplicate)
        self._wake.set()

    def _accept(self, record: SourceRecord) -> Job | None:
        """Track the record's offset; decode it and check the policy. None when it was
        dead-lettered instead."""
        partition = (record.topic, record.partition)
        offsets = self._partitions.get(partition)
        if offsets is None:
            offsets = self._partitions[partition] = PartitionOffsets()
        size = _size(record)
        try:
            offsets.track(record.offset, size)
        except ValueError:
            # The consumer went back (an offset reset): what is tracked is stale.
            self._log.warning(
                "partition offset went backwards; tracking it anew",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            offsets = self._partitions[partition] = PartitionOffsets()
            offsets.track(record.offset, size)
        self._metrics.consumed.inc()
        decoded = decode(record.value, record.headers, self._types)
        if isinstance(decoded, Invalid):
            self._dead_letter(record, offsets, decoded.reason, decoded.detail, 0, None)
            return None
        tool = decoded.action.tool
        policy = self._policy.for_tool(tool)
        if not policy.allowed or tool in self._denied_tools:
            reason = policy.reason if not policy.allowed else "the gateway denied it"
            detail = f"{tool} is denied by the policy: {reason}"
            self._dead_letter(record, offsets, dl.DENIED_BY_POLICY, detail, 0, decoded.key)
            return None
        return Job(record, decoded, offsets)

    # Dispatch -------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while self._dispatching:
            self._wake.clear()
            try:
                wait = self._dispatch_ready()
            except Exception:  # a bug here must not silently stop all sending
                self._log.exception("dispatcher error; continuing")
                wait = 1.0
            if not self._dispatching:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if wait == float("inf") else wait):
                    await self._wake.wait()

    def _dispatch_ready(self) -> float:
        """Send everything that may go now, oldest first across both tools; return how
        long until something might become sendable without being woken.

        The other tool's oldest event goes ahead only when this tool's own limit
        holds: one tool's limit never blocks the other."""
        gate = self.gate
        while self._dispatching:
            now = self._clock()
            wait = float("inf")
            candidates: list[tuple[int, str, Job]] = []
            for tool in TOOLS:
                job = self._scheduler.peek(tool, now)
                if job is not None:
                    candidates.append((job.seq, tool, job))
                elif (due := self._scheduler.next_due(tool)) is not None:
                    wait = min(wait, due - now)
            if not candidates or not self._sender_ready():
                return max(wait, 0.001)
            halted = gate.wait(now)
            if halted > 0:
                return max(min(wait, halted), 0.001)
            candidates.sort()  # oldest first; sequence numbers are unique, so jobs never compare
            for _, tool, job in candidates:
                if self._settling_job(job) and not job.offsets.finished_after(job.record.offset):
                    # Nothing delivered after it: the next owner reads it again, unsent.
                    self._abandon(self._scheduler.take(tool), now)
                    break
                if tool in self._denied_tools:
                    self._fail(self._scheduler.take(tool), dl.DENIED_BY_POLICY, _DENIED_DETAIL)
                    break
                limit = gate.limit_delay(tool, now)
                if limit <= 0:
                    self._launch(self._scheduler.take(tool), tool, now)
                    break
                if job.limited_since is None:
                    job.limited_since = now
                wait = min(wait, limit)
            else:
                return max(wait, 0.001)
        return float("inf")

    def _sender_ready(self) -> bool:
        """Whether a sender waits for a job; none does when max_in_flight are under way.

        A sender task cancelled from outside while it waited leaves a cancelled
        hand-off behind: it is dropped here, before any job is taken for it."""
        idle = self._idle
        while idle and idle[-1].done():
            idle.pop()
        return bool(idle)

    def _launch(self, job: Job, tool: str, now: float) -> None:
        ticket = self.gate.launch(tool, now)
        self._metrics.rate_limit_delay.observe(
            now - job.limited_since if job.limited_since else 0.0
        )
        job.limited_since = None
        self._in_flight += 1
        job.offsets.in_flight += 1
        self._idle.pop().set_result((job, ticket))

    async def _sender_loop(self) -> None:
        """One of `max_in_flight` long-lived senders, each handed one job at a time.

        A task per send cost the event-loop thread more than the send's own
        bookkeeping (creating and registering the task, its done callback). A sender
        is back in `_idle` before the dispatcher next runs: between the end of
        `_send` and the next `await` nothing yields."""
        loop = asyncio.get_running_loop()
        while self._dispatching:
            handoff: asyncio.Future[tuple[Job, Ticket] | None] = loop.create_future()
            self._idle.append(handoff)
            work = await handoff
            if work is None:  # draining
                return
            try:
                await self._send(*work)
            except Exception:  # a bug must not take a sender away for good, nor an event
                self._log.exception("sender error; continuing")
                job = work[0]
                if job.in_flight:  # no outcome was applied: send it again later
                    self._retry_at(job, self._clock() + self._retry_policy.backoff.delay(1))

    async def _send(self, job: Job, ticket: Ticket) -> None:
        try:
            outcome = await self._sink.send(job.event)
        except Exception as exc:  # a bug must cost a retry, never a lost event
            outcome = transport_failure("error", f"unexpected {exc!r}")
            self._log.exception("unexpected error while sending", **self._fields(job))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # this sender is being stopped
                raise
            # A client cancelled its own work: the event is retried like any failed send.
            outcome = transport_failure("error", "the send was cancelled inside the client")
        finally:
            self.gate.finish(ticket, self._clock())
            self._in_flight -= 1
            job.offsets.in_flight -= 1
            self._wake.set()
            self._progress.set()
        now = self._clock()
        code = outcome.code
        requests = self._requests_by_code.get(code)
        if requests is None:
            requests = self._metrics.sink_requests.labels(code=code)
            self._requests_by_code[code] = requests
        requests.inc()
        self._metrics.sink_duration.observe(now - ticket.sent_at)
        job.attempts += 1
        outcome = self.gate.observe(outcome, ticket, now, self._in_flight, job.event.user_id)
        if isinstance(outcome, Delivered):
            self._delivered(job, now)
        elif isinstance(outcome, Retry):
            self._retry(job, outcome, now)
        elif isinstance(outcome, Unauthorized | Misconfigured):
            # Not the event's fault: it waits, attempt uncounted, behind the gate's halt.
            job.attempts -= 1
            self._retry_at(job, now)
        elif isinstance(outcome, Denied):
            self._denied_tools.add(job.event.action.tool)
            self._fail(job, dl.DENIED_BY_POLICY, outcome.detail)
        else:
            self._rejected(job, outcome)

    # Outcomes ------------------------------------------------------------------------

    def _delivered(self, job: Job, now: float) -> None:
        self._forwarded_by_action[job.event.action].inc()
        latency = self._wall() - job.record.timestamp_ms / 1000.0
        self._metrics.delivery_latency.observe(max(0.0, latency))
        if self._log.is_enabled_for(logging.DEBUG):  # the fields cost more than the no-op call
            self._log.debug("event forwarded", **self._fields(job), attempts=job.attempts)
        duplicates = self._scheduler.complete(job, delivered=True, now=now)
        self._keys.delivered(job, now)
        self._finish(job.record, job.offsets, job.cancelled)
        for duplicate in duplicates:
            self._finish_duplicate(duplicate)

    def _retry(self, job: Job, outcome: Retry, now: float) -> None:
        if job.first_failure_at is None:
            job.first_failure_at = now
        failing_for = now - job.first_failure_at
        delay = self._retry_policy.delay(job.attempts, failing_for, outcome.retry_after)
        if delay is None:
            detail = (
                f"gave up after {job.attempts} attempts in {failing_for:.0f}s;"
                f" last: {outcome.detail}"
            )
            self._fail(job, dl.RETRIES_EXHAUSTED, detail)
            return
        self._metrics.retries.inc()
        self._log.debug(
            "send failed; will retry",
            **self._fields(job),
            error=outcome.detail,
            attempts=job.attempts,
            retry_in_seconds=round(delay, 3),
        )
        suppressed = self._lines.allow(f"retry:{outcome.code}", now)
        if suppressed is not None and not outcome.throttled:
            self._log.warning(
                "sends failing; retrying with backoff",
                error=outcome.detail,
                suppressed=suppressed,
                **self._fields(job),
            )
        self._retry_at(job, now + delay)

    def _retry_at(self, job: Job, when: float) -> None:
        if job.cancelled:  # its partition was revoked while it was under way: dropped
            self._keys.released(job)
        for duplicate in self._scheduler.retry_at(job, when):
            self._finish_duplicate(duplicate)

    def _rejected(self, job: Job, outcome: Rejected) -> None:
        self._fail(job, dl.REJECTED, outcome.detail, outcome.status, outcome.body)

    def _fail(
        self,
        job: Job,
        reason: str,
        detail: str,
        status: int | None = None,
        body: bytes | None = None,
    ) -> None:
        """Dead-letter a job; its copies may now be sent, since this one never arrived."""
        duplicates = self._scheduler.complete(job, delivered=False, now=self._clock())
        self._keys.released(job)
        if not job.cancelled:
            self._dead_letter(
                job.record, job.offsets, reason, detail, job.attempts, job.event.key, status, body
            )
        for duplicate in duplicates:
            self._finish_duplicate(duplicate)

    def _abandon(self, job: Job, now: float) -> None:
        """Give a job up unsent while its partition settles: its offset stays unfinished
        (so it is read again), its key and its lane are released."""
        for duplicate in self._scheduler.complete(job, delivered=False, now=now):
            self._finish_duplicate(duplicate)

    # Finishing -----------------------------------------------------------------------

    def _finish_duplicate(self, job: Job) -> None:
        self._metrics.duplicates.inc()
        if self._log.is_enabled_for(logging.DEBUG):
            self._log.debug("duplicate event not sent again", **self._fields(job))
        self._finish(job.record, job.offsets, job.cancelled)

    def _finish_shared_duplicate(self, job: Job) -> None:
        """A copy another replica (or an earlier process) delivered, as the group knows."""
        self._metrics.duplicates_shared.inc()
        if self._log.is_enabled_for(logging.DEBUG):
            self._log.debug("duplicate event delivered by the group", **self._fields(job))
        self._finish(job.record, job.offsets, job.cancelled)

    def _finish(self, record: SourceRecord, offsets: PartitionOffsets, cancelled: bool) -> None:
        if not cancelled:
            offsets.finish(record.offset, _size(record))
            self._progress.set()

    def _dead_letter(
        self,
        record: SourceRecord,
        offsets: PartitionOffsets,
        reason: str,
        detail: str,
        attempts: int,
        key: str | None,
        status: int | None = None,
        body: bytes | None = None,
    ) -> None:
        """The offset is finished only once the dead letter is stored."""
        self._dead_letters.write(
            record,
            reason,
            detail,
            attempts=attempts,
            key=key,
            status=status,
            body=body,
            on_written=lambda: self._finish(record, offsets, False),
        )

    @staticmethod
    def _fields(job: Job) -> dict[str, object]:
        record = job.record
        return event_fields(record.topic, record.partition, record.offset, job.event.key)


def _size(record: SourceRecord) -> int:
    """What a held record costs in memory, near enough: its value and key."""
    return len(record.value or b"") + len(record.key or b"")


_DENIED_DETAIL = "the gateway denied this tool to an earlier call; not sent again"
