"""Booking: all-or-nothing (or best effort) reservations of (node, window) for a slice; renew, cancel, expire.

The rule that matters most: no two slivers that hold a node overlap in time. Every booking runs in one write unit of
work that takes the lock first (SQLite: BEGIN IMMEDIATE) and checks, then inserts; on PostgreSQL the exclusion
constraint forbids the overlap whatever happens, and a violation (a racing process won) is answered by re-running
the check, which then reports the winner's booking as the conflict.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, NamedTuple, cast

from sqlalchemy import (
    CTE,
    JSON,
    BigInteger,
    ColumnElement,
    Connection,
    Delete,
    Insert,
    Integer,
    Select,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    true,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from sfa_omf.calendar.database import (
    RETRY_ATTEMPTS,
    Database,
    TransientConflict,
    connection_of,
    is_overlap_violation,
    retry_transient,
)
from sfa_omf.calendar.generation import bump_after, bump_on, bump_parameters
from sfa_omf.calendar.intervals import DAY_S, Interval, align_down, align_up, earliest_start, merge, overlaps
from sfa_omf.calendar.models import Lease, LeaseInstance, Node, Pool, ProvisionHoldRow, Slice, SliceUser, Sliver
from sfa_omf.calendar.plain_statements import (
    MAX_LISTED,
    PlainStatement,
    execute_plain,
    listed,
    listed_count,
    listed_values,
)
from sfa_omf.calendar.policy import (
    Policy,
    PolicyViolation,
    check_window,
    exact_duration,
    human_duration,
    max_duration_counted_from,
)
from sfa_omf.calendar.queries import advisory_key, from_s, held_windows, lock_names, lock_slice, table_of, to_s
from sfa_omf.calendar.records import (
    BookingRequest,
    BookingResult,
    Conflict,
    LeaseRecord,
    ManifestNode,
    SliceUserRecord,
    SliceView,
    SliverRecord,
)
from sfa_omf.calendar.slices import Contact, apply_users, record_contact
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import format_time, utcnow

ACTIVE_LEASE_STATES = ("allocated", "provisioned")
UNKNOWN_NODE = "is not a node of ours"  # a Conflict's problem for a requested node the calendar does not hold
Rounding = Literal["", "up", "down"]  # how Bookings.renew moves a new end that falls inside a slot


#: How long a Provision's hold keeps its allocations from the sweep, from when it was asked: longer than any
#: testbed's work for one (OAR answers within its time-out, 30 s by default; a node boots within FRCP's boot time-out,
#: 10 minutes by default) and than OAR's reconciler takes to adopt a job a timed-out Provision may have made, short
#: enough that an allocation whose Provision died midway is released the same hour. (Those time-outs are operators'
#: settings, unknown to the calendar, not constants: an hour stays well above their defaults. A hold left by a
#: Provision that died is ended at once by a Delete of the allocation.)
PROVISION_HOLD_S = 3600
#: The token of a hold no Provision is at work on any more: kept while the testbed may hold the lease (a time-out,
#: a job maybe made), it keeps the sweep off until it lapses but lets another Provision take the lease over.
LEFT_FOR_TESTBED = ""


class BookingConflict(GeniError):
    """Some requested (node, window) cannot be booked; ``conflicts`` says which, why, and when they could be.

    A request naming a node the aggregate does not have is BAD_ARGS, as one naming an image no node runs: it never
    succeeds, and only the caller can fix it by changing the request; otherwise BOOKING_CONFLICT (it may succeed at
    another time)."""

    def __init__(self, conflicts: Sequence[Conflict], note: str = "") -> None:
        details = "; ".join(conflict.describe() for conflict in conflicts)
        unknown = any(conflict.problem == UNKNOWN_NODE for conflict in conflicts)
        notes = [note] if note else []
        if unknown:
            notes.append("ListResources shows this aggregate's nodes")
        reason = Reason.BAD_ARGS if unknown else Reason.BOOKING_CONFLICT
        super().__init__(reason, f"nothing was booked: {details}" + (f" ({'; '.join(notes)})" if notes else ""))
        self.conflicts = tuple(conflicts)


def unknown_nodes_refusal(names: Sequence[str]) -> GeniError:
    """The refusal of a request for the earliest slot of nodes the calendar does not hold (or a private pool's, for
    a caller of another authority): the code and words of a booking of a window on them (BookingConflict's
    UNKNOWN_NODE: BAD_ARGS), whatever form the request takes. Not a BookingConflict: a best-effort request is
    refused whole, as before (only nodes that are down or busy are left out of one)."""
    details = "; ".join(f"{name} {UNKNOWN_NODE}" for name in names)
    return GeniError(Reason.BAD_ARGS, f"nothing was booked: {details} (ListResources shows this aggregate's nodes)")


def sliver_record(sliver: Sliver) -> SliverRecord:
    return SliverRecord(
        urn=sliver.urn,
        node=sliver.node.component_id,
        lease_id=sliver.lease_id,
        start=from_s(sliver.start_s),
        end=from_s(sliver.end_s),
        allocation_state=sliver.allocation_state,
        operational_state=sliver.operational_state,
        expires=from_s(sliver.expires_s),
        client_id=sliver.client_id,
        disk_image=sliver.disk_image,
    )


def lease_record(lease: Lease) -> LeaseRecord:
    return LeaseRecord(
        id=lease.id,
        slice_urn=lease.slice.urn,
        owner_urn=lease.owner_urn,
        start=from_s(lease.start_s),
        end=from_s(lease.end_s),
        state=lease.state,
        client_id=lease.client_id,
        slivers=tuple(sliver_record(sliver) for sliver in sorted(lease.slivers, key=lambda s: s.node.component_id)),
    )


class Bookings:
    """Books, renews, cancels and expires leases. ``clock`` is injectable so tests decide what "now" is."""

    def __init__(
        self,
        database: Database,
        policy: Policy | None = None,
        sliver_authority: str = "testbed",
        clock: Callable[[], datetime] = utcnow,
        testbed_settle_s: int | None = None,
    ) -> None:
        self.database = database
        self.policy = policy or Policy()
        self.sliver_authority = sliver_authority.replace(".", ":")
        self.clock = clock
        # About how long the testbed's reconciler takes to finish a Provision cut short (OAR: its settle_s), told to
        # a Provision that finds the lease held by another call; None: "its next round".
        self.testbed_settle_s = testbed_settle_s

    # -- booking ----------------------------------------------------------------------------------------------
    def book(
        self,
        slice_urn: str,
        slice_expires: datetime,
        requests: Sequence[BookingRequest],
        owner_urn: str = "",
        best_effort: bool = False,
        users: Mapping[str, Sequence[str]] | None = None,
        contact: Contact | None = None,
        read_slice: bool = False,
        federated_only: bool = False,
    ) -> BookingResult:
        """Book every request for the slice, or nothing (BookingConflict lists every conflict).

        With best_effort, book what is free and return the rest in ``refused``; nothing free is still a conflict.
        Requests with the same window become one lease. Policy violations refuse the whole request. ``users`` (user
        URN -> SSH keys, sent with the call) are merged into the slice's in the same unit of work: written with the
        booking or not at all; so is the caller's GID e-mail (``contact``). ``read_slice``: answer the slice as the
        booking left it (``BookingResult.slice_view``), read in its transaction, for the caller's manifest.
        ``federated_only`` (a caller who is not a user of this aggregate's authority): a node of a private pool is
        refused as a node the calendar does not hold is (UNKNOWN_NODE), so that its existence is not revealed.
        """
        if not requests:
            raise GeniError(Reason.BAD_ARGS, "the request books no node")
        for attempt in range(RETRY_ATTEMPTS):
            once = functools.partial(
                self._book_once,
                slice_urn,
                slice_expires,
                requests,
                owner_urn,
                best_effort,
                users or {},
                contact,
                read_slice,
                federated_only,
                held_read_after_lock=attempt > 0,
            )
            try:
                return retry_transient(once)
            except IntegrityError as exc:
                # A racer committed an overlapping sliver between our check and our insert (PostgreSQL only):
                # run again, reading what the nodes hold after locking them; the check then sees the winner and
                # answers with a clear conflict (or books what is still free, best effort).
                if not is_overlap_violation(exc) or attempt == RETRY_ATTEMPTS - 1:
                    raise GeniError(Reason.DATABASE, f"the calendar refused the booking: {exc.orig}") from exc
        raise AssertionError("unreachable")

    def _book_once(
        self,
        slice_urn: str,
        slice_expires: datetime,
        requests: Sequence[BookingRequest],
        owner_urn: str,
        best_effort: bool,
        users: Mapping[str, Sequence[str]],
        contact: Contact | None = None,
        read_slice: bool = False,
        federated_only: bool = False,
        held_read_after_lock: bool = False,
    ) -> BookingResult:
        """One attempt of ``book``. ``held_read_after_lock``: read what the nodes hold in a statement of its own after
        locking them (an attempt after the exclusion constraint refused the previous one)."""
        # Column statements built once and plain rows, no ORM objects: a booking is on every Allocate, and the ORM's
        # unit of work (identity map, lazy loads, flush ordering) cost several times the statements themselves.
        now_s = to_s(self.clock())
        expires_s = to_s(slice_expires)
        with self.database.write() as session:
            contact_changed = self._serialize_slice(session, slice_urn, owner_urn, contact)
            slice_id, slice_users = self._slice_for_booking(session, slice_urn, expires_s)
            # Racers for the same node queue on its row (locked in id order, so never in a cycle) instead of
            # deadlocking inside the exclusion check; bookings of other nodes still run in parallel. The exclusion
            # constraint stays the guarantee. (SQLite: BEGIN IMMEDIATE has serialized writers already.)
            # The same statement reads what the nodes hold during the requested span: one round trip less. On
            # PostgreSQL that read is from the snapshot taken before the statement waited for a racer's lock, so it may
            # miss what the racer did meanwhile. A slot it shows free but a racer took: the exclusion constraint refuses
            # our insert, and ``book`` runs again reading after the locks. A slot it shows held (a racer may have
            # released it): read again after the locks before refusing anything. (SQLite: BEGIN IMMEDIATE has
            # serialized the writers, the read is current.)
            span = (min(to_s(r.start) for r in requests), max(to_s(r.end) for r in requests))
            component_ids = sorted({r.node for r in requests})
            locked = execute_plain(
                connection_of(session),
                _nodes_for_booking(listed_count(component_ids)),
                {**listed_values("component_ids", component_ids), "after_s": span[0], "before_s": span[1]},
            )
            nodes: dict[str, _BookedNode] = {}
            busy: dict[int, list[Interval]] = {}
            for *node_columns, federated, held_start_s, held_end_s in locked:
                if federated_only and not federated:
                    continue  # a private pool's node: as if the calendar did not hold it
                locked_node = _BookedNode(*node_columns)
                nodes[locked_node.component_id] = locked_node
                if held_start_s is not None:
                    busy.setdefault(locked_node.id, []).append((held_start_s, held_end_s))
            wanted: list[_Wanted] = []
            conflicts: list[Conflict] = []
            for request in requests:
                node = nodes.get(request.node)
                if node is None:
                    conflicts.append(Conflict(request.node, request.start, request.end, UNKNOWN_NODE))
                    continue
                window = (to_s(request.start), to_s(request.end))
                check_window(
                    self.policy, window[0], window[1], now_s, node.grain_s, node.component_id, request.from_now
                )
                if window[1] > expires_s:
                    raise PolicyViolation(
                        "slice_expiry",
                        f"the window for {node.component_id} ends after the slice credential expires "
                        f"({format_time(from_s(expires_s))}); renew the slice at its authority first",
                    )
                if node.state != "usable":
                    conflicts.append(Conflict(node.component_id, request.start, request.end, unusable_why(node.state)))
                    continue
                wanted.append((request, node, window))
            current = self.database.is_sqlite
            if held_read_after_lock and not current:
                busy, current = self._held_after_lock(session, span, wanted), True
            read_again = None if current else functools.partial(self._held_after_lock, session, span, wanted)
            free, clashes = self._split_free(session, wanted, busy, read_again)
            conflicts += clashes
            if conflicts and (not best_effort or not free):
                raise BookingConflict(conflicts)
            self._check_limits(session, slice_id, slice_urn, owner_urn, free, now_s)
            # The slice's users and the caller's contact before the leases: the leases' statement may bump the
            # generation (_lease_and_sliver), and a Provision writes these rows, then bumps, in this order too.
            if users:
                slice_row = session.get(Slice, slice_id)
                assert slice_row is not None  # written or read above, in this transaction
                apply_users(slice_row, users)
                session.flush()
                slice_users = _user_records((user.user_urn, user.ssh_keys) for user in slice_row.users)
            if contact_changed:
                record_contact(session, contact, now_s)
            session.flush()
            leases, slice_rows = self._insert(session, slice_id, slice_urn, owner_urn, free, now_s, read_slice)
            view = None
            if slice_rows is not None:
                view = _view_with_booked(slice_rows, leases, [node for _, node, _ in free], slice_users)
            elif read_slice:
                view = _slice_view(session, slice_urn, slice_users)
            return BookingResult(leases=tuple(leases), refused=tuple(conflicts), slice_view=view)

    def _serialize_slice(self, session: Session, slice_urn: str, owner_urn: str, contact: Contact | None) -> bool:
        """On PostgreSQL, serialize bookings of one slice, and of one user when the policy limits node-hours per user,
        so limit checks see each other. Answers whether the caller's contact may differ from the stored one: the same
        round trip reads it (on PostgreSQL; it is nearly always unchanged, and its upsert would be a round trip of its
        own). The e-mail is read from the statement's snapshot, taken before its locks were waited for: a racing call
        of the same user with another GID e-mail may commit meanwhile; then this call's e-mail, seen already stored,
        is not written again, as if it had been written just before the racer's (the upsert answers the same when
        the calls run in that order)."""
        # The booker's lock only serializes what the per-user limit counts; without that limit, bookings of one user
        # in different slices run in parallel (the contact's write is an upsert, safe without it).
        booker = owner_urn if self._has_user_limits else ""
        stored = lock_names(session, slice_urn, booker, read_email_of=contact.user_urn if contact else "")
        return contact is not None and stored != contact.gid_email

    def _slice_for_booking(
        self, session: Session, slice_urn: str, expires_s: int
    ) -> tuple[int, tuple[SliceUserRecord, ...]]:
        """The slice's id and users, the slice recorded first if new; its expiry set to the credential's (the slice
        authority's word is the latest). Refuses a slice that was shut down."""
        rows = execute_plain(connection_of(session), _SLICE_FOR_BOOKING, {"urn": slice_urn})
        if not rows:
            new = execute_plain(
                connection_of(session, writes=True), _NEW_SLICE, {"urn": slice_urn, "expires_s": expires_s}
            )
            return int(new[0][0]), ()
        slice_id, shut_down, stored_expires_s = rows[0][:3]
        if shut_down:
            raise PolicyViolation(
                "shutdown", f"slice {slice_urn} was shut down; an operator must release it before it books again"
            )
        if stored_expires_s != expires_s:
            execute_plain(
                connection_of(session, writes=True), _SLICE_EXPIRES, {"slice_id": slice_id, "new_expires_s": expires_s}
            )
        return int(slice_id), _user_records((row[3], row[4]) for row in rows if row[3] is not None)

    @staticmethod
    def _held_after_lock(session: Session, span: Interval, wanted: list[_Wanted]) -> dict[int, list[Interval]]:
        """What the wanted nodes hold during ``span``, read by a statement of its own (its snapshot is taken after
        the nodes' locks)."""
        return held_windows(session, span[0], span[1], node_ids={node.id for _, node, _ in wanted})

    def _split_free(
        self,
        session: Session,
        wanted: list[_Wanted],
        busy: dict[int, list[Interval]],
        read_after_lock: Callable[[], dict[int, list[Interval]]] | None = None,
    ) -> tuple[list[_Wanted], list[Conflict]]:
        """Split the wanted windows into free ones and conflicts (with the clashing windows and next free start).
        ``busy``: the windows held on each node during the requested span, by start. ``read_after_lock``: when they
        may be older than the nodes' locks, what reads them again after the locks: a clash is decided on that read
        (a slot released meanwhile is free), before the conflicts' details are read."""
        if not wanted:
            return [], []
        earliest = min(window[0] for _, _, window in wanted)
        latest = max(window[1] for _, _, window in wanted)
        # Checking needs only what lies inside the requested span; later windows matter only to say when a
        # conflicting node is free next, so they are read for conflicting nodes only.
        free, clashes = _sorted_out(wanted, busy)
        if clashes and read_after_lock is not None:
            free, clashes = _sorted_out(wanted, read_after_lock())
        if not clashes:
            return free, []
        later = held_windows(session, earliest, node_ids={node.id for _, node, _, _ in clashes})
        outside = _external_labels(session, earliest, latest, {node.id for _, node, _, _ in clashes})
        conflicts = []
        for request, node, window, clashing in clashes:
            accepted = [w for _, other, w in free if other.id == node.id]
            taken_all = merge(later[node.id] + accepted)
            next_start = earliest_start(taken_all, window[0], window[1] - window[0], node.grain_s)
            conflicts.append(
                Conflict(
                    node.component_id,
                    request.start,
                    request.end,
                    f"is reserved outside sfa-omf ({outside[node.id]})" if node.id in outside else "is booked",
                    clashing=tuple((from_s(a), from_s(b)) for a, b in clashing),
                    next_free_start=from_s(next_start),
                )
            )
        return free, conflicts

    def _check_limits(
        self, session: Session, slice_id: int, slice_urn: str, owner_urn: str, free: list[_Wanted], now_s: int
    ) -> None:
        """The per-slice and per-user limits for what a booking adds: every lease it creates (one per window and
        lease label, as ``_insert`` groups them) and every node-hour of it."""
        connection = connection_of(session)
        new_leases = sorted({(window, request.lease_label) for request, _, window in free})
        self._check_concurrent(connection, slice_id, slice_urn, [window for window, _ in new_leases])
        self._check_daily_hours(connection, owner_urn, [window for _, _, window in free])
        self._check_hours_ahead(connection, owner_urn, [window for _, _, window in free], now_s)

    @property
    def _has_user_limits(self) -> bool:
        """Whether the policy limits a user's node-hours (per day, or held ahead): bookings and extensions of one
        user are then checked one after the other (PostgreSQL: the booker's advisory lock)."""
        policy = self.policy
        return policy.max_hours_per_day_per_user is not None or policy.max_node_hours_ahead_per_user is not None

    @property
    def _has_limits(self) -> bool:
        """Whether the policy limits leases per slice or node-hours per user (checked on bookings and extensions)."""
        return self.policy.max_concurrent_leases_per_slice is not None or self._has_user_limits

    def _check_concurrent(
        self,
        connection: Connection,
        slice_id: int,
        slice_urn: str,
        new_windows: Sequence[Interval],
        refusal: str = "",
        leaving_out: str = "",
    ) -> None:
        """max_concurrent_leases_per_slice: the slice's active leases (but ``leaving_out``, a lease being renewed)
        and the new windows, each new one counted with the ones before it, may never be more than the limit at the
        same moment. ``refusal``: what the refusal's message begins with."""
        limit = self.policy.max_concurrent_leases_per_slice
        if limit is None or not new_windows:
            return
        query = select(Lease.start_s, Lease.end_s).where(
            Lease.slice_id == slice_id, Lease.state.in_(ACTIVE_LEASE_STATES), Lease.id != leaving_out
        )
        held: list[Interval] = [(start, end) for start, end in connection.execute(query).all()]
        for window in new_windows:
            concurrent = 1 + _most_at_once(held, window)
            if concurrent > limit:
                raise PolicyViolation(
                    "max_concurrent_leases_per_slice",
                    f"{refusal}slice {slice_urn} would hold {concurrent} leases at once, more than {limit}",
                )
            held.append(window)

    def _check_daily_hours(
        self, connection: Connection, owner_urn: str, added: Sequence[Interval], refusal: str = ""
    ) -> None:
        """max_hours_per_day_per_user: on every UTC day ``added`` (one window per node) falls on, the owner's booked
        node-hours with it may not exceed the limit. ``refusal``: what the refusal's message begins with."""
        limit = self.policy.max_hours_per_day_per_user
        if limit is None or not owner_urn or not added:
            return
        asked = _node_seconds_per_day(added)
        used = _used_per_day(connection, owner_urn, min(asked) * DAY_S, (max(asked) + 1) * DAY_S)
        for day, seconds in sorted(asked.items()):
            total_hours = (used.get(day, 0) + seconds) / 3600
            if total_hours > limit:
                raise PolicyViolation(
                    "max_hours_per_day_per_user",
                    f"{refusal}{owner_urn} would book {total_hours:g} node-hours on "
                    f"{from_s(day * DAY_S):%Y-%m-%d}, more than {limit:g}",
                )

    def _check_hours_ahead(
        self, connection: Connection, owner_urn: str, added: Sequence[Interval], now_s: int, refusal: str = ""
    ) -> None:
        """max_node_hours_ahead_per_user: the node-hours the owner holds from now on, in every slice (the slivers of
        theirs that hold a node and have not ended, counted from now), with ``added`` (one window per node, counted
        from now too), may not exceed the limit. ``refusal``: what the refusal's message begins with."""
        limit = self.policy.max_node_hours_ahead_per_user
        if limit is None or not owner_urn or not added:
            return
        held_s = _held_ahead_s(connection, owner_urn, now_s)
        added_s = sum(max(end - max(start, now_s), 0) for start, end in added)
        total_hours = (int(held_s) + added_s) / 3600
        if added_s and total_hours > limit:
            raise PolicyViolation(
                "max_node_hours_ahead_per_user",
                f"{refusal}{owner_urn} holds {int(held_s) / 3600:g} node-hours of leases not yet ended and asks for "
                f"{added_s / 3600:g} more: {total_hours:g} node-hours, more than the {limit:g} one user may hold ahead "
                "on this aggregate; delete or shorten leases you no longer need, or book fewer nodes or hours",
            )

    def limits_reach(self, extensions: Sequence[AlapExtension]) -> dict[str, tuple[int, str]]:
        """geni_extend_alap under the per-slice and per-user limits: how far max_concurrent_leases_per_slice,
        max_node_hours_ahead_per_user and max_hours_per_day_per_user let each lease go, taken in order (each extension
        granted counts against the next ones, as ``renew_all`` checks them one after the other): the latest end on
        the lease's slots, at most ``until_s`` and never before its end, with which these limits still hold, and the
        limit that stops it in words (by lease id). Leases no such limit stops before ``until_s`` are left out. One
        read; the renewal checks again under the slice's and the owner's locks."""
        policy = self.policy
        wanted = [extension for extension in extensions if extension.until_s > extension.end_s]
        if not self._has_limits or not wanted:
            return {}
        now_s = to_s(self.clock())
        owners = sorted({ext.owner_urn for ext in wanted} - {""})
        first_s, last_s = min(ext.end_s for ext in wanted), max(ext.until_s for ext in wanted)
        ahead: dict[str, int] = {}
        daily: dict[str, dict[int, int]] = {}
        slices: dict[int, dict[str, Interval]] = {}  # slice id -> its active leases' windows, by lease id
        with self.database.read() as session:
            connection = session.connection()
            lease_ids = sorted({ext.lease_id for ext in wanted})
            holding = dict(
                connection.execute(
                    select(Sliver.lease_id, func.count())
                    .where(Sliver.lease_id.in_(lease_ids), Sliver.holds_node.is_(True))
                    .group_by(Sliver.lease_id)
                ).all()
            )
            slice_of = dict(connection.execute(select(Lease.id, Lease.slice_id).where(Lease.id.in_(lease_ids))).all())
            if policy.max_concurrent_leases_per_slice is not None:
                rows = connection.execute(
                    select(Lease.slice_id, Lease.id, Lease.start_s, Lease.end_s).where(
                        Lease.slice_id.in_(sorted(set(slice_of.values()))), Lease.state.in_(ACTIVE_LEASE_STATES)
                    )
                )
                for slice_id, lease_id, start_s, end_s in rows:
                    slices.setdefault(slice_id, {})[lease_id] = (start_s, end_s)
            if policy.max_node_hours_ahead_per_user is not None:
                ahead = {owner: _held_ahead_s(connection, owner, now_s) for owner in owners}
            if policy.max_hours_per_day_per_user is not None:
                daily = {owner: _used_per_day(connection, owner, first_s // DAY_S * DAY_S, last_s) for owner in owners}
        reach: dict[str, tuple[int, str]] = {}
        for ext in wanted:
            end_s, why = ext.until_s, ""
            windows = slices.get(slice_of.get(ext.lease_id, -1))
            if windows is not None and ext.lease_id in windows:
                start_s = windows[ext.lease_id][0]
                end_s, why = self._concurrent_reach(ext, start_s, windows, end_s, why)
                windows[ext.lease_id] = (start_s, end_s)  # the next leases' checks count it so
            nodes = int(holding.get(ext.lease_id, 0))
            if ext.owner_urn and nodes:  # (a lease holding no node adds no node-hours)
                end_s, why = self._user_reach(ext, nodes, now_s, ahead, daily, end_s, why)
            if why:
                reach[ext.lease_id] = (end_s, why)
        return reach

    def _concurrent_reach(
        self, ext: AlapExtension, start_s: int, windows: Mapping[str, Interval], end_s: int, why: str
    ) -> tuple[int, str]:
        """``limits_reach`` for max_concurrent_leases_per_slice: the lease's window may grow until another of the
        slice's leases that starts in the extension would make one too many at once (``windows``: the slice's
        active leases by id, this one included)."""
        limit = self.policy.max_concurrent_leases_per_slice
        assert limit is not None
        others = [window for lease_id, window in windows.items() if lease_id != ext.lease_id]
        held_now = 1 + _most_at_once(others, (start_s, ext.end_s))
        if held_now > limit:  # over already (a limit lowered since): no extension
            stop_s, at_once = ext.end_s, held_now
        else:
            moments = [ext.end_s, *sorted(start for start, _ in others if ext.end_s < start < end_s)]
            counts = [(moment, 1 + sum(1 for s, e in others if s <= moment < e)) for moment in moments]
            over = [(moment, count) for moment, count in counts if count > limit]
            if not over:
                return end_s, why
            stop_s, at_once = over[0]
        reached_s = max(align_down(stop_s, ext.grain_s), ext.end_s)
        return reached_s, (
            f"the slice may hold at most {limit} leases at once on this aggregate and would hold {at_once} at "
            f"{format_time(from_s(stop_s))} (policy rule max_concurrent_leases_per_slice); leases end on slot "
            "boundaries"
        )

    def _user_reach(
        self,
        ext: AlapExtension,
        nodes: int,
        now_s: int,
        ahead: dict[str, int],
        daily: dict[str, dict[int, int]],
        end_s: int,
        why: str,
    ) -> tuple[int, str]:
        """``limits_reach`` for the per-user limits, on ``nodes`` slivers holding a node, with the owner's node-seconds
        held ahead (``ahead``) and per day (``daily``), which the extension granted is then added to."""
        owner = ext.owner_urn
        ahead_limit, daily_limit = self.policy.max_node_hours_ahead_per_user, self.policy.max_hours_per_day_per_user
        if ahead_limit is not None:
            counted_s = max(ext.end_s, now_s)  # counted from now, as _check_hours_ahead counts it
            room_s = max(math.floor(ahead_limit * 3600 - ahead[owner]), 0)
            most_s = max(align_down(counted_s + room_s // nodes, ext.grain_s), ext.end_s)
            if most_s < end_s:
                end_s = most_s
                why = (
                    f"{owner} may hold at most {ahead_limit:g} node-hours of leases not yet ended on this aggregate "
                    f"and holds {ahead[owner] / 3600:g}, where each hour of this lease counts {nodes} (policy rule "
                    "max_node_hours_ahead_per_user); leases end on slot boundaries"
                )
        if daily_limit is not None:
            used = daily[owner]
            cursor_s, stopped_on = ext.end_s, None
            while cursor_s < end_s:  # day by day: the part of each day the day's room leaves
                day = cursor_s // DAY_S
                part_end_s = min((day + 1) * DAY_S, end_s)
                room_s = max(math.floor(daily_limit * 3600 - used.get(day, 0)), 0) // nodes
                if cursor_s + room_s < part_end_s:
                    cursor_s, stopped_on = cursor_s + room_s, day
                    break
                cursor_s = part_end_s
            if stopped_on is not None:
                end_s = max(align_down(cursor_s, ext.grain_s), ext.end_s)
                why = (
                    f"{owner} may book at most {daily_limit:g} node-hours per UTC day on this aggregate and holds "
                    f"{used.get(stopped_on, 0) / 3600:g} on {from_s(stopped_on * DAY_S):%Y-%m-%d}, where each hour "
                    f"of this lease counts {nodes} (policy rule max_hours_per_day_per_user); leases end on slot "
                    "boundaries"
                )
        # What this one is granted counts against the owner's next leases.
        if end_s > ext.end_s:
            if owner in ahead:
                ahead[owner] += nodes * max(end_s - max(ext.end_s, now_s), 0)
            if owner in daily:
                for day, seconds in _node_seconds_per_day([(ext.end_s, end_s)]).items():
                    daily[owner][day] = daily[owner].get(day, 0) + nodes * seconds
        return end_s, why

    def _insert(
        self,
        session: Session,
        slice_id: int,
        slice_urn: str,
        owner_urn: str,
        free: list[_Wanted],
        now_s: int,
        read_slice: bool,
    ) -> tuple[list[LeaseRecord], Sequence[Sequence[Any]] | None]:
        """Insert the leases and their slivers and answer their records, made from the values written: one statement
        with the generation's bump for one sliver on PostgreSQL, else two (however many leases and slivers). With
        ``read_slice``, the one statement also reads the slice's other active leases with their nodes (the rows of
        ``_SLICE_LEASES_WITH_NODES``, as they were before it: the new lease is not among them), answered second;
        None when they are still to be read."""
        by_lease: dict[tuple[Interval, str], list[tuple[BookingRequest, _BookedNode]]] = defaultdict(list)
        for request, node, window in free:
            by_lease[(window, request.lease_label)].append((request, node))
        lease_rows: list[dict[str, Any]] = []
        sliver_rows: list[dict[str, Any]] = []
        records = []
        for (window, label), members in sorted(by_lease.items()):
            lease_id = str(uuid.uuid4())
            lease_rows.append(
                {
                    "id": lease_id,
                    "slice_id": slice_id,
                    "owner_urn": owner_urn,
                    "start_s": window[0],
                    "end_s": window[1],
                    "state": "allocated",
                    "client_id": label,
                }
            )
            start, end = from_s(window[0]), from_s(window[1])
            expires_s = min(now_s + self.policy.allocation_ttl_s, window[1])
            expires = from_s(expires_s)
            slivers = []
            # Insert in node order so that racing transactions on PostgreSQL take locks in the same order.
            for request, node in sorted(members, key=lambda member: member[1].id):
                urn = new_sliver_urn(self.sliver_authority)
                sliver_rows.append(
                    {
                        "urn": urn,
                        "lease_id": lease_id,
                        "node_id": node.id,
                        "start_s": window[0],
                        "end_s": window[1],
                        "holds_node": True,
                        "allocation_state": "geni_allocated",
                        "operational_state": "geni_pending_allocation",
                        "expires_s": expires_s,
                        "client_id": request.client_id,
                        "disk_image": request.disk_image,
                    }
                )
                slivers.append(
                    SliverRecord(
                        urn=urn,
                        node=node.component_id,
                        lease_id=lease_id,
                        start=start,
                        end=end,
                        allocation_state="geni_allocated",
                        operational_state="geni_pending_allocation",
                        expires=expires,
                        client_id=request.client_id,
                        disk_image=request.disk_image,
                    )
                )
            records.append(
                LeaseRecord(
                    id=lease_id,
                    slice_urn=slice_urn,
                    owner_urn=owner_urn,
                    start=start,
                    end=end,
                    state="allocated",
                    client_id=label,
                    slivers=tuple(sorted(slivers, key=lambda sliver: sliver.node)),  # as lease_record orders them
                )
            )
        if len(sliver_rows) == 1 and not self.database.is_sqlite:  # nearly every Allocate: one statement
            (lease_row,), (sliver_row,) = lease_rows, sliver_rows
            statement = _lease_and_sliver(tuple(lease_row), tuple(sliver_row), read_slice)
            parameters = {**_prefixed("lease_", lease_row), **_prefixed("sliver_", sliver_row), **bump_parameters()}
            if read_slice:
                parameters["slice_urn"] = slice_urn
            rows = execute_plain(connection_of(session, bumps=True), statement, parameters)
            return records, rows if read_slice else None
        if lease_rows:
            connection = connection_of(session, writes=True)
            _insert_rows(connection, _INSERT_LEASE, lease_rows)
            _insert_rows(connection, _INSERT_SLIVER, sliver_rows)
        return records, None

    # -- changing leases --------------------------------------------------------------------------------------
    def renew(
        self,
        lease_id: str,
        new_end: datetime,
        rounding: Rounding = "",
        slice_expires: datetime | None = None,
    ) -> LeaseRecord:
        """Extend or shorten a lease, with the same availability and policy checks as booking.

        ``rounding`` "up" moves a new end inside a slot to the end of that slot (clients ask for "+5 minutes" or
        "+2 days" and must not get less); "down" to its start (as long as possible: the last whole slot before a
        limit). ``slice_expires`` is the expiry of the slice credential the call came with: it decides, and the
        slice's stored expiry is updated from it (the slice may have been renewed at its authority since).
        """
        return self.renew_all([(lease_id, new_end, rounding)], slice_expires)[0]

    def renew_all(
        self,
        renewals: Sequence[tuple[str, datetime, Rounding]],
        slice_expires: datetime | None = None,
        read: RenewalRead | None = None,
    ) -> list[LeaseRecord]:
        """Renew several leases (lease id, new end, rounding) in one unit of work: all of them or none. ``read``:
        the leases as ``leases_for_renewal`` read them for this call, which spares a one-lease renewal its own read."""
        try:
            # The one-statement renewal cannot check the per-slice and per-user limits: with limits, the unit of work.
            if len(renewals) == 1 and not self.database.is_sqlite and not self._has_limits:
                lease_id, new_end, rounding = renewals[0]
                as_read = None if read is None else read.checks.get(lease_id)
                renewed = retry_transient(
                    lambda: self._renew_alone(lease_id, new_end, rounding, slice_expires, as_read)
                )
                if renewed is not None:
                    return [renewed]
            return retry_transient(lambda: self._renew_once(renewals, slice_expires))
        except _EndTooLate as too_late:  # read once the unit of work is over (it wrote nothing)
            raise too_late.saying(*self._latest_end(too_late)) from None

    def _latest_end(self, too_late: _EndTooLate) -> tuple[int, str]:
        """The latest end every check of a renewal allows the lease ``too_late`` refused, and what stops it there
        in words: the least of the rules' latest ends (``too_late.limits``), of its end when a node of it is out of
        use, of the next booking of one of its nodes, and of what the per-slice and per-user limits allow
        (``limits_reach``): as far as geni_extend_alap would take it, from the same reads. Asked for, that end is
        renewed (unless a racer books the time meanwhile), where the rule's own end could be refused in turn by a
        check after it."""
        latest_s, why = min(too_late.limits, key=lambda limit: limit[0])  # the refused rule's first: it wins a tie
        lease, nodes, grain_s = too_late.lease, too_late.nodes, too_late.grain_s
        end_s = lease.end_s
        if latest_s <= end_s:  # (shorter than it is: no other check refuses that)
            return latest_s, why
        down = [node for node in nodes if node.node_state != "usable"]
        if down:
            return end_s, f"{down[0].component_id} {unusable_why(down[0].node_state)}"
        held = self.held_windows_of((node.component_id for node in nodes), end_s, latest_s)
        latest_s, why = reach_before_next_booking(end_s, (latest_s, why), held, grain_s)
        if latest_s > end_s:
            extension = AlapExtension(too_late.lease_id, lease.owner_urn, end_s, latest_s, grain_s)
            latest_s, why = self.limits_reach([extension]).get(too_late.lease_id, (latest_s, why))
        return latest_s, why

    def _renew_alone(
        self,
        lease_id: str,
        new_end: datetime,
        rounding: Rounding,
        slice_expires: datetime | None,
        as_read: Sequence[_RenewalRow] | None = None,
    ) -> LeaseRecord | None:
        """PostgreSQL, one lease: checked as last committed (``as_read``: the call's own read, made before it was
        authorized; else one read here), then renewed by one statement of its own that writes only if the lease is
        still as read and, when extending, no other lease holds its nodes in the extension and they are all still
        usable: one or two round trips instead of four. None when it wrote nothing for a reason the unit of work
        must look into: the lease changed since it was read, the extension is held or a node out of use (the unit
        of work names them), or the slice's expiry is to be written too (nearly never)."""
        now_s = to_s(self.clock())
        target = as_read
        if target is None:
            rows = self.database.fetch_all(_READ_RENEWED_LEASE, {"lease_id": lease_id})
            target = [_RenewalRow(*row) for row in rows]
        renewal = self._checked_renewal(
            target, lease_id, new_end, rounding, slice_expires, now_s, lambda: self._live_hold_alone(lease_id, now_s)
        )
        if renewal.new_slice_expires_s is not None:
            return None
        lease = renewal.lease
        parameters = {
            "renewed_lease": lease_id,
            "read_state": lease.state,
            "old_end_s": lease.end_s,
            "new_end_s": renewal.new_end_s,
            "allocation_ends_s": now_s + self.policy.allocation_ttl_s,
            **bump_parameters(),
        }
        try:
            rows = self.database.write_alone(_renewal_alone(renewal.new_end_s > lease.end_s), parameters)
        except IntegrityError as exc:
            if is_overlap_violation(exc):  # a booking of the extension committed while the statement ran
                return None
            raise
        if not rows:
            return None
        return _lease_record_of(
            (
                lease_id,
                lease.slice_urn,
                lease.owner_urn,
                lease.start_s,
                renewal.new_end_s,
                lease.state,
                lease.client_id,
            ),
            [row[1:] for row in rows if row[1] is not None],
        )

    def _renew_once(
        self, renewals: Sequence[tuple[str, datetime, Rounding]], slice_expires: datetime | None
    ) -> list[LeaseRecord]:
        now_s = to_s(self.clock())
        lease_id = ""
        try:
            with self.database.write_connection() as connection:
                lease_ids = [lease_id for lease_id, _, _ in renewals]
                locked = self._lock_for_limits(connection, lease_ids)
                self._lock_in_id_order(connection, lease_ids)
                records = []
                for number, (lease_id, new_end, rounding) in enumerate(renewals, 1):
                    last = number == len(renewals)
                    records.append(
                        self._renew_in(connection, lease_id, new_end, rounding, slice_expires, now_s, last, locked)
                    )
                if records and self.database.is_sqlite:  # (on PostgreSQL the last renewal's statement bumped it)
                    bump_on(connection)
                return records
        except IntegrityError as exc:
            if is_overlap_violation(exc):
                raise GeniError(
                    Reason.BOOKING_CONFLICT, f"lease {lease_id} cannot be extended: another booking took the time"
                ) from exc
            raise

    def _renew_in(
        self,
        connection: Connection,
        lease_id: str,
        new_end: datetime,
        rounding: Rounding,
        slice_expires: datetime | None,
        now_s: int,
        last: bool,
        locked: frozenset[str] | None = None,
    ) -> LeaseRecord:
        # Column statements on plain rows, as the booking and the cancel: one statement locks the lease row and reads
        # it with what the checks need of its slice and its slivers' nodes; the slivers are written and answered by
        # one UPDATE ... RETURNING that also checks the extension is free (the held windows are read only to say
        # who holds it when it is not).
        target = [_RenewalRow(*row) for row in execute_plain(connection, _LOCK_RENEWED_LEASE, {"lease_id": lease_id})]
        renewal = self._checked_renewal(
            target, lease_id, new_end, rounding, slice_expires, now_s, lambda: _live_hold(connection, lease_id, now_s)
        )
        self._check_extension_limits(connection, lease_id, renewal, locked)
        lease, nodes, new_end_s, end_s = renewal.lease, renewal.nodes, renewal.new_end_s, renewal.lease.end_s
        if renewal.new_slice_expires_s is not None:
            expiry_parameters = {"slice_id": lease.slice_id, "new_expires_s": renewal.new_slice_expires_s}
            execute_plain(connection, _SLICE_EXPIRES, expiry_parameters)
        # A provisioned sliver lives to its end; an allocation still expires if not provisioned in time, but renewing
        # it gives it the time to be provisioned again (GENI: Renew extends allocations). Computed by the UPDATE from
        # each sliver's row as it is now (the lock above is on the lease: its slivers' every writer takes it first).
        parameters = {
            "renewed_lease": lease_id,
            "new_end_s": new_end_s,
            "allocation_ends_s": now_s + self.policy.allocation_ttl_s,
            "old_end_s": end_s,
        }
        bumping = last and not self.database.is_sqlite
        statement = _renewal_statement(new_end_s > end_s, bumping)
        slivers = execute_plain(connection, statement, {**parameters, **bump_parameters()} if bumping else parameters)
        if len(slivers) < len(nodes):  # a sliver's node is held in the extension by another lease: nothing is kept
            conflicts = _extension_conflicts(connection, lease_id, nodes, (end_s, new_end_s))
            if not conflicts:
                # The holder let the time go between the check (the UPDATE's snapshot) and this read (a newer one,
                # PostgreSQL's READ COMMITTED): the unit of work again, which books the time or names who holds it.
                raise TransientConflict("the extension's holder changed while it was checked")
            raise BookingConflict(conflicts)
        if not bumping:
            execute_plain(connection, _RENEW_LEASE, parameters)
        return _lease_record_of(
            (lease_id, lease.slice_urn, lease.owner_urn, lease.start_s, new_end_s, lease.state, lease.client_id),
            slivers,
        )

    def _lock_in_id_order(self, connection: Connection, lease_ids: Sequence[str]) -> None:
        """PostgreSQL, several leases: their rows locked in id order, before each is renewed in the caller's order
        (``_renew_in`` locks its lease again, already held). Locked in the caller's order, a renewal naming [b, a]
        held b while it waited for a, which another writer held waiting for b: a deadlock. (SQLite's BEGIN IMMEDIATE
        has serialized the writers already; one lease is one lock, in no order.)"""
        distinct = sorted(set(lease_ids))
        if self.database.is_sqlite or len(distinct) < 2:
            return
        execute_plain(
            connection, _lock_leases_in_id_order(listed_count(distinct)), listed_values("lease_ids", distinct)
        )

    def _lock_for_limits(self, connection: Connection, lease_ids: Sequence[str]) -> frozenset[str] | None:
        """PostgreSQL, with per-slice or per-user limits: the advisory locks a booking takes (``lock_names``) of the
        renewed leases' slices and owners, taken before the leases' rows (in a booking's order), so that renewals and
        bookings of one slice or one user are checked one after the other. Answers the names locked; None when there
        is nothing to lock (SQLite's BEGIN IMMEDIATE has serialized the writers already)."""
        if self.database.is_sqlite or not self._has_limits:
            return None
        names: set[str] = set()
        for lease_id in lease_ids:
            names.update(*execute_plain(connection, _LEASE_NAMES, {"lease_id": lease_id}))
        names.discard("")
        for name in sorted(names):  # sorted, as lock_names takes them: never in a cycle
            execute_plain(connection, _LOCK_NAME, {"key": advisory_key(name)})
        return frozenset(names)

    def _check_extension_limits(
        self, connection: Connection, lease_id: str, renewal: _Renewal, locked: frozenset[str] | None
    ) -> None:
        """A renewal that extends its lease is checked against the per-slice and per-user limits as a booking of
        the new time is: the lease with its new window counted once with the slice's others (itself, as stored, left
        out), and its owner's node-hours with the extension of each sliver that holds a node (its stored part is
        among them already). ``locked``: the names ``_lock_for_limits`` locked (None on SQLite)."""
        lease, new_end_s = renewal.lease, renewal.new_end_s
        if new_end_s <= lease.end_s or not self._has_limits:
            return
        if locked is not None and not {lease.slice_urn, lease.owner_urn} - {""} <= locked:
            # The lease's owner was renamed (a user removed) since its names were read: locked the wrong ones.
            raise TransientConflict(f"lease {lease_id} changed owner while it was renewed")
        refusal = f"lease {lease_id} cannot be extended to {format_time(from_s(new_end_s))}: "
        window = (lease.start_s, new_end_s)
        self._check_concurrent(connection, lease.slice_id, lease.slice_urn, [window], refusal, leaving_out=lease_id)
        if self._has_user_limits and lease.owner_urn:
            holding = execute_plain(connection, _HOLDING_SLIVERS, {"lease_id": lease_id})[0][0]
            extension = [(lease.end_s, new_end_s)] * int(holding)
            self._check_daily_hours(connection, lease.owner_urn, extension, refusal)
            self._check_hours_ahead(connection, lease.owner_urn, extension, to_s(self.clock()), refusal)

    def _longest(self, start_s: int, nodes: Sequence[_RenewalRow], grain_s: int) -> tuple[int, str]:
        """The latest end max_duration allows a lease from ``start_s`` on these nodes (its partial first slot, booked
        from now, does not count), on a boundary of their slots, with the rule in words."""
        counted_from_s = max_duration_counted_from(start_s, [node.grain_s for node in nodes])
        longest_s = self.policy.max_duration_s
        return (
            align_down(counted_from_s + longest_s, grain_s),
            f"a lease lasts at most {human_duration(longest_s)} (policy rule max_duration)",
        )

    def _checked_renewal(
        self,
        target: Sequence[_RenewalRow],
        lease_id: str,
        new_end: datetime,
        rounding: Rounding,
        slice_expires: datetime | None,
        now_s: int,
        read_hold: Callable[[], HoldEnd | None],
    ) -> _Renewal:
        """The renewal of the lease read as ``target`` (rows of ``_LOCK_RENEWED_LEASE``), once every check passed:
        the lease is there and active, the new end (rounded as asked) is in the future, after its start, within the
        slice's expiry and the policy's limits; raises with the reason otherwise. Writes nothing. ``read_hold``: the
        live Provision hold on the lease, read only to refuse a lapsed allocation (its refusal says until when)."""
        asked_s = new_end_s = to_s(new_end)
        if not target:
            raise GeniError(Reason.NOT_FOUND, f"there is no lease {lease_id}")
        lease = target[0]
        if lease.state not in ACTIVE_LEASE_STATES:
            raise GeniError(Reason.BAD_ARGS, f"lease {lease_id} is {lease.state} and cannot be renewed")
        if lease.state == "allocated":  # an allocation past its time to be provisioned is not revived by a renewal
            expiries = [row.allocation_expires_s for row in target if row.allocation_expires_s is not None]
            if allocation_expiry_s(expiries, lease.end_s) <= now_s:  # (the hold read on the refusal's path only)
                refuse_expired_allocation(lease_id, expiries, lease.end_s, now_s, read_hold())
        if asked_s <= now_s:
            raise GeniError(
                Reason.BAD_ARGS,
                f"the new end {format_time(from_s(asked_s))} is in the past (it is "
                f"{format_time(from_s(now_s))} now): ask for a later time, or Delete to release the lease",
            )
        nodes = [node for node in target if node.node_id is not None]  # (a lease without slivers has no node)
        start_s = lease.start_s
        # A slot boundary of every node: the least common multiple of their grains (45 and 30 minutes: 90), not the
        # largest grain, whose boundaries are not all boundaries of the others.
        grain_s = math.lcm(*(max(node.grain_s, 1) for node in nodes)) if nodes else 1
        if rounding == "up":
            new_end_s = align_up(new_end_s, grain_s)
        elif rounding == "down":
            new_end_s = align_down(new_end_s, grain_s)
        if new_end_s <= start_s:
            raise GeniError(
                Reason.BAD_ARGS,
                f"{format_time(from_s(asked_s))} is not after lease {lease_id} starts "
                f"({format_time(from_s(start_s))}): a lease ends after it starts; cancel "
                "it (Delete) or ask for a later end",
            )
        slice_expires_s = lease.slice_expires_s
        if slice_expires is not None:  # the call's credential is the slice's latest word
            slice_expires_s = to_s(slice_expires)
        expiry = format_time(from_s(slice_expires_s))
        if new_end_s > slice_expires_s:
            latest_s = align_down(slice_expires_s, grain_s)  # the last boundary of every node's slots before expiry
            if asked_s > slice_expires_s:
                rounded = ""
            elif latest_s <= lease.end_s:  # (slots of nodes with unlike grains meet seldom: their lcm may be hours)
                rounded = (
                    f" (leases end on a boundary of every node's slots, every {exact_duration(grain_s)} here: "
                    f"{format_time(from_s(asked_s))} would end at {format_time(from_s(new_end_s))}, and none falls "
                    f"between the lease's end {format_time(from_s(lease.end_s))} and the slice's expiry)"
                )
            else:
                # The last boundary before the expiry, unless another check refuses it: the end they all allow.
                head = (
                    f"lease {lease_id} cannot end after the slice credential expires ({expiry}) (leases end on slot "
                    f"boundaries: {format_time(from_s(asked_s))} would end at {format_time(from_s(new_end_s))}"
                )
                raise _EndTooLate(
                    "slice_expiry",
                    f"{head}; ask for {format_time(from_s(latest_s))} at most); renew the slice at its authority, "
                    "then renew the lease with the new slice credential",
                    f"{head})",
                    (lease_id, lease, nodes, grain_s),
                    [(latest_s, f"the slice credential expires at {expiry}"), self._longest(start_s, nodes, grain_s)],
                )
            raise PolicyViolation(
                "slice_expiry",
                f"lease {lease_id} cannot end after the slice credential expires ({expiry}){rounded}; renew "
                "the slice at its authority, then renew the lease with the new slice credential",
            )
        partial_start = bool(start_s % grain_s)  # booked from now, inside a slot
        for node in nodes:
            try:
                check_window(self.policy, start_s, new_end_s, now_s, node.grain_s, node.component_id, partial_start)
            except PolicyViolation as too_long:
                if too_long.rule != "max_duration":
                    raise
                # The latest end the rule allows this lease, unless another check refuses it: the end they all allow.
                longest = self._longest(start_s, nodes, grain_s)
                head = f"lease {lease_id} cannot end at {format_time(from_s(new_end_s))}: {too_long.detail}"
                raise _EndTooLate(
                    "max_duration",
                    f"{head}; it may end at {format_time(from_s(longest[0]))} at the latest (ask for that end, or "
                    "for geni_extend_alap, which goes as far as allowed)",
                    head,
                    (lease_id, lease, nodes, grain_s),
                    [longest, (align_down(slice_expires_s, grain_s), f"the slice credential expires at {expiry}")],
                ) from None
        if new_end_s > lease.end_s:  # a node out of use takes no new time; a lease on it may still end earlier
            refused = [
                Conflict(node.component_id, from_s(lease.end_s), from_s(new_end_s), unusable_why(node.node_state))
                for node in nodes
                if node.node_state != "usable"
            ]
            if refused:
                raise BookingConflict(refused)
        # The stored expiry is written only when the credential's differs (nearly never).
        new_slice_expires_s = slice_expires_s if slice_expires_s != lease.slice_expires_s else None
        return _Renewal(lease, nodes, new_end_s, new_slice_expires_s)

    def cancel(self, lease_id: str) -> LeaseRecord:
        """Release a lease's nodes. Cancelling a cancelled lease changes nothing."""
        if not self.database.is_sqlite:
            # PostgreSQL: an active lease is cancelled, its slivers released and the generation bumped by one
            # statement, its own transaction (_CANCEL_ALONE). Not active, or not there: read as below.
            written = retry_transient(
                lambda: self.database.write_alone(_CANCEL_ALONE, {"cancelled_lease": lease_id, **bump_parameters()})
            )
            if written:
                return _lease_record_of(written[0][:7], [row[7:] for row in written if row[7] is not None])
        with self.database.write_connection() as connection:
            # An active lease: one statement locks and cancels its row and answers its columns (on PostgreSQL an
            # UPDATE that waited for the row's lock checks its condition again on the row as the other writer left
            # it), then one releases its slivers and answers theirs: every writer of a lease's slivers locks the
            # lease first, so they are read as the last such writer left them.
            cancelled_rows = execute_plain(connection, _CANCEL_ACTIVE_LEASE, {"cancelled_lease": lease_id})
            if not cancelled_rows:
                # Not active, or not there: read as it is. The lease row locked first, as _find_lease(lock=True)
                # does, then read with its slivers in one column query. Not in one statement: on PostgreSQL a SELECT
                # that waited for the lock re-reads the locked row alone, and the joined slivers would be the ones
                # from before the writer it waited for.
                execute_plain(connection, _LOCK_LEASE, {"lease_id": lease_id})
                query = _lease_query(False, False, False, False, False, True)
                found = _lease_records(execute_plain(connection, query, {"lease_id": lease_id}))
                if not found:
                    raise GeniError(Reason.NOT_FOUND, f"there is no lease {lease_id}")
                if found[0].state not in ACTIVE_LEASE_STATES:
                    return found[0]
                # Became active since the UPDATE? No lease ever does (states only move on from allocated and
                # provisioned), but should one, it is cancelled as above.
                cancelled_rows = execute_plain(connection, _CANCEL_ACTIVE_LEASE, {"cancelled_lease": lease_id})
            slivers = execute_plain(connection, _RELEASE_SLIVERS, {"released_lease": lease_id})
            bump_on(connection)
            return _lease_record_of(cancelled_rows[0], slivers)

    def cancel_allocated_holding(self, slice_urn: str, sliver_urns: Iterable[str]) -> LeaseRecord | None:
        """PostgreSQL: the allocated lease (never provisioned) of ``slice_urn`` whose slivers are exactly those named,
        cancelled with its slivers released and the generation bumped, in one statement of its own (as ``cancel``'s).
        None, having written nothing, when no such lease holds them all: not one lease, not this slice's, provisioned,
        no longer active, unknown, holding slivers not named (or on SQLite, or more slivers named than MAX_LISTED).
        The caller has authorized the call on ``slice_urn`` itself: a Delete of an allocation is then one round trip
        instead of two (its read of the slivers' slice, then the cancel)."""
        urns = sorted(set(sliver_urns))
        if self.database.is_sqlite or not urns or len(urns) > MAX_LISTED:
            return None
        parameters = {
            "slice_urn": slice_urn,
            "named_count": len(urns),
            **listed_values("sliver_urns", urns),
            **bump_parameters(),
        }
        written = retry_transient(lambda: self.database.write_alone(_cancel_allocated_holding(len(urns)), parameters))
        if not written:
            return None
        return _lease_record_of(written[0][:7], [row[7:] for row in written if row[7] is not None])

    def mark_provisioned(self, lease_id: str, check_expiry: bool = True) -> LeaseRecord:
        """An allocated lease becomes provisioned (again: no change, so a retried or finished Provision is fine).
        An allocation whose time to be provisioned has passed is refused (SEARCHFAILED), as after the sweep;
        ``check_expiry=False`` (a Provision asked in time that the testbed finished late) looks only at whether the
        lease is still allocated and its slot not over."""
        with self.database.write() as session:
            return self._provision_one(session, lease_id, to_s(self.clock()), check_expiry)

    @staticmethod
    def _provision_one(session: Session, lease_id: str, now_s: int, check_expiry: bool = True) -> LeaseRecord:
        return Bookings._provision_loaded(session, _find_lease(session, lease_id, lock=True), now_s, check_expiry)

    @staticmethod
    def _provision_loaded(session: Session, lease: Lease, now_s: int, check_expiry: bool = True) -> LeaseRecord:
        """Provision a lease read (and locked) in this unit of work; see ``mark_provisioned``."""
        lease_id = lease.id
        if lease.state == "provisioned":
            return lease_record(lease)
        refuse_unless_allocated(lease_id, lease.state)
        # The slivers are read after the lease's lock, as the last writer left them. The sweep (every minute) has
        # not run yet: the allocation is expired all the same.
        expiries = [sliver.expires_s for sliver in lease.slivers] if check_expiry else []
        if allocation_expiry_s(expiries, lease.end_s) <= now_s:  # (the hold read on the refusal's path only)
            refuse_expired_allocation(lease_id, expiries, lease.end_s, now_s, _live_hold(session, lease_id, now_s))
        lease.state = "provisioned"
        for sliver in lease.slivers:
            sliver.allocation_state = "geni_provisioned"
            sliver.operational_state = "geni_ready"  # wanted running; during its slot it is
            sliver.expires_s = lease.end_s
        return lease_record(lease)

    def mark_provisioned_all(
        self,
        lease_ids: Sequence[str],
        slice_urn: str,
        users: Mapping[str, Sequence[str]] | None = None,
        contact: Contact | None = None,
        hold: ProvisionHold | None = None,
    ) -> list[LeaseRecord]:
        """Provision several allocated leases of one slice, and merge the users sent with the call (and keep the
        caller's GID e-mail), in one unit of work: a Provision is recorded whole or not at all. With the Provision's
        ``hold`` (``hold_for_provision``), an allocation is in its time if it was when the Provision was asked,
        however long the testbed took (the hold kept the sweep off it, so it is still allocated), and the hold's rows
        go in the same unit of work."""
        with self.database.write() as session:
            if users:  # first, as every writer of the slice's users does: an Allocate's users and these never mix
                lock_slice(session, slice_urn)
            now_s = to_s(self.clock())
            asked_s = now_s if hold is None else hold.asked_s
            # The leases with their slivers, nodes and slice in a few statements (locked in id order, as the sweep
            # and hold_for_provision lock them), not several statements per lease: a Provision of thousands of
            # leases held the write lock for every other user's Allocate for half a minute.
            loaded = _leases_for_provision(session, lease_ids)
            records = []
            for lease_id in lease_ids:
                lease = loaded.get(lease_id)
                if lease is None:
                    raise GeniError(Reason.NOT_FOUND, f"there is no lease {lease_id}")
                records.append(self._provision_loaded(session, lease, asked_s))
            if hold is not None and hold.lease_ids:
                session.execute(delete(ProvisionHoldRow).where(ProvisionHoldRow.token == hold.token))
            record_contact(session, contact, now_s)
            if users:
                slice_row = session.scalar(select(Slice).where(Slice.urn == slice_urn).with_for_update())
                if slice_row is None:
                    raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has nothing here")
                apply_users(slice_row, users)
            return records

    def hold_for_provision(self, lease_ids: Sequence[str], asked_at: datetime) -> ProvisionHold:
        """Before the testbed's work of a Provision, which may take longer than what is left of an allocation's time:
        in one short unit of work under the leases' locks (in id order, as the sweep locks them), each allocation it
        provisions (``lease_ids``) that was in its time when the Provision was asked (``asked_at``) gets a row in
        ``provision_hold`` naming this Provision, which keeps the sweep (``expire_unprovisioned``) off it until
        ``PROVISION_HOLD_S`` after the asking. In the database: the sweep of every process and host sees it. The
        allocation's expiry is left as it is (Status and Renew show and change it as ever).

        One Provision at a time: an allocation another Provision holds (a double click, a retry while the first is
        at work) is refused BUSY, before any testbed work. One the sweep expired, or whose time was over when the
        Provision was asked, is refused SEARCHFAILED (Allocate again). A refusal writes nothing. A lease another
        Provision finished meanwhile is not held, and not in ``ProvisionHold.lease_ids``: the testbed is not asked
        for it again. The Provision ends its hold (``mark_provisioned_all``, ``end_provision_hold``); the hold of
        one whose process died lapses."""
        asked_s = to_s(asked_at)
        wanted = sorted(set(lease_ids))
        token = uuid.uuid4().hex

        def unit_of_work() -> ProvisionHold:
            with self.database.write() as session:
                now_s = to_s(self.clock())
                # In id order, as the sweep locks them: the two queue, never deadlock.
                leases = {
                    lease.id: lease
                    for lease in session.scalars(
                        select(Lease).where(Lease.id.in_(wanted)).order_by(Lease.id).with_for_update()
                    )
                }
                held: list[str] = []
                for lease_id in wanted:
                    lease = leases.get(lease_id)
                    if lease is None:
                        raise GeniError(Reason.NOT_FOUND, f"there is no lease {lease_id}")
                    if lease.state == "provisioned":
                        continue
                    refuse_unless_allocated(lease_id, lease.state)
                    # (The slivers are read after the lease's lock, as the last writer left them.)
                    expiries = [sliver.expires_s for sliver in lease.slivers]
                    if allocation_expiry_s(expiries, lease.end_s) <= asked_s:  # refused: with its live hold's end
                        hold = _live_hold(session, lease_id, now_s)
                        refuse_expired_allocation(lease_id, expiries, lease.end_s, asked_s, hold)
                    held.append(lease_id)
                if not held:
                    return ProvisionHold(token, asked_s, ())
                # Read after the leases' locks: a Provision that took its hold meanwhile has committed it.
                at_work = session.execute(
                    select(ProvisionHoldRow.lease_id, ProvisionHoldRow.held_until_s)
                    .where(
                        ProvisionHoldRow.lease_id.in_(held),
                        ProvisionHoldRow.token != LEFT_FOR_TESTBED,
                        ProvisionHoldRow.held_until_s > now_s,
                    )
                    .order_by(ProvisionHoldRow.lease_id)
                ).first()
                if at_work is not None:
                    # The hold's end too: a Provision whose process died holds the lease until then.
                    held_until = format_time(from_s(at_work.held_until_s))
                    if self.testbed_settle_s is not None:  # a testbed whose reconciler finishes what a call began
                        half_way = (
                            f"the testbed's reconciler finishes what it began within about {self.testbed_settle_s} "
                            f"s: retry Provision then. Its hold ends at {held_until} at the latest; if Provision is "
                            "still refused after the reconciler's time"
                        )
                    else:
                        half_way = f"its hold ends at {held_until} at the latest; if Provision is still refused then"
                    raise GeniError(
                        Reason.BUSY,
                        f"lease {at_work.lease_id} is being provisioned by another call; ask Status (SliverStatus on "
                        f"AM API v2), or try again in a moment. Should that call have stopped half-way, {half_way} "
                        "and no call of yours is at work on it, Delete the allocation (DeleteSliver on AM API v2 "
                        "deletes the whole slice's slivers) and Allocate (CreateSliver on AM API v2) again",
                    )
                # A lapsed hold, or one left while the testbed may hold the lease, is this Provision's now (the
                # testbed takes over a job an earlier call may have made).
                session.execute(delete(ProvisionHoldRow).where(ProvisionHoldRow.lease_id.in_(held)))
                session.execute(
                    insert(ProvisionHoldRow),
                    [
                        {"lease_id": lease_id, "token": token, "held_until_s": asked_s + PROVISION_HOLD_S}
                        for lease_id in held
                    ],
                )
                return ProvisionHold(token, asked_s, tuple(held))

        if not wanted:
            return ProvisionHold(token, asked_s, ())
        return retry_transient(unit_of_work)

    def end_provision_hold(self, hold: ProvisionHold, testbed_may_hold: Iterable[str] = ()) -> None:
        """A Provision that failed ends its hold (``hold_for_provision``): the sweep takes its allocations at their
        own expiry (as the last Renew left it). Except the leases the testbed may still hold (``testbed_may_hold``:
        it timed out, may have made the job, or could not release it): their hold stays until it lapses, no longer
        naming a Provision at work, so the sweep leaves the lease for OAR's reconciler to adopt the job and another
        Provision may take it over. Only this Provision's rows are touched."""
        if not hold.lease_ids:
            return
        kept = sorted(set(testbed_may_hold) & set(hold.lease_ids))

        def unit_of_work() -> None:
            with self.database.write() as session:
                own = ProvisionHoldRow.token == hold.token
                if kept:
                    session.execute(
                        update(ProvisionHoldRow)
                        .where(own, ProvisionHoldRow.lease_id.in_(kept))
                        .values(token=LEFT_FOR_TESTBED)
                    )
                session.execute(delete(ProvisionHoldRow).where(own))

        retry_transient(unit_of_work)

    def end_testbed_hold(self, lease_id: str, round_started: datetime) -> None:
        """The testbed's reconciler is done with a lease a failed Provision left to it (``end_provision_hold``'s
        ``testbed_may_hold``): it adopted the job (the lease is provisioned) or found the testbed never got it (the
        allocation is the sweep's again, at its own expiry). Ends that hold only: a Provision at work on the lease
        keeps its own. And only a hold asked before ``round_started`` (when the reconciler read what it acts on): one
        a newer Provision left meanwhile (a job the round has not seen) is left to the next round."""
        # held_until = asked + PROVISION_HOLD_S (whole seconds): asked in the round's first second counts as after.
        newest_held_until_s = to_s(round_started) - 1 + PROVISION_HOLD_S

        def unit_of_work() -> None:
            with self.database.write() as session:
                session.execute(
                    delete(ProvisionHoldRow).where(
                        ProvisionHoldRow.lease_id == lease_id,
                        ProvisionHoldRow.token == LEFT_FOR_TESTBED,
                        ProvisionHoldRow.held_until_s <= newest_held_until_s,
                    )
                )

        retry_transient(unit_of_work)

    def provision_hold_ends(self, lease_ids: Iterable[str]) -> dict[str, HoldEnd]:
        """The live Provision hold on each of these leases (leases without one are left out): when it ends, and
        whether a Provision is at work or it was left for the testbed (``HoldEnd``)."""
        wanted = sorted(set(lease_ids))
        if not wanted:
            return {}
        now_s = to_s(self.clock())
        with self.database.read() as session:
            rows = session.execute(
                select(ProvisionHoldRow.lease_id, ProvisionHoldRow.held_until_s, ProvisionHoldRow.token).where(
                    ProvisionHoldRow.lease_id.in_(wanted), ProvisionHoldRow.held_until_s > now_s
                )
            )
            return {lease_id: HoldEnd(until_s, token == LEFT_FOR_TESTBED) for lease_id, until_s, token in rows}

    def held_windows_of(self, component_ids: Iterable[str], after_s: int, until_s: int) -> dict[str, list[Interval]]:
        """The windows held on these nodes (any lease's, external reservations' too) that end after ``after_s`` and
        start before ``until_s``, by component id: one column query (geni_extend_alap's look at the next bookings)."""
        nodes = sorted(set(component_ids))
        if not nodes:
            return {}
        rows = self.database.fetch_all(
            select(Node.component_id, Sliver.start_s, Sliver.end_s)
            .join(Node, Sliver.node_id == Node.id)
            .where(
                Sliver.holds_node.is_(True),
                Node.component_id.in_(nodes),
                Sliver.end_s > after_s,
                Sliver.start_s < until_s,
            )
        )
        held: dict[str, list[Interval]] = {}
        for node, start_s, end_s in rows:
            held.setdefault(node, []).append((start_s, end_s))
        return held

    def _live_hold_alone(self, lease_id: str, now_s: int) -> HoldEnd | None:
        """``_live_hold`` in a read of its own (no unit of work open)."""
        with self.database.read() as session:
            return _live_hold(session, lease_id, now_s)

    def discard(self, lease_ids: Iterable[str]) -> None:
        """Remove leases as if they had never been booked: undoes a booking whose call failed after it was written
        (the call answered an error, so nobody holds these leases)."""
        wanted = set(lease_ids)
        if not wanted:
            return
        with self.database.write() as session:
            session.execute(delete(LeaseInstance).where(LeaseInstance.lease_id.in_(wanted)))  # containers it planned
            session.execute(delete(Sliver).where(Sliver.lease_id.in_(wanted)))
            session.execute(delete(Lease).where(Lease.id.in_(wanted)))

    def set_operational_states(self, lease_ids: Sequence[str], state: str) -> list[LeaseRecord]:
        """Record the operational state asked for on the slivers of several leases, all or none."""
        with self.database.write() as session:
            records = []
            for lease_id in lease_ids:
                lease = _find_lease(session, lease_id, lock=True)
                for sliver in lease.slivers:
                    sliver.operational_state = state
                records.append(lease_record(lease))
            return records

    def set_operational_state(self, lease_id: str, state: str) -> LeaseRecord:
        """Record the operational state the experimenter asked for (geni_start/geni_stop) on a lease's slivers."""
        with self.database.write() as session:
            lease = _find_lease(session, lease_id, lock=True)
            for sliver in lease.slivers:
                sliver.operational_state = state
            return lease_record(lease)

    def expire_unprovisioned(self) -> list[LeaseRecord]:
        """Release allocations whose time to be provisioned has passed (GENI: allocated slivers expire), but not one
        a Provision holds (``hold_for_provision``) until its hold lapses: in the same statement, no round trip more.
        Lapsed holds are removed in the same unit of work (one statement): nothing else removes a hold whose
        Provision died, or one left to a testbed that never took it up."""
        now_s = to_s(self.clock())
        due = select(Sliver.lease_id).where(Sliver.expires_s <= now_s)
        held = (
            select(ProvisionHoldRow.lease_id)
            .where(ProvisionHoldRow.lease_id == Lease.id, ProvisionHoldRow.held_until_s > now_s)
            .exists()
        )
        lapsed_holds = delete(ProvisionHoldRow).where(ProvisionHoldRow.held_until_s <= now_s)
        return self._end_leases((Lease.state == "allocated", Lease.id.in_(due), ~held), "expired", lapsed_holds)

    def retire_ended(self) -> list[LeaseRecord]:
        """Provisioned leases whose slot is over become ``ended`` (their slivers unallocated: GENI's slot_ended)."""
        now_s = to_s(self.clock())
        return self._end_leases((Lease.state == "provisioned", Lease.end_s <= now_s), "ended")

    def _end_leases(
        self, due: tuple[ColumnElement[bool], ...], new_state: str, also: Delete | None = None
    ) -> list[LeaseRecord]:
        """The leases that are ``due`` become ``new_state``, their slivers released. The leases found due are locked
        first (every writer of a lease or its slivers locks the lease), then read again: a renewal or a Provision
        that committed meanwhile (after the first read's snapshot, on PostgreSQL) is seen, and a lease it made no
        longer due is left as it made it. (SQLite: BEGIN IMMEDIATE has serialized the writers already.) ``also``, a
        statement run in the same unit of work, after the leases' locks (as ``hold_for_provision`` takes them before
        its hold rows: the two never wait on each other crosswise)."""

        def unit_of_work() -> list[LeaseRecord]:
            with self.database.write() as session:
                found = session.scalars(select(Lease.id).where(*due).order_by(Lease.id).with_for_update()).all()
                if also is not None:
                    # On the connection: a hold is no state of the calendar's answers, and a session's DML would bump
                    # the generation at every sweep, throwing away every cached answer every minute.
                    session.connection().execute(also)
                if not found:
                    return []
                leases = session.scalars(
                    select(Lease)
                    .where(Lease.id.in_(found), *due)
                    .order_by(Lease.id)
                    .options(selectinload(Lease.slivers).selectinload(Sliver.node))
                ).all()
                for lease in leases:
                    lease.state = new_state
                    release_slivers(lease.slivers)
                return [lease_record(lease) for lease in leases]

        return retry_transient(unit_of_work)

    # -- reading ----------------------------------------------------------------------------------------------
    def lease_states(self, lease_ids: Iterable[str]) -> dict[str, str]:
        """The state of each of these leases this calendar knows (unknown ids are left out)."""
        wanted = set(lease_ids)
        if not wanted:
            return {}
        with self.database.read() as session:
            rows = session.execute(select(Lease.id, Lease.state).where(Lease.id.in_(wanted)))
            return {lease_id: state for lease_id, state in rows}

    def windows_of(self, lease_ids: Iterable[str]) -> dict[str, tuple[str, datetime, datetime, frozenset[str]]]:
        """The slice (URN), window and nodes (component_ids) of each of these leases, whatever its state (unknown
        ids left out)."""
        wanted = set(lease_ids)
        if not wanted:
            return {}
        found: dict[str, tuple[str, datetime, datetime, set[str]]] = {}
        with self.database.read() as session:
            rows = session.execute(
                select(Lease.id, Slice.urn, Lease.start_s, Lease.end_s, Node.component_id)
                .join(Slice, Slice.id == Lease.slice_id)
                .join(Sliver, Sliver.lease_id == Lease.id)
                .join(Node, Node.id == Sliver.node_id)
                .where(Lease.id.in_(wanted))
            )
            for lease_id, slice_urn, start_s, end_s, component_id in rows:
                entry = found.setdefault(lease_id, (slice_urn, from_s(start_s), from_s(end_s), set()))
                entry[3].add(component_id)
        return {lease_id: (urn, start, end, frozenset(nodes)) for lease_id, (urn, start, end, nodes) in found.items()}

    def slices_of_slivers(self, sliver_urns: Iterable[str]) -> set[str]:
        """The URNs of the slices the named slivers belong to."""
        urns = sorted(set(sliver_urns))
        if not urns:
            return set()
        rows = self.database.fetch_all(_slices_of_slivers(listed_count(urns)), listed_values("urns", urns))
        return {row[0] for row in rows}

    def slice_view(self, slice_urn: str) -> SliceView:
        """A slice's active leases (oldest first, as ``leases(slice_urn=...)``), the manifest's view of their nodes
        (by component id) and the slice's users (by user URN), in one column query from one snapshot: Describe's
        manifest needs all three on every call, and each read was a round trip of its own on PostgreSQL. The users
        are the slice's whether or not it holds a lease here (none when it is unknown)."""
        rows = self.database.fetch_all(_SLICE_VIEW, {"slice_urn": slice_urn})
        leases, nodes = _leases_and_nodes([row for row in rows if row[0] is not None])
        users = _user_records((row[1], row[-1]) for row in rows if row[0] is None)
        return SliceView(leases=tuple(leases), nodes=nodes, users=users)

    def leases_holding_slivers(self, sliver_urns: Iterable[str]) -> list[LeaseRecord]:
        """The active leases that hold any of the named slivers (with all their slivers), oldest first, in one column
        query: Renew and Delete read what they act on, whatever else the slice holds."""
        return _lease_records(self._rows_holding(sliver_urns, renewal_checks=False))

    def leases_for_renewal(self, sliver_urns: Iterable[str]) -> RenewalRead:
        """``leases_holding_slivers``, with what a renewal's checks read of each lease (its slice's expiry, its
        nodes' grains and states), in the same one query: Renew reads once what it authorizes, answers and checks."""
        rows = self._rows_holding(sliver_urns, renewal_checks=True)
        checks: dict[str, list[_RenewalRow]] = defaultdict(list)
        for row in rows:
            lease_id, slice_urn, owner_urn, start_s, end_s, state, client_id = row[:7]
            slice_id, slice_expires_s, node_id, grain_s, node_state = row[16:]
            checks[lease_id].append(
                _RenewalRow(
                    state,
                    start_s,
                    end_s,
                    owner_urn,
                    client_id,
                    slice_id,
                    slice_urn,
                    slice_expires_s,
                    node_id,
                    grain_s,
                    row[8],  # the sliver's node's component id
                    node_state,
                    row[13],  # the sliver's expiry
                )
            )
        leases = _lease_records([row[:16] for row in rows])
        return RenewalRead(leases, {lease_id: tuple(found) for lease_id, found in checks.items()})

    def _rows_holding(self, sliver_urns: Iterable[str], renewal_checks: bool) -> Sequence[Sequence[Any]]:
        """The rows of ``_lease_query`` for the active leases holding any of the named slivers."""
        urns = sorted(set(sliver_urns))
        if not urns:
            return []  # (slivers_named=0 would be no filter at all)
        query = _lease_query(
            True, False, False, False, False, slivers_named=listed_count(urns), renewal_checks=renewal_checks
        )
        return self.database.fetch_all(query, listed_values("sliver_urns", urns))

    def leases(
        self,
        node: str | None = None,
        slice_urn: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        active_only: bool = True,
    ) -> list[LeaseRecord]:
        """Leases by node, slice and time window (overlapping [start, end)), oldest first.

        One column query (leases outer-joined to their slivers and nodes) into plain records: Status, Describe,
        Renew and Delete read a slice's leases on every call, and ListResources-sized reads must not build ORM
        objects.
        """
        query = _lease_query(active_only, slice_urn is not None, start is not None, end is not None, node is not None)
        parameters = {
            "slice_urn": slice_urn,
            "after_s": None if start is None else to_s(start),
            "before_s": None if end is None else to_s(end),
            "node": node,
        }
        return _lease_records(self.database.fetch_all(query, parameters))


def _lease_records(rows: Sequence[Sequence[Any]]) -> list[LeaseRecord]:
    """Plain lease records from the rows of ``_lease_query`` (a lease's slivers follow it, in the query's order)."""
    times: dict[int, datetime] = {}

    def moment(seconds: int) -> datetime:
        found = times.get(seconds)
        if found is None:
            found = times[seconds] = from_s(seconds)
        return found

    leases: dict[str, tuple[tuple[str, str, int, int, str, str], list[SliverRecord]]] = {}
    for (
        lease_id,
        slice_urn_of,
        owner_urn,
        lease_start_s,
        lease_end_s,
        state,
        lease_client_id,
        sliver_urn,
        component_id,
        sliver_start_s,
        sliver_end_s,
        allocation_state,
        operational_state,
        expires_s,
        sliver_client_id,
        disk_image,
    ) in rows:
        entry = leases.get(lease_id)
        if entry is None:
            entry = leases[lease_id] = (
                (slice_urn_of, owner_urn, lease_start_s, lease_end_s, state, lease_client_id),
                [],
            )
        if sliver_urn is not None:  # a lease without slivers (outer join) has none
            entry[1].append(
                SliverRecord(
                    urn=sliver_urn,
                    node=component_id,
                    lease_id=lease_id,
                    start=moment(sliver_start_s),
                    end=moment(sliver_end_s),
                    allocation_state=allocation_state,
                    operational_state=operational_state,
                    expires=moment(expires_s),
                    client_id=sliver_client_id,
                    disk_image=disk_image,
                )
            )
    return [
        LeaseRecord(
            id=lease_id,
            slice_urn=slice_urn_of,
            owner_urn=owner_urn,
            start=moment(lease_start_s),
            end=moment(lease_end_s),
            state=state,
            client_id=lease_client_id,
            # The ORM version sorted with sorted(): stable, so slivers of one node keep the database's order.
            slivers=tuple(sorted(slivers, key=lambda sliver: sliver.node)),
        )
        for lease_id, ((slice_urn_of, owner_urn, lease_start_s, lease_end_s, state, lease_client_id), slivers) in (
            leases.items()
        )
    ]


@functools.lru_cache(maxsize=MAX_LISTED + 1)
def _slices_of_slivers(count: int) -> PlainStatement[Select[str]]:
    """The slices of ``count`` slivers named (``listed_values("urns", ...)``), built once per count."""
    return PlainStatement(
        select(Slice.urn)
        .join(Lease, Lease.slice_id == Slice.id)
        .join(Sliver)
        .where(Sliver.urn.in_(listed("urns", count)))
    )


@functools.lru_cache(maxsize=64)
def _lease_query(
    active_only: bool,
    by_slice: bool,
    by_start: bool,
    by_end: bool,
    by_node: bool,
    by_id: bool = False,
    slivers_named: int = 0,
    with_nodes: bool = False,
    renewal_checks: bool = False,
) -> PlainStatement[Select[*tuple[Any, ...]]]:
    """The statement of ``Bookings.leases`` for one combination of filters, with bound parameters, built once: a
    statement built on every call costs more than the call's query itself (SQLAlchemy's cache key and the matching
    of result columns to a new statement's). ``by_id``: the one lease ``lease_id``; ``slivers_named``: the leases that
    hold any of that many slivers named (``listed_values("sliver_urns", ...)``); ``with_nodes``: each
    sliver's node's name and exclusive flag after the usual columns (narrow reads only); ``renewal_checks``: the
    lease's slice id and expiry, each sliver's node id, grain and state after them (``Bookings.leases_for_renewal``)."""
    # A narrow read (a slice's, a node's leases, one lease) looks each sliver's node up by its primary key. Joined,
    # PostgreSQL estimated a slice's leases at the average per slice (1 000 of 100 000 leases in the benchmark, for a
    # slice holding one) and hashed the whole node table for them: 0.42 of the read's 0.54 ms at 1 000 nodes, growing
    # with the inventory (EXPLAIN ANALYZE in docs/benchmarks.md). A wide read keeps the join (one pass over nodes
    # beats a lookup per sliver).
    narrow = by_slice or by_node or by_id or bool(slivers_named)
    component_id: Any = (
        select(Node.component_id).where(Node.id == Sliver.node_id).scalar_subquery() if narrow else Node.component_id
    )
    node_details: list[Any] = (
        [
            select(column).where(Node.id == Sliver.node_id).scalar_subquery()
            for column in (Node.component_name, Node.exclusive)
        ]
        if with_nodes and narrow
        else []
    )
    if renewal_checks and narrow:
        node_details += [
            Lease.slice_id,
            Slice.expires_s,
            Sliver.node_id,
            *(
                select(column).where(Node.id == Sliver.node_id).scalar_subquery()
                for column in (Node.grain_s, Node.state)
            ),
        ]
    query: Select[*tuple[Any, ...]] = (
        select(
            Lease.id,
            Slice.urn,
            Lease.owner_urn,
            Lease.start_s,
            Lease.end_s,
            Lease.state,
            Lease.client_id,
            Sliver.urn,
            component_id,
            Sliver.start_s,
            Sliver.end_s,
            Sliver.allocation_state,
            Sliver.operational_state,
            Sliver.expires_s,
            Sliver.client_id,
            Sliver.disk_image,
            *node_details,
        )
        .select_from(Lease)
        .join(Slice, Lease.slice_id == Slice.id)
        .outerjoin(Sliver, Sliver.lease_id == Lease.id)
        .order_by(Lease.start_s, Lease.id, Sliver.id)
    )
    if not narrow:
        query = query.outerjoin(Node, Sliver.node_id == Node.id)
    if active_only:
        query = query.where(_is_active(Lease.state))
    if by_slice:
        query = query.where(Slice.urn == bindparam("slice_urn"))
    if by_start:
        query = query.where(Lease.end_s > bindparam("after_s"))
    if by_end:
        query = query.where(Lease.start_s < bindparam("before_s"))
    if by_node:
        node_leases = select(Sliver.lease_id).join(Node).where(Node.component_id == bindparam("node"))
        query = query.where(Lease.id.in_(node_leases))
    if by_id:
        query = query.where(Lease.id == bindparam("lease_id"))
    if slivers_named:
        # An alias of the table, not of the mapped class: a statement holding an ORM alias computes its cache key on
        # every execution (0.07 ms, half of the read's own cost on SQLite), a Core one once.
        named = table_of(Sliver).alias("named")
        holding = select(named.c.lease_id).where(named.c.urn.in_(listed("sliver_urns", slivers_named)))
        query = query.where(Lease.id.in_(holding))
    return PlainStatement(query)


def _sorted_out(wanted: list[_Wanted], busy: dict[int, list[Interval]]) -> tuple[list[_Wanted], list[_Clash]]:
    """The wanted windows that are free, and those that clash with what ``busy`` holds (with the clashing windows).
    Adds each free window to ``busy``: the same node twice in one request must not overlap itself."""
    free: list[_Wanted] = []
    clashes: list[_Clash] = []
    for request, node, window in wanted:
        taken = busy.setdefault(node.id, [])
        clashing = [interval for interval in taken if overlaps(interval, window)]
        if clashing:
            clashes.append((request, node, window, clashing))
        else:
            free.append((request, node, window))
            taken.append(window)
    return free, clashes


def _is_active(state: Any) -> ColumnElement[bool]:
    """``state IN ('allocated', 'provisioned')``, the states written into the statement's text: a list of bound
    values is expanded into the text again on every execution (0.01-0.02 ms a statement), and these never change."""
    return cast("ColumnElement[bool]", state.in_([literal_column(f"'{name}'") for name in ACTIVE_LEASE_STATES]))


class _BookedNode(NamedTuple):
    """What a booking needs of a node, from its row locked by ``_nodes_for_booking``."""

    id: int
    component_id: str
    grain_s: int
    state: str
    component_name: str  # (and exclusive: what a manifest shows of it)
    exclusive: bool


_Wanted = tuple[BookingRequest, _BookedNode, Interval]  # a window a booking wants, on its locked node
_Clash = tuple[BookingRequest, _BookedNode, Interval, list[Interval]]  # ... with the held windows it overlaps


class AlapExtension(NamedTuple):
    """A lease geni_extend_alap would extend, for ``Bookings.limits_reach``: its id, owner, end now, the
    furthest its other limits let it go and its slot length (its end stays on its slots)."""

    lease_id: str
    owner_urn: str
    end_s: int
    until_s: int
    grain_s: int


class _RenewalRow(NamedTuple):
    """A row of ``_LOCK_RENEWED_LEASE``: the lease and its slice (the same on every row), one sliver's node and
    expiry (None for a lease without slivers)."""

    state: str
    start_s: int
    end_s: int
    owner_urn: str
    client_id: str
    slice_id: int
    slice_urn: str
    slice_expires_s: int
    node_id: int | None
    grain_s: int
    component_id: str
    node_state: str
    allocation_expires_s: int | None  # the sliver's: when it expires unless provisioned (None: no sliver)


class RenewalRead(NamedTuple):
    """The leases a Renew acts on as one read found them (``Bookings.leases_for_renewal``), and what the renewal's
    checks need of each, by lease id; the renewal's statement writes only if the lease is still as read."""

    leases: list[LeaseRecord]
    checks: Mapping[str, tuple[_RenewalRow, ...]]


class ProvisionHold(NamedTuple):
    """A Provision's hold on its allocations (``Bookings.hold_for_provision``): the token naming the Provision in
    ``provision_hold``, when it was asked (epoch seconds), and the leases it holds (those still allocated then)."""

    token: str
    asked_s: int
    lease_ids: tuple[str, ...]


class _Renewal(NamedTuple):
    """A renewal that passed its checks (``Bookings._checked_renewal``): the lease as read, its slivers' nodes, its
    new end, and the slice's expiry to store (None: the stored one stands)."""

    lease: _RenewalRow
    nodes: list[_RenewalRow]
    new_end_s: int
    new_slice_expires_s: int | None


class _EndTooLate(PolicyViolation):
    """A renewal refused by a rule that sets the latest end it may have (``limits``: that end and the rule in words
    first, then any other rule's), as soon as its check sees it, with no read in the unit of work: ``message``, the
    refusal as it stands, advises the rule's end. ``Bookings.renew_all`` advises instead, once the unit of work is
    over, the latest end every check allows (``saying``): the rule's own end was refused in turn when another check
    stopped the lease before it (the next booking of one of its nodes, a per-slice or per-user limit).
    ``refused``: what the refusal says before its advice; ``renewed``: the lease's id, the lease and its nodes (rows
    of ``_LOCK_RENEWED_LEASE``) and their common slot length."""

    def __init__(
        self,
        rule: str,
        message: str,
        refused: str,
        renewed: tuple[str, _RenewalRow, Sequence[_RenewalRow], int],
        limits: Sequence[tuple[int, str]],
    ) -> None:
        super().__init__(rule, message)
        self.refused = refused
        self.lease_id, self.lease, self.nodes, self.grain_s = renewed
        self.limits = limits

    def saying(self, latest_s: int, why: str) -> PolicyViolation:
        """The refusal advising ``latest_s``, the latest end every check allows (``why``: what stops it there)."""
        if why == self.limits[0][1]:  # the rule refused is the one that binds: its own advice
            return PolicyViolation(self.rule, self.detail)
        if latest_s == self.lease.end_s:
            advice = f"it cannot end later than it does ({format_time(from_s(latest_s))}), as {why}"
        else:
            advice = (
                f"it may end at {format_time(from_s(latest_s))} at the latest, as {why} (ask for that end, or for "
                "geni_extend_alap, which goes as far as allowed)"
            )
        return PolicyViolation(self.rule, f"{self.refused}; {advice}")


# The booking's and the cancel's statements, built once (as the reads': see _lease_query), on the tables rather than
# the mapped classes: an ORM-enabled INSERT or UPDATE goes through the ORM's bulk machinery on every call.
_SLICE, _LEASE, _SLIVER = table_of(Slice).c, table_of(Lease).c, table_of(Sliver).c
_NODE, _SLICE_USER = table_of(Node).c, table_of(SliceUser).c
_LOCK_LEASE = PlainStatement(select(_LEASE.id).where(_LEASE.id == bindparam("lease_id")).with_for_update())
_SLICE_FOR_BOOKING = PlainStatement(  # the slice with its users (one row per user; one with none when it has none)
    select(_SLICE.id, _SLICE.shut_down, _SLICE.expires_s, _SLICE_USER.user_urn, _SLICE_USER.ssh_keys)
    .outerjoin(table_of(SliceUser), _SLICE_USER.slice_id == _SLICE.id)
    .where(_SLICE.urn == bindparam("urn"))
)
_NEW_SLICE = PlainStatement(
    insert(table_of(Slice))
    .values(urn=bindparam("urn"), expires_s=bindparam("expires_s"), shut_down=False)
    .returning(_SLICE.id)
)
_SLICE_EXPIRES = PlainStatement(
    update(table_of(Slice)).where(_SLICE.id == bindparam("slice_id")).values(expires_s=bindparam("new_expires_s"))
)


@functools.lru_cache(maxsize=MAX_LISTED + 1)
def _nodes_for_booking(count: int) -> PlainStatement[Select[*tuple[Any, ...]]]:
    """The booked nodes' rows, locked in id order, each with the windows held on it between ``after_s`` and
    ``before_s`` (a row per window, by start; a node holding none: one row whose window is NULL): ``count`` component
    ids (``listed_values("component_ids", ...)``). A node's columns are ``_BookedNode``'s, then its pool's federated."""
    held = and_(
        Sliver.node_id == Node.id,
        Sliver.holds_node.is_(True),
        Sliver.end_s > bindparam("after_s"),
        Sliver.start_s < bindparam("before_s"),
    )
    return PlainStatement(
        select(
            Node.id,
            Node.component_id,
            Node.grain_s,
            Node.state,
            Node.component_name,
            Node.exclusive,
            Pool.federated,
            Sliver.start_s,
            Sliver.end_s,
        )
        .select_from(Node)
        .join(Pool, Pool.id == Node.pool_id)
        .outerjoin(Sliver, held)
        .where(Node.component_id.in_(listed("component_ids", count)))
        .order_by(Node.id, Sliver.start_s)
        .with_for_update(of=Node)
    )


_INSERT_LEASE = insert(table_of(Lease))
_INSERT_SLIVER = insert(table_of(Sliver))


@functools.lru_cache(maxsize=4)
def _insert_one(statement: Insert, columns: tuple[str, ...]) -> PlainStatement[Insert]:
    """``statement`` for one row of these columns, each a bound parameter of its name, on the driver's cursor."""
    return PlainStatement(statement.values({column: bindparam(column) for column in columns}))


@functools.lru_cache(maxsize=8)
def _lease_and_sliver(
    lease_columns: tuple[str, ...], sliver_columns: tuple[str, ...], read_slice: bool
) -> PlainStatement[Any]:
    """PostgreSQL: a lease of one sliver inserted with it and the generation's bump, in one statement of the booking's
    unit of work (three round trips before). Parameters: the lease's columns prefixed ``lease_``, the sliver's
    ``sliver_``, and ``bump_parameters()``. The exclusion constraint refuses an overlapping sliver as it is inserted,
    the sliver's foreign key is checked at the end of the statement; either refusal undoes the statement whole. The
    slice's users and the caller's contact are written before it (in the order a Provision writes them, then bumps).
    ``read_slice``: its rows are the slice's other active leases (``_SLICE_LEASES_WITH_NODES`` with ``slice_urn``),
    from the statement's snapshot, which its own inserts are not in (a data-modifying WITH runs whole whether or not
    the main query reads it): the Allocate's manifest without a read of its own."""
    lease_values: dict[str, Any] = {column: bindparam(f"lease_{column}") for column in lease_columns}
    sliver_values: dict[str, Any] = {column: bindparam(f"sliver_{column}") for column in sliver_columns}
    new_lease = insert(table_of(Lease)).values(lease_values).returning(_LEASE.id).cte("new_lease")
    new_sliver = insert(table_of(Sliver)).values(sliver_values).returning(_SLIVER.id).cte("new_sliver")
    if read_slice:
        return PlainStatement(_SLICE_LEASES_WITH_NODES.statement.add_cte(new_lease, new_sliver, bump_after(new_lease)))
    return PlainStatement(select(new_sliver.c.id).add_cte(new_lease, bump_after(new_lease)))


def _prefixed(prefix: str, row: Mapping[str, Any]) -> dict[str, Any]:
    return {prefix + column: value for column, value in row.items()}


def _insert_rows(connection: Connection, statement: Insert, rows: list[dict[str, Any]]) -> None:
    """Insert the rows (all with the same columns): one row, nearly every Allocate's, as one plain statement; more
    in one executemany."""
    if len(rows) == 1:
        execute_plain(connection, _insert_one(statement, tuple(rows[0])), rows[0])
    else:
        connection.execute(statement, rows)


# (Its parameter is not "lease_id": a sliver UPDATE of its statement would SET that column.)
_CANCELLED_LEASE_COLUMNS = (  # what a cancel's UPDATE answers of the lease
    _LEASE.id,
    select(_SLICE.urn).where(_SLICE.id == _LEASE.slice_id).scalar_subquery(),
    _LEASE.owner_urn,
    _LEASE.start_s,
    _LEASE.end_s,
    _LEASE.state,
    _LEASE.client_id,
)
_CANCEL_ACTIVE_LEASE = PlainStatement(
    update(table_of(Lease))
    .where(_LEASE.id == bindparam("cancelled_lease"), _is_active(_LEASE.state))
    .values(state="cancelled")
    .returning(*_CANCELLED_LEASE_COLUMNS)
)
# Renew's. The lease row locked and read with its slice and its slivers' nodes (one row per sliver), in one statement:
# on PostgreSQL a SELECT that waited for the lock re-reads the locked row alone and the joined rows stay as they were
# before the writer it waited for. So the slivers' states are not read here but by their UPDATE; the nodes' grains
# and names do not change with a lease; the slice's expiry (written by bookings and renewals of the slice, under no
# common lock, as before) only decides whether the call's is written (skipped when equal) or, for a renewal without a
# credential, how far the lease may go; a node's state (an operator's switch to maintenance, under no lock a renewal
# takes, as for a booking already made) refuses an extension from the moment it is committed. A sliver's expiry is
# read for one check only: an allocation past it is not renewed. An allocated sliver's expiry moves earlier only with
# the lease's end (read fresh) and later only by a renewal, which is refused once it has passed: a row older than the
# lock can at most refuse a renewal that meets the expiry within the wait for the lock.
_RENEWED_LEASE = (
    select(
        _LEASE.state,
        _LEASE.start_s,
        _LEASE.end_s,
        _LEASE.owner_urn,
        _LEASE.client_id,
        _LEASE.slice_id,
        _SLICE.urn,
        _SLICE.expires_s,
        _NODE.id,
        _NODE.grain_s,
        _NODE.component_id,
        _NODE.state,
        _SLIVER.expires_s,
    )
    .select_from(table_of(Lease))
    .join(table_of(Slice), _SLICE.id == _LEASE.slice_id)
    .outerjoin(table_of(Sliver), _SLIVER.lease_id == _LEASE.id)
    .outerjoin(table_of(Node), _NODE.id == _SLIVER.node_id)
    .where(_LEASE.id == bindparam("lease_id"))
    .order_by(_SLIVER.id)
)
_LOCK_RENEWED_LEASE = PlainStatement(_RENEWED_LEASE.with_for_update(of=table_of(Lease)))
_READ_RENEWED_LEASE = PlainStatement(_RENEWED_LEASE)  # the same, as last committed (Bookings._renew_alone)
# A renewal under limits (Bookings._lock_for_limits, _check_extension_limits): the names a booking locks, read before
# the lease's row is locked; one advisory lock; how many of the lease's slivers hold a node.
_LEASE_NAMES = PlainStatement(
    select(_SLICE.urn, _LEASE.owner_urn)
    .select_from(table_of(Lease))
    .join(table_of(Slice), _SLICE.id == _LEASE.slice_id)
    .where(_LEASE.id == bindparam("lease_id"))
)
_LOCK_NAME = PlainStatement(select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger))))
_HOLDING_SLIVERS = PlainStatement(
    select(func.count())
    .select_from(table_of(Sliver))
    .where(_SLIVER.lease_id == bindparam("lease_id"), _SLIVER.holds_node.is_(True))
)


@functools.lru_cache(maxsize=MAX_LISTED + 1)
def _lock_leases_in_id_order(count: int) -> PlainStatement[Any]:
    """``Bookings._lock_in_id_order``'s statement for ``count`` lease ids (``listed_values("lease_ids", ...)``): the
    rows sorted before they are locked (PostgreSQL locks the rows of ORDER BY ... FOR UPDATE in that order)."""
    return PlainStatement(
        select(_LEASE.id)
        .select_from(table_of(Lease))
        .where(_LEASE.id.in_(listed("lease_ids", count)))
        .order_by(_LEASE.id)
        .with_for_update(of=table_of(Lease))
    )


_NEW_END = bindparam("new_end_s", type_=BigInteger)
_RENEW_LEASE = PlainStatement(
    update(table_of(Lease)).where(_LEASE.id == bindparam("renewed_lease")).values(end_s=_NEW_END)
)
_ALLOCATION_ENDS = bindparam("allocation_ends_s", type_=BigInteger)  # now + the allocation's time to be provisioned
_SLIVER_COLUMNS = (  # what the cancel's and the renewal's UPDATEs answer of each sliver
    _SLIVER.id,
    _SLIVER.urn,
    select(_NODE.component_id).where(_NODE.id == _SLIVER.node_id).scalar_subquery(),
    _SLIVER.start_s,
    _SLIVER.end_s,
    _SLIVER.allocation_state,
    _SLIVER.operational_state,
    _SLIVER.expires_s,
    _SLIVER.client_id,
    _SLIVER.disk_image,
)
_RENEWED_SLIVER = {  # what a renewal writes in each sliver of the lease
    "end_s": _NEW_END,
    # the new end if provisioned, else min(max(expires, allocation ends), new end): see Bookings._renew_in
    "expires_s": case(
        (_SLIVER.allocation_state == "geni_provisioned", _NEW_END),
        (or_(_SLIVER.expires_s >= _NEW_END, _ALLOCATION_ENDS >= _NEW_END), _NEW_END),
        (_SLIVER.expires_s > _ALLOCATION_ENDS, _SLIVER.expires_s),
        else_=_ALLOCATION_ENDS,
    ),
}
_RENEW_SLIVERS = (
    update(table_of(Sliver))
    .where(_SLIVER.lease_id == bindparam("renewed_lease"))
    .values(_RENEWED_SLIVER)
    .returning(*_SLIVER_COLUMNS)
)
_HOLDER = table_of(Sliver).alias("holder")
_OLD_END = bindparam("old_end_s", type_=BigInteger)


def _held_in_extension(node_id: ColumnElement[int]) -> ColumnElement[bool]:
    """Another lease holds the node in the extension [old end, new end), as held_windows reads it."""
    return exists().where(
        _HOLDER.c.node_id == node_id,
        _HOLDER.c.holds_node.is_(True),
        _HOLDER.c.lease_id != bindparam("renewed_lease"),
        _HOLDER.c.start_s < _NEW_END,
        _HOLDER.c.end_s > _OLD_END,
    )


# ...only the slivers whose node no other lease holds in the extension.
_RENEW_SLIVERS_IF_FREE = _RENEW_SLIVERS.where(~_held_in_extension(_SLIVER.node_id))
_RELEASE_SLIVERS = PlainStatement(
    update(table_of(Sliver))
    .where(_SLIVER.lease_id == bindparam("released_lease"))
    .values(holds_node=False, allocation_state="geni_unallocated")  # as release_slivers does
    .returning(*_SLIVER_COLUMNS)
)


# The cancel as one PostgreSQL statement (Database.write_alone): the lease's UPDATE, then its slivers' (they join its
# row, so they are locked after it, as by every writer of a lease's slivers; an UPDATE that meets a row changed since
# the statement began updates and answers the row as it is now), then the generation's bump if the lease was active.
# One row per sliver (a lease without slivers: one row, its sliver columns None).
def _cancel_alone(cancelled: CTE) -> PlainStatement[Any]:
    """The cancel's statement around ``cancelled`` (the lease's UPDATE, answering ``_CANCELLED_LEASE_COLUMNS``): its
    slivers released and the generation bumped in the same statement."""
    released = (
        update(table_of(Sliver))
        .where(_SLIVER.lease_id == cancelled.c.id)
        .values(holds_node=False, allocation_state="geni_unallocated")
        .returning(*_SLIVER_COLUMNS)
        .cte("released")
    )
    return PlainStatement(
        select(cancelled, released)
        .select_from(cancelled)
        .outerjoin(released, true())
        .order_by(released.c.id)
        .add_cte(bump_after(cancelled))
    )


_CANCEL_ALONE = _cancel_alone(_CANCEL_ACTIVE_LEASE.statement.cte("cancelled"))


@functools.lru_cache(maxsize=MAX_LISTED)
def _cancel_allocated_holding(count: int) -> PlainStatement[Any]:
    """``Bookings.cancel_allocated_holding``'s statement for ``count`` sliver URNs (``listed_values("sliver_urns",
    ...)``, distinct): ``_CANCEL_ALONE``'s, for the lease holding the first one, only if it is allocated, of the slice
    ``slice_urn`` and holds all ``named_count`` of them and no other sliver. An UPDATE that waited for the lease's lock
    (a Provision holding it) checks the state again on the row as that writer left it: a lease provisioned meanwhile
    is not cancelled here."""
    named = table_of(Sliver).alias("named")
    holding_all = (
        select(func.count())
        .select_from(named)
        .where(named.c.lease_id == _LEASE.id, named.c.urn.in_(listed("sliver_urns", count)))
        .scalar_subquery()
    )
    # Named are all its slivers, not some: a lease's slivers are deleted together, and a Delete naming only some of
    # them is refused by the usual path (the aggregate's _refuse_part_of_a_lease).
    its_own = table_of(Sliver).alias("its_own")
    holding_in_all = select(func.count()).select_from(its_own).where(its_own.c.lease_id == _LEASE.id).scalar_subquery()
    cancelled = (
        update(table_of(Lease))
        .where(
            _LEASE.id == select(named.c.lease_id).where(named.c.urn == bindparam("sliver_urns_0")).scalar_subquery(),
            _LEASE.state == literal_column("'allocated'"),
            _LEASE.slice_id == select(_SLICE.id).where(_SLICE.urn == bindparam("slice_urn")).scalar_subquery(),
            holding_all == bindparam("named_count", type_=Integer),
            holding_in_all == bindparam("named_count", type_=Integer),
        )
        .values(state="cancelled")
        .returning(*_CANCELLED_LEASE_COLUMNS)
        .cte("cancelled")
    )
    return _cancel_alone(cancelled)


@functools.lru_cache(maxsize=4)
def _renewal_statement(extending: bool, bumping: bool) -> PlainStatement[Any]:
    """The slivers' UPDATE of a renewal (checking the extension is free when ``extending``); with ``bumping``
    (PostgreSQL, the unit of work's last renewal), the lease's UPDATE and the generation's bump in the same statement:
    two round trips fewer. A refused renewal raises after it, and its transaction undoes all three."""
    slivers = _RENEW_SLIVERS_IF_FREE if extending else _RENEW_SLIVERS
    if not bumping:
        return PlainStatement(slivers)
    renewed = slivers.cte("renewed")
    lengthened = _RENEW_LEASE.statement.returning(_LEASE.id).cte("lengthened")
    return PlainStatement(select(renewed).add_cte(lengthened).add_cte(bump_after(lengthened)))


@functools.lru_cache(maxsize=2)
def _renewal_alone(extending: bool) -> PlainStatement[Any]:
    """One lease's renewal as one PostgreSQL statement (``Database.write_alone``): the lease's UPDATE, only if it is
    still in the state and with the end the checks read and, when ``extending``, no other lease holds one of its
    slivers' nodes in the extension and none of them is out of use, maintenance or lost (an UPDATE that waited for
    the row's lock checks this again on the row as the other writer left it); then its slivers' UPDATE, joined to
    its row so run after it (every writer of a lease's slivers locks the lease first; an UPDATE that meets a row
    changed since the statement began updates the row as it is now); then the generation's bump. One row per
    sliver, the lease's id first (a lease without slivers: one row, its sliver columns None); no row when nothing
    was written. The exclusion constraint still refuses an extension a booking took after the statement's snapshot
    (the statement is then undone whole)."""
    conditions = [
        _LEASE.id == bindparam("renewed_lease"),
        _LEASE.state == bindparam("read_state"),
        _LEASE.end_s == _OLD_END,
    ]
    if extending:
        # None of its slivers' nodes held by another lease in the extension, nor out of use (maintenance, lost): the
        # checks' read may be the call's, made before it was authorized.
        mine = table_of(Sliver).alias("mine")
        out_of_use = table_of(Node).alias("out_of_use")
        node_state = select(out_of_use.c.state).where(out_of_use.c.id == mine.c.node_id).scalar_subquery()
        taken = or_(_held_in_extension(mine.c.node_id), node_state != literal_column("'usable'"))
        conditions.append(~exists().where(mine.c.lease_id == _LEASE.id, taken))
    lengthened = (
        update(table_of(Lease)).where(*conditions).values(end_s=_NEW_END).returning(_LEASE.id).cte("lengthened")
    )
    renewed = (
        update(table_of(Sliver))
        .where(_SLIVER.lease_id == lengthened.c.id)
        .values(_RENEWED_SLIVER)
        .returning(*_SLIVER_COLUMNS)
        .cte("renewed")
    )
    return PlainStatement(
        select(lengthened.c.id, renewed)
        .select_from(lengthened)
        .outerjoin(renewed, true())
        .order_by(renewed.c.id)
        .add_cte(bump_after(lengthened))
    )


def _lease_record_of(lease: Sequence[Any], slivers: Sequence[Sequence[Any]]) -> LeaseRecord:
    """The record of a lease just written (cancelled, renewed), from its columns (as _CANCEL_ACTIVE_LEASE answers
    them) and its slivers' (_SLIVER_COLUMNS, as its slivers' UPDATE answered them)."""
    lease_id, slice_urn, owner_urn, start_s, end_s, state, client_id = lease
    # In the order of _lease_query (by sliver id), then sorted by node as every lease record is.
    ordered = sorted(slivers, key=lambda row: (row[2], row[0]))
    return LeaseRecord(
        id=lease_id,
        slice_urn=slice_urn,
        owner_urn=owner_urn,
        start=from_s(start_s),
        end=from_s(end_s),
        state=state,
        client_id=client_id,
        slivers=tuple(
            SliverRecord(
                urn=urn,
                node=node,
                lease_id=lease_id,
                start=from_s(sliver_start_s),
                end=from_s(sliver_end_s),
                allocation_state=allocation_state,
                operational_state=operational_state,
                expires=from_s(expires_s),
                client_id=sliver_client_id,
                disk_image=disk_image,
            )
            for _, urn, node, sliver_start_s, sliver_end_s, allocation_state, operational_state, expires_s, (
                sliver_client_id
            ), disk_image in ordered
        ),
    )


def _user_records(users: Iterable[tuple[str, Sequence[str]]]) -> tuple[SliceUserRecord, ...]:
    """A slice's users as records, by user URN (sorted here, as Slices.get does: not by a database's collation)."""
    return tuple(sorted((SliceUserRecord(urn, tuple(keys)) for urn, keys in users), key=lambda user: user.user_urn))


def _slice_view(session: Session, slice_urn: str, users: tuple[SliceUserRecord, ...]) -> SliceView:
    """The slice's active leases with their nodes' names, in one statement of the caller's transaction."""
    rows = execute_plain(connection_of(session), _SLICE_LEASES_WITH_NODES, {"slice_urn": slice_urn})
    leases, nodes = _leases_and_nodes(rows)
    return SliceView(leases=tuple(leases), nodes=nodes, users=users)


def _leases_and_nodes(rows: Sequence[Sequence[Any]]) -> tuple[list[LeaseRecord], dict[str, ManifestNode]]:
    """The lease records and the manifest's nodes (by component id) of ``_SLICE_LEASES_WITH_NODES``' rows."""
    nodes: dict[str, ManifestNode] = {}
    lease_rows = []
    for row in rows:
        lease_rows.append(row[:16])
        if row[8] is not None:
            nodes[row[8]] = ManifestNode(row[16], row[17])
    return _lease_records(lease_rows), nodes


def _view_with_booked(
    rows: Sequence[Sequence[Any]],
    booked: list[LeaseRecord],
    nodes_booked: list[_BookedNode],
    users: tuple[SliceUserRecord, ...],
) -> SliceView:
    """The slice as a booking left it: its other leases (``_SLICE_LEASES_WITH_NODES``' rows) and the leases it
    booked, in the read's order (start, then id), with the booked nodes as the manifest shows them."""
    others, nodes = _leases_and_nodes(rows)
    for node in nodes_booked:
        nodes[node.component_id] = ManifestNode(node.component_name, node.exclusive)
    leases = sorted([*others, *booked], key=lambda lease: (lease.start, lease.id))
    return SliceView(leases=tuple(leases), nodes=nodes, users=users)


#: A slice's active leases, each sliver with its node's name and exclusive flag (a manifest's nodes).
_SLICE_LEASES_WITH_NODES = _lease_query(True, True, False, False, False, with_nodes=True)


def _slice_view_statement() -> PlainStatement[Any]:
    """``_SLICE_LEASES_WITH_NODES``' rows followed by a row per user of the slice (``Bookings.slice_view``), in one
    UNION ALL: a user's row has no lease id (NULL), its URN where a lease's slice URN is and its SSH keys last; a
    lease's row has the sliver's id and no keys after its usual columns. The union is ordered as the leases' read
    (start, lease id, sliver id): the users' rows, whose start is NULL, come first or last depending on the database,
    and are told apart by their NULL lease id."""
    lease_rows = _SLICE_LEASES_WITH_NODES.statement.order_by(None).add_columns(
        Sliver.id.label("sliver_id"), type_coerce(null(), JSON).label("ssh_keys")
    )
    width = len(lease_rows.selected_columns)
    user_columns: list[Any] = [null()] * width
    user_columns[1], user_columns[-1] = SliceUser.user_urn, SliceUser.ssh_keys
    user_rows = (
        select(*user_columns).join(Slice, SliceUser.slice_id == Slice.id).where(Slice.urn == bindparam("slice_urn"))
    )
    # By position (start, lease id, sliver id): SQLite orders a union only by its result columns' aliases or places.
    in_order: list[ColumnElement[Any]] = [literal_column(str(place)) for place in (4, 1, width - 1)]
    return PlainStatement(union_all(lease_rows, user_rows).order_by(*in_order))


_SLICE_VIEW = _slice_view_statement()


#: Lease ids per statement of ``_leases_for_provision`` (well under SQLite's limit of bound parameters).
PROVISION_CHUNK = 500


def _leases_for_provision(session: Session, lease_ids: Sequence[str]) -> dict[str, Lease]:
    """The leases of these ids, locked in id order, with their slice, slivers and the slivers' nodes loaded
    (``lease_record`` reads them all): a few statements for any number of leases. Unknown ids are left out."""
    wanted = sorted(set(lease_ids))
    found: dict[str, Lease] = {}
    for first in range(0, len(wanted), PROVISION_CHUNK):
        query = (
            select(Lease)
            .where(Lease.id.in_(wanted[first : first + PROVISION_CHUNK]))
            .order_by(Lease.id)
            .options(selectinload(Lease.slivers).selectinload(Sliver.node), selectinload(Lease.slice))
            .with_for_update()
        )
        found.update((lease.id, lease) for lease in session.scalars(query))
    return found


def _find_lease(session: Session, lease_id: str, lock: bool = False) -> Lease:
    query = select(Lease).where(Lease.id == lease_id)
    lease = session.scalar(query.with_for_update() if lock else query)
    if lease is None:
        raise GeniError(Reason.NOT_FOUND, f"there is no lease {lease_id}")
    return lease


def _extension_conflicts(
    connection: Connection, lease_id: str, nodes: Sequence[_RenewalRow], extension: Interval
) -> list[Conflict]:
    """Who holds the lease's nodes (rows of ``_LOCK_RENEWED_LEASE``) during the time it would be extended by."""
    node_ids = {node.node_id for node in nodes if node.node_id is not None}
    busy = held_windows(connection, extension[0], extension[1], node_ids=node_ids, exclude_lease=lease_id)
    conflicts = []
    for node in nodes:
        clashing = [interval for interval in busy[node.node_id or 0] if overlaps(interval, extension)]
        if clashing:
            conflicts.append(
                Conflict(
                    node.component_id,
                    from_s(extension[0]),
                    from_s(extension[1]),
                    "is booked",
                    clashing=tuple((from_s(a), from_s(b)) for a, b in clashing),
                )
            )
    return conflicts


def _external_labels(session: Session, start_s: int, end_s: int, node_ids: set[int]) -> dict[int, str]:
    """For nodes that reservations made outside sfa-omf (calendar/external.py) hold in [start_s, end_s): who holds
    them, for the refusal's message."""
    rows = session.execute(
        select(Sliver.node_id, Sliver.client_id)
        .join(Lease)
        .where(
            Lease.state == "external",
            Sliver.holds_node.is_(True),
            Sliver.node_id.in_(node_ids),
            Sliver.start_s < end_s,
            Sliver.end_s > start_s,
        )
    )
    labels: dict[int, list[str]] = defaultdict(list)
    for node_id, label in rows:
        labels[node_id].append(label)
    return {node_id: ", ".join(found) for node_id, found in labels.items()}


def allocation_expiry_s(sliver_expiries: Iterable[int], end_s: int) -> int:
    """When an allocated lease's time to be provisioned is over: its slivers' expiry, at the latest its end."""
    return min([*sliver_expiries, end_s])


class HoldEnd(NamedTuple):
    """A live Provision hold on a lease: when it ends at the latest (epoch seconds) and whether it was left for the
    testbed (``LEFT_FOR_TESTBED``: a failed Provision after which the testbed may hold the lease) rather than naming
    a Provision at work (or one cut short)."""

    until_s: int
    left_for_testbed: bool


def _live_hold(executor: Session | Connection, lease_id: str, now_s: int) -> HoldEnd | None:
    """The live Provision hold on the lease (one row a lease), read in the caller's unit of work, or None."""
    row = executor.execute(
        select(ProvisionHoldRow.held_until_s, ProvisionHoldRow.token).where(
            ProvisionHoldRow.lease_id == lease_id, ProvisionHoldRow.held_until_s > now_s
        )
    ).first()
    return None if row is None else HoldEnd(row.held_until_s, row.token == LEFT_FOR_TESTBED)


def refuse_expired_allocation(
    lease_id: str, sliver_expiries: Iterable[int], end_s: int, now_s: int, hold: HoldEnd | None = None
) -> None:
    """An allocated lease whose time to be provisioned is over is expired, whether or not the sweep
    (``expire_unprovisioned``) has run yet: Provision and Renew refuse it as they do once the sweep has, with
    SEARCHFAILED. ``hold``: the live Provision hold on it, which keeps the sweep off until it ends."""
    expires_s = allocation_expiry_s(sliver_expiries, end_s)
    if expires_s <= now_s:
        raise GeniError(
            Reason.NOT_FOUND,
            f"lease {lease_id} was allocated but not provisioned in time: the allocation expired at "
            f"{format_time(from_s(expires_s))} and {lapsed_allocation_freed(hold)}",
        )


def lapsed_allocation_freed(hold: HoldEnd | None, method: str = "Allocate") -> str:
    """When an allocation not provisioned in time is released, and what to do (``method`` books again): within a
    minute (the sweep); held by a Provision (one cut short), at the hold's end; kept for the testbed (a failed
    Provision's job it may have made), at the hold's end at the latest (OAR's reconciler may adopt the job or end
    the hold sooner). A Delete frees it now."""
    if hold is None:
        return f"is released within a minute; {method} again"
    until = format_time(from_s(hold.until_s))
    if hold.left_for_testbed:
        return (
            f"is kept for the testbed, which may have made its job, until {until} at the latest; Delete the "
            f"allocation to free it now, then {method} again"
        )
    return (
        f"is held by a Provision until {until} (released then, not before); if no call of yours is at work on it, "
        f"Delete the allocation to free it now, then {method} again"
    )


def refuse_unless_allocated(lease_id: str, state: str) -> None:
    """A lease that is no longer allocated cannot be provisioned: one the sweep expired (not provisioned in time) is
    gone for good (SEARCHFAILED, Allocate again); one in another state is a wrong argument (BADARGS)."""
    if state == "expired":
        raise GeniError(
            Reason.NOT_FOUND,
            f"lease {lease_id} was allocated but not provisioned in time: the allocation expired and its nodes were "
            "released; Allocate again",
        )
    if state != "allocated":
        raise GeniError(Reason.BAD_ARGS, f"lease {lease_id} is {state}, not allocated")


def unusable_why(node_state: str) -> str:
    """Why a node that is not usable takes no booking nor extension (a conflict's problem)."""
    # "lost": a node agent stopped reporting (calendar/agents.py); it is bookable again once heard.
    return "has lost contact (its agent is silent)" if node_state == "lost" else "is in maintenance"


def reach_before_next_booking(
    end_s: int, reach: tuple[int, str], held: Mapping[str, Iterable[Interval]], grain_s: int
) -> tuple[int, str]:
    """How far a lease that ends at ``end_s`` may be extended toward ``reach`` (an end, and what stops it there in
    words) before another booking of one of its nodes: ``held`` holds the windows held on its nodes, by component
    id (its own slivers end at its end, so they are never after it). The last boundary of its ``grain_s`` slots
    before the first such booking, never before ``end_s``, naming that node; else ``reach`` as it is."""
    reach_s = reach[0]
    clashes = [
        (start_s, node)
        for node, windows in held.items()
        for start_s, until_s in windows
        if until_s > end_s and start_s < reach_s
    ]
    if not clashes:
        return reach
    first_s, node = min(clashes)
    why = f"{node} is booked from {format_time(from_s(first_s))} by another lease"
    return max(align_down(first_s, grain_s), end_s), why


def new_sliver_urn(sliver_authority: str) -> str:
    """A fresh sliver URN under the aggregate's authority (``sliver_authority`` in URN form, ':' for '.')."""
    return f"urn:publicid:IDN+{sliver_authority}+sliver+{uuid.uuid4().hex}"


def release_slivers(slivers: Iterable[Sliver]) -> None:
    """The slivers hold their nodes no more."""
    for sliver in slivers:
        sliver.holds_node = False
        sliver.allocation_state = "geni_unallocated"


def _held_ahead_s(connection: Connection, owner_urn: str, now_s: int) -> int:
    """The node-seconds the owner holds from now on (max_node_hours_ahead_per_user): their slivers that hold a node
    and have not ended, counted from now. Bounded by the index on lease (owner_urn, end_s) to the owner's leases not
    ended yet (a sliver's window is its lease's): the user's history is never read."""
    held_s = connection.execute(
        select(func.coalesce(func.sum(Sliver.end_s - case((Sliver.start_s > now_s, Sliver.start_s), else_=now_s)), 0))
        .select_from(Sliver)
        .join(Lease)
        .where(Lease.owner_urn == owner_urn, Lease.end_s > now_s, Sliver.holds_node.is_(True), Sliver.end_s > now_s)
    ).scalar_one()
    return int(held_s)


def _used_per_day(connection: Connection, owner_urn: str, first_s: int, last_s: int) -> dict[int, int]:
    """The owner's booked node-seconds per UTC day number (max_hours_per_day_per_user) on the days between
    ``first_s`` and ``last_s``: only their slivers there (the index on lease (owner_urn, end_s) bounds the read to
    their leases ending after ``first_s``), not every sliver the user ever booked."""
    rows = connection.execute(
        select(Sliver.start_s, Sliver.end_s)
        .join(Lease)
        .where(
            Lease.owner_urn == owner_urn,
            Lease.end_s > first_s,
            Sliver.holds_node.is_(True),
            Sliver.end_s > first_s,
            Sliver.start_s < last_s,
        )
    ).all()
    return _node_seconds_per_day([(start, end) for start, end in rows])


def _node_seconds_per_day(windows: Iterable[Interval]) -> dict[int, int]:
    """Node-seconds per UTC day number for a list of (one node) windows."""
    per_day: dict[int, int] = defaultdict(int)
    for start, end in windows:
        day = start // DAY_S
        while day * DAY_S < end:
            per_day[day] += min(end, (day + 1) * DAY_S) - max(start, day * DAY_S)
            day += 1
    return per_day


def _most_at_once(held: Sequence[Interval], window: Interval) -> int:
    """The most of the ``held`` windows that overlap one moment of ``window``. (Half-open windows: the most is
    reached at the window's start or at a held window's start inside it.)"""
    moments = [window[0]] + [start for start, _ in held if window[0] < start < window[1]]
    return max(sum(1 for start, end in held if start <= moment < end) for moment in moments)
