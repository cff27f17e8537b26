"""The window of delivered keys: TTL, bounded memory, oldest evicted first."""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.core.dedupe import DeliveredWindow


def test_contains_only_what_was_added() -> None:
    window = DeliveredWindow(ttl=60.0, max_entries=10)
    assert not window.contains("a", 0.0)
    window.add("a", 0.0)
    assert window.contains("a", 0.0)
    assert window.contains("a", 59.999)
    assert not window.contains("b", 1.0)
    assert len(window) == 1


def test_key_expires_after_ttl() -> None:
    window = DeliveredWindow(ttl=60.0, max_entries=10)
    window.add("a", 100.0)
    assert window.contains("a", 159.9)
    assert not window.contains("a", 160.0)
    assert not window.contains("a", 1000.0)


def test_expired_keys_are_dropped_from_memory_on_add() -> None:
    window = DeliveredWindow(ttl=10.0, max_entries=100)
    for i in range(5):
        window.add(f"old-{i}", float(i))
    window.add("new", 20.0)
    assert len(window) == 1
    assert window.contains("new", 20.0)


def test_max_entries_evicts_the_oldest_first() -> None:
    window = DeliveredWindow(ttl=3600.0, max_entries=3)
    for i, key in enumerate("abcd"):
        window.add(key, float(i))
    assert len(window) == 3
    assert not window.contains("a", 4.0)
    assert all(window.contains(key, 4.0) for key in "bcd")
    window.add("e", 5.0)
    assert not window.contains("b", 5.0)
    assert all(window.contains(key, 5.0) for key in "cde")


def test_re_adding_refreshes_time_and_eviction_order() -> None:
    window = DeliveredWindow(ttl=10.0, max_entries=3)
    window.add("a", 0.0)
    window.add("b", 1.0)
    window.add("c", 2.0)
    window.add("a", 8.0)  # "a" is now the newest
    window.add("d", 9.0)  # evicts "b", the oldest now
    assert not window.contains("b", 9.0)
    assert all(window.contains(key, 9.0) for key in "acd")
    # The refresh also moved its expiry: 0 + 10 has passed, 8 + 10 has not.
    assert window.contains("a", 17.0)
    assert not window.contains("c", 17.0)
    assert len(window) == 3


def test_ttl_zero_disables_deduplication() -> None:
    window = DeliveredWindow(ttl=0.0, max_entries=1000)
    window.add("a", 0.0)
    assert not window.contains("a", 0.0)
    assert len(window) == 0


def test_max_entries_zero_disables_deduplication() -> None:
    window = DeliveredWindow(ttl=3600.0, max_entries=0)
    window.add("a", 0.0)
    assert not window.contains("a", 0.0)
    assert len(window) == 0


def test_max_entries_one_keeps_only_the_last() -> None:
    window = DeliveredWindow(ttl=3600.0, max_entries=1)
    window.add("a", 0.0)
    window.add("b", 1.0)
    assert not window.contains("a", 1.0)
    assert window.contains("b", 1.0)


keys = st.text(alphabet="abcdefgh", min_size=1, max_size=2)


@settings(max_examples=80, deadline=None)
@given(
    ttl=st.floats(0.5, 50.0),
    max_entries=st.integers(1, 12),
    script=st.lists(st.tuples(keys, st.floats(0.0, 5.0)), max_size=80),
)
def test_model(ttl: float, max_entries: int, script: list[tuple[str, float]]) -> None:
    """Against a plain model: size never exceeds max_entries, and a key is contained
    exactly when it was added within the ttl and not pushed out by newer keys."""
    window = DeliveredWindow(ttl, max_entries)
    added: dict[str, float] = {}  # key → last add time, in order of last add
    now = 0.0
    for key, gap in script:
        now += gap
        window.add(key, now)
        added.pop(key, None)
        added[key] = now
        assert len(window) <= max_entries
        newest = list(added)[-max_entries:]
        for other, at in added.items():
            expected = other in newest and now - at < ttl
            assert window.contains(other, now) == expected, (other, at, now)
        assert window.contains(key, now)


class ModelWindow:
    """The window as it was first written, an OrderedDict of keys: the reference.

    `identity` is what makes two keys the same: the key itself, or the fingerprint
    when a test narrows fingerprints to force collisions (colliding keys are then
    one key, in the model as in the window).
    """

    def __init__(
        self, ttl: float, max_entries: int, identity: Callable[[str], object] = str
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.identity = identity
        self._delivered: OrderedDict[object, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._delivered)

    def contains(self, key: str, now: float) -> bool:
        delivered_at = self._delivered.get(self.identity(key))
        return delivered_at is not None and now - delivered_at < self.ttl

    def add(self, key: str, now: float) -> None:
        if self.max_entries == 0 or self.ttl <= 0:
            return
        key_id = self.identity(key)
        self._delivered[key_id] = now
        self._delivered.move_to_end(key_id)
        while self._delivered:
            oldest_key, oldest_at = next(iter(self._delivered.items()))
            if now - oldest_at < self.ttl:
                break
            del self._delivered[oldest_key]
        while len(self._delivered) > self.max_entries:
            self._delivered.popitem(last=False)


# A step: ("add", key, time advance) or ("contains", key, query offset from now).
Step = tuple[str, int, float]


@st.composite
def scripts(draw: st.DrawFn, universe: int, ramp: int, size: int) -> list[Step]:
    """Up to `ramp` adds of distinct keys, which grow the storage (Hypothesis keeps
    drawn lists short), then up to `size` steps, three adds to a lookup."""
    advance = st.sampled_from([0.0, 0.25, 1.0, 3.0]) | st.floats(0.0, 5.0)
    gap = draw(st.sampled_from([0.0, 0.1, 1.0]))
    ramped: list[Step] = [("add", index, gap) for index in range(draw(st.integers(0, ramp)))]
    key = st.integers(0, universe - 1)
    add = st.tuples(st.just("add"), key, advance)
    step = st.one_of(add, add, add, st.tuples(st.just("contains"), key, st.floats(-10.0, 10.0)))
    return ramped + draw(st.lists(step, max_size=size))


def replay(
    window: DeliveredWindow,
    model: ModelWindow,
    universe: int,
    script: list[Step],
    key_of: Callable[[int], str] = str,
) -> None:
    """Run the script on both, checking after every step that they agree on the
    size and the key touched, and on every key of the universe every few steps."""
    now = 0.0
    every = max(1, universe // 16)
    for number, (action, index, amount) in enumerate(script, 1):
        key = key_of(index)
        if action == "add":
            now += amount
            window.add(key, now)
            model.add(key, now)
        else:
            assert window.contains(key, now + amount) == model.contains(key, now + amount)
        assert len(window) == len(model)
        assert window.contains(key, now) == model.contains(key, now)
        if number % every == 0 or number == len(script):
            for other in map(key_of, range(universe)):
                assert window.contains(other, now) == model.contains(other, now), (other, now)


ttls = st.sampled_from([0.0, -1.0, math.nan, 0.5, 2.0, 7.0, math.inf]) | st.floats(0.1, 30.0)


@settings(max_examples=300, deadline=None)
@given(
    ttl=ttls,
    max_entries=st.integers(0, 10),
    universe=st.integers(1, 14),
    data=st.data(),
)
def test_agrees_with_the_ordereddict_model(
    ttl: float, max_entries: int, universe: int, data: st.DataObject
) -> None:
    """Small bounds and a small key set: re-adds, refreshes, eviction by size and
    by time, and the disabled cases (ttl <= 0, max_entries 0) all come up."""
    script = data.draw(scripts(universe, 0, 60))
    replay(DeliveredWindow(ttl, max_entries), ModelWindow(ttl, max_entries), universe, script)


@settings(max_examples=40, deadline=None)
@given(
    ttl=st.sampled_from([1e9, 40.0, 150.0]),
    max_entries=st.integers(60, 300),
    data=st.data(),
)
def test_agrees_with_the_model_while_growing(
    ttl: float, max_entries: int, data: st.DataObject
) -> None:
    """Enough distinct keys to grow the storage past its first allocation, twice,
    with the window full and keys expiring."""
    universe = 500
    script = data.draw(scripts(universe, universe, 200))
    replay(DeliveredWindow(ttl, max_entries), ModelWindow(ttl, max_entries), universe, script)


def hashed_by(fingerprint: Callable[[str], int]) -> Callable[[object], str]:
    """Keys whose `hash()` is `fingerprint(key)`. The window stores a key as its hash
    (see dedupe.py), so a str subclass narrows the fingerprints to force collisions.
    (CPython turns a hash of -1 into -2: that moves key 0 of "wrapping homes" one slot
    back, and no other key below.)"""

    class Key(str):
        __slots__ = ()

        def __hash__(self) -> int:
            return fingerprint(str(self))

    return Key


# Narrowed fingerprints, for keys that are decimal integers.
narrowed: dict[str, Callable[[str], int]] = {
    # Genuine collisions: different keys, one fingerprint, so one key.
    "three fingerprints": lambda key: int(key) % 3,
    # Distinct fingerprints sharing the home slot 0, in every table size: one cluster.
    "one home": lambda key: int(key) << 40,
    # Homes in the last slot, 0 and 1: clusters that wrap round and interleave.
    "wrapping homes": lambda key: (int(key) % 3 - 1) + (int(key) << 40),
    # Both: a few homes, some shared fingerprints.
    "mixed": lambda key: (int(key) % 7) + ((int(key) % 11) << 40),
}


@pytest.mark.parametrize("fingerprint", narrowed.values(), ids=narrowed.keys())
@settings(max_examples=60, deadline=None)
@given(
    ttl=st.sampled_from([1e9, 6.0]) | st.floats(0.5, 20.0),
    max_entries=st.integers(1, 150),
    universe=st.sampled_from([8, 40, 300]),
    data=st.data(),
)
def test_agrees_with_the_model_under_forced_collisions(
    fingerprint: Callable[[str], int],
    ttl: float,
    max_entries: int,
    universe: int,
    data: st.DataObject,
) -> None:
    """Long probe sequences, deletions from the middle of clusters and clusters
    wrapping round the table: colliding keys act as one key, nothing else leaks."""
    script = data.draw(scripts(universe, universe, 150))
    window = DeliveredWindow(ttl, max_entries)
    model = ModelWindow(ttl, max_entries, identity=fingerprint)
    replay(window, model, universe, script, key_of=hashed_by(fingerprint))


def test_agrees_with_the_model_over_a_long_run_of_uuid_like_keys() -> None:
    """Thousands of steps through several growths, at a steady full window."""
    rng = random.Random(7)
    keys = [f"{rng.getrandbits(128):032x}" for _ in range(3000)]
    window, model = DeliveredWindow(500.0, 1000), ModelWindow(500.0, 1000)
    now = 0.0
    for step in range(30_000):
        key = rng.choice(keys)
        now += rng.choice([0.0, 0.01, 0.1])
        window.add(key, now)
        model.add(key, now)
        probe = rng.choice(keys)
        assert window.contains(probe, now) == model.contains(probe, now)
        assert len(window) == len(model)
        if step % 5000 == 0:
            assert all(window.contains(k, now) == model.contains(k, now) for k in keys)


def test_colliding_keys_count_as_one() -> None:
    """The price of fingerprints, made certain: a collision reads as a duplicate."""
    key = hashed_by(len)
    window = DeliveredWindow(ttl=60.0, max_entries=10)
    window.add(key("ab"), 0.0)
    assert window.contains(key("cd"), 1.0)
    window.add(key("cd"), 2.0)
    assert len(window) == 1


def test_an_unbounded_looking_window_is_cheap_until_used() -> None:
    """Storage grows with use, so a huge bound (past 32-bit node numbers) is fine."""
    window = DeliveredWindow(ttl=60.0, max_entries=2**40)
    for i in range(200):
        window.add(str(i), float(i) / 10)
    assert len(window) == 200
    assert window.contains("0", 20.0)
    assert not window.contains("200", 20.0)
