"""The pipeline's wiring, driven with an in-memory sender and dead-letter sink (the
broker and HTTP boundaries have their own integration tests)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import orjson

from forwarder.config import RetrySettings
from forwarder.core import parking
from forwarder.core.events import AuthEvent, Origin, SourceRecord
from forwarder.core.policy import parse_policy
from forwarder.engine.build import build_pipeline
from forwarder.engine.pipeline import Pipeline
from forwarder.engine.write_errors import WriteRejected
from forwarder.ops.metrics import Metrics
from forwarder.ops.topic_health import DEAD_LETTER, RETRY, TopicHealth
from forwarder.sinks.base import Sink
from forwarder.sinks.outcome import (
    Delivered,
    Denied,
    Misconfigured,
    Outcome,
    Rejected,
    Retry,
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


class RetryTopic:
    """The retry topic in memory: what is parked, by partition, in order."""

    topic = "t.retry"

    def __init__(self, partitions: int | None = 1) -> None:
        self.partitions = partitions
        self.written: dict[int, list[SourceRecord]] = {}

    async def write(
        self, partition: int, record: SourceRecord, headers: list[tuple[str, bytes]]
    ) -> int:
        stored = self.written.setdefault(partition, [])
        offset = len(stored)
        stored.append(
            SourceRecord(self.topic, partition, offset, record.key, record.value, tuple(headers), 0)
        )
        return offset


def record(offset: int, kind: str = "login", user: str | None = None) -> SourceRecord:
    return factories.record(
        factories.native(f"e{offset}", user or f"u{offset}", kind), topic="t", offset=offset
    )


def running(
    sender: Sink,
    dead: DeadLetters | None = None,
    metrics: Metrics | None = None,
    retries: RetryTopic | None = None,
    **options: Any,
) -> Pipeline:
    """A started pipeline; `options` are `build_pipeline`'s (sections, bounds, policy)."""
    metrics = Metrics() if metrics is None else metrics
    retries = RetryTopic() if retries is None else retries
    pipeline = build_pipeline(
        sender,
        DeadLetters() if dead is None else dead,
        retries,
        metrics,
        TopicHealth(metrics, {DEAD_LETTER: "t.dlq", RETRY: retries.topic}),
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


# Parking ---------------------------------------------------------------------------

FAILING = Retry("503", "legiti answered 503", outage=True)


class PerUser(Sender):
    """Answers per user (delivered unless told otherwise)."""

    def __init__(self, answers: dict[str, Outcome]) -> None:
        super().__init__()
        self.answers = answers

    async def send(self, event: AuthEvent) -> Outcome:
        self.sent.append((time.monotonic(), event))
        return self.answers.get(event.user_id, DELIVERED)

    def keys(self, user: str | None = None) -> list[str]:
        return [event.key for _, event in self.sent if user is None or event.user_id == user]


def quick_retries(**overrides: Any) -> RetrySettings:
    """Short backoffs, and a circuit that one failing user cannot open."""
    values: dict[str, Any] = {
        "initial_backoff_seconds": 0.005,
        "max_backoff_seconds": 0.01,
        "circuit_min_requests": 10_000,
        **overrides,
    }
    return RetrySettings(**values)


def keys(records: list[SourceRecord]) -> list[str]:
    return [orjson.loads(parked.value or b"{}")["event_id"] for parked in records]


def gauge(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_a_user_failing_longer_than_park_after_is_parked_and_its_partition_moves_on() -> None:
    sender, retries, metrics = PerUser({"stuck": FAILING}), RetryTopic(), Metrics()
    pipeline = running(
        sender,
        metrics=metrics,
        retries=retries,
        retry=quick_retries(park_after_seconds=0.05, max_elapsed_seconds=0),
    )
    for offset, user in enumerate(["stuck", "a", "stuck", "b"]):
        pipeline.submit(record(offset, user=user))
    await eventually(lambda: pipeline.committable() == {("t", 0): 4})
    assert keys(retries.written[0]) == ["e0", "e2"]
    first, second = (dict(parked.headers) for parked in retries.written[0])
    assert first["x-forwarder-park-reason"] == b"stuck"
    assert (first["x-forwarder-source-topic"], first["x-forwarder-source-offset"]) == (b"t", b"0")
    assert int(first["x-forwarder-attempts"]) >= 2
    assert (second["x-forwarder-source-offset"], second["x-forwarder-attempts"]) == (b"2", b"0")
    assert "x-forwarder-give-up-at" not in first  # FORWARDER_RETRY_MAX_ELAPSED_SECONDS=0
    assert gauge(metrics, "forwarder_users_parked") == 1
    assert gauge(metrics, "forwarder_events_parked_total", reason="stuck") == 2
    assert sender.keys("stuck") == ["e0"] * len(sender.keys("stuck"))

    pipeline.submit(record(4, user="stuck"))  # behind its parked events, never sent now
    await eventually(lambda: len(retries.written[0]) == 3)
    assert keys(retries.written[0])[2] == "e4"
    assert dict(retries.written[0][2].headers)["x-forwarder-park-reason"] == b"follows_parked"
    assert "e4" not in set(sender.keys())

    sender.answers.clear()  # Legiti heals; the copies come back in the order they were parked
    delivered_before = len(sender.keys("stuck"))
    for parked in retries.written[0]:
        pipeline.submit(parked)
    await eventually(lambda: pipeline.committable() == {("t", 0): 5, ("t.retry", 0): 3})
    assert sender.keys("stuck")[delivered_before - 1 :] == ["e0", "e0", "e2", "e4"]
    assert gauge(metrics, "forwarder_users_parked") == 0
    pipeline.submit(record(5, user="stuck"))  # unparked: sent from its source again
    await eventually(lambda: pipeline.committable() == {("t", 0): 6, ("t.retry", 0): 3})
    assert sender.keys("stuck")[-1] == "e5"
    assert len(retries.written[0]) == 3
    assert await pipeline.drain(1.0)


async def test_a_stuck_head_holding_a_full_partition_is_parked_before_park_after() -> None:
    sender, retries = PerUser({"stuck": FAILING}), RetryTopic()
    pipeline = running(
        sender,
        retries=retries,
        max_buffered=5,
        retry=quick_retries(park_after_seconds=3600, max_elapsed_seconds=0),
    )
    pipeline.submit(record(0, user="stuck"))
    for offset in range(1, 11):
        pipeline.submit(record(offset))
    await eventually(lambda: pipeline.committable() == {("t", 0): 11})
    assert keys(retries.written[0]) == ["e0"]
    assert dict(retries.written[0][0].headers)["x-forwarder-park-reason"] == b"buffer_full"
    assert await pipeline.drain(1.0)


async def test_only_the_partition_a_stuck_record_holds_back_is_paused() -> None:
    """Finished records behind a stuck one are not held in memory (the buffer does not
    count them), but they lag its partition's commit: that partition alone pauses, until
    the stuck record's lane is parked (here once the retry topic's size is known)."""
    sender, retries = PerUser({"stuck": FAILING}), RetryTopic(partitions=None)
    pipeline = running(
        sender,
        retries=retries,
        max_buffered=5,
        retry=quick_retries(park_after_seconds=3600, max_elapsed_seconds=0),
    )
    pipeline.submit(record(0, user="stuck"))
    for offset in range(1, 8):
        pipeline.submit(record(offset))
    other = factories.record(factories.native("p1", "bob"), topic="t", partition=1, offset=0)
    pipeline.submit(other)
    await eventually(lambda: len(set(sender.keys())) == 9)
    await eventually(lambda: pipeline.committable() == {("t", 1): 1})
    assert pipeline.buffered == 1
    assert pipeline.partitions_to_pause() == {("t", 0)}
    retries.partitions = 1  # the topic check found the retry topic
    await eventually(lambda: pipeline.partitions_to_pause() == set())
    assert keys(retries.written[0]) == ["e0"]
    assert pipeline.committable() == {("t", 0): 8, ("t", 1): 1}
    assert await pipeline.drain(1.0)


async def test_nothing_is_parked_while_sending_is_halted_for_everyone() -> None:
    sender, retries = PerUser({}), RetryTopic()
    sender.answer = FAILING
    sender.answers = {f"u{offset}": FAILING for offset in range(30)}
    pipeline = running(
        sender,
        retries=retries,
        retry=quick_retries(park_after_seconds=0.01, circuit_min_requests=5),
    )
    for offset in range(30):
        pipeline.submit(record(offset))
    await eventually(lambda: not pipeline.gate.circuit_closed)
    sent = len(sender.sent)
    # A probe fails long after park_after: its lane would be parked if one failing user did it.
    await eventually(lambda: len(sender.sent) >= sent + 2, timeout=10)
    assert retries.written == {}
    assert pipeline.committable() == {}
    assert await pipeline.drain(1.0)


async def test_a_parked_copy_read_back_keeps_its_budget_and_its_source_coordinates() -> None:
    sender, dead, retries = PerUser({"late": FAILING}), DeadLetters(), RetryTopic()
    pipeline = running(sender, dead, retries=retries, retry=quick_retries())
    original = record(42, user="late")
    copy = SourceRecord(
        "t.retry",
        0,
        0,
        original.key,
        original.value,
        tuple(
            parking.parked_headers(
                original,
                Origin("t", 0, 42),
                reason=parking.STUCK,
                attempts=7,
                give_up_at=time.time() - 1,  # its budget ran out while it was parked
            )
        ),
        0,
    )
    pipeline.submit(copy)
    await eventually(lambda: pipeline.committable() == {("t.retry", 0): 1})
    assert sender.keys() == ["e42"]  # once more, then given up: the budget did not restart
    ((written, headers),) = dead.written
    named = dict(headers)
    assert named["x-forwarder-error-reason"] == b"retries_exhausted"
    assert (named["x-forwarder-source-topic"], named["x-forwarder-source-offset"]) == (b"t", b"42")
    assert named["x-forwarder-attempts"] == b"8"
    assert (written.key, written.value) == (original.key, original.value)
    assert await pipeline.drain(1.0)


async def test_a_parked_users_new_source_events_wait_for_the_retry_partitions_marker() -> None:
    """After an assignment, the retry partition is read up to a marker before the source
    partition's events go anywhere: a copy parked earlier keeps its user's order."""
    sender, retries = PerUser({"u": FAILING}), RetryTopic()
    pipeline = running(sender, retries=retries, retry=quick_retries(park_after_seconds=3600))
    earlier = record(0, user="u")
    parked_before = SourceRecord(
        "t.retry",
        0,
        0,
        earlier.key,
        earlier.value,
        tuple(
            parking.parked_headers(
                earlier, Origin("t", 0, 0), reason="stuck", attempts=1, give_up_at=None
            )
        ),
        0,
    )
    retries.written[0] = [parked_before]  # what an earlier run parked
    pipeline.assign([("t", 0), ("t.retry", 0)])
    await eventually(lambda: len(retries.written[0]) == 2)  # the marker
    marker = retries.written[0][1]
    assert parking.is_marker(marker)
    assert pipeline.partitions_to_pause() == {("t", 0)}
    pipeline.submit(record(1, user="u"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert sender.keys() == []  # held until the marker is read back
    pipeline.submit(parked_before)
    pipeline.submit(marker)
    # The copy read back is still failing: the user's new event is parked behind it.
    await eventually(lambda: len(retries.written[0]) == 3)
    assert keys([retries.written[0][2]]) == ["e1"]
    assert set(sender.keys()) == {"e0"}
    assert pipeline.partitions_to_pause() == set()
    assert await pipeline.drain(1.0)


async def test_an_unwritable_dead_letter_is_parked_and_dead_lettered_when_read_back() -> None:
    class Refusing(DeadLetters):
        refusing = True

        async def write(self, record: SourceRecord, headers: list[tuple[str, bytes]]) -> None:
            if self.refusing:
                raise WriteRejected("TopicAuthorizationFailedError")
            await super().write(record, headers)

    dead, retries = Refusing(), RetryTopic()
    pipeline = running(Sender(), dead, retries=retries)
    broken = factories.record(b"{broken", topic="t", offset=0)
    pipeline.submit(broken)
    pipeline.submit(record(1))
    await eventually(lambda: pipeline.committable() == {("t", 0): 2})
    (parked,) = retries.written[0]
    assert (parked.key, parked.value) == (broken.key, broken.value)
    named = dict(parked.headers)
    assert named["x-forwarder-park-reason"] == b"dead_letter"
    assert named["x-forwarder-error-reason"] == b"invalid_json"
    dead.refusing = False
    pipeline.submit(parked)
    await eventually(lambda: pipeline.committable() == {("t", 0): 2, ("t.retry", 0): 1})
    ((written, headers),) = dead.written
    assert written.value == b"{broken"
    assert dict(headers)["x-forwarder-source-offset"] == b"0"
    assert "x-forwarder-park-reason" not in dict(headers)
    assert await pipeline.drain(1.0)


# Probes -------------------------------------------------------------------------------


async def test_an_event_refused_on_its_own_is_dead_lettered_and_never_halts_for_good() -> None:
    sender, dead = PerUser({"x": Unauthorized("401", "legiti answered 401")}), DeadLetters()
    pipeline = running(sender, dead, retry=quick_retries())
    pipeline.submit(record(0, user="x"))
    offset = 1
    for _ in range(10):  # the stream goes on: each time x halts sending, more events come
        await eventually(lambda: not pipeline.gate.authorized or bool(dead.written), timeout=10)
        if dead.written:
            break
        for _ in range(4):
            pipeline.submit(record(offset))
            offset += 1
        await eventually(lambda: pipeline.gate.authorized, timeout=10)  # one of them probed
    pipeline.submit(record(offset))  # the next event is the probe that lifts its last halt
    offset += 1
    await eventually(lambda: pipeline.committable() == {("t", 0): offset}, timeout=10)
    assert pipeline.gate.authorized
    ((written, headers),) = dead.written
    named = dict(headers)
    assert written.offset == 0
    assert named["x-forwarder-error-reason"] == b"rejected"
    assert named["x-forwarder-http-status"] == b"401"
    assert b"accepted for other events" in named["x-forwarder-error-detail"]
    assert set(sender.keys()) == {f"e{i}" for i in range(offset)}
    assert await pipeline.drain(1.0)


async def test_when_every_event_is_refused_nothing_is_dead_lettered() -> None:
    sender, dead = PerUser({}), DeadLetters()
    sender.answers = {f"u{offset}": Unauthorized("401", "no") for offset in range(5)}
    pipeline = running(sender, dead, retry=quick_retries())
    for offset in range(5):
        pipeline.submit(record(offset))
    await eventually(lambda: len(sender.sent) >= 8, timeout=20)  # probes came and failed
    assert not pipeline.gate.authorized
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
    assert pipeline.partitions_to_pause() == set()
    pipeline.submit(factories.record(big.value, topic="t", offset=1))
    assert pipeline.partitions_to_pause() == {("t", 0)}
    assert pipeline.buffered_bytes == 2 * len(big.value or b"")
    sender.release.set()
    await eventually(lambda: pipeline.buffered_bytes == 0)  # dead-lettered: invalid events
    assert pipeline.partitions_to_pause() == set()
    assert await pipeline.drain(1.0)
