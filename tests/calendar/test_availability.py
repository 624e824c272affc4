"""Free windows, busy-now and earliest common slots, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sfa_omf.calendar.records import BookingRequest, FreeWindow, NodeSpec
from sfa_omf.errors import GeniError, Reason
from tests.calendar.conftest import NOW, SLICE, SLICE_EXPIRES, Calendar, at, node_urn


def book(calendar: Calendar, name: str, start_h: float, end_h: float, slice_urn: str = SLICE) -> str:
    result = calendar.bookings.book(slice_urn, SLICE_EXPIRES, [BookingRequest(node_urn(name), at(start_h), at(end_h))])
    return result.leases[0].id


def test_next_free_windows(calendar: Calendar) -> None:
    book(calendar, "n1", 1, 2)
    book(calendar, "n1", 3, 4)
    calendar.inventory.set_state(node_urn("n3"), "maintenance")
    windows = calendar.availability.free_windows(NOW, at(6), count=10)
    assert windows[node_urn("n1")] == [FreeWindow(at(0), at(1)), FreeWindow(at(2), at(3)), FreeWindow(at(4), at(6))]
    assert windows[node_urn("n2")] == [FreeWindow(at(0), at(6))]
    assert windows[node_urn("n3")] == []
    assert calendar.availability.free_windows(NOW, at(6), count=2, nodes=[node_urn("n1")]) == {
        node_urn("n1"): [FreeWindow(at(0), at(1)), FreeWindow(at(2), at(3))]
    }
    long_enough = calendar.availability.free_windows(NOW, at(6), nodes=[node_urn("n1")], min_length_s=7200)
    assert long_enough[node_urn("n1")] == [FreeWindow(at(4), at(6))]


def test_cancelled_leases_do_not_take_time(calendar: Calendar) -> None:
    lease = book(calendar, "n1", 1, 2)
    calendar.bookings.cancel(lease)
    assert calendar.availability.free_windows(NOW, at(3), nodes=[node_urn("n1")])[node_urn("n1")] == [
        FreeWindow(at(0), at(3))
    ]


def test_federated_only(calendar: Calendar) -> None:
    calendar.inventory.create_pool("private", federated=False)
    calendar.inventory.add_node(NodeSpec(node_urn("p1"), "p1", pool="private"))
    assert node_urn("p1") in calendar.availability.free_windows(NOW, at(2))
    assert node_urn("p1") not in calendar.availability.free_windows(NOW, at(2), federated_only=True)


def test_busy_now(calendar: Calendar) -> None:
    book(calendar, "n1", 0, 1)
    book(calendar, "n2", 1, 2)
    assert calendar.availability.busy_now(NOW) == {node_urn("n1")}
    assert calendar.availability.busy_now(at(1)) == {node_urn("n2")}


def test_earliest_slot_for_named_nodes(calendar: Calendar) -> None:
    book(calendar, "n1", 0, 2)
    book(calendar, "n2", 1, 3)
    book(calendar, "n2", 4, 5)
    slot = calendar.availability.earliest_slot(3600, NOW, nodes=[node_urn("n1"), node_urn("n2")])
    assert (slot.start, slot.end) == (at(3), at(4))
    slot = calendar.availability.earliest_slot(7200, NOW, nodes=[node_urn("n1"), node_urn("n2")])
    assert (slot.start, slot.end) == (at(5), at(7))
    assert slot.nodes == (node_urn("n1"), node_urn("n2"))


def test_earliest_slot_by_hardware_type(calendar: Calendar) -> None:
    calendar.add_nodes("w1", "w2", hardware_type="wifi")
    book(calendar, "w1", 0, 2)
    slot = calendar.availability.earliest_slot(3600, NOW, hardware_type="wifi", count=1)
    assert (slot.start, slot.nodes) == (NOW, (node_urn("w2"),))
    slot = calendar.availability.earliest_slot(3600, NOW + timedelta(minutes=10), hardware_type="wifi", count=2)
    assert (slot.start, slot.nodes) == (at(2), (node_urn("w1"), node_urn("w2")))


def test_earliest_slot_refusals(calendar: Calendar) -> None:
    with pytest.raises(GeniError) as refusal:
        calendar.availability.earliest_slot(3600, NOW, hardware_type="wifi", count=1)
    assert refusal.value.reason == Reason.NOT_FOUND
    with pytest.raises(GeniError) as refusal:  # as a booking of a window on it (geni_code 1, the same words)
        calendar.availability.earliest_slot(3600, NOW, nodes=[node_urn("nope")])
    assert refusal.value.reason == Reason.BAD_ARGS
    assert refusal.value.message == (
        f"nothing was booked: {node_urn('nope')} is not a node of ours (ListResources shows this aggregate's nodes)"
    )
    calendar.inventory.set_state(node_urn("n1"), "maintenance")
    with pytest.raises(GeniError) as refusal:
        calendar.availability.earliest_slot(3600, NOW, nodes=[node_urn("n1")])
    assert refusal.value.reason == Reason.BOOKING_CONFLICT  # as a booking of a window on it (geni_code 7)
