"""AM API v2's CreateSliver is two units of work, Allocate then Provision. A process killed between them (a worker
or a host lost) leaves the slice an allocation the v2 client never saw; the client sees a connection error and calls
again, maybe on another host of the cluster. That retry must succeed: it takes the allocation over and provisions it,
instead of refusing because the slice's own allocation holds the nodes. Here the kill is made for real: the Allocate
part runs on one aggregate object, which is then dropped, and a second one on the same database (as a second host)
gets the retry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.am.test_unit_of_work import FaultInjectingTestbed, snapshot
from tests.calendar.conftest import fresh_database, node_urn
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key

OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    made = fresh_database(request.param, tmp_path)
    try:
        yield made
    finally:
        made.dispose()


def host(database: Database, pki: DemoPki) -> Aggregate:
    """One host of the cluster: an aggregate of its own (its own caches, its own testbed stand-in) on the database."""
    made = Aggregate(
        AggregateSettings(authority_hrn="testbed"), database, CredentialVerifier(pki.roots, VerdictCache())
    )
    made.backend = FaultInjectingTestbed()
    return made


@pytest.fixture
def first_host(database: Database, pki: DemoPki) -> Aggregate:
    made = host(database, pki)
    for name in ("n1", "n2"):
        made.inventory.add_node(NodeSpec(node_urn(name), name))
    return made


def slot(hours_from_now: int) -> datetime:
    return utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours_from_now)


def timed_request(nodes: tuple[str, ...], start: datetime) -> str:
    """One lease of an hour from ``start`` on ``nodes`` (ol leases, as sfi.py sends them)."""
    end = start + timedelta(hours=1)
    lease = f'<ol:lease client_id="l" valid_from="{format_time(start)}" valid_until="{format_time(end)}"/>'
    booked = "".join(
        f'<node client_id="{name}" component_id="{node_urn(name)}"><ol:lease_ref id_ref="l"/></node>' for name in nodes
    )
    return (
        f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" xmlns:ol="{OL}">{lease}{booked}</rspec>'
    )


def untimed_request(nodes: tuple[str, ...]) -> str:
    """No time at all (omni -V2 with a plain GENI RSpec): the default duration, from now."""
    booked = "".join(f'<node client_id="{name}" component_id="{node_urn(name)}"/>' for name in nodes)
    return f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">{booked}</rspec>'


def v2(aggregate: Aggregate, pki: DemoPki, method: str, *params: Any) -> Any:
    alice = pki.users["alice"]
    return ApiV2(aggregate)(CallContext(alice.chain, "127.0.0.1", "/am2"), method, params)


def create_sliver(aggregate: Aggregate, pki: DemoPki, rspec: str) -> Any:
    alice = pki.users["alice"]
    users = [{"urn": alice.chain[0].urn, "keys": [ssh_key("alice")]}]
    return v2(aggregate, pki, "CreateSliver", pki.slice_urn, [alice.slice_cred], rspec, users, {})


def killed_after_allocate(aggregate: Aggregate, pki: DemoPki, rspec: str) -> None:
    """What a CreateSliver whose process died between its Allocate and its Provision left: its Allocate, committed
    (CreateSliver's first unit of work is exactly Aggregate.allocate); the caller drops the aggregate object."""
    alice = pki.users["alice"]
    users = [{"urn": alice.chain[0].urn, "keys": [ssh_key("alice")]}]
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, {"geni_users": users})


@pytest.mark.parametrize("timed", [True, False], ids=["timed", "from-now"])
def test_a_create_sliver_cut_short_after_its_allocate_succeeds_when_tried_again_on_another_host(
    first_host: Aggregate, database: Database, pki: DemoPki, timed: bool
) -> None:
    rspec = timed_request(("n1", "n2"), slot(2)) if timed else untimed_request(("n1", "n2"))
    killed_after_allocate(first_host, pki, rspec)
    (left,) = first_host.bookings.leases(slice_urn=pki.slice_urn)
    del first_host  # the process is gone: nothing of it is used again
    second_host = host(database, pki)

    answer = create_sliver(second_host, pki, rspec)

    assert answer["code"]["geni_code"] == 0, answer
    (lease,) = second_host.bookings.leases(slice_urn=pki.slice_urn)
    assert (lease.id, lease.state) == (left.id, "provisioned"), "the allocation left behind is the one provisioned"
    assert {sliver.urn for sliver in lease.slivers} == {sliver.urn for sliver in left.slivers}
    assert all(sliver.urn in answer["value"] for sliver in lease.slivers), "the manifest shows the slivers"
    backend = second_host.backend
    assert isinstance(backend, FaultInjectingTestbed) and backend.provisioned == {lease.id}
    status = v2(second_host, pki, "SliverStatus", pki.slice_urn, [pki.users["alice"].slice_cred], {})
    assert status["code"]["geni_code"] == 0, status
    assert [resource["geni_status"] for resource in status["value"]["geni_resources"]] == ["ready", "ready"]


def test_a_retry_that_fails_leaves_the_allocation_as_it_was_for_the_next_try(
    first_host: Aggregate, database: Database, pki: DemoPki
) -> None:
    rspec = timed_request(("n1",), slot(2))
    killed_after_allocate(first_host, pki, rspec)
    second_host = host(database, pki)
    before = snapshot(second_host, pki.slice_urn)
    backend = second_host.backend
    assert isinstance(backend, FaultInjectingTestbed)
    backend.fail_on["provision"] = 1  # the testbed is down for this try

    failed = create_sliver(second_host, pki, rspec)

    assert failed["code"]["geni_code"] != 0 and "injected failure of provision" in failed["output"], failed
    assert snapshot(second_host, pki.slice_urn) == before, "the failed call wrote nothing"
    again = create_sliver(second_host, pki, rspec)
    assert again["code"]["geni_code"] == 0, again
    assert [lease.state for lease in second_host.bookings.leases(slice_urn=pki.slice_urn)] == ["provisioned"]


def test_another_request_on_the_same_nodes_still_clashes_with_the_allocation(
    first_host: Aggregate, database: Database, pki: DemoPki
) -> None:
    """Only the same request takes the allocation over: another one (here another window that overlaps it) is
    refused, and the allocation stays as it was."""
    killed_after_allocate(first_host, pki, timed_request(("n1",), slot(2)))
    second_host = host(database, pki)
    before = snapshot(second_host, pki.slice_urn)

    refused = create_sliver(second_host, pki, timed_request(("n1", "n2"), slot(2)))

    assert refused["code"]["geni_code"] != 0 and "is booked" in refused["output"], refused
    assert snapshot(second_host, pki.slice_urn) == before


def test_a_provisioned_lease_is_never_taken_over(first_host: Aggregate, database: Database, pki: DemoPki) -> None:
    """CreateSliver of a request the slice holds provisioned already is refused as before: nothing is provisioned
    twice."""
    rspec = timed_request(("n1",), slot(2))
    assert create_sliver(first_host, pki, rspec)["code"]["geni_code"] == 0
    second_host = host(database, pki)
    before = snapshot(second_host, pki.slice_urn)

    refused = create_sliver(second_host, pki, rspec)

    assert refused["code"]["geni_code"] != 0 and "is booked" in refused["output"], refused
    assert snapshot(second_host, pki.slice_urn) == before
