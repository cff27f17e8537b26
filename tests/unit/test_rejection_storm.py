"""A rejection storm: the same 4xx for most recent verdicts across many users."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.core.rejection_storm import RejectionStorm


def test_a_storm_needs_many_users() -> None:
    storm = RejectionStorm(window=20, min_share=0.8, min_users=5)
    for _ in range(20):
        storm.observe("400", "same-user")
    assert not storm.raging("400")
    for i in range(20):
        storm.observe("400", f"user-{i}")
    assert storm.raging("400")
    assert not storm.raging("422")


def test_accepted_events_calm_it_and_clear_starts_over() -> None:
    storm = RejectionStorm(window=20, min_share=0.8, min_users=5)
    for i in range(20):
        storm.observe("404", f"user-{i}")
    assert storm.raging("404")
    for i in range(5):
        storm.observe(None, f"user-{i}")
    assert not storm.raging("404")  # 15 of 20
    storm.clear()
    for i in range(9):
        storm.observe("404", f"user-{i}")
    assert not storm.raging("404")  # too few verdicts to judge


verdicts = st.lists(
    st.tuples(st.sampled_from([None, "400", "404"]), st.sampled_from([f"u{i}" for i in range(8)])),
    max_size=200,
)


@settings(max_examples=100, deadline=None)
@given(verdicts)
def test_it_agrees_with_counting_the_last_window_afresh(
    history: list[tuple[str | None, str]],
) -> None:
    storm = RejectionStorm(window=16, min_share=0.75, min_users=3)
    for code, user in history:
        storm.observe(code, user)
    recent = history[-16:]
    for code in ("400", "404"):
        hits = [user for c, user in recent if c == code]
        expected = len(recent) >= 8 and len(hits) >= 0.75 * len(recent) and len(set(hits)) >= 3
        assert storm.raging(code) == expected
