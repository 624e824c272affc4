"""How long the calendar keeps finished bookings (``[sfa_omf] history_days``): the leader's hourly pass, and
``sfa-omf db prune``, delete what is history only.

A lease is history once it is no longer active — cancelled, expired (never provisioned) or ended (the slot is over;
a mirrored external reservation that ran too) — and its end is more than ``history_days`` ago. It goes with every row
that names it: its slivers, its agents' reports, its containers' rows (lease_instance), its OAR job's row, its OMF
slot's row, its provision hold and its feeds' revision. A lease whose testbed work is not over stays, whatever its
age, since these rows are what that work still needs: a container not yet destroyed (the instance runner destroys it
from its row), an OMF slot whose end did not succeed (its row lists the SSH keys to take out), an OAR job being
submitted or deleted (the reconciler's), a slice whose keys are still to be withdrawn (withdrawal_due).

A slice row goes once no lease of it is left and it expired more than ``history_days`` ago, with its users (the SSH
keys its last Allocate sent), unless it is shut down (an operator's decision that a later Allocate must still meet)
or its keys are still to be withdrawn. Nothing else names a slice row: the registry's slice records, the per-slice
account mappings and the notification events are other tables, kept (a later Allocate of the same URN makes a new
slice row, as for a new slice).

Bounded: the pass reads at most ``batch`` candidate leases (or slices) at a time, outside any write, then deletes them
in one short transaction of their own, checking each again there; a first run on a large table is many short
transactions, never a long lock. The pass does not bump the calendar's generation: every cached answer
(advertisements, snapshots) covers active leases and windows ending after now, which no deleted row is part of; a
bump would throw every process's cache away each hour for nothing. A background task's writes are fenced by its
leadership term as every other's (calendar/fence.py: LeadershipLost, nothing written).

The web calendar's Gantt page shows any past day from the rows kept: a day older than ``history_days`` shows the
bookings that were not history yet (active, or testbed work not over) only. The iCal feeds show leases that ended
at most 30 days ago (web/app.py FEED_PAST), which ``history_days`` (0, or at least 30: config.py) always keeps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, and_, delete, exists, func, not_, select, tuple_

from sfa_omf.calendar.agent_models import AgentReport
from sfa_omf.calendar.database import Database, retry_transient
from sfa_omf.calendar.models import (
    Lease,
    LeaseInstance,
    LeaseRevision,
    OarJob,
    OmfSlot,
    ProvisionHoldRow,
    Slice,
    SliceUser,
    Sliver,
    WithdrawalDue,
)
from sfa_omf.calendar.queries import to_s
from sfa_omf.times import utcnow

#: Lease states that are history (booking.py ACTIVE_LEASE_STATES and external.py's are not): a state added later is
#: kept until it is named here.
FINISHED_LEASE_STATES = ("cancelled", "expired", "ended")
#: Leases (or slices) deleted in one transaction: a few milliseconds of writing, a lock short enough for any caller.
BATCH = 500
#: A container row in this state is over (images/instances.py DESTROYED); any other may still have a container.
_INSTANCE_OVER = "destroyed"
#: An OMF slot in this phase is over (testbed/omf/slot_records.py ENDED): its accounts' keys are out.
_SLOT_OVER = "ended"
#: An OAR job's row in these states is work in flight for the reconciler (testbed/oar/jobs.py).
_JOB_IN_FLIGHT = ("submitting", "deleting")

#: What a pass counts, in this order: the leases, then the rows named by them, then the slices and their users.
COUNTED = (
    "leases",
    "slivers",
    "agent_reports",
    "lease_instances",
    "oar_jobs",
    "omf_slots",
    "provision_holds",
    "lease_revisions",
    "slices",
    "slice_users",
)

#: Every row naming a lease, deleted before the lease (the foreign keys of sliver, lease_instance and oar_job have no
#: ON DELETE; agent_report's cascades, deleted here all the same so that it is counted).
_LEASE_ROWS: tuple[tuple[str, type], ...] = (
    ("slivers", Sliver),
    ("agent_reports", AgentReport),
    ("lease_instances", LeaseInstance),
    ("oar_jobs", OarJob),
    ("omf_slots", OmfSlot),
    ("provision_holds", ProvisionHoldRow),
    ("lease_revisions", LeaseRevision),
)


@dataclass
class PruneCounts:
    """How many rows of each kind a pass deleted (or, dry, would delete)."""

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTED, 0))

    def add(self, kind: str, count: int) -> None:
        self.rows[kind] += max(count, 0)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _lease_is_history(cutoff_s: int) -> ColumnElement[bool]:
    """A lease that is history at ``cutoff_s``: finished, ended before it, its testbed work over."""
    return and_(
        Lease.state.in_(FINISHED_LEASE_STATES),
        Lease.end_s < cutoff_s,
        ~exists().where(LeaseInstance.lease_id == Lease.id, LeaseInstance.state != _INSTANCE_OVER),
        ~exists().where(OmfSlot.lease_id == Lease.id, OmfSlot.phase != _SLOT_OVER),
        ~exists().where(OarJob.lease_id == Lease.id, OarJob.state.in_(_JOB_IN_FLIGHT)),
        ~exists().where(Slice.id == Lease.slice_id, WithdrawalDue.slice_urn == Slice.urn),
    )


def _slice_is_history(cutoff_s: int, leases_left: ColumnElement[bool]) -> ColumnElement[bool]:
    """A slice that is history at ``cutoff_s`` once ``leases_left`` (its leases that stay) is false."""
    return and_(
        Slice.expires_s < cutoff_s,
        not_(Slice.shut_down),
        ~leases_left,
        ~exists().where(WithdrawalDue.slice_urn == Slice.urn),
    )


class HistoryRetention:
    """Deletes the calendar's history older than ``history_days`` (0: keeps everything). Any thread, any process:
    each batch is a unit of work of its own, and a batch that meets another writer's rows checks them again."""

    def __init__(
        self,
        database: Database,
        history_days: int,
        clock: Callable[[], datetime] = utcnow,
        batch: int = BATCH,
    ) -> None:
        self.database = database
        self.history_days = history_days
        self.clock = clock
        self.batch = batch

    def cutoff_s(self) -> int:
        """Rows that ended (leases) or expired (slices) before this moment are history."""
        return to_s(self.clock() - timedelta(days=self.history_days))

    def prune(self, dry_run: bool = False) -> PruneCounts:
        """Delete the history (``dry_run``: only count what would be deleted, writing nothing)."""
        counts = PruneCounts()
        if self.history_days <= 0:
            return counts
        cutoff_s = self.cutoff_s()
        if dry_run:
            return self._count(cutoff_s)
        after: tuple[int, str] | None = None
        while True:
            candidates = self._lease_candidates(cutoff_s, after)
            if not candidates:
                break
            retry_transient(functools.partial(self._delete_leases, cutoff_s, candidates, counts))
            after = candidates[-1]
            if len(candidates) < self.batch:
                break
        after_id: int | None = None
        while True:
            slice_ids = self._slice_candidates(cutoff_s, after_id)
            if not slice_ids:
                break
            retry_transient(functools.partial(self._delete_slices, cutoff_s, slice_ids, counts))
            after_id = slice_ids[-1]
            if len(slice_ids) < self.batch:
                break
        return counts

    # -- reading the candidates (no write lock: a snapshot read of their own) ------------------------------------
    def _lease_candidates(self, cutoff_s: int, after: tuple[int, str] | None) -> list[tuple[int, str]]:
        """The next ``batch`` history leases as (end_s, id), oldest first, after ``after`` (keyset: a lease another
        writer keeps meanwhile is passed over, never read again in this pass)."""
        query = select(Lease.end_s, Lease.id).where(_lease_is_history(cutoff_s))
        if after is not None:
            query = query.where(tuple_(Lease.end_s, Lease.id) > tuple_(*after))
        rows = self.database.fetch_all(query.order_by(Lease.end_s, Lease.id).limit(self.batch))
        return [(int(row[0]), str(row[1])) for row in rows]

    def _slice_candidates(self, cutoff_s: int, after_id: int | None) -> list[int]:
        leases_left = exists().where(Lease.slice_id == Slice.id)
        query = select(Slice.id).where(_slice_is_history(cutoff_s, leases_left))
        if after_id is not None:
            query = query.where(Slice.id > after_id)
        return [int(row[0]) for row in self.database.fetch_all(query.order_by(Slice.id).limit(self.batch))]

    # -- deleting one batch (one short transaction) ---------------------------------------------------------------
    def _delete_leases(self, cutoff_s: int, candidates: Sequence[tuple[int, str]], counts: PruneCounts) -> None:
        wanted = [lease_id for _, lease_id in candidates]
        batch = PruneCounts()
        with self.database.write_connection() as connection:
            # Checked again inside the write: a lease revived or given new work since the read is left alone.
            found = _ids(connection, select(Lease.id).where(Lease.id.in_(wanted), _lease_is_history(cutoff_s)))
            if not found:
                return
            for kind, model in _LEASE_ROWS:
                column = model.__table__.c.lease_id  # type: ignore[attr-defined]
                batch.add(kind, connection.execute(delete(model).where(column.in_(found))).rowcount)
            batch.add("leases", connection.execute(delete(Lease).where(Lease.id.in_(found))).rowcount)
        _merge(counts, batch)  # counted once committed (a retried batch is counted once)

    def _delete_slices(self, cutoff_s: int, slice_ids: Sequence[int], counts: PruneCounts) -> None:
        batch = PruneCounts()
        with self.database.write_connection() as connection:
            leases_left = exists().where(Lease.slice_id == Slice.id)
            found = _ids(
                connection, select(Slice.id).where(Slice.id.in_(slice_ids), _slice_is_history(cutoff_s, leases_left))
            )
            if not found:
                return
            batch.add(
                "slice_users", connection.execute(delete(SliceUser).where(SliceUser.slice_id.in_(found))).rowcount
            )
            batch.add("slices", connection.execute(delete(Slice).where(Slice.id.in_(found))).rowcount)
        _merge(counts, batch)

    # -- a dry run: the same criteria, counted ------------------------------------------------------------------
    def _count(self, cutoff_s: int) -> PruneCounts:
        counts = PruneCounts()
        history = select(Lease.id).where(_lease_is_history(cutoff_s))
        counts.add("leases", self._scalar(select(func.count()).select_from(Lease).where(_lease_is_history(cutoff_s))))
        for kind, model in _LEASE_ROWS:
            column = model.__table__.c.lease_id  # type: ignore[attr-defined]
            counts.add(kind, self._scalar(select(func.count()).select_from(model).where(column.in_(history))))
        # The slices with no lease left once the history leases are gone: every lease of theirs is history.
        leases_left = exists().where(Lease.slice_id == Slice.id, ~_lease_is_history(cutoff_s))
        slices = select(Slice.id).where(_slice_is_history(cutoff_s, leases_left))
        counts.add("slices", self._scalar(select(func.count()).select_from(Slice).where(Slice.id.in_(slices))))
        counts.add(
            "slice_users",
            self._scalar(select(func.count()).select_from(SliceUser).where(SliceUser.slice_id.in_(slices))),
        )
        return counts

    def _scalar(self, query: object) -> int:
        rows = self.database.fetch_all(query)  # type: ignore[arg-type]
        return int(rows[0][0]) if rows else 0


def _ids(connection: Connection, query: object) -> list[object]:
    return [row[0] for row in connection.execute(query)]  # type: ignore[call-overload]


def _merge(counts: PruneCounts, batch: PruneCounts) -> None:
    for kind, count in batch.rows.items():
        counts.add(kind, count)
