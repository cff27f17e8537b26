"""The partition share: each member's part of the group's limit without shared state,
and the group-wide promise it exists for (no interval of W holds more than N sends,
whatever the rebalances and restarts), checked by simulating a group."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.limits.partition_share import PartitionShare, ShareLimiter, ShareLimits
from forwarder.limits.rate import Rate
from forwarder.limits.sliding_log import Slot

W = 10.0


def started(now: float, assigned: int, total: int, start: float = 0.0) -> PartitionShare:
    share = PartitionShare(start)
    share.watch(W)
    share.rebalanced(assigned, total, now)
    return share


# The arithmetic ---------------------------------------------------------------------


@given(
    count=st.integers(1, 10_000),
    holdings=st.lists(st.integers(0, 50), min_size=1, max_size=20),
    spare=st.integers(0, 50),
)
def test_the_members_counts_never_add_up_to_more_than_the_limit(
    count: int, holdings: list[int], spare: int
) -> None:
    """Any split of the partitions (some maybe unassigned for the moment) stays within N,
    and each member gets the floor of its exact share."""
    total = sum(holdings) + spare
    if total == 0:
        total = 1
    rate = Rate(count, W)
    counts = [started(0.0, held, total).count(rate, 2 * W) for held in holdings]
    assert sum(counts) <= count
    for held, got in zip(holdings, counts, strict=True):
        assert got == count * held // total
        assert got <= count * held / total < got + 1


def test_a_member_holding_every_partition_gets_the_whole_limit() -> None:
    assert started(0.0, 12, 12).count(Rate(30, W), W) == 30


def test_nothing_counts_until_a_window_after_start_up() -> None:
    """The previous process may have used its share just before it stopped: a wait."""
    share = started(0.0, 4, 4, start=0.0)
    rate = Rate(30, W)
    assert share.count(rate, 0.0) == 0
    assert share.count(rate, W - 0.001) == 0
    assert share.count(rate, W) == 30
    assert share.next_change(0.0, W) == W


def test_a_gained_share_counts_only_after_a_window() -> None:
    share = started(0.0, 1, 4)
    rate = Rate(40, W)
    assert share.count(rate, 20.0) == 10
    share.rebalanced(3, 4, 20.0)
    assert share.count(rate, 20.0) == 10
    assert share.count(rate, 29.9) == 10
    assert share.next_change(20.0, W) == 30.0
    assert share.count(rate, 30.0) == 30


def test_requests_under_way_at_a_revocation_are_waited_out_by_the_new_owner() -> None:
    """The old owner's long requests still arrive after it lost the partition: the new
    owner's share counts only W plus the longest send after the assignment."""
    rate = Rate(5, W)
    old = PartitionShare(0.0, settle=3.0)
    old.rebalanced(1, 1, 0.0)
    new = PartitionShare(0.0, settle=3.0)
    new.rebalanced(0, 1, 0.0)
    old_limiter, new_limiter = ShareLimiter(rate, old), ShareLimiter(rate, new)
    for _ in range(5):
        assert old_limiter.delay(20.0) == 0.0
        old_limiter.start(20.0)  # they finish at 23.0, arriving as late as that
    old.rebalanced(0, 1, 20.5)
    new.rebalanced(1, 1, 20.5)
    assert old_limiter.delay(20.5) > 0  # its share is gone at once
    # At 30.5 a send of the new owner and the old ones could fall in [21, 31).
    assert new_limiter.delay(30.5) == pytest.approx(3.0)
    assert new_limiter.delay(33.5) == 0.0


def test_a_lost_share_is_given_up_at_once() -> None:
    share = started(0.0, 3, 4)
    rate = Rate(40, W)
    assert share.count(rate, 20.0) == 30
    share.rebalanced(1, 4, 20.0)
    assert share.count(rate, 20.0) == 10
    # And a partition lost and gained back within the window counts only W after its return.
    share.rebalanced(3, 4, 25.0)
    assert share.count(rate, 34.9) == 10
    assert share.count(rate, 35.0) == 30


def test_more_partitions_in_the_topics_shrink_the_share_at_once() -> None:
    share = started(0.0, 2, 4)
    rate = Rate(40, W)
    share.rebalanced(2, 8, 20.0)
    assert share.count(rate, 20.0) == 10


def test_busy_until_holds_the_share_back_for_a_window_after_it() -> None:
    """After falling back from the shared log, whose users may have used the whole limit."""
    share = started(0.0, 4, 4)
    rate = Rate(40, W)
    share.busy_until(50.0)
    assert share.count(rate, 59.9) == 0
    assert share.fraction(59.9, W) == 0.0
    assert share.next_change(55.0, W) == 60.0
    assert share.count(rate, 60.0) == 40
    share.busy_until(40.0)  # an earlier end changes nothing
    assert share.count(rate, 60.0) == 40


def test_each_window_waits_its_own_length() -> None:
    share = PartitionShare(0.0)
    share.watch(3600.0)
    share.rebalanced(1, 1, 0.0)
    assert share.count(Rate(5, 1.0), 1.0) == 5
    assert share.count(Rate(1000, 3600.0), 1.0) == 0
    assert share.count(Rate(1000, 3600.0), 3600.0) == 1000


@pytest.mark.parametrize(("assigned", "total"), [(-1, 4), (5, 4), (0, 0)])
def test_an_impossible_assignment_is_refused(assigned: int, total: int) -> None:
    with pytest.raises(ValueError, match="not a share"):
        PartitionShare(0.0).rebalanced(assigned, total, 1.0)


def test_a_limit_smaller_than_the_partitions_leaves_a_small_holder_nothing() -> None:
    """The documented cost of the floor: 2 sends a window cannot be split 3 ways."""
    share = started(0.0, 1, 3)
    assert share.count(Rate(2, W), W) == 0
    assert share.fraction(W, W) == pytest.approx(1 / 3)


def test_old_steps_are_forgotten_but_the_one_in_force_stays() -> None:
    share = started(0.0, 1, 4)
    for moment in range(1, 200):
        share.rebalanced(1 + moment % 2, 4, float(moment) * W)
    assert share.count(Rate(40, W), 199 * W + W) == 20
    assert len(share._steps) <= 3


# The limiter ------------------------------------------------------------------------------


def test_the_share_limiter_counts_sends_in_flight_and_finished_within_the_window() -> None:
    share = started(0.0, 2, 4)
    limiter = ShareLimiter(Rate(4, W), share)
    assert limiter.delay(W) == 0.0
    first = limiter.start(W)
    second = limiter.start(W)
    assert limiter.delay(W) == math.inf  # the share is 2 and both are in flight
    first.finish(W + 1.0)
    assert limiter.delay(W + 1.0) == pytest.approx(W)
    assert limiter.delay(2 * W + 1.0) == 0.0
    second.finish(2 * W + 1.0)
    limiter.start(2 * W + 1.0)
    assert limiter.delay(2 * W + 1.0) == pytest.approx(W)


def test_the_share_limiter_wakes_when_a_gained_share_starts_to_count() -> None:
    share = started(0.0, 1, 2)
    limiter = ShareLimiter(Rate(2, W), share)
    limiter.start(W).finish(W)
    share.rebalanced(2, 2, W + 2.0)
    # Full until the send leaves the window (2W) or the gain counts (2W + 2): the sooner.
    assert limiter.delay(W + 2.0) == pytest.approx(W - 2.0)


def test_share_limits_backend_gives_one_limiter_per_named_counter() -> None:
    backend = ShareLimits(0.0, settle=0.0)
    shared = Rate(10, W, counter="grant")
    assert backend.limiter(shared) is backend.limiter(Rate(10, W, counter="grant"))
    assert backend.limiter(Rate(10, W)) is not backend.limiter(Rate(10, W))
    backend.rebalanced(1, 2, 0.0)
    assert backend.share(0.0) == 0.0
    assert backend.share(W) == 0.5


# The group ---------------------------------------------------------------------------------


LONGEST_SEND = 3.0


@dataclass
class Member:
    share: PartitionShare
    limiter: ShareLimiter
    held: set[int] = field(default_factory=set)
    sending: set[int] = field(default_factory=set)
    """Indexes (in `sends`) of this process's sends under way."""


def _member(now: float, rate: Rate) -> Member:
    share = PartitionShare(now, settle=LONGEST_SEND)
    return Member(share, ShareLimiter(rate, share))


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(1, 30),
    partitions=st.integers(1, 12),
    members=st.integers(1, 6),
    rng=st.randoms(use_true_random=False),
)
def test_the_group_never_exceeds_the_limit_across_rebalances_and_restarts(
    count: int, partitions: int, members: int, rng: random.Random
) -> None:
    """Members send whenever their limiter lets them; partitions move (revoked from one
    member, assigned to another a little later, its requests under way going on) and
    members are killed and restart with an empty log. For every interval [t, t + W),
    the sends that could have arrived in it (started before its end, finished, or cut
    short by a kill, at or after its start) number at most N.

    The script is drawn from a seeded generator: a long, busy history finds the
    interleavings that matter far more often than lists built element by element."""
    owners = [rng.randrange(members) for _ in range(partitions)]
    script = [
        (
            rng.uniform(0.0, 4.0),  # time since the previous action
            rng.choice(["send", "send", "send", "move", "restart"]),
            rng.randrange(members),
            rng.randrange(partitions),
            rng.uniform(0.0, LONGEST_SEND),  # a send's duration, or the revoke-assign gap
        )
        for _ in range(rng.randint(1, 250))
    ]
    rate = Rate(count, W)
    group = [_member(0.0, rate) for _ in range(members)]
    for partition in range(partitions):
        group[owners[partition]].held.add(partition)
    for member in group:
        member.share.rebalanced(len(member.held), partitions, 0.0)
    sends: list[tuple[float, float]] = []
    finishes: list[tuple[float, int, Slot, Member]] = []
    pending: list[tuple[float, int, int]] = []  # assignments not yet delivered
    now = 0.0

    def advance(to: float) -> None:
        while finishes and finishes[0][0] <= to:
            at, index, slot, sender = heapq.heappop(finishes)
            slot.finish(at)
            sender.sending.discard(index)
        while pending and pending[0][0] <= to:
            at, index, partition = heapq.heappop(pending)
            group[index].held.add(partition)
            group[index].share.rebalanced(len(group[index].held), partitions, at)

    for step, kind, who, partition, extra in script:
        now += step
        advance(now)
        member = group[who]
        if kind == "send":  # a member with a backlog sends all its limiter allows
            while member.limiter.delay(now) <= 0:
                slot = member.limiter.start(now)
                member.sending.add(len(sends))
                heapq.heappush(finishes, (now + extra, len(sends), slot, member))
                sends.append((now, now + extra))
        elif kind == "move":
            owner = next((i for i, m in enumerate(group) if partition in m.held), None)
            if owner is None:
                continue  # on its way to a member already
            group[owner].held.discard(partition)
            group[owner].share.rebalanced(len(group[owner].held), partitions, now)
            heapq.heappush(pending, (now + extra, who, partition))
        elif kind == "restart":
            # kill -9: what the old process had under way reaches the server by now or
            # never; the new one starts empty and the rebalance gives its partitions back.
            for index in member.sending:
                sends[index] = (sends[index][0], now)
            fresh = _member(now, rate)
            fresh.held = member.held
            fresh.share.rebalanced(len(fresh.held), partitions, now)
            group[who] = fresh
    assert _busiest(sends) <= count


def _busiest(sends: list[tuple[float, float]]) -> int:
    """The most sends that could arrive in one interval [t, t + W)."""
    candidates = {finish for _, finish in sends} | {start - W for start, _ in sends}
    busiest = 0
    for t in candidates:
        busiest = max(busiest, sum(start < t + W and finish >= t for start, finish in sends))
    return busiest


def test_a_steady_group_uses_its_whole_limit() -> None:
    """The other promise: members that always have work use their counts in full."""
    rate = Rate(12, W)
    group = [_member(0.0, rate) for _ in range(3)]
    for member in group:
        member.share.rebalanced(1, 3, 0.0)
    sent = 0
    now = W
    while now < 11 * W:
        for member in group:
            while member.limiter.delay(now) <= 0:
                member.limiter.start(now).finish(now)
                sent += 1
        now += 0.5
    assert sent == 12 * 10
