"""What the engine does with each send's `Outcome`, and how a record is finished.

    Delivered → counted, its copies finished, its offset finished
    Retry → retried later (`RetryPolicy`), given up (dead letter), or its lane parked
    Unauthorized / Misconfigured → waits behind the halt, attempt uncounted (an event
      refused on its own again and again is dead-lettered)
    Denied → the tool is denied from now on; the event is dead-lettered
    Rejected → dead-lettered

A record's offset is finished once it is delivered, a duplicate, stored as a dead
letter or stored as a parked copy; never sooner.
"""

from __future__ import annotations

import logging
from functools import partial

from forwarder.core import dead_letters as dl
from forwarder.core import parking
from forwarder.core.events import ActionType, Origin, SourceRecord
from forwarder.core.offsets import PartitionOffsets
from forwarder.core.retry import RetryPolicy
from forwarder.core.scheduler import Job
from forwarder.engine.context import Context, job_fields, record_size
from forwarder.engine.park_flow import ParkFlow
from forwarder.engine.settle import Settle
from forwarder.limits.gate import Ticket
from forwarder.sinks.outcome import (
    Delivered,
    Denied,
    Misconfigured,
    Outcome,
    Rejected,
    Retry,
    Unauthorized,
)

REFUSALS_ON_ITS_OWN = 2
"""An event refused (401/403) again this many times, each time after the credentials
were accepted for another event sent no earlier than its previous refused send, is
dead-lettered on its own instead of halting every send again."""
PROBE_LEAD = 0.05
"""How long after the next probe may go a job that just failed as one becomes due again:
long enough for another waiting job to be that probe."""


class Outcomes:
    def __init__(
        self,
        context: Context,
        settle: Settle,
        *,
        retry: RetryPolicy,
        park_after: float,
        max_buffered: int,
    ) -> None:
        self._gate = context.gate
        self._dead_letters = context.dead_letters
        self._metrics = metrics = context.metrics
        self._scheduler = context.scheduler
        self._keys = context.keys
        self._clock = context.clock
        self._wall = context.wall
        self._log = context.log
        self._lines = context.lines
        self._progress = context.progress
        self._denied_tools = context.denied_tools
        self._settling_job = settle.settling_job
        self._retry_policy = retry
        self._park_after = park_after
        self._max_buffered = max_buffered
        self._last_delivered_sent_at = float("-inf")
        self._forwarded_by_action = {
            action: metrics.forwarded.labels(action_type=action.value) for action in ActionType
        }
        self.parking = flow = ParkFlow(context, self)
        self._may_park = flow.may_park
        self._park_lane = flow.park_lane
        self._left_retry_topic = flow.left_retry_topic
        self._park_dead_letter = flow.park_dead_letter

    def route(self, job: Job, outcome: Outcome, ticket: Ticket, now: float) -> None:
        """Apply a send's outcome, as the gate saw it, to its job."""
        probe = ticket.probes_credentials or ticket.probes_circuit or ticket.probes_configuration
        if isinstance(outcome, Delivered):
            self._last_delivered_sent_at = max(self._last_delivered_sent_at, ticket.sent_at)
            self._delivered(job, now)
        elif isinstance(outcome, Retry):
            self._retry(job, outcome, now, self._after_next_probe(now) if probe else 0.0)
        elif isinstance(outcome, Unauthorized):
            # Normally not the event's fault: it waits, attempt uncounted, behind the halt.
            job.attempts -= 1
            if not self._refused_on_its_own(job, outcome, ticket):
                self.retry_at(job, now + self._after_next_probe(now))
        elif isinstance(outcome, Misconfigured):
            job.attempts -= 1
            self.retry_at(job, now + (self._after_next_probe(now) if probe else 0.0))
        elif isinstance(outcome, Denied):
            self._denied_tools.add(job.event.action.tool)
            self.fail(job, dl.DENIED_BY_POLICY, outcome.detail)
        else:
            self._rejected(job, outcome)

    def _after_next_probe(self, now: float) -> float:
        """How long a job that just failed as a probe, or opened a halt, waits: until just
        after the next probe may go. The probe is then another waiting job, if there is
        one, so that an event failing for reasons of its own is not probed again and
        again while the halt stays shut for everyone."""
        halted = self._gate.wait(now)
        return (halted if halted != float("inf") else 0.0) + PROBE_LEAD

    def _refused_on_its_own(self, job: Job, outcome: Unauthorized, ticket: Ticket) -> bool:
        """Dead-letter an event that keeps being refused while the same credentials are
        accepted for others; True if it was. A refusal counts when an event sent no
        earlier than the previous refused send was delivered: the credentials worked
        then. Waiting past the next probe after each refusal, the event is not that
        probe while others wait, so it is the others that prove the credentials."""
        if job.refused_at is not None and self._last_delivered_sent_at >= job.refused_at:
            job.refusals += 1
        job.refused_at = ticket.sent_at
        if job.refusals < REFUSALS_ON_ITS_OWN:
            return False
        detail = (
            f"refused ({outcome.code}: {outcome.detail}) {job.refusals} times while the"
            " same credentials were accepted for other events"
        )
        status = int(outcome.code) if outcome.code.isdigit() else None
        self.fail(job, dl.REJECTED, detail, status)
        return True

    def _delivered(self, job: Job, now: float) -> None:
        self._forwarded_by_action[job.event.action].inc()
        latency = self._wall() - job.record.timestamp_ms / 1000.0
        self._metrics.delivery_latency.observe(max(0.0, latency))
        if self._log.is_enabled_for(logging.DEBUG):  # the fields cost more than the no-op call
            self._log.debug("event forwarded", **job_fields(job), attempts=job.attempts)
        duplicates = self._scheduler.complete(job, delivered=True, now=now)
        self._keys.delivered(job, now)
        self._finish(job)
        for duplicate in duplicates:
            self.finish_duplicate(duplicate)

    def _retry(self, job: Job, outcome: Retry, now: float, at_least: float) -> None:
        """Retry later (not sooner than `at_least` seconds), give up (dead letter), or
        park the lane.

        The budget is a wall-clock deadline set at the first failure (or carried in
        from the retry topic), so reading the record again never restarts it."""
        if job.first_failure_at is None:
            job.first_failure_at = now
        limit = self._retry_policy.max_elapsed
        wall = self._wall()
        if limit and job.give_up_at is None:
            job.give_up_at = wall + limit
        if job.give_up_at is not None:
            failing_for = limit - (job.give_up_at - wall)
        else:
            failing_for = now - job.first_failure_at
        delay = self._retry_policy.delay(job.attempts, failing_for, outcome.retry_after)
        if delay is None:
            detail = f"gave up after {job.attempts} attempts; last: {outcome.detail}"
            self.fail(job, dl.RETRIES_EXHAUSTED, detail)
            return
        if not outcome.throttled and self._may_park(job, now):
            offsets = job.offsets
            if now - job.first_failure_at >= self._park_after or (
                # Settling before a revocation or a stop, it would hold back what was
                # delivered after it: parked, it is finished at once.
                self._settling_job(job) and offsets.finished_after(job.record.offset)
            ):
                reason: str | None = parking.STUCK
            elif offsets.span >= self._max_buffered and offsets.oldest_unfinished == (
                job.record.offset
            ):
                reason = parking.BUFFER_FULL
            else:
                reason = None
            if reason is not None and self._park_lane(job, reason, now):
                return
        self._metrics.retries.inc()
        self._log.debug(
            "send failed; will retry",
            **job_fields(job),
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
                **job_fields(job),
            )
        self.retry_at(job, now + max(delay, at_least))

    def retry_at(self, job: Job, when: float) -> None:
        if job.cancelled:  # its partition was revoked while it was under way: dropped
            self._keys.released(job)
        for duplicate in self._scheduler.retry_at(job, when):
            self.finish_duplicate(duplicate)

    def _rejected(self, job: Job, outcome: Rejected) -> None:
        self.fail(job, dl.REJECTED, outcome.detail, outcome.status, outcome.body)

    def fail(
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
            self.dead_letter(
                job.record,
                job.offsets,
                reason,
                detail,
                job.attempts,
                job.event.key,
                status,
                body,
                origin=job.origin,
            )
            if job.origin is not None:
                self._left_retry_topic(job)
        for duplicate in duplicates:
            self.finish_duplicate(duplicate)

    def abandon(self, job: Job, now: float) -> None:
        """Give a job up unsent while its partition settles: its offset stays unfinished
        (so it is read again), its key and its lane are released."""
        for duplicate in self._scheduler.complete(job, delivered=False, now=now):
            self.finish_duplicate(duplicate)

    def finish_duplicate(self, job: Job) -> None:
        self._metrics.duplicates.inc()
        if self._log.is_enabled_for(logging.DEBUG):
            self._log.debug("duplicate event not sent again", **job_fields(job))
        self._finish(job)

    def finish_shared_duplicate(self, job: Job) -> None:
        """A copy another replica (or an earlier process) delivered, as the group knows."""
        self._metrics.duplicates_shared.inc()
        if self._log.is_enabled_for(logging.DEBUG):
            self._log.debug("duplicate event delivered by the group", **job_fields(job))
        self._finish(job)

    def _finish(self, job: Job) -> None:
        if job.cancelled:
            return
        self.finish_offset(job.record, job.offsets)
        if job.origin is not None:
            self._left_retry_topic(job)

    def finish_offset(self, record: SourceRecord, offsets: PartitionOffsets) -> None:
        offsets.finish(record.offset, record_size(record))
        self._progress.set()

    def dead_letter(
        self,
        record: SourceRecord,
        offsets: PartitionOffsets,
        reason: str,
        detail: str,
        attempts: int,
        key: str | None,
        status: int | None = None,
        body: bytes | None = None,
        *,
        origin: Origin | None = None,
    ) -> None:
        """The offset is finished only once the dead letter is stored (or parked)."""
        self._dead_letters.write(
            record,
            reason,
            detail,
            attempts=attempts,
            key=key,
            status=status,
            body=body,
            origin=origin,
            on_written=partial(self.finish_offset, record, offsets),
            on_unwritable=partial(self._park_dead_letter, record, offsets),
        )
