"""The Prometheus metrics, on a registry of their own.

A registry per forwarder (not the process-global default) keeps tests and the
demo, which run several forwarders in one process, from colliding; `forwarder
run` serves exactly this registry, plus the process and platform collectors.

The six series every event touches (consumed, forwarded, sink requests and the
three latency histograms) are plain numbers the event loop bumps and the
registry reads at scrape time (`HotCounter`, `HotHistogram`): prometheus-client's
own metrics take a lock per increment and walk the buckets per observation, which
cost more per event than the rest of the bookkeeping. The forwarder is one
thread on one event loop, so nothing else writes them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from forwarder import __version__
from forwarder.core.dead_letters import REASONS
from forwarder.core.events import ActionType
from forwarder.core.parking import PARK_REASONS

# `*_created` series double the exposition for no operational use.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
_DELAY_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Tally:
    """One counter series: a number the event loop adds to."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HotCounter(Collector):
    """A counter (`<name>_total`) whose series are `Tally`s, one per label values."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry,
    ) -> None:
        self._name, self._documentation, self._labelnames = name, documentation, list(labelnames)
        self._series: dict[tuple[str, ...], Tally] = {}
        if not labelnames:
            self._series[()] = Tally()
        registry.register(self)

    def labels(self, **labels: str) -> Tally:
        key = tuple(labels[name] for name in self._labelnames)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Tally()
        return series

    def inc(self, amount: float = 1.0) -> None:
        self._series[()].inc(amount)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for key, series in self._series.items():
            family.add_metric(list(key), series.value)
        yield family


class HotHistogram(Collector):
    """A histogram without labels: a count per bucket and a sum, cumulated at scrape time."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        *,
        registry: CollectorRegistry,
    ) -> None:
        self._name, self._documentation = name, documentation
        self._bounds = [float(bound) for bound in buckets]
        # `le` labels written exactly as prometheus-client's own histograms write them.
        self._labels = [
            floatToGoString(bound)  # type: ignore[no-untyped-call]
            for bound in [*self._bounds, float("inf")]
        ]
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        # Buckets are `le`: a value equal to a bound belongs to that bound's bucket.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for label, count in zip(self._labels, self._counts, strict=True):
            cumulative += count
            buckets.append((label, cumulative))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=self._sum
        )


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.consumed = HotCounter(
            "forwarder_events_consumed", "Records read from the source topics.", registry=r
        )
        self.forwarded = HotCounter(
            "forwarder_events_forwarded",
            "Events Legiti accepted, by action type.",
            ["action_type"],
            registry=r,
        )
        duplicates = Counter(
            "forwarder_events_duplicate",
            "Events not sent because a copy was already delivered, by who knew it:"
            " this replica's memory (local) or the group's shared state (shared).",
            ["scope"],
            registry=r,
        )
        self.duplicates = duplicates.labels(scope="local")
        self.duplicates_shared = duplicates.labels(scope="shared")
        self.dead_lettered = Counter(
            "forwarder_events_dead_lettered",
            "Records written to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.sink_requests = HotCounter(
            "forwarder_sink_requests",
            "Requests to Legiti by HTTP status ('timeout' and 'error' when there was none).",
            ["code"],
            registry=r,
        )
        self.sink_duration = HotHistogram(
            "forwarder_sink_request_duration_seconds",
            "Time from sending a request to Legiti to its answer.",
            _LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_letter_write_failures = Counter(
            "forwarder_dead_letter_write_failures",
            "Attempts to write a dead letter that failed (each is retried until it sticks).",
            registry=r,
        )
        self.retries = Counter(
            "forwarder_retries", "Sends that failed and were scheduled again.", registry=r
        )
        self.rate_limit_delay = HotHistogram(
            "forwarder_rate_limit_delay_seconds",
            "Time a sendable event waited for the rate limits (0 when it did not).",
            _DELAY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "forwarder_in_flight_events", "Requests to Legiti awaiting an answer.", registry=r
        )
        self.buffered = Gauge(
            "forwarder_buffered_events",
            "Records consumed and not yet finished (bounded by max_buffered_events).",
            registry=r,
        )
        self.lag = Gauge(
            "forwarder_consumer_lag",
            "Records in the partition not yet finished: high watermark minus committable offset.",
            ["topic", "partition"],
            registry=r,
        )
        self.delivery_latency = HotHistogram(
            "forwarder_event_delivery_latency_seconds",
            "Time from the record's Kafka timestamp to Legiti's acceptance.",
            _LATENCY_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "forwarder_ready",
            "1 when in the consumer group, authorised and circuit closed.",
            registry=r,
        )
        self.circuit_state = Gauge(
            "forwarder_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", registry=r
        )
        self.credentials_valid = Gauge(
            "forwarder_credentials_valid", "0 while Legiti rejects the API token.", registry=r
        )
        self.sink_misconfigured = Gauge(
            "forwarder_sink_misconfigured",
            "1 while the sink says the forwarder is pointed at the wrong place (sends halted).",
            registry=r,
        )
        self.users_waiting = Gauge(
            "forwarder_users_waiting",
            "Users with events consumed and not yet finished (one lane each).",
            registry=r,
        )
        self.parked = Counter(
            "forwarder_events_parked",
            "Records written to the retry topic because they could not finish, by reason.",
            ["reason"],
            registry=r,
        )
        self.users_parked = Gauge(
            "forwarder_users_parked",
            "Users (per source partition) with events in the retry topic not yet finished.",
            registry=r,
        )
        self.topic_writable = Gauge(
            "forwarder_topic_writable",
            "1 while the forwarder's own topic (role dead_letter or retry) can be written.",
            ["role"],
            registry=r,
        )
        self.commits = Counter(
            "forwarder_offset_commits", "Offset commits, by result.", ["result"], registry=r
        )
        self.rebalances = Counter(
            "forwarder_rebalances", "Partition assignments received from the group.", registry=r
        )
        self.shared_state_up = Gauge(
            "forwarder_shared_state_up",
            "1 while the group's shared state (Redis) is reachable; 0 while limits fall back"
            " to the partition share and de-duplication to this replica's memory.",
            registry=r,
        )
        self.rate_limit_share = Gauge(
            "forwarder_rate_limit_share",
            "Fraction of each rate limit this replica may use now: 1 with shared state,"
            " else its share of the partitions (0 while a gained share waits out the window).",
            registry=r,
        )
        self.build_info = Info("forwarder_build", "Version of the forwarder.", registry=r)
        self.build_info.info({"version": __version__})
        self.credentials_valid.set(1)
        for action in ActionType:
            self.forwarded.labels(action_type=action.value)
        for reason in REASONS:
            self.dead_lettered.labels(reason=reason)
        for reason in PARK_REASONS:
            self.parked.labels(reason=reason)
