"""The calendar as a timeline for people: every booking of every node in a window, in column queries into plain rows
(the web calendar and the iCal feeds read thousands of rows; no ORM objects are built for them).

Cancelled, expired and ended leases are included on request: a feed must say that a lease it published is gone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import Lease, Node, Pool, Slice, SliceUser, Sliver
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.registry.removed_marks import MARK_TEXT

ACTIVE_STATES = ("allocated", "provisioned", "external")
#: Active leases and those that ran to their end (their time was taken; cancelled and expired ones never were).
TAKEN_STATES = (*ACTIVE_STATES, "ended")
#: The most values one IN list of ours names: PostgreSQL takes at most 65 535 parameters a statement.
IN_LIST_LIMIT = 10_000
#: A slice's user row that is a member (a removed slice's are kept marked "URN (removed TIME)": registry/records.py).
_A_MEMBER = ~SliceUser.user_urn.contains(MARK_TEXT)


def chunked(values: Iterable[str], size: int | None = None) -> Iterator[list[str]]:
    """The values (sorted, without repeats) in lists of at most ``size`` (IN_LIST_LIMIT): one IN list each."""
    size = size or IN_LIST_LIMIT
    ordered = sorted(set(values))
    for first in range(0, len(ordered), size):
        yield ordered[first : first + size]


@dataclass(frozen=True)
class BookingRow:
    """One node of one lease: who booked it, when, and in which state."""

    lease_id: str
    slice_urn: str
    owner_urn: str
    node: str  # component id
    start: datetime
    end: datetime
    state: str  # the lease's: allocated, provisioned, cancelled, expired, ended, external (held outside sfa-omf)
    operational_state: str  # the sliver's (geni_ready, geni_failed, ...)
    client_id: str  # the lease's label (for an external hold: the source's key, e.g. oar:12)


@dataclass(frozen=True)
class NodeRow:
    component_id: str
    component_name: str
    pool: str
    federated: bool
    hardware_type: str
    state: str  # usable or maintenance
    grain_s: int


class Timeline:
    """Reads of the calendar for the web pages and feeds."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def nodes(self) -> list[NodeRow]:
        """Every node, ordered by pool then component id."""
        with self.database.read() as session:
            rows = session.execute(
                select(
                    Node.component_id,
                    Node.component_name,
                    Pool.name,
                    Pool.federated,
                    Node.hardware_type,
                    Node.state,
                    Node.grain_s,
                )
                .join(Pool)
                .order_by(Pool.name, Node.component_id)
            )
            return [NodeRow(*row) for row in rows]

    def bookings(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        node: str | None = None,
        slice_urns: Iterable[str] | None = None,
        lease_ids: Iterable[str] | None = None,
        owner_urn: str | None = None,
        include_inactive: bool = False,
        include_ended: bool = False,
    ) -> list[BookingRow]:
        """Bookings overlapping [start, end) (either bound may be open), by node, slice, lease or the user who
        booked them (``owner_urn``), oldest first.

        Active leases only, unless ``include_ended`` (and ended ones) or ``include_inactive`` (every state).
        ``lease_ids`` may be any number of leases (they are asked for in chunks)."""
        query = (
            select(
                Lease.id,
                Slice.urn,
                Lease.owner_urn,
                Node.component_id,
                Lease.start_s,
                Lease.end_s,
                Lease.state,
                Sliver.operational_state,
                Lease.client_id,
            )
            .select_from(Sliver)
            .join(Lease, Sliver.lease_id == Lease.id)
            .join(Slice, Lease.slice_id == Slice.id)
            .join(Node, Sliver.node_id == Node.id)
            .order_by(Lease.start_s, Lease.id, Node.component_id)
        )
        if not include_inactive:
            query = query.where(Lease.state.in_(TAKEN_STATES if include_ended else ACTIVE_STATES))
        if start is not None:
            query = query.where(Lease.end_s > to_s(start))
        if end is not None:
            query = query.where(Lease.start_s < to_s(end))
        if node is not None:
            query = query.where(Node.component_id == node)
        if slice_urns is not None:
            query = query.where(Slice.urn.in_(set(slice_urns)))
        if owner_urn is not None:
            query = query.where(Lease.owner_urn == owner_urn)
        if lease_ids is None:
            return self._rows(query)
        # A feed may name more leases than one statement takes: a statement per chunk, then the order again.
        chunks = list(chunked(lease_ids))
        if len(chunks) <= 1:
            return self._rows(query.where(Lease.id.in_(chunks[0] if chunks else [])))
        rows = [row for chunk in chunks for row in self._rows(query.where(Lease.id.in_(chunk)))]
        return sorted(rows, key=lambda row: (row.start, row.lease_id, row.node))

    def _rows(self, query: Select[*tuple[Any, ...]]) -> list[BookingRow]:
        with self.database.read() as session:
            return [
                BookingRow(lease, slice_urn, owner, component, from_s(a), from_s(b), state, operational, client)
                for lease, slice_urn, owner, component, a, b, state, operational, client in session.execute(query)
            ]

    def slices_of_user(self, user_urn: str) -> set[str]:
        """The slices a user belongs to here now: those that list them as a user, and those they booked in that list
        no user at all (clients booking without geni_users, such as a bare omni allocate, make no list). Once a slice
        lists its users, the list decides: a user removed from it (geni_update_users, the registry) must not keep
        seeing it for having booked in it."""
        # (A removed slice's members are kept marked, for its keys' withdrawal: they list nobody.)
        listed = select(SliceUser.slice_id).where(SliceUser.slice_id == Slice.id, _A_MEMBER).exists()
        with self.database.read() as session:
            rows = session.scalars(
                select(Slice.urn)
                .join(SliceUser, SliceUser.slice_id == Slice.id)
                .where(SliceUser.user_urn == user_urn)
                .union(
                    select(Slice.urn)
                    .join(Lease, Lease.slice_id == Slice.id)
                    .where(Lease.owner_urn == user_urn, ~listed)
                )
            )
            return set(rows)

    def slices_booked_by(self, owner_urn: str, since: datetime) -> set[str]:
        """The slices holding a lease (any state) ``owner_urn`` booked that ends after ``since``: one column query,
        where the rows of every such lease would be read to the same end."""
        with self.database.read() as session:
            rows = session.scalars(
                select(Slice.urn)
                .join(Lease, Lease.slice_id == Slice.id)
                .where(
                    Lease.owner_urn == owner_urn,
                    Lease.end_s > to_s(since),
                    select(Sliver.id).where(Sliver.lease_id == Lease.id).exists(),
                )
                .distinct()
            )
            return set(rows)

    def users_of_slices(self, slice_urns: Iterable[str]) -> dict[str, list[str]]:
        """The users each slice lists, sorted (not a removed slice's members, kept marked)."""
        wanted = set(slice_urns)
        users: dict[str, list[str]] = defaultdict(list)
        if not wanted:
            return users
        with self.database.read() as session:
            for slice_urn, user_urn in session.execute(
                select(Slice.urn, SliceUser.user_urn).join(SliceUser).where(Slice.urn.in_(wanted), _A_MEMBER)
            ):
                users[slice_urn].append(user_urn)
        for names in users.values():
            names.sort()
        return users
