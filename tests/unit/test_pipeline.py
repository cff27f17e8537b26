"""The pipeline's wiring, driven with an in-memory sender and dead-letter sink (the
broker and HTTP boundaries have their own integration tests)."""

from __future__ import annotations

import asyncio
import time

import orjson

from forwarder.events import AuthEvent, SourceRecord
from forwarder.metrics import Metrics
from forwarder.outcome import Delivered, Outcome, Unauthorized
from forwarder.pipeline import Pipeline, PipelineOptions
from forwarder.policy import parse_policy
from tests.conftest import eventually


class Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[float, AuthEvent]] = []
        self.answer: Outcome = Delivered(201)

    async def send(self, event: AuthEvent) -> Outcome:
        self.sent.append((time.monotonic(), event))
        return self.answer


class DeadLetters:
    def __init__(self) -> None:
        self.written: list[tuple[SourceRecord, list[tuple[str, bytes]]]] = []

    async def write(self, record: SourceRecord, headers: list[tuple[str, bytes]]) -> None:
        self.written.append((record, headers))


def record(offset: int, kind: str = "login", user: str | None = None) -> SourceRecord:
    event = {"event_id": f"e{offset}", "type": kind, "user_id": user or f"u{offset}"}
    if kind == "login":
        event["success"] = True
    return SourceRecord("t", 0, offset, None, orjson.dumps(event), (), 0)


async def test_limits_naming_one_counter_share_its_allowance() -> None:
    limit = {"counter": "auth_calls", "window": "minute", "max": 3}
    policy = parse_policy(
        {"tools": {"track_login": {"limits": [limit]}, "track_logout": {"limits": [limit]}}}
    )
    sender = Sender()
    pipeline = Pipeline(PipelineOptions(policy=policy), sender, DeadLetters(), Metrics())
    pipeline.start()
    for offset in range(6):
        pipeline.submit(record(offset, "login" if offset % 2 else "logout"))
    await eventually(lambda: len(sender.sent) == 3)
    for _ in range(20):  # let every task run: a fourth send would start now
        await asyncio.sleep(0)
    assert len(sender.sent) == 3
    assert pipeline.in_flight == 0
    assert await pipeline.drain(1.0)


async def test_rejected_credentials_halt_everything_and_a_new_token_resumes() -> None:
    sender = Sender()
    sender.answer = Unauthorized(401, b'{"message": "invalid credentials"}')
    dead = DeadLetters()
    metrics = Metrics()
    pipeline = Pipeline(PipelineOptions(), sender, dead, metrics)
    pipeline.start()
    for offset in range(20):
        pipeline.submit(record(offset))
    await eventually(lambda: not pipeline.authorized)
    sent_while_open = len(sender.sent)
    assert metrics.registry.get_sample_value("forwarder_credentials_valid") == 0
    sender.answer = Delivered(201)
    pipeline.credentials_changed()
    await eventually(lambda: pipeline.committable() == {("t", 0): 20})
    assert pipeline.authorized
    assert dead.written == []
    # Only the sends already under way when the first 401 came back, then single probes.
    assert sent_while_open <= PipelineOptions().max_in_flight
    assert {event.key for _, event in sender.sent} >= {f"e{i}" for i in range(20)}
    assert await pipeline.drain(1.0)
