"""Which OAR job makes which lease real, stored in the calendar's database (table oar_job), as plain data.

The row is written *before* OAR is asked (state ``submitting``) and completed after: a crash in between leaves a row
the reconciler finishes (it finds the job by its name in OAR, or submits it). Nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import OarJob
from sfa_omf.calendar.outbox import LeaseNews, add_lease_event
from sfa_omf.times import format_time, utcnow

SUBMITTING, SUBMITTED, DELETING, DELETED, FAILED = "submitting", "submitted", "deleting", "deleted", "failed"
JOB_NAME_PREFIX = "sfa-omf_"  # + the lease id: how the reconciler recognises our jobs in OAR


def job_name(lease_id: str) -> str:
    return f"{JOB_NAME_PREFIX}{lease_id}"


def lease_of(name: str) -> str | None:
    """The lease id in one of our job names; None for a job somebody made directly in OAR."""
    return name[len(JOB_NAME_PREFIX) :] if name.startswith(JOB_NAME_PREFIX) else None


# The start of a job row's message while a Renew moves the lease's reservation (OarTestbed.renew), and after it failed
# until the aggregate has put the calendar's old end back: "<RENEWING> <new end>; <the message before>". A reconcile
# round leaves such a lease alone while the calendar holds that end: the Renew may still put the old one back.
RENEWING = "a Renew is moving this reservation to end at"


def renewal_mark(new_end: datetime, message: str) -> str:
    """The row's message while a Renew to ``new_end`` is at work, keeping ``message`` (an earlier mark's inner)."""
    return f"{RENEWING} {format_time(new_end)}; {renewal_of(message)[1]}"


def renewal_of(message: str) -> tuple[datetime | None, str]:
    """The end (to the second) a Renew marked the row for, None when not marked; and the message the mark keeps."""
    if not message.startswith(f"{RENEWING} "):
        return None, message
    end, _, before = message[len(RENEWING) + 1 :].partition("; ")
    try:
        return datetime.fromisoformat(end), before
    except ValueError:
        return None, message


@dataclass(frozen=True)
class JobRecord:
    lease_id: str
    job_id: int | None
    owner: str
    state: str
    message: str
    updated_s: int = 0


def _record(row: OarJob) -> JobRecord:
    return JobRecord(row.lease_id, row.job_id, row.owner, row.state, row.message, row.updated_s)


class OarJobs:
    def __init__(self, database: Database) -> None:
        self.database = database

    def get(self, lease_id: str) -> JobRecord | None:
        with self.database.read() as session:
            row = session.get(OarJob, lease_id)
            return _record(row) if row is not None else None

    def set(
        self,
        lease_id: str,
        state: str,
        owner: str | None = None,
        job_id: int | None = None,
        message: str = "",
        news: LeaseNews | None = None,
    ) -> None:
        """Record where a lease's job is (creating the row); ``job_id``/``owner`` None keep what is stored. ``news``
        (e.g. the job failed) is recorded for the lease's users in the same unit of work."""
        with self.database.write() as session:
            if news is not None:
                add_lease_event(session, lease_id, news, utcnow())
            row = session.get(OarJob, lease_id)
            if row is None:
                row = OarJob(lease_id=lease_id, owner=owner or "", state=state, message=message, updated_s=0)
                session.add(row)
            row.state = state
            row.message = message
            if owner is not None:
                row.owner = owner
            if job_id is not None:
                row.job_id = job_id
            row.updated_s = int(utcnow().timestamp())

    def set_if_unchanged(self, read: JobRecord, state: str, job_id: int | None = None, message: str = "") -> bool:
        """As ``set``, but only while the lease's row is still ``read`` (as a reconcile round read it: its state, job,
        owner, message and when it was written); False, having written nothing, when a call wrote it since. A round
        acting on its older reading would otherwise overwrite a newer Provision's row, and lose track of its job."""
        with self.database.write() as session:
            # (Locked, then compared: on PostgreSQL a call's write waits for this unit, or this one reads the call's.)
            row = session.get(OarJob, read.lease_id, with_for_update=True)
            if row is None or _record(row) != read:
                return False
            row.state = state
            row.message = message
            if job_id is not None:
                row.job_id = job_id
            row.updated_s = int(utcnow().timestamp())
            return True

    def mark_renewal(self, lease_id: str, new_end: datetime) -> None:
        """Mark the lease's row, when it records a submitted job: a Renew to ``new_end`` is at work on its reservation
        (``RENEWING``). Its state and job stay; a round that read the row before sees it changed. (Another row's
        message is what Status shows, or what a Delete left for the reconciler: left as it is.)"""
        with self.database.write() as session:
            row = session.get(OarJob, lease_id, with_for_update=True)
            if row is None or row.state != SUBMITTED:
                return
            row.message = renewal_mark(new_end, row.message)
            row.updated_s = int(utcnow().timestamp())

    def end_renewal_mark(self, read: JobRecord) -> JobRecord | None:
        """The row ``read`` (marked by a Renew) with the message it had before the mark, written while the row is
        still as read; None, having written nothing, when a call wrote it since or it carries no mark."""
        end, before = renewal_of(read.message)
        if end is None:
            return None
        with self.database.write() as session:
            row = session.get(OarJob, read.lease_id, with_for_update=True)
            if row is None or _record(row) != read:
                return None
            row.message = before
            row.updated_s = int(utcnow().timestamp())
            return _record(row)

    def forget(self, lease_id: str) -> None:
        with self.database.write() as session:
            row = session.get(OarJob, lease_id)
            if row is not None:
                session.delete(row)

    def in_states(self, *states: str) -> list[JobRecord]:
        with self.database.read() as session:
            rows = session.scalars(select(OarJob).where(OarJob.state.in_(states)).order_by(OarJob.lease_id))
            return [_record(row) for row in rows]
