"""A call that fails writes nothing: each state-changing method, with a failure injected after its first write,
leaves the calendar (leases, slivers, the slice's users) and the testbed as they were before the call."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.outbox import NotifyEvents
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec, SliverRecord
from sfa_omf.errors import GeniError, Reason
from sfa_omf.testbed.base import BackgroundTask, SliverHealth
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key

NODES = [f"urn:publicid:IDN+testbed+node+n{i}" for i in (1, 2)]


class FaultInjectingTestbed:
    """A stand-in testbed that fails on purpose: ``fail_on`` names the call number (1-based, per operation) that
    raises, to inject a failure after the aggregate has already written or provisioned something. It records what
    the testbed holds, so a test can check that nothing is left half done there either."""

    name = "fault-injecting"

    def __init__(self) -> None:
        self.fail_on: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.provisioned: set[str] = set()
        self.users: dict[str, tuple[str, ...]] = {}  # lease id -> logins the testbed has

    def _maybe_fail(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        if self.fail_on.get(operation) == self.calls[operation]:
            raise GeniError(Reason.UNAVAILABLE, f"injected failure of {operation}")

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        self._maybe_fail("provision")
        self.provisioned.add(lease.id)
        self.users[lease.id] = tuple(account.login for account in accounts)

    def renew(self, lease: LeaseRecord, new_end: datetime) -> None:
        self._maybe_fail("renew")

    def release(self, lease: LeaseRecord) -> None:
        self._maybe_fail("release")
        self.provisioned.discard(lease.id)
        self.users.pop(lease.id, None)

    def health(self, sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth:
        return SliverHealth("geni_ready")

    def update_users(self, lease: LeaseRecord, accounts: Sequence[LocalAccount]) -> None:
        self._maybe_fail("update_users")
        self.users[lease.id] = tuple(account.login for account in accounts)

    def background_tasks(self) -> Sequence[BackgroundTask]:
        return ()


@pytest.fixture
def setup(pki: DemoPki, tmp_path: Path) -> tuple[Aggregate, FaultInjectingTestbed]:
    database = Database(sqlite_url(str(tmp_path / "c.sqlite")))
    database.upgrade()
    backend = FaultInjectingTestbed()
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed"), database, CredentialVerifier(pki.roots), backend=backend
    )
    for urn in NODES:
        aggregate.inventory.add_node(NodeSpec(urn, urn.rsplit("+", 1)[1]))
    return aggregate, backend


def two_leases_request(same_slot_at: datetime | None = None) -> str:
    """n1 and n2 in two different slots (or both at ``same_slot_at``): two leases, so a failure can come between
    them."""
    start = same_slot_at or utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    leases, nodes = [], []
    for index, urn in enumerate(NODES):
        begin = start + timedelta(hours=0 if same_slot_at else index)
        leases.append(
            f'<ol:lease client_id="l{index}" valid_from="{format_time(begin)}" '
            f'valid_until="{format_time(begin + timedelta(hours=1))}"/>'
        )
        nodes.append(f'<node client_id="c{index}" component_id="{urn}"><ol:lease_ref id_ref="l{index}"/></node>')
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">' + "".join(leases) + "".join(nodes) + "</rspec>"
    )


def snapshot(aggregate: Aggregate, slice_urn: str) -> tuple[Any, ...]:
    """Everything a failed call must leave alone in the calendar."""
    leases = tuple(
        (lease.id, lease.state, lease.start, lease.end, tuple((s.urn, s.allocation_state) for s in lease.slivers))
        for lease in aggregate.bookings.leases(active_only=False)
    )
    try:
        users = aggregate.slices.get(slice_urn).users
    except GeniError:
        users = ()
    return leases, users


def users_option(pki: DemoPki, *names: str) -> dict[str, Any]:
    return {"geni_users": [{"urn": pki.users[name].chain[0].urn, "keys": [ssh_key(name)]} for name in names]}


def test_allocate_that_fails_after_booking_keeps_nothing(
    setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    aggregate, _ = setup
    alice = pki.users["alice"]
    before = snapshot(aggregate, pki.slice_urn)

    def broken_answer(*args: Any) -> Any:
        raise RuntimeError("injected failure after the booking was written")

    monkeypatch.setattr(aggregate, "_describe_slice", broken_answer)
    with pytest.raises(RuntimeError):
        aggregate.allocate(
            alice.chain, pki.slice_urn, [alice.slice_cred], two_leases_request(), users_option(pki, "alice")
        )
    assert snapshot(aggregate, pki.slice_urn) == before
    monkeypatch.undo()
    # And the same call, working, books both leases with the user: the failure left nothing in its way.
    answer = aggregate.allocate(
        alice.chain, pki.slice_urn, [alice.slice_cred], two_leases_request(), users_option(pki, "alice")
    )
    assert len(answer["geni_slivers"]) == 2
    assert [user.user_urn for user in aggregate.slices.get(pki.slice_urn).users] == [alice.chain[0].urn]


def test_provision_that_fails_on_the_second_lease_provisions_none(
    setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki
) -> None:
    aggregate, backend = setup
    alice = pki.users["alice"]
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], two_leases_request(), {})
    before = snapshot(aggregate, pki.slice_urn)
    backend.fail_on["provision"] = 2
    with pytest.raises(GeniError) as refusal:
        aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], users_option(pki, "alice", "bob"))
    assert "injected" in refusal.value.message
    assert snapshot(aggregate, pki.slice_urn) == before, "no lease provisioned, no user added"
    assert backend.provisioned == set(), "the first lease was given back on the testbed"
    provisioned = aggregate.provision(
        alice.chain, [pki.slice_urn], [alice.slice_cred], users_option(pki, "alice", "bob")
    )
    assert {s["geni_allocation_status"] for s in provisioned["geni_slivers"]} == {"geni_provisioned"}
    assert len(backend.provisioned) == 2


def test_provision_whose_calendar_write_fails_gives_the_testbed_back(
    setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    aggregate, backend = setup
    alice = pki.users["alice"]
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], two_leases_request(), {})
    before = snapshot(aggregate, pki.slice_urn)

    def database_down(*args: Any, **kwargs: Any) -> Any:
        raise GeniError(Reason.DATABASE, "injected: the calendar's database failed")

    monkeypatch.setattr(aggregate.bookings, "mark_provisioned_all", database_down)
    with pytest.raises(GeniError):
        aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], users_option(pki, "alice"))
    assert snapshot(aggregate, pki.slice_urn) == before
    assert backend.provisioned == set()


def test_update_users_that_fails_on_the_testbed_changes_nothing(
    setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki
) -> None:
    aggregate, backend = setup
    alice = pki.users["alice"]
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], two_leases_request(), {})
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], users_option(pki, "alice"))
    before, testbed_before = snapshot(aggregate, pki.slice_urn), dict(backend.users)
    backend.fail_on["update_users"] = 2
    with pytest.raises(GeniError):
        aggregate.perform_operational_action(
            alice.chain, [pki.slice_urn], [alice.slice_cred], "geni_update_users", users_option(pki, "bob")
        )
    assert snapshot(aggregate, pki.slice_urn) == before, "the slice keeps its users"
    assert backend.users == testbed_before, "the lease updated first got its old users back"


def test_a_refused_argument_writes_nothing(setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki) -> None:
    """The issue's first finding, through the dispatcher: users of the wrong type are refused before booking."""
    from sfa_omf.am.api_v3 import ApiV3
    from sfa_omf.server.xmlrpc import CallContext

    aggregate, _ = setup
    alice = pki.users["alice"]
    endpoint = ApiV3(aggregate)
    context = CallContext(alice.chain, "127.0.0.1", "/")
    before = snapshot(aggregate, pki.slice_urn)
    for users in (
        5,
        "alice",
        {"urn": alice.chain[0].urn},
        [5],
        [{"urn": 5}],
        [{"urn": alice.chain[0].urn, "keys": "ssh-ed25519 AAAA"}],
    ):
        answer = endpoint(
            context, "Allocate", (pki.slice_urn, [alice.slice_cred], two_leases_request(), {"geni_users": users})
        )
        assert answer["code"]["geni_code"] == 1 and "geni_users" in answer["output"], answer
        assert snapshot(aggregate, pki.slice_urn) == before


def test_renew_that_the_testbed_cannot_follow_for_one_lease_renews_none(
    setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki
) -> None:
    aggregate, backend = setup
    alice = pki.users["alice"]
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], two_leases_request(), {})
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    before = snapshot(aggregate, pki.slice_urn)
    later = max(lease.end for lease in aggregate.bookings.leases()) + timedelta(hours=2)
    backend.fail_on["renew"] = 2
    with pytest.raises(GeniError):
        aggregate.renew(alice.chain, [pki.slice_urn], [alice.slice_cred], format_time(later), {})
    assert snapshot(aggregate, pki.slice_urn) == before, "both leases keep their end"
    assert backend.calls["renew"] == 3, "the first lease was renewed back on the testbed"


def test_renew_refused_for_one_lease_renews_none(setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki) -> None:
    """The second lease cannot grow (another slice holds the slot after it): the first one, which could, is not
    renewed either."""
    aggregate, _ = setup
    alice = pki.users["alice"]
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], two_leases_request(), {})
    second = max(aggregate.bookings.leases(), key=lambda lease: lease.start)
    other = "urn:publicid:IDN+testbed+slice+other"
    aggregate.bookings.book(
        other, second.end + timedelta(days=1), [BookingRequest(NODES[1], second.end, second.end + timedelta(hours=1))]
    )
    before = snapshot(aggregate, pki.slice_urn)
    with pytest.raises(GeniError) as refusal:
        aggregate.renew(
            alice.chain, [pki.slice_urn], [alice.slice_cred], format_time(second.end + timedelta(hours=1)), {}
        )
    assert refusal.value.code == 7
    assert snapshot(aggregate, pki.slice_urn) == before
    # The refusal is recorded for the slice's users (notify/alerts.py), and that is all the call wrote.
    (refused,) = NotifyEvents(aggregate.database).since(utcnow() - timedelta(hours=1))
    assert refused.event == "renewal_refused" and refused.slice_urn == pki.slice_urn
    assert refused.payload["caller"] == "urn:publicid:IDN+testbed+user+alice" and "is booked during" in str(
        refused.payload["reason"]
    )


def test_renew_with_a_bad_time_is_no_refused_renewal(
    setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki
) -> None:
    aggregate, _ = setup
    alice = pki.users["alice"]
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], two_leases_request(), {})
    with pytest.raises(GeniError) as refusal:
        aggregate.renew(alice.chain, [pki.slice_urn], [alice.slice_cred], "next tuesday", {})
    assert refusal.value.reason == Reason.BAD_ARGS
    assert NotifyEvents(aggregate.database).since(utcnow() - timedelta(hours=1)) == []


def test_delete_that_the_testbed_stops_halfway_never_claims_a_release_that_did_not_happen(
    setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki
) -> None:
    """Releasing cannot be undone, so Delete is the documented exception to all-or-nothing (docs/api-contract.md):
    each lease is cancelled in the calendar only once the testbed released it, the error is answered, and a retry
    releases the rest."""
    aggregate, backend = setup
    alice = pki.users["alice"]
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], two_leases_request(), {})
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    first, second = sorted(aggregate.bookings.leases(), key=lambda lease: lease.start)
    backend.fail_on["release"] = 2
    with pytest.raises(GeniError):
        aggregate.delete(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    states = {lease.id: lease.state for lease in aggregate.bookings.leases(active_only=False)}
    assert states == {first.id: "cancelled", second.id: "provisioned"}
    assert backend.provisioned == {second.id}, "the calendar and the testbed agree, lease by lease"
    aggregate.delete(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert backend.provisioned == set() and aggregate.bookings.leases() == []


def test_geni_stop_that_fails_on_the_second_lease_stops_none(
    setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sfa_omf.calendar.booking as booking

    aggregate, _ = setup
    alice = pki.users["alice"]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], two_leases_request(same_slot_at=start), {})
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert len(aggregate.bookings.leases()) == 2
    during = start + timedelta(minutes=1)
    aggregate.clock = lambda: during  # geni_stop acts during the slot
    before = [tuple(s.operational_state for s in lease.slivers) for lease in aggregate.bookings.leases()]
    real, calls = booking.lease_record, []

    def fails_the_second_time(lease: Any) -> LeaseRecord:
        calls.append(lease.id)
        if len(calls) == 2:
            raise RuntimeError("injected failure after the first lease was changed")
        return real(lease)

    monkeypatch.setattr(booking, "lease_record", fails_the_second_time)
    with pytest.raises(RuntimeError):
        aggregate.perform_operational_action(alice.chain, [pki.slice_urn], [alice.slice_cred], "geni_stop", {})
    monkeypatch.undo()
    after = [tuple(s.operational_state for s in lease.slivers) for lease in aggregate.bookings.leases()]
    assert after == before, "the first lease was not stopped either"


def test_delete_of_named_slivers_and_its_refusals(setup: tuple[Aggregate, FaultInjectingTestbed], pki: DemoPki) -> None:
    """Delete finds the slice and the leases of the named slivers in one read; a sliver that is unknown, or whose
    lease is over, gets the answers of the two reads as before, and a caller without the slice's credential
    cancels nothing."""
    aggregate, _ = setup
    alice, bob = pki.users["alice"], pki.users["bob"]
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], two_leases_request(), {})
    first, second = sorted(aggregate.bookings.leases(), key=lambda lease: lease.start)
    named = first.slivers[0].urn
    before = snapshot(aggregate, pki.slice_urn)
    with pytest.raises(GeniError):
        aggregate.delete(bob.chain, [named], [alice.slice_cred], {})
    assert snapshot(aggregate, pki.slice_urn) == before
    answer = aggregate.delete(alice.chain, [named], [alice.slice_cred], {})
    assert [(entry["geni_sliver_urn"], entry["geni_allocation_status"]) for entry in answer] == [
        (named, "geni_unallocated")
    ]
    assert aggregate.bookings.leases() == [second]
    with pytest.raises(GeniError) as again:
        aggregate.delete(alice.chain, [named], [alice.slice_cred], {})
    assert again.value.reason == Reason.NOT_FOUND and "no slivers here to delete" in again.value.message
    with pytest.raises(GeniError) as unknown:
        aggregate.delete(alice.chain, ["urn:publicid:IDN+testbed+sliver+none"], [alice.slice_cred], {})
    assert unknown.value.reason == Reason.NOT_FOUND and "no such sliver here" in unknown.value.message
    # A sliver of an active lease named with one of the cancelled lease (the two reads, as before): the active one
    # is deleted.
    mixed = aggregate.delete(alice.chain, [second.slivers[0].urn, named], [alice.slice_cred], {})
    assert [entry["geni_sliver_urn"] for entry in mixed] == [second.slivers[0].urn]
    assert aggregate.bookings.leases() == []
