"""The per-slice and per-user limits (max_concurrent_leases_per_slice, max_hours_per_day_per_user) hold for
renewals as for bookings, and for every lease one booking creates; a window that starts in the past is booked as
asked, its past part counted — on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.policy import Policy, PolicyViolation
from sfa_omf.calendar.queries import advisory_key
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.errors import GeniError
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, fresh_database, node_urn
from tests.conftest import DemoPki

ALICE = "urn:publicid:IDN+testbed+user+alice"


def limited(database: Database, **limits: float) -> Calendar:
    calendar = Calendar(database, Policy(**limits))  # type: ignore[arg-type]
    calendar.add_nodes("n1", "n2", "n3")
    return calendar


def book(calendar: Calendar, *requests: BookingRequest) -> list[LeaseRecord]:
    return list(calendar.bookings.book(SLICE, SLICE_EXPIRES, requests, owner_urn=ALICE).leases)


def ask(node: str, start: float, end: float, label: str = "") -> BookingRequest:
    return BookingRequest(node_urn(node), at(start), at(end), lease_label=label)


def stored_ends(calendar: Calendar) -> dict[str, object]:
    return {lease.id: lease.end for lease in calendar.bookings.leases(slice_urn=SLICE)}


# -- renewals --------------------------------------------------------------------------------------------------------
def test_a_renewal_past_the_daily_node_hours_is_refused_and_one_within_them_counts_the_lease_once(
    database: Database,
) -> None:
    calendar = limited(database, max_hours_per_day_per_user=2)
    (lease,) = book(calendar, ask("n1", 2, 3))
    with pytest.raises(PolicyViolation) as refusal:
        calendar.bookings.renew(lease.id, at(10), "up")  # 8 node-hours, 2 allowed
    assert refusal.value.rule == "max_hours_per_day_per_user"
    assert refusal.value.message.startswith(f"lease {lease.id} cannot be extended to {format_time(at(10))}: ")
    assert f"{ALICE} would book 8 node-hours on " in refusal.value.message
    assert stored_ends(calendar) == {lease.id: at(3)}  # nothing written
    # 1 hour booked + 1 hour more is exactly the limit: the lease's own hour is not counted twice.
    assert calendar.bookings.renew(lease.id, at(4)).end == at(4)


def test_a_renewal_counts_the_extension_of_each_node_the_lease_holds(database: Database) -> None:
    calendar = limited(database, max_hours_per_day_per_user=3)
    (lease,) = book(calendar, ask("n1", 2, 3), ask("n2", 2, 3))  # one lease, 2 node-hours
    with pytest.raises(PolicyViolation) as refusal:
        calendar.bookings.renew(lease.id, at(4))  # 2 nodes x 2 hours
    assert refusal.value.rule == "max_hours_per_day_per_user"
    assert "would book 4 node-hours" in refusal.value.message


def test_a_renewal_that_makes_the_slice_hold_too_many_leases_at_once_is_refused(database: Database) -> None:
    calendar = limited(database, max_concurrent_leases_per_slice=1)
    (first,) = book(calendar, ask("n1", 2, 3))
    (second,) = book(calendar, ask("n2", 3, 4))  # back to back: one lease at a time
    with pytest.raises(PolicyViolation) as refusal:
        calendar.bookings.renew(first.id, at(4))  # both during [3, 4)
    assert refusal.value.rule == "max_concurrent_leases_per_slice"
    assert f"slice {SLICE} would hold 2 leases at once, more than 1" in refusal.value.message
    assert stored_ends(calendar) == {first.id: at(3), second.id: at(4)}
    # The renewed lease is not counted against itself, and shortening is never refused by a limit.
    assert calendar.bookings.renew(second.id, at(6)).end == at(6)
    assert calendar.bookings.renew(second.id, at(5)).end == at(5)


def test_several_renewals_in_one_call_are_checked_with_each_other(database: Database) -> None:
    calendar = limited(database, max_hours_per_day_per_user=3)
    (first,) = book(calendar, ask("n1", 2, 3))
    (second,) = book(calendar, ask("n2", 4, 5))
    # Each alone makes 3 node-hours, the limit; together 4.
    with pytest.raises(PolicyViolation) as refusal:
        calendar.bookings.renew_all([(first.id, at(4), ""), (second.id, at(6), "")])
    assert refusal.value.rule == "max_hours_per_day_per_user"
    assert refusal.value.message.startswith(f"lease {second.id} cannot be extended")
    assert stored_ends(calendar) == {first.id: at(3), second.id: at(5)}  # all or nothing


def test_a_renewal_waits_for_a_booking_of_its_slice_under_way(tmp_path: Path) -> None:
    """PostgreSQL: a renewal under limits takes the slice's lock a booking holds while it checks and writes, so the
    two are checked one after the other (SQLite's BEGIN IMMEDIATE serializes them already)."""
    database = fresh_database("postgresql", tmp_path)
    try:
        calendar = limited(database, max_concurrent_leases_per_slice=1)
        (lease,) = book(calendar, ask("n1", 2, 3))
        renewed: list[LeaseRecord] = []
        with database.engine.connect() as booking_under_way:
            booking_under_way.execute(select(text("pg_advisory_xact_lock(:key)")), {"key": advisory_key(SLICE)})
            renewal = threading.Thread(target=lambda: renewed.append(calendar.bookings.renew(lease.id, at(4))))
            renewal.start()
            waiting = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            for _ in range(3000):  # the renewal queues on the lock (a bound, so that a renewal that does not fails)
                if booking_under_way.execute(text(waiting)).scalar_one():
                    break
                threading.Event().wait(0.01)
            else:
                pytest.fail("the renewal did not wait for the slice's lock")
            assert not renewed
            booking_under_way.rollback()  # the booking is over: its lock is released
        renewal.join()
        assert [record.end for record in renewed] == [at(4)]
    finally:
        database.dispose()


# -- one booking, several leases -------------------------------------------------------------------------------------
def test_every_lease_one_booking_creates_counts_towards_the_slice_s_limit(database: Database) -> None:
    calendar = limited(database, max_concurrent_leases_per_slice=2)
    with pytest.raises(PolicyViolation) as refusal:  # overlapping windows, one lease each
        book(calendar, ask("n1", 2, 4), ask("n2", 3, 5), ask("n3", 3, 4))
    assert refusal.value.rule == "max_concurrent_leases_per_slice"
    assert "would hold 3 leases at once, more than 2" in refusal.value.message
    with pytest.raises(PolicyViolation) as refusal:  # one window, three lease labels: three leases
        book(calendar, ask("n1", 2, 4, "a"), ask("n2", 2, 4, "b"), ask("n3", 2, 4, "c"))
    assert "would hold 3 leases at once, more than 2" in refusal.value.message
    assert calendar.bookings.leases(slice_urn=SLICE) == []
    # One window and one label is one lease, whatever the nodes; back-to-back leases are never at once.
    assert len(book(calendar, ask("n1", 2, 4, "a"), ask("n2", 2, 4, "a"), ask("n3", 2, 4, "a"))) == 1
    assert len(book(calendar, ask("n1", 4, 5), ask("n2", 4, 5, "b"), ask("n3", 5, 6))) == 3


# -- a start in the past ---------------------------------------------------------------------------------------------
def test_a_window_that_starts_in_the_past_is_booked_as_asked_and_its_past_part_counted(database: Database) -> None:
    """The asked start is kept: a request sent again (a CreateSliver retried, a manifest sent back) names the lease
    as it was booked, and the window's length is the one the policy checked."""
    calendar = limited(database, max_hours_per_day_per_user=2, min_duration_s=3600)
    calendar.now = at(0.25)  # inside the slot [0, 0.5)
    (lease,) = book(calendar, ask("n1", -0.5, 0.5))  # one hour: the minimum, though half of it is over
    assert (lease.start, lease.end) == (at(-0.5), at(0.5))
    assert [(sliver.start, sliver.end) for sliver in lease.slivers] == [(at(-0.5), at(0.5))]
    book(calendar, ask("n2", 0.5, 1.5))  # 2 node-hours in all, the past half hour included: the limit
    with pytest.raises(PolicyViolation) as refusal:
        book(calendar, ask("n3", 1.5, 2.5))
    assert refusal.value.rule == "max_hours_per_day_per_user"
    assert "would book 3 node-hours" in refusal.value.message


# -- through the aggregate's Renew -----------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def limited_aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    database = fresh_database(request.param, tmp_path)
    made = Aggregate(
        AggregateSettings(authority_hrn="testbed"),
        database,
        CredentialVerifier(pki.roots, VerdictCache()),
        policy=Policy(max_hours_per_day_per_user=2),
    )
    made.inventory.add_node(NodeSpec(node_urn("n1"), "n1"))
    try:
        yield made
    finally:
        database.dispose()


def test_renew_past_the_daily_node_hours_is_refused(limited_aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    verified = limited_aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn)
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    (lease,) = limited_aggregate.bookings.book(
        pki.slice_urn,
        verified.expires,
        [BookingRequest(node_urn("n1"), start, start + timedelta(hours=1))],
        owner_urn=verified.owner_urn,
    ).leases
    sliver = lease.slivers[0].urn
    with pytest.raises(GeniError) as refusal:  # 8 node-hours over at most two days: 4 or more on one
        limited_aggregate.renew(alice.chain, [sliver], [alice.slice_cred], format_time(start + timedelta(hours=8)), {})
    assert isinstance(refusal.value, PolicyViolation) and refusal.value.rule == "max_hours_per_day_per_user"
    assert [stored.end for stored in limited_aggregate.bookings.leases(slice_urn=pki.slice_urn)] == [lease.end]
    limited_aggregate.renew(alice.chain, [sliver], [alice.slice_cred], format_time(start + timedelta(hours=2)), {})
    assert [stored.end for stored in limited_aggregate.bookings.leases(slice_urn=pki.slice_urn)] == [
        start + timedelta(hours=2)
    ]
