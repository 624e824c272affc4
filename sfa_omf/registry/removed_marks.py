"""The name the calendar gives what a removed user or slice held: "URN (removed TIME)".

Where the calendar recorded who did something (a lease's booker, a saved image's owner, an event's caller) or a
slice's name, a removal puts this mark in place of the URN (registry/records.py), so that the next holder of the name
does not see or control it. Numbered ("URN (removed TIME #2)") when a slice's name was taken by another slice removed
in the same second. The OMF inventory reads the URN and time back (registry/accounts.py) to name the login a lease
ran under. Writer and reader of the format are here together: one reason to change.
"""

from __future__ import annotations

import re
from datetime import datetime

from sfa_omf.times import format_time, parse_time

#: The calendar's URN columns (lease.owner_urn, slice.urn): a mark fits in them, its URN cut when long.
MARKED_COLUMN_CHARS = 300

#: The marks written here, and migration 0024's "URN (removed before TIME)" for what earlier removals left (its
#: login is the newest retired by then).
_MARK = re.compile(
    r"^(?P<urn>.*) \(removed (?:before )?(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)(?: #\d+)?\)$", re.DOTALL
)


#: What every mark holds and no URN does (white space): is_removed_mark's test, also usable in a query (LIKE).
MARK_TEXT = " (removed "


def removed_holder(urn: str, removed: datetime, number: int = 1) -> str:
    """What the calendar keeps of ``urn`` removed at ``removed``: the URN (cut, never the mark, so that the whole
    fits the columns) and when. ``number`` > 1: the n-th slice of that name removed in that second. No certificate
    names it (names under our authority are ours to issue, and new_record_urn refuses white space), so it is nobody's
    own: not the next holder's of the name."""
    mark = f" (removed {format_time(removed)}{f' #{number}' if number > 1 else ''})"
    return urn[: MARKED_COLUMN_CHARS - len(mark)] + mark


def removed_mark_parts(owner: str) -> tuple[str, datetime] | None:
    """(the URN, or its beginning when it was cut to fit; when it was removed) of a mark; None for anything else
    (a plain URN)."""
    found = _MARK.match(owner)
    if found is None:
        return None
    return found["urn"], parse_time(found["time"])


def is_removed_mark(owner: str) -> bool:
    """Whether ``owner`` (a lease's booker, a slice's URN) is a mark rather than a URN: the mark holds " (removed ",
    white space no registered name has."""
    return MARK_TEXT in owner


def may_be_cut(mark: str) -> bool:
    """Whether the URN in ``mark`` may have been cut: a mark whose URN was cut fills the column exactly; a shorter
    one holds its whole URN."""
    return len(mark) >= MARKED_COLUMN_CHARS
