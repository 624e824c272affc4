"""What the OMF backend did at each provisioned lease's slot boundaries, in the calendar's database (table omf_slot),
as plain data. A phase is taken (``claim``) by a conditional update before the work starts, so two passes (two
threads, two servers on one database) never do the same lease's work twice; a claim left by a process that died is
taken back once it is older than the longest the work can last (``release_stale``), so nothing is lost either.

Phases: provisioned -> starting -> ready | failed -> ending -> ended | end_failed (-> ending again until it is done).

While the end is claimed or failed (ending, end_failed), ``failures`` holds the end's steps still to do, each with
the reason it is not done yet: ``off:<node name>`` (power the node off) and ``keys:<login>`` (withdraw the lease's
keys from that login, or close it). A step that succeeded leaves the map, so a retry redoes only what failed; a
claim taken back after a crash keeps the steps it was claimed with (all of them are done again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select, update

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import Lease, Node, OmfSlot, Sliver
from sfa_omf.calendar.outbox import LeaseNews, add_lease_event

PROVISIONED, STARTING, READY, FAILED = "provisioned", "starting", "ready", "failed"
ENDING, ENDED, END_FAILED = "ending", "ended", "end_failed"
#: Phases whose lease still holds the testbed (keys installed, maybe nodes on): the end has work to do.
HOLDING = (PROVISIONED, READY, FAILED, END_FAILED)
#: The kinds of end steps (see the module docstring).
END_OFF, END_KEYS = "off:", "keys:"


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
    nodes: tuple[SlotNode, ...] = field(default=())


@dataclass(frozen=True)
class SlotState:
    """What Status needs of a lease's slot work."""

    phase: str
    failures: Mapping[str, str]
    message: str


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
                .values(phase=to_phase, updated_s=now_s)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def claim_end(self, lease_id: str, from_phase: str, steps: Mapping[str, str], now_s: int) -> bool:
        """Move the lease from ``from_phase`` to ending with ``steps`` (step -> reason) as the end's work to do;
        whether this caller got it."""
        with self.database.write() as session:
            result = session.execute(
                update(OmfSlot)
                .where(OmfSlot.lease_id == lease_id, OmfSlot.phase == from_phase)
                .values(phase=ENDING, failures=dict(steps), updated_s=now_s)
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
                )
                nodes[row.lease_id] = []
            if row.component_id is not None:
                nodes[row.lease_id].append(SlotNode(row.component_id, row.component_name, row.disk_image or ""))
        return [
            SlotRecord(**{**record.__dict__, "nodes": tuple(nodes[lease_id])}) for lease_id, record in records.items()
        ]


def _record(row: OmfSlot) -> SlotRecord:
    return SlotRecord(
        row.lease_id, row.phase, dict(row.accounts), dict(row.failures), row.message, row.attempts, row.updated_s
    )
