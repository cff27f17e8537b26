"""Assembling a pipeline from the settings' sections (the run command and tests share it).

Each section carries its own defaults, so a caller passes only what differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from forwarder.config import DecodeSettings, DedupeSettings, LimitSettings, RetrySettings
from forwarder.core.decode import CloudEventTypes
from forwarder.core.dedupe import DeliveredWindow
from forwarder.core.policy import ALLOW_ALL, Policy
from forwarder.core.retry import Backoff, RetryPolicy
from forwarder.core.scheduler import Scheduler
from forwarder.engine.dead_letter_writer import DeadLetterStore, DeadLetterWriter
from forwarder.engine.park_writer import ParkWriter, RetryStore
from forwarder.engine.pipeline import Pipeline
from forwarder.engine.shared_keys import KeyGate
from forwarder.limits.backend import LimiterBackend
from forwarder.limits.gate import SendGate
from forwarder.limits.sliding_log import LocalLimits
from forwarder.ops.metrics import Metrics
from forwarder.ops.topic_health import TopicHealth
from forwarder.sinks.base import Sink


def build_pipeline(
    sink: Sink,
    dead_letters: DeadLetterStore,
    retries: RetryStore,
    metrics: Metrics,
    health: TopicHealth,
    *,
    policy: Policy = ALLOW_ALL,
    limits: LimitSettings | None = None,
    backend: LimiterBackend | None = None,
    keys: KeyGate | None = None,
    retry: RetrySettings | None = None,
    dedupe: DedupeSettings | None = None,
    decode: DecodeSettings | None = None,
    max_in_flight: int = 64,
    max_buffered: int = 10_000,
    max_buffered_bytes: int = 64 * 1024 * 1024,
    clock: Callable[[], float] = time.monotonic,
) -> Pipeline:
    retry = retry or RetrySettings()
    dedupe = dedupe or DedupeSettings()
    decode = decode or DecodeSettings()
    gate = SendGate.build(
        limits or LimitSettings(), retry, policy, backend or LocalLimits(), metrics
    )
    return Pipeline(
        sink,
        gate,
        DeadLetterWriter(dead_letters, metrics, clock, health, retry.park_after_seconds),
        ParkWriter(retries, metrics, health, clock),
        metrics,
        scheduler=Scheduler(DeliveredWindow(dedupe.ttl_seconds, dedupe.max_entries)),
        retry=RetryPolicy(
            retry.max_elapsed_seconds,
            Backoff(retry.initial_backoff_seconds, retry.max_backoff_seconds),
        ),
        park_after=retry.park_after_seconds,
        policy=policy,
        cloudevent_types=CloudEventTypes(
            decode.login_success_suffix, decode.login_failure_suffix, decode.logout_suffix
        ),
        max_in_flight=max_in_flight,
        max_buffered=max_buffered,
        max_buffered_bytes=max_buffered_bytes,
        keys=keys,
        clock=clock,
    )
