"""Which lease events have happened, read from the calendar and the clock (stateless: the outbox's unique keys make
noticing an event again harmless).

| event | when |
|---|---|
| allocated | the lease exists (allocated, provisioned or later) |
| provisioned | the lease is provisioned (or ended after being provisioned) |
| starting_soon | provisioned, and its start is at most the lead time away |
| started | provisioned, and its start has passed |
| ending_soon | provisioned, and its end is at most the lead time away |
| ended | provisioned and its end has passed (or the calendar retired it) |
| cancelled | deleted or expired before being provisioned |
| failed | a sliver of the lease is ``geni_failed`` (the testbed could not make it real) |

A lease renewed to a new end gets a new ``ending_soon``/``ended`` (the end is part of their key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sfa_omf.calendar.timeline import BookingRow

EVENTS = ("allocated", "provisioned", "starting_soon", "started", "ending_soon", "ended", "cancelled", "failed")


@dataclass(frozen=True)
class LeaseEvent:
    key: str  # unique per event of a lease (and window, for the end events)
    event: str
    lease_id: str
    slice_urn: str
    owner_urn: str
    nodes: tuple[str, ...]
    start: datetime
    end: datetime
    state: str


def lease_events(rows: Sequence[BookingRow], now: datetime, lead: timedelta) -> list[LeaseEvent]:
    """Every event that has happened to these leases by ``now``."""
    leases: dict[str, list[BookingRow]] = {}
    for row in rows:
        if row.state != "external":
            leases.setdefault(row.lease_id, []).append(row)
    found = []
    for lease_id, items in leases.items():
        first = items[0]
        nodes = tuple(sorted({row.node for row in items}))
        provisioned = first.state in ("provisioned", "ended")
        happened = ["allocated"]
        if first.state in ("cancelled", "expired"):
            happened.append("cancelled")
        if any(row.operational_state == "geni_failed" for row in items):
            happened.append("failed")
        if provisioned:
            happened.append("provisioned")
            if now >= first.start - lead:
                happened.append("starting_soon")
            if now >= first.start:
                happened.append("started")
            if now >= first.end - lead:
                happened.append("ending_soon")
            if now >= first.end or first.state == "ended":
                happened.append("ended")
        for event in happened:
            window = f":{int(first.end.timestamp())}" if event in ("ending_soon", "ended") else ""
            found.append(
                LeaseEvent(
                    key=f"{lease_id}:{event}{window}",
                    event=event,
                    lease_id=lease_id,
                    slice_urn=first.slice_urn,
                    owner_urn=first.owner_urn,
                    nodes=nodes,
                    start=first.start,
                    end=first.end,
                    state=first.state,
                )
            )
    return found
