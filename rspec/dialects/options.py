"""Time slots given as Allocate options instead of in the RSpec (omni --start-time/--end-time):
geni_start_time and geni_end_time, RFC 3339 (or epoch seconds). Either may be missing: no start means from now,
no end means the operator's default duration after the start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from rspec.problems import Problem
from sfa_omf.errors import BadArgs
from sfa_omf.times import parse_time

START = "geni_start_time"
END = "geni_end_time"


@dataclass(frozen=True)
class Slot:
    """A slot for the nodes the RSpec gives no time for. ``from_now``: the client gave no start, so the slot may begin
    now, inside a grain. ``start`` None (no time at all): the aggregate books from now when the nodes are free."""

    start: datetime | None
    duration: timedelta
    from_now: bool = False


def read_slot(
    options: Mapping[str, object] | None, now: datetime, default_duration: timedelta, problems: list[Problem]
) -> Slot | None:
    """The slot the options ask for, or None when they give no time. Problems are appended."""
    if not options or (options.get(START) is None and options.get(END) is None):
        return None
    start = _time(options, START, problems)
    end = _time(options, END, problems)
    if (options.get(START) is not None and start is None) or (options.get(END) is not None and end is None):
        return None
    from_now = start is None
    start = start or now
    end = end or start + default_duration
    if end <= start:
        problems.append(Problem(0, 0, "", f"option {END} must be after {START} (or after now when there is none)"))
        return None
    return Slot(start, end - start, from_now)


def _time(options: Mapping[str, object], name: str, problems: list[Problem]) -> datetime | None:
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, str | int | float | datetime):
        problems.append(Problem(0, 0, "", f"option {name} must be a time, not {type(value).__name__}"))
        return None
    try:
        return parse_time(value)
    except BadArgs as exc:
        problems.append(Problem(0, 0, "", f"option {name}: {exc.message}"))
        return None
