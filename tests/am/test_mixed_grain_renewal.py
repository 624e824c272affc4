"""Renew of a lease whose nodes have different grains rounds to a boundary of every node's slots: the least common
multiple of the grains (45 and 30 minutes: 90 minutes), as booking does, not the largest grain (whose boundaries are
not all boundaries of the other node's slots, so the calendar refused the rounded end)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.intervals import align_up
from sfa_omf.calendar.policy import PolicyViolation
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.times import format_time, utcnow
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki

GRAIN_45_MIN = 45 * 60
GRAIN_30_MIN = 30 * 60
COMMON_SLOT = 90 * 60  # lcm(45 min, 30 min): the boundaries both nodes' slots share


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    nodes = (
        NodeSpec(node_urn("g45"), "g45", grain_s=GRAIN_45_MIN),
        NodeSpec(node_urn("g30"), "g30", grain_s=GRAIN_30_MIN),
    )
    with aggregate_on(request.param, tmp_path, pki, *nodes) as made:
        yield made


def book_both_nodes(aggregate: Aggregate, pki: DemoPki) -> LeaseRecord:
    """One lease of alice's slice on g45 and g30, one common slot long, starting at a common boundary an hour on."""
    alice = pki.users["alice"]
    expires = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn).expires
    start = from_s(align_up(to_s(utcnow() + timedelta(hours=1)), COMMON_SLOT))
    end = start + timedelta(seconds=COMMON_SLOT)
    requests = [BookingRequest(node_urn(node), start, end, lease_label="both") for node in ("g45", "g30")]
    (lease,) = aggregate.bookings.book(pki.slice_urn, expires, requests).leases
    assert sorted(lease.nodes) == sorted(node_urn(node) for node in ("g45", "g30"))
    return lease


def stored_end(aggregate: Aggregate, lease_id: str) -> datetime:
    (lease,) = [found for found in aggregate.bookings.leases() if found.id == lease_id]
    return lease.end


def test_renew_rounds_up_to_a_boundary_of_every_nodes_slots(aggregate: Aggregate, pki: DemoPki) -> None:
    """The hunt's case: 10 minutes past the lease's end rounds up to the next common boundary (90 minutes later),
    where it used to round to the next 45-minute boundary and be refused for g30's 30-minute slots."""
    alice = pki.users["alice"]
    lease = book_both_nodes(aggregate, pki)
    asked = lease.end + timedelta(minutes=10)

    answers = aggregate.renew(alice.chain, [pki.slice_urn], [alice.slice_cred], format_time(asked), {})

    expected = lease.end + timedelta(seconds=COMMON_SLOT)
    assert stored_end(aggregate, lease.id) == expected
    assert {answer["geni_end_time"] for answer in answers} == {format_time(expected)}


def test_renew_alap_extends_to_a_boundary_of_every_nodes_slots(aggregate: Aggregate, pki: DemoPki) -> None:
    """geni_extend_alap to a time between common boundaries, with nothing limiting the lease, ends at the next common
    boundary, as a plain Renew does (it used to aim at a 45-minute boundary the calendar refused, so the whole Renew
    failed; then at the last common boundary before the time asked for, short of what a plain Renew gives)."""
    alice = pki.users["alice"]
    lease = book_both_nodes(aggregate, pki)
    # Past the second common boundary after the end, by more than 45 minutes: a 45-minute boundary lies between.
    asked = lease.end + timedelta(seconds=2 * COMMON_SLOT + 50 * 60)

    answers = aggregate.renew(
        alice.chain, [pki.slice_urn], [alice.slice_cred], format_time(asked), {"geni_extend_alap": True}
    )

    expected = lease.end + timedelta(seconds=3 * COMMON_SLOT)
    assert stored_end(aggregate, lease.id) == expected
    assert {answer["geni_end_time"] for answer in answers} == {format_time(expected)}
    assert all(answer["sfa_omf_renewal"].startswith(f"lease {lease.id} extended") for answer in answers)


def test_renew_alap_says_why_a_lease_short_of_a_common_boundary_keeps_its_end(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """geni_extend_alap with a slice credential that expires 50 minutes after the lease's end: no common boundary
    lies between, so the lease keeps its end and the note says why (with the largest grain, a 45-minute boundary
    seemed reachable, and the note said nothing)."""
    alice = pki.users["alice"]
    lease = book_both_nodes(aggregate, pki)
    lifetime = lease.end + timedelta(minutes=50) - utcnow()
    credential = pki.authority.credential(alice.chain, pki.authority.issued_chain("testbed.demo"), lifetime)

    answers = aggregate.renew(alice.chain, [pki.slice_urn], [credential], "+30d", {"geni_extend_alap": True})

    assert stored_end(aggregate, lease.id) == lease.end
    for answer in answers:
        note = answer["sfa_omf_renewal"]
        assert note.startswith(f"unchanged: lease {lease.id} keeps its end {format_time(lease.end)}"), note
        assert "the slice credential expires at" in note and "leases end on slot boundaries" in note, note


def test_renew_past_the_slice_expiry_says_no_common_boundary_is_left_before_it(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """The slice expires 80 minutes after the lease's end: a renewal to 70 minutes past the end rounds up to the next
    common boundary (90 minutes past), after the expiry. No common boundary lies between the end and the expiry, so
    the refusal says so instead of advising an end at or before the lease's own (it advised the lease's end)."""
    lease = book_both_nodes(aggregate, pki)
    slice_expires = lease.end + timedelta(minutes=80)
    asked = lease.end + timedelta(minutes=70)

    with pytest.raises(PolicyViolation) as refused:
        aggregate.bookings.renew(lease.id, asked, rounding="up", slice_expires=slice_expires)

    message = refused.value.message
    assert "at most" not in message, message
    assert (
        f"leases end on a boundary of every node's slots, every 1 hour 30 minutes here: {format_time(asked)} would "
        f"end at {format_time(lease.end + timedelta(seconds=COMMON_SLOT))}, and none falls between the lease's end "
        f"{format_time(lease.end)} and the slice's expiry"
    ) in message, message
    assert stored_end(aggregate, lease.id) == lease.end


def test_renew_past_the_slice_expiry_advises_the_last_common_boundary_before_it(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """The slice expires 100 minutes after the lease's end: the common boundary 90 minutes past the end is before it,
    and the refusal of a renewal rounding up past the expiry names that boundary."""
    lease = book_both_nodes(aggregate, pki)
    slice_expires = lease.end + timedelta(minutes=100)
    asked = lease.end + timedelta(minutes=95)

    with pytest.raises(PolicyViolation) as refused:
        aggregate.bookings.renew(lease.id, asked, rounding="up", slice_expires=slice_expires)

    latest = lease.end + timedelta(seconds=COMMON_SLOT)
    assert f"ask for {format_time(latest)} at most)" in refused.value.message, refused.value.message
