"""The pipeline's wiring, driven with an in-memory sender and dead-letter sink (the
broker and HTTP boundaries have their own integration tests)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from forwarder.config import RetrySettings
from forwarder.core.events import AuthEvent, SourceRecord
from forwarder.core.policy import parse_policy
from forwarder.engine.build import build_pipeline
from forwarder.engine.pipeline import Pipeline
from forwarder.ops.metrics import Metrics
from forwarder.sinks.base import Sink
from forwarder.sinks.outcome import (
    Delivered,
    Denied,
    Misconfigured,
    Outcome,
    Rejected,
    Unauthorized,
)
from tests import factories
from tests.conftest import eventually


class Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[float, AuthEvent]] = []
        self.answer: Outcome = Delivered("201")

    async def open(self) -> None:
        pass

    async def send(self, event: AuthEvent) -> Outcome:
        self.sent.append((time.monotonic(), event))
        return self.answer

    async def aclose(self) -> None:
        pass


class DeadLetters:
    def __init__(self) -> None:
        self.written: list[tuple[SourceRecord, list[tuple[str, bytes]]]] = []

    async def write(self, record: SourceRecord, headers: list[tuple[str, bytes]]) -> None:
        self.written.append((record, headers))


def record(offset: int, kind: str = "login", user: str | None = None) -> SourceRecord:
    return factories.record(
        factories.native(f"e{offset}", user or f"u{offset}", kind), topic="t", offset=offset
    )


def running(
    sender: Sink,
    dead: DeadLetters | None = None,
    metrics: Metrics | None = None,
    **options: Any,
) -> Pipeline:
    """A started pipeline; `options` are `build_pipeline`'s (sections, bounds, policy)."""
    pipeline = build_pipeline(
        sender,
        DeadLetters() if dead is None else dead,
        Metrics() if metrics is None else metrics,
        **options,
    )
    pipeline.start()
    return pipeline


async def test_limits_naming_one_counter_share_its_allowance() -> None:
    limit = {"counter": "auth_calls", "window": "minute", "max": 3}
    policy = parse_policy(
        {"tools": {"track_login": {"limits": [limit]}, "track_logout": {"limits": [limit]}}}
    )
    sender = Sender()
    pipeline = running(sender, policy=policy)
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
    sender.answer = Unauthorized("401", "legiti answered 401")
    dead = DeadLetters()
    metrics = Metrics()
    pipeline = running(sender, dead, metrics)
    for offset in range(20):
        pipeline.submit(record(offset))
    await eventually(lambda: not pipeline.gate.authorized)
    sent_while_open = len(sender.sent)
    assert metrics.registry.get_sample_value("forwarder_credentials_valid") == 0
    sender.answer = Delivered("201")
    pipeline.gate.credentials_changed(time.monotonic())
    pipeline.wake()
    await eventually(lambda: pipeline.committable() == {("t", 0): 20})
    assert pipeline.gate.authorized
    assert dead.written == []
    # Only the sends already under way when the first 401 came back, then single probes.
    assert sent_while_open <= 64  # max_in_flight
    assert {event.key for _, event in sender.sent} >= {f"e{i}" for i in range(20)}
    assert await pipeline.drain(1.0)


DELIVERED = Delivered("201")


class HeldSender:
    """Answers only once released, so a test can hold sends in flight."""

    def __init__(self, answer: Outcome = DELIVERED) -> None:
        self.sent: list[AuthEvent] = []
        self.release = asyncio.Event()
        self.answer = answer

    async def send(self, event: AuthEvent) -> Outcome:
        self.sent.append(event)
        await self.release.wait()
        return self.answer


async def test_sends_never_exceed_max_in_flight_and_every_one_finishes() -> None:
    sender = HeldSender()
    pipeline = running(sender, max_in_flight=3)
    for offset in range(10):
        pipeline.submit(record(offset))
    await eventually(lambda: len(sender.sent) == 3)
    for _ in range(20):  # let every task run: a fourth send would start now
        await asyncio.sleep(0)
    assert (len(sender.sent), pipeline.in_flight) == (3, 3)
    sender.release.set()
    await eventually(lambda: pipeline.committable() == {("t", 0): 10})
    assert sorted(event.key for event in sender.sent) == sorted(f"e{i}" for i in range(10))
    assert await pipeline.drain(1.0)


async def test_drain_cancels_sends_that_outlast_the_grace_and_commits_none_of_them() -> None:
    sender = HeldSender()
    pipeline = running(sender, max_in_flight=2)
    for offset in range(5):
        pipeline.submit(record(offset))
    await eventually(lambda: len(sender.sent) == 2)
    assert not await pipeline.drain(0.05)
    assert pipeline.committable() == {}
    assert pipeline.in_flight == 0
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert all(task.done() for task in others), others


class BuggySender(Sender):
    """Its first answers are not outcomes at all: a bug in a sink."""

    def __init__(self, bugs: int) -> None:
        super().__init__()
        self.bugs = bugs

    async def send(self, event: AuthEvent) -> Outcome:
        answer = await super().send(event)
        if len(self.sent) <= self.bugs:
            return cast(Outcome, object())
        return answer


async def test_a_bug_after_an_answer_takes_no_sending_capacity_away() -> None:
    sender = BuggySender(bugs=2)  # as many as there are senders
    pipeline = running(sender, max_in_flight=2, retry=RetrySettings(initial_backoff_seconds=0.01))
    for offset in range(6):
        pipeline.submit(record(offset))
    # The two events whose answers hit the bug are sent again, not lost.
    await eventually(lambda: pipeline.committable() == {("t", 0): 6})
    assert sorted(event.key for _, event in sender.sent) == sorted(
        [f"e{i}" for i in range(6)] + ["e0", "e1"]
    )
    assert await pipeline.drain(1.0)


async def test_a_sender_cancelled_while_idle_costs_no_event() -> None:
    sender = Sender()
    pipeline = running(sender, max_in_flight=2)
    await asyncio.sleep(0)  # the senders reach their first wait
    senders = [task for task in asyncio.all_tasks() if task.get_name().startswith("sender-")]
    senders[-1].cancel()  # e.g. shutdown code cancelling every task
    await asyncio.sleep(0)
    for offset in range(5):
        pipeline.submit(record(offset))
    await eventually(lambda: pipeline.committable() == {("t", 0): 5})
    assert [event.key for _, event in sender.sent] == [f"e{i}" for i in range(5)]
    assert await pipeline.drain(1.0)


class CancellingClient(Sender):
    """A client that cancels its own work once, as a library might on an internal timeout."""

    async def send(self, event: AuthEvent) -> Outcome:
        first = not self.sent
        outcome = await super().send(event)
        if first:
            raise asyncio.CancelledError
        return outcome


async def test_a_cancellation_from_inside_the_client_is_retried_not_lost() -> None:
    sender = CancellingClient()
    pipeline = running(sender, max_in_flight=1, retry=RetrySettings(initial_backoff_seconds=0.01))
    pipeline.submit(record(0))
    pipeline.submit(record(1))
    await eventually(lambda: pipeline.committable() == {("t", 0): 2})
    assert sorted(event.key for _, event in sender.sent) == ["e0", "e0", "e1"]
    assert await pipeline.drain(1.0)


class SlowDeadLetters(DeadLetters):
    """A write that takes a few turns of the event loop, as a produce to Kafka does."""

    async def write(self, record: SourceRecord, headers: list[tuple[str, bytes]]) -> None:
        for _ in range(10):
            await asyncio.sleep(0)
        await super().write(record, headers)


async def test_drain_waits_for_the_dead_letter_an_answer_during_the_drain_starts() -> None:
    sender = HeldSender(Rejected("400", "legiti answered 400", b'{"error_message": "bad"}', 400))
    dead = SlowDeadLetters()
    pipeline = running(sender, dead)
    pipeline.submit(record(0))
    await eventually(lambda: len(sender.sent) == 1)
    draining = asyncio.create_task(pipeline.drain(5.0))
    for _ in range(5):  # the drain stops the dispatcher and waits for the send in flight
        await asyncio.sleep(0)
    sender.release.set()
    assert await draining
    assert [written.offset for written, _ in dead.written] == [0]
    assert pipeline.committable() == {("t", 0): 1}


def header_value(headers: list[tuple[str, bytes]], name: str) -> bytes:
    return dict(headers)[name]


async def test_a_tool_the_gateway_denies_is_dead_lettered_and_never_called_again() -> None:
    sender, dead = Sender(), DeadLetters()
    sender.answer = Denied("policy_denied", "[POLICY DENIED] track_logout is not allowed")
    pipeline = running(sender, dead, max_in_flight=1)
    pipeline.submit(record(0, "logout"))
    await eventually(lambda: len(dead.written) == 1)
    sender.answer = Delivered("201")
    pipeline.submit(record(1, "logout"))
    pipeline.submit(record(2, "login"))
    await eventually(lambda: pipeline.committable() == {("t", 0): 3})
    assert [event.key for _, event in sender.sent] == ["e0", "e2"]
    assert [written.offset for written, _ in dead.written] == [0, 1]
    for _, headers in dead.written:
        assert header_value(headers, "x-forwarder-error-reason") == b"denied_by_policy"
    assert b"POLICY DENIED" in header_value(dead.written[0][1], "x-forwarder-error-detail")
    assert await pipeline.drain(1.0)


async def test_a_misconfigured_sink_halts_without_dead_letters_and_heals() -> None:
    sender, dead, metrics = Sender(), DeadLetters(), Metrics()
    sender.answer = Misconfigured("404", "the URL answers 404 to everything")
    pipeline = running(sender, dead, metrics)
    for offset in range(10):
        pipeline.submit(record(offset))
    await eventually(lambda: not pipeline.gate.configured)
    assert metrics.registry.get_sample_value("forwarder_sink_misconfigured") == 1
    sender.answer = Delivered("201")
    await eventually(lambda: pipeline.committable() == {("t", 0): 10}, timeout=10)
    assert pipeline.gate.configured
    assert dead.written == []
    assert await pipeline.drain(1.0)


class OneHeldSender(Sender):
    """Holds the answer for one key until released; answers the others at once."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.release = asyncio.Event()

    async def send(self, event: AuthEvent) -> Outcome:
        answer = await super().send(event)
        if event.key == self.held:
            await self.release.wait()
        return answer


def sent_keys(sender: Sender) -> list[str]:
    return [event.key for _, event in sender.sent]


async def test_drain_sends_what_was_consumed_ahead_of_delivered_events() -> None:
    """Issue 14.7: a clean stop leaves nothing delivered beyond the committed offset, so
    the next owner re-sends nothing. e1 waits behind alice's e0; bob's e2-e4 are delivered."""
    sender = OneHeldSender(held="e0")
    pipeline = running(sender)
    pipeline.submit(record(0, user="alice"))
    pipeline.submit(record(1, user="alice"))
    for offset in (2, 3, 4):
        pipeline.submit(record(offset, user="bob"))
    await eventually(lambda: sent_keys(sender) == ["e0", "e2", "e3", "e4"])
    draining = asyncio.create_task(pipeline.drain(5.0))
    await eventually(lambda: pipeline.in_flight == 1)
    sender.release.set()
    assert await draining
    assert sent_keys(sender) == ["e0", "e2", "e3", "e4", "e1"]
    assert pipeline.committable() == {("t", 0): 5}


async def test_drain_leaves_unsent_what_no_delivered_event_follows() -> None:
    sender = OneHeldSender(held="e0")
    pipeline = running(sender)
    pipeline.submit(record(0, user="alice"))
    pipeline.submit(record(1, user="bob"))
    pipeline.submit(record(2, user="alice"))  # behind e0, and nothing after it is delivered
    await eventually(lambda: sent_keys(sender) == ["e0", "e1"])
    draining = asyncio.create_task(pipeline.drain(5.0))
    await eventually(lambda: pipeline.in_flight == 1)
    sender.release.set()
    assert await draining
    assert sent_keys(sender) == ["e0", "e1"]
    assert pipeline.committable() == {("t", 0): 2}  # e2 is read again by the next owner


async def test_settling_revoked_partitions_lets_the_others_flow() -> None:
    """Issue 14.6: a revocation waits for the revoked partition's request under way."""
    sender = OneHeldSender(held="e0")
    pipeline = running(sender)
    pipeline.submit(record(0, user="alice"))
    settling = asyncio.create_task(pipeline.settle({("t", 0)}, 5.0))
    other = factories.record(factories.native("p1", "bob"), topic="t", partition=1, offset=0)
    pipeline.submit(other)
    await eventually(lambda: pipeline.committable() == {("t", 1): 1})
    assert not settling.done()
    sender.release.set()
    assert await settling
    assert pipeline.committable() == {("t", 0): 1, ("t", 1): 1}
    assert await pipeline.drain(1.0)


async def test_settling_gives_up_at_its_timeout() -> None:
    sender = OneHeldSender(held="e0")
    pipeline = running(sender)
    pipeline.submit(record(0))
    await eventually(lambda: pipeline.in_flight == 1)
    assert not await pipeline.settle({("t", 0)}, 0.05)
    sender.release.set()
    assert await pipeline.drain(1.0)


async def test_the_byte_bound_pauses_fetching() -> None:
    sender = HeldSender()
    pipeline = running(sender, max_buffered_bytes=2048)
    big = factories.record(b'{"pad": "' + b"x" * 1500 + b'"}', topic="t", offset=0)
    pipeline.submit(big)
    assert not pipeline.should_pause()
    pipeline.submit(factories.record(big.value, topic="t", offset=1))
    assert pipeline.should_pause()
    assert pipeline.buffered_bytes == 2 * len(big.value or b"")
    sender.release.set()
    await eventually(lambda: pipeline.buffered_bytes == 0)  # dead-lettered: invalid events
    assert not pipeline.should_pause()
    assert await pipeline.drain(1.0)
