"""Bookings.leases, Inventory.list_nodes and Slices.get read with column queries; they must answer exactly what the
ORM versions answered (kept here as the oracles), for every filter, on every kind of calendar content (SQLite and
PostgreSQL)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from sfa_omf.calendar.booking import ACTIVE_LEASE_STATES, BookingConflict, lease_record
from sfa_omf.calendar.external import ExternalHold, ExternalHolds
from sfa_omf.calendar.inventory import node_record
from sfa_omf.calendar.models import Lease, Node, Pool, Slice, Sliver
from sfa_omf.calendar.queries import to_s
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeRecord, NodeSpec
from sfa_omf.calendar.slices import Slices
from sfa_omf.calendar.slices import _record as orm_slice_record
from sfa_omf.errors import GeniError, Reason
from tests.calendar.conftest import NOW, SLICE_EXPIRES, Calendar, at, node_urn

NODES = [f"n{index}" for index in range(6)]
SLICES = [f"urn:publicid:IDN+testbed+slice+s{index}" for index in range(3)]


def orm_leases(
    calendar: Calendar,
    node: str | None = None,
    slice_urn: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    active_only: bool = True,
) -> list[LeaseRecord]:
    """Bookings.leases as it was: ORM objects loaded with selectinload, turned into records."""
    with calendar.database.read() as session:
        query = (
            select(Lease)
            .options(selectinload(Lease.slivers).selectinload(Sliver.node))
            .order_by(Lease.start_s, Lease.id)
        )
        if active_only:
            query = query.where(Lease.state.in_(ACTIVE_LEASE_STATES))
        if slice_urn is not None:
            query = query.join(Slice).where(Slice.urn == slice_urn)
        if start is not None:
            query = query.where(Lease.end_s > to_s(start))
        if end is not None:
            query = query.where(Lease.start_s < to_s(end))
        if node is not None:
            query = query.where(Lease.id.in_(select(Sliver.lease_id).join(Node).where(Node.component_id == node)))
        return [lease_record(lease) for lease in session.scalars(query)]


def fill_randomly(calendar: Calendar, rng: random.Random) -> None:
    """Leases of one and several nodes, in every state (allocated, provisioned, cancelled, expired, ended), with
    client labels and images, plus external holds and a lease whose slivers were removed."""
    calendar.add_nodes("n0", "n4", "n5")  # the fixture made n1-n3
    bookings = calendar.bookings
    for _ in range(40):
        first = rng.randrange(0, 48)
        length = rng.randrange(1, 5)
        nodes = rng.sample(NODES, rng.randrange(1, 4))
        requests = [
            BookingRequest(
                node_urn(name), at(first / 2), at((first + length) / 2), client_id=f"c-{name}", disk_image="img"
            )
            for name in nodes
        ]
        try:
            result = bookings.book(rng.choice(SLICES), SLICE_EXPIRES, requests, owner_urn="urn:o")
        except BookingConflict:
            continue
        lease = result.leases[0]
        action = rng.randrange(5)
        if action == 0:
            bookings.cancel(lease.id)
        elif action == 1:
            bookings.mark_provisioned(lease.id)
        elif action == 2:
            bookings.set_operational_state(lease.id, "geni_notready")
    calendar.now = NOW + timedelta(minutes=11)
    bookings.expire_unprovisioned()  # allocations older than 10 minutes expire
    calendar.now = at(12)
    bookings.retire_ended()
    ExternalHolds(calendar.database, "testbed").sync(
        "oar", [ExternalHold("9", (node_urn("n5"),), at(30), at(31) + timedelta(seconds=7), "job 9")]
    )
    with calendar.database.write() as session:
        session.add(Lease(id="no-slivers", slice_id=1, owner_urn="", start_s=to_s(at(5)), end_s=to_s(at(6))))


def test_the_column_query_answers_what_the_orm_did(calendar: Calendar) -> None:
    fill_randomly(calendar, random.Random(15))
    everything = calendar.bookings.leases(active_only=False)
    assert {lease.state for lease in everything} >= {"allocated", "provisioned", "cancelled", "expired", "ended"}
    assert any(len(lease.slivers) > 1 for lease in everything) and any(not lease.slivers for lease in everything)
    filters: list[dict[str, object]] = [{}, {"active_only": False}]
    filters += [{"node": node_urn(name), "active_only": active} for name in ("n0", "n5", "nx") for active in (1, 0)]
    filters += [{"slice_urn": urn} for urn in [*SLICES, "urn:publicid:IDN+testbed+slice+external-oar"]]
    # Every half hour is some lease's start or end: the window filters are checked at their edges.
    filters += [{"start": at(h / 2), "active_only": h % 2 == 0} for h in range(0, 52, 3)]
    filters += [{"end": at(h / 2), "active_only": h % 2 == 0} for h in range(0, 52, 5)]
    filters += [{"start": at(4), "end": at(8), "slice_urn": SLICES[0], "node": node_urn("n1"), "active_only": False}]
    for wanted in filters:
        arguments = {key: bool(value) if key == "active_only" else value for key, value in wanted.items()}
        assert calendar.bookings.leases(**arguments) == orm_leases(calendar, **arguments), wanted  # type: ignore[arg-type]


def orm_nodes(
    calendar: Calendar, pool: str | None = None, federated_only: bool = False, component_ids: set[str] | None = None
) -> list[NodeRecord]:
    """Inventory.list_nodes as it was: ORM objects turned into records."""
    with calendar.database.read() as session:
        query = select(Node).join(Pool).order_by(Node.component_id)
        if component_ids is not None:
            query = query.where(Node.component_id.in_(component_ids))
        if pool is not None:
            query = query.where(Pool.name == pool)
        if federated_only:
            query = query.where(Pool.federated.is_(True))
        return [node_record(node) for node in session.scalars(query)]


def test_list_nodes_answers_what_the_orm_did(calendar: Calendar) -> None:
    inventory = calendar.inventory
    inventory.create_pool("lab", federated=False)
    inventory.add_node(
        NodeSpec(
            node_urn("x1"),
            "x1",
            pool="lab",
            hardware_type="usrp",
            exclusive=False,
            properties={"room": "B12", "cores": 4, "tags": ["a", "b"]},
            disk_images=({"name": "gnuradio", "os": "Linux"}, {"name": "plain"}),
            grain_s=900,
        )
    )
    inventory.set_state(node_urn("n2"), "maintenance")
    assert len(inventory.list_nodes()) == 4
    filters: list[dict[str, object]] = [{}, {"federated_only": True}, {"pool": "lab"}, {"pool": "nowhere"}]
    filters += [{"component_ids": {node_urn("x1"), node_urn("n2"), node_urn("zz")}}, {"component_ids": set()}]
    for wanted in filters:
        assert inventory.list_nodes(**wanted) == orm_nodes(calendar, **wanted), wanted  # type: ignore[arg-type]


def test_slices_get_answers_what_the_orm_did(calendar: Calendar) -> None:
    slices = Slices(calendar.database)
    urn = "urn:publicid:IDN+testbed+slice+users"
    calendar.bookings.book(urn, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    calendar.bookings.book(SLICES[0], SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(1), at(2))])
    # Mixed case and punctuation: the order must be Python's, whatever the database's collation.
    users = {
        "urn:publicid:IDN+testbed+user+bob": ["ssh-rsa B bob", "ssh-ed25519 A bob"],
        "urn:publicid:IDN+testbed+user+Alice": ["ssh-rsa C alice"],
        "urn:publicid:IDN+testbed+user+_x": [],
        "urn:publicid:IDN+testbed+user+a-b": ["ssh-rsa D ab"],
    }
    slices.update_users(urn, users)
    slices.set_shut_down(SLICES[0], True)
    for slice_urn in (urn, SLICES[0]):
        with calendar.database.read() as session:
            query = select(Slice).where(Slice.urn == slice_urn).options(selectinload(Slice.users))
            expected = orm_slice_record(session.scalars(query).one())
        assert slices.get(slice_urn) == expected
    assert [user.user_urn for user in slices.get(urn).users] == sorted(users)
    with pytest.raises(GeniError) as missing:
        slices.get("urn:publicid:IDN+testbed+slice+none")
    assert missing.value.reason == Reason.NOT_FOUND
