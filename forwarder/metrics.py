"""The Prometheus metrics, on a registry of their own.

A registry per forwarder (not the process-global default) keeps tests and the
demo, which run several forwarders in one process, from colliding; `forwarder
run` serves exactly this registry, plus the process and platform collectors.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from forwarder import __version__
from forwarder.dead_letters import REASONS
from forwarder.events import ActionType

# `*_created` series double the exposition for no operational use.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
_DELAY_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.consumed = Counter(
            "forwarder_events_consumed", "Records read from the source topics.", registry=r
        )
        self.forwarded = Counter(
            "forwarder_events_forwarded",
            "Events Legiti accepted, by action type.",
            ["action_type"],
            registry=r,
        )
        self.duplicates = Counter(
            "forwarder_events_duplicate",
            "Events not sent because a copy was already delivered.",
            registry=r,
        )
        self.dead_lettered = Counter(
            "forwarder_events_dead_lettered",
            "Records written to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.sink_requests = Counter(
            "forwarder_sink_requests",
            "Requests to Legiti by HTTP status ('timeout' and 'error' when there was none).",
            ["code"],
            registry=r,
        )
        self.sink_duration = Histogram(
            "forwarder_sink_request_duration_seconds",
            "Time from sending a request to Legiti to its answer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "forwarder_retries", "Sends that failed and were scheduled again.", registry=r
        )
        self.rate_limit_delay = Histogram(
            "forwarder_rate_limit_delay_seconds",
            "Time a sendable event waited for the rate limits (0 when it did not).",
            buckets=_DELAY_BUCKETS,
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
        self.delivery_latency = Histogram(
            "forwarder_event_delivery_latency_seconds",
            "Time from the record's Kafka timestamp to Legiti's acceptance.",
            buckets=_LATENCY_BUCKETS,
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
        self.commits = Counter(
            "forwarder_offset_commits", "Offset commits, by result.", ["result"], registry=r
        )
        self.rebalances = Counter(
            "forwarder_rebalances", "Partition assignments received from the group.", registry=r
        )
        self.build_info = Info("forwarder_build", "Version of the forwarder.", registry=r)
        self.build_info.info({"version": __version__})
        self.credentials_valid.set(1)
        for action in ActionType:
            self.forwarded.labels(action_type=action.value)
        for reason in REASONS:
            self.dead_lettered.labels(reason=reason)
