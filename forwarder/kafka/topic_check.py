"""Checking that the dead-letter and retry topics exist, at start-up and every so often.

The check asks for the topics' metadata *without* letting the broker create them
(`allow_auto_topic_creation=False`): a broker that creates topics on first use
would otherwise answer "it exists" by creating it with its default settings, and
the producer's own metadata requests do exactly that. A topic deleted while the
forwarder runs is found at the next check. The retry topic's partition count is
read here too: parking needs it, and per-user order across replicas needs it to
match the source topics' (see `core.parking`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiokafka.errors import for_code
from aiokafka.protocol.metadata import MetadataRequest

from forwarder.kafka.retry_topic import KafkaRetryTopic
from forwarder.ops.logs import RepeatSuppressor, get_logger
from forwarder.ops.topic_health import DEAD_LETTER, RETRY, TopicHealth

UNKNOWN_TOPIC = 3
NOT_AUTHORISED = 29
LOG_PERIOD = 60.0
CHECK_TIMEOUT = 10.0
"""A check that gets no answer this soon is skipped (the next one comes at its interval):
it must never hold up the start or a stop."""


def problem(error_code: int) -> str | None:
    """What a topic's metadata error code means for writing to it (None: nothing)."""
    if error_code == 0:
        return None
    if error_code == UNKNOWN_TOPIC:
        return "the topic does not exist"
    if error_code == NOT_AUTHORISED:
        return "the forwarder's credentials may not see the topic"
    return f"the broker reports {for_code(error_code).__name__} for the topic"


class TopicCheck:
    def __init__(
        self,
        client: Any,
        health: TopicHealth,
        retries: KafkaRetryTopic,
        sources: list[str],
        interval: float,
    ) -> None:
        self._client = client
        self._health = health
        self._retries = retries
        self._sources = sources
        self._interval = interval
        self._log = get_logger("forwarder.kafka.topic_check")
        self._lines = RepeatSuppressor(LOG_PERIOD)

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `interval` seconds until `stop` is set (the caller checks first)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
            if not stop.is_set():
                await self.check()

    async def check(self) -> None:
        roles = {self._health.topics[DEAD_LETTER]: DEAD_LETTER, self._retries.topic: RETRY}
        request = MetadataRequest([*roles, *self._sources], allow_auto_topic_creation=False)
        try:
            node = self._client.get_random_node()
            response = await asyncio.wait_for(self._client.send(node, request), CHECK_TIMEOUT)
            topics = response.to_object()["topics"]
        except Exception as exc:  # the brokers away: readiness says so through the group
            if self._lines.allow("check", time.monotonic()) is not None:
                self._log.warning("cannot check the dead-letter and retry topics", error=repr(exc))
            return
        now = time.monotonic()
        partitions: dict[str, int] = {}
        for topic in topics:
            name, code = topic["topic"], topic["error_code"]
            if code == 0:
                partitions[name] = len(topic["partitions"])
            if name in roles:
                self._health.checked(roles[name], problem(code), now)
        retry_partitions = partitions.get(self._retries.topic)
        if retry_partitions is not None:
            self._retries.partitions = retry_partitions
            self._compare(retry_partitions, partitions, now)

    def _compare(self, retry_partitions: int, partitions: dict[str, int], now: float) -> None:
        differing = {
            topic: count
            for topic in self._sources
            if (count := partitions.get(topic)) is not None and count != retry_partitions
        }
        if differing and self._lines.allow("partitions", now) is not None:
            self._log.warning(
                "the retry topic and a source topic have different partition counts: with"
                " several replicas, per-user order of parked events is not kept",
                retry_topic=self._retries.topic,
                retry_partitions=retry_partitions,
                source_partitions=differing,
            )
