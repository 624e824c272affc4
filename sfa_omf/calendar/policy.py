"""The operator's booking rules. A refusal names the rule it applies (``rule`` on the error), e.g. max_duration."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sfa_omf.calendar.intervals import DAY_S as DAY
from sfa_omf.calendar.intervals import align_down, align_up
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import format_time


@dataclass(frozen=True)
class Policy:
    default_grain_s: int = 1800
    min_duration_s: int = 1800
    max_duration_s: int = 7 * DAY
    max_advance_s: int = 90 * DAY  # how far ahead a window may start
    allocation_ttl_s: int = 600  # an allocation never provisioned is released after this (GENI: minutes)
    max_concurrent_leases_per_slice: int | None = None
    max_hours_per_day_per_user: float | None = None  # node-hours per UTC day
    # Node-hours one user holds from now on, across all their slices: leases not yet ended, counted from now.
    max_node_hours_ahead_per_user: float | None = None
    max_nodes_per_request: int = 1000  # nodes one Allocate may name (bounds the work one call can cause)
    # Node x window pairs (slivers) one Allocate may book: each is a row written now and at Provision, in one unit
    # of work that holds the calendar's write lock (2000: a request of max_nodes_per_request nodes in two windows).
    max_leases_per_request: int = 2000
    max_instances_per_node: int = 16  # containers one sliver may ask for (<sliver_type name="lxc" inst:count>)


class PolicyViolation(GeniError):
    """A request broke one of the operator's rules; ``rule`` names it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(Reason.POLICY, f"{message} (policy rule {rule})")
        self.rule = rule
        self.detail = message  # without the rule's name (a caller that says more puts it in its own words)


def human_duration(seconds: int) -> str:
    """A duration as a person says it: "45 s", "30 minutes", "1.5 hours", "20 days" (one decimal at most)."""

    def count(value: float, unit: str) -> str:
        shown = f"{value:.1f}".removesuffix(".0")
        return f"{shown} {unit}" if shown == "1" else f"{shown} {unit}s"

    if abs(seconds) < 120:
        return f"{seconds} s"
    if abs(seconds) < 2 * 3600:
        return count(seconds / 60, "minute")
    if abs(seconds) < 2 * DAY:
        return count(seconds / 3600, "hour")
    return count(seconds / DAY, "day")


def exact_duration(seconds: int) -> str:
    """A duration to the second, in its largest units: "7 days 30 minutes", "1 hour 5 s", "0 s"."""
    parts = []
    rest = abs(seconds)
    for unit_s, unit in ((DAY, "day"), (3600, "hour"), (60, "minute")):
        if rest >= unit_s:
            parts.append(f"{rest // unit_s} {unit}" + ("" if rest // unit_s == 1 else "s"))
            rest %= unit_s
    if rest or not parts:
        parts.append(f"{rest} s")
    return ("-" if seconds < 0 else "") + " ".join(parts)


def _utc(moment_s: int) -> str:
    """Seconds since the epoch as a refusal writes a time: 2026-12-01T10:00:00Z."""
    return format_time(datetime.fromtimestamp(moment_s, UTC))


def compared_durations(asked_s: int, limit_s: int) -> tuple[str, str]:
    """Two durations as a refusal compares them: as a person says them, or exactly when rounding makes them read
    the same ("7 days is longer than the maximum of 7 days" for 7 days 30 minutes)."""
    asked, limit = human_duration(asked_s), human_duration(limit_s)
    if asked == limit and asked_s != limit_s:
        return exact_duration(asked_s), exact_duration(limit_s)
    return asked, limit


def max_duration_counted_from(start_s: int, grains_s: Iterable[int]) -> int:
    """Where the maximum duration of a lease starting at ``start_s`` on nodes of these slot lengths is counted from:
    its start; or, for a lease booked from now whose start falls inside a slot (off the boundaries every node's slots
    share), the first boundary of one of its nodes' slots after it, as ``check_window`` counts its whole slots (the
    partial first slot is a bonus). One rule for the renewal's refusal and for geni_extend_alap's reach."""
    grains = [max(grain_s, 1) for grain_s in grains_s]
    if not grains or start_s % math.lcm(*grains) == 0:
        return start_s
    return min(align_up(start_s, grain_s) for grain_s in grains)


def check_window(
    policy: Policy, start_s: int, end_s: int, now_s: int, grain_s: int, node: str, partial_start: bool = False
) -> None:
    """The per-window rules: order, grain alignment, past, durations, how far ahead.

    ``partial_start``: the window was booked from now (the client gave no start), so a start inside a slot that has
    begun is fine; its end keeps to the grain, and the partial first slot counts as a whole one towards the minimum
    and not at all towards the maximum (it is a bonus, never a reason to refuse).
    """
    if end_s <= start_s:
        raise PolicyViolation("window", f"the window for {node} ends before it starts")
    start_off_grain = start_s % grain_s and not (partial_start and start_s <= now_s)
    if start_off_grain or end_s % grain_s:
        off = [("start", start_s)] if start_off_grain else []
        off += [("end", end_s)] if end_s % grain_s else []
        nearest = "; ".join(
            f"{name} {_utc(moment_s)} is not: {_utc(align_down(moment_s, grain_s))} or "
            f"{_utc(align_up(moment_s, grain_s))} is"
            for name, moment_s in off
        )
        raise PolicyViolation(
            "grain",
            f"{node} is booked in slots of {human_duration(grain_s)}: start and end must be multiples of {grain_s} s "
            f"since the epoch; {nearest}",
        )
    if end_s <= now_s:
        raise PolicyViolation("past", f"the window for {node} is already over")
    duration = end_s - align_down(start_s, grain_s) if partial_start else end_s - start_s
    if duration < policy.min_duration_s:
        asked, minimum = compared_durations(duration, policy.min_duration_s)
        raise PolicyViolation("min_duration", f"{asked} is shorter than the minimum of {minimum}")
    whole_slots = end_s - max_duration_counted_from(start_s, [grain_s]) if partial_start else duration
    if whole_slots > policy.max_duration_s:
        asked, maximum = compared_durations(whole_slots, policy.max_duration_s)
        raise PolicyViolation("max_duration", f"{asked} is longer than the maximum of {maximum}")
    if start_s - now_s > policy.max_advance_s:
        raise PolicyViolation("max_advance", f"bookings may start at most {human_duration(policy.max_advance_s)} ahead")
