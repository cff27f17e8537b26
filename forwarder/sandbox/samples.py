"""Reading a forwarder's metrics back: from its registry in this process, or scraped.

The demo's progress line, the benchmark's counts and the tests' assertions all read
the same numbers an operator's Prometheus would; both sources go through one parser.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


def sample_key(name: str, labels: Mapping[str, str] | None = None) -> str:
    """`name{a="1",b="2"}` with the labels sorted; just `name` without labels."""
    if not labels:
        return name
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


class Samples(Mapping[str, float]):
    """Every sample at one moment, keyed as `sample_key` writes them."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._values: dict[str, float] = {}
        self._totals: dict[str, float] = {}
        for family in families:
            for sample in family.samples:
                self._values[sample_key(sample.name, sample.labels)] = sample.value
                self._totals[sample.name] = self._totals.get(sample.name, 0.0) + sample.value

    @classmethod
    def of_registry(cls, registry: CollectorRegistry) -> Samples:
        return cls(registry.collect())

    @classmethod
    def parse(cls, exposition: str) -> Samples:
        """The text a /metrics endpoint serves."""
        return cls(text_string_to_metric_families(exposition))

    def value(self, name: str, **labels: str) -> float:
        """One series; 0 for a series not (yet) exported, as a counter that never moved."""
        return self._values.get(sample_key(name, labels), 0.0)

    def total(self, name: str) -> float:
        """The sum over every label value of `name`."""
        return self._totals.get(name, 0.0)

    def __getitem__(self, key: str) -> float:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)
