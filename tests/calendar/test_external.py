"""Reservations made outside sfa-omf (directly in OAR) mirrored into the calendar: bookings, free windows and
"available now" see them; the mirror follows the source; a reservation that overlaps one of our bookings is not
mirrored (the calendar's guarantee wins) and is reported. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from sfa_omf.calendar.booking import BookingConflict
from sfa_omf.calendar.external import ExternalHold, ExternalHolds
from sfa_omf.calendar.records import BookingRequest
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, node_urn


def hold(key: str, start_h: float, end_h: float, *names: str) -> ExternalHold:
    return ExternalHold(key, tuple(node_urn(name) for name in names), at(start_h), at(end_h), f"OAR job {key}")


def test_mirrored_reservations_block_bookings_and_free_windows(calendar: Calendar) -> None:
    external = ExternalHolds(calendar.database, "testbed")
    report = external.sync("oar", [hold("oar:7", 1, 2, "n1", "n2"), hold("oar:8", 3, 4, "ghost")])
    assert report.added == ["oar:7"] and report.unknown_nodes == [node_urn("ghost")]
    with pytest.raises(BookingConflict) as refused:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(1), at(2))])
    (conflict,) = refused.value.conflicts
    assert conflict.next_free_start == at(2)
    assert "is reserved outside sfa-omf (OAR job oar:7)" in conflict.describe()
    windows = calendar.availability.free_windows(at(0), at(6), count=3, nodes=[node_urn("n1"), node_urn("n3")])
    assert [(w.start, w.end) for w in windows[node_urn("n1")]][:2] == [(at(0), at(1)), (at(2), at(6))]
    assert [(w.start, w.end) for w in windows[node_urn("n3")]] == [(at(0), at(6))]
    calendar.now = at(1.5)
    assert calendar.availability.busy_now(at(1.5)) >= {node_urn("n1"), node_urn("n2")}
    assert [(h.key, h.nodes) for h in external.holds("oar")] == [("oar:7", (node_urn("n1"), node_urn("n2")))]
    assert calendar.bookings.leases() == [], "mirrored reservations are not slices' leases"


def test_the_mirror_follows_the_source(calendar: Calendar) -> None:
    external = ExternalHolds(calendar.database, "testbed")
    external.sync("oar", [hold("oar:7", 1, 2, "n1"), hold("oar:9", 5, 6, "n3")])
    again = external.sync("oar", [hold("oar:7", 1, 2, "n1"), hold("oar:9", 5, 7, "n3")])  # 9 was extended
    assert (again.kept, again.added, again.removed) == (1, ["oar:9"], [])
    gone = external.sync("oar", [hold("oar:9", 5, 7, "n3")])
    assert gone.removed == ["oar:7"]
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])  # free again
    assert [(h.key, h.end) for h in external.holds("oar")] == [("oar:9", at(7))]
    assert external.sync("oar", []).removed == ["oar:9"]
    assert external.holds("oar") == []


def test_a_reservation_overlapping_our_booking_is_not_mirrored(calendar: Calendar) -> None:
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    report = ExternalHolds(calendar.database, "testbed").sync("oar", [hold("oar:5", 1.5, 3, "n1")])
    assert report.clashing == ["oar:5"] and report.added == []
    assert len(calendar.bookings.leases(node=node_urn("n1"))) == 1
    later = ExternalHolds(calendar.database, "testbed").sync("oar", [hold("oar:5", 2, 3, "n1")])
    assert later.added == ["oar:5"], "back to back with our booking is fine"
