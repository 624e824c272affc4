"""Column queries for inventories that show nodes with their leases (the omf_sfa-compatible REST inventory of the
OMF backend): plain rows, no ORM object, one query per question."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.external import EXTERNAL_STATE
from sfa_omf.calendar.models import Lease, Node, Slice, Sliver
from sfa_omf.calendar.queries import from_s


@dataclass(frozen=True)
class NodeRow:
    """A node as an inventory shows it."""

    component_id: str
    component_name: str
    hardware_type: str
    exclusive: bool
    properties: dict[str, Any]
    state: str


@dataclass(frozen=True)
class LeaseRow:
    """A lease with its slice, its booker and the nodes it holds (component id, component name, the node's
    recorded ``uuid`` property or "")."""

    id: str
    slice_urn: str
    slice_expires: datetime
    owner_urn: str
    start: datetime
    end: datetime
    state: str
    client_id: str
    nodes: tuple[tuple[str, str, str], ...]


def node_rows(database: Database, name: str | None = None) -> list[NodeRow]:
    """Every node (or those whose component name is ``name``), by component id."""
    query = select(
        Node.component_id, Node.component_name, Node.hardware_type, Node.exclusive, Node.properties, Node.state
    ).order_by(Node.component_id)
    if name is not None:
        query = query.where(Node.component_name == name)
    with database.read() as session:
        return [NodeRow(*row) for row in session.execute(query)]


def lease_rows(
    database: Database,
    nodes: list[str] | None = None,
    slice_urn: str | None = None,
    lease_id: str | None = None,
    ending_after_s: int | None = None,
) -> list[LeaseRow]:
    """Leases booked through sfa-omf (not the testbed's own reservations mirrored as external holds), oldest
    first, filtered by the component ids they hold, their slice or their id, and (``ending_after_s``) to those
    whose window ends after that time (epoch seconds): a node's recent leases, not its whole history."""
    query = (
        select(
            Lease.id,
            Slice.urn,
            Slice.expires_s,
            Lease.owner_urn,
            Lease.start_s,
            Lease.end_s,
            Lease.state,
            Lease.client_id,
            Node.component_id,
            Node.component_name,
            Node.properties,
        )
        .join(Slice, Lease.slice_id == Slice.id)
        .join(Sliver, Sliver.lease_id == Lease.id)
        .join(Node, Sliver.node_id == Node.id)
        .where(Lease.state != EXTERNAL_STATE)
        .order_by(Lease.start_s, Lease.id, Node.component_id)
    )
    if slice_urn is not None:
        query = query.where(Slice.urn == slice_urn)
    if lease_id is not None:
        query = query.where(Lease.id == lease_id)
    if ending_after_s is not None:
        query = query.where(Lease.end_s > ending_after_s)
    if nodes is not None:
        held = select(Sliver.lease_id).join(Node, Sliver.node_id == Node.id).where(Node.component_id.in_(nodes))
        if ending_after_s is not None:
            # A sliver's window is its lease's (renewals move both): the node's index (node, start, end) then
            # checks the end itself, and the older slivers' table rows are not read.
            held = held.where(Sliver.end_s > ending_after_s)
        query = query.where(Lease.id.in_(held))
    leases: dict[str, list[Any]] = {}
    members: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    with database.read() as session:
        for row in session.execute(query):
            leases.setdefault(row[0], list(row[:8]))
            members[row[0]].append((row[8], row[9], str((row[10] or {}).get("uuid") or "")))
    return [
        LeaseRow(
            id=lease,
            slice_urn=values[1],
            slice_expires=from_s(values[2]),
            owner_urn=values[3],
            start=from_s(values[4]),
            end=from_s(values[5]),
            state=values[6],
            client_id=values[7],
            nodes=tuple(members[lease]),
        )
        for lease, values in leases.items()
    ]
