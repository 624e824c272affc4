"""Pools and nodes; the schema itself (migrations match the models; PostgreSQL forbids overlaps by itself)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, event, func, insert, select, text
from sqlalchemy.exc import IntegrityError

from sfa_omf.calendar.database import Database, is_overlap_violation
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.models import Base, Lease, Node, Sliver
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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"component_name": "n\x07"}, "component_name holds the control character U+0007"),
        ({"component_id": node_urn("z\x00")}, "component_id holds the control character U+0000"),
        ({"hardware_type": "pc\x7f"}, "hardware_type holds the control character U+007F"),
        ({"properties": {"ro\x1bom": "B12"}}, "a property name holds the control character U+001B"),
        ({"properties": {"room": "B\x0c12"}}, "property 'room' holds the control character U+000C"),
        ({"properties": {"load": float("nan")}}, "property 'load' is nan: give a finite number"),
        ({"disk_images": ({"name": "ubu\x00ntu"},)}, "disk image name holds the control character U+0000"),
        ({"component_name": "n" * 201}, "component_name is 201 characters long: at most 200"),
        ({"hardware_type": "h" * 101}, "hardware_type is 101 characters long: at most 100"),
        ({"grain_s": 2**31}, "grain 2147483648 s: a node's booking slot must be from 1 s to 31536000 s"),
        ({"grain_s": 0}, "grain 0 s"),
    ],
)
def test_add_node_refuses_what_a_row_or_an_advertisement_cannot_hold(
    calendar: Calendar, change: dict[str, object], message: str
) -> None:
    """The same checks as the bulk import (inventory.check_node_fields): the OAR import adds nodes through here."""
    spec = NodeSpec(**{"component_id": node_urn("z"), "component_name": "z", **change})  # type: ignore[arg-type]
    before = calendar.inventory.list_nodes()
    with pytest.raises(GeniError) as refusal:
        calendar.inventory.add_node(spec)
    assert refusal.value.reason == Reason.BAD_ARGS and message in refusal.value.message
    assert f"node {spec.component_id!r}: " in refusal.value.message  # which node, when the OAR import adds many
    assert calendar.inventory.list_nodes() == before


def test_update_node_refuses_control_characters(calendar: Calendar) -> None:
    with pytest.raises(GeniError) as refusal:
        calendar.inventory.update_node(node_urn("n1"), "n1", {"network_address": "n1\x00"})
    assert (
        f"node {node_urn('n1')!r}: property 'network_address' holds the control character U+0000"
        in refusal.value.message
    )
    assert calendar.inventory.get_node(node_urn("n1")).properties == {}


@pytest.mark.parametrize(
    ("name", "description", "message"),
    [
        ("", "", "a pool needs a name"),
        (" ", "", "a pool needs a name"),
        ("la\x01b", "", "the pool name holds the control character U+0001"),
        ("lab", "x\x00", "the pool description holds the control character U+0000"),
        ("p" * 5000, "", "the pool name is 5000 characters long: at most 100"),
    ],
)
def test_create_pool_refuses_bad_names(calendar: Calendar, name: str, description: str, message: str) -> None:
    with pytest.raises(GeniError) as refusal:
        calendar.inventory.create_pool(name, description=description)
    assert refusal.value.reason == Reason.BAD_ARGS and message in refusal.value.message
    assert [pool.name for pool in calendar.inventory.list_pools()] == ["default"]


def test_remove_and_a_concurrent_booking_on_postgresql_one_wins_cleanly(tmp_path: Path) -> None:
    """Two real sessions: right after node remove counted the node's bookings (none), a booking of the node runs in
    another thread. Remove locks the node row first, as a booking does: the booking waits for the remove and then
    finds no node. (Unlocked, the booking committed between the count and the delete and was deleted with the node:
    a lease left allocated with no sliver.)"""
    calendar = Calendar(fresh_database("postgresql", tmp_path), Policy())
    calendar.add_nodes("n1")
    remover = Database(calendar.database.url)
    watcher = create_engine(calendar.database.url)
    booking: dict[str, object] = {}

    def book() -> None:
        try:
            booking["leases"] = calendar.bookings.book(
                SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]
            )
        except GeniError as refusal:
            booking["refusal"] = refusal

    booker = threading.Thread(target=book)

    def waiting_on_a_lock() -> bool:
        with watcher.connect() as connection:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            return bool(connection.execute(text(query)).scalar())

    def after_count(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "count(sliver.id)" not in statement or booker.is_alive() or booking:
            return
        booker.start()
        deadline = time.monotonic() + 60  # only against a hang: the booking ends or waits within milliseconds
        while booker.is_alive() and not waiting_on_a_lock():
            assert time.monotonic() < deadline, "the booking neither ended nor waited for a lock"
            time.sleep(0.01)

    event.listen(remover.engine, "after_cursor_execute", after_count)
    try:
        removed: GeniError | None = None
        try:
            Inventory(remover).remove_node(node_urn("n1"))
        except GeniError as refusal:
            removed = refusal
        booker.join(60)
        assert not booker.is_alive()
    finally:
        remover.dispose()
        watcher.dispose()
    with calendar.database.read() as session:
        slivers_of_leases = dict(
            session.execute(
                select(Lease.id, func.count(Sliver.id))
                .outerjoin(Sliver, Sliver.lease_id == Lease.id)
                .group_by(Lease.id)
            ).all()
        )
    nodes = [node.component_id for node in calendar.inventory.list_nodes()]
    if removed is None:  # the remove won: no node, no lease
        assert isinstance(booking.get("refusal"), GeniError) and nodes == [] and slivers_of_leases == {}
    else:  # the booking won: its lease holds the node, which stays
        assert "booking" in removed.message and nodes == [node_urn("n1")] and list(slivers_of_leases.values()) == [1]
