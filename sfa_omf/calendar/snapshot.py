"""The calendar as an advertisement shows it, read in one go: the federated nodes, and every lease and held window
that ends after a moment, with column queries into plain records (no ORM objects: an advertisement of 10 000 nodes
reads about 100 000 slivers) and times kept as epoch seconds until the writer needs them.

Two queries whatever the size: the nodes, and the slivers joined to their leases and slices. From the second come
both the bookings to advertise (active leases) and the windows that hold nodes (bookings and external holds), which
``free_windows`` and ``busy_now`` compute from, exactly as calendar/availability.py does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.intervals import Interval, free_windows, merge
from sfa_omf.calendar.inventory import NODE_COLUMNS, node_record_of_row
from sfa_omf.calendar.models import Lease, Node, Pool, Slice, Sliver
from sfa_omf.calendar.records import NodeRecord

ACTIVE_LEASE_STATES = ("allocated", "provisioned")  # as calendar/booking.py: what Bookings.leases() lists


class LeaseRow(NamedTuple):
    """An active lease: its window in epoch seconds and the component ids of its federated nodes, sorted. (A named
    tuple, not a dataclass: a snapshot makes one per lease, 100 000 for a large calendar.)"""

    id: str
    slice_urn: str
    start_s: int
    end_s: int
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class CalendarSnapshot:
    """What the calendar held at ``generation`` for everything ending after ``after_s``.

    ``nodes``: the federated nodes, by component id. ``leases``: active leases ending after ``after_s``, with their
    federated nodes (a lease of none is left out). ``held``: per federated node's component id, the windows
    (start_s, end_s) that hold the node, ending after ``after_s``. Leases and windows come in no particular order:
    their users order them (the RSpec writer sorts the bookings, ``merge`` the windows), so the snapshot does not
    sort 100 000 of each twice.
    """

    generation: int
    after_s: int
    nodes: tuple[NodeRecord, ...]
    leases: tuple[LeaseRow, ...]
    held: dict[str, list[Interval]]

    def busy_at(self, moment_s: int) -> set[str]:
        """Nodes a held window covers at this second (as Availability.busy_now)."""
        return {node for node, windows in self.held.items() if any(start <= moment_s < end for start, end in windows)}

    def free_windows(
        self, nodes: tuple[NodeRecord, ...], start_s: int, horizon_s: int, count: int
    ) -> dict[str, list[Interval]]:
        """Each node's first ``count`` free windows in [start_s, horizon_s), one grain long at least; none for a node
        in maintenance (as Availability.free_windows)."""
        answer: dict[str, list[Interval]] = {}
        for node in nodes:
            if node.state != "usable":
                answer[node.component_id] = []
                continue
            busy = [window for window in self.held.get(node.component_id, ()) if window[0] < horizon_s]
            answer[node.component_id] = free_windows(merge(busy), start_s, horizon_s, node.grain_s, node.grain_s, count)
        return answer


def read_snapshot(database: Database, after_s: int) -> CalendarSnapshot:
    """The federated nodes and every lease and held window ending after ``after_s``, with the generation read first
    (calendar/generation.py says why first)."""
    with database.read() as session:
        generation = read_generation(session)
        node_ids, nodes = _federated_nodes(session)
        leases, held = _leases_and_held(session, after_s, node_ids)
    return CalendarSnapshot(generation, after_s, nodes, leases, held)


def _federated_nodes(session: Session) -> tuple[dict[int, str], tuple[NodeRecord, ...]]:
    """The federated nodes as records, and their database ids -> component ids."""
    # Core execution on the session's connection: plain rows, without the ORM's result processing.
    rows = session.connection().execute(
        select(Node.id, *NODE_COLUMNS)
        .join(Pool, Node.pool_id == Pool.id)
        .where(Pool.federated.is_(True))
        .order_by(Node.component_id)
    )
    node_ids: dict[int, str] = {}
    nodes: list[NodeRecord] = []
    for node_id, *columns in rows.all():
        record = node_record_of_row(*columns)
        node_ids[node_id] = record.component_id
        nodes.append(record)
    return node_ids, tuple(nodes)


def _leases_and_held(
    session: Session, after_s: int, node_ids: dict[int, str]
) -> tuple[tuple[LeaseRow, ...], dict[str, list[Interval]]]:
    """One query for both: every sliver ending after ``after_s`` that holds its node or belongs to an active lease.
    Only the federated nodes (``node_ids``) are kept: nothing else is advertised, held or free."""
    connection = session.connection()
    # Integers, not strings, per sliver row: node and slice ids are mapped to names from the few rows that have them.
    rows = connection.execute(
        select(
            Sliver.node_id,
            Sliver.start_s,
            Sliver.end_s,
            Sliver.holds_node,
            Lease.id,
            Lease.state,
            Lease.start_s,
            Lease.end_s,
            Lease.slice_id,
        )
        .join(Lease, Sliver.lease_id == Lease.id)
        .where(Sliver.end_s > after_s, or_(Sliver.holds_node.is_(True), Lease.state.in_(ACTIVE_LEASE_STATES)))
    )
    held: dict[str, list[Interval]] = defaultdict(list)
    active: dict[str, tuple[int, int, int, list[str]]] = {}
    # .all(): one fetch of every row (iterating the result would fetch them one by one).
    for node_id, start_s, end_s, holds_node, lease_id, state, lease_start_s, lease_end_s, slice_id in rows.all():
        node = node_ids.get(node_id)
        if node is None:
            continue  # not a federated node
        if holds_node:
            held[node].append((start_s, end_s))
        # Bookings.leases(start=...) filters on the lease's own end (a sliver's window copies its lease's).
        if state in ACTIVE_LEASE_STATES and lease_end_s > after_s:
            entry = active.get(lease_id)
            if entry is None:
                entry = active[lease_id] = (slice_id, lease_start_s, lease_end_s, [])
            entry[3].append(node)
    wanted_slices = {slice_id for slice_id, _, _, _ in active.values()}
    slice_urns: dict[int, str] = {
        slice_id: urn
        for slice_id, urn in connection.execute(select(Slice.id, Slice.urn).where(Slice.id.in_(wanted_slices)))
    }
    leases = tuple(
        LeaseRow(lease_id, slice_urns[slice_id], start_s, end_s, tuple(sorted(nodes)) if len(nodes) > 1 else (*nodes,))
        for lease_id, (slice_id, start_s, end_s, nodes) in active.items()
    )
    return leases, dict(held)
