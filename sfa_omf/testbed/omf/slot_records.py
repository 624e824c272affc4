"""What the OMF backend did at each provisioned lease's slot boundaries, in the calendar's database (table omf_slot),
as plain data. A phase is taken (``claim``) by a conditional update before the work starts, so two passes (two
threads, two servers on one database) never do the same lease's work twice; a claim left by a process that died is
taken back once it is older than the longest the work can last (``release_stale``), so nothing is lost either.

Phases: provisioned -> starting -> ready | failed -> ending -> ended | end_failed (-> ending again until it is done).

While the end is claimed or failed (ending, end_failed), ``failures`` holds the end's steps still to do, each with
the reason it is not done yet: ``off:<node name>`` (power the node off) and ``keys:<login>`` (withdraw the lease's
keys from that login, or close it). A step that succeeded leaves the map, so a retry redoes only what failed; a
claim taken back after a crash keeps the steps it was claimed with (all of them are done again).

For the operator (``sfa-omf omf slots``, ``sfa-omf omf retry``): ``summaries`` reads the records as plain data, every
one or those that need attention; ``make_end_due`` brings a failed end's next try forward to now.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select, update

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import Lease, Node, OmfSlot, Slice, Sliver
from sfa_omf.calendar.outbox import LeaseNews, add_lease_event

PROVISIONED, STARTING, READY, FAILED = "provisioned", "starting", "ready", "failed"
ENDING, ENDED, END_FAILED = "ending", "ended", "end_failed"
#: Phases whose lease still holds the testbed (keys installed, maybe nodes on): the end has work to do.
HOLDING = (PROVISIONED, READY, FAILED, END_FAILED)
#: The kinds of end steps (see the module docstring).
END_OFF, END_KEYS = "off:", "keys:"
#: Ends the controllers refused (or did not answer) this many times are tried with a growing wait, logged at ERROR.
MAX_END_ATTEMPTS = 10
#: The wait before such a try: the first, doubled each time, up to the last.
END_RETRY_FIRST_S, END_RETRY_MAX_S = 60, 3600


def end_retry_wait_s(attempts: int) -> int:
    """How long an end refused ``attempts`` times waits before its next try (0: the next pass)."""
    if attempts < MAX_END_ATTEMPTS:
        return 0
    return int(min(END_RETRY_FIRST_S * 2 ** min(attempts - MAX_END_ATTEMPTS, 16), END_RETRY_MAX_S))


def end_due_s(updated_s: int, attempts: int, retry_due_s: int | None) -> int:
    """From when a failed end is tried again: after the wait its tries call for, or from an operator's retry."""
    due_s = updated_s + end_retry_wait_s(attempts)
    return due_s if retry_due_s is None else min(due_s, retry_due_s)


def end_steps_left(failures: Mapping[str, str]) -> dict[str, str]:
    """The end steps a record's ``failures`` holds (empty when it holds none, e.g. a start's failures)."""
    return {step: reason for step, reason in failures.items() if step.startswith((END_OFF, END_KEYS))}


@dataclass(frozen=True)
class SlotNode:
    component_id: str
    name: str  # what the controllers call the node
    disk_image: str


@dataclass(frozen=True)
class SlotRecord:
    """One lease's slot work, with what the calendar says of the lease now."""

    lease_id: str
    phase: str
    accounts: Mapping[str, Sequence[str]]
    failures: Mapping[str, str]
    message: str
    attempts: int
    updated_s: int
    lease_state: str = ""
    start_s: int = 0
    end_s: int = 0
    retry_due_s: int | None = None  # an operator's retry: the failed end is due from then, whatever its wait
    nodes: tuple[SlotNode, ...] = field(default=())


@dataclass(frozen=True)
class SlotState:
    """What Status needs of a lease's slot work."""

    phase: str
    failures: Mapping[str, str]
    message: str


@dataclass(frozen=True)
class SlotSummary:
    """One lease's slot work as an operator sees it (``sfa-omf omf slots``): the record and what the calendar says
    of its lease (``slice_urn`` "" and ``lease_state`` "" when the calendar holds no such lease any more)."""

    lease_id: str
    phase: str
    failures: Mapping[str, str]  # a failed start: node URN -> reason; an end: step left -> reason
    message: str
    attempts: int  # the end's tries the controllers refused
    updated_s: int  # the last try (or change) of the work
    retry_due_s: int | None  # an operator's retry: the failed end is due from then, whatever its wait
    slice_urn: str
    lease_state: str
    start_s: int
    end_s: int
    nodes: tuple[str, ...]  # the lease's nodes, by the name the controllers use


@dataclass(frozen=True)
class EndMadeDue:
    """What ``make_end_due`` did: ``phase`` the record's phase (nothing written unless it is end_failed and was not
    due yet), ``attempts`` its tries so far, ``moved`` whether its next try was brought forward."""

    phase: str
    attempts: int
    moved: bool


class SlotRecords:
    def __init__(self, database: Database) -> None:
        self.database = database

    def provisioned(self, lease_id: str, accounts: Mapping[str, Sequence[str]], now_s: int) -> None:
        """The lease's accounts exist on the testbed with these keys (login -> keys); its slot work is to come."""
        with self.database.write() as session:
            row = session.get(OmfSlot, lease_id, with_for_update=True)
            if row is None:
                session.add(
                    OmfSlot(
                        lease_id=lease_id,
                        phase=PROVISIONED,
                        accounts={login: list(keys) for login, keys in accounts.items()},
                        failures={},
                        message="",
                        attempts=0,
                        updated_s=now_s,
                    )
                )
                return
            row.accounts = {login: list(keys) for login, keys in accounts.items()}
            row.updated_s = now_s
            if row.phase == ENDED:
                # Provisioned again after its work was ended: the slot's work is to come again.
                row.phase, row.failures, row.message, row.attempts = PROVISIONED, {}, "", 0

    def set_accounts(self, lease_id: str, accounts: Mapping[str, Sequence[str]]) -> None:
        """The keys each login now has for this lease (geni_update_users)."""
        with self.database.write() as session:
            row = session.get(OmfSlot, lease_id, with_for_update=True)
            if row is not None:
                row.accounts = {login: list(keys) for login, keys in accounts.items()}

    def forget(self, lease_id: str) -> None:
        """A Provision that failed after the accounts were made: the lease never held the testbed."""
        with self.database.write() as session:
            row = session.get(OmfSlot, lease_id)
            if row is not None and row.phase == PROVISIONED:
                session.delete(row)

    def get(self, lease_id: str) -> SlotRecord | None:
        with self.database.read() as session:
            row = session.get(OmfSlot, lease_id)
            return _record(row) if row is not None else None

    def state_of(self, lease_id: str) -> SlotState | None:
        """The lease's phase, failures and message (a column query); None when it has no slot work here."""
        with self.database.read() as session:
            row = session.execute(
                select(OmfSlot.phase, OmfSlot.failures, OmfSlot.message).where(OmfSlot.lease_id == lease_id)
            ).first()
        return SlotState(row.phase, dict(row.failures or {}), row.message) if row is not None else None

    def claim(self, lease_id: str, from_phases: Sequence[str], to_phase: str, now_s: int) -> bool:
        """Move the lease to ``to_phase`` if it is in one of ``from_phases``; whether this caller got it."""
        with self.database.write() as session:
            result = session.execute(
                update(OmfSlot)
                .where(OmfSlot.lease_id == lease_id, OmfSlot.phase.in_(from_phases))
                .values(phase=to_phase, updated_s=now_s, retry_due_s=None)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def claim_end(self, lease_id: str, from_phase: str, steps: Mapping[str, str], now_s: int) -> bool:
        """Move the lease from ``from_phase`` to ending with ``steps`` (step -> reason) as the end's work to do;
        whether this caller got it."""
        with self.database.write() as session:
            result = session.execute(
                update(OmfSlot)
                .where(OmfSlot.lease_id == lease_id, OmfSlot.phase == from_phase)
                .values(phase=ENDING, failures=dict(steps), updated_s=now_s, retry_due_s=None)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def finish(
        self,
        lease_id: str,
        phase: str,
        now_s: int,
        message: str = "",
        failures: Mapping[str, str] | None = None,
        count_attempt: bool = False,
        news: LeaseNews | None = None,
    ) -> None:
        """Record the outcome of the work this caller claimed; ``news`` (the start failed) is recorded for the
        lease's users in the same unit of work."""
        with self.database.write() as session:
            row = session.get(OmfSlot, lease_id, with_for_update=True)
            if row is None:
                return
            if news is not None:
                add_lease_event(session, lease_id, news, datetime.fromtimestamp(now_s, UTC))
            row.phase = phase
            row.message = message
            if failures is not None:
                row.failures = dict(failures)
            row.attempts = row.attempts + 1 if count_attempt else row.attempts
            row.updated_s = now_s
            row.retry_due_s = None

    def release_stale(self, older_than_s: int, now_s: int) -> int:
        """Claims older than ``older_than_s`` (their process died): the work is to be done again."""
        with self.database.write() as session:
            taken_back = 0
            for claimed, back in ((STARTING, PROVISIONED), (ENDING, END_FAILED)):
                result = session.execute(
                    update(OmfSlot)
                    .where(OmfSlot.phase == claimed, OmfSlot.updated_s < older_than_s)
                    .values(phase=back, message="interrupted (the server stopped): done again", updated_s=now_s)
                )
                taken_back += int(result.rowcount)  # type: ignore[attr-defined]
            return taken_back

    def node_names(self, component_ids: set[str]) -> dict[str, str]:
        """Component id -> the node's name (what the controllers and /resources/nodes?name= call it)."""
        if not component_ids:
            return {}
        with self.database.read() as session:
            rows = session.execute(
                select(Node.component_id, Node.component_name).where(Node.component_id.in_(component_ids))
            )
            return {component_id: name for component_id, name in rows}

    def open_work(self) -> list[SlotRecord]:
        """Every lease whose slot work is not over, with its lease's state, window and nodes (one column query)."""
        with self.database.read() as session:
            rows = session.execute(
                select(
                    OmfSlot.lease_id,
                    OmfSlot.phase,
                    OmfSlot.accounts,
                    OmfSlot.failures,
                    OmfSlot.message,
                    OmfSlot.attempts,
                    OmfSlot.updated_s,
                    OmfSlot.retry_due_s,
                    Lease.state,
                    Lease.start_s,
                    Lease.end_s,
                    Node.component_id,
                    Node.component_name,
                    Sliver.disk_image,
                )
                .join(Lease, Lease.id == OmfSlot.lease_id)
                .outerjoin(Sliver, Sliver.lease_id == Lease.id)
                .outerjoin(Node, Node.id == Sliver.node_id)
                .where(OmfSlot.phase != ENDED)
                .order_by(Lease.start_s, OmfSlot.lease_id, Node.component_name)
            ).all()
        records: dict[str, SlotRecord] = {}
        nodes: dict[str, list[SlotNode]] = {}
        for row in rows:
            if row.lease_id not in records:
                records[row.lease_id] = SlotRecord(
                    row.lease_id,
                    row.phase,
                    dict(row.accounts or {}),
                    dict(row.failures or {}),
                    row.message,
                    row.attempts,
                    row.updated_s,
                    row.state,
                    row.start_s,
                    row.end_s,
                    row.retry_due_s,
                )
                nodes[row.lease_id] = []
            if row.component_id is not None:
                nodes[row.lease_id].append(SlotNode(row.component_id, row.component_name, row.disk_image or ""))
        return [
            SlotRecord(**{**record.__dict__, "nodes": tuple(nodes[lease_id])}) for lease_id, record in records.items()
        ]

    def summaries(self, attention_only: bool) -> list[SlotSummary]:
        """Every lease's slot record, or (``attention_only``) those an operator must look at: a start that failed,
        an end that failed or waits for the testbed, a start that waits for it (or was taken back after a crash:
        provisioned with a message). Earliest end first, with the lease's slice, state, window and nodes (one
        column query); a record whose lease is no longer in the calendar is listed too."""
        query = (
            select(
                OmfSlot.lease_id,
                OmfSlot.phase,
                OmfSlot.failures,
                OmfSlot.message,
                OmfSlot.attempts,
                OmfSlot.updated_s,
                OmfSlot.retry_due_s,
                Slice.urn,
                Lease.state,
                Lease.start_s,
                Lease.end_s,
                Node.component_name,
            )
            .outerjoin(Lease, Lease.id == OmfSlot.lease_id)
            .outerjoin(Slice, Slice.id == Lease.slice_id)
            .outerjoin(Sliver, Sliver.lease_id == Lease.id)
            .outerjoin(Node, Node.id == Sliver.node_id)
            .order_by(Lease.end_s.asc().nulls_last(), OmfSlot.lease_id, Node.component_name)
        )
        if attention_only:
            query = query.where(
                or_(
                    OmfSlot.phase.in_((FAILED, END_FAILED)),
                    and_(OmfSlot.phase == PROVISIONED, OmfSlot.message != ""),
                )
            )
        with self.database.read() as session:
            rows = session.execute(query).all()
        first_rows: dict[str, Any] = {}  # lease id -> its first row (one row per node of the lease)
        nodes: dict[str, list[str]] = {}
        for row in rows:
            first_rows.setdefault(row.lease_id, row)
            names = nodes.setdefault(row.lease_id, [])
            if row.component_name is not None:
                names.append(row.component_name)
        return [
            SlotSummary(
                lease_id,
                row.phase,
                dict(row.failures or {}),
                row.message,
                row.attempts,
                row.updated_s,
                row.retry_due_s,
                row.urn or "",
                row.state or "",
                row.start_s or 0,
                row.end_s or 0,
                tuple(nodes[lease_id]),
            )
            for lease_id, row in first_rows.items()
        ]

    def make_end_due(self, lease_id: str, wait_s: Callable[[int], int], now_s: int) -> EndMadeDue | None:
        """Bring the next try of a failed end (end_failed) forward to now: it is due from now whatever the wait
        ``wait_s(attempts)`` its tries call for; the time of its last try, its tries, steps left and message are
        kept. Nothing is written when the record is in another phase (a pass has claimed it, say) or its end is due
        already (no wait after so few tries, or the wait is over). None when there is no record for ``lease_id``."""
        with self.database.write() as session:
            # Locked: a pass claiming the end meanwhile waits for this unit (or this one sees it ending).
            row = session.execute(
                select(OmfSlot.phase, OmfSlot.attempts, OmfSlot.updated_s, OmfSlot.retry_due_s)
                .where(OmfSlot.lease_id == lease_id)
                .with_for_update()
            ).first()
            if row is None:
                return None
            wait = wait_s(row.attempts)
            due_s = row.updated_s + wait if row.retry_due_s is None else min(row.retry_due_s, row.updated_s + wait)
            if row.phase != END_FAILED or wait == 0 or due_s <= now_s:  # no wait, or it is over (or made due)
                return EndMadeDue(row.phase, row.attempts, moved=False)
            session.execute(
                update(OmfSlot)
                .where(OmfSlot.lease_id == lease_id, OmfSlot.phase == END_FAILED)
                .values(retry_due_s=now_s)
            )
            return EndMadeDue(END_FAILED, row.attempts, moved=True)


def _record(row: OmfSlot) -> SlotRecord:
    return SlotRecord(
        row.lease_id,
        row.phase,
        dict(row.accounts),
        dict(row.failures),
        row.message,
        row.attempts,
        row.updated_s,
        retry_due_s=row.retry_due_s,
    )
