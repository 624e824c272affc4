"""Slices whose users' keys are still to be taken out of their local logins, kept in the calendar's database (table
withdrawal_due, migration 0032).

When a slice has no provisioned lease left (a lease's end, a Delete, a Shutdown, a cancellation the testbed's
reconciler finished) the aggregate takes its keys out of the local accounts (``Aggregate.withdraw_keys_if_done``). A
withdrawal that fails (a disk error, a file that cannot be rewritten) is written here with the failure's words; the
leader's ``retire_ended`` tries every such slice again at each pass until it succeeds, which deletes its row. The
database remembers it, not the process: after a restart of ``serve``, or when another process of a cluster leads
(cluster/), the keys are still withdrawn, and a failure met by a request in any process reaches the leader. Each
process logs a failure once per reason (not at every pass), and when the keys are out.

What is written here does not bump the calendar's generation: no cached answer reads this table. The leader's writes
are fenced by its term as every background task's are (calendar/fence.py): LeadershipLost is raised, never taken for
a database failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, insert, select, update

from sfa_omf.calendar.database import Database, retry_raced, retry_transient
from sfa_omf.calendar.models import WithdrawalDue
from sfa_omf.calendar.queries import from_s, table_of, to_s
from sfa_omf.cluster.leadership import LeadershipLost

log = logging.getLogger("sfa_omf.am")  # the aggregate's logger: where operators already look for these

_TABLE = table_of(WithdrawalDue)
_DUE = select(_TABLE.c.slice_urn, _TABLE.c.reason, _TABLE.c.since_s).order_by(_TABLE.c.slice_urn)


@dataclass(frozen=True)
class DueWithdrawal:
    """A slice whose keys are still in its logins: why the last try failed, and since when it is due."""

    slice_urn: str
    reason: str
    since: datetime


class Withdrawals:
    """The due withdrawals of the aggregate's slices; safe to use from any thread and any process."""

    def __init__(self, database: Database, clock: Callable[[], datetime]) -> None:
        self.database = database
        self.clock = clock
        self._lock = threading.Lock()
        self._logged: dict[str, str] = {}  # slice -> the reason this process last logged for it
        # Failures the database did not take (it was away): tried again by this process, and written at the next
        # failure, so that the database being down at that moment loses no withdrawal.
        self._unrecorded: dict[str, str] = {}

    def due(self) -> list[DueWithdrawal]:
        """Every due withdrawal, by slice URN: the database's rows (one column query), and those it did not take."""
        rows = [DueWithdrawal(urn, reason, from_s(since_s)) for urn, reason, since_s in self.database.fetch_all(_DUE)]
        with self._lock:
            unrecorded = dict(self._unrecorded)
        known = {row.slice_urn for row in rows}
        now = self.clock()
        rows.extend(DueWithdrawal(urn, reason, now) for urn, reason in unrecorded.items() if urn not in known)
        return sorted(rows, key=lambda row: row.slice_urn)

    def failed(self, slice_urn: str, reason: str) -> None:
        """The slice's keys could not be taken out of its logins (``reason``): it is due, written in the database
        (the first failure's time kept; the reason, when it changed, replaced). Logged once per reason. When the
        database does not take it, that is logged and this process keeps it (``due``) until it does."""
        with self._lock:
            if self._logged.get(slice_urn) != reason:  # once per reason, not at every pass
                log.warning(
                    "the keys of slice %s could not be taken out of its logins (%s); tried again at the next pass",
                    slice_urn,
                    reason,
                )
                self._logged[slice_urn] = reason
        try:
            retry_raced(
                lambda: retry_transient(lambda: self._record(slice_urn, reason)),
                f"recording the due withdrawal of slice {slice_urn}",
            )
        except LeadershipLost:  # another process leads: it reads the rows; this task stops
            raise
        except Exception as exc:  # the keys are still in place: this process must not forget them
            log.error(
                "the due withdrawal of the keys of slice %s could not be written in the calendar (%s): this process "
                "tries it again, and writes it at the next failure",
                slice_urn,
                exc,
            )
            with self._lock:
                self._unrecorded[slice_urn] = reason
            return
        with self._lock:
            self._unrecorded.pop(slice_urn, None)

    def succeeded(self, slice_urn: str, due: bool | None = None) -> None:
        """The slice's keys are out of its logins (or none were to be taken out): it is no longer due; its row, if
        any, goes. ``due``: whether it is known to be due (read by the caller); None: read here (one column query)."""
        with self._lock:
            unrecorded = self._unrecorded.pop(slice_urn, None) is not None
            self._logged.pop(slice_urn, None)
        try:
            if due is None:
                due = bool(self.database.fetch_all(_DUE.where(_TABLE.c.slice_urn == slice_urn)))
            if due:
                retry_transient(lambda: self._forget(slice_urn))
        except LeadershipLost:
            raise
        except Exception as exc:  # the call that withdrew them has done its work: a row left is tried again, harmless
            log.warning("slice %s: its withdrawal done is not written in the calendar yet (%s)", slice_urn, exc)
            return
        if due or unrecorded:
            log.info("the keys of slice %s are out of its logins now", slice_urn)

    def _record(self, slice_urn: str, reason: str) -> None:
        with self.database.write_connection() as connection:
            found = _locked_reason(connection, slice_urn)
            if found is None:
                connection.execute(
                    insert(_TABLE).values(slice_urn=slice_urn, reason=reason, since_s=to_s(self.clock()))
                )
            elif found != reason:
                connection.execute(update(_TABLE).where(_TABLE.c.slice_urn == slice_urn).values(reason=reason))

    def _forget(self, slice_urn: str) -> None:
        with self.database.write_connection() as connection:
            connection.execute(delete(_TABLE).where(_TABLE.c.slice_urn == slice_urn))


def _locked_reason(connection: Connection, slice_urn: str) -> str | None:
    """The slice's recorded reason, its row locked until the commit (PostgreSQL; SQLite's writer holds the database):
    a concurrent failure of the same slice waits, then reads what this one wrote."""
    found = connection.execute(
        select(_TABLE.c.reason).where(_TABLE.c.slice_urn == slice_urn).with_for_update()
    ).scalar_one_or_none()
    return None if found is None else str(found)
