"""A Provision asked while its allocation is in its time provisions it, however long the testbed takes: the sweep of
unprovisioned allocations (``expire_unprovisioned``, every minute) runs meanwhile and leaves it, because the
Provision held it in the database before the testbed's work (``Bookings.hold_for_provision``). The hold is bounded
(``PROVISION_HOLD_S``): an allocation whose Provision died midway is swept after it. One the sweep did expire is
refused with SEARCHFAILED ("Allocate again"), as a lapsed allocation is."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.booking import PROVISION_HOLD_S
from sfa_omf.calendar.records import LeaseRecord, NodeSpec
from sfa_omf.errors import GeniError, Reason
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import utcnow
from tests.am.conftest import aggregate_on
from tests.am.test_lapsed_allocations import book, stored
from tests.am.test_unit_of_work import FaultInjectingTestbed
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, NodeSpec(node_urn("n1"), "n1")) as made:
        yield made


def set_clock(aggregate: Aggregate, now: datetime) -> None:
    """The aggregate's clock and its calendar's read ``now``."""
    aggregate.clock = lambda: now
    aggregate.bookings.clock = lambda: now


class SlowTestbedWithSweepStandIn(FaultInjectingTestbed):
    """Stands in for a testbed whose work for a Provision outlasts what was left of the allocation's time, with the
    server's minute sweep running meanwhile (from another thread or process): that moment cannot be caught on
    demand with a real testbed. Its ``provision`` moves the clock past the allocation's expiry and runs the sweep."""

    def __init__(self, aggregate: Aggregate) -> None:
        super().__init__()
        self.aggregate = aggregate
        self.swept: list[str] = []

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        super().provision(lease, owner, accounts)
        set_clock(self.aggregate, utcnow() + timedelta(seconds=self.aggregate.policy.allocation_ttl_s + 60))
        self.swept = [expired.id for expired in self.aggregate.bookings.expire_unprovisioned()]


def test_a_provision_asked_in_time_is_not_undone_by_the_sweep(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    lease = book(aggregate, pki, "n1", utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=3))
    testbed = SlowTestbedWithSweepStandIn(aggregate)
    aggregate.backend = testbed

    aggregate.provision(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})

    assert testbed.swept == [], "the sweep left the allocation its Provision held"
    assert stored(aggregate, lease.id).state == "provisioned"
    assert testbed.provisioned == {lease.id}, "the testbed's work stays"


def test_an_allocation_whose_provision_died_is_swept_after_the_hold(aggregate: Aggregate, pki: DemoPki) -> None:
    asked_at = utcnow()
    lease = book(aggregate, pki, "n1", asked_at.replace(minute=0, second=0, microsecond=0) + timedelta(hours=3))
    aggregate.bookings.hold_for_provision([lease.id], asked_at)  # ...and the process providing it dies here

    set_clock(aggregate, asked_at + timedelta(seconds=aggregate.policy.allocation_ttl_s + 60))
    assert aggregate.bookings.expire_unprovisioned() == []
    set_clock(aggregate, asked_at + timedelta(seconds=PROVISION_HOLD_S))
    assert [expired.id for expired in aggregate.bookings.expire_unprovisioned()] == [lease.id]


def test_a_failed_provision_gives_the_allocation_its_own_expiry_back(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    lease = book(aggregate, pki, "n1", utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=3))
    testbed = FaultInjectingTestbed()
    testbed.fail_on["provision"] = 1
    aggregate.backend = testbed

    with pytest.raises(GeniError):
        aggregate.provision(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})

    assert stored(aggregate, lease.id).slivers[0].expires == lease.slivers[0].expires
    set_clock(aggregate, lease.slivers[0].expires)
    assert [expired.id for expired in aggregate.bookings.expire_unprovisioned()] == [lease.id]


def test_an_allocation_the_sweep_expired_is_refused_with_searchfailed(aggregate: Aggregate, pki: DemoPki) -> None:
    asked_at = utcnow()
    lease = book(aggregate, pki, "n1", asked_at.replace(minute=0, second=0, microsecond=0) + timedelta(hours=3))
    set_clock(aggregate, asked_at + timedelta(seconds=aggregate.policy.allocation_ttl_s + 60))
    assert [expired.id for expired in aggregate.bookings.expire_unprovisioned()] == [lease.id]

    for call in (
        lambda: aggregate.bookings.mark_provisioned_all([lease.id], pki.slice_urn),
        lambda: aggregate.bookings.hold_for_provision([lease.id], asked_at),  # read allocated, swept before the hold
    ):
        with pytest.raises(GeniError) as refused:
            call()
        assert refused.value.reason == Reason.NOT_FOUND  # geni_code 12 SEARCHFAILED
        assert "not provisioned in time" in refused.value.message and "Allocate again" in refused.value.message
