"""What an AM API v2 CreateSliver takes over: only an allocation of the caller's own that is exactly its request (what
an earlier CreateSliver of theirs left when cut short between its Allocate and its Provision). Another member's
allocation pending in the same slice (an AM API v3 Allocate waiting for its own Provision, with its own users) stays
allocated, as docs/api-contract.md says: the CreateSliver of the same request does not provision it with its call.
In-process through the v2 endpoint, on both databases, with the embedded testbed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.calendar.records import LeaseRecord, NodeSpec
from sfa_omf.server.xmlrpc import CallContext
from tests.am.conftest import aggregate_on
from tests.am.test_create_sliver_retry import untimed_request
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, *(NodeSpec(node_urn(n), n) for n in ("n1", "n2"))) as made:
        yield made


def v3_allocate(aggregate: Aggregate, pki: DemoPki, member: str, rspec: str) -> LeaseRecord:
    """``member`` Allocates ``rspec`` in the demo slice (AM API v3), with their own users, and does not Provision."""
    user = pki.users[member]
    users = [{"urn": user.chain[0].urn, "keys": [ssh_key(member)]}]
    aggregate.allocate(user.chain, pki.slice_urn, [user.slice_cred], rspec, {"geni_users": users})
    (lease,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert lease.state == "allocated" and lease.owner_urn == user.chain[0].urn
    return lease


def v2_create_sliver(aggregate: Aggregate, pki: DemoPki, member: str, rspec: str) -> Any:
    """CreateSliver through the v2 endpoint as ``member``, with their slice credential and their own users."""
    user = pki.users[member]
    users = [{"urn": user.chain[0].urn, "keys": [ssh_key(member)]}]
    return ApiV2(aggregate)(
        CallContext(user.chain, "127.0.0.1", "/am2"),
        "CreateSliver",
        (pki.slice_urn, [user.slice_cred], rspec, users, {}),
    )


def lease_by_id(aggregate: Aggregate, pki: DemoPki, lease_id: str) -> LeaseRecord:
    (lease,) = [found for found in aggregate.bookings.leases(slice_urn=pki.slice_urn) if found.id == lease_id]
    return lease


def test_another_members_allocation_stays_allocated(aggregate: Aggregate, pki: DemoPki) -> None:
    """The hunt's case: alice Allocates n1 from now (v3); bob, a member of the slice, sends CreateSliver (v2) of the
    same request. Her allocation stays hers and allocated, waiting for her Provision (it used to be provisioned
    with bob's call, without her Provision or her users); bob's call does not get it."""
    rspec = untimed_request(("n1",))
    alices = v3_allocate(aggregate, pki, "alice", rspec)

    answer = v2_create_sliver(aggregate, pki, "bob", rspec)

    after = lease_by_id(aggregate, pki, alices.id)
    assert after.state == "allocated" and after.owner_urn == alices.owner_urn, after
    assert after.slivers == alices.slivers
    # As soon as possible, bob's call books n1 for the slot after her allocation: a lease of his own.
    assert answer["code"]["geni_code"] == 0, answer
    (bobs,) = [lease for lease in aggregate.bookings.leases(slice_urn=pki.slice_urn) if lease.id != alices.id]
    assert bobs.owner_urn == pki.users["bob"].chain[0].urn and bobs.state == "provisioned"
    assert bobs.start >= alices.end


def test_the_callers_own_allocation_of_the_same_request_is_still_taken_over(aggregate: Aggregate, pki: DemoPki) -> None:
    """What take-over is for: alice's CreateSliver cut short after its Allocate left her an allocation she never
    saw; her CreateSliver again provisions that very lease instead of clashing with it."""
    rspec = untimed_request(("n1",))
    left = v3_allocate(aggregate, pki, "alice", rspec)  # CreateSliver's first unit of work is exactly Allocate

    answer = v2_create_sliver(aggregate, pki, "alice", rspec)

    assert answer["code"]["geni_code"] == 0, answer
    (lease,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert lease.id == left.id and lease.state == "provisioned"
