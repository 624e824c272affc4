"""Describe reads a slice's leases, their nodes and the slice's users in one statement (issue 15): on PostgreSQL the
nodes, then the users, were round trips of their own. The view it reads is the one the three separate reads
(leases, nodes, users) gave."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.records import BookingRequest, ManifestNode, NodeSpec, SliceView
from sfa_omf.times import utcnow
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.calendar.test_renew_path import _statements_starting
from tests.conftest import DemoPki

GENI_V3 = {"geni_rspec_version": {"type": "GENI", "version": "3"}}
MANIFEST_NS = "http://www.geni.net/resources/rspec/3"
# A capital letter sorts before alice's in Python's code points, after it in many collations (en_US...): users are
# ordered by Python, not by the database (test_the_users_are_ordered_by_python_whatever_order_the_rows_come_in).
BOB = {
    "urn:publicid:IDN+testbed+user+Bob": [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOfBob bob",
        "ssh-rsa AAAAB3 bob@laptop",
    ]
}


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    nodes = (
        NodeSpec(node_urn("n1"), "first.node"),
        NodeSpec(node_urn("n2"), "second.node", exclusive=False),
        NodeSpec(node_urn("n3"), "third.node"),  # booked by another slice only
        NodeSpec(node_urn("n4"), "fourth.node"),
        NodeSpec(node_urn("n5"), "fifth.node"),
    )
    with aggregate_on(request.param, tmp_path, pki, *nodes) as made:
        yield made


def _book(aggregate: Aggregate, pki: DemoPki) -> list[str]:
    """Two leases of the demo slice (n1, then n2 an hour later; alice with a key, Bob with two), one of another
    slice on n3: the demo slice's sliver URNs, oldest first."""
    alice = pki.users["alice"]
    expires = aggregate.authorize("Describe", alice.chain, [alice.slice_cred], pki.slice_urn, {}).expires
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    urns = []
    for offset, node in ((0, "n1"), (1, "n2")):
        at = start + timedelta(hours=offset)
        (lease,) = aggregate.bookings.book(
            pki.slice_urn,
            expires,
            [BookingRequest(node_urn(node), at, at + timedelta(hours=1))],
            owner_urn=alice.chain[0].urn,
            users={alice.chain[0].urn: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOfAlice alice"], **BOB},
        ).leases
        urns += [sliver.urn for sliver in lease.slivers]
    aggregate.bookings.book(
        "urn:publicid:IDN+testbed+slice+other",
        expires,
        [BookingRequest(node_urn("n3"), start, start + timedelta(hours=1))],
    )
    return urns


def _three_reads(aggregate: Aggregate, slice_urn: str, sliver_urns: set[str] | None) -> SliceView:
    """The view as Describe read it before: the leases, then their nodes, then the slice's users."""
    leases = aggregate.bookings.leases(slice_urn=slice_urn)
    if sliver_urns is not None:
        leases = [lease for lease in leases if any(s.urn in sliver_urns for s in lease.slivers)]
    wanted = {sliver.node for lease in leases for sliver in lease.slivers}
    listed = aggregate.inventory.list_nodes(component_ids=wanted) if wanted else []
    nodes = {node.component_id: ManifestNode(node.component_name, node.exclusive) for node in listed}
    users = aggregate.slices.get(slice_urn).users if leases else ()
    return SliceView(leases=tuple(leases), nodes=nodes, users=users)


def test_the_view_is_what_three_reads_gave(aggregate: Aggregate, pki: DemoPki) -> None:
    first, second = _book(aggregate, pki)
    for named in (None, {first}, {second}, {first, second}):
        view = aggregate._slice_view(pki.slice_urn, named)
        assert view == _three_reads(aggregate, pki.slice_urn, named), named
    whole = aggregate._slice_view(pki.slice_urn, None)
    assert whole.nodes == {
        node_urn("n1"): ManifestNode("first.node", True),
        node_urn("n2"): ManifestNode("second.node", False),
    }
    assert [(user.user_urn, user.ssh_keys) for user in whole.users] == [
        ("urn:publicid:IDN+testbed+user+Bob", tuple(BOB["urn:publicid:IDN+testbed+user+Bob"])),
        (pki.users["alice"].chain[0].urn, ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOfAlice alice",)),
    ]
    only_second = aggregate._slice_view(pki.slice_urn, {second})
    assert [sliver.urn for lease in only_second.leases for sliver in lease.slivers] == [second]
    assert only_second.nodes == {node_urn("n2"): ManifestNode("second.node", False)}


def test_a_slice_without_leases_here_reads_no_users(aggregate: Aggregate, pki: DemoPki) -> None:
    with _statements_starting(aggregate.database, "") as sent:
        view = aggregate._slice_view(pki.slice_urn, None)
    assert view == SliceView(leases=(), nodes={}, users=())
    assert len(sent) == 1, sent


def test_a_slice_whose_leases_were_all_cancelled_shows_no_users(aggregate: Aggregate, pki: DemoPki) -> None:
    """The slice and its users are still recorded, but with no active lease the manifest has no user to show."""
    _book(aggregate, pki)
    for lease in aggregate.bookings.leases(slice_urn=pki.slice_urn):
        aggregate.bookings.cancel(lease.id)
    assert aggregate.slices.get(pki.slice_urn).users  # (still recorded)
    assert aggregate._slice_view(pki.slice_urn, None) == SliceView(leases=(), nodes={}, users=())
    assert aggregate.bookings.slice_view(pki.slice_urn).users == aggregate.slices.get(pki.slice_urn).users


def test_a_slice_without_users_shows_its_leases(aggregate: Aggregate, pki: DemoPki) -> None:
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    other = "urn:publicid:IDN+testbed+slice+other"
    aggregate.bookings.book(
        other, start + timedelta(days=1), [BookingRequest(node_urn("n3"), start, start + timedelta(hours=1))]
    )
    view = aggregate._slice_view(other, None)
    assert [sliver.node for lease in view.leases for sliver in lease.slivers] == [node_urn("n3")]
    assert view.users == ()
    assert view == _three_reads(aggregate, other, None)


def test_describe_reads_the_leases_their_nodes_and_the_users_in_one_statement(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    _book(aggregate, pki)
    alice = pki.users["alice"]
    aggregate.describe(alice.chain, [pki.slice_urn], [alice.slice_cred], GENI_V3)  # maps alice's login, once
    with _statements_starting(aggregate.database, "") as run:
        answer = aggregate.describe(alice.chain, [pki.slice_urn], [alice.slice_cred], GENI_V3)
    sent = [" ".join(statement.split()) for statement in run]
    reads_of_leases = [statement for statement in sent if " FROM lease " in f" {statement} "]
    reads_of_nodes_alone = [statement for statement in sent if statement.upper().startswith("SELECT NODE.")]
    assert len(reads_of_leases) == 1, sent
    assert "FROM slice_user" in reads_of_leases[0], sent
    assert reads_of_nodes_alone == [], sent
    # The slice's leases with their nodes and its users; then Bob's and alice's logins (a login per user).
    assert len(sent) == 3, sent
    assert all("FROM account_mapping" in statement for statement in sent[1:]), sent
    manifest = etree.fromstring(answer["geni_rspec"].encode())
    hosts = {
        node.get("component_id"): node.find(f"{{{MANIFEST_NS}}}host").get("name")
        for node in manifest.iter(f"{{{MANIFEST_NS}}}node")
    }
    assert hosts == {node_urn("n1"): "first.node", node_urn("n2"): "second.node"}
    exclusive = {node.get("component_id"): node.get("exclusive") for node in manifest.iter(f"{{{MANIFEST_NS}}}node")}
    assert exclusive == {node_urn("n1"): "true", node_urn("n2"): "false"}
    assert len(answer["geni_slivers"]) == 2


def test_the_leases_and_their_slivers_come_in_the_leases_read_order(aggregate: Aggregate, pki: DemoPki) -> None:
    """Leases by start then id, each lease's slivers in the order they were made: a lease of three slivers, and two
    leases with the same start (their order is their ids'), as ``leases(slice_urn=...)`` reads them."""
    expires = utcnow() + timedelta(days=1)
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    later = start + timedelta(hours=1)
    book = aggregate.bookings.book
    (three,) = book(
        pki.slice_urn,
        expires,
        [BookingRequest(node_urn(n), later, later + timedelta(hours=1)) for n in ("n5", "n1", "n4")],
    ).leases
    for node in ("n2", "n3"):  # two leases of the same start (a lease per booking)
        book(pki.slice_urn, expires, [BookingRequest(node_urn(node), start, start + timedelta(hours=1))])
    view = aggregate.bookings.slice_view(pki.slice_urn)
    assert list(view.leases) == aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert [lease.start for lease in view.leases] == [start, start, later]
    first_two = [lease.id for lease in view.leases[:2]]
    assert first_two == sorted(first_two)
    assert view.leases[2].id == three.id
    assert [sliver.urn for sliver in view.leases[2].slivers] == [sliver.urn for sliver in three.slivers]
    assert len(three.slivers) == 3


def test_the_users_are_ordered_by_python_whatever_order_the_rows_come_in(
    aggregate: Aggregate, pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statement orders the leases' rows only: the users' rows come in whatever order the database gives. Given
    them backwards (descending code points), the view still lists the users by URN as Python sorts them, as
    Slices.get does."""
    _book(aggregate, pki)
    expected = aggregate.bookings.slice_view(pki.slice_urn)
    assert [user.user_urn for user in expected.users] == ["urn:publicid:IDN+testbed+user+Bob", alice_urn(pki)]
    database = aggregate.bookings.database
    read = database.fetch_all

    def users_backwards(statement: Any, parameters: Any = None) -> list[Any]:
        rows = list(read(statement, parameters))
        users = sorted((row for row in rows if row[0] is None), key=lambda row: row[1], reverse=True)
        assert len(users) == 2, rows  # alice and Bob
        return [*users, *(row for row in rows if row[0] is not None)]

    monkeypatch.setattr(database, "fetch_all", users_backwards)
    assert aggregate.bookings.slice_view(pki.slice_urn) == expected


def alice_urn(pki: DemoPki) -> str:
    return pki.users["alice"].chain[0].urn
