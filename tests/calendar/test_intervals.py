"""Interval arithmetic against a brute-force oracle that looks at every grain."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sfa_omf.calendar.intervals import (
    earliest_common_start,
    earliest_start,
    free_windows,
    is_free,
    merge,
    overlaps,
)

GRAIN = 10


def busy_lists(max_size: int = 8) -> st.SearchStrategy[list[tuple[int, int]]]:
    return st.lists(
        st.tuples(st.integers(0, 40), st.integers(1, 8)).map(lambda t: (t[0] * GRAIN, (t[0] + t[1]) * GRAIN)),
        max_size=max_size,
    )


def free_grains(busy: list[tuple[int, int]], start: int, horizon: int) -> list[bool]:
    """Oracle: for each grain in [start, horizon), is it free?"""
    return [not any(b0 < g + GRAIN and g < b1 for b0, b1 in busy) for g in range(start, horizon, GRAIN)]


def test_back_to_back_do_not_overlap() -> None:
    assert not overlaps((0, 10), (10, 20))
    assert overlaps((0, 11), (10, 20))


@given(busy_lists(), st.integers(0, 50), st.integers(1, 10))
def test_is_free_matches_oracle(busy: list[tuple[int, int]], start_grain: int, length: int) -> None:
    window = (start_grain * GRAIN, (start_grain + length) * GRAIN)
    expected = all(free_grains(busy, window[0], window[1]))
    assert is_free(merge(busy), window) is expected


@given(busy_lists(), st.integers(0, 20), st.integers(1, 6))
def test_free_windows_match_oracle(busy: list[tuple[int, int]], start_grain: int, min_grains: int) -> None:
    start, horizon = start_grain * GRAIN, 60 * GRAIN
    windows = free_windows(merge(busy), start, horizon, GRAIN, min_grains * GRAIN, limit=100)
    flags = free_grains(busy, start, horizon)
    # Oracle: maximal runs of free grains of at least min_grains.
    expected, run_start = [], None
    for index, free in enumerate([*flags, False]):
        if free and run_start is None:
            run_start = index
        if not free and run_start is not None:
            if index - run_start >= min_grains:
                expected.append((start + run_start * GRAIN, start + index * GRAIN))
            run_start = None
    assert windows == expected


@given(busy_lists(), st.integers(0, 30), st.integers(1, 6))
def test_earliest_start_matches_oracle(busy: list[tuple[int, int]], after_grain: int, length: int) -> None:
    after = after_grain * GRAIN + 3  # not aligned: must round up
    found = earliest_start(merge(busy), after, length * GRAIN, GRAIN)
    candidate = (after_grain + 1) * GRAIN
    while not all(free_grains(busy, candidate, candidate + length * GRAIN)):
        candidate += GRAIN
    assert found == candidate


@settings(max_examples=60)
@given(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), busy_lists(5), min_size=1),
    st.integers(0, 30),
    st.integers(1, 5),
    st.integers(1, 4),
)
def test_earliest_common_start_matches_oracle(
    busy_by_node: dict[str, list[tuple[int, int]]], after_grain: int, length: int, needed: int
) -> None:
    after, duration = after_grain * GRAIN, length * GRAIN
    result = earliest_common_start(busy_by_node, after, duration, GRAIN, needed)
    if needed > len(busy_by_node):
        assert result is None
        return
    candidate = after
    while True:
        free = [n for n, busy in busy_by_node.items() if all(free_grains(busy, candidate, candidate + duration))]
        if len(free) >= needed:
            break
        candidate += GRAIN
    assert result is not None
    start, nodes = result
    assert start == candidate
    assert len(nodes) == needed and set(nodes) <= set(free)
