"""An allocation whose time to be provisioned is over, before the sweep (expire_unprovisioned) releases it: Status
and Describe show it as the states table has it once expired ((allocated, expire) -> unallocated), with a
geni_error saying when its time ended and to Allocate again (it showed geni_allocated, expiring in the past), read
from the lease records alone: Status sends no statement more than for an allocation in its time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.am.states import Allocation, Event, Operational, next_allocation
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.times import format_time, utcnow
from tests.am.conftest import Clock, aggregate_on
from tests.calendar.conftest import node_urn
from tests.calendar.test_renew_path import _statements_starting
from tests.conftest import DemoPki

GENI_V3 = {"geni_rspec_version": {"type": "GENI", "version": "3"}}


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki, clock: Clock) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, *(NodeSpec(node_urn(n), n) for n in ("n1", "n2"))) as made:
        made.clock = made.bookings.clock = clock
        yield made


def allocate(aggregate: Aggregate, pki: DemoPki, node: str) -> LeaseRecord:
    alice = pki.users["alice"]
    expires = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn).expires
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=3)
    (lease,) = aggregate.bookings.book(
        pki.slice_urn, expires, [BookingRequest(node_urn(node), start, start + timedelta(hours=1))]
    ).leases
    return lease


def v3(aggregate: Aggregate, pki: DemoPki, method: str, *params: Any) -> dict[str, Any]:
    alice = pki.users["alice"]
    answer: dict[str, Any] = ApiV3(aggregate)(CallContext(alice.chain, "127.0.0.1", "/"), method, params)
    assert answer["code"]["geni_code"] == 0, answer
    return answer


def by_urn(slivers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {sliver["geni_sliver_urn"]: sliver for sliver in slivers}


def test_status_and_describe_show_a_lapsed_allocation_unallocated(
    aggregate: Aggregate, pki: DemoPki, clock: Clock
) -> None:
    credentials = [pki.users["alice"].slice_cred]
    lapsed = allocate(aggregate, pki, "n1")
    clock.ahead = timedelta(seconds=aggregate.policy.allocation_ttl_s + 60)  # no sweep runs
    fresh = allocate(aggregate, pki, "n2")  # allocated after the clock moved: still in its time
    ended_at = format_time(lapsed.slivers[0].expires)

    status = v3(aggregate, pki, "Status", [pki.slice_urn], credentials, {})["value"]["geni_slivers"]
    described = v3(aggregate, pki, "Describe", [pki.slice_urn], credentials, GENI_V3)["value"]["geni_slivers"]

    for slivers in (by_urn(status), by_urn(described)):
        shown = slivers[lapsed.slivers[0].urn]
        assert shown["geni_allocation_status"] == next_allocation(Allocation.ALLOCATED, Event.EXPIRE), shown
        assert shown["geni_allocation_status"] == "geni_unallocated"
        assert shown["geni_operational_status"] == Operational.PENDING_ALLOCATION
        assert f"time to be provisioned ended at {ended_at}" in shown["geni_error"], shown
        assert "being released; Allocate again" in shown["geni_error"], shown
        assert shown["geni_expires"] == ended_at
        in_time = slivers[fresh.slivers[0].urn]
        assert in_time["geni_allocation_status"] == "geni_allocated" and not in_time["geni_error"], in_time
    assert [expired.id for expired in aggregate.bookings.expire_unprovisioned()] == [lapsed.id]


def test_a_lapsed_allocation_is_told_from_the_lease_records_alone(
    aggregate: Aggregate, pki: DemoPki, clock: Clock
) -> None:
    """Status of a lapsed allocation sends the statements Status of one in its time sends (the same, no more)."""
    alice = pki.users["alice"]
    lease = allocate(aggregate, pki, "n1")
    # Caches warmed: until a Status sends no statement (on PostgreSQL, the allocation's own notification arrives a
    # moment after it: one read more).
    for _ in range(1000):
        with _statements_starting(aggregate.database, "") as warming:
            aggregate.status(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
        if not warming:
            break
        time.sleep(0.01)
    with _statements_starting(aggregate.database, "") as in_time:
        (before,) = aggregate.status(alice.chain, [pki.slice_urn], [alice.slice_cred], {})["geni_slivers"]
    clock.ahead = timedelta(seconds=aggregate.policy.allocation_ttl_s + 60)
    with _statements_starting(aggregate.database, "") as lapsed:
        (after,) = aggregate.status(alice.chain, [pki.slice_urn], [alice.slice_cred], {})["geni_slivers"]

    assert before["geni_allocation_status"] == "geni_allocated"
    assert after["geni_allocation_status"] == "geni_unallocated", after
    assert f"lease {lease.id} was not provisioned in time" in after["geni_error"], after
    assert len(lapsed) == len(in_time), (in_time, lapsed)
