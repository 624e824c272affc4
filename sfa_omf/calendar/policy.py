"""The operator's booking rules. A refusal names the rule it applies (``rule`` on the error), e.g. max_duration."""

from __future__ import annotations

from dataclasses import dataclass

from sfa_omf.calendar.intervals import DAY_S as DAY
from sfa_omf.errors import GeniError, Reason


@dataclass(frozen=True)
class Policy:
    default_grain_s: int = 1800
    min_duration_s: int = 1800
    max_duration_s: int = 7 * DAY
    max_advance_s: int = 90 * DAY  # how far ahead a window may start
    allocation_ttl_s: int = 600  # an allocation never provisioned is released after this (GENI: minutes)
    max_concurrent_leases_per_slice: int | None = None
    max_hours_per_day_per_user: float | None = None  # node-hours per UTC day
    max_nodes_per_request: int = 1000  # nodes one Allocate may name (bounds the work one call can cause)


class PolicyViolation(GeniError):
    """A request broke one of the operator's rules; ``rule`` names it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(Reason.POLICY, f"{message} (policy rule {rule})")
        self.rule = rule


def check_window(policy: Policy, start_s: int, end_s: int, now_s: int, grain_s: int, node: str) -> None:
    """The per-window rules: order, grain alignment, past, durations, how far ahead."""
    if end_s <= start_s:
        raise PolicyViolation("window", f"the window for {node} ends before it starts")
    if start_s % grain_s or end_s % grain_s:
        raise PolicyViolation(
            "grain", f"{node} is booked in slots of {grain_s} s: start and end must be multiples of {grain_s} s"
        )
    if end_s <= now_s:
        raise PolicyViolation("past", f"the window for {node} is already over")
    duration = end_s - start_s
    if duration < policy.min_duration_s:
        raise PolicyViolation("min_duration", f"{duration} s is shorter than the minimum of {policy.min_duration_s} s")
    if duration > policy.max_duration_s:
        raise PolicyViolation("max_duration", f"{duration} s is longer than the maximum of {policy.max_duration_s} s")
    if start_s - now_s > policy.max_advance_s:
        raise PolicyViolation("max_advance", f"bookings may start at most {policy.max_advance_s // DAY} days ahead")
