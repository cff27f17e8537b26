"""The dispatcher and the sender pool.

One dispatcher task makes every send decision (`SendGate`: halts, Retry-After,
limits, the learned rate), so no two coroutines ever race for a rate-limit permit;
it hands each job to one of `max_in_flight` long-lived senders, which send it and
hand the outcome to `Outcomes`.
"""

from __future__ import annotations

import asyncio
import contextlib

from forwarder.core import dead_letters as dl
from forwarder.core.events import TOOLS
from forwarder.core.retry import RetryPolicy
from forwarder.core.scheduler import Job
from forwarder.engine.context import Context, job_fields
from forwarder.engine.outcomes import Outcomes
from forwarder.engine.settle import Settle
from forwarder.limits.gate import Ticket
from forwarder.ops.metrics import Tally
from forwarder.sinks.base import Sink
from forwarder.sinks.outcome import transport_failure


class Dispatch:
    def __init__(
        self,
        context: Context,
        sink: Sink,
        outcomes: Outcomes,
        settle: Settle,
        *,
        retry: RetryPolicy,
        max_in_flight: int,
    ) -> None:
        self._sink = sink
        self._gate = context.gate
        self._metrics = context.metrics
        self._scheduler = context.scheduler
        self._clock = context.clock
        self._log = context.log
        self._wake = context.wake
        self._progress = context.progress
        self._denied_tools = context.denied_tools
        self._retry_policy = retry
        self._route = outcomes.route
        self._abandon = outcomes.abandon
        self._fail = outcomes.fail
        self._retry_at = outcomes.retry_at
        self._settling_job = settle.settling_job
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._requests_by_code: dict[str, Tally] = {}
        self._senders: list[asyncio.Task[None]] = []
        self._idle: list[asyncio.Future[tuple[Job, Ticket] | None]] = []
        self._dispatching = False
        self._dispatcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._dispatching = True
        self._senders = [
            asyncio.create_task(self._sender_loop(), name=f"sender-{number}")
            for number in range(self.max_in_flight)
        ]
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="dispatcher")

    async def stop(self) -> None:
        """Stop dispatching and let idle senders go; senders under way finish their send."""
        self._dispatching = False
        self._wake.set()
        if self._dispatcher is not None:
            await self._dispatcher
        for handoff in self._idle:
            if not handoff.done():
                handoff.set_result(None)
        self._idle.clear()

    def running(self) -> set[asyncio.Task[None]]:
        """The sender tasks not yet ended."""
        return {task for task in self._senders if not task.done()}

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
        gate = self._gate
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
        ticket = self._gate.launch(tool, now)
        self._metrics.rate_limit_delay.observe(
            now - job.limited_since if job.limited_since else 0.0
        )
        job.limited_since = None
        self.in_flight += 1
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
            self._log.exception("unexpected error while sending", **job_fields(job))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # this sender is being stopped
                raise
            # A client cancelled its own work: the event is retried like any failed send.
            outcome = transport_failure("error", "the send was cancelled inside the client")
        finally:
            self._gate.finish(ticket, self._clock())
            self.in_flight -= 1
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
        outcome = self._gate.observe(outcome, ticket, now, self.in_flight, job.event.user_id)
        self._route(job, outcome, ticket, now)


_DENIED_DETAIL = "the gateway denied this tool to an earlier call; not sent again"
