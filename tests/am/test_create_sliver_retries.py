"""AM API v2's CreateSliver tried again by a client (its answer lost, a time-out): docs/operators.md says that is safe.
The retry never undoes the lease the first call made, never books a second slot, and a refusal names the v2
methods the caller has (CreateSliver, RenewSliver, ListResources), not AM API v3's. On SQLite and PostgreSQL; the
race between two calls over real TLS, the rest through the v2 endpoint in process."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import LeaseRecord, NodeSpec, SliverRecord
from sfa_omf.errors import GeniCode, GeniError, Reason
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.testbed.base import SliverHealth
from sfa_omf.testbed.embedded import EmbeddedTestbed
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.am.conftest import Clock, listen_v2_and_v3
from tests.am.test_unit_of_work import snapshot
from tests.calendar.conftest import fresh_database, node_urn
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key
from tests.tls_harness import Listener, proxy

OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
GENI_V3 = {"type": "GENI", "version": "3"}
HANG_GUARD_S = 60  # only so that a broken run fails instead of hanging; no step is timed


def slot(hours_from_now: int) -> datetime:
    return utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours_from_now)


def timed_request(nodes: Sequence[str], start: datetime, hours: int = 1) -> str:
    """One lease of ``hours`` from ``start`` on ``nodes`` (ol leases, as sfi.py sends them)."""
    end = start + timedelta(hours=hours)
    lease = f'<ol:lease client_id="l" valid_from="{format_time(start)}" valid_until="{format_time(end)}"/>'
    booked = "".join(
        f'<node client_id="{name}" component_id="{node_urn(name)}"><ol:lease_ref id_ref="l"/></node>' for name in nodes
    )
    return (
        f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" xmlns:ol="{OL}">{lease}{booked}</rspec>'
    )


def untimed_request(nodes: Sequence[str]) -> str:
    """No time at all (omni -V2 with a plain GENI RSpec): the default duration, from now."""
    booked = "".join(f'<node client_id="{name}" component_id="{node_urn(name)}"/>' for name in nodes)
    return f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">{booked}</rspec>'


def alice_users(pki: DemoPki) -> list[dict[str, Any]]:
    return [{"urn": pki.users["alice"].chain[0].urn, "keys": [ssh_key("alice")]}]


def leases_of(aggregate: Aggregate, slice_urn: str) -> list[tuple[str, str]]:
    return [(lease.id, lease.state) for lease in aggregate.bookings.leases(slice_urn=slice_urn)]


# -- a retry racing the first call -------------------------------------------------------------------------------
class RetryDuringProvisionTestbedStandIn(EmbeddedTestbed):
    """Stand-in for a testbed slow enough that the client's retry of CreateSliver arrives while it provisions the
    first call's lease. That moment is too short to catch with a real testbed, so the stand-in holds it: once
    ``armed``, the next provision (the first call's) waits until ``first_may_go_on``. A health query in that wait is
    the retry describing the slice once it took the allocation over: the first call then finishes before the retry
    goes on, and the testbed fails the users the retry gives the lease then (it did not answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.first_in_testbed = threading.Event()
        self.first_may_go_on = threading.Event()
        self.first_answered = threading.Event()

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        if self.armed:
            self.armed = False
            self.first_in_testbed.set()
            assert self.first_may_go_on.wait(HANG_GUARD_S), "the retry never went on"
        super().provision(lease, owner, accounts)

    def health(self, sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth:
        if self.first_in_testbed.is_set() and not self.first_may_go_on.is_set():  # the retry, past its take-over
            self.first_may_go_on.set()
            assert self.first_answered.wait(HANG_GUARD_S), "the first call was never answered"
        return super().health(sliver, lease, now)

    def update_users(self, lease: LeaseRecord, accounts: Sequence[LocalAccount]) -> None:
        if self.first_answered.is_set():
            raise GeniError(Reason.UNAVAILABLE, "the testbed did not answer (stand-in)")
        super().update_users(lease, accounts)


@pytest.fixture(params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, listener: Listener, pki: DemoPki, tmp_path: Path
) -> Iterator[tuple[Aggregate, str]]:
    """An aggregate with the stand-in testbed (nodes n1, n2), serving AM API v2 at /am2 over TLS: it and its URL."""
    roots_dir = tmp_path / "trusted_roots"
    shutil.copytree(pki.directory / "trusted_roots", roots_dir)
    database: Database = fresh_database(request.param, tmp_path)
    try:
        aggregate = Aggregate(
            AggregateSettings(authority_hrn="testbed"),
            database,
            CredentialVerifier(load_trusted_roots(str(roots_dir)), VerdictCache()),
            backend=RetryDuringProvisionTestbedStandIn(),
        )
        for name in ("n1", "n2"):
            aggregate.inventory.add_node(NodeSpec(node_urn(name), name))
        yield aggregate, f"{listen_v2_and_v3(listener, aggregate, pki, 4)}/am2"
    finally:
        database.dispose()


def race(served: tuple[Aggregate, str], pki: DemoPki, rspec: str, users: list[dict[str, Any]]) -> dict[str, Any]:
    """CreateSliver of ``rspec``, and the same call again (with ``users``) while the testbed provisions the first
    one's lease: both answers, once both calls ended."""
    aggregate, url = served
    testbed = aggregate.backend
    assert isinstance(testbed, RetryDuringProvisionTestbedStandIn)
    sfi = pki.users["alice"].sfi_dir
    answers: dict[str, Any] = {}

    def create_sliver(which: str, users: list[dict[str, Any]]) -> None:
        client = proxy(url, str(sfi / "testbed.alice.user.gid"), str(sfi / "testbed.alice.pkey"))
        answers[which] = client.CreateSliver(pki.slice_urn, [pki.users["alice"].slice_cred], rspec, users, {})
        if which == "first":
            testbed.first_answered.set()

    testbed.armed = True
    first = threading.Thread(target=create_sliver, args=("first", []))
    first.start()
    assert testbed.first_in_testbed.wait(HANG_GUARD_S)
    create_sliver("retry", users)
    testbed.first_may_go_on.set()  # (the retry was answered without describing the slice: BUSY)
    first.join()
    return answers


def test_a_retry_that_fails_after_the_first_call_provisioned_leaves_the_first_calls_lease(
    served: tuple[Aggregate, str], pki: DemoPki
) -> None:
    """The retry takes the first call's allocation over (not provisioned yet); the first call provisions it; the
    retry fails (the testbed refuses the users it gives the lease): its undo must leave the lease the first call
    reported made."""
    aggregate, _ = served
    # A lease of the slice provisioned before (another window): the retry's describing of the slice asks its health.
    ok = race(served, pki, timed_request(("n2",), slot(4)), [])
    assert ok["first"]["code"]["geni_code"] == 0, ok
    testbed = aggregate.backend
    assert isinstance(testbed, RetryDuringProvisionTestbedStandIn)
    for event in (testbed.first_in_testbed, testbed.first_may_go_on, testbed.first_answered):
        event.clear()

    answers = race(served, pki, timed_request(("n1",), slot(2)), alice_users(pki))

    assert answers["first"]["code"]["geni_code"] == 0, answers["first"]
    assert answers["retry"]["code"]["geni_code"] == GeniCode.UNAVAILABLE, answers["retry"]
    states = {lease.nodes: (lease.id, lease.state) for lease in aggregate.bookings.leases(slice_urn=pki.slice_urn)}
    lease_id, state = states[(node_urn("n1"),)]
    assert state == "provisioned" and lease_id in answers["first"]["value"], "the first call's lease is kept"


def test_a_retry_while_the_first_call_provisions_is_answered_busy_and_undoes_nothing(
    served: tuple[Aggregate, str], pki: DemoPki
) -> None:
    aggregate, _ = served

    answers = race(served, pki, timed_request(("n1",), slot(2)), [])

    assert answers["retry"]["code"]["geni_code"] == GeniCode.BUSY, answers["retry"]
    assert answers["first"]["code"]["geni_code"] == 0, answers["first"]
    ((lease_id, state),) = leases_of(aggregate, pki.slice_urn)
    assert state == "provisioned" and lease_id in answers["first"]["value"]


# -- a retry once the first call succeeded, and the v2 refusals' words --------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki, clock: Clock) -> Iterator[Aggregate]:
    """An aggregate (nodes n1, n2; the embedded testbed) on a fresh calendar, with the test's clock."""
    database: Database = fresh_database(request.param, tmp_path)
    try:
        made = Aggregate(
            AggregateSettings(authority_hrn="testbed"),
            database,
            CredentialVerifier(pki.roots, VerdictCache()),
            clock=clock,
        )
        for name in ("n1", "n2"):
            made.inventory.add_node(NodeSpec(node_urn(name), name))
        yield made
    finally:
        database.dispose()


def v2(aggregate: Aggregate, pki: DemoPki, method: str, *params: Any) -> Any:
    """A call through the v2 endpoint (its argument checks and envelope), as alice."""
    return ApiV2(aggregate)(CallContext(pki.users["alice"].chain, "127.0.0.1", "/am2"), method, params)


def create_sliver(aggregate: Aggregate, pki: DemoPki, rspec: str) -> Any:
    return v2(
        aggregate, pki, "CreateSliver", pki.slice_urn, [pki.users["alice"].slice_cred], rspec, alice_users(pki), {}
    )


@pytest.mark.parametrize("kind", ["timed", "from-now", "from-now-renewed"])
def test_the_same_create_sliver_again_books_nothing_and_names_the_lease(
    aggregate: Aggregate, pki: DemoPki, kind: str
) -> None:
    rspec = timed_request(("n1",), slot(2)) if kind == "timed" else untimed_request(("n1",))
    made = create_sliver(aggregate, pki, rspec)
    assert made["code"]["geni_code"] == 0, made
    if kind == "from-now-renewed":
        renewed = v2(
            aggregate, pki, "RenewSliver", pki.slice_urn, [pki.users["alice"].slice_cred], format_time(slot(4)), {}
        )
        assert renewed["code"]["geni_code"] == 0, renewed
    ((lease_id, _),) = leases_of(aggregate, pki.slice_urn)
    before = snapshot(aggregate, pki.slice_urn)

    again = create_sliver(aggregate, pki, rspec)

    assert again["code"]["geni_code"] == GeniCode.ALREADYEXISTS, again
    (lease,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    for words in (lease_id, format_time(lease.start), format_time(lease.end), "RenewSliver", "another slot"):
        assert words in again["output"], (words, again["output"])
    assert snapshot(aggregate, pki.slice_urn) == before, "nothing was written"


def test_v2_refusals_name_the_v2_methods(aggregate: Aggregate, pki: DemoPki, clock: Clock) -> None:
    credentials = [pki.users["alice"].slice_cred]
    made = create_sliver(aggregate, pki, timed_request(("n1",), slot(2)))
    assert made["code"]["geni_code"] == 0, made

    # ListResources of the slice without geni_rspec_version
    listed = v2(aggregate, pki, "ListResources", credentials, {"geni_slice_urn": pki.slice_urn})
    assert listed["code"]["geni_code"] == GeniCode.BADARGS, listed
    assert "ListResources needs the option geni_rspec_version" in listed["output"], listed["output"]

    # CreateSliver clashing with the slice's own lease
    clash = create_sliver(aggregate, pki, timed_request(("n1",), slot(2), hours=2))
    assert clash["code"]["geni_code"] != 0, clash
    assert "CreateSliver adds to what the slice holds" in clash["output"], clash["output"]
    assert "call RenewSliver" in clash["output"] and "Allocate" not in clash["output"], clash["output"]

    # CreateSliver clashing with the slice's allocation (AM API v3's) not provisioned in time
    alice = pki.users["alice"]
    aggregate.allocate(alice.chain, pki.slice_urn, credentials, timed_request(("n2",), slot(2)), {})
    clock.ahead = timedelta(seconds=aggregate.policy.allocation_ttl_s + 1)
    lapsed = create_sliver(aggregate, pki, timed_request(("n2",), slot(2)))
    assert lapsed["code"]["geni_code"] != 0, lapsed
    assert "CreateSliver again in a minute" in lapsed["output"] and "Allocate" not in lapsed["output"], lapsed
