"""`forwarder run`: wire the pieces together, run until told to stop, drain, exit.

Start-up order matters: the metrics port comes up first so that a pod waiting
for unreachable brokers is visibly alive but not ready, instead of crash-looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from forwarder.config import LimitSettings, Settings
from forwarder.core.policy import ALLOW_ALL, Policy, PolicyError, load_policy
from forwarder.core.retry import Backoff
from forwarder.engine.build import build_pipeline
from forwarder.engine.dead_letter_writer import DeadLetterStore
from forwarder.engine.pipeline import Pipeline
from forwarder.engine.shared_keys import KeyGate, LocalKeys, SharedKeys
from forwarder.kafka.dead_letters import KafkaDeadLetters
from forwarder.kafka.options import KafkaSecretError, consumer_options, producer_options
from forwarder.kafka.retry_topic import KafkaRetryTopic
from forwarder.kafka.source import CLOSE_STEP_TIMEOUT, COMMIT_TIMEOUT, KafkaSource
from forwarder.kafka.topic_check import TopicCheck
from forwarder.limits.backend import LimiterBackend
from forwarder.limits.fleet import FleetLimits
from forwarder.limits.partition_share import ShareLimits
from forwarder.limits.shared_log import SharedLog
from forwarder.ops.health import HealthServer
from forwarder.ops.logs import RepeatSuppressor, get_logger, register_secret
from forwarder.ops.metrics import Metrics
from forwarder.ops.topic_health import DEAD_LETTER, RETRY, TopicHealth
from forwarder.runtime import install_signal_handlers
from forwarder.shared.connection import redis_target
from forwarder.shared.dedupe import SharedDedupe
from forwarder.shared.status import SharedStatus
from forwarder.sinks.base import Sink, SinkMisconfigured
from forwarder.sinks.credentials import TokenError, TokenSource
from forwarder.sinks.factory import SinkSetupError, build_sink
from forwarder.sinks.outcome import Misconfigured

TOKEN_CHECK_INTERVAL = 1.0
TOKEN_ERROR_LOG_PERIOD = 60.0
REDIS_TIMEOUT = 1.0
"""Connecting to Redis and each reply: past it, the replica falls back to its share."""
T = TypeVar("T")


START_RETRY = Backoff(initial=1.0, maximum=30.0)
"""Pauses between attempts to start a Kafka client: 1 s doubling to 30 s."""


class StartupError(RuntimeError):
    """Something in the configuration's surroundings (a file, a port) is wrong: exit 2."""


def load_policy_file(settings: LimitSettings) -> Policy:
    try:
        return load_policy(settings.policy_file) if settings.policy_file else ALLOW_ALL
    except PolicyError as exc:
        raise StartupError(f"FORWARDER_POLICY_FILE: {exc}") from exc


async def start_with_retry(
    what: str, factory: Callable[[], T], start: Callable[[T], Awaitable[Any]], stop: asyncio.Event
) -> T | None:
    """Start a Kafka client, retrying with backoff while the brokers cannot be reached.

    A broker outage at start-up is not a reason to crash-loop: the pod stays up,
    reports not ready and says in its log what it is waiting for."""
    log = get_logger("forwarder.commands.run")
    attempt = 0
    while not stop.is_set():
        attempt += 1
        delay = START_RETRY.cap(attempt)
        client = factory()
        try:
            await start(client)
            return client
        except KafkaError as exc:
            with contextlib.suppress(Exception):
                await client.stop()  # type: ignore[attr-defined]
            log.warning(
                f"cannot start the kafka {what}; retrying", error=repr(exc), retry_in_seconds=delay
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return None


def fleet_parts(settings: Settings, metrics: Metrics) -> tuple[LimiterBackend, KeyGate, str]:
    """The limiter backend and the key gate for this configuration, and how the shared
    state is described in the start-up line. With FORWARDER_REDIS_URL: the group's log
    and de-duplication in Redis; without: the partition share and local memory."""
    timeout = settings.sink.http_timeout_seconds
    url = settings.shared.redis_url
    if url is None:
        limits = ShareLimits(time.monotonic(), settle=timeout)
        metrics.rate_limit_share.set_function(lambda: limits.share(time.monotonic()))
        return limits, LocalKeys(), "none (limits split by partition share)"
    try:
        target = redis_target(
            url.get_secret_value(), settings.kafka.group_id, settings.shared.redis_password_file
        )
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    status = SharedStatus(target.display, lambda up: metrics.shared_state_up.set(int(up)))
    fleet = FleetLimits(
        SharedLog(target.client(REDIS_TIMEOUT), target.prefix),
        status,
        prefix=target.prefix,
        send_timeout=timeout,
        now=time.monotonic(),
    )
    metrics.rate_limit_share.set_function(lambda: fleet.share(time.monotonic()))
    keys: KeyGate = LocalKeys()
    if settings.dedupe.ttl_seconds > 0:
        keys = SharedKeys(
            SharedDedupe(
                target.client(REDIS_TIMEOUT),
                status,
                prefix=target.dedupe_prefix,
                ttl=settings.dedupe.ttl_seconds,
                # At least a request's timeout: a live holder renews it, a dead one's lapses.
                claim_ttl=timeout + REDIS_TIMEOUT,
            )
        )
    return fleet, keys, target.display


class Forwarder:
    """One forwarder: the pipeline between a consumer group and the sink."""

    def __init__(
        self,
        settings: Settings,
        sink: Sink | None = None,
        dead_letters: DeadLetterStore | None = None,
    ) -> None:
        """`sink` and `dead_letters` replace the configured sink and the dead-letter
        producer (the benchmark and failure-injection tests use this)."""
        self.settings = settings
        self.metrics = Metrics()
        if settings.kafka.sasl_password is not None:
            register_secret(settings.kafka.sasl_password.get_secret_value())
        self.policy = load_policy_file(settings.limits)
        try:
            built = build_sink(settings.sink, self.policy)
        except SinkSetupError as exc:
            raise StartupError(str(exc)) from exc
        self._own_sink = sink is None
        self.sink: Sink = sink or built.sink
        self.credentials: TokenSource | None = built.credentials
        self._sink_description = built.describe
        self._dead_letters = dead_letters
        self.limits, self.keys, self._shared = fleet_parts(settings, self.metrics)
        self.pipeline: Pipeline | None = None
        self.source: KafkaSource | None = None
        self.topics = TopicHealth(
            self.metrics,
            {DEAD_LETTER: settings.kafka.dead_letter_topic, RETRY: settings.kafka.retry_topic_name},
        )
        self.health = HealthServer(
            self.metrics, self.readiness, settings.ops.metrics_host, settings.ops.metrics_port
        )
        self._log = get_logger("forwarder.commands.run")

    def readiness(self) -> dict[str, bool]:
        pipeline = self.pipeline
        return {
            "consumer_group": self.source is not None and self.source.in_group,
            "credentials": pipeline is not None and pipeline.gate.authorized,
            "circuit": pipeline is not None and pipeline.gate.circuit_closed,
            "sink_configuration": pipeline is not None and pipeline.gate.configured,
            "dead_letter_topic": self.topics.writable(DEAD_LETTER),
            "retry_topic": self.topics.writable(RETRY),
        }

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        try:
            await self.health.start()
        except OSError as exc:
            where = f"{settings.ops.metrics_host}:{settings.ops.metrics_port}"
            raise StartupError(f"FORWARDER_METRICS_PORT: cannot listen on {where}: {exc}") from exc
        self._log.info(
            "forwarder starting",
            topics=settings.kafka.topics,
            group_id=settings.kafka.group_id,
            dead_letter_topic=settings.kafka.dead_letter_topic,
            retry_topic=settings.kafka.retry_topic_name,
            sink=self._sink_description,
            metrics_port=self.health.port,
            shared_state=self._shared,
        )
        try:
            await self._run(stop)
        finally:
            await self.health.stop()
            if self._own_sink:
                await self.sink.aclose()

    async def _run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        # A revoked partition's requests end within the HTTP timeout: wait that long for
        # them (never past the shutdown timeout), inside a rebalance timeout that also
        # leaves room for the commit after it.
        settle_timeout = min(
            settings.ops.shutdown_timeout_seconds, settings.sink.http_timeout_seconds + 1.0
        )
        try:
            consumer_kwargs = consumer_options(
                settings.kafka, rebalance_timeout=settle_timeout + COMMIT_TIMEOUT + 2.0
            )
            producer_kwargs = producer_options(settings.kafka)
        except KafkaSecretError as exc:
            raise StartupError(str(exc)) from exc
        producer = await start_with_retry(
            "producer", lambda: AIOKafkaProducer(**producer_kwargs), lambda p: p.start(), stop
        )
        if producer is None:
            return
        retries = KafkaRetryTopic(producer, settings.kafka.retry_topic_name)
        check = TopicCheck(
            producer.client,
            self.topics,
            retries,
            settings.kafka.topics,
            settings.ops.topic_check_interval_seconds,
        )
        await check.check()  # before the consumer: parking needs the retry topic's size
        checker = asyncio.create_task(check.run(stop), name="topic-check")
        try:
            pipeline = build_pipeline(
                self.sink,
                self._dead_letters or KafkaDeadLetters(producer, settings.kafka.dead_letter_topic),
                retries,
                self.metrics,
                self.topics,
                policy=self.policy,
                limits=settings.limits,
                backend=self.limits,
                keys=self.keys,
                retry=settings.retry,
                dedupe=settings.dedupe,
                decode=settings.decode,
                max_in_flight=settings.sink.max_in_flight,
                max_buffered=settings.kafka.max_buffered_events,
                max_buffered_bytes=settings.kafka.max_buffered_bytes,
            )
            self.pipeline = pipeline
            consumer = await start_with_retry(
                "consumer",
                lambda: AIOKafkaConsumer(**consumer_kwargs),
                AIOKafkaConsumer.start,
                stop,
            )
            if consumer is None:
                return
            source = KafkaSource(
                consumer,
                [*settings.kafka.topics, retries.topic],
                pipeline,
                self.metrics,
                settings.kafka.commit_interval_seconds,
                max_poll_records=settings.kafka.max_poll_records,
                settle_timeout=settle_timeout,
                rebalanced=self.limits.rebalanced,
            )
            self.source = source
            try:
                await self.sink.open()
            except SinkMisconfigured as exc:
                # Not ready and nothing sent: the first send after the pause probes again.
                pipeline.gate.misconfigured(Misconfigured("open", str(exc)), time.monotonic())
            await self.limits.start(pipeline.wake)
            await self.keys.start()
            pipeline.start()
            watcher = asyncio.create_task(self._watch_credentials(stop, pipeline))
            try:
                await source.run(stop)
            finally:
                watcher.cancel()
                self._log.info("stopping: draining in-flight sends", in_flight=pipeline.in_flight)
                drained = await pipeline.drain(settings.ops.shutdown_timeout_seconds)
                await source.close()
                await self.keys.aclose()
                await self.limits.aclose()
                self._log.info(
                    "forwarder stopped", drained=drained, committed=pipeline.committable()
                )
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
            try:
                await asyncio.wait_for(producer.stop(), CLOSE_STEP_TIMEOUT)
            except TimeoutError:
                self._log.warning("stopping the dead-letter producer timed out")

    async def _watch_credentials(self, stop: asyncio.Event, pipeline: Pipeline) -> None:
        credentials = self.credentials
        if credentials is None or credentials.path is None:
            return
        token_errors = RepeatSuppressor(TOKEN_ERROR_LOG_PERIOD)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TOKEN_CHECK_INTERVAL)
            try:
                changed = credentials.refresh()
            except TokenError as exc:
                suppressed = token_errors.allow("token-file", time.monotonic())
                if suppressed is not None:
                    self._log.error(
                        "cannot re-read the API token file; the last token stays in use",
                        error=str(exc),
                        suppressed=suppressed,
                    )
                continue
            if changed:
                self._log.info("API token file changed; using the new token")
                pipeline.gate.credentials_changed(time.monotonic())
                pipeline.wake()


async def run_forever(settings: Settings) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await Forwarder(settings).run(stop)
