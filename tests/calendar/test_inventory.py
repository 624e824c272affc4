"""Pools and nodes; the schema itself (migrations match the models; PostgreSQL forbids overlaps by itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from sfa_omf.calendar.database import Database, is_overlap_violation
from sfa_omf.calendar.models import Base, Node, Sliver
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.errors import GeniCode, GeniError, Reason
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, fresh_database, node_urn


def test_nodes_and_pools(calendar: Calendar) -> None:
    calendar.inventory.create_pool("private", federated=False, description="local users only")
    calendar.inventory.add_node(
        NodeSpec(
            node_urn("p1"),
            "p1",
            pool="private",
            hardware_type="cluster",
            properties={"cores": 8},
            disk_images=({"name": "ubuntu", "os": "Linux", "version": "24.04"},),
            grain_s=3600,
        )
    )
    pools = {pool.name: pool for pool in calendar.inventory.list_pools()}
    assert (pools["default"].node_count, pools["private"].node_count, pools["private"].federated) == (3, 1, False)
    node = calendar.inventory.get_node(node_urn("p1"))
    assert (node.pool, node.grain_s, node.properties, node.disk_images[0]["name"]) == (
        "private",
        3600,
        {"cores": 8},
        "ubuntu",
    )
    federated = [node.component_id for node in calendar.inventory.list_nodes(federated_only=True)]
    assert node_urn("p1") not in federated and node_urn("n1") in federated


def test_duplicates_and_unknowns(calendar: Calendar) -> None:
    with pytest.raises(GeniError) as refusal:
        calendar.inventory.add_node(NodeSpec(node_urn("n1"), "n1"))
    assert refusal.value.reason == Reason.ALREADY_EXISTS and refusal.value.code == GeniCode.ALREADYEXISTS
    with pytest.raises(GeniError) as refusal:
        calendar.inventory.add_node(NodeSpec(node_urn("z"), "z", pool="nope"))
    assert refusal.value.reason == Reason.NOT_FOUND
    with pytest.raises(GeniError):
        calendar.inventory.create_pool("default")
    with pytest.raises(GeniError) as refusal:
        calendar.inventory.set_state(node_urn("n1"), "broken")
    assert refusal.value.reason == Reason.BAD_ARGS


def test_move_between_pools_checks_where_it_comes_from(calendar: Calendar) -> None:
    calendar.inventory.create_pool("private", federated=False)
    moved = calendar.inventory.move_node(node_urn("n1"), "private", from_pool="default")
    assert moved.pool == "private" and not moved.federated
    with pytest.raises(GeniError) as refusal:
        calendar.inventory.move_node(node_urn("n1"), "default", from_pool="default")
    assert "is in pool 'private', not 'default'" in refusal.value.message
    assert calendar.inventory.get_node(node_urn("n1")).pool == "private"


def test_remove_refuses_a_booked_node(calendar: Calendar) -> None:
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    with pytest.raises(GeniError) as refusal:
        calendar.inventory.remove_node(node_urn("n1"))
    assert "booking" in refusal.value.message
    calendar.bookings.cancel(lease.id)
    calendar.inventory.remove_node(node_urn("n1"))
    assert node_urn("n1") not in [node.component_id for node in calendar.inventory.list_nodes()]


def test_migrations_match_the_models(database: Database) -> None:
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_postgresql_itself_forbids_overlapping_slivers(tmp_path: Path) -> None:
    """Bypass the application and write rows directly: the database must refuse the second one.
    (SQLite has no exclusion constraint; its guarantee is the write lock, proven in test_concurrency.)"""
    calendar = Calendar(fresh_database("postgresql", tmp_path), Policy())
    calendar.add_nodes("n1")
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(3))]).leases
    with pytest.raises(IntegrityError) as violation, calendar.database.write() as session:
        node_id = session.scalar(select(Node.id).where(Node.component_id == node_urn("n1")))
        session.execute(
            insert(Sliver).values(
                urn="urn:x",
                lease_id=lease.id,
                node_id=node_id,
                start_s=int(at(2).timestamp()),
                end_s=int(at(4).timestamp()),
                holds_node=True,
                allocation_state="geni_allocated",
                operational_state="geni_pending_allocation",
                expires_s=0,
            )
        )
    assert is_overlap_violation(violation.value)
