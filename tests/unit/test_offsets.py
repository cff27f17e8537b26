"""The committable offset of a partition is the end of its finished prefix, and nothing more;
what is held (unfinished) and how far the commit lags (span) are counted apart."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.core.offsets import PartitionOffsets


def test_nothing_committable_before_anything_finished() -> None:
    offsets = PartitionOffsets()
    assert offsets.committable is None
    offsets.track(5)
    offsets.track(6)
    assert offsets.committable is None
    assert (offsets.unfinished, offsets.span, offsets.oldest_unfinished) == (2, 2, 5)


def test_out_of_order_finish_waits_for_the_gap() -> None:
    offsets = PartitionOffsets()
    for offset in (10, 11, 12, 15):
        offsets.track(offset)
    offsets.finish(12)
    offsets.finish(11)
    assert offsets.committable is None  # 10 is not finished
    # Finished records behind a stuck one are not held, but the commit lags behind them.
    assert (offsets.unfinished, offsets.span, offsets.oldest_unfinished) == (2, 4, 10)
    offsets.finish(10)
    assert offsets.committable == 13
    assert (offsets.unfinished, offsets.span, offsets.oldest_unfinished) == (1, 1, 15)
    offsets.finish(15)  # 13 and 14 were never consumed (compacted away, say)
    assert offsets.committable == 16
    assert (offsets.unfinished, offsets.span, offsets.oldest_unfinished) == (0, 0, None)


def test_finishing_twice_or_below_the_watermark_changes_nothing() -> None:
    offsets = PartitionOffsets()
    for offset in (1, 2, 3):
        offsets.track(offset)
    offsets.finish(2)
    offsets.finish(2)
    assert (offsets.unfinished, offsets.span) == (2, 3)
    offsets.finish(1)
    offsets.finish(1)
    offsets.finish(2)
    assert (offsets.committable, offsets.unfinished, offsets.span) == (3, 1, 1)


@pytest.mark.parametrize("offset", [7, 6, 0])
def test_track_rejects_offsets_that_are_not_increasing(offset: int) -> None:
    offsets = PartitionOffsets()
    offsets.track(5)
    offsets.track(7)
    with pytest.raises(ValueError, match="not after"):
        offsets.track(offset)


def test_track_rejects_going_back_after_the_prefix_drained() -> None:
    offsets = PartitionOffsets()
    offsets.track(5)
    offsets.finish(5)
    assert offsets.committable == 6
    for stale in (5, 3):
        with pytest.raises(ValueError, match="not after"):
            offsets.track(stale)
    assert offsets.committable == 6
    offsets.track(6)
    offsets.finish(6)
    assert offsets.committable == 7


@st.composite
def tracked_and_finish_order(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    start = draw(st.integers(0, 10**12))
    gaps = draw(st.lists(st.integers(1, 5), min_size=1, max_size=60))
    tracked, offset = [], start
    for gap in gaps:
        tracked.append(offset)
        offset += gap
    finish_order = draw(st.permutations(tracked))
    # Finish only some of them, so unfinished offsets stay in the middle.
    finished = draw(st.integers(0, len(finish_order)))
    return tracked, list(finish_order[:finished])


@settings(max_examples=80, deadline=None)
@given(tracked_and_finish_order())
def test_committable_is_the_end_of_the_finished_prefix(
    case: tuple[list[int], list[int]],
) -> None:
    tracked, order = case
    offsets = PartitionOffsets()
    for offset in tracked:
        offsets.track(offset)
    done: set[int] = set()
    previous = None
    for offset in order:
        offsets.finish(offset)
        done.add(offset)
        prefix = 0
        while prefix < len(tracked) and tracked[prefix] in done:
            prefix += 1
        expected = tracked[prefix - 1] + 1 if prefix else None
        assert offsets.committable == expected
        assert offsets.span == len(tracked) - prefix
        assert offsets.unfinished == len(tracked) - len(done)
        assert offsets.oldest_unfinished == (tracked[prefix] if prefix < len(tracked) else None)
        if prefix < len(tracked):
            # Never at or past an unfinished offset: it would be skipped after a crash.
            assert expected is None or expected <= tracked[prefix]
        if previous is not None:
            assert offsets.committable is not None
            assert offsets.committable >= previous
        previous = offsets.committable


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=2, max_size=30))
def test_track_accepts_exactly_the_increasing_sequences(sequence: list[int]) -> None:
    offsets = PartitionOffsets()
    highest = None
    for offset in sequence:
        if highest is not None and offset <= highest:
            with pytest.raises(ValueError, match="not after"):
                offsets.track(offset)
        else:
            offsets.track(offset)
            highest = offset
