"""Whether the forwarder's own topics (dead letters, parked copies) can be written.

A dead letter or a parked copy that cannot be written holds its source offset, so
an unwritable topic is a readiness failure, not just an error line: the periodic
metadata check sees a topic that is missing (or not visible to the forwarder's
credentials), the writes see everything else (no write permission, a broker
refusing). The topic counts as writable when the last check found it and the
last write, if any, succeeded. Each change is logged once (repeats folded), with
the setting that names the topic.
"""

from __future__ import annotations

from forwarder.ops.logs import RepeatSuppressor, get_logger
from forwarder.ops.metrics import Metrics

DEAD_LETTER = "dead_letter"
RETRY = "retry"
SETTINGS = {DEAD_LETTER: "FORWARDER_DLQ_TOPIC", RETRY: "FORWARDER_RETRY_TOPIC"}
WHAT = {DEAD_LETTER: "dead-letter topic", RETRY: "retry topic"}
LOG_PERIOD = 60.0


class TopicHealth:
    def __init__(self, metrics: Metrics, topics: dict[str, str]) -> None:
        self.topics = topics
        self._metrics = metrics
        self._checked: dict[str, bool] = dict.fromkeys(topics, False)
        self._written: dict[str, bool] = dict.fromkeys(topics, True)
        self._known: set[str] = set()
        self._log = get_logger("forwarder.ops.topic_health")
        self._lines = RepeatSuppressor(LOG_PERIOD)
        for role in topics:
            metrics.topic_writable.labels(role=role).set(0)

    def writable(self, role: str) -> bool:
        return self._checked[role] and self._written[role]

    def checked(self, role: str, problem: str | None, now: float) -> None:
        """The metadata check's finding: None when the topic exists and is visible."""
        self._update(role, now, problem, checked=problem is None)

    def wrote(self, role: str, problem: str | None, now: float) -> None:
        """A write's outcome: None when it was stored."""
        self._update(role, now, problem, written=problem is None)

    def _update(
        self,
        role: str,
        now: float,
        problem: str | None,
        *,
        checked: bool | None = None,
        written: bool | None = None,
    ) -> None:
        before = self.writable(role) if role in self._known else None
        if checked is not None:
            self._checked[role] = checked
        if written is not None:
            self._written[role] = written
        self._known.add(role)
        after = self.writable(role)
        self._metrics.topic_writable.labels(role=role).set(int(after))
        if after == before:
            return
        topic, setting = self.topics[role], SETTINGS[role]
        if after:
            self._log.info(f"the {WHAT[role]} can be written again", topic=topic)
            return
        suppressed = self._lines.allow(role, now)
        if suppressed is not None:
            self._log.error(
                f"the {WHAT[role]} cannot be written; not ready until it can ({setting})",
                topic=topic,
                problem=problem,
                suppressed=suppressed,
            )
