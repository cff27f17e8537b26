"""The scheduler: per-user order, one copy of a key at a time, duplicates, rebalances."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from forwarder.core.dedupe import DeliveredWindow
from forwarder.core.events import (
    TOOLS,
    TRACK_LOGIN,
    TRACK_LOGOUT,
    ActionType,
    AuthEvent,
)
from forwarder.core.offsets import PartitionOffsets
from forwarder.core.scheduler import Job, Scheduler
from tests.factories import record

_offsets = itertools.count()


def job(
    key: str,
    user: str = "u1",
    *,
    partition: int = 0,
    topic: str = "auth",
    action: ActionType = ActionType.LOGIN_SUCCESS,
    offset: int | None = None,
) -> Job:
    consumed = record(
        topic=topic,
        partition=partition,
        offset=next(_offsets) if offset is None else offset,
        key=user.encode(),
    )
    return Job(record=consumed, event=AuthEvent(key, user, action), offsets=PartitionOffsets())


def scheduler(ttl: float = 3600.0, max_entries: int = 1000) -> Scheduler:
    return Scheduler(DeliveredWindow(ttl, max_entries))


def take(sched: Scheduler, now: float = 0.0, tool: str = TRACK_LOGIN) -> Job:
    peeked = sched.peek(tool, now)
    assert peeked is not None
    taken = sched.take(tool)
    assert taken is peeked
    assert taken.in_flight
    return taken


def test_a_users_second_event_waits_for_the_first() -> None:
    sched = scheduler()
    first, second = job("k1"), job("k2")
    assert sched.admit(first, 0.0) == []
    assert sched.admit(second, 0.0) == []
    assert take(sched) is first
    assert sched.peek(TRACK_LOGIN, 0.0) is None
    assert sched.complete(first, delivered=True, now=1.0) == []
    assert not first.in_flight
    assert take(sched, 1.0) is second
    sched.complete(second, delivered=False, now=2.0)
    assert sched.lanes == 0
    assert sched.peek(TRACK_LOGIN, 2.0) is None


def test_the_next_event_goes_after_a_dead_letter_too() -> None:
    sched = scheduler()
    first, second = job("k1"), job("k2")
    sched.admit(first, 0.0)
    sched.admit(second, 0.0)
    take(sched)
    sched.complete(first, delivered=False, now=1.0)
    assert take(sched, 1.0) is second


def test_different_users_interleave() -> None:
    sched = scheduler()
    a1, a2, b1, c1 = job("a1", "alice"), job("a2", "alice"), job("b1", "bob"), job("c1", "carol")
    for each in (a1, a2, b1, c1):
        sched.admit(each, 0.0)
    assert sched.lanes == 3
    assert [take(sched), take(sched), take(sched)] == [a1, b1, c1]
    assert sched.peek(TRACK_LOGIN, 0.0) is None
    sched.complete(b1, delivered=True, now=0.5)  # bob's answer first: nobody else moves
    assert sched.peek(TRACK_LOGIN, 0.5) is None
    sched.complete(a1, delivered=True, now=1.0)
    assert take(sched, 1.0) is a2


def test_same_user_in_different_partitions_are_different_lanes() -> None:
    sched = scheduler()
    p0, p1 = job("k1", partition=0), job("k2", partition=1)
    sched.admit(p0, 0.0)
    sched.admit(p1, 0.0)
    assert [take(sched), take(sched)] == [p0, p1]


def test_tools_have_their_own_queues() -> None:
    sched = scheduler()
    login = job("k1", "alice")
    logout = job("k2", "bob", action=ActionType.LOGOUT)
    sched.admit(login, 0.0)
    sched.admit(logout, 0.0)
    assert take(sched, tool=TRACK_LOGOUT) is logout
    assert take(sched, tool=TRACK_LOGIN) is login
    assert sched.peek(TRACK_LOGOUT, 0.0) is None


def test_lane_order_holds_across_tools() -> None:
    """A user's logout waits for their login even though they go through different tools."""
    sched = scheduler()
    login, logout = job("k1"), job("k2", action=ActionType.LOGOUT)
    sched.admit(login, 0.0)
    sched.admit(logout, 0.0)
    assert sched.peek(TRACK_LOGOUT, 0.0) is None
    take(sched)
    sched.complete(login, delivered=True, now=0.1)
    assert take(sched, 0.1, TRACK_LOGOUT) is logout


def test_copy_in_flight_parks_and_becomes_a_duplicate_on_delivery() -> None:
    sched = scheduler()
    first = job("same", "alice", partition=0)
    copy = job("same", "alice", partition=1)
    behind_copy = job("next", "alice", partition=1)
    sched.admit(first, 0.0)
    take(sched)
    assert sched.admit(copy, 0.1) == []
    assert sched.admit(behind_copy, 0.1) == []
    assert sched.peek(TRACK_LOGIN, 0.1) is None  # never sent concurrently
    assert sched.complete(first, delivered=True, now=1.0) == [copy]
    assert take(sched, 1.0) is behind_copy  # the copy's lane moved on


def test_parked_copy_is_sent_when_the_first_is_dead_lettered() -> None:
    sched = scheduler()
    first, copy = job("same", "alice"), job("same", "bob")
    sched.admit(first, 0.0)
    take(sched)
    sched.admit(copy, 0.0)
    assert sched.peek(TRACK_LOGIN, 0.0) is None
    assert sched.complete(first, delivered=False, now=1.0) == []
    assert take(sched, 1.0) is copy


def test_several_parked_copies_go_one_at_a_time() -> None:
    sched = scheduler()
    copies = [job("same", f"user-{i}") for i in range(3)]
    for each in copies:
        sched.admit(each, 0.0)
    assert take(sched) is copies[0]
    assert sched.peek(TRACK_LOGIN, 0.0) is None
    assert sched.complete(copies[0], delivered=False, now=1.0) == []
    assert take(sched, 1.0) is copies[1]
    assert sched.peek(TRACK_LOGIN, 1.0) is None
    assert sched.complete(copies[1], delivered=True, now=2.0) == [copies[2]]
    assert sched.lanes == 0


def test_already_delivered_key_is_a_duplicate_at_once() -> None:
    sched = scheduler()
    first = job("k")
    sched.admit(first, 0.0)
    take(sched)
    sched.complete(first, delivered=True, now=1.0)
    again, after = job("k"), job("k2")
    assert sched.admit(again, 2.0) == [again]
    assert sched.admit(after, 2.0) == []
    assert take(sched, 2.0) is after


def test_duplicate_behind_a_head_is_settled_when_the_lane_reaches_it() -> None:
    sched = scheduler()
    first, copy, other = job("k"), job("k"), job("k3")
    for each in (first, copy, other):
        sched.admit(each, 0.0)
    take(sched)
    assert sched.complete(first, delivered=True, now=1.0) == [copy]
    assert take(sched, 1.0) is other


def test_delivered_key_expires_from_the_window() -> None:
    sched = scheduler(ttl=10.0)
    first = job("k")
    sched.admit(first, 0.0)
    take(sched)
    sched.complete(first, delivered=True, now=1.0)
    late = job("k")
    assert sched.admit(late, 11.0) == []
    assert take(sched, 11.0) is late


def test_with_dedupe_disabled_a_parked_copy_is_sent_after_the_first() -> None:
    sched = scheduler(ttl=0.0)
    first, copy = job("same", "alice"), job("same", "bob")
    sched.admit(first, 0.0)
    take(sched)
    sched.admit(copy, 0.0)
    assert sched.peek(TRACK_LOGIN, 0.0) is None  # still never concurrently
    assert sched.complete(first, delivered=True, now=1.0) == []
    assert take(sched, 1.0) is copy


def test_retried_head_keeps_blocking_its_lane() -> None:
    sched = scheduler()
    first, second, other = job("k1", "alice"), job("k2", "alice"), job("k3", "bob")
    for each in (first, second):
        sched.admit(each, 0.0)
    take(sched)
    sched.retry_at(first, 10.0)
    assert not first.in_flight
    assert sched.next_due(TRACK_LOGIN) == 10.0
    assert sched.peek(TRACK_LOGIN, 5.0) is None  # not due, and alice's next waits
    sched.admit(other, 5.0)
    assert take(sched, 5.0) is other  # bob is not held back
    assert sched.peek(TRACK_LOGIN, 9.99) is None
    assert take(sched, 10.0) is first
    assert sched.next_due(TRACK_LOGIN) is None
    sched.complete(first, delivered=True, now=11.0)
    assert take(sched, 11.0) is second


def test_retried_head_keeps_the_claim_on_its_key() -> None:
    sched = scheduler()
    first, copy = job("same", "alice"), job("same", "bob")
    sched.admit(first, 0.0)
    take(sched)
    sched.retry_at(first, 10.0)
    sched.admit(copy, 1.0)
    assert sched.peek(TRACK_LOGIN, 1.0) is None
    assert take(sched, 10.0) is first
    assert sched.complete(first, delivered=True, now=11.0) == [copy]


def test_due_retries_rejoin_in_consumption_order() -> None:
    """Oldest first keeps the committable prefix close behind the deliveries."""
    sched = scheduler()
    a, b, c = job("a", "alice"), job("b", "bob"), job("c", "carol")
    sched.admit(a, 0.0)
    sched.admit(b, 0.0)
    take(sched)
    take(sched)
    sched.retry_at(a, 3.0)
    sched.retry_at(b, 2.0)
    sched.admit(c, 0.0)
    assert sched.next_due(TRACK_LOGIN) == 2.0
    assert take(sched, 1.0) is c
    assert sched.peek(TRACK_LOGIN, 2.5) is b
    assert take(sched, 5.0) is a
    assert take(sched, 5.0) is b


def test_cancel_drops_jobs_of_revoked_partitions() -> None:
    sched = scheduler()
    kept = job("k-kept", "alice", partition=1)
    queued = [job(f"k{i}", "alice", partition=0) for i in range(3)]
    for each in (*queued, kept):
        sched.admit(each, 0.0)
    assert sched.cancel([("auth", 0), ("other", 7)], 0.0) == []
    assert all(each.cancelled for each in queued)
    assert not kept.cancelled
    assert take(sched) is kept
    assert sched.peek(TRACK_LOGIN, 0.0) is None
    assert sched.lanes == 1


def test_cancel_releases_the_claim_of_a_queued_job() -> None:
    sched = scheduler()
    holder = job("same", "alice", partition=0)  # claimed, not yet taken
    copy = job("same", "bob", partition=1)
    sched.admit(holder, 0.0)
    sched.admit(copy, 0.0)
    sched.cancel([("auth", 0)], 1.0)
    assert take(sched, 1.0) is copy


def test_cancel_releases_the_claim_of_a_retrying_job() -> None:
    sched = scheduler()
    holder, copy = job("same", "alice", partition=0), job("same", "bob", partition=1)
    sched.admit(holder, 0.0)
    take(sched)
    sched.retry_at(holder, 5.0)
    sched.admit(copy, 0.0)
    sched.cancel([("auth", 0)], 1.0)
    assert take(sched, 1.0) is copy
    assert sched.peek(TRACK_LOGIN, 100.0) is None  # the cancelled retry never comes back
    assert sched.next_due(TRACK_LOGIN) in (None, 5.0)


def test_cancelled_in_flight_job_keeps_its_claim_until_complete() -> None:
    sched = scheduler()
    holder = job("same", "alice", partition=0)
    copy = job("same", "bob", partition=1)
    sched.admit(holder, 0.0)
    take(sched)
    sched.admit(copy, 0.0)
    assert sched.cancel([("auth", 0)], 1.0) == []
    assert holder.cancelled
    assert not copy.cancelled
    assert sched.peek(TRACK_LOGIN, 1.0) is None  # still never two copies at once
    assert sched.complete(holder, delivered=False, now=2.0) == []
    assert take(sched, 2.0) is copy


def test_cancelled_in_flight_job_delivered_makes_the_copy_a_duplicate() -> None:
    sched = scheduler()
    holder, copy = job("same", "alice", partition=0), job("same", "bob", partition=1)
    sched.admit(holder, 0.0)
    take(sched)
    sched.admit(copy, 0.0)
    sched.cancel([("auth", 0)], 1.0)
    assert sched.complete(holder, delivered=True, now=2.0) == [copy]
    assert sched.lanes == 0


def test_cancel_settles_parked_copies_as_duplicates_when_already_delivered() -> None:
    """A copy parked behind a revoked claim holder is settled against the window."""
    sched = scheduler()
    earlier = job("same", "carol", partition=2)
    sched.admit(earlier, 0.0)
    take(sched)
    sched.complete(earlier, delivered=True, now=0.5)
    sched.delivered.add("other", 0.5)
    holder = job("x", "alice", partition=0)
    copy = job("x", "bob", partition=1)
    sched.admit(holder, 1.0)
    sched.admit(copy, 1.0)
    sched.delivered.add("x", 1.5)  # delivered elsewhere meanwhile (say, before a restart)
    assert sched.cancel([("auth", 0)], 2.0) == [copy]
    assert holder.cancelled
    assert not copy.cancelled


def test_retrying_a_cancelled_in_flight_job_releases_its_claim() -> None:
    """Its partition was revoked while it was out, and the answer says "retry": it is not
    retried here (the new owner reads it again), and its key must not stay claimed, or
    every later copy of it would wait forever."""
    sched = scheduler()
    holder = job("same", "alice", partition=0)
    sched.admit(holder, 0.0)
    take(sched)
    sched.cancel([("auth", 0)], 1.0)
    again = job("same", "alice", partition=0)  # the partition came back; read again
    sched.admit(again, 1.0)
    assert sched.peek(TRACK_LOGIN, 1.0) is None
    assert sched.retry_at(holder, 1.5) == []
    assert not holder.in_flight
    assert take(sched, 1.5) is again
    assert sched.peek(TRACK_LOGIN, 100.0) is None  # the cancelled one never comes back
    assert sched.next_due(TRACK_LOGIN) is None


def test_retry_at_returns_nothing_for_a_live_job() -> None:
    sched = scheduler()
    live = job("k")
    sched.admit(live, 0.0)
    take(sched)
    assert sched.retry_at(live, 1.0) == []


def test_readmitted_after_cancel_starts_a_fresh_lane() -> None:
    sched = scheduler()
    first, second = job("k1", "alice"), job("k2", "alice")
    sched.admit(first, 0.0)
    sched.admit(second, 0.0)
    take(sched)
    sched.cancel([("auth", 0)], 1.0)
    again = job("k1", "alice")  # the new owner... is us again, reading from the commit
    sched.admit(again, 1.0)
    assert sched.peek(TRACK_LOGIN, 1.0) is None  # the in-flight cancelled copy still claims
    sched.complete(first, delivered=False, now=2.0)  # does not advance the new lane
    assert take(sched, 2.0) is again


# A generated script of operations ----------------------------------------------------

PARTITIONS = [("auth", 0), ("auth", 1)]
USERS = ["alice", "bob", "carol"]
KEYS = ["k1", "k2", "k3", "k4", "k5"]


class SchedulerMachine(RuleBasedStateMachine):
    """Drives the scheduler as the pipeline does, checking after every step that no two
    copies of a key are ever out at once, that lanes go in offset order, and at the end
    that every admitted job was sent or found a duplicate."""

    def __init__(self) -> None:
        super().__init__()
        self.sched = Scheduler(DeliveredWindow(ttl=1e9, max_entries=10**6))
        self.now = 0.0
        self.offset = itertools.count()
        self.admitted: list[Job] = []
        self.in_flight: list[Job] = []
        self.retrying: list[Job] = []
        self.due: dict[int, float] = {}  # when each retrying job becomes due
        self.finished: set[int] = set()
        self.taken: set[int] = set()
        self.delivered_keys: set[str] = set()
        self.sends: dict[tuple[str, int, str], list[int]] = {}
        self.cancelled_ids: set[int] = set()

    # Helpers --------------------------------------------------------------------------

    def settle(self, duplicates: list[Job]) -> None:
        for duplicate in duplicates:
            assert id(duplicate) not in self.taken, "a sent job cannot become a duplicate"
            assert id(duplicate) not in self.finished
            assert not duplicate.cancelled
            assert duplicate.event.key in self.delivered_keys
            self.check_predecessors_finished(duplicate)
            self.finished.add(id(duplicate))

    def check_predecessors_finished(self, subject: Job) -> None:
        for earlier in self.admitted:
            if earlier is subject:
                return
            if earlier.lane == subject.lane and not earlier.cancelled:
                assert id(earlier) in self.finished, "a lane went out of offset order"

    def claimed_keys(self, besides: Job) -> list[str]:
        return [j.event.key for j in (*self.in_flight, *self.retrying) if j is not besides]

    def do_take(self, tool: str) -> bool:
        peeked = self.sched.peek(tool, self.now)
        if peeked is None:
            return False
        taken = self.sched.take(tool)
        assert taken is peeked
        assert not taken.cancelled
        assert id(taken) not in self.finished
        assert taken.event.action.tool == tool
        assert taken.event.key not in self.claimed_keys(taken), "two copies out at once"
        self.check_predecessors_finished(taken)
        if taken in self.retrying:
            assert self.due.pop(id(taken)) <= self.now
            self.retrying.remove(taken)
        else:
            assert id(taken) not in self.taken
            self.sends.setdefault(taken.lane, []).append(taken.record.offset)
        self.taken.add(id(taken))
        self.in_flight.append(taken)
        return True

    def do_complete(self, done: Job, delivered: bool) -> None:
        self.in_flight.remove(done)
        if delivered:
            self.delivered_keys.add(done.event.key)
        duplicates = self.sched.complete(done, delivered=delivered, now=self.now)
        if not done.cancelled:
            self.finished.add(id(done))
        self.settle(duplicates)

    # Rules ----------------------------------------------------------------------------

    @rule(
        partition=st.sampled_from(PARTITIONS),
        user=st.sampled_from(USERS),
        key=st.sampled_from(KEYS),
        logout=st.booleans(),
    )
    def admit(self, partition: tuple[str, int], user: str, key: str, logout: bool) -> None:
        action = ActionType.LOGOUT if logout else ActionType.LOGIN_FAILURE
        new = job(key, user, topic=partition[0], partition=partition[1], action=action)
        new.record = record(topic=partition[0], partition=partition[1], offset=next(self.offset))
        self.admitted.append(new)
        self.settle(self.sched.admit(new, self.now))

    @rule(tool=st.sampled_from(TOOLS))
    def take(self, tool: str) -> None:
        self.do_take(tool)

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 1000), delivered=st.booleans())
    def complete(self, index: int, delivered: bool) -> None:
        self.do_complete(self.in_flight[index % len(self.in_flight)], delivered)

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 1000), delay=st.sampled_from([0.0, 0.5, 2.0, 10.0]))
    def retry(self, index: int, delay: float) -> None:
        chosen = self.in_flight[index % len(self.in_flight)]
        self.in_flight.remove(chosen)
        duplicates = self.sched.retry_at(chosen, self.now + delay)
        assert not chosen.in_flight
        if chosen.cancelled:
            self.settle(duplicates)  # ended like a dead letter, claim released
        else:
            assert duplicates == []
            self.retrying.append(chosen)
            self.due[id(chosen)] = self.now + delay

    @rule(seconds=st.sampled_from([0.1, 1.0, 5.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule(partition=st.sampled_from(PARTITIONS))
    def revoke(self, partition: tuple[str, int]) -> None:
        expected = {
            id(j)
            for j in self.admitted
            if (j.record.topic, j.record.partition) == partition
            and id(j) not in self.finished
            and id(j) not in self.cancelled_ids
        }
        duplicates = self.sched.cancel([partition], self.now)
        newly_cancelled = {
            id(j) for j in self.admitted if j.cancelled and id(j) not in self.cancelled_ids
        }
        assert newly_cancelled == expected
        self.cancelled_ids |= expected
        self.retrying = [j for j in self.retrying if not j.cancelled]
        self.settle(duplicates)

    # Invariants -----------------------------------------------------------------------

    @invariant()
    def one_copy_of_a_key_out_at_a_time(self) -> None:
        keys = [j.event.key for j in (*self.in_flight, *self.retrying)]
        assert len(keys) == len(set(keys))

    @invariant()
    def lanes_are_sent_in_offset_order(self) -> None:
        for offsets in self.sends.values():
            assert offsets == sorted(offsets)

    def teardown(self) -> None:
        # Everything completes: retries fall due, every answer comes back.
        for round_ in range(10_000):
            self.now += 1000.0
            progressed = False
            for tool in TOOLS:
                while self.do_take(tool):
                    progressed = True
            for pending in list(self.in_flight):
                # Deterministic mix of deliveries and dead letters.
                self.do_complete(pending, delivered=(round_ + pending.record.offset) % 3 != 0)
                progressed = True
            if not progressed:
                break
        assert not self.in_flight
        assert not self.retrying
        for each in self.admitted:
            if not each.cancelled:
                assert id(each) in self.finished, "an admitted job was neither sent nor settled"
        assert self.sched.lanes == 0
        # No claim leaked: a fresh copy of every key is either a duplicate or sendable.
        for key in KEYS:
            probe = job(key, f"probe-{key}", topic="probe")
            duplicates = self.sched.admit(probe, self.now)
            if key in self.delivered_keys:
                assert duplicates == [probe]
            else:
                assert duplicates == []
                assert self.sched.peek(TRACK_LOGIN, self.now) is probe
                self.sched.take(TRACK_LOGIN)
                self.sched.complete(probe, delivered=False, now=self.now)


SchedulerMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=30, deadline=None
)
test_scheduler_state_machine = SchedulerMachine.TestCase


@pytest.mark.parametrize("tool", TOOLS)
def test_peek_on_an_empty_scheduler(tool: str) -> None:
    sched = scheduler()
    assert sched.peek(tool, 0.0) is None
    assert sched.next_due(tool) is None
    assert sched.lanes == 0
