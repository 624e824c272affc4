"""Renew with geni_extend_alap extends as far as it can and never shortens: a lease whose reachable end (the end asked
for, the slice credential's expiry, the operator's maximum duration, on a slot boundary) is not later than its
current end keeps it, in the calendar and on the testbed, and its sfa_omf_renewal note says why."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import format_time, utcnow
from tests.am.conftest import aggregate_on
from tests.am.test_unit_of_work import FaultInjectingTestbed
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki


class RenewRecordingTestbed(FaultInjectingTestbed):
    """The stand-in testbed of test_unit_of_work, also noting every end the aggregate asks it to move a lease to."""

    def __init__(self) -> None:
        super().__init__()
        self.renewed: list[tuple[str, datetime]] = []

    def renew(self, lease: LeaseRecord, new_end: datetime) -> None:
        super().renew(lease, new_end)
        self.renewed.append((lease.id, new_end))


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, *(NodeSpec(node_urn(n), n) for n in ("n1", "n2"))) as made:
        made.backend = RenewRecordingTestbed()
        yield made


def short_credential(pki: DemoPki, lifetime: timedelta) -> str:
    """alice's slice credential for testbed.demo, expiring ``lifetime`` from now (as a clearinghouse issues it)."""
    return pki.authority.credential(pki.users["alice"].chain, pki.authority.issued_chain("testbed.demo"), lifetime)


def book(aggregate: Aggregate, pki: DemoPki, node: str, start: datetime, hours: int) -> LeaseRecord:
    alice = pki.users["alice"]
    expires = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn).expires
    (lease,) = aggregate.bookings.book(
        pki.slice_urn, expires, [BookingRequest(node_urn(node), start, start + timedelta(hours=hours))]
    ).leases
    return lease


def stored_end(aggregate: Aggregate, lease_id: str) -> datetime:
    (lease,) = [found for found in aggregate.bookings.leases() if found.id == lease_id]
    return lease.end


@pytest.mark.parametrize("provisioned", [False, True], ids=["allocated", "provisioned"])
def test_alap_never_ends_a_lease_earlier_than_it_ends_now(
    aggregate: Aggregate, pki: DemoPki, provisioned: bool
) -> None:
    """The defect's case: a three-hour lease renewed alap to a month ahead with a credential expiring before the
    lease ends (it used to end at the credential's last slot boundary, earlier than before)."""
    alice = pki.users["alice"]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    lease = book(aggregate, pki, "n1", start, hours=3)
    if provisioned:
        aggregate.provision(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})
    credential = short_credential(pki, timedelta(hours=2, minutes=30))  # expires before the lease's end

    (answer,) = aggregate.renew(alice.chain, [lease.slivers[0].urn], [credential], "+30d", {"geni_extend_alap": True})

    assert stored_end(aggregate, lease.id) == lease.end, "the lease keeps its end"
    assert answer["geni_end_time"] == format_time(lease.end)
    note = answer["sfa_omf_renewal"]
    assert note.startswith(f"unchanged: lease {lease.id} keeps its end {format_time(lease.end)}"), note
    assert "the slice credential expires at" in note
    testbed = aggregate.backend
    assert isinstance(testbed, RenewRecordingTestbed) and testbed.renewed == [], "the testbed is not cut short"


def test_alap_still_extends_what_it_can_and_keeps_the_rest(aggregate: Aggregate, pki: DemoPki) -> None:
    """One Renew of the slice: the lease that ends before the credential's expiry goes to its last slot boundary,
    the lease that ends after it keeps its end; both provisioned, so the testbed follows the first only."""
    alice = pki.users["alice"]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    early = book(aggregate, pki, "n1", start, hours=1)  # ends before the credential expires
    late = book(aggregate, pki, "n2", start, hours=3)  # ends after it
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    credential = short_credential(pki, timedelta(hours=2, minutes=30))
    expires = aggregate.authorize("Renew", alice.chain, [credential], pki.slice_urn).expires
    grain = aggregate.policy.default_grain_s
    reachable = datetime.fromtimestamp(int(expires.timestamp()) // grain * grain, tz=expires.tzinfo)
    assert early.end < reachable < late.end

    answers = aggregate.renew(alice.chain, [pki.slice_urn], [credential], "+30d", {"geni_extend_alap": True})

    assert stored_end(aggregate, early.id) == reachable
    assert stored_end(aggregate, late.id) == late.end
    notes = {answer["geni_end_time"]: answer["sfa_omf_renewal"] for answer in answers}
    assert notes[format_time(reachable)].startswith(f"lease {early.id} extended")
    assert notes[format_time(late.end)].startswith(f"unchanged: lease {late.id}")
    testbed = aggregate.backend
    assert isinstance(testbed, RenewRecordingTestbed) and testbed.renewed == [(early.id, reachable)]


def test_alap_with_an_earlier_end_keeps_the_lease_as_it_is(aggregate: Aggregate, pki: DemoPki) -> None:
    """geni_extend_alap never shortens (docs/api-contract.md): an end before the lease's leaves it as it is, and its
    note says so (it used to be granted as a plain Renew grants it: shortened); a plain Renew still shortens."""
    alice = pki.users["alice"]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    lease = book(aggregate, pki, "n1", start, hours=3)
    earlier = start + timedelta(hours=2)

    (answer,) = aggregate.renew(
        alice.chain, [lease.slivers[0].urn], [alice.slice_cred], format_time(earlier), {"geni_extend_alap": True}
    )

    assert stored_end(aggregate, lease.id) == lease.end
    note = answer["sfa_omf_renewal"]
    assert note.startswith(f"unchanged: lease {lease.id} keeps its end {format_time(lease.end)}"), note
    assert "geni_extend_alap never shortens a lease" in note, note
    (plain,) = aggregate.renew(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], format_time(earlier), {})
    assert stored_end(aggregate, lease.id) == earlier
    assert plain["sfa_omf_renewal"].startswith(f"lease {lease.id} shortened"), plain["sfa_omf_renewal"]


def test_alap_does_not_keep_a_lapsed_allocation_quietly(aggregate: Aggregate, pki: DemoPki) -> None:
    """An allocation whose time to be provisioned is over is refused as without alap (not answered "unchanged")."""
    alice = pki.users["alice"]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    lease = book(aggregate, pki, "n1", start, hours=3)
    moved = utcnow() + timedelta(seconds=aggregate.policy.allocation_ttl_s + 60)
    aggregate.clock = aggregate.bookings.clock = lambda: moved
    credential = short_credential(pki, timedelta(hours=2, minutes=30))  # alap could not extend it anyway

    with pytest.raises(GeniError) as refused:
        aggregate.renew(alice.chain, [lease.slivers[0].urn], [credential], "+30d", {"geni_extend_alap": True})

    assert refused.value.reason == Reason.NOT_FOUND and "not provisioned in time" in refused.value.message
    assert stored_end(aggregate, lease.id) == lease.end
