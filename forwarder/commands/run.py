"""`forwarder run`: wire the pieces together, run until told to stop, drain, exit.

Start-up order matters: the metrics port comes up first so that a pod waiting
for unreachable brokers is visibly alive but not ready, instead of crash-looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from forwarder.config import Settings
from forwarder.core.dead_letters import DeadLetterSink, KafkaDeadLetters
from forwarder.core.decode import CloudEventTypes
from forwarder.core.policy import ALLOW_ALL, PolicyError, load_policy
from forwarder.engine.pipeline import Pipeline, PipelineOptions, Sender
from forwarder.kafka.options import KafkaSecretError, consumer_options, producer_options
from forwarder.kafka.source import KafkaSource
from forwarder.ops.health import HealthServer
from forwarder.ops.logs import get_logger, register_secret
from forwarder.ops.metrics import Metrics
from forwarder.sinks.credentials import TokenError, TokenSource
from forwarder.sinks.legiti.client import LegitiSink

TOKEN_CHECK_INTERVAL = 1.0
T = TypeVar("T")


class StartupError(RuntimeError):
    """Something in the configuration's surroundings (a file, a port) is wrong: exit 2."""


def pipeline_options(settings: Settings) -> PipelineOptions:
    try:
        policy = (
            load_policy(settings.limits.policy_file) if settings.limits.policy_file else ALLOW_ALL
        )
    except PolicyError as exc:
        raise StartupError(f"FORWARDER_POLICY_FILE: {exc}") from exc
    return PipelineOptions(
        max_in_flight=settings.sink.max_in_flight,
        max_buffered=settings.kafka.max_buffered_events,
        retry_max_elapsed=settings.retry.max_elapsed_seconds,
        retry_initial_backoff=settings.retry.initial_backoff_seconds,
        retry_max_backoff=settings.retry.max_backoff_seconds,
        dedupe_ttl=settings.dedupe.ttl_seconds,
        dedupe_max_entries=settings.dedupe.max_entries,
        rate_limit=settings.limits.rate_limit,
        rate_limit_login=settings.limits.rate_limit_login,
        rate_limit_logout=settings.limits.rate_limit_logout,
        policy=policy,
        cloudevent_types=CloudEventTypes(
            settings.decode.login_success_suffix,
            settings.decode.login_failure_suffix,
            settings.decode.logout_suffix,
        ),
        circuit_failure_ratio=settings.retry.circuit_failure_ratio,
        circuit_min_requests=settings.retry.circuit_min_requests,
        circuit_window=settings.retry.circuit_window_seconds,
        circuit_max_open=settings.retry.circuit_max_open_seconds,
    )


def token_source(settings: Settings) -> TokenSource:
    try:
        if settings.sink.api_token is not None:
            return TokenSource(token=settings.sink.api_token.get_secret_value())
        return TokenSource(path=settings.sink.api_token_file)
    except TokenError as exc:
        raise StartupError(f"FORWARDER_LEGITI_API_TOKEN_FILE: {exc}") from exc


async def start_with_retry(
    what: str, factory: Callable[[], T], start: Callable[[T], Awaitable[Any]], stop: asyncio.Event
) -> T | None:
    """Start a Kafka client, retrying with backoff while the brokers cannot be reached.

    A broker outage at start-up is not a reason to crash-loop: the pod stays up,
    reports not ready and says in its log what it is waiting for."""
    log = get_logger("forwarder.commands.run")
    delay = 1.0
    while not stop.is_set():
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
        delay = min(delay * 2, 30.0)
    return None


class Forwarder:
    """One forwarder: the pipeline between a consumer group and Legiti."""

    def __init__(
        self,
        settings: Settings,
        sender: Sender | None = None,
        dead_letters: DeadLetterSink | None = None,
    ) -> None:
        """`sender` and `dead_letters` replace the Legiti client and the dead-letter
        producer (the benchmark and failure-injection tests use this)."""
        self.settings = settings
        self.metrics = Metrics()
        self.token = token_source(settings)
        if settings.kafka.sasl_password is not None:
            register_secret(settings.kafka.sasl_password.get_secret_value())
        self._own_sink = sender is None
        self._dead_letters = dead_letters
        self.sink: Sender = sender or LegitiSink(
            settings.sink.base_url,
            self.token,
            timeout=settings.sink.http_timeout_seconds,
            max_connections=settings.sink.max_in_flight,
        )
        self.options = pipeline_options(settings)
        self.pipeline: Pipeline | None = None
        self.source: KafkaSource | None = None
        self.health = HealthServer(
            self.metrics, self.readiness, settings.ops.metrics_host, settings.ops.metrics_port
        )
        self._log = get_logger("forwarder.commands.run")

    def readiness(self) -> dict[str, bool]:
        pipeline = self.pipeline
        return {
            "consumer_group": self.source is not None and self.source.in_group,
            "credentials": pipeline is not None and pipeline.authorized,
            "circuit": pipeline is not None and pipeline.circuit_closed,
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
            legiti=settings.sink.base_url,
            metrics_port=self.health.port,
        )
        try:
            await self._run(stop)
        finally:
            await self.health.stop()
            if self._own_sink and isinstance(self.sink, LegitiSink):
                await self.sink.aclose()

    async def _run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        try:
            consumer_kwargs = consumer_options(settings.kafka)
            producer_kwargs = producer_options(settings.kafka)
        except KafkaSecretError as exc:
            raise StartupError(str(exc)) from exc
        producer = await start_with_retry(
            "producer", lambda: AIOKafkaProducer(**producer_kwargs), lambda p: p.start(), stop
        )
        if producer is None:
            return
        try:
            pipeline = Pipeline(
                self.options,
                self.sink,
                self._dead_letters or KafkaDeadLetters(producer, settings.kafka.dead_letter_topic),
                self.metrics,
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
                settings.kafka.topics,
                pipeline,
                self.metrics,
                settings.kafka.commit_interval_seconds,
            )
            self.source = source
            pipeline.start()
            watcher = asyncio.create_task(self._watch_token(stop, pipeline))
            try:
                await source.run(stop)
            finally:
                watcher.cancel()
                self._log.info("stopping: draining in-flight sends", in_flight=pipeline.in_flight)
                drained = await pipeline.drain(settings.ops.shutdown_timeout_seconds)
                await source.close()
                self._log.info(
                    "forwarder stopped", drained=drained, committed=pipeline.committable()
                )
        finally:
            await producer.stop()

    async def _watch_token(self, stop: asyncio.Event, pipeline: Pipeline) -> None:
        if self.token.path is None:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TOKEN_CHECK_INTERVAL)
            try:
                changed = self.token.refresh()
            except TokenError as exc:
                self._log.error("cannot re-read the API token file", error=str(exc))
                continue
            if changed:
                self._log.info("API token file changed; using the new token")
                pipeline.credentials_changed()


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    log = get_logger("forwarder.commands.run")

    def request_stop(signame: str) -> None:
        if not stop.is_set():
            log.info("signal received; shutting down", signal=signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)


async def run_forever(settings: Settings) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await Forwarder(settings).run(stop)
