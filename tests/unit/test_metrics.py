"""The hot-path metrics expose exactly what prometheus-client's own would for the same events."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from forwarder.ops.metrics import HotCounter, HotHistogram

BUCKETS = (0.001, 0.005, 0.01, 0.25, 1, 2.5, 30, 900)

observations = st.lists(
    st.one_of(
        st.floats(min_value=0, max_value=2_000, allow_nan=False),
        st.sampled_from(BUCKETS),  # values on a bound belong to that bound's bucket
    ),
    max_size=60,
)


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


@given(observations)
def test_histogram_matches_prometheus_client(values: list[float]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotHistogram("x_seconds", "Help.", BUCKETS, registry=ours)
    reference = Histogram("x_seconds", "Help.", buckets=BUCKETS, registry=theirs)
    for value in values:
        hot.observe(value)
        reference.observe(value)
    assert exposition(ours) == exposition(theirs)


@given(st.lists(st.tuples(st.sampled_from(["200", "429", "timeout"]), st.integers(1, 5))))
def test_labelled_counter_matches_prometheus_client(increments: list[tuple[str, int]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotCounter("x_requests", "Help.", ["code"], registry=ours)
    reference = Counter("x_requests", "Help.", ["code"], registry=theirs)
    for code, amount in increments:
        hot.labels(code=code).inc(amount)
        reference.labels(code=code).inc(amount)
    assert exposition(ours) == exposition(theirs)


def test_unlabelled_counter_starts_at_zero_and_counts() -> None:
    registry = CollectorRegistry()
    counter = HotCounter("x_events", "Help.", registry=registry)
    assert registry.get_sample_value("x_events_total") == 0.0
    counter.inc()
    counter.inc(2)
    assert registry.get_sample_value("x_events_total") == 3.0
