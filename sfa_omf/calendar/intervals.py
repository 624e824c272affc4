"""Interval arithmetic on half-open [start, end) windows of epoch seconds. Pure functions, no database.

Everything the calendar answers about time ("is it free?", "next free windows", "earliest common slot") is computed
here from sorted lists of busy intervals, so it can be tested against a brute-force oracle.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence

Interval = tuple[int, int]
DAY_S = 86_400


def align_down(moment: int, grain: int) -> int:
    return moment - moment % grain


def align_up(moment: int, grain: int) -> int:
    return -(-moment // grain) * grain


def overlaps(a: Interval, b: Interval) -> bool:
    """Half-open intervals overlap when each starts before the other ends (back-to-back do not)."""
    return a[0] < b[1] and b[0] < a[1]


def merge(busy: Iterable[Interval]) -> list[Interval]:
    """Sort and merge touching or overlapping intervals."""
    merged: list[Interval] = []
    for start, end in sorted(busy):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def is_free(merged_busy: Sequence[Interval], window: Interval) -> bool:
    """True when window overlaps nothing in merged_busy (sorted, merged)."""
    index = bisect_right(merged_busy, (window[0], 2**62))
    # The interval starting at or before window start, and the first one after it, are the only candidates.
    if index > 0 and merged_busy[index - 1][1] > window[0]:
        return False
    return not (index < len(merged_busy) and merged_busy[index][0] < window[1])


def free_windows(
    merged_busy: Sequence[Interval], start: int, horizon: int, grain: int, min_length: int, limit: int
) -> list[Interval]:
    """The first ``limit`` free windows in [start, horizon), each aligned to grain and at least min_length long.

    A window is maximal: it runs from the end of one booking (or start) to the start of the next (or horizon).
    """
    windows: list[Interval] = []
    cursor = align_up(start, grain)
    for busy_start, busy_end in merged_busy:
        if busy_end <= cursor:
            continue
        if busy_start >= horizon:
            break
        gap_end = align_down(min(busy_start, horizon), grain)
        if gap_end - cursor >= min_length:
            windows.append((cursor, gap_end))
            if len(windows) >= limit:
                return windows
        cursor = max(cursor, align_up(busy_end, grain))
    end = align_down(horizon, grain)
    if end - cursor >= min_length and len(windows) < limit:
        windows.append((cursor, end))
    return windows


def earliest_start(merged_busy: Sequence[Interval], after: int, duration: int, grain: int) -> int:
    """The earliest grain-aligned start >= after at which [start, start+duration) is free."""
    candidate = align_up(after, grain)
    for busy_start, busy_end in merged_busy:
        if busy_end <= candidate:
            continue
        if candidate + duration <= busy_start:
            return candidate
        candidate = max(candidate, align_up(busy_end, grain))
    return candidate


def earliest_common_start(
    busy_by_node: dict[str, list[Interval]], after: int, duration: int, grain: int, needed: int
) -> tuple[int, list[str]] | None:
    """Earliest aligned start >= after where at least ``needed`` nodes are free for duration; (start, nodes).

    Only the request time and the ends of bookings can be the earliest start (a start can only become feasible when
    some booking ends), so those are the candidates, in order. None when fewer nodes than needed exist.
    """
    if needed > len(busy_by_node) or needed <= 0:
        return None
    merged = {node: merge(intervals) for node, intervals in busy_by_node.items()}
    first = align_up(after, grain)
    candidates = {first}
    for intervals in merged.values():
        candidates.update(align_up(end, grain) for _, end in intervals if end > first)
    for candidate in sorted(candidates):
        free = [node for node, busy in merged.items() if is_free(busy, (candidate, candidate + duration))]
        if len(free) >= needed:
            return candidate, sorted(free)[:needed]
    return None  # unreachable: after the last booking ends every node is free
