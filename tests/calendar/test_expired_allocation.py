"""An allocation whose time to be provisioned has passed is expired, whether or not the sweep (every minute) has run:
Provision and Renew refuse it with SEARCHFAILED and write nothing, on every path (the ORM Provision, the one-lease
PostgreSQL renewal statement with its own read or the call's, the unit of work) — on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.models import Lease, Slice, SliceUser, Sliver
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, LeaseRecord
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import format_time
from tests.calendar.conftest import NOW, SLICE, SLICE_EXPIRES, Calendar, at, node_urn

TTL = timedelta(seconds=Policy().allocation_ttl_s)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBZQbv4zJNwBFAFSBAJ9dN1oS7IfLsNKSOlUzHZDZ1MU alice@laptop"


def _stored(calendar: Calendar) -> list[tuple[object, ...]]:
    """Every lease, sliver, slice and slice user row and the generation: what a refused call leaves as it was."""
    with calendar.database.read() as session:
        rows = [
            *session.execute(select(Lease.id, Lease.state, Lease.end_s).order_by(Lease.id)),
            *session.execute(
                select(Sliver.urn, Sliver.end_s, Sliver.expires_s, Sliver.allocation_state, Sliver.holds_node).order_by(
                    Sliver.urn
                )
            ),
            *session.execute(select(Slice.urn, Slice.expires_s).order_by(Slice.urn)),
            *session.execute(select(SliceUser.user_urn).order_by(SliceUser.user_urn)),
        ]
        return [tuple(row) for row in rows] + [(read_generation(session),)]


def _allocate(calendar: Calendar, *nodes: str) -> list[LeaseRecord]:
    """One allocated lease per node, two to three hours from now: each expires unless provisioned within the TTL."""
    return [
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn(node), at(2), at(3))]).leases[0]
        for node in nodes
    ]


def _assert_refused_as_expired(refused: pytest.ExceptionInfo[GeniError], lease: LeaseRecord) -> None:
    assert refused.value.reason == Reason.NOT_FOUND  # SEARCHFAILED, as once the sweep has expired it
    assert lease.id in refused.value.message
    assert f"expired at {format_time(NOW + TTL)}" in refused.value.message
    assert "Allocate again" in refused.value.message


def test_an_allocation_is_provisioned_until_its_expiry(calendar: Calendar) -> None:
    (lease,) = _allocate(calendar, "n1")
    calendar.now = NOW + TTL - timedelta(seconds=1)
    assert calendar.bookings.mark_provisioned(lease.id).state == "provisioned"


@pytest.mark.parametrize("with_users", [False, True], ids=["alone", "with-users"])
def test_provision_refuses_an_expired_allocation(calendar: Calendar, with_users: bool) -> None:
    (lease,) = _allocate(calendar, "n1")
    calendar.now = NOW + TTL  # the sweep has not run
    before = _stored(calendar)
    with pytest.raises(GeniError) as refused:
        if with_users:
            users = {"urn:publicid:IDN+testbed+user+alice": [KEY]}
            calendar.bookings.mark_provisioned_all([lease.id], SLICE, users)
        else:
            calendar.bookings.mark_provisioned(lease.id)
    _assert_refused_as_expired(refused, lease)
    assert _stored(calendar) == before  # nothing written, not even the users sent with the call
    assert [expired.id for expired in calendar.bookings.expire_unprovisioned()] == [lease.id]


RENEWALS: dict[str, Callable[[Calendar, list[LeaseRecord]], object]] = {
    # one lease; on PostgreSQL one statement of its own after its own read (_renew_alone)
    "one-lease": lambda calendar, leases: calendar.bookings.renew(leases[0].id, at(4)),
    # one lease; on PostgreSQL one statement after the call's read (leases_for_renewal, as Renew does)
    "one-lease-as-read": lambda calendar, leases: calendar.bookings.renew_all(
        [(leases[0].id, at(4), "")],
        read=calendar.bookings.leases_for_renewal(sliver.urn for sliver in leases[0].slivers),
    ),
    # several leases: the unit of work, which locks each lease (_renew_in)
    "two-leases": lambda calendar, leases: calendar.bookings.renew_all([(lease.id, at(4), "") for lease in leases]),
}


@pytest.mark.parametrize("path", list(RENEWALS))
def test_renew_refuses_an_expired_allocation_and_does_not_revive_it(calendar: Calendar, path: str) -> None:
    leases = _allocate(calendar, "n1", "n2")
    calendar.now = NOW + TTL + timedelta(seconds=30)  # the sweep has not run
    before = _stored(calendar)
    with pytest.raises(GeniError) as refused:
        RENEWALS[path](calendar, leases)
    _assert_refused_as_expired(refused, leases[0])
    assert _stored(calendar) == before
    # Still expired: the sweep takes it back as it would have without the call.
    assert {expired.id for expired in calendar.bookings.expire_unprovisioned()} == {lease.id for lease in leases}


def test_an_allocation_renewed_before_its_expiry_lives_on(calendar: Calendar) -> None:
    (lease,) = _allocate(calendar, "n1")
    calendar.now = NOW + TTL - timedelta(seconds=1)
    renewed = calendar.bookings.renew(lease.id, at(4))
    assert {sliver.expires for sliver in renewed.slivers} == {calendar.now + TTL}
    calendar.now = NOW + TTL + timedelta(seconds=30)
    assert calendar.bookings.mark_provisioned(lease.id).state == "provisioned"
