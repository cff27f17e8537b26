"""The pipeline between the Kafka source and the Legiti sink.

    submit(record) → decode → policy → Scheduler (per-user lanes, dedupe)
        → dispatcher: gates (credentials, circuit, Retry-After) → in-flight bound
          → rate limits (configured and learned) → an idle sender → Outcome
        → delivered / retried later / dead-lettered → offsets finished

Decisions are made by the pure pieces it holds (`Scheduler`, limiters, `Halt`,
`CircuitBreaker`, `AdaptiveRate`, `Backoff`, `classify`); this module only moves
jobs between them and owns the asyncio tasks. One dispatcher task makes every
send decision, so no two coroutines ever race for a rate-limit permit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from forwarder.core import dead_letters as dl
from forwarder.core.dead_letters import DeadLetterSink, dead_letter_headers
from forwarder.core.decode import CloudEventTypes, decode
from forwarder.core.dedupe import DeliveredWindow
from forwarder.core.events import TOOLS, ActionType, AuthEvent, Invalid, SourceRecord
from forwarder.core.halts import CircuitBreaker, Halt, HaltState
from forwarder.core.offsets import PartitionOffsets
from forwarder.core.policy import ALLOW_ALL, Policy
from forwarder.core.retry import Backoff
from forwarder.core.scheduler import Job, Partition, Scheduler
from forwarder.limits.backend import LimiterSet, Permit
from forwarder.limits.learned_rate import AdaptiveRate
from forwarder.limits.rate import Rate
from forwarder.limits.sliding_log import LocalLimits
from forwarder.ops.logs import Throttle, event_fields, get_logger
from forwarder.ops.metrics import Metrics, Tally
from forwarder.sinks.outcome import (
    Delivered,
    Outcome,
    Rejected,
    Retry,
    Unauthorized,
    transport_failure,
)

WARNING_PERIOD = 10.0
AUTH_LOG_PERIOD = 60.0
DEAD_LETTER_RETRY = Backoff(initial=0.5, maximum=30.0)


class Sender(Protocol):
    async def send(self, event: AuthEvent) -> Outcome: ...


@dataclass(frozen=True)
class PipelineOptions:
    max_in_flight: int = 64
    max_buffered: int = 10_000
    retry_max_elapsed: float = 900.0
    retry_initial_backoff: float = 0.5
    retry_max_backoff: float = 60.0
    dedupe_ttl: float = 3600.0
    dedupe_max_entries: int = 1_000_000
    rate_limit: Rate | None = None
    rate_limit_login: Rate | None = None
    rate_limit_logout: Rate | None = None
    policy: Policy = ALLOW_ALL
    cloudevent_types: CloudEventTypes = field(default_factory=CloudEventTypes)
    circuit_failure_ratio: float = 0.5
    circuit_min_requests: int = 20
    circuit_window: float = 30.0
    circuit_max_open: float = 60.0


class _Launch(NamedTuple):  # one per send: a named tuple is the cheapest immutable record
    sent_at: float
    probes_auth: bool
    probes_circuit: bool
    slots: tuple[Permit, ...]


class Pipeline:
    def __init__(
        self,
        options: PipelineOptions,
        sender: Sender,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self._sender = sender
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._clock = clock
        self._wall = wall_clock
        self._log = get_logger("forwarder.engine.pipeline")
        self._throttle = Throttle(WARNING_PERIOD)
        self._auth_throttle = Throttle(AUTH_LOG_PERIOD)
        self._scheduler = Scheduler(DeliveredWindow(options.dedupe_ttl, options.dedupe_max_entries))
        self._partitions: dict[Partition, PartitionOffsets] = {}
        backend = LocalLimits()
        self._backoff = Backoff(options.retry_initial_backoff, options.retry_max_backoff)
        configured = {
            "track_login": options.rate_limit_login,
            "track_logout": options.rate_limit_logout,
        }
        shared = [
            backend.limiter(rate)
            for rate in (*options.policy.shared, options.rate_limit)
            if rate is not None
        ]
        self._limits = {
            tool: LimiterSet(
                *shared,
                *(
                    backend.limiter(rate)
                    for rate in (*options.policy.for_tool(tool).limits, configured[tool])
                    if rate is not None
                ),
            )
            for tool in TOOLS
        }
        self._adaptive = AdaptiveRate()
        self._not_before = 0.0
        self.auth = Halt(first_pause=1.0, max_pause=60.0)
        self.circuit = CircuitBreaker(
            failure_ratio=options.circuit_failure_ratio,
            min_requests=options.circuit_min_requests,
            window=options.circuit_window,
            max_pause=options.circuit_max_open,
        )
        self._in_flight = 0
        metrics.in_flight.set_function(lambda: self._in_flight)
        self._requests_by_code: dict[str, Tally] = {}
        self._forwarded_by_action = {
            action: metrics.forwarded.labels(action_type=action.value) for action in ActionType
        }
        self._senders: list[asyncio.Task[None]] = []
        self._idle: list[asyncio.Future[tuple[Job, _Launch] | None]] = []
        self._writes: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._dispatching = False
        self._dispatcher: asyncio.Task[None] | None = None

    # Lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._dispatching = True
        self._senders = [
            asyncio.create_task(self._sender_loop(), name=f"sender-{number}")
            for number in range(self.options.max_in_flight)
        ]
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="dispatcher")

    async def drain(self, grace: float) -> bool:
        """Stop sending new events and wait for answers to those already sent and for
        pending dead-letter writes. Returns False if the timeout cut it short."""
        self._dispatching = False
        self._wake.set()
        if self._dispatcher is not None:
            await self._dispatcher
        for handoff in self._idle:
            if not handoff.done():
                handoff.set_result(None)
        self._idle.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # An answer that comes in meanwhile may start a dead-letter write: wait for it too.
        while pending := {task for task in (*self._senders, *self._writes) if not task.done()}:
            remaining = deadline - loop.time()
            if remaining > 0:
                await asyncio.wait(pending, timeout=remaining)
                continue
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
            return False
        return True

    # Partitions and offsets ------------------------------------------------------

    def assign(self, partitions: Iterable[Partition]) -> None:
        for partition in partitions:
            self._partitions.setdefault(partition, PartitionOffsets())

    def revoke(self, partitions: Iterable[Partition]) -> None:
        revoked = [p for p in partitions if p in self._partitions]
        for partition in revoked:
            del self._partitions[partition]
        _, duplicates = self._scheduler.cancel(revoked, self._clock())
        for job in duplicates:
            self._finish_duplicate(job)
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

    def should_pause(self) -> bool:
        buffered = self.buffered
        self._metrics.buffered.set(buffered)
        return buffered >= self.options.max_buffered

    @property
    def authorized(self) -> bool:
        return self.auth.is_closed

    @property
    def circuit_closed(self) -> bool:
        return self.circuit.halt.is_closed

    def credentials_changed(self) -> None:
        """A new token arrived: probe with it now instead of waiting out the pause."""
        self.auth.probe_now(self._clock())
        self._wake.set()

    # Intake -------------------------------------------------------------------------

    def submit(self, record: SourceRecord) -> None:
        partition = (record.topic, record.partition)
        offsets = self._partitions.get(partition)
        if offsets is None:
            offsets = self._partitions[partition] = PartitionOffsets()
        try:
            offsets.track(record.offset)
        except ValueError:
            # The consumer went back (an offset reset): what is tracked is stale.
            self._log.warning(
                "partition offset went backwards; tracking it anew",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            offsets = self._partitions[partition] = PartitionOffsets()
            offsets.track(record.offset)
        self._metrics.consumed.inc()
        decoded = decode(record.value, record.headers, self.options.cloudevent_types)
        if isinstance(decoded, Invalid):
            self._dead_letter(record, offsets, decoded.reason, decoded.detail, 0, None)
            return
        policy = self.options.policy.for_tool(decoded.action.tool)
        if not policy.allowed:
            detail = f"{decoded.action.tool} is denied by the policy: {policy.reason}"
            self._dead_letter(record, offsets, dl.DENIED_BY_POLICY, detail, 0, decoded.key)
            return
        job = Job(record, decoded, offsets)
        for duplicate in self._scheduler.admit(job, self._clock()):
            self._finish_duplicate(duplicate)
        self._wake.set()

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
            gate = max(self.auth.delay(now), self.circuit.halt.delay(now), self._not_before - now)
            if gate > 0:
                return max(min(wait, gate), 0.001)
            candidates.sort()  # oldest first; sequence numbers are unique, so jobs never compare
            for _, tool, job in candidates:
                limit = max(self._limits[tool].delay(now), self._adaptive.delay(now))
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
        slots = self._limits[tool].start(now)
        self._adaptive.record(now)
        self._metrics.rate_limit_delay.observe(
            now - job.limited_since if job.limited_since else 0.0
        )
        job.limited_since = None
        launch = _Launch(
            now, self.auth.state is HaltState.OPEN, not self.circuit.halt.is_closed, slots
        )
        self.auth.sent()
        self.circuit.halt.sent()
        self._in_flight += 1
        self._idle.pop().set_result((job, launch))

    async def _sender_loop(self) -> None:
        """One of `max_in_flight` long-lived senders, each handed one job at a time.

        A task per send cost the event-loop thread more than the send's own
        bookkeeping (creating and registering the task, its done callback). A sender
        is back in `_idle` before the dispatcher next runs: between the end of
        `_send` and the next `await` nothing yields."""
        loop = asyncio.get_running_loop()
        while self._dispatching:
            handoff: asyncio.Future[tuple[Job, _Launch] | None] = loop.create_future()
            self._idle.append(handoff)
            work = await handoff
            if work is None:  # draining
                return
            try:
                await self._send(*work)
            except Exception:  # a bug must not take a sender away for good
                self._log.exception("sender error; continuing")

    async def _send(self, job: Job, launch: _Launch) -> None:
        try:
            outcome = await self._sender.send(job.event)
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
            LimiterSet.finish(launch.slots, self._clock())
            self._in_flight -= 1
            self._wake.set()
        now = self._clock()
        code = outcome.code
        requests = self._requests_by_code.get(code)
        if requests is None:
            requests = self._metrics.sink_requests.labels(code=code)
            self._requests_by_code[code] = requests
        requests.inc()
        self._metrics.sink_duration.observe(now - launch.sent_at)
        job.attempts += 1
        self._note_health(outcome, launch, now)
        if isinstance(outcome, Delivered):
            self._delivered(job, now)
        elif isinstance(outcome, Retry):
            self._retry(job, outcome, launch, now)
        elif isinstance(outcome, Unauthorized):
            # Not the event's fault: it waits, attempt uncounted, behind the credentials halt.
            job.attempts -= 1
            self._retry_at(job, now)
        else:
            self._rejected(job, outcome)

    # Outcomes ------------------------------------------------------------------------

    def _note_health(self, outcome: Outcome, launch: _Launch, now: float) -> None:
        unauthorized = isinstance(outcome, Unauthorized)
        if isinstance(outcome, Unauthorized) and (launch.probes_auth or self.auth.is_closed):
            first = self.auth.is_closed
            self.auth.open(now)
            self._metrics.credentials_valid.set(0)
            suppressed = self._auth_throttle.allow("auth", now)
            if first or suppressed is not None:
                self._log.error(
                    "legiti rejected the API token; all sends halted until it is accepted",
                    code=outcome.code,
                    next_probe_in_seconds=round(self.auth.next_probe_at - now, 1),
                    suppressed=suppressed or 0,
                )
        elif not unauthorized and launch.probes_auth:
            self.auth.close()
            self._metrics.credentials_valid.set(1)
            self._log.info("legiti accepted the API token again; sending resumed")
        failed = isinstance(outcome, Retry) and outcome.outage
        if self.circuit.record(now, failed=failed, probe=launch.probes_circuit):
            self._circuit_changed(outcome, now)

    def _circuit_changed(self, outcome: Outcome, now: float) -> None:
        state = self.circuit.halt.state
        self._metrics.circuit_state.set(int(state))
        if state is HaltState.CLOSED:
            self._log.info("circuit closed: legiti answers again; sending resumed")
            return
        detail = outcome.detail if isinstance(outcome, Retry) else type(outcome).__name__
        suppressed = self._throttle.allow("circuit", now)
        if suppressed is not None:
            self._log.warning(
                "circuit open: most recent sends to legiti failed; pausing all sends",
                last_error=detail,
                probe_in_seconds=round(self.circuit.halt.next_probe_at - now, 1),
                suppressed=suppressed,
            )

    def _delivered(self, job: Job, now: float) -> None:
        self._adaptive.on_accepted(now)
        self._forwarded_by_action[job.event.action].inc()
        latency = self._wall() - job.record.timestamp_ms / 1000.0
        self._metrics.delivery_latency.observe(max(0.0, latency))
        if self._log.is_enabled_for(logging.DEBUG):  # the fields cost more than the no-op call
            self._log.debug("event forwarded", **self._fields(job), attempts=job.attempts)
        duplicates = self._scheduler.complete(job, delivered=True, now=now)
        self._finish(job.record, job.offsets, job.cancelled)
        for duplicate in duplicates:
            self._finish_duplicate(duplicate)

    def _retry(self, job: Job, outcome: Retry, launch: _Launch, now: float) -> None:
        if outcome.throttled:
            self._adaptive.on_throttled(now, launch.sent_at, self._in_flight)
        if outcome.retry_after is not None:
            self._not_before = max(self._not_before, now + outcome.retry_after)
        if job.first_failure_at is None:
            job.first_failure_at = now
        elapsed = now - job.first_failure_at
        limit = self.options.retry_max_elapsed
        if limit and elapsed >= limit:
            detail = (
                f"gave up after {job.attempts} attempts in {elapsed:.0f}s; last: {outcome.detail}"
            )
            self._fail(job, dl.RETRIES_EXHAUSTED, detail)
            return
        delay = (
            outcome.retry_after
            if outcome.retry_after is not None
            else self._backoff.delay(job.attempts)
        )
        if limit:
            delay = min(delay, limit - elapsed)
        self._metrics.retries.inc()
        self._log.debug(
            "send failed; will retry",
            **self._fields(job),
            error=outcome.detail,
            attempts=job.attempts,
            retry_in_seconds=round(delay, 3),
        )
        suppressed = self._throttle.allow(f"retry:{outcome.code}", now)
        if suppressed is not None and not outcome.throttled:
            self._log.warning(
                "sends to legiti failing; retrying with backoff",
                error=outcome.detail,
                suppressed=suppressed,
                **self._fields(job),
            )
        self._retry_at(job, now + delay)

    def _retry_at(self, job: Job, when: float) -> None:
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
        if not job.cancelled:
            self._dead_letter(
                job.record, job.offsets, reason, detail, job.attempts, job.event.key, status, body
            )
        for duplicate in duplicates:
            self._finish_duplicate(duplicate)

    # Finishing -----------------------------------------------------------------------

    def _finish_duplicate(self, job: Job) -> None:
        self._metrics.duplicates.inc()
        if self._log.is_enabled_for(logging.DEBUG):
            self._log.debug("duplicate event not sent again", **self._fields(job))
        self._finish(job.record, job.offsets, job.cancelled)

    def _finish(self, record: SourceRecord, offsets: PartitionOffsets, cancelled: bool) -> None:
        if not cancelled:
            offsets.finish(record.offset)

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
        headers = dead_letter_headers(record, reason, detail, attempts, status=status, body=body)
        task = asyncio.create_task(
            self._write_dead_letter(record, offsets, headers, reason, detail, key)
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_dead_letter(
        self,
        record: SourceRecord,
        offsets: PartitionOffsets,
        headers: list[tuple[str, bytes]],
        reason: str,
        detail: str,
        key: str | None,
    ) -> None:
        """Write until it sticks: the offset is not finished (so not committed) before."""
        fields = event_fields(record.topic, record.partition, record.offset, key)
        attempt = 0
        while True:
            try:
                await self._dead_letters.write(record, headers)
                break
            except Exception as exc:
                attempt += 1
                if self._throttle.allow("dlq-write", self._clock()) is not None:
                    self._log.error(
                        "cannot write dead letter; will retry", error=repr(exc), **fields
                    )
                await asyncio.sleep(DEAD_LETTER_RETRY.delay(attempt))
        self._metrics.dead_lettered.labels(reason=reason).inc()
        suppressed = self._throttle.allow(f"dead-letter:{reason}", self._clock())
        if suppressed is not None:
            self._log.warning(
                "event dead-lettered", reason=reason, detail=detail, suppressed=suppressed, **fields
            )
        offsets.finish(record.offset)

    @staticmethod
    def _fields(job: Job) -> dict[str, object]:
        record = job.record
        return event_fields(record.topic, record.partition, record.offset, job.event.key)
