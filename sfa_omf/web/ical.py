"""iCal (RFC 5545) feeds of leases with the icalendar library: one VEVENT per lease.

- UID ``<lease id>@<aggregate host>``: the same in every feed and forever, so a client updates rather than adds.
- SEQUENCE and DTSTAMP come from the calendar's published revisions (calendar/feeds.py): a renew, a delete, a
  change of the slice's members or the registry's removal of the slice or of the booker (their names become
  "URN (removed TIME)") raises the SEQUENCE, so clients replace what they hold.
- Cancelled and expired leases stay in the feed as STATUS:CANCELLED (a client removes the event only when told).
- Times are UTC (``...Z``).
- Privacy: the caller decides per lease (``sees``, given the lease id) whether the event names the slice, nodes'
  users and state, or only says "booked".
- Nodes are named by their names (component_name) in SUMMARY and LOCATION, as the pages name them; DESCRIPTION
  lists their URNs.
- A reservation made outside sfa-omf (calendar/external.py) says "reserved in the testbed", also once it ran.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from icalendar import Calendar, Event, Timezone, TimezoneStandard, vText

from sfa_omf.calendar.external import is_external
from sfa_omf.calendar.feeds import Revision
from sfa_omf.calendar.timeline import BookingRow

PRODID = "-//sfa-omf//web calendar//EN"

#: The lease states and the iCal STATUS each maps to.
STATUS = {
    "allocated": "TENTATIVE",
    "provisioned": "CONFIRMED",
    "ended": "CONFIRMED",
    "external": "CONFIRMED",
    "cancelled": "CANCELLED",
    "expired": "CANCELLED",
}


@dataclass(frozen=True)
class LeaseEvent:
    """One lease as the feeds show it: its rows grouped. Every field but ``lease_id``, ``nodes`` and ``node_names``
    (which depend on the reader) is in its ``fingerprint``; the nodes are, as ``placement``."""

    lease_id: str
    slice_urn: str  # "URN (removed TIME)" once the slice is removed (registry/removed_marks.py)
    owner_urn: str  # likewise once its booker is removed
    state: str
    client_id: str
    nodes: tuple[str, ...]  # the component ids the reader is shown, sorted
    start: datetime
    end: datetime
    node_names: tuple[str, ...] = ()  # the names of ``nodes`` (component_name), in their order


@dataclass(frozen=True)
class NodePlace:
    """A node of a lease as its event shows it, whoever reads: its component id, name and whether its pool is
    federated (the nodes of a private pool are left out of the events of those who may not see them)."""

    component_id: str
    name: str
    federated: bool


def group_leases(rows: Sequence[BookingRow], names: Mapping[str, str] | None = None) -> list[LeaseEvent]:
    """The rows of each lease together, in the rows' order; ``names``: each node's name by component id (a node
    left out is named by the end of its URN)."""
    names = names or {}
    grouped: dict[str, list[BookingRow]] = {}
    for row in rows:
        grouped.setdefault(row.lease_id, []).append(row)
    events = []
    for lease_id, items in grouped.items():
        nodes = tuple(sorted({row.node for row in items}))
        events.append(
            LeaseEvent(
                lease_id=lease_id,
                slice_urn=items[0].slice_urn,
                owner_urn=items[0].owner_urn,
                state=items[0].state,
                client_id=items[0].client_id,
                nodes=nodes,
                start=items[0].start,
                end=items[0].end,
                node_names=tuple(names.get(node) or short_name(node) for node in nodes),
            )
        )
    return events


def placements(rows: Sequence[BookingRow], places: Mapping[str, NodePlace]) -> dict[str, list[NodePlace]]:
    """Every node of each lease of ``rows`` (all of them, whoever reads: give the rows before a reader's nodes are
    left out), as ``fingerprint`` takes them; ``places``: every node by component id."""
    found: dict[str, dict[str, NodePlace]] = {}
    for row in rows:
        place = places.get(row.node) or NodePlace(row.node, short_name(row.node), False)
        found.setdefault(row.lease_id, {})[row.node] = place
    return {lease_id: list(nodes.values()) for lease_id, nodes in found.items()}


def fingerprint(event: LeaseEvent, members: Sequence[str] = (), placement: Sequence[NodePlace] = ()) -> str:
    """What a client must be told about when it changes (its SEQUENCE grows then): the window and the state, and also
    the slice and the booker, which a removal from the registry turns into "URN (removed TIME)" (a client replaces an
    event it holds only when the SEQUENCE grew, so it would keep the old names), the label, ``members``: the slice's
    users (``Timeline.users_of_slices``), which an event seen whole lists, and ``placement``: every node of the lease,
    its name and whether its pool is federated (a node renamed, or moved to or from a private pool, changes the
    SUMMARY and LOCATION of events). Not ``event.nodes``: the nodes an event lists depend on who reads the feed (a
    private pool's are left out for others), so two readers would record two fingerprints of one lease, each read
    raising its SEQUENCE; ``placement`` and the members are given for every reader alike, for the same reason."""
    shown = (
        int(event.start.timestamp()),
        int(event.end.timestamp()),
        event.state,
        event.slice_urn,
        event.owner_urn,
        event.client_id,
        sorted(set(members)),  # the order they were read or added in is no change
        sorted({(place.component_id, place.name, place.federated) for place in placement}),
    )
    return hashlib.sha256(json.dumps(shown).encode("utf-8")).hexdigest()


def short_name(urn: str) -> str:
    """The last part of a URN (a slice's or node's name)."""
    return urn.rsplit("+", 1)[-1]


@dataclass(frozen=True)
class EventInputs:
    """Everything one VEVENT's text is made of: ``_event`` reads these and nothing else, and the cache keys on them,
    so a change of any of them (a renamed booker, a new member list) is a new text in every process."""

    lease: LeaseEvent
    revision: Revision
    visible: bool  # the viewer sees the lease whole
    host: str
    slice_users: tuple[str, ...]  # the slice's members, when visible (else empty)


class EventCache:
    """The text of events already rendered, by their ``EventInputs``.

    The icalendar library takes about a millisecond per event; a feed of thousands of leases that did not change
    is mostly these. Bounded: when full, it is emptied (the next feeds render again). Thread-safe.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._texts: dict[EventInputs, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: EventInputs) -> bytes:
        """The event's text, made (and kept) if missing."""
        with self._lock:
            text = self._texts.get(key)
        if text is None:
            text = bytes(_event(key).to_ical())
            with self._lock:
                if len(self._texts) >= self.capacity:
                    self._texts.clear()
                self._texts[key] = text
        return text


def render_feed(
    name: str,
    events: Sequence[LeaseEvent],
    revisions: dict[str, Revision],
    sees: Callable[[str], bool],
    host: str,
    users: dict[str, list[str]] | None = None,
    cache: EventCache | None = None,
) -> bytes:
    """The VCALENDAR text of these leases (each VEVENT from the cache when it has it); ``sees``: whether the viewer
    sees the lease (by its id) whole; ``users``: the members of the slices whose members the viewer may be shown (an
    event seen whole lists them)."""
    calendar = Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    calendar.add("method", "PUBLISH")
    # As TEXT (escaped): the library writes an X- property it does not know as given, and a name holds a slice's or
    # node's name (a line break in it made the library fail, a "," ";" or "\\" made invalid TEXT).
    calendar.add("x-wr-calname", vText(name))
    calendar.add("x-wr-timezone", "UTC")
    if not events:
        # RFC 5545 wants at least one component in a VCALENDAR: an empty feed carries UTC's (harmless) definition.
        calendar.add_component(_utc_timezone())
    cache = cache or EventCache()
    users = users or {}
    texts = []
    for event in events:
        visible = sees(event.lease_id)
        slice_users = tuple(users.get(event.slice_urn, ())) if visible else ()
        texts.append(cache.get(EventInputs(event, revisions[event.lease_id], visible, host, slice_users)))
    # The calendar's own lines, with the events spliced in before its END line.
    head, end = bytes(calendar.to_ical()).rsplit(b"END:VCALENDAR", 1)
    return head + b"".join(texts) + b"END:VCALENDAR" + end


def _utc_timezone() -> Timezone:
    """A VTIMEZONE for UTC: no offset, no daylight saving."""
    standard = TimezoneStandard()
    standard.add("dtstart", datetime(1970, 1, 1))
    standard.add("tzoffsetfrom", timedelta(0))
    standard.add("tzoffsetto", timedelta(0))
    standard.add("tzname", "UTC")
    timezone = Timezone()
    timezone.add("tzid", "UTC")
    timezone.add_component(standard)
    return timezone


def _event(inputs: EventInputs) -> Event:
    """The VEVENT of these inputs: read from ``inputs`` alone (the cache's key)."""
    lease, revision, visible = inputs.lease, inputs.revision, inputs.visible
    event = Event()
    event.add("uid", f"{lease.lease_id}@{inputs.host}")
    event.add("sequence", revision.sequence)
    event.add("dtstamp", revision.stamp)
    event.add("last-modified", revision.stamp)
    event.add("dtstart", lease.start)
    event.add("dtend", lease.end)
    event.add("status", STATUS.get(lease.state, "CONFIRMED"))
    event.add("transp", "OPAQUE")
    node_names = ", ".join(lease.node_names or [short_name(node) for node in lease.nodes])
    event.add("location", node_names)
    if is_external(lease.state, lease.slice_urn, lease.owner_urn):  # held by the testbed, or was: it ran
        event.add("summary", f"reserved in the testbed: {node_names}")
        event.add("description", f"held outside sfa-omf ({lease.client_id})" if visible else "held outside sfa-omf")
    elif visible:
        event.add("summary", f"{short_name(lease.slice_urn)}: {node_names}")
        lines = [
            f"slice: {lease.slice_urn}",
            f"state: {lease.state}",
            f"nodes: {', '.join(lease.nodes)}",
            f"booked by: {lease.owner_urn or 'unknown'}",
        ]
        if inputs.slice_users:
            lines.append(f"users: {', '.join(inputs.slice_users)}")
        event.add("description", "\n".join(lines))
    else:
        event.add("summary", f"booked: {node_names}")
    return event
