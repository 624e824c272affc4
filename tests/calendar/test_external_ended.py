"""A mirrored reservation (calendar/external.py) that the source stops listing: OAR lists unfinished jobs only, so one
that had started ran and is ``ended`` (its end cut to the sync's time when it ended early), as a lease of ours that
ran to its end; one that vanished before its start was cancelled. On SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from sfa_omf.calendar.external import ExternalHold, ExternalHolds, is_external, source_slice_urn
from sfa_omf.calendar.models import Lease, Sliver
from sfa_omf.calendar.queries import from_s
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.calendar.timeline import Timeline
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, node_urn


def hold(key: str, start_h: float, end_h: float, *names: str) -> ExternalHold:
    return ExternalHold(key, tuple(node_urn(name) for name in names), at(start_h), at(end_h), f"OAR job {key}")


def stored(calendar: Calendar, key: str) -> tuple[str, object, object, list[tuple[bool, object]]]:
    """(state, start, end, [(holds_node, end) of each sliver]) of the mirrored lease of ``key``."""
    with calendar.database.read() as session:
        lease = session.scalars(select(Lease).where(Lease.client_id == key)).one()
        slivers = session.scalars(select(Sliver).where(Sliver.lease_id == lease.id)).all()
        return (
            lease.state,
            from_s(lease.start_s),
            from_s(lease.end_s),
            [(sliver.holds_node, from_s(sliver.end_s)) for sliver in slivers],
        )


def test_a_reservation_that_ran_is_ended_not_cancelled(calendar: Calendar) -> None:
    external = ExternalHolds(calendar.database, "testbed", clock=lambda: calendar.now)
    external.sync("oar", [hold("oar:1", 1, 3, "n1", "n2"), hold("oar:2", 1, 2, "n3"), hold("oar:3", 5, 6, "n3")])

    calendar.now = at(2.5)  # oar:1 ended early (deleted at 2.5), oar:2 ran to its end, oar:3 never started
    report = external.sync("oar", [])
    assert sorted(report.removed) == ["oar:1", "oar:2", "oar:3"]
    assert sorted(report.ended) == ["oar:1", "oar:2"]
    assert stored(calendar, "oar:1") == ("ended", at(1), at(2.5), [(False, at(2.5)), (False, at(2.5))])
    assert stored(calendar, "oar:2") == ("ended", at(1), at(2), [(False, at(2))])
    assert stored(calendar, "oar:3") == ("cancelled", at(5), at(6), [(False, at(6))])

    # Ended: their time was taken (the Gantt's rows), the nodes are free from now on, the mirror holds nothing.
    rows = Timeline(calendar.database).bookings(at(0), at(8), include_ended=True)
    assert sorted((row.client_id, row.node, row.state) for row in rows) == [
        ("oar:1", node_urn("n1"), "ended"),
        ("oar:1", node_urn("n2"), "ended"),
        ("oar:2", node_urn("n3"), "ended"),
    ]
    assert all(is_external(row.state, row.slice_urn, row.owner_urn) for row in rows)
    assert external.holds("oar") == []
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(2.5), at(3))])
    assert external.sync("oar", []).removed == [], "an ended reservation is not released again"


def test_is_external_tells_an_ended_mirror_from_our_leases() -> None:
    mirror = source_slice_urn("testbed", "oar")
    assert is_external("external", mirror, "")
    assert is_external("ended", mirror, "")
    assert not is_external("cancelled", mirror, "")
    assert not is_external("ended", SLICE, "")
    assert not is_external("ended", "urn:publicid:IDN+testbed+slice+external-oar", "urn:publicid:IDN+testbed+user+a")
