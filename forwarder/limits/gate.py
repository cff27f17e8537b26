"""The send gate: whether a send may start now, and what each answer changes about that.

Every rule that holds back sends *for everyone* lives here, so "what happens on a
429", "on a 401", "when the circuit opens" and "when the far end says we are
misconfigured" are each answered in this one module:

- **429 (throttled)**: the learned rate (`learned_rate.AdaptiveRate`, CUBIC-shaped)
  drops below what the server accepted and climbs back; a `Retry-After` pauses
  *every* send until it has passed, not just the event that got it.
- **401/403 (credentials refused)**: the credentials halt opens; after a pause that
  doubles up to a minute, one send goes as the probe; only its answer decides. No
  dead letters: it is not the events' fault.
- **Outage (5xx, timeouts, refused connections)**: the circuit breaker counts it;
  when most recent sends failed, the circuit opens and probes like the halt above.
- **Misconfigured** (pointed at the wrong place, a tool that does not exist): the
  configuration halt opens, probing with backoff; never dead letters. The same 4xx
  for most recent requests across many users (`RejectionStorm`) counts as this too,
  instead of dead-lettering the stream.
- **Limits**: the configured and policy limits (`LimiterSet` per tool, from a
  `LimiterBackend`) and the learned rate must all allow a send.

The gate decides; it takes the clock from its caller and holds no tasks, so tests
drive it with plain numbers. It logs state changes itself (one line per change,
repeats folded) and keeps the gauges that show them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from forwarder.config import LimitSettings, RetrySettings
from forwarder.core.events import TOOLS, TRACK_LOGIN, TRACK_LOGOUT
from forwarder.core.halts import CircuitBreaker, Halt, HaltState
from forwarder.core.policy import Policy
from forwarder.core.rejection_storm import RejectionStorm
from forwarder.limits.backend import LimiterBackend, LimiterSet, Permit
from forwarder.limits.learned_rate import AdaptiveRate
from forwarder.ops.logs import RepeatSuppressor, get_logger
from forwarder.ops.metrics import Metrics
from forwarder.sinks.outcome import (
    Delivered,
    Misconfigured,
    Outcome,
    Rejected,
    Retry,
    Unauthorized,
)

WARNING_PERIOD = 10.0
HALT_LOG_PERIOD = 60.0
MISCONFIGURED = (
    "the sink says the forwarder is misconfigured; all sends halted, nothing dead-lettered"
)


class Ticket(NamedTuple):  # one per send: a named tuple is the cheapest immutable record
    """What the gate needs to know about a send when its answer comes back."""

    sent_at: float
    credentials_epoch: int
    probes_credentials: bool
    probes_circuit: bool
    probes_configuration: bool
    permits: tuple[Permit, ...]


class SendGate:
    def __init__(
        self,
        limits: Mapping[str, LimiterSet],
        circuit: CircuitBreaker,
        metrics: Metrics,
    ) -> None:
        self._limits = limits
        self._learned = AdaptiveRate()
        self._not_before = 0.0
        self.credentials = Halt(first_pause=1.0, max_pause=60.0)
        self._credentials_epoch = 0
        self.configuration = Halt(first_pause=1.0, max_pause=60.0)
        self._rejections = RejectionStorm()
        self.circuit = circuit
        self._metrics = metrics
        self._log = get_logger("forwarder.limits.gate")
        self._warnings = RepeatSuppressor(WARNING_PERIOD)
        self._halt_lines = RepeatSuppressor(HALT_LOG_PERIOD)

    @classmethod
    def build(
        cls,
        limits: LimitSettings,
        retry: RetrySettings,
        policy: Policy,
        backend: LimiterBackend,
        metrics: Metrics,
    ) -> SendGate:
        """The gate for these settings: per tool, the configured and the policy's limits
        (the global ones and `track_auth`'s shared by both tools, limits naming one
        gateway counter sharing one allowance)."""
        configured = {TRACK_LOGIN: limits.rate_limit_login, TRACK_LOGOUT: limits.rate_limit_logout}
        shared = [
            backend.limiter(rate)
            for rate in (*policy.shared, limits.rate_limit)
            if rate is not None
        ]
        per_tool = {
            tool: LimiterSet(
                *shared,
                *(
                    backend.limiter(rate)
                    for rate in (*policy.for_tool(tool).limits, configured[tool])
                    if rate is not None
                ),
            )
            for tool in TOOLS
        }
        circuit = CircuitBreaker(
            failure_ratio=retry.circuit_failure_ratio,
            min_requests=retry.circuit_min_requests,
            window=retry.circuit_window_seconds,
            max_pause=retry.circuit_max_open_seconds,
        )
        return cls(per_tool, circuit, metrics)

    # Before a send ---------------------------------------------------------------

    def wait(self, now: float) -> float:
        """Seconds until any send may go (halts, Retry-After); 0 or less means now."""
        return max(
            self.credentials.delay(now),
            self.configuration.delay(now),
            self.circuit.halt.delay(now),
            self._not_before - now,
        )

    def limit_delay(self, tool: str, now: float) -> float:
        """Seconds until this tool's limits and the learned rate allow a send."""
        return max(self._limits[tool].delay(now), self._learned.delay(now))

    def launch(self, tool: str, now: float) -> Ticket:
        """Count a send of `tool` starting now; callers checked `wait` and `limit_delay`."""
        ticket = Ticket(
            now,
            self._credentials_epoch,
            self.credentials.state is HaltState.OPEN,
            not self.circuit.halt.is_closed,
            self.configuration.state is HaltState.OPEN,
            self._limits[tool].start(now),
        )
        self._learned.record(now)
        self.credentials.sent()
        self.configuration.sent()
        self.circuit.halt.sent()
        return ticket

    # After a send -----------------------------------------------------------------

    @staticmethod
    def finish(ticket: Ticket, now: float) -> None:
        """The send ended (whatever its outcome): its limit permits stop being in flight."""
        LimiterSet.finish(ticket.permits, now)

    def observe(
        self, outcome: Outcome, ticket: Ticket, now: float, in_flight: int, user: str
    ) -> Outcome:
        """Let the answer change what may be sent next; returns what it means for the
        event (a rejection in a storm of the same rejection is a misconfiguration)."""
        if isinstance(outcome, Rejected):
            self._rejections.observe(outcome.code, user)
            if self._rejections.raging(outcome.code):
                outcome = Misconfigured(
                    outcome.code,
                    f"{outcome.detail}, as for most recent requests across many users:"
                    " the endpoint or its configuration is wrong, not the events",
                )
        elif isinstance(outcome, Delivered):
            self._rejections.observe(None, user)
        self._credentials(outcome, ticket, now)
        self._configuration(outcome, ticket, now)
        if isinstance(outcome, Delivered):
            self._learned.on_accepted(now)
        elif isinstance(outcome, Retry):
            if outcome.throttled:
                self._learned.on_throttled(now, ticket.sent_at, in_flight)
            if outcome.retry_after is not None:
                self._not_before = max(self._not_before, now + outcome.retry_after)
        # A 429 or a refused token is an answer from a service that is up: it says
        # nothing about an outage either way, so it is counted as neither (a flood of
        # 429s must not hide the 5xx among them). As a probe's answer it does show the
        # service answering again, so the probe closes the circuit.
        if isinstance(outcome, Retry) and outcome.outage:
            failed: bool | None = True
        elif isinstance(outcome, Unauthorized) or (
            isinstance(outcome, Retry) and outcome.throttled
        ):
            failed = None
        else:
            failed = False
        if self.circuit.record(now, failed=failed, probe=ticket.probes_circuit):
            self._circuit_changed(outcome, now)
        return outcome

    def misconfigured(self, outcome: Misconfigured, now: float) -> None:
        """Open the configuration halt: on such an answer, or when the sink finds before
        the first send (`Sink.open`) that it cannot take the events as configured."""
        self._metrics.sink_misconfigured.set(1)
        self._open(self.configuration, MISCONFIGURED, outcome, now)

    def credentials_changed(self, now: float) -> None:
        """New credentials arrived: probe with them now instead of waiting out the pause
        (or for a probe still out with the old ones, whose answer is now stale)."""
        self._credentials_epoch += 1
        self.credentials.probe_now(now)

    # Readiness ----------------------------------------------------------------------

    @property
    def authorized(self) -> bool:
        return self.credentials.is_closed

    @property
    def configured(self) -> bool:
        return self.configuration.is_closed

    @property
    def circuit_closed(self) -> bool:
        return self.circuit.halt.is_closed

    # State changes ------------------------------------------------------------------

    def _credentials(self, outcome: Outcome, ticket: Ticket, now: float) -> None:
        """Only the answers to sends made with the credentials as they are now count: an
        answer to a send made before new credentials arrived, or before the last probe
        proved them good, is stale news (it would re-open a halt that just healed)."""
        if ticket.credentials_epoch != self._credentials_epoch:
            return
        if isinstance(outcome, Unauthorized):
            if not (ticket.probes_credentials or self.credentials.is_closed):
                return  # sent before the halt opened: stale news
            self._metrics.credentials_valid.set(0)
            self._open(
                self.credentials,
                "the sink rejected the API token; all sends halted until it is accepted",
                outcome,
                now,
            )
        elif ticket.probes_credentials:
            if isinstance(outcome, Retry | Misconfigured):
                # A timeout, a 5xx or a 429 says nothing about the token: probe again later.
                self.credentials.open(now)
                return
            self.credentials.close()
            self._credentials_epoch += 1
            self._metrics.credentials_valid.set(1)
            self._log.info("the sink accepted the API token again; sending resumed")

    def _configuration(self, outcome: Outcome, ticket: Ticket, now: float) -> None:
        if isinstance(outcome, Misconfigured):
            if not (ticket.probes_configuration or self.configuration.is_closed):
                return
            self.misconfigured(outcome, now)
        elif ticket.probes_configuration:
            self.configuration.close()
            self._rejections.clear()
            self._metrics.sink_misconfigured.set(0)
            self._log.info("the sink takes the events again; sending resumed")

    def _open(
        self, halt: Halt, message: str, outcome: Unauthorized | Misconfigured, now: float
    ) -> None:
        """Open (or re-open, with a longer pause) a halt; one error line a period."""
        first = halt.is_closed
        halt.open(now)
        suppressed = self._halt_lines.allow(message, now)
        if first or suppressed is not None:
            self._log.error(
                message,
                code=outcome.code,
                detail=outcome.detail,
                next_probe_in_seconds=round(halt.next_probe_at - now, 1),
                suppressed=suppressed or 0,
            )

    def _circuit_changed(self, outcome: Outcome, now: float) -> None:
        state = self.circuit.halt.state
        self._metrics.circuit_state.set(int(state))
        if state is HaltState.CLOSED:
            self._log.info("circuit closed: the sink answers again; sending resumed")
            return
        suppressed = self._warnings.allow("circuit", now)
        if suppressed is not None:
            self._log.warning(
                "circuit open: most recent sends failed; pausing all sends",
                last_error=outcome.detail if isinstance(outcome, Retry) else outcome.code,
                probe_in_seconds=round(self.circuit.halt.next_probe_at - now, 1),
                suppressed=suppressed,
            )
