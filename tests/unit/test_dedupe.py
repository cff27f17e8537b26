"""The window of delivered keys: TTL, bounded memory, oldest evicted first."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.dedupe import DeliveredWindow


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
