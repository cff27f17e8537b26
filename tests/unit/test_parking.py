"""Parking's pure parts: the parked copy's headers, and `ParkedLanes`, which keeps a
user's events in order through the retry topic, parked again and again."""

from __future__ import annotations

from collections import deque

from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from forwarder.core import parking
from forwarder.core.dead_letters import origin_headers
from forwarder.core.events import Origin
from forwarder.core.parking import Admission, ParkedLanes
from tests.factories import native, record

LANE = ("auth", 3, "alice")


def test_a_parked_copy_keeps_the_record_and_carries_its_origin_budget_and_attempts() -> None:
    original = record(native("e1", "alice"), topic="auth", partition=3, offset=41)._replace(
        headers=(("trace", b"t-1"), ("x-forwarder-error-reason", b"stale"))
    )
    headers = parking.parked_headers(
        original,
        Origin("auth", 3, 41),
        reason=parking.STUCK,
        attempts=5,
        give_up_at=1_700_000_000.25,
    )
    assert headers[0] == ("trace", b"t-1")
    named = dict(headers)
    assert "x-forwarder-error-reason" not in named  # a stale one of ours is dropped
    assert named["x-forwarder-give-up-at"] == b"1700000000250"
    read_back = original._replace(topic="auth.retry", partition=3, offset=0, headers=tuple(headers))
    assert parking.read_parked(read_back) == parking.ParkedCopy(
        Origin("auth", 3, 41), 5, 1_700_000_000.25, dead_letter=False
    )


def test_without_a_budget_no_deadline_is_written() -> None:
    original = record(native("e1", "alice"), topic="auth", offset=1)
    headers = parking.parked_headers(
        original, Origin("auth", 0, 1), reason=parking.BUFFER_FULL, attempts=0, give_up_at=None
    )
    copy = parking.read_parked(original._replace(headers=tuple(headers)))
    assert copy is not None
    assert copy.give_up_at is None


def test_a_record_without_our_headers_is_not_a_parked_copy() -> None:
    assert parking.read_parked(record(native("e1", "alice"))) is None
    garbled = record(native("e1", "alice"))._replace(
        headers=(
            ("x-forwarder-source-topic", b"auth"),
            ("x-forwarder-source-partition", b"three"),
            ("x-forwarder-source-offset", b"1"),
        )
    )
    assert parking.read_parked(garbled) is None


def test_a_parked_dead_letter_is_recognised_and_written_back_without_the_park_reason() -> None:
    dead = [("x-forwarder-error-reason", b"invalid_json"), *origin_headers(Origin("auth", 0, 7))]
    headers = parking.parked_dead_letter_headers(dead)
    copy = parking.read_parked(record(b"{bad")._replace(headers=tuple(headers)))
    assert copy is not None
    assert copy.dead_letter
    assert parking.dead_letter_headers_of(headers) == dead


def test_a_lane_is_forgotten_once_nothing_of_it_is_in_the_retry_topic() -> None:
    lanes: ParkedLanes[int] = ParkedLanes()
    assert lanes.from_source(LANE) is Admission.SEND
    lanes.writing(LANE, 0)
    assert lanes.from_source(LANE) is Admission.PARK
    lanes.written(LANE, 10)
    assert not lanes.settle(LANE)  # not read back yet
    assert lanes.from_retry(LANE, 0, 10) is Admission.SEND
    assert not lanes.settle(LANE)  # read back, not finished
    lanes.left(LANE)
    assert lanes.settle(LANE)
    assert LANE not in lanes
    assert lanes.from_source(LANE) is Admission.SEND


def test_forgetting_a_revoked_lane_hands_back_what_it_held() -> None:
    lanes: ParkedLanes[str] = ParkedLanes()
    lanes.writing(LANE, 3)
    lanes.written(LANE, 0)
    lanes.from_retry(LANE, 3, 0)
    lanes.parking_again(LANE)  # nothing unread: no stragglers, no hold
    assert lanes.from_source(LANE) is Admission.PARK
    other = ("auth", 4, "bob")
    lanes.writing(other, 0)
    assert lanes.forget(lambda lane, retry_partition: retry_partition == 3) == []
    assert LANE not in lanes
    assert other in lanes


class Lane(RuleBasedStateMachine):
    """One user's events through a source lane, the retry partition and back, with writes
    acknowledged in the order they were made and the partition read in order: whatever
    interleaving of parking, parking again, reading and delivering, the user's events
    reach the sink in the order they were consumed, each exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self.lanes: ParkedLanes[int] = ParkedLanes()
        self.next_event = 0
        self.source: list[int] = []
        self.log: list[int] = []
        self.position = 0
        self.read_back: list[int] = []
        self.writes: deque[int] = deque()
        self.delivered: list[int] = []

    def _write(self, event: int) -> None:
        self.lanes.writing(LANE, 0)
        self.writes.append(event)

    @rule()
    def consume(self) -> None:
        event, self.next_event = self.next_event, self.next_event + 1
        admission = self.lanes.from_source(LANE)
        if admission is Admission.SEND:
            self.source.append(event)
        elif admission is Admission.PARK:
            self._write(event)
        else:
            self.lanes.hold(LANE, event)

    @precondition(lambda self: bool(self.source))
    @rule()
    def deliver_from_source(self) -> None:
        self.delivered.append(self.source.pop(0))

    @precondition(lambda self: bool(self.source))
    @rule()
    def park_the_source_lane(self) -> None:
        for event in self.source:
            self._write(event)
        self.source.clear()

    @precondition(lambda self: bool(self.writes))
    @rule()
    def acknowledge_a_write(self) -> None:
        self.log.append(self.writes.popleft())
        self.lanes.written(LANE, len(self.log) - 1)
        self.lanes.settle(LANE)

    @precondition(lambda self: self.position < len(self.log))
    @rule()
    def read_the_retry_partition(self) -> None:
        event, offset = self.log[self.position], self.position
        self.position += 1
        if self.lanes.from_retry(LANE, 0, offset) is Admission.SEND:
            self.read_back.append(event)
        else:
            self._write(event)
        for held in self.lanes.releasable(LANE):
            self._write(held)

    @precondition(lambda self: bool(self.read_back))
    @rule()
    def deliver_from_the_retry_partition(self) -> None:
        self.delivered.append(self.read_back.pop(0))
        self.lanes.left(LANE)
        self.lanes.settle(LANE)

    @precondition(lambda self: bool(self.read_back) and self.lanes.may_park_again(LANE))
    @rule()
    def park_again(self) -> None:
        for event in self.read_back:
            self.lanes.parking_again(LANE)
            self._write(event)
        self.read_back.clear()

    @invariant()
    def delivered_in_order_once(self) -> None:
        assert self.delivered == sorted(set(self.delivered))

    @invariant()
    def a_source_lane_only_while_nothing_is_parked(self) -> None:
        assert not self.source or LANE not in self.lanes

    def teardown(self) -> None:
        """Everything written, read and delivered: every event arrived, in order, and the
        lane is forgotten."""
        while self.source or self.writes or self.position < len(self.log) or self.read_back:
            if self.source:
                self.deliver_from_source()
            elif self.writes:
                self.acknowledge_a_write()
            elif self.position < len(self.log):
                self.read_the_retry_partition()
            else:
                self.deliver_from_the_retry_partition()
        assert self.delivered == list(range(self.next_event))
        assert LANE not in self.lanes


TestLane = Lane.TestCase
TestLane.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
