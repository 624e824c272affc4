"""AM API v2 has no allocated-but-not-provisioned sliver: how v2 presents a slice's AM API v3 allocations.

SliverStatus shows one as ``unknown`` (no v2 client waits on it) with a geni_error saying it was allocated and not
provisioned and until when to provision it, and as ``failed`` once that time is over; RenewSliver renews provisioned
slivers only (a slice of allocations alone is refused, saying when they expire); and v2 CreateSliver books all or
nothing, so geni_best_effort is refused. In-process through the v2 endpoint (its argument checks and envelope), on
both databases."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.calendar.records import LeaseRecord, NodeSpec
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.times import format_time
from tests.am.conftest import aggregate_on
from tests.am.test_lapsed_allocations import later
from tests.am.test_v2_create_rollback import request, slot
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, *(NodeSpec(node_urn(n), n) for n in ("n1", "n2", "n3"))) as made:
        yield made


def v2(aggregate: Aggregate, pki: DemoPki, method: str, *arguments: Any) -> Any:
    """A v2 call as alice, with her slice credential: ``arguments`` follow the slice URN and the credentials."""
    alice = pki.users["alice"]
    return ApiV2(aggregate)(
        CallContext(alice.chain, "127.0.0.1", "/am2"), method, (pki.slice_urn, [alice.slice_cred], *arguments)
    )


def v3_allocation(aggregate: Aggregate, pki: DemoPki, node: str) -> LeaseRecord:
    """An AM API v3 Allocate of ``node`` for an hour two slots ahead, never provisioned."""
    alice = pki.users["alice"]
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], request((node,), slot(2)), {})
    (lease,) = [found for found in aggregate.bookings.leases(slice_urn=pki.slice_urn) if node_urn(node) in found.nodes]
    assert lease.state == "allocated"
    return lease


def v2_create_sliver(aggregate: Aggregate, pki: DemoPki, node: str) -> LeaseRecord:
    answer = v2(aggregate, pki, "CreateSliver", request((node,), slot(2)), [], {})
    assert answer["code"]["geni_code"] == 0, answer
    (lease,) = [found for found in aggregate.bookings.leases(slice_urn=pki.slice_urn) if node_urn(node) in found.nodes]
    assert lease.state == "provisioned"
    return lease


def ends(aggregate: Aggregate, pki: DemoPki) -> dict[str, Any]:
    return {lease.id: lease.end for lease in aggregate.bookings.leases(slice_urn=pki.slice_urn)}


def test_sliver_status_says_a_v3_allocation_waits_to_be_provisioned(aggregate: Aggregate, pki: DemoPki) -> None:
    allocation = v3_allocation(aggregate, pki, "n1")
    expires = format_time(allocation.slivers[0].expires)

    answer = v2(aggregate, pki, "SliverStatus", {})

    assert answer["code"]["geni_code"] == 0, answer
    (resource,) = answer["value"]["geni_resources"]
    # Not notready: a v2 client waits on notready/configuring for a sliver that is coming; this one is not.
    assert resource["geni_status"] == "unknown" and answer["value"]["geni_status"] == "unknown", answer
    assert "allocated (AM API v3 Allocate or GetTicket) and not provisioned" in resource["geni_error"], resource
    assert f"before {expires}" in resource["geni_error"], resource


def test_sliver_status_shows_a_lapsed_v3_allocation_failed(aggregate: Aggregate, pki: DemoPki) -> None:
    provisioned = v2_create_sliver(aggregate, pki, "n2")
    allocation = v3_allocation(aggregate, pki, "n1")
    later(aggregate, timedelta(seconds=aggregate.policy.allocation_ttl_s + 60))  # no sweep has run

    answer = v2(aggregate, pki, "SliverStatus", {})

    assert answer["code"]["geni_code"] == 0, answer
    by_urn = {resource["geni_urn"]: resource for resource in answer["value"]["geni_resources"]}
    lapsed = by_urn[allocation.slivers[0].urn]
    assert lapsed["geni_status"] == "failed", lapsed
    assert f"the allocation lapsed at {format_time(allocation.slivers[0].expires)}" in lapsed["geni_error"], lapsed
    assert by_urn[provisioned.slivers[0].urn]["geni_status"] == "notready", "before its slot, as before"


def test_renew_sliver_of_v3_allocations_alone_is_refused_and_moves_nothing(aggregate: Aggregate, pki: DemoPki) -> None:
    allocation = v3_allocation(aggregate, pki, "n1")
    before = ends(aggregate, pki)

    answer = v2(aggregate, pki, "RenewSliver", format_time(slot(2) + timedelta(hours=2)), {})

    assert answer["code"]["geni_code"] == 12 and answer["value"] in ("", None), answer
    assert f"the allocation expires at {format_time(allocation.slivers[0].expires)} unless" in answer["output"]
    assert "Provision through AM API v3" in answer["output"], answer
    assert ends(aggregate, pki) == before


def test_renew_sliver_renews_provisioned_slivers_and_leaves_v3_allocations(
    aggregate: Aggregate, pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    provisioned = v2_create_sliver(aggregate, pki, "n2")
    allocation = v3_allocation(aggregate, pki, "n1")
    new_end = slot(2) + timedelta(hours=2)

    with caplog.at_level(logging.INFO, logger="sfa_omf.am"):
        answer = v2(aggregate, pki, "RenewSliver", format_time(new_end), {})

    assert answer["code"]["geni_code"] == 0 and answer["value"] is True and answer["output"] == "", answer
    assert ends(aggregate, pki) == {provisioned.id: new_end, allocation.id: allocation.end}
    said = [record.getMessage() for record in caplog.records if "provisioned slivers only" in record.getMessage()]
    assert len(said) == 1 and f"expires at {format_time(allocation.slivers[0].expires)}" in said[0], said


def test_create_sliver_refuses_geni_best_effort(aggregate: Aggregate, pki: DemoPki) -> None:
    """n1 is taken in that slot: best effort would book n2 alone and answer a manifest that hides n1's absence."""
    v2_create_sliver(aggregate, pki, "n1")
    before = ends(aggregate, pki)

    answer = v2(aggregate, pki, "CreateSliver", request(("n1", "n2"), slot(2)), [], {"geni_best_effort": True})

    assert answer["code"]["geni_code"] == 1, answer
    assert (
        "AM API v2 CreateSliver books all or nothing; use AM API v3 Allocate with geni_best_effort"
        in (answer["output"])
    )
    assert ends(aggregate, pki) == before, "nothing booked"
