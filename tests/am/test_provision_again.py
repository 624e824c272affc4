"""Provision again with users (sfi has no geni_update_users): the leases provisioned before get the new users on the
testbed too, as with geni_update_users, also when the call provisions new allocations next to them; and when the
testbed (or anything after it) fails, the call writes nothing: the slice keeps its users, the testbed its users.

The testbed is tests/am/test_unit_of_work.py's recording stand-in (it records each lease's logins and fails the call
asked for); the calendar is real, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import GeniError
from sfa_omf.trust.verifier import CredentialVerifier
from tests.am.test_unit_of_work import NODES, FaultInjectingTestbed, snapshot, two_leases_request, users_option
from tests.calendar.conftest import fresh_database
from tests.conftest import DemoPki


@pytest.fixture(params=["sqlite", "postgresql"])
def setup(
    request: pytest.FixtureRequest, pki: DemoPki, tmp_path: Path
) -> Iterator[tuple[Aggregate, FaultInjectingTestbed]]:
    """An aggregate with two nodes over a real calendar and the recording testbed."""
    database = fresh_database(request.param, tmp_path)
    backend = FaultInjectingTestbed()
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed"), database, CredentialVerifier(pki.roots), backend=backend
    )
    for urn in NODES:
        aggregate.inventory.add_node(NodeSpec(urn, urn.rsplit("+", 1)[1]))
    try:
        yield aggregate, backend
    finally:
        database.dispose()


def logins(aggregate: Aggregate, pki: DemoPki, *names: str) -> tuple[str, ...]:
    """The local logins of these demo users, as the testbed gets them (sorted, as _local_accounts lists them)."""
    return tuple(
        sorted(aggregate.accounts.login_for(pki.users[name].chain[0].urn or "", pki.slice_urn) for name in names)
    )


def allocate_two_leases(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], two_leases_request(), {})


def provision(aggregate: Aggregate, pki: DemoPki, urns: list[str], options: dict[str, Any]) -> dict[str, Any]:
    alice = pki.users["alice"]
    return aggregate.provision(alice.chain, urns, [alice.slice_cred], options)


def test_provision_again_with_users_gives_them_to_the_provisioned_leases_on_the_testbed(
    setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki
) -> None:
    aggregate, backend = setup
    allocate_two_leases(aggregate, pki)
    provision(aggregate, pki, [pki.slice_urn], users_option(pki, "alice"))
    leases = {lease.id for lease in aggregate.bookings.leases(slice_urn=pki.slice_urn)}
    assert backend.users == dict.fromkeys(leases, logins(aggregate, pki, "alice"))
    provision(aggregate, pki, [pki.slice_urn], users_option(pki, "bob"))
    assert backend.users == dict.fromkeys(leases, logins(aggregate, pki, "alice", "bob")), "bob is not on the testbed"
    assert {user.user_urn for user in aggregate.slices.get(pki.slice_urn).users} == {
        pki.users["alice"].chain[0].urn,
        pki.users["bob"].chain[0].urn,
    }


def test_provision_again_that_the_testbed_fails_for_one_lease_writes_nothing(
    setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki
) -> None:
    aggregate, backend = setup
    allocate_two_leases(aggregate, pki)
    provision(aggregate, pki, [pki.slice_urn], users_option(pki, "alice"))
    before, testbed_before = snapshot(aggregate, pki.slice_urn), dict(backend.users)
    backend.fail_on["update_users"] = 2  # the second lease: the first one has the new users by then
    with pytest.raises(GeniError) as failure:
        provision(aggregate, pki, [pki.slice_urn], users_option(pki, "bob"))
    assert "injected failure of update_users" in failure.value.message
    assert snapshot(aggregate, pki.slice_urn) == before, "the slice keeps its users"
    assert backend.users == testbed_before, "the lease updated first got its old users back"


def test_provision_of_new_allocations_with_users_gives_them_to_the_leases_provisioned_before_too(
    setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki
) -> None:
    """One lease provisioned, another still allocated: a Provision of both with a new user provisions the second
    with the user, and the first gets them on the testbed (as its logins and container plans do)."""
    aggregate, backend = setup
    allocate_two_leases(aggregate, pki)
    first, second = sorted(aggregate.bookings.leases(slice_urn=pki.slice_urn), key=lambda lease: lease.start)
    provision(aggregate, pki, [first.slivers[0].urn], users_option(pki, "alice"))
    assert backend.users == {first.id: logins(aggregate, pki, "alice")}
    provision(aggregate, pki, [pki.slice_urn], users_option(pki, "bob"))
    assert backend.users == {
        first.id: logins(aggregate, pki, "alice", "bob"),
        second.id: logins(aggregate, pki, "alice", "bob"),
    }


def test_provision_of_new_allocations_that_fails_gives_the_leases_provisioned_before_their_old_users_back(
    setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki
) -> None:
    aggregate, backend = setup
    allocate_two_leases(aggregate, pki)
    first, _ = sorted(aggregate.bookings.leases(slice_urn=pki.slice_urn), key=lambda lease: lease.start)
    provision(aggregate, pki, [first.slivers[0].urn], users_option(pki, "alice"))
    before, testbed_before = snapshot(aggregate, pki.slice_urn), dict(backend.users)
    backend.fail_on["provision"] = 2  # the second lease (the first Provision was call 1)
    with pytest.raises(GeniError):
        provision(aggregate, pki, [pki.slice_urn], users_option(pki, "bob"))
    assert snapshot(aggregate, pki.slice_urn) == before
    assert backend.users == testbed_before, "the lease provisioned before keeps the failed call's users"
