"""A node in maintenance is refused the same way whatever the request's form (docs/calendar.md, troubleshooting.md):
a window asked for (Bookings.book) and the earliest slot asked for (Availability.earliest_slot, a request with no
start) both answer BookingConflict, geni_code 7 (REFUSED), with the same words. SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from sfa_omf.calendar.booking import BookingConflict
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.errors import GeniCode, Reason
from tests.calendar.conftest import NOW, SLICE, SLICE_EXPIRES, Calendar, at, node_urn


def test_a_node_in_maintenance_is_refused_alike_with_or_without_a_window(calendar: Calendar) -> None:
    calendar.inventory.set_state(node_urn("n1"), "maintenance")
    with pytest.raises(BookingConflict) as with_window:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    with pytest.raises(BookingConflict) as earliest:
        calendar.availability.earliest_slot(3600, NOW, nodes=[node_urn("n1"), node_urn("n2")])
    for refusal in (with_window.value, earliest.value):
        assert (refusal.reason, refusal.code) == (Reason.BOOKING_CONFLICT, GeniCode.REFUSED)
        assert refusal.message == f"nothing was booked: {node_urn('n1')} is in maintenance"
    assert [conflict.node for conflict in earliest.value.conflicts] == [node_urn("n1")]
