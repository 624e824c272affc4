"""A call naming the whole slice leaves out allocations whose time to be provisioned is over and that the sweep has
not released yet: a Renew or Provision of the slice acts on the rest (the calendar refuses a lapsed allocation, and
one refusal would refuse the whole call); named by its sliver URN, a lapsed allocation is refused with SEARCHFAILED
and the reason (tests/calendar/test_expired_allocation.py has the calendar's side)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.errors import GeniError, Reason
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import utcnow
from tests.am.conftest import aggregate_on
from tests.am.test_unit_of_work import FaultInjectingTestbed
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, *(NodeSpec(node_urn(n), n) for n in ("n1", "n2", "n3"))) as made:
        yield made


def book(aggregate: Aggregate, pki: DemoPki, node: str, start: datetime) -> LeaseRecord:
    alice = pki.users["alice"]
    expires = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn).expires
    (lease,) = aggregate.bookings.book(
        pki.slice_urn, expires, [BookingRequest(node_urn(node), start, start + timedelta(hours=1))]
    ).leases
    return lease


def stored(aggregate: Aggregate, lease_id: str) -> LeaseRecord:
    (lease,) = [found for found in aggregate.bookings.leases() if found.id == lease_id]
    return lease


def later(aggregate: Aggregate, by: timedelta) -> None:
    """The aggregate's clock (and its calendar's) moved ``by`` ahead; no sweep runs."""
    moved = utcnow() + by
    aggregate.clock = lambda: moved
    aggregate.bookings.clock = lambda: moved


def test_renew_and_provision_of_the_slice_leave_a_lapsed_allocation_out(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=3)
    running = book(aggregate, pki, "n1", start)
    aggregate.provision(alice.chain, [running.slivers[0].urn], [alice.slice_cred], {})
    lapsed = book(aggregate, pki, "n2", start)
    later(aggregate, timedelta(seconds=aggregate.policy.allocation_ttl_s + 60))
    fresh = book(aggregate, pki, "n3", start)  # allocated after the clock moved: still in its time

    renewed = aggregate.renew(alice.chain, [pki.slice_urn], [alice.slice_cred], start + timedelta(hours=2), {})
    assert {answer["geni_sliver_urn"] for answer in renewed} == {running.slivers[0].urn, fresh.slivers[0].urn}
    assert stored(aggregate, running.id).end == start + timedelta(hours=2)
    assert stored(aggregate, lapsed.id).end == lapsed.end and stored(aggregate, lapsed.id).state == "allocated"

    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert stored(aggregate, fresh.id).state == "provisioned"
    assert stored(aggregate, lapsed.id).state == "allocated", "left for the sweep, never provisioned"
    assert [expired.id for expired in aggregate.bookings.expire_unprovisioned()] == [lapsed.id]


def test_a_lapsed_allocation_named_by_its_sliver_is_refused(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=3)
    lapsed = book(aggregate, pki, "n2", start)
    later(aggregate, timedelta(seconds=aggregate.policy.allocation_ttl_s + 60))
    for call in (
        lambda: aggregate.provision(alice.chain, [lapsed.slivers[0].urn], [alice.slice_cred], {}),
        lambda: aggregate.renew(alice.chain, [lapsed.slivers[0].urn], [alice.slice_cred], "+2h", {}),
        lambda: aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {}),  # all the slice holds
    ):
        with pytest.raises(GeniError) as refused:
            call()
        assert refused.value.reason == Reason.NOT_FOUND and "not provisioned in time" in refused.value.message
    assert stored(aggregate, lapsed.id).state == "allocated" and stored(aggregate, lapsed.id).end == lapsed.end


class SlowTestbed(FaultInjectingTestbed):
    """A stand-in testbed whose provisioning takes longer than the allocation had left: it moves the aggregate's
    clock past the allocation's expiry while it works (a real testbed's time cannot be made to pass on demand)."""

    def __init__(self, aggregate: Aggregate, takes: timedelta) -> None:
        super().__init__()
        self.aggregate = aggregate
        self.takes = takes

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        super().provision(lease, owner, accounts)
        later(self.aggregate, self.takes)


def test_a_provision_asked_in_time_is_not_refused_for_the_time_the_testbed_took(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    alice = pki.users["alice"]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=3)
    lease = book(aggregate, pki, "n1", start)
    aggregate.backend = SlowTestbed(aggregate, timedelta(seconds=aggregate.policy.allocation_ttl_s + 60))
    aggregate.provision(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})
    assert stored(aggregate, lease.id).state == "provisioned"
