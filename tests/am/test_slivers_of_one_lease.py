"""A lease's slivers are acted on together: one Allocate of two nodes in one window is one lease (one OAR job, one OMF
reservation) with a sliver per node, so Delete, Renew, Provision and geni_start/stop/restart act on the whole lease.
A call that names only some of a lease's slivers is refused whole (BADARGS naming the lease and the slivers left out)
before anything is written, with or without geni_best_effort; naming all of them, or the slice URN, acts on it.
Before this, a Delete naming one sliver released the whole lease and a Renew of one sliver extended the other too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.times import utcnow
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.calendar.test_renew_path import _statements_starting
from tests.conftest import DemoPki

BEST_EFFORT = {"geni_best_effort": True}


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    nodes = (NodeSpec(node_urn(name), name) for name in ("n1", "n2", "n3"))
    with aggregate_on(request.param, tmp_path, pki, *nodes) as made:
        yield made


def _book(aggregate: Aggregate, pki: DemoPki, nodes: tuple[str, ...], running: bool = False) -> LeaseRecord:
    """One lease of the demo slice holding a sliver on each of ``nodes``: in two hours for an hour, or (``running``)
    from now to the end of the hour after the current one."""
    alice = pki.users["alice"]
    verified = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn, {})
    now = utcnow().replace(microsecond=0)
    hour = now.replace(minute=0, second=0)
    start, end = (now, hour + timedelta(hours=2)) if running else (hour + timedelta(hours=2), hour + timedelta(hours=3))
    requests = [BookingRequest(node_urn(node), start, end, from_now=running) for node in nodes]
    (lease,) = aggregate.bookings.book(pki.slice_urn, verified.expires, requests, owner_urn=verified.owner_urn).leases
    return lease


def _sliver_of(lease: LeaseRecord, node: str) -> str:
    (urn,) = [sliver.urn for sliver in lease.slivers if sliver.node == node_urn(node)]
    return urn


def _stored(aggregate: Aggregate) -> tuple[object, ...]:
    """Every lease and sliver as stored (ended ones too), and the generation."""
    with aggregate.bookings.database.read() as session:
        generation = read_generation(session)
    return (tuple(aggregate.bookings.leases(active_only=False)), generation)


def _refused_changing_nothing(aggregate: Aggregate, call: Callable[[], object]) -> GeniError:
    before = _stored(aggregate)
    with pytest.raises(GeniError) as refused:
        call()
    assert _stored(aggregate) == before
    return refused.value


def _check_refusal(refusal: GeniError, lease: LeaseRecord, left_out: str, together: str) -> None:
    assert refusal.code == GeniCode.BADARGS, refusal
    assert lease.id in refusal.message and left_out in refusal.message, refusal.message
    assert f"slivers are {together} together" in refusal.message, refusal.message
    assert "name all of them, or the slice URN" in refusal.message, refusal.message


@pytest.mark.parametrize("options", [{}, BEST_EFFORT], ids=["all-or-nothing", "best-effort"])
def test_a_delete_of_one_sliver_of_a_lease_is_refused_and_releases_nothing(
    aggregate: Aggregate, pki: DemoPki, options: dict[str, bool]
) -> None:
    alice = pki.users["alice"]
    lease = _book(aggregate, pki, ("n1", "n2"))
    refusal = _refused_changing_nothing(
        aggregate, lambda: aggregate.delete(alice.chain, [_sliver_of(lease, "n1")], [alice.slice_cred], options)
    )
    _check_refusal(refusal, lease, _sliver_of(lease, "n2"), "deleted")
    (kept,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert kept == lease


def test_a_delete_of_one_sliver_of_a_provisioned_lease_is_refused(aggregate: Aggregate, pki: DemoPki) -> None:
    """A provisioned lease takes the usual path on both databases: refused before the testbed releases anything."""
    alice = pki.users["alice"]
    lease = _book(aggregate, pki, ("n1", "n2"))
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    refusal = _refused_changing_nothing(
        aggregate, lambda: aggregate.delete(alice.chain, [_sliver_of(lease, "n2")], [alice.slice_cred], {})
    )
    _check_refusal(refusal, lease, _sliver_of(lease, "n1"), "deleted")


def test_a_delete_naming_one_whole_lease_and_part_of_another_deletes_neither(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    alice = pki.users["alice"]
    whole = _book(aggregate, pki, ("n3",))
    split = _book(aggregate, pki, ("n1", "n2"))
    named = [whole.slivers[0].urn, _sliver_of(split, "n1")]
    refusal = _refused_changing_nothing(aggregate, lambda: aggregate.delete(alice.chain, named, [alice.slice_cred], {}))
    _check_refusal(refusal, split, _sliver_of(split, "n2"), "deleted")
    assert whole.id not in refusal.message, refusal.message


def test_a_delete_naming_every_sliver_of_a_lease_deletes_it_in_one_statement(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    alice = pki.users["alice"]
    lease = _book(aggregate, pki, ("n1", "n2"))
    named = [sliver.urn for sliver in lease.slivers]
    with _statements_starting(aggregate.bookings.database, "") as sent:
        answer = aggregate.delete(alice.chain, named, [alice.slice_cred], {})
    if not aggregate.bookings.database.is_sqlite:
        assert [statement.split()[0].upper() for statement in sent] == ["WITH"], sent  # the fast path still applies
    assert sorted((item["geni_sliver_urn"], item["geni_allocation_status"]) for item in answer) == sorted(
        (urn, "geni_unallocated") for urn in named
    )
    assert aggregate.bookings.leases(slice_urn=pki.slice_urn) == []


@pytest.mark.parametrize("aggregate", ["postgresql"], indirect=True)
def test_the_one_statement_cancels_no_lease_holding_slivers_not_named(aggregate: Aggregate, pki: DemoPki) -> None:
    lease = _book(aggregate, pki, ("n1", "n2"))
    before = _stored(aggregate)
    assert aggregate.bookings.cancel_allocated_holding(pki.slice_urn, [_sliver_of(lease, "n1")]) is None
    assert _stored(aggregate) == before


@pytest.mark.parametrize("options", [{}, BEST_EFFORT], ids=["all-or-nothing", "best-effort"])
def test_a_renew_of_one_sliver_of_a_lease_is_refused_and_renews_nothing(
    aggregate: Aggregate, pki: DemoPki, options: dict[str, bool]
) -> None:
    alice = pki.users["alice"]
    lease = _book(aggregate, pki, ("n1", "n2"))
    later = lease.end + timedelta(hours=1)
    refusal = _refused_changing_nothing(
        aggregate,
        lambda: aggregate.renew(alice.chain, [_sliver_of(lease, "n1")], [alice.slice_cred], later, options),
    )
    _check_refusal(refusal, lease, _sliver_of(lease, "n2"), "renewed")


def test_a_renew_naming_every_sliver_of_a_lease_renews_and_answers_them_all(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    lease = _book(aggregate, pki, ("n1", "n2"))
    later = lease.end + timedelta(hours=1)
    answer = aggregate.renew(alice.chain, [s.urn for s in lease.slivers], [alice.slice_cred], later, {})
    assert sorted(item["geni_sliver_urn"] for item in answer) == sorted(s.urn for s in lease.slivers)
    (renewed,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert renewed.end == later and {sliver.end for sliver in renewed.slivers} == {later}


@pytest.mark.parametrize("options", [{}, BEST_EFFORT], ids=["all-or-nothing", "best-effort"])
def test_a_provision_of_one_sliver_of_a_lease_is_refused_and_provisions_nothing(
    aggregate: Aggregate, pki: DemoPki, options: dict[str, bool]
) -> None:
    alice = pki.users["alice"]
    lease = _book(aggregate, pki, ("n1", "n2"))
    refusal = _refused_changing_nothing(
        aggregate, lambda: aggregate.provision(alice.chain, [_sliver_of(lease, "n2")], [alice.slice_cred], options)
    )
    _check_refusal(refusal, lease, _sliver_of(lease, "n1"), "provisioned")
    aggregate.provision(alice.chain, [s.urn for s in lease.slivers], [alice.slice_cred], {})
    (provisioned,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert provisioned.state == "provisioned"


@pytest.mark.parametrize("action", ["geni_stop", "geni_restart", "geni_start"])
def test_an_operational_action_on_one_sliver_of_a_lease_is_refused_and_switches_nothing(
    aggregate: Aggregate, pki: DemoPki, action: str
) -> None:
    alice = pki.users["alice"]
    lease = _book(aggregate, pki, ("n1", "n2"), running=True)  # its slot runs now
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    refusal = _refused_changing_nothing(
        aggregate,
        lambda: aggregate.perform_operational_action(
            alice.chain, [_sliver_of(lease, "n1")], [alice.slice_cred], action, BEST_EFFORT
        ),
    )
    _check_refusal(refusal, lease, _sliver_of(lease, "n2"), "started, stopped and restarted")
    answer = aggregate.perform_operational_action(
        alice.chain, [s.urn for s in lease.slivers], [alice.slice_cred], action, {}
    )
    assert sorted(item["geni_sliver_urn"] for item in answer) == sorted(s.urn for s in lease.slivers)


# -- what still goes through: the refusal is only for a lease named in part ----------------------------------------
def _slivers_of(*leases: LeaseRecord) -> list[str]:
    return [sliver.urn for lease in leases for sliver in lease.slivers]


def _renew_provision_and_delete(
    aggregate: Aggregate, pki: DemoPki, leases: list[LeaseRecord], named: list[str]
) -> None:
    """Renew, Provision and Delete, each naming ``named``, each acting on every one of ``leases`` (as stored after)."""
    alice = pki.users["alice"]
    later = max(lease.end for lease in leases) + timedelta(hours=1)
    aggregate.renew(alice.chain, named, [alice.slice_cred], later, {})
    renewed = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert sorted(lease.id for lease in renewed) == sorted(lease.id for lease in leases)
    assert {sliver.end for lease in renewed for sliver in lease.slivers} == {later}
    aggregate.provision(alice.chain, named, [alice.slice_cred], {})
    assert {lease.state for lease in aggregate.bookings.leases(slice_urn=pki.slice_urn)} == {"provisioned"}
    aggregate.delete(alice.chain, named, [alice.slice_cred], {})
    assert aggregate.bookings.leases(slice_urn=pki.slice_urn) == []


def test_every_sliver_of_two_leases_in_one_call_acts_on_both(aggregate: Aggregate, pki: DemoPki) -> None:
    two_nodes, one_node = _book(aggregate, pki, ("n1", "n2")), _book(aggregate, pki, ("n3",))
    _renew_provision_and_delete(aggregate, pki, [two_nodes, one_node], _slivers_of(two_nodes, one_node))


def test_a_sliver_named_twice_with_the_rest_of_its_lease_acts_on_the_lease(aggregate: Aggregate, pki: DemoPki) -> None:
    lease = _book(aggregate, pki, ("n1", "n2"))
    _renew_provision_and_delete(aggregate, pki, [lease], [_sliver_of(lease, "n1"), *_slivers_of(lease)])


def test_a_sliver_of_a_cancelled_lease_named_with_a_whole_lease_leaves_the_cancelled_one_as_it_was(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """A cancelled lease is no longer acted on: its sliver named too does not make the live lease's call partial."""
    alice = pki.users["alice"]
    gone = _book(aggregate, pki, ("n3",))
    aggregate.delete(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    (cancelled,) = aggregate.bookings.leases(active_only=False)
    lease = _book(aggregate, pki, ("n1", "n2"))
    _renew_provision_and_delete(aggregate, pki, [lease], [*_slivers_of(lease), *_slivers_of(gone)])
    assert [stored for stored in aggregate.bookings.leases(active_only=False) if stored.id == gone.id] == [cancelled]


def test_update_users_naming_one_sliver_of_a_lease_sets_the_slices_users(aggregate: Aggregate, pki: DemoPki) -> None:
    """geni_update_users is not refused for naming part of a lease: the users are the slice's (the testbed of the
    leases named gets them), and the lease itself is left as it was."""
    alice = pki.users["alice"]
    alice_urn = alice.chain[0].urn or ""
    lease = _book(aggregate, pki, ("n1", "n2"))
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    (provisioned,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOfAlice alice"
    named = _sliver_of(lease, "n1")
    answer = aggregate.perform_operational_action(
        alice.chain,
        [named],
        [alice.slice_cred],
        "geni_update_users",
        {"geni_users": [{"urn": alice_urn, "keys": [key]}]},
    )
    assert [item["geni_sliver_urn"] for item in answer] == [named]
    assert [(user.user_urn, user.ssh_keys) for user in aggregate.slices.get(pki.slice_urn).users] == [
        (alice_urn, (key,))
    ]
    assert aggregate.bookings.leases(slice_urn=pki.slice_urn) == [provisioned]


def test_save_image_naming_one_sliver_of_a_lease_is_not_refused_as_part_of_the_lease(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """sfa_omf_save_image saves one container, so naming one sliver is how it is called: this aggregate runs no
    containers and says so (UNSUPPORTED), not that the lease is named in part. A save that runs needs a lease's
    containers and their node (tests/images/test_node_actions.py); it takes no path through the refusal."""
    alice = pki.users["alice"]
    lease = _book(aggregate, pki, ("n1", "n2"))
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    refusal = _refused_changing_nothing(
        aggregate,
        lambda: aggregate.perform_operational_action(
            alice.chain, [_sliver_of(lease, "n1")], [alice.slice_cred], "sfa_omf_save_image", {"sfa_omf_label": "x"}
        ),
    )
    assert refusal.code == GeniCode.UNSUPPORTED and "runs no containers" in refusal.message, refusal.message
