"""Reservations made outside sfa-omf (for example directly in OAR by the testbed's local users), mirrored into the
calendar so that every check that keeps bookings apart, the free windows and "available now" see them too.

A mirrored reservation is a lease in state ``external`` of a per-source pseudo-slice, with one node-holding sliver per
node; its ``client_id`` is the source's key (``oar:12``). ``sync`` makes the mirror equal to what the source reports:
new reservations are added, changed ones replaced, vanished ones released. A vanished reservation that had started
ran (OAR lists unfinished jobs only): it becomes ``ended`` (its end cut to the sync's time if it ended early), as a
lease of ours that ran to its end, and stays on the Gantt and in the feeds as the testbed's (``is_external``); one
that vanished before it started is ``cancelled``.

A reservation that overlaps a booking the calendar already holds cannot be mirrored on that booking's nodes (the
calendar's guarantee wins); it is reported as a clash so the operator sees it, and the testbed itself refuses our
overlapping provision (OAR: "could run at ..."). Its other nodes are mirrored all the same: the source holds them, so
the calendar must not give them away.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from sfa_omf.calendar.booking import new_sliver_urn, release_slivers
from sfa_omf.calendar.database import Database, retry_transient
from sfa_omf.calendar.intervals import overlaps
from sfa_omf.calendar.models import Lease, Node, Slice, Sliver
from sfa_omf.calendar.queries import from_s, held_windows, to_s
from sfa_omf.errors import BadArgs
from sfa_omf.times import utcnow
from sfa_omf.xrn import parse_urn, split_hrn

EXTERNAL_STATE = "external"
#: A mirrored reservation that ran is ``ended`` in its source's pseudo-slice (``is_external`` tells it from ours).
ENDED_STATE = "ended"
_SLICE_NAME_PREFIX = "external-"
_FAR_FUTURE_S = 2**62  # pseudo-slices never expire


@dataclass(frozen=True)
class ExternalHold:
    """One reservation of the outside system: its key there, the nodes (component ids) and the window."""

    key: str
    nodes: tuple[str, ...]
    start: datetime
    end: datetime
    label: str = ""  # who or what holds it, for people (e.g. "OAR job 12 of alice")


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # vanished: released (those that had started among ``ended``)
    ended: list[str] = field(default_factory=list)  # vanished after their start: they ran, now ``ended``
    kept: int = 0
    # overlap a booking of ours: not mirrored on that booking's nodes (mirrored on the others, if any)
    clashing: list[str] = field(default_factory=list)
    unknown_nodes: list[str] = field(default_factory=list)  # nodes that are not in the inventory: ignored


def source_slice_urn(authority_hrn: str, source: str) -> str:
    return f"urn:publicid:IDN+{authority_hrn.replace('.', ':')}+slice+{_SLICE_NAME_PREFIX}{source}"


def is_source_slice_name(name: str) -> bool:
    """Whether a slice name (the last part of its HRN or URN) is reserved for the pseudo-slices that hold the
    reservations made directly in the testbed (``source_slice_urn``): it starts with ``external-``, in any case."""
    return name.lower().startswith(_SLICE_NAME_PREFIX)


def is_source_slice(slice_urn: str, authority_hrn: str) -> bool:
    """Whether a slice URN names a pseudo-slice of this authority's mirror (``source_slice_urn`` of any source): its
    authority is ``authority_hrn`` and its name is reserved (``is_source_slice_name``). Text that is no slice URN is
    not one."""
    try:
        urn = parse_urn(slice_urn)
    except BadArgs:
        return False
    return urn.type == "slice" and urn.authority == split_hrn(authority_hrn) and is_source_slice_name(urn.name)


def is_external(state: str, slice_urn: str, owner_urn: str) -> bool:
    """Whether a lease (its state, slice and booker) is a mirrored reservation: ``external`` while it holds its
    nodes; once it ran, ``ended`` in a source's pseudo-slice, which no one booked (``owner_urn`` empty)."""
    if state == EXTERNAL_STATE:
        return True
    name = slice_urn.rsplit("+slice+", 1)[-1] if "+slice+" in slice_urn else ""
    return state == ENDED_STATE and not owner_urn and name.startswith(_SLICE_NAME_PREFIX)


class ExternalHolds:
    def __init__(self, database: Database, authority_hrn: str, clock: Callable[[], datetime] = utcnow) -> None:
        """``clock``: now, which tells a vanished reservation that ran (ended) from one that never started."""
        self.database = database
        self.authority_hrn = authority_hrn
        self.clock = clock

    def sync(self, source: str, holds: Sequence[ExternalHold]) -> SyncReport:
        """Make the mirror of ``source`` equal to ``holds`` (one transaction)."""
        return retry_transient(lambda: self._sync_once(source, holds))

    def _sync_once(self, source: str, holds: Sequence[ExternalHold]) -> SyncReport:
        report = SyncReport()
        now_s = to_s(self.clock())
        slice_urn = source_slice_urn(self.authority_hrn, source)
        with self.database.write() as session:
            slice_row = session.scalar(select(Slice).where(Slice.urn == slice_urn))
            if slice_row is None:
                slice_row = Slice(urn=slice_urn, expires_s=_FAR_FUTURE_S, shut_down=False)
                session.add(slice_row)
                session.flush()
            current = {
                lease.client_id: lease
                for lease in session.scalars(
                    select(Lease)
                    .where(Lease.slice_id == slice_row.id, Lease.state == EXTERNAL_STATE)
                    .options(selectinload(Lease.slivers).selectinload(Sliver.node))
                )
            }
            wanted = {hold.key: hold for hold in holds}
            kept: set[str] = set()
            for key, lease in current.items():
                hold = wanted.get(key)
                if hold is not None and _same_window(lease, hold):
                    mirrored = {sliver.node.component_id for sliver in lease.slivers}
                    left_out = set(hold.nodes) - mirrored
                    # Mirrored as well as it can be: on every node but those still taken by our bookings.
                    if mirrored <= set(hold.nodes) and _all_taken(session, left_out, lease.start_s, lease.end_s):
                        report.kept += 1
                        if left_out:
                            report.clashing.append(key)
                        kept.add(key)
                        continue
                release_slivers(lease.slivers)
                if hold is None and lease.start_s < now_s:
                    # It ran (the source lists unfinished reservations only): ended, at the latest now.
                    lease.state = ENDED_STATE
                    lease.end_s = min(lease.end_s, now_s)
                    for sliver in lease.slivers:
                        sliver.end_s = min(sliver.end_s, now_s)
                        sliver.expires_s = min(sliver.expires_s, now_s)
                    report.ended.append(key)
                else:
                    lease.state = "cancelled"  # vanished before its start, or changed (added again below)
                if hold is None:
                    report.removed.append(key)
            session.flush()
            names = {hold_node for hold in holds for hold_node in hold.nodes}
            # Locked in id order, as bookings lock them: a booking racing for the same node waits for this sync.
            query = select(Node).where(Node.component_id.in_(names)).order_by(Node.id).with_for_update()
            nodes = {node.component_id: node for node in session.scalars(query)}
            for key, hold in wanted.items():
                if key in kept:
                    continue
                members = [nodes[name] for name in hold.nodes if name in nodes]
                report.unknown_nodes += [name for name in hold.nodes if name not in nodes]
                if not members:
                    continue
                window = (to_s(hold.start), to_s(hold.end))
                if window[1] <= window[0]:
                    continue
                busy = held_windows(session, window[0], window[1], node_ids={node.id for node in members})
                free = [node for node in members if not any(overlaps(taken, window) for taken in busy[node.id])]
                if len(free) < len(members):
                    report.clashing.append(key)
                if not free:
                    continue
                members = free
                lease = Lease(
                    id=str(uuid.uuid4()),
                    slice=slice_row,
                    owner_urn="",
                    start_s=window[0],
                    end_s=window[1],
                    state=EXTERNAL_STATE,
                    client_id=key,
                )
                session.add(lease)
                for node in sorted(members, key=lambda member: member.id):
                    session.add(
                        Sliver(
                            urn=new_sliver_urn(self.authority_hrn.replace(".", ":")),
                            lease=lease,
                            node=node,
                            start_s=window[0],
                            end_s=window[1],
                            holds_node=True,
                            allocation_state="geni_provisioned",
                            operational_state="geni_notready",
                            expires_s=window[1],
                            client_id=hold.label[:200],
                        )
                    )
                session.flush()
                report.added.append(key)
        return report

    def holds(self, source: str) -> list[ExternalHold]:
        """The mirrored reservations of ``source`` (those that hold nodes now)."""
        slice_urn = source_slice_urn(self.authority_hrn, source)
        with self.database.read() as session:
            leases = session.scalars(
                select(Lease)
                .join(Slice)
                .where(Slice.urn == slice_urn, Lease.state == EXTERNAL_STATE)
                .options(selectinload(Lease.slivers).selectinload(Sliver.node))
                .order_by(Lease.start_s)
            )
            return [
                ExternalHold(
                    lease.client_id,
                    tuple(sorted(sliver.node.component_id for sliver in lease.slivers)),
                    from_s(lease.start_s),
                    from_s(lease.end_s),
                    lease.slivers[0].client_id if lease.slivers else "",
                )
                for lease in leases
            ]


def _same_window(lease: Lease, hold: ExternalHold) -> bool:
    return lease.start_s == to_s(hold.start) and lease.end_s == to_s(hold.end)


def _all_taken(session: Session, names: set[str], start_s: int, end_s: int) -> bool:
    """Whether every node of the inventory among ``names`` is held by something during [start_s, end_s) (names not in
    the inventory cannot be mirrored anyway)."""
    node_ids = set(session.scalars(select(Node.id).where(Node.component_id.in_(names)))) if names else set()
    busy = held_windows(session, start_s, end_s, node_ids=node_ids)
    return all(any(overlaps(taken, (start_s, end_s)) for taken in busy[node_id]) for node_id in node_ids)
