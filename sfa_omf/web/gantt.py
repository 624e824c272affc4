"""The Gantt page's layout: nodes grouped by pool, x time, bookings as bars placed in percent of the window.

Pure functions over calendar records, so a test can compare the browser's bar positions with these numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sfa_omf.calendar.external import is_external
from sfa_omf.calendar.timeline import BookingRow, NodeRow
from sfa_omf.web.ical import short_name
from sfa_omf.web.viewer import Viewer

VIEWS = {"day": timedelta(days=1), "week": timedelta(days=7)}
#: The stored operational state of a provisioned lease's slivers is what Provision and PerformOperationalAction asked
#: for (set lease-wide), not what the nodes do (Status asks the testbed): shown as asked for, not as the node's state.
REQUESTED = {"geni_ready": "running", "geni_notready": "stopped"}


@dataclass(frozen=True)
class Bar:
    lease_id: str
    start: datetime
    end: datetime
    left: float  # percent of the window
    width: float
    kind: str  # mine, other, external
    label: str
    details: tuple[tuple[str, str], ...]  # (field, value) shown on hover/click
    ended: bool = False  # the lease is over (drawn faded: its time was taken, not free)


@dataclass(frozen=True)
class NodeLine:
    node: NodeRow
    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class PoolGroup:
    name: str
    lines: tuple[NodeLine, ...]


@dataclass(frozen=True)
class Tick:
    left: float
    label: str


def place(start: datetime, end: datetime, window_start: datetime, window_end: datetime) -> tuple[float, float]:
    """(left, width) in percent of the window of the part of [start, end) inside it."""
    span = (window_end - window_start).total_seconds()
    a = max(start, window_start)
    b = min(end, window_end)
    left = (a - window_start).total_seconds() / span * 100
    return round(left, 3), round(max((b - a).total_seconds(), 0) / span * 100, 3)


def bar_for(row: BookingRow, viewer: Viewer, window: tuple[datetime, datetime], users: dict[str, list[str]]) -> Bar:
    """A booking as the viewer may see it."""
    left, width = place(row.start, row.end, *window)
    when = f"{row.start:%Y-%m-%d %H:%M} – {row.end:%Y-%m-%d %H:%M} UTC"
    ended = row.state == "ended"
    if is_external(row.state, row.slice_urn, row.owner_urn):  # a reservation of the testbed's (ended once it ran)
        details: list[tuple[str, str]] = [("window", when), ("held", "outside sfa-omf (the testbed's own job)")]
        if viewer.admin:
            details.append(("source", row.client_id))
        return Bar(row.lease_id, row.start, row.end, left, width, "external", "reserved", tuple(details), ended)
    if viewer.sees_booking(row):
        details = [
            ("window", when),
            ("slice", row.slice_urn),
            ("state", row.state),
            ("booked by", row.owner_urn or "unknown"),
        ]
        requested = REQUESTED.get(row.operational_state)
        if requested and row.state == "provisioned":
            # What Provision asked for, stored for the whole lease: not the node's state (Status asks the testbed).
            details.insert(3, ("requested", requested))
        if users.get(row.slice_urn):
            details.append(("users", ", ".join(users[row.slice_urn])))
        kind = "mine" if row.slice_urn in viewer.slices or viewer.booked(row) else "other"
        label = short_name(row.slice_urn)
        return Bar(row.lease_id, row.start, row.end, left, width, kind, label, tuple(details), ended)
    return Bar(row.lease_id, row.start, row.end, left, width, "other", "booked", (("window", when),), ended)


def layout(
    nodes: Sequence[NodeRow],
    rows: Sequence[BookingRow],
    viewer: Viewer,
    window: tuple[datetime, datetime],
    users: dict[str, list[str]],
) -> list[PoolGroup]:
    """Pools in name order, each with its nodes and their bars. Each booking is decided by itself
    (Viewer.sees_booking): the viewer's own lease in a slice they have left shows whole, that slice's other leases
    as "booked"."""
    by_node: dict[str, list[Bar]] = {}
    for row in rows:
        by_node.setdefault(row.node, []).append(bar_for(row, viewer, window, users))
    groups: dict[str, list[NodeLine]] = {}
    for node in nodes:
        groups.setdefault(node.pool, []).append(NodeLine(node, tuple(by_node.get(node.component_id, ()))))
    return [PoolGroup(name, tuple(lines)) for name, lines in groups.items()]


def ticks(window: tuple[datetime, datetime], view: str) -> list[Tick]:
    """Hour marks (every 3 h) on a day, day marks on a week."""
    start, end = window
    step = timedelta(hours=3) if view == "day" else timedelta(days=1)
    marks = []
    moment = start
    while moment < end:
        label = f"{moment:%H:%M}" if view == "day" else f"{moment:%a %d %b}"
        marks.append(Tick(place(moment, end, start, end)[0], label))
        moment += step
    return marks
