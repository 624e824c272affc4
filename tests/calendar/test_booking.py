"""Booking, renewing, cancelling and expiring, on SQLite and PostgreSQL: all-or-nothing, clear conflicts, policy."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from sfa_omf.calendar.booking import BookingConflict
from sfa_omf.calendar.models import Lease
from sfa_omf.calendar.policy import Policy, PolicyViolation
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.calendar.slices import Slices
from sfa_omf.errors import GeniCode, GeniError, Reason
from tests.calendar.conftest import NOW, SLICE, SLICE_EXPIRES, Calendar, at, node_urn

OTHER = "urn:publicid:IDN+testbed+slice+other"


def ask(name: str, start_h: float, end_h: float) -> BookingRequest:
    return BookingRequest(node_urn(name), at(start_h), at(end_h))


def lease_count(calendar: Calendar) -> int:
    with calendar.database.read() as session:
        return int(session.scalar(select(func.count(Lease.id))) or 0)


def test_book_several_nodes_as_one_lease(calendar: Calendar) -> None:
    result = calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 3), ask("n2", 1, 3)], owner_urn="u:alice")
    assert result.refused == ()
    (lease,) = result.leases
    assert (lease.start, lease.end, lease.state, lease.slice_urn) == (at(1), at(3), "allocated", SLICE)
    assert lease.nodes == (node_urn("n1"), node_urn("n2"))
    for sliver in lease.slivers:
        assert sliver.urn.startswith("urn:publicid:IDN+testbed+sliver+")
        assert (sliver.allocation_state, sliver.operational_state) == ("geni_allocated", "geni_pending_allocation")
        assert sliver.expires == NOW + timedelta(minutes=10)  # the allocation TTL


def test_windows_of_different_times_are_different_leases(calendar: Calendar) -> None:
    result = calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 2), ask("n1", 2, 3)])
    assert [(lease.start, lease.end) for lease in result.leases] == [(at(1), at(2)), (at(2), at(3))]


def test_conflict_reports_every_node_and_books_nothing(calendar: Calendar) -> None:
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [ask("n1", 2, 4), ask("n2", 1, 2)])
    before = lease_count(calendar)
    with pytest.raises(BookingConflict) as refusal:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 3), ask("n2", 1, 3), ask("n3", 1, 3)])
    error = refusal.value
    assert error.code == GeniCode.REFUSED and error.reason == Reason.BOOKING_CONFLICT
    conflicts = {conflict.node: conflict for conflict in error.conflicts}
    assert set(conflicts) == {node_urn("n1"), node_urn("n2")}
    assert conflicts[node_urn("n1")].clashing == ((at(2), at(4)),)
    assert conflicts[node_urn("n1")].next_free_start == at(4)
    assert conflicts[node_urn("n2")].next_free_start == at(2)
    assert "nothing was booked" in error.message and "free for the same duration from" in error.message
    assert lease_count(calendar) == before, "all or nothing: n3 was not booked either"


def test_back_to_back_is_not_a_conflict(calendar: Calendar) -> None:
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [ask("n1", 1, 2)])
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 2, 3)])
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 0.5, 1)])
    assert len(calendar.bookings.leases(node=node_urn("n1"))) == 3


def test_one_request_cannot_overlap_itself(calendar: Calendar) -> None:
    with pytest.raises(BookingConflict):
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 3), ask("n1", 2, 4)])


def test_best_effort_books_what_is_free(calendar: Calendar) -> None:
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [ask("n1", 1, 3)])
    result = calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 3), ask("n2", 1, 3)], best_effort=True)
    assert [lease.nodes for lease in result.leases] == [(node_urn("n2"),)]
    assert [conflict.node for conflict in result.refused] == [node_urn("n1")]
    with pytest.raises(BookingConflict):
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 3)], best_effort=True)


def test_unknown_and_maintenance_nodes(calendar: Calendar) -> None:
    calendar.inventory.set_state(node_urn("n2"), "maintenance")
    with pytest.raises(BookingConflict) as refusal:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("nx", 1, 2), ask("n2", 1, 2)])
    problems = sorted(conflict.problem for conflict in refusal.value.conflicts)
    assert problems == ["is in maintenance", "is not a node of ours"]
    assert refusal.value.reason is Reason.BAD_ARGS, "a request naming a node we do not have cannot succeed later"
    assert "ListResources" in refusal.value.message
    with pytest.raises(BookingConflict) as maintenance:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n2", 1, 2)])
    assert maintenance.value.reason is Reason.BOOKING_CONFLICT


@pytest.mark.parametrize(
    ("request_", "rule"),
    [
        (BookingRequest(node_urn("n1"), at(1.25), at(2)), "grain"),
        (BookingRequest(node_urn("n1"), at(2), at(1)), "window"),
        (BookingRequest(node_urn("n1"), at(-3), at(-1)), "past"),
        (BookingRequest(node_urn("n1"), at(1), at(1 + 8 * 24)), "max_duration"),
        (BookingRequest(node_urn("n1"), at(24 * 100), at(24 * 100 + 1)), "max_advance"),
        (BookingRequest(node_urn("n1"), at(24 * 29), at(24 * 31)), "slice_expiry"),
    ],
)
def test_policy_refusals_name_the_rule(calendar: Calendar, request_: BookingRequest, rule: str) -> None:
    with pytest.raises(PolicyViolation) as refusal:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [request_])
    assert refusal.value.rule == rule
    assert f"policy rule {rule}" in refusal.value.message
    assert refusal.value.code == GeniCode.REFUSED
    assert lease_count(calendar) == 0


def test_min_duration(database: object) -> None:
    calendar = Calendar(database, Policy(min_duration_s=7200))  # type: ignore[arg-type]
    calendar.add_nodes("n1")
    with pytest.raises(PolicyViolation) as refusal:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 2)])
    assert refusal.value.rule == "min_duration"


def test_per_slice_and_per_user_limits(database: object) -> None:
    calendar = Calendar(database, Policy(max_concurrent_leases_per_slice=1, max_hours_per_day_per_user=3))  # type: ignore[arg-type]
    calendar.add_nodes("n1", "n2")
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 2)], owner_urn="u:alice")
    with pytest.raises(PolicyViolation) as refusal:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n2", 1, 2)], owner_urn="u:bob")
    assert refusal.value.rule == "max_concurrent_leases_per_slice"
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 2, 3)], owner_urn="u:alice")  # not concurrent
    with pytest.raises(PolicyViolation) as refusal:
        calendar.bookings.book(OTHER, SLICE_EXPIRES, [ask("n2", 4, 6)], owner_urn="u:alice")  # 2h + 2h > 3h
    assert refusal.value.rule == "max_hours_per_day_per_user"
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [ask("n2", 4, 5)], owner_urn="u:alice")  # exactly 3 h


def test_renew_extends_shortens_and_checks(calendar: Calendar) -> None:
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 2), ask("n2", 1, 2)]).leases
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [ask("n2", 4, 5)])
    renewed = calendar.bookings.renew(lease.id, at(4))
    assert renewed.end == at(4) and all(sliver.end == at(4) for sliver in renewed.slivers)
    with pytest.raises(BookingConflict) as refusal:
        calendar.bookings.renew(lease.id, at(5))
    assert [conflict.node for conflict in refusal.value.conflicts] == [node_urn("n2")]
    assert calendar.bookings.leases(slice_urn=SLICE)[0].end == at(4), "a refused renewal changes nothing"
    assert calendar.bookings.renew(lease.id, at(1.5)).end == at(1.5)
    with pytest.raises(PolicyViolation) as policy:
        calendar.bookings.renew(lease.id, SLICE_EXPIRES + timedelta(hours=1))
    assert policy.value.rule == "slice_expiry"
    with pytest.raises(GeniError) as at_start:
        calendar.bookings.renew(lease.id, at(1))
    assert at_start.value.reason is Reason.BAD_ARGS
    assert "is not after lease" in at_start.value.message, "an end at the start is not 'before' it"


def test_cancel_frees_the_nodes(calendar: Calendar) -> None:
    (lease,) = calendar.bookings.book(OTHER, SLICE_EXPIRES, [ask("n1", 1, 3)]).leases
    cancelled = calendar.bookings.cancel(lease.id)
    assert cancelled.state == "cancelled"
    assert all(sliver.allocation_state == "geni_unallocated" for sliver in cancelled.slivers)
    assert calendar.bookings.cancel(lease.id).state == "cancelled"
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 3)])
    with pytest.raises(GeniError) as missing:
        calendar.bookings.cancel("no-such-lease")
    assert missing.value.reason == Reason.NOT_FOUND


def test_unprovisioned_allocations_expire(calendar: Calendar) -> None:
    (kept,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 2, 3)]).leases
    (dropped,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n2", 2, 3)]).leases
    calendar.bookings.mark_provisioned(kept.id)
    calendar.now = NOW + timedelta(minutes=9)
    assert calendar.bookings.expire_unprovisioned() == []
    calendar.now = NOW + timedelta(minutes=10)
    expired = calendar.bookings.expire_unprovisioned()
    assert [lease.id for lease in expired] == [dropped.id]
    assert [lease.id for lease in calendar.bookings.leases()] == [kept.id]
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [ask("n2", 2, 3)])


def test_provisioned_leases_retire_when_their_slot_ends(calendar: Calendar) -> None:
    (short,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 2)]).leases
    (long,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n2", 1, 3)]).leases
    (unprovisioned,) = calendar.bookings.book(OTHER, SLICE_EXPIRES, [ask("n3", 1, 2)]).leases
    calendar.bookings.mark_provisioned(short.id)
    calendar.bookings.mark_provisioned(long.id)
    calendar.now = at(2) - timedelta(seconds=1)
    assert calendar.bookings.retire_ended() == []
    calendar.now = at(2)
    (ended,) = calendar.bookings.retire_ended()
    assert (ended.id, ended.state) == (short.id, "ended")
    assert all(sliver.allocation_state == "geni_unallocated" for sliver in ended.slivers)
    assert calendar.bookings.retire_ended() == [], "once"
    assert {lease.id for lease in calendar.bookings.leases(active_only=True)} == {long.id, unprovisioned.id}


def test_lease_listing_filters(calendar: Calendar) -> None:
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 2)])
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [ask("n2", 3, 4)])
    assert len(calendar.bookings.leases()) == 2
    assert [lease.slice_urn for lease in calendar.bookings.leases(slice_urn=OTHER)] == [OTHER]
    assert [lease.nodes for lease in calendar.bookings.leases(node=node_urn("n1"))] == [(node_urn("n1"),)]
    assert len(calendar.bookings.leases(start=at(2), end=at(3))) == 0
    assert len(calendar.bookings.leases(start=at(1.5), end=at(3.5))) == 2


def test_a_booking_from_now_may_start_inside_a_slot_and_an_explicit_one_may_not(calendar: Calendar) -> None:
    calendar.now = now = NOW + timedelta(minutes=13, seconds=7)
    from_now = BookingRequest(node_urn("n1"), now, at(1.5), from_now=True)
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [from_now]).leases
    assert (lease.start, lease.end) == (now, at(1.5))
    with pytest.raises(PolicyViolation) as refusal:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), now, at(1.5))])
    assert refusal.value.rule == "grain" and "30 minutes" in refusal.value.message
    with pytest.raises(PolicyViolation) as ahead:  # "from now" is no licence for a later start off the grain
        later = now + timedelta(hours=2)
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), later, at(4), from_now=True)])
    assert ahead.value.rule == "grain"


def test_renew_rounds_up_inside_a_slot_and_follows_the_calls_slice_credential(calendar: Calendar) -> None:
    calendar.now = now = NOW + timedelta(minutes=13)
    (lease,) = calendar.bookings.book(
        SLICE, NOW + timedelta(days=1), [BookingRequest(node_urn("n1"), now, at(1.5), from_now=True)]
    ).leases
    renewed = calendar.bookings.renew(lease.id, now + timedelta(minutes=5), "up")
    assert renewed.end == at(0.5), "rounded up to the end of the first (partial) slot, never empty"
    with pytest.raises(PolicyViolation) as refusal:
        calendar.bookings.renew(lease.id, NOW + timedelta(days=2), "up")
    assert refusal.value.rule == "slice_expiry" and "renew the slice at its authority" in refusal.value.message
    renewed = calendar.bookings.renew(lease.id, NOW + timedelta(days=2), "up", slice_expires=NOW + timedelta(days=9))
    assert renewed.end == NOW + timedelta(days=2)
    stored = Slices(calendar.database).get(SLICE).expires
    assert stored == NOW + timedelta(days=9), "the stored expiry follows the call's credential"
    with pytest.raises(GeniError) as past:
        calendar.bookings.renew(lease.id, now - timedelta(minutes=1), "up")
    assert past.value.reason == Reason.BAD_ARGS and "in the past" in past.value.message


def test_narrow_reads_give_the_records_the_wide_read_gives(calendar: Calendar) -> None:
    """A slice's or a node's leases look each sliver's node up by key, the whole calendar joins the node table
    (issue 15): the same records either way, nodes named, in the same order."""
    calendar.add_nodes("n4")
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n1", 1, 2), ask("n2", 1, 2), ask("n3", 1, 2)])
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [ask("n1", 3, 4)])
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [ask("n4", 5, 6), ask("n1", 5, 6)])
    everything = calendar.bookings.leases()
    assert len(everything) == 3 and {node for lease in everything for node in lease.nodes} == {
        node_urn(name) for name in ("n1", "n2", "n3", "n4")
    }
    for slice_urn in (SLICE, OTHER):
        wanted = [lease for lease in everything if lease.slice_urn == slice_urn]
        assert calendar.bookings.leases(slice_urn=slice_urn) == wanted
    for name in ("n1", "n2", "n4"):
        wanted = [lease for lease in everything if node_urn(name) in lease.nodes]
        assert calendar.bookings.leases(node=node_urn(name)) == wanted
    assert calendar.bookings.leases(slice_urn=SLICE, node=node_urn("n4")) == [everything[2]]
