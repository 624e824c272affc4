"""The OAR backend (``[sfa_aggregate] type = oar``): a provisioned lease becomes one OAR advance reservation.

One OAR job per lease, not per node: a lease is booked all-or-nothing in the calendar, and one job keeps it so in
OAR (OAR accepts or refuses the whole set of pinned nodes at once), costs one API call (~1.3 s each) whatever the
number of nodes, and is deleted in one call.

- Provision submits, as the mapped local login, exactly the lease's nodes (``network_address in (...)``) from its
  start (server-local time) with walltime = duration - 1 s (OAR holds the closed interval [start, start+walltime];
  back-to-back slots both fit). The job is named ``sfa-omf_<lease id>``; the row in oar_job is written before OAR
  is asked, so a crash in between is finished by the reconciler, never lost or doubled.
- OAR refusing the slot (a local user reserved it directly in OAR) answers geni_code 7 with OAR's "could run at".
- OAR down: UNAVAILABLE; too slow: TIMEDOUT. The booking stays allocated and Provision may be called again.
- Reservations made directly in OAR are mirrored into the calendar (calendar/external.py) by a background task, so
  ListResources and Allocate see them without ever calling OAR on the request path.
- The reconciler (at start and periodically) deletes orphan jobs (ours, whose lease this calendar no longer holds),
  resubmits missing ones, finishes interrupted provisions and deletions, and records failures that Status shows.
- A job is a lease's only if it is the one made for it: its name, the owner recorded for the lease, exactly its nodes
  and its window (_job_matches). Once the lease has begun OAR alone moves it (a start pushed back while a node is
  missing, a launch on fewer nodes): the recorded job stays the lease's, and is never replaced. A job of ours for
  another window is replaced by the calendar's before the lease begins; a job anybody else names ``sfa-omf_<id>`` is
  neither adopted nor deleted, and is mirrored like any OAR reservation.
"""

from __future__ import annotations

import logging
import math
import posixpath
import pwd
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sfa_omf.am.states import Operational
from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.external import ExternalHold, ExternalHolds, SyncReport
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.outbox import LeaseNews
from sfa_omf.calendar.records import LeaseRecord, NodeRecord, SliverRecord, network_address
from sfa_omf.errors import GeniError, Reason
from sfa_omf.images.node_plans import EXIT_PLAN_REFUSED, LeasePlans, lease_plans
from sfa_omf.images.provisioning import ONDEMAND, image_left, image_left_by_previous_lease, plan_lease
from sfa_omf.images.store import store_directory
from sfa_omf.testbed.base import BackgroundTask, SliverHealth
from sfa_omf.testbed.gate import COOLDOWN_S, CircuitBreaker
from sfa_omf.testbed.oar.client import (
    ACTIVE_STATES,
    OarCircuitOpen,
    OarClient,
    OarError,
    OarJob,
    OarRefused,
    OarTimeout,
    OarUnavailable,
    to_server_time,
)
from sfa_omf.testbed.oar.jobs import (
    DELETED,
    DELETING,
    FAILED,
    SUBMITTED,
    SUBMITTING,
    JobRecord,
    OarJobs,
    job_name,
    lease_of,
    renewal_of,
)
from sfa_omf.testbed.oar.repairs import alert_details, lease_details, one_line, report_lists
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import format_time, utcnow

log = logging.getLogger("sfa_omf.oar")
T = TypeVar("T")

#: OAR job state -> the sliver's GENI operational state (a provisioned lease's job).
OAR_OPERATIONAL_STATES: dict[str, Operational] = {
    "Waiting": Operational.NOTREADY,  # an advance reservation before its start (reservation "Scheduled")
    "Hold": Operational.NOTREADY,
    "toAckReservation": Operational.CONFIGURING,
    "toLaunch": Operational.CONFIGURING,
    "Launching": Operational.CONFIGURING,
    "Running": Operational.READY,
    "Suspended": Operational.NOTREADY,
    "Resuming": Operational.CONFIGURING,
    "Finishing": Operational.NOTREADY,
    "Terminated": Operational.NOTREADY,  # the slot is over
    "Error": Operational.FAILED,
}
EXTERNAL_SOURCE = "oar"
PLAN_REFUSED = "the node command refused the lease's plan"  # the start of the job row's message, FAILED for good
# The start of a FAILED job row's message when the job's own command exited before the lease's end: reserving the slot
# again would run it again (and fail the same way, every round, with a notice each time).
COMMAND_ENDED = "the lease's OAR job ended by its own command's exit"
FINAL_STATES = ("Error", "Terminated")  # an OAR job in these holds its nodes no more, for good
RECONCILE_AHEAD = timedelta(days=366)  # how far ahead the reconciler looks for our jobs in OAR
# How much later than "now" a job of a lease that has begun may start and still be its reservation: submitted a second
# after "now", or moved to "now + 1 s" by OAR at each scheduling pass while it waits for a node to come back (up to
# RESERVATION_WAITING_RESOURCES_TIMEOUT), give or take the hosts' clocks.
LATE_START = timedelta(minutes=2)
# The start of a job row's message when the reconciler replaced a job and OAR still holds another window than the
# calendar's (e.g. [sfa_oar] timezone is not the OAR server's): said once, not replaced again every round.
OTHER_WINDOW = "OAR holds another window than the calendar's"
# A job row's message while the aggregate deletes the lease's job to replace it (_replace): a job deleted so is never
# told to the users as lost, whether or not the replacement or its putting back was made.
REPLACING = "deleted by the aggregate to be replaced: OAR job"
# OAR ends a job in these states as soon as it is asked to delete it; a running one may take minutes (JOBDEL_WALLTIME).
WAITING_STATES = ("Waiting", "Hold")
# The mark once the call that replaced the job has ended without a job for the lease (its window neither reserved anew
# nor put back): the reconciler's to reserve again at once. While the mark is REPLACING, a call may still be at work.
NOT_REPLACED = "deleted by the aggregate, not replaced: OAR job"
# A job row's message (state DELETING, the lease still provisioned) after a Delete OAR did not confirm in time: OAR may
# have deleted the job all the same. Until a retried Delete or the reconciler finds the job gone (and cancels the
# lease), Status does not tell the job's end as a failure and the reconciler never reserves the lease again.
DELETE_ASKED = "a Delete was asked and OAR did not confirm it in time: OAR job"
# How long a Provision waits for OAR to finish making a reservation an earlier call of the lease asked for: OAR lists
# it with no nodes until that call's oarsub acknowledges it (client.reservations), about 0.3 s, more when loaded.
PLACING_WAIT_S = 10.0


@dataclass
class ReconcileReport:
    orphans_deleted: list[int] = field(default_factory=list)
    resubmitted: list[str] = field(default_factory=list)  # lease ids
    adopted: list[str] = field(default_factory=list)  # interrupted provisions finished (lease ids)
    deleted: list[str] = field(default_factory=list)  # interrupted deletions finished (lease ids)
    failed: dict[str, str] = field(default_factory=dict)  # lease id -> OAR's words
    # Leases whose user's Delete OAR did not confirm in time (DELETE_ASKED) and did not confirm again when this round
    # asked it (or could not be read): lease id -> OAR's words. Still provisioned, never reserved again; the next round
    # asks OAR again. Not a failure to reserve: told in words of its own.
    deletes_unconfirmed: dict[str, str] = field(default_factory=dict)
    # Leases this round cancelled in the calendar itself (a Delete OAR did not confirm in time, finished here; also in
    # ``deleted``): what the aggregate's Delete does after the calendar (containers, the slice's keys) is still to do.
    cancelled: list[str] = field(default_factory=list)
    # The listed leases' slice, nodes, window and OAR job, read at the end of a round that repaired something
    # (repairs.lease_details): the operators' alert tells them.
    leases: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether the round repaired anything (the operators' alert): a lease OAR keeps refusing is no repair, and
        would otherwise raise the alert every round."""
        return bool(self.orphans_deleted or self.resubmitted or self.adopted or self.deleted)

    def lists(self) -> dict[str, Any]:
        """The repairs as JSON-able lists per category (repairs.report_lists)."""
        return report_lists(
            self.resubmitted, self.adopted, self.deleted, self.orphans_deleted, self.failed, self.deletes_unconfirmed
        )

    def alert(self) -> dict[str, Any]:
        """The operators' ``reconciler_repaired`` event's details, as plain data (repairs.alert_details)."""
        return alert_details(self.lists(), self.leases)


CONTAINER_COMMAND = "/usr/local/sbin/sfa-omf-lease-containers"  # on the nodes (scripts/oar.sh installs it)


class OarTestbed:
    name = "oar"

    def __init__(
        self,
        client: OarClient,
        database: Database,
        authority_hrn: str,
        job_type: str = "noop",
        deploy_command: str = "",
        cache_s: int = 30,
        reconcile_s: int = 300,
        horizon: timedelta = timedelta(days=14),
        clock: Callable[[], datetime] = utcnow,
        provisioning_mode: str = ONDEMAND,
        container_plans: LeasePlans | None = None,
        container_command: str = CONTAINER_COMMAND,
    ) -> None:
        self.client = client
        self.jobs = OarJobs(database)
        self.inventory = Inventory(database)
        self.bookings = Bookings(database, sliver_authority=authority_hrn, clock=clock)
        self.external = ExternalHolds(database, authority_hrn, clock=clock)
        self.job_type = job_type
        self.deploy_command = deploy_command
        self.provisioning_mode = provisioning_mode  # perjob or ondemand: which nodes a deploy job reinstalls
        # A lease whose containers the aggregate planned (a plan there) is an ordinary job running this command.
        self.container_plans = container_plans
        self.container_command = container_command
        self.cache_s = cache_s
        self.reconcile_s = reconcile_s
        self.horizon = horizon
        self.clock = clock
        self.placing_wait_s = PLACING_WAIT_S
        self._jobs_seen: dict[int, tuple[float, OarJob | None]] = {}  # job id -> (when read, job): Status cache
        # Jobs the reconciler made in place of others and OAR still holds in another window than the calendar's: kept,
        # not replaced again every round. Remembered until a restart, which is how a corrected [sfa_oar] timezone
        # takes effect: the first round after it replaces them once more.
        self._kept_in_other_window: set[int] = set()
        self._lock = threading.Lock()

    # -- the backend interface ------------------------------------------------------------------------------------
    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        """Reserve the lease's window in OAR (the module docstring). A failure after which the lease's row is kept
        (OAR may have made the job: no answer in time, a 502, a connection broken off, no job id) is marked
        ``maybe_made``: the aggregate keeps what that job needs, as the next Provision, Delete or the reconciler
        finds it."""
        try:
            self._provision(lease, owner)
        except GeniError as error:
            row = self.jobs.get(lease.id)
            if row is not None and row.owner and row.state in (SUBMITTING, SUBMITTED, DELETING):
                error.maybe_made = True
            raise

    def _provision(self, lease: LeaseRecord, owner: str) -> None:
        row = self.jobs.get(lease.id)
        earlier = row if row is not None and row.owner and row.state in (SUBMITTING, SUBMITTED, DELETING) else None
        # The row as it was, with the owner of a job an earlier call may have made (DELETED: none found for it yet;
        # OAR may list it later): restored if this call makes nothing, and its owner's job taken over if OAR has one.
        before = row if row is not None and row.owner and (earlier is not None or row.state == DELETED) else None
        if earlier is not None:
            # An earlier call may have reached OAR without recording the answer (a crash, a time-out), and the booking
            # may have been renewed since: take that job over (as it is, or for the calendar's window), never double it.
            held = self._provisioning(lease, lambda: self._take_over(lease, earlier.owner, recorded_id=earlier.job_id))
            if held is not None:
                self.jobs.set(lease.id, SUBMITTED, owner=earlier.owner, job_id=held)
                return
        self._check_account(owner)
        self.jobs.set(lease.id, SUBMITTING, owner=owner)
        try:
            job_id = self._submit(lease, owner)
        except OarRefused as exc:
            # The slot may be held by our own job: an earlier Provision whose answer was lost (a crash, a time-out),
            # this caller's or another member's (per-user logins): OAR lists it by now, since it refused this one.
            # (If taking it over fails, the row stays: it names the owner Delete and the reconciler act as.)
            try:
                for maker in dict.fromkeys([owner, *([before.owner] if before is not None else [])]):
                    held = self._provisioning(lease, partial(self._take_over, lease, maker))
                    if held is not None:
                        self.jobs.set(lease.id, SUBMITTED, owner=maker, job_id=held)
                        return
            except GeniError:  # (BUSY, OAR down): the row names the earlier owner again, whose job may exist
                if before is not None and before.owner != owner:
                    self._forget_this_call(lease, before)
                raise
            self._forget_this_call(lease, before)
            raise self._refusal_of(lease, exc) from exc
        except (OarError, ValueError, GeniError) as exc:
            # OAR may have booked it whenever the request may have reached it (a time-out, a connection broken off
            # after sending, a proxy's 502, an answer that does not read as OAR's or gives no job id): the row stays,
            # with its owner, and the next Provision, Delete or the reconciler finds the job. It is forgotten only
            # when OAR certainly made nothing: refused before it was asked, or OAR's own 4xx refusal.
            if _nothing_made(exc):
                self._forget_this_call(lease, before)
            error = self._provision_error(lease, exc)
            if error is exc:
                raise
            raise error from exc
        self.jobs.set(lease.id, SUBMITTED, owner=owner, job_id=job_id)
        log.info("lease %s is OAR job %d (owner %s)", lease.id, job_id, owner)

    def _forget_this_call(self, lease: LeaseRecord, before: JobRecord | None) -> None:
        """This Provision made nothing in OAR: the lease's row as it was before it (``before``: an earlier call's,
        whose job OAR may still make or list, with the owner it is made as), else none."""
        if before is None:
            self.jobs.forget(lease.id)
        else:
            self.jobs.set(lease.id, before.state, owner=before.owner, message=before.message)

    def renew(self, lease: LeaseRecord, new_end: datetime) -> None:
        """Move the lease's reservation to end at ``new_end`` (``_renew_job``), the lease's job row marked meanwhile
        (``RENEWING``, before OAR is asked anything): the calendar holds the new end already, and puts the old one
        back if this fails, so a reconcile round (of any process) must not reserve the new window in the meantime."""
        self.jobs.mark_renewal(lease.id, new_end)
        try:
            self._renew_job(lease, new_end)
        except BaseException:
            # Marked again: a failure may have rewritten the row (the old window put back), and the aggregate puts
            # the calendar's old end back only after this returns. The next round, seeing the calendar's end is not
            # the mark's, ends the mark.
            try:
                self.jobs.mark_renewal(lease.id, new_end)
            except Exception as exc:  # (the database gone too: the first mark stays, the renewal's failure is told)
                log.warning("lease %s: its job row could not be marked again after a failed renewal: %s", lease.id, exc)
            raise
        try:
            row = self.jobs.get(lease.id)
            # (Only this Renew's mark: one that wrote the row ended it already, and a newer Renew's is that one's.)
            if row is not None and renewal_of(row.message)[0] == new_end.replace(microsecond=0):
                self.jobs.end_renewal_mark(row)
        except Exception as exc:
            # OAR holds the new window: the Renew succeeded, and failing it would put the calendar's old end back.
            # The mark left is stale; a reconcile round ends it (_renewal_over).
            log.warning("lease %s: renewed, but its job row's renewal mark could not be ended: %s", lease.id, exc)

    def _renew_job(self, lease: LeaseRecord, new_end: datetime) -> None:
        """OAR 2.5.9 cannot move a reservation's end: a reservation that has not started is replaced by one for the
        new window (if OAR refuses it, the old one is put back and the renewal refused with OAR's hint); one whose
        lease has begun cannot change (even while OAR waits for a node to launch it, replacing it would lose its
        start), and the renewal is refused saying so. The job is the one OAR holds for the lease (its name, recorded
        owner and nodes), whatever the row's state (e.g. a Delete that failed while OAR was down)."""
        row = self.jobs.get(lease.id)
        if row is None or not row.owner:
            return  # nothing was ever submitted for it; the reconciler submits the calendar's window
        renewed = replace(lease, end=new_end)
        named = self._oar(lambda: self._jobs_named(lease))
        # A job OAR is still making for it (a replacement or a reservation made again whose answer came too late) is
        # waited for: passed over, it would keep the old window while the calendar has the new end.
        matching, stale, _ = self._ours_once_placed(
            lease,
            row.owner,
            named,
            row.job_id,
            f"it cannot be moved before OAR has made it, and the lease keeps its end {format_time(lease.end)}: call "
            "Renew again in a moment",
        )
        job = matching or stale
        if job is None:
            return  # nothing in OAR for it now; the reconciler submits the calendar's window
        begun = lease.start <= self.clock()
        # (A begun lease's job matches whatever its end: it holds the new window only if it ends there.)
        if self._job_matches(job, renewed, row.owner, recorded_id=row.job_id) and (
            not begun or _end_of(job) == new_end
        ):
            self.jobs.set(lease.id, SUBMITTED, job_id=job.id)  # OAR holds the new window already (a lost answer)
            return
        if begun or job.state != "Waiting":
            raise GeniError(
                Reason.POLICY,
                f"OAR cannot change the reservation of a lease that has begun (job {job.id} is {job.state}); the "
                f"lease still ends at {format_time(lease.end)}: allocate a further slot from then",
            )
        try:
            new_id = self._replace(job, renewed, row.owner)
        except GeniError as exc:  # e.g. deleting the old job failed, or it was not seen gone
            raise GeniError(
                exc.reason,
                f"{exc.message} while renewing; the lease keeps its end {format_time(lease.end)} and "
                f"{self._after_failed_renewal(lease, job)}: try again later",
            ) from exc
        except OarRefused as exc:
            when = f"; OAR says it could run at {format_time(exc.could_run_at)}" if exc.could_run_at else ""
            raise GeniError(
                Reason.BOOKING_CONFLICT,
                f"OAR refuses to extend the reservation to {format_time(new_end)}: the nodes are reserved directly "
                f"in OAR{when}. The lease keeps its end {format_time(lease.end)}",
            ) from exc
        except OarTimeout as exc:
            raise GeniError(
                Reason.TIMEDOUT,
                f"OAR did not answer within {self.client.timeout_s:g} s while renewing ({exc.message}); the lease "
                f"keeps its end {format_time(lease.end)} and {self._after_failed_renewal(lease, job)}: try again "
                "later",
            ) from exc
        except OarError as exc:
            raise GeniError(
                Reason.UNAVAILABLE,
                f"OAR failed while renewing ({exc.message}); the lease keeps its end {format_time(lease.end)} and "
                f"{self._after_failed_renewal(lease, job)}: try again later",
            ) from exc
        except ValueError as exc:
            raise GeniError(
                Reason.TESTBED,
                f"OAR cannot be asked for the renewed reservation ({exc}); the lease keeps its end "
                f"{format_time(lease.end)}",
            ) from exc
        self.jobs.set(lease.id, SUBMITTED, job_id=new_id)

    def _after_failed_renewal(self, lease: LeaseRecord, job: OarJob) -> str:
        """What became of the lease's reservation after a renewal that failed while replacing ``job``, its old one:
        its old window reserved again (``_put_back``), or left to the reconciler."""
        row = self.jobs.get(lease.id)
        if row is not None and row.job_id is not None and row.job_id != job.id:
            return f"its old window is reserved again as OAR job {row.job_id}"
        return f"the reconciler reserves its old window again if OAR job {job.id} is gone"

    @property
    def testbed_words(self) -> str:
        """How a refusal names this testbed."""
        return f"OAR at {self.client.shown_url}"

    @property
    def settle_s(self) -> int:
        """About how long the reconciler may take to finish what a call left half-made (a Provision cut short, a
        Delete OAR did not confirm): a row is left to its call for two time-outs, then the next round acts."""
        return math.ceil(2 * self.client.timeout_s) + self.reconcile_s

    def release(self, lease: LeaseRecord) -> None:
        """Delete the lease's OAR job. OAR not answering in time (TIMEDOUT): the row keeps DELETING marked
        DELETE_ASKED (OAR may have deleted the job, or never got the request), finished by the next Delete or by the
        reconciler (``_finish_asked_deletion``, which asks OAR again once the row is settled)."""
        row = self.jobs.get(lease.id)
        if row is None or row.state in (DELETED, FAILED):
            return
        job_id = row.job_id
        if job_id is None:  # an interrupted submission: is there a job of ours after all?
            named = self._oar(lambda: self._jobs_named(lease))
            matching, stale = self._ours(lease, row.owner, named, row.job_id)
            # (One OAR is still making, nodes not listed yet: that submission's, named after the lease, its owner's.)
            found = matching or stale or _being_made(named, lease, row.owner)
            if found is None:
                # Kept, with its owner: a job OAR has not even listed yet (it lists one only once scheduled) is then
                # an orphan the reconciler deletes.
                self.jobs.set(lease.id, DELETED)
                return
            job_id = found.id
        try:
            self.client.delete_job(job_id, user=row.owner or self.client.admin_user)
        except OarTimeout as exc:
            # OAR goes on after the time-out and may have deleted the job: the row says the Delete was asked, so that
            # the job's end is not told as a failure nor reserved again, and the next Delete or round finishes it.
            self.jobs.set(lease.id, DELETING, job_id=job_id, message=f"{DELETE_ASKED} {job_id}")
            self._forget_seen(job_id)
            raise GeniError(
                Reason.TIMEDOUT,
                f"OAR did not confirm the deletion of job {job_id} within {self.client.timeout_s:g} s "
                f"({exc.message}): it may have deleted it all the same. The lease stays provisioned until that is "
                "known and is not reserved again: call Delete again to finish it, or the reconciler cancels it "
                f"within about {self.settle_s + self.reconcile_s} s (asking OAR to delete the job again should OAR "
                "still hold it)",
            ) from exc
        except OarCircuitOpen as exc:  # not sent (OAR failed moments ago): nothing to record
            raise GeniError(Reason.UNAVAILABLE, f"OAR did not delete job {job_id}: {exc.message}") from exc
        except OarUnavailable as exc:
            self.jobs.set(lease.id, DELETING, job_id=job_id, message=exc.message)
            raise GeniError(
                Reason.UNAVAILABLE,
                f"OAR did not delete job {job_id} ({exc.message}); nothing changed here: retry when OAR is back",
            ) from exc
        except OarError as exc:
            ended = self._oar(lambda: self.client.job(job_id))
            if ended is not None and ended.state in ACTIVE_STATES:
                raise GeniError(Reason.TESTBED, f"OAR would not delete job {job_id}: {exc.message}") from exc
            # It ended by itself (the slot is over) or is gone: nothing left to delete.
        self.jobs.set(lease.id, DELETED, job_id=job_id)
        self._forget_seen(job_id)

    def _finish_asked_deletion(
        self, lease: LeaseRecord, row: JobRecord, report: ReconcileReport, settled_before: float
    ) -> None:
        """A Delete OAR did not confirm in time (DELETE_ASKED): once OAR has ended the job, the lease is cancelled
        as that Delete asked (listed in ``deleted`` and ``cancelled``). A job still alive once the row is older than
        two time-outs (``settled_before``) never got that Delete (a connect time-out): OAR is asked again, as the
        row's owner; the lease is cancelled once OAR lists the job ended (this round, or a later one). OAR failing
        to answer (or to confirm that deletion again) lists the lease in ``deletes_unconfirmed``: the next round asks
        again."""
        job_id = row.job_id
        if job_id is None:  # (never so: _delete_asked)
            return
        try:
            job = self.client.job(job_id)
        except OarError as exc:
            report.deletes_unconfirmed[lease.id] = f"OAR could not say whether job {job_id} is gone: {exc.message}"
            return
        try:
            if job is not None and job.state in ACTIVE_STATES:
                # (A Delete still on its way, or asked again by its user, is left to that call.)
                if row.updated_s >= settled_before or self.jobs.get(lease.id) != row:
                    return
                # The user's Delete is recorded: asked again, so that the lease is not kept booked until its end.
                self.client.delete_job(job_id, user=row.owner or self.client.admin_user)
                job = self.client.job(job_id)
        except OarError as exc:
            report.deletes_unconfirmed[lease.id] = (
                f"OAR did not confirm the deletion of job {job_id} again: {exc.message}"
            )
            return
        if job is not None and job.state in ACTIVE_STATES:
            return  # OAR ends a deleted job within seconds: the next round cancels the lease
        if self.jobs.get(lease.id) != row:
            return  # a call (a Delete asked again) wrote the row since the round read it: its doing
        try:
            # The calendar first: a row marked deleted for a lease still provisioned would be reserved again.
            self.bookings.cancel(lease.id)
        except GeniError as exc:
            report.failed[lease.id] = f"its Delete could not be finished in the calendar: {exc.message}"
            return
        self.jobs.set_if_unchanged(row, DELETED, job_id=job_id)
        self._forget_seen(job_id)
        report.deleted.append(lease.id)
        report.cancelled.append(lease.id)

    def health(self, sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth:
        if sliver.operational_state == Operational.NOTREADY:  # the experimenter stopped it
            return SliverHealth(Operational.NOTREADY)
        row = self.jobs.get(lease.id)
        if row is None:
            return SliverHealth(
                Operational.FAILED, "no OAR reservation is recorded for this lease; the reconciler submits it again"
            )
        if row.state == FAILED:
            return SliverHealth(Operational.FAILED, row.message)
        if row.job_id is None:
            return SliverHealth(Operational.CONFIGURING, "waiting for OAR to confirm the reservation")
        try:
            job = self._seen_job(row.job_id)
        except OarError as exc:
            calendar_view = Operational.READY if lease.start <= now < lease.end else Operational.NOTREADY
            return SliverHealth(calendar_view, f"OAR did not answer ({exc.message}); state from the calendar")
        if _delete_asked(row):
            # The user's own Delete, unconfirmed: the job's end is its doing, not the lease's failure.
            if job is None or job.state not in ACTIVE_STATES:
                return SliverHealth(
                    Operational.NOTREADY,
                    f"the Delete asked for this lease has ended OAR job {row.job_id} (OAR did not confirm it in "
                    f"time): call Delete again to finish it, or the reconciler cancels the lease within about "
                    f"{self.settle_s} s",
                )
            # (Asked again once the row is settled, then cancelled once OAR lists the job ended: a round more.)
            return SliverHealth(
                OAR_OPERATIONAL_STATES.get(job.state, Operational.NOTREADY),
                f"a Delete was asked for this lease but OAR did not confirm it in time, and OAR job {job.id} is still "
                f"{job.state}: call Delete again to finish it, or the reconciler asks OAR again to delete it and "
                f"cancels the lease within about {self.settle_s + self.reconcile_s} s",
            )
        if job is None:
            return SliverHealth(Operational.FAILED, f"OAR no longer knows job {row.job_id}; the reconciler resubmits")
        state = OAR_OPERATIONAL_STATES.get(job.state, Operational.NOTREADY)
        if job.state == "Terminated" and now < lease.end:  # its command exited: the job holds the nodes no more
            return SliverHealth(state, self._ended_early(job, lease), ended=True)
        return SliverHealth(state, f"OAR job {job.id}: {job.message}" if state == Operational.FAILED else "")

    def _ended_early(self, job: OarJob, lease: LeaseRecord) -> str:
        """How a job that terminated before its lease's end ended (its command's exit status, as OAR says) and where
        its command's stderr is."""
        if job.exit_code is None:
            how = job.message or "no exit status"
        elif job.exit_code & 0x7F:
            how = f"its command was killed by signal {job.exit_code & 0x7F}"
        else:
            how = f"its command exited with status {job.exit_code >> 8}"
        said = f"OAR job {job.id} terminated before the lease's end ({how})"
        if not job.stderr_file:
            return said
        where = self._command_host(self._addresses(lease))
        path = posixpath.join(job.launching_directory or "~" + job.owner, job.stderr_file)
        return f"{said}; its stderr is {path} on {where}"

    def update_users(self, lease: LeaseRecord, accounts: Sequence[LocalAccount]) -> None:
        """OAR runs jobs as the owner's Unix account; the accounts' keys are kept by the aggregate (create_accounts)."""

    def background_tasks(self) -> Sequence[BackgroundTask]:
        return (
            BackgroundTask("mirror OAR's own reservations", self.cache_s, self.refresh_external),
            BackgroundTask("reconcile the calendar with OAR", self.reconcile_s, self.reconcile, repairs=True),
        )

    # -- OAR's own reservations -----------------------------------------------------------------------------------
    def refresh_external(self) -> SyncReport:
        """Mirror the reservations made directly in OAR (within the advertised horizon) into the calendar: every job
        but those that are this calendar's leases' own reservations (a job's name alone proves nothing: anybody, or
        another sfa-omf on the same OAR, may name a job ``sfa-omf_<id>``)."""
        now = self.clock()
        jobs = self.client.reservations(now, now + self.horizon)
        address_of = self._address_book()
        component_of = {address: component for component, address in address_of.items()}
        ours = self._reservations_of_leases(jobs, now, address_of)
        holds = [
            ExternalHold(
                key=f"oar:{job.id}",
                nodes=tuple(component_of[address] for address in job.nodes if address in component_of),
                start=job.start_time,
                # OAR holds the closed interval: the node is free one second after start + walltime.
                end=job.start_time + timedelta(seconds=job.walltime_s + 1),
                label=f"OAR job {job.id} of {job.owner}",
            )
            for job in jobs
            # (A waiting one being deleted is gone within seconds: no hold, which would refuse Allocates until the next
            # mirror; a running one may hold its nodes for minutes more.)
            if job.id not in ours and job.start_time is not None and not (job.deleting and job.state in WAITING_STATES)
        ]
        report = self.external.sync(EXTERNAL_SOURCE, holds)
        if report.added or report.removed or report.clashing:
            log.info(
                "OAR's own reservations: %d new, %d gone, %d kept, clashing with our bookings: %s",
                len(report.added),
                len(report.removed),
                report.kept,
                ", ".join(report.clashing) or "none",
            )
        return report

    # -- reconciliation -------------------------------------------------------------------------------------------
    def reconcile(self) -> ReconcileReport:
        """Make OAR and the calendar agree (see the module docstring). Safe to run at any time, repeatedly.

        A job counts as a lease's only if it is the reservation this aggregate made for it: its name, the owner
        recorded for the lease and exactly its nodes (a job anybody names ``sfa-omf_<id>`` is left alone). One of
        those for another window than the calendar's (a renewal OAR did not follow, a lost answer) is replaced by
        one for the calendar's window before the lease begins (``_job_matches``: what OAR does to a begun lease's
        job). One lease's trouble is listed in ``failed`` and does not end the round for the others."""
        report = ReconcileReport()
        now = self.clock()
        round_started_s = utcnow().timestamp()  # (the rows' own clock: a row written later is a call's, meanwhile)
        named: dict[str, list[OarJob]] = defaultdict(list)  # lease id -> the jobs named after it (anyone's)
        # (Jobs OAR is still making included: a row whose job is being made is not forgotten, nor reserved twice.)
        for job in self.client.reservations(now, now + RECONCILE_AHEAD, unplaced=True):
            lease_id = lease_of(job.name)
            if lease_id is not None:
                named[lease_id].append(job)
        leases = {lease.id: lease for lease in self.bookings.leases(start=now)}
        rows = {row.lease_id: row for row in self.jobs.in_states(SUBMITTING, SUBMITTED, DELETING)}
        held: set[str] = set()  # leases whose job this round took over
        written: dict[str, JobRecord | None] = {}  # lease id -> its row as this round wrote it (not a call's write)
        # A row written within the last two time-outs may be a Provision still on its way (OAR may still be working
        # on it, and the call may yet fail): left to that call until then.
        settled_before = now.timestamp() - 2 * self.client.timeout_s

        def end_testbed_hold(lease_id: str) -> None:
            # Only a hold left before this round's read (``now``): one a newer Provision left meanwhile is the next
            # round's. A failure (DBERROR) is the lease's alone: listed, the round goes on (the hold lapses).
            try:
                self.bookings.end_testbed_hold(lease_id, now)
            except GeniError as exc:
                report.failed[lease_id] = f"the Provision hold left for its job could not be ended: {exc.message}"

        # Interrupted provisions (a crash or time-out between asking OAR and recording its answer): finish them.
        for lease_id, row in sorted(rows.items()):
            lease = leases.get(lease_id)
            if row.state != SUBMITTING or not row.owner or lease is None or lease.state != "allocated":
                continue
            if row.updated_s >= settled_before:
                continue
            if not named.get(lease_id):
                continue
            try:
                job_id = self._take_over(lease, row.owner, named[lease_id], row.job_id)
                if job_id is None:
                    continue
                # The experimenter asked for Provision in time; OAR answered late: the allocation's expiry (which may
                # have passed meanwhile) does not undo it. The calendar first: a row marked for a lease that could
                # not be provisioned would never be adopted again, and its job would be orphaned.
                leases[lease_id] = self.bookings.mark_provisioned(lease_id, check_expiry=False)
            except (OarError, ValueError, GeniError) as exc:
                report.failed[lease_id] = _words(exc)
                continue
            held.add(lease_id)  # (either way: this round's reading of the lease is done with)
            if not self.jobs.set_if_unchanged(row, SUBMITTED, job_id=job_id):
                continue  # a call wrote the row since the round read it (a newer Provision): its row, and hold, stand
            report.adopted.append(lease_id)
            # The hold a failed Provision left for this job (the sweep kept off the lease) has done its work.
            end_testbed_hold(lease_id)
        for lease_id, row in rows.items():
            lease = leases.get(lease_id)
            if lease_id in held:
                continue
            if (
                row.state == SUBMITTING
                and row.updated_s < settled_before
                and (lease is None or lease.state == "allocated")
                and not any(job.owner == row.owner for job in named.get(lease_id, ()))
            ):
                # OAR never got it, or has not listed it yet (it lists a reservation only once scheduled, seconds
                # later on a loaded server): the booking waits for Provision as before, and the row keeps the owner
                # (DELETED), so that such a job, listed later, is taken over by that Provision or deleted as an orphan.
                # Only the row the round read: one a newer Provision wrote since names its job, which OAR had not
                # listed when the round asked it, and that Provision's hold is kept for it.
                if self.jobs.set_if_unchanged(row, DELETED):
                    # Nothing to adopt: the hold a failed Provision left for the job ends, the sweep takes the
                    # allocation at its own expiry (a Provision at work on it keeps its own hold).
                    end_testbed_hold(lease_id)
            elif _delete_asked(row) and lease is not None and lease.state == "provisioned":
                held.add(lease_id)  # (the user asked to delete it: never reserved again by this round)
                self._finish_asked_deletion(lease, row, report, settled_before)
            elif row.state == DELETING and lease is not None and lease.state == "provisioned":
                # The Delete that failed changed nothing here, but OAR may have deleted the job all the same (a
                # time-out, a proxy's 502 after forwarding it): marked as a job the aggregate deleted itself, so that
                # a job gone is reserved again without its users being told it was lost; one alive clears the mark.
                if _replacement_mark(row.message) or row.job_id is None:
                    kept = row.message
                else:
                    kept = f"{NOT_REPLACED} {row.job_id}"
                if self.jobs.set_if_unchanged(row, SUBMITTED, message=kept):  # (a call's row since: left to it)
                    written[lease_id] = self.jobs.get(lease_id)
            elif row.state == DELETING:
                # Its job, if OAR still has it, is an orphan: deleted below. (A call's row since: left to it.)
                ended_in_oar = self._ended_in_oar(row, named.get(lease_id, ()))
                if not self.jobs.set_if_unchanged(row, DELETED):
                    continue
                if not ended_in_oar:  # (a job OAR had ended already, with its slot: released, nothing repaired)
                    report.deleted.append(lease_id)
                if lease is not None and lease.state == "allocated":
                    # A failed Provision whose release failed left its hold for this: the release is done, the sweep
                    # takes the allocation at its own expiry (and its job, if any, is then an orphan, deleted).
                    end_testbed_hold(lease_id)
        self._delete_orphans(named, leases, now, report)
        # Provisioned leases whose slot is not over: OAR must hold exactly their window.
        for lease in leases.values():
            if lease.state != "provisioned" or lease.end <= now or lease.id in held:
                continue
            self._keep_held(lease, named.get(lease.id, []), report, round_started_s, written.get(lease.id))
        if report.changed:
            report.leases = lease_details(self.bookings.database, self.jobs, report.lists())
            log.info("reconciled with OAR: %s", one_line(report.lists(), report.leases))
        if report.failed:
            log.warning("OAR would not reserve these leases again: %s", report.failed)
        if report.deletes_unconfirmed:
            log.warning(
                "OAR did not confirm these leases' Delete again (asked again next round): %s",
                report.deletes_unconfirmed,
            )
        return report

    def _delete_orphans(
        self, named: dict[str, list[OarJob]], leases: dict[str, LeaseRecord], now: datetime, report: ReconcileReport
    ) -> None:
        """Delete our jobs whose lease this calendar cancelled, expired or ended. Only the jobs it made: the owner it
        recorded, and the job it recorded or exactly the lease's nodes. A lease id it never had is left alone:
        another sfa-omf may share this OAR."""
        states = self.bookings.lease_states(named)
        gone = sorted(
            lease_id
            for lease_id in named
            if lease_id not in leases and states.get(lease_id) in ("cancelled", "expired", "ended")
        )
        if not gone:
            return
        records = {lease.id: lease for lease in self.bookings.leases(start=now, active_only=False) if lease.id in gone}
        for lease_id in gone:
            row = self.jobs.get(lease_id)
            if row is None or not row.owner:
                continue  # no owner recorded: nothing proves the job is ours
            for job in named[lease_id]:
                if not self._is_our_orphan(job, row, records.get(lease_id)):
                    continue  # somebody else's job, named after the lease
                try:
                    self.client.delete_job(job.id, user=row.owner)
                except OarError as exc:
                    report.failed[lease_id] = f"its orphan OAR job {job.id} could not be deleted: {exc.message}"
                    continue
                report.orphans_deleted.append(job.id)

    def _ended_in_oar(self, row: JobRecord, named: Sequence[OarJob]) -> bool:
        """Whether the job a failed release left to the reconciler (``row``, DELETING) had ended in OAR already
        (Terminated or Error: e.g. a lease whose slot ended while OAR did not answer): finishing its release is then
        no repair. False when OAR holds a job of the row's owner named after the lease, or cannot tell."""
        if row.job_id is None or any(job.owner == row.owner for job in named):
            return False
        try:
            job = self.client.job(row.job_id)
        except OarError as exc:
            log.warning("lease %s: its OAR job %d could not be read (%s)", row.lease_id, row.job_id, exc.message)
            return False
        return job is not None and job.state in FINAL_STATES

    def _keep_held(
        self,
        lease: LeaseRecord,
        named: Sequence[OarJob],
        report: ReconcileReport,
        round_started_s: float,
        written_by_round: JobRecord | None = None,
    ) -> None:
        """Make OAR hold exactly the provisioned ``lease``'s window: its job as it is, a job of ours for another
        window replaced, or a job that vanished reserved again. ``lease`` and ``named`` were read at the round's
        start (``round_started_s``): a lease a call changed since (a Delete, a Renew) is left to the next round;
        ``written_by_round``: the row as this round itself wrote it, if it did (not a call's write)."""
        recorded = self.jobs.get(lease.id)
        if (
            recorded is not None
            # (Whole seconds: a call's write in the round's first second is not seen here; the lease's state,
            # read again below, still catches a Delete, and the next round sees the rest.)
            and recorded.updated_s > round_started_s
            and recorded != written_by_round
        ):
            return  # written by a call during this round: the round's reading of OAR and the calendar is older
        if self.bookings.lease_states([lease.id]).get(lease.id) != "provisioned":
            return  # deleted (or ended) during this round
        # How long a call's replacement of a job may take (_replace): the old job's deletion and the wait for it, the
        # new job's submission and the wait for OAR to make it, putting the old one back.
        replacing_s = 30 + 3 * self.client.timeout_s + self.placing_wait_s
        if (
            recorded is not None
            and recorded.message == f"{REPLACING} {recorded.job_id}"
            and recorded.updated_s > round_started_s - replacing_s
        ):
            return  # a call (a Renew) may be replacing the job now: its new job may not be listed yet
        if recorded is not None and renewal_of(recorded.message)[0] is not None:
            recorded = self._renewal_over(lease, recorded, round_started_s, replacing_s)
            if recorded is None:
                return  # a Renew may be at work: the window may yet be put back (the next round looks again)
        owner = recorded.owner if recorded is not None and recorded.owner else ""
        if not owner:
            report.failed[lease.id] = "no owner recorded for its OAR job"
            return
        recorded_id = recorded.job_id if recorded is not None else None
        matching, stale = self._ours(lease, owner, named, recorded_id)
        if matching is not None:
            # (A REPLACING mark on a job alive and matching: a replacement whose delete never happened. Cleared, or
            # the job's real loss later would be reserved again without the users ever being told.)
            if (
                recorded is None
                or recorded.state != SUBMITTED
                or recorded.job_id != matching.id
                or _deleted_by_us(recorded)
            ):
                self.jobs.set(lease.id, SUBMITTED, owner=owner, job_id=matching.id)
                report.adopted.append(lease.id)
            return
        if stale is not None:
            if stale.id in self._kept_in_other_window:
                return  # said once: a job OAR keeps in another window would be replaced by another such, every round
            if recorded is None or not self._still_as_read(lease, recorded):
                return  # a call changed the lease or its row since the round read them (a Renew): the next round's
            try:
                job_id = self._replace(stale, lease, owner)
            except (OarError, ValueError, GeniError) as exc:
                report.failed[lease.id] = f"OAR job {stale.id} holds another window than the calendar's: {_words(exc)}"
                return
            # (_replace recorded the job it replaced in the row: not a call's change.)
            marked = replace(recorded, job_id=stale.id) if recorded is not None else None
            if self._changed_meanwhile(lease, marked, job_id, owner, report):
                return
            self.jobs.set(lease.id, SUBMITTED, owner=owner, job_id=job_id)
            self._check_replacement(lease, owner, job_id, report)
            return
        if _being_made(named, lease, owner) is not None:
            return  # OAR is still making a job of ours for it (a Provision's, a replacement): the next round sees it
        if any(job.owner == owner and job.deleting for job in named):
            return  # OAR is still deleting a job of ours for it, and refuses its window until that is gone
        if (
            recorded is not None
            and recorded.state == FAILED
            and recorded.message.startswith((PLAN_REFUSED, COMMAND_ENDED))
        ):
            return  # said once; reserving it again would be refused (or end) the same way
        deleted_by_us = _deleted_by_us(recorded)
        try:  # one lease's OAR trouble (a time-out) does not end the round for the others
            # (A job we deleted to replace it, the replacement cut short: reserved again, not lost.)
            lost, exit_status = ("", None) if deleted_by_us else self._job_lost(recorded)
        except OarError as exc:
            log.warning("lease %s: its OAR job could not be read (%s); tried again next round", lease.id, exc.message)
            return
        if (
            not lost
            and not deleted_by_us
            and recorded is not None
            and recorded.job_id is not None
            and recorded.state == SUBMITTED
        ):
            # The recorded job lives but is not the lease's reservation (not listed, or on other nodes): a job
            # submitted beside it would be refused, and the lease marked failed though its reservation may run.
            report.failed[lease.id] = (
                f"its OAR job {recorded.job_id} is alive but does not hold the lease's nodes and window; it is not "
                "reserved again while that job lives"
            )
            return
        if exit_status == EXIT_PLAN_REFUSED:
            # The node command refused the lease's plan (an untrusted plans directory, a node clock far off):
            # a job reserved again would be refused the same way, every round, with a notice each time.
            refused = (
                f"{PLAN_REFUSED} ({lost}): the job's stderr on the node says why; an operator must fix the node, "
                "then the experimenter can Delete and allocate again"
            )
            self.jobs.set(lease.id, FAILED, owner=owner, message=refused, news=_failed(lease.id, recorded, refused))
            report.failed[lease.id] = refused
            return
        if exit_status is not None:
            # The job's command exited by itself (e.g. sudo refusing it): not lost, ended. Said once; a job reserved
            # again would run the same command and end the same way.
            where = self._command_host(())
            ended = (
                f"{COMMAND_ENDED} ({lost}, its command exited with status {exit_status}): the job's stderr file on "
                f"{where} says why; it is not reserved again: Delete the lease and allocate again"
            )
            self.jobs.set(lease.id, FAILED, owner=owner, message=ended, news=_failed(lease.id, recorded, ended))
            report.failed[lease.id] = ended
            return
        if recorded is None or not self._still_as_read(lease, recorded):
            return  # a call changed the lease or its row since the round read them (a Renew): the next round's
        try:
            job_id = self._submit(lease, owner)
        except OarTimeout as exc:  # OAR may have made it: the next round adopts it, or reserves it again
            report.failed[lease.id] = _words(exc)
            if lost and recorded is not None:  # the loss is told now (once: the news is keyed by the lost job)
                told = f"{lost}; its slot is being reserved again (OAR was slow to confirm)"
                self.jobs.set(
                    lease.id,
                    recorded.state,
                    owner=owner,
                    message=recorded.message,
                    news=_failed(lease.id, recorded, told),
                )
            return
        except OarUnavailable as exc:
            # Not reached (down, the connection broke off, or its breaker resting: not even asked): nothing was
            # refused, so nothing is marked failed and no one is told; the next round looks again (and adopts a job
            # OAR made before the connection broke).
            report.failed[lease.id] = _words(exc)
            return
        except (OarError, ValueError, GeniError) as exc:
            # (ValueError, GeniError: refused before OAR was asked, e.g. a start OAR cannot be told)
            said = "OAR refused to reserve it again" if isinstance(exc, OarError) else "it cannot be reserved again"
            refused = f"{said}: {_words(exc)}"
            news = _failed(lease.id, recorded, f"{lost}; {refused}" if lost else refused)
            self.jobs.set(lease.id, FAILED, owner=owner, message=refused, news=news)
            report.failed[lease.id] = _words(exc)
            return
        if self._changed_meanwhile(lease, recorded, job_id, owner, report):
            return
        again = _failed(lease.id, recorded, f"{lost}; its slot is reserved again as OAR job {job_id}") if lost else None
        self.jobs.set(lease.id, SUBMITTED, owner=owner, job_id=job_id, news=again)
        report.resubmitted.append(lease.id)

    def _renewal_over(
        self, lease: LeaseRecord, recorded: JobRecord, round_started_s: float, replacing_s: float
    ) -> JobRecord | None:
        """The lease's row ``recorded``, which a Renew marked (``RENEWING``), with the mark ended once that Renew is
        over: the calendar no longer holds the end it renewed to (it failed, and the old end is back), or the mark is
        older than any Renew's work on OAR (its process died). None while the Renew may be at work, or when the
        lease or its row changed since the round read them: the next round looks again."""
        renewed_to, _ = renewal_of(recorded.message)
        window = self.bookings.windows_of([lease.id]).get(lease.id)
        if window is None or (window[1], window[2]) != (lease.start, lease.end):
            return None  # the calendar changed since the round read it (a Renew's new end, or its old one put back)
        # A Renew's work on OAR: listing the lease's jobs, waiting for one OAR is making, then replacing it.
        renewing_s = replacing_s + 2 * self.client.timeout_s + self.placing_wait_s
        if lease.end == renewed_to and recorded.updated_s > round_started_s - renewing_s:
            return None  # the calendar holds the Renew's end: the Renew may still fail and put the old one back
        return self.jobs.end_renewal_mark(recorded)

    def _still_as_read(self, lease: LeaseRecord, recorded: JobRecord) -> bool:
        """Right before the round deletes or submits a job for ``lease``: whether the calendar still holds it
        provisioned in the window the round read, and its job row is still ``recorded``. A Renew changes the first
        (its new end, or its old one put back) and marks the second before asking OAR anything: acting on the
        round's older reading would reserve a window that Renew may still put back."""
        if self.jobs.get(lease.id) != recorded:
            return False
        window = self.bookings.windows_of([lease.id]).get(lease.id)
        return (
            window is not None
            and (window[1], window[2]) == (lease.start, lease.end)
            and self.bookings.lease_states([lease.id]).get(lease.id) == "provisioned"
        )

    def _command_host(self, nodes: Sequence[str]) -> str:
        """Where the job's command runs, so its stderr file is: a deploy job's on the OAR frontend, an ordinary
        job's on its first node (named when ``nodes`` is one node)."""
        if self.job_type == "deploy":
            return "the OAR frontend"
        return f"node {nodes[0]}" if len(nodes) == 1 else "the job's first node"

    def _changed_meanwhile(
        self, lease: LeaseRecord, recorded: JobRecord | None, job_id: int, owner: str, report: ReconcileReport
    ) -> bool:
        """After the round made job ``job_id`` for the lease: whether a call changed the lease or its row while OAR
        was asked (a Delete cancelling it, a Renew). If so the new job is deleted and nothing written: the round
        would otherwise record a job for a cancelled lease, or undo the call's row."""
        now_row = self.jobs.get(lease.id)
        before = (recorded.state, recorded.job_id, recorded.owner) if recorded is not None else None
        unchanged = now_row is not None and (now_row.state, now_row.job_id, now_row.owner) == before
        if unchanged and self.bookings.lease_states([lease.id]).get(lease.id) == "provisioned":
            return False
        try:
            self.client.delete_job(job_id, user=owner)
        except OarError as exc:  # (the orphan sweep deletes it: its name and owner are the lease's)
            report.failed[lease.id] = f"its OAR job {job_id}, made as the lease changed, was not deleted: {exc.message}"
            return True
        report.orphans_deleted.append(job_id)
        return True

    def _check_replacement(self, lease: LeaseRecord, owner: str, job_id: int, report: ReconcileReport) -> None:
        """After the reconciler replaced a lease's job: whether OAR holds the calendar's window now. If it does not
        (OAR reads times in another zone than [sfa_oar] timezone says, say), replacing it again would not help:
        the row and the round say so (``OTHER_WINDOW``), and the next rounds keep the job (until a restart)."""
        try:
            job = self._oar(lambda: self.client.job(job_id, with_nodes=True))
        except GeniError as exc:  # read again next round, as any job of ours
            log.warning("lease %s: its new OAR job %d could not be read (%s)", lease.id, job_id, exc.message)
            report.resubmitted.append(lease.id)
            return
        if job is None or job.start_time is None or self._job_matches(job, lease, owner):
            report.resubmitted.append(lease.id)  # (a job OAR lost at once is reserved again next round)
            return
        said = (
            f"{OTHER_WINDOW}: its new OAR job {job_id} holds {format_time(job.start_time)} to "
            f"{format_time(job.start_time + timedelta(seconds=job.walltime_s + 1))}, not {format_time(lease.start)} to "
            f"{format_time(lease.end)}; check that [sfa_oar] timezone is the OAR server's. The job is kept, not "
            "replaced again"
        )
        self.jobs.set(lease.id, SUBMITTED, owner=owner, job_id=job_id, message=said)
        self._kept_in_other_window.add(job_id)
        report.failed[lease.id] = said

    # -- helpers --------------------------------------------------------------------------------------------------
    def _job_lost(self, recorded: JobRecord | None) -> tuple[str, int | None]:
        """OAR's words on a submitted job of ours that is gone or ended (killed, deleted in OAR, ended in Error, its
        command exited) before the lease's end; "" when no job was submitted or OAR still has it in a state that is
        not final (the users are told only of a job that really ended). One call to OAR, only for such leases. With
        it: the exit status of the job's command when the job ended by that command's own exit (Terminated with a
        wait status and no signal: EXIT_PLAN_REFUSED is the node command refusing the lease's plan), None when the
        job vanished or was killed (OAR records no exit status for a job it killed)."""
        if recorded is None or recorded.job_id is None or recorded.state != SUBMITTED:
            return "", None
        job = self.client.job(recorded.job_id)
        if job is None:
            return f"OAR no longer knows its job {recorded.job_id}", None
        if job.state not in FINAL_STATES:  # (the lease has not ended: the caller looks only at those)
            return "", None
        said = f": {job.message}" if job.message else ""
        lost = f"OAR job {job.id} ended in state {job.state} before the lease's end{said}"
        if job.state == "Terminated" and job.exit_code is not None and not job.exit_code & 0x7F:
            return lost, job.exit_code >> 8  # a wait status: the exit status times 256, no signal
        return lost, None

    def _reservation(self, lease: LeaseRecord) -> tuple[datetime, int, str, str]:
        """What the lease's job asks OAR for: its start, walltime, type and command. ValueError for a slot that is
        over, GeniError for a job this testbed cannot run (both before OAR is asked)."""
        now = self.clock()
        # A slot that has begun starts now (OAR launches a past start at once, but the walltime must end in time).
        start = lease.start if lease.start >= now else now.replace(microsecond=0) + timedelta(seconds=1)
        walltime_s = math.floor((lease.end - start).total_seconds()) - 1
        if walltime_s <= 0:
            raise ValueError(f"the slot ended at {format_time(lease.end)}")
        job_type, command = self._job_of(lease)
        return start, walltime_s, job_type, command

    def _submit(self, lease: LeaseRecord, owner: str) -> int:
        start, walltime_s, job_type, command = self._reservation(lease)
        return self.client.submit_reservation(
            user=owner,
            nodes=self._addresses(lease),
            start=start,
            walltime_s=walltime_s,
            job_type=job_type,
            name=job_name(lease.id),
            command=command,
        )

    def _job_of(self, lease: LeaseRecord) -> tuple[str, str]:
        """The job's type and command: for a lease with containers (its plan written), an ordinary job (no type)
        whose command makes them on its node as root through the node's sudo rule and ends them with the job
        (docs/images-and-instances.md); otherwise the configured type, with the deploy command for deploy jobs."""
        plan = self.container_plans.plan_path(lease.id) if self.container_plans is not None else None
        if plan is not None and plan.exists():
            if self.job_type == "deploy":
                raise GeniError(
                    Reason.UNSUPPORTED,
                    f"lease {lease.id}: containers and deploy jobs do not mix on this testbed (the job runs one "
                    "command); ask for raw-pc slivers with a disk image, or for containers",
                )
            return "", f"sudo -n {self.container_command} run {plan}"
        return self.job_type, self._deploy_command(lease)

    def _deploy_command(self, lease: LeaseRecord) -> str:
        """For deploy jobs: ``COMMAND IMAGE NODE,...`` for the nodes the provisioning mode says to reprovision:
        perjob, all of them; ondemand, those that will not run the lease's disk image at its start, that is whose
        previous lease on the calendar left another one, or one not known (``_image_left``). "" when no node is to be
        reprovisioned or no image is asked for (the reservation then just holds the nodes)."""
        if self.job_type != "deploy":
            return ""
        images = {sliver.disk_image for sliver in lease.slivers}
        if len(images) != 1:
            raise GeniError(
                Reason.BAD_ARGS,
                f"one disk image per lease with OAR deploy jobs; lease {lease.id} asks for {sorted(images)}",
            )
        (image,) = images
        if not image:
            return ""
        plan = plan_lease(self.provisioning_mode, lease, lambda node: self._image_before(node, lease))
        stale = [step.node for step in plan if step.reprovision]
        if not stale:
            return ""
        addresses = {node.component_id: _address(node) for node in self.inventory.list_nodes(component_ids=set(stale))}
        return f"{self.deploy_command} {image} {','.join(sorted(addresses.values()))}"

    def _image_before(self, node: str, lease: LeaseRecord) -> str:
        """The disk image the node's previous lease that left one there (``_image_left``) left: what it runs when
        ``lease`` starts ("" unknown). A lease booked later into the gap before ``lease`` does not re-plan it
        (documented)."""
        return image_left_by_previous_lease(
            lambda name: self.bookings.leases(node=name, end=lease.start, active_only=False),
            node,
            lease,
            self._image_left,
        )

    def _image_left(self, lease: LeaseRecord, node: str) -> str | None:
        """What ``lease`` leaves on ``node`` (``image_left``: provisioned or ended, its image; mirrored, or cancelled
        after it was provisioned, unknown), and on OAR's side: a lease of the same Provision call counts once its job
        is submitted (the calendar records the whole call at its end); one cancelled or expired without having been
        provisioned in the calendar for which OAR had a job (a Provision that failed after OAR made it) left an
        unknown image: the job may have run its deploy command."""
        left = image_left(lease, node)
        if left is not None or lease.state not in ("allocated", "cancelled", "expired"):
            return left
        row = self.jobs.get(lease.id)
        if row is None:
            return None
        if lease.state == "allocated":
            if row.state != SUBMITTED:
                return None
            return next((sliver.disk_image for sliver in lease.slivers if sliver.node == node), "")
        return "" if row.job_id is not None else None

    def _addresses(self, lease: LeaseRecord) -> list[str]:
        """The OAR network addresses of the lease's nodes (``network_address`` property, else the node's name)."""
        return sorted(_address(node) for node in self.inventory.list_nodes(component_ids=set(lease.nodes)))

    def _address_book(self) -> dict[str, str]:
        """Every node's OAR network address, by component id."""
        return {node.component_id: _address(node) for node in self.inventory.list_nodes()}

    def _jobs_named(self, lease: LeaseRecord) -> list[OarJob]:
        """The jobs OAR holds (not ended) named after the lease within its window, whoever made them."""
        window_start = min(lease.start, self.clock())
        window_end = max(lease.end, window_start + timedelta(seconds=1))
        jobs = self.client.reservations(window_start, window_end, unplaced=True)
        return [job for job in jobs if job.name == job_name(lease.id)]

    def _made_for(
        self,
        job: OarJob,
        lease: LeaseRecord,
        owner: str,
        addresses: Sequence[str] | None = None,
        recorded_id: int | None = None,
    ) -> bool:
        """Whether this aggregate made ``job`` for ``lease``, for whatever window: named after it, owned by
        ``owner`` (the login recorded for the lease) and holding exactly its nodes (``addresses``, else read). The
        job the lease's row records (``recorded_id``) may hold some of them only: OAR launches a reservation
        without the nodes that did not come back in time (SCHEDULER_REDUCE_NB_RESSOURCES_FOR_ADVANCE_RESERVATION)."""
        if not owner or job.name != job_name(lease.id) or job.owner != owner or job.deleting:
            return False  # (a job OAR is deleting is nobody's reservation: taken over, it would be lost in seconds)
        wanted = tuple(sorted(addresses if addresses is not None else self._addresses(lease)))
        if job.nodes == wanted:
            return True
        return job.id == recorded_id and bool(job.nodes) and set(job.nodes) <= set(wanted)

    def _job_matches(
        self,
        job: OarJob,
        lease: LeaseRecord,
        owner: str,
        addresses: Sequence[str] | None = None,
        recorded_id: int | None = None,
    ) -> bool:
        """Whether ``job`` is the lease's reservation as the calendar has it: made for it (``_made_for``) and
        holding its window, [start, end - 1 s]. Once the lease has begun, OAR alone moves its reservation: while
        a node is missing at the start, each scheduling pass moves the start to "now + 1 s" and keeps the walltime
        (cut only at launch, for up to RESERVATION_WAITING_RESOURCES_TIMEOUT), and a job submitted late starts a
        second after it was asked. So a begun lease's job is the one its row records (``recorded_id``), whatever
        its window, or one of ours that starts from the lease's start on (no later than shortly after now)."""
        if job.start_time is None or not self._made_for(job, lease, owner, addresses, recorded_id):
            return False
        now = self.clock()
        if lease.start <= now:
            return job.id == recorded_id or lease.start <= job.start_time <= now + LATE_START
        if job.start_time != lease.start:
            return False
        return math.floor(job.start_time.timestamp()) + job.walltime_s + 1 == math.floor(lease.end.timestamp())

    def _ours(
        self, lease: LeaseRecord, owner: str, named: Sequence[OarJob], recorded_id: int | None = None
    ) -> tuple[OarJob | None, OarJob | None]:
        """Among the jobs ``named`` after the lease: its reservation as the calendar has it (``_job_matches``) and,
        when there is none, one this aggregate made for it for another window (a Provision or Renew whose answer
        was lost, a renewal OAR did not follow). ``recorded_id``: the job the lease's row records."""
        addresses = self._addresses(lease)
        mine = [job for job in named if self._made_for(job, lease, owner, addresses, recorded_id)]
        matching = next((job for job in mine if self._job_matches(job, lease, owner, addresses, recorded_id)), None)
        return matching, (mine[0] if mine and matching is None else None)

    def _take_over(
        self, lease: LeaseRecord, owner: str, named: Sequence[OarJob] | None = None, recorded_id: int | None = None
    ) -> int | None:
        """The id of the job that holds the lease's window for ``owner``: its reservation as it is, or one of ours
        for another window replaced by one for the calendar's; None when OAR holds neither. ``named``: the jobs
        named after the lease, when the caller listed them already. Raises as ``_replace``."""
        if named is None:
            named = self._oar(lambda: self._jobs_named(lease))
        # (Not forgotten, not submitted again while OAR is still making it: OAR would refuse a second one, and the
        # job would be nobody's.)
        matching, stale, named = self._ours_once_placed(
            lease, owner, named, recorded_id, "call Provision again in a moment; it is then taken over, not doubled"
        )
        if matching is not None:
            return matching.id
        if stale is not None:
            return self._replace(stale, lease, owner)
        dying = next((job for job in named if job.owner == owner and job.deleting), None)
        if dying is not None:  # OAR refuses the lease's window until it is gone (a few seconds)
            raise GeniError(
                Reason.BUSY,
                f"OAR is still deleting OAR job {dying.id}, an earlier reservation of this lease, which holds "
                "its nodes until it is gone: call Provision again in a few seconds",
            )
        return None

    def _ours_once_placed(
        self, lease: LeaseRecord, owner: str, named: Sequence[OarJob], recorded_id: int | None, then: str
    ) -> tuple[OarJob | None, OarJob | None, Sequence[OarJob]]:
        """``_ours`` among ``named`` (the jobs named after the lease), once OAR has placed a job of ours it is still
        making for the lease (``_being_made``: listed with no nodes, about 0.3 s), read again until then for up to
        placing_wait_s; with the jobs named after the lease as last read. BUSY if OAR is still making it after that,
        saying ``then``: what the caller can do."""
        deadline = time.monotonic() + self.placing_wait_s
        while True:
            matching, stale = self._ours(lease, owner, named, recorded_id)
            being_made = _being_made(named, lease, owner) if matching is None and stale is None else None
            if being_made is None:
                return matching, stale, named
            if time.monotonic() >= deadline:
                raise GeniError(
                    Reason.BUSY,
                    f"OAR is still making OAR job {being_made.id}, the reservation an earlier call asked for this "
                    f"lease (it is {being_made.state} after {self.placing_wait_s:g} s): {then}",
                )
            time.sleep(0.5)
            named = self._oar(lambda: self._jobs_named(lease))

    def _replace(self, job: OarJob, lease: LeaseRecord, owner: str) -> int:
        """Replace ``job``, ours for another window, by a reservation for the lease's window; the new job's id.

        OAR cannot move a reservation, and refuses one that overlaps another on the same nodes, its owner's own
        too: the old job is deleted first, then the new one submitted; if that fails, the old window is put back
        (the row records it) and the failure raised as OarError (OarRefused: with OAR's hint) or ValueError.
        GeniError when the lease has begun (its job may be one OAR is waiting to launch, and OAR cannot be asked
        for the start it had), the job has started (OAR cannot change it), or the new window cannot be asked for at
        all (checked before anything is deleted): nothing changed; and when deleting the job failed or it was not
        seen gone: the old window is put back then too (OAR refuses it while the old job holds it). While it is
        deleted, the row's message (REPLACING) says the job is gone because of us: never told as lost."""
        if lease.start <= self.clock():
            raise GeniError(
                Reason.POLICY,
                f"OAR job {job.id} holds {', '.join(job.nodes)} for another window than the lease's "
                f"({format_time(lease.start)} to {format_time(lease.end)}), which has begun: it is kept, since OAR "
                "cannot be asked for a reservation that starts in the past",
            )
        if job.state != "Waiting":
            raise GeniError(
                Reason.POLICY,
                f"OAR job {job.id} holds {', '.join(job.nodes)} for another window than the lease's "
                f"({format_time(lease.start)} to {format_time(lease.end)}) and is {job.state}: OAR cannot change a "
                "reservation that has started",
            )
        try:  # what can be refused without OAR is refused before anything in it changes
            start, _, _, _ = self._reservation(lease)
            to_server_time(start, self.client.zone)  # ValueError: a wall-clock time that occurs twice in OAR's zone
        except (OarError, ValueError) as exc:
            raise GeniError(Reason.TESTBED, f"OAR cannot be asked for the lease's window: {_words(exc)}") from exc
        row = self.jobs.get(lease.id)
        if row is not None:  # from here on, the job may be gone because of us: never a "lost" notice for it
            # (The row records the job the mark names, which may not be the one it recorded, e.g. a job found by its
            # name: the mark is read only of the row's job, by the reconciler too, after a crash.)
            self.jobs.set(lease.id, row.state, job_id=job.id, message=f"{REPLACING} {job.id}")
        try:
            self._oar(lambda: self.client.delete_job(job.id, user=owner))
            self._wait_until_gone(job.id)
        except GeniError:
            # The delete may have gone through all the same (OAR deletes asynchronously): reserve the old window
            # again, which OAR refuses while the old job still holds it.
            self._forget_seen(job.id)
            self._put_back(job, lease, owner)
            raise
        self._forget_seen(job.id)
        try:
            return self._submit(lease, owner)
        except (OarError, ValueError):
            self._put_back(job, lease, owner)
            raise

    def _put_back(self, job: OarJob, lease: LeaseRecord, owner: str) -> None:
        """Reserve again the window of ``job`` (ours, deleted a moment ago) and record it in the lease's row; when that
        fails, the row's mark says the replacement is over (NOT_REPLACED)."""
        if job.start_time is None:
            self._not_replaced(lease, job)
            return
        old = replace(lease, start=job.start_time, end=job.start_time + timedelta(seconds=job.walltime_s + 1))
        try:
            restored = self._submit(old, owner)
        except (OarError, ValueError) as lost:  # taken meanwhile, or OAR went away: the reconciler sees to it
            # (OAR refuses it while the old job still holds the window: a delete that never happened)
            log.warning(
                "lease %s: the window of OAR job %d could not be reserved again (%s); the job may still hold it, "
                "else the reconciler reserves it again",
                lease.id,
                job.id,
                _words(lost),
            )
            self._not_replaced(lease, job)
            return
        row = self.jobs.get(lease.id)
        if row is not None:
            message = "" if _replacement_mark(row.message) else row.message
            self.jobs.set(lease.id, row.state, job_id=restored, message=message)

    def _not_replaced(self, lease: LeaseRecord, job: OarJob) -> None:
        """The lease's row says its replacement of ``job`` is over with no job: the reconciler reserves it again."""
        row = self.jobs.get(lease.id)
        if row is not None and row.message == f"{REPLACING} {job.id}":
            self.jobs.set(lease.id, row.state, message=f"{NOT_REPLACED} {job.id}")

    def _reservations_of_leases(self, jobs: Sequence[OarJob], now: datetime, address_of: dict[str, str]) -> set[int]:
        """The ids of the jobs among ``jobs`` that are this calendar's active leases' reservations."""
        named = [(lease_id, job) for job in jobs if (lease_id := lease_of(job.name)) is not None]
        if not named:
            return set()
        leases = {lease.id: lease for lease in self.bookings.leases(start=now, end=now + self.horizon)}
        rows = {row.lease_id: row for row in self.jobs.in_states(SUBMITTING, SUBMITTED, DELETING, FAILED)}
        ours = set()
        for lease_id, job in named:
            lease = leases.get(lease_id)
            row = rows.get(lease_id)
            if lease is None or row is None or not row.owner:
                continue
            addresses = [address_of.get(node, "") for node in lease.nodes]
            if self._job_matches(job, lease, row.owner, addresses, row.job_id):
                ours.add(job.id)
        return ours

    def _provisioning(self, lease: LeaseRecord, call: Callable[[], T]) -> T:
        """``call``'s answer; OAR's failures as the GeniError Provision answers."""
        try:
            return call()
        except (OarError, ValueError) as exc:
            raise self._provision_error(lease, exc) from exc

    def _refusal_of(self, lease: LeaseRecord, refused: OarRefused) -> GeniError:
        """What Provision answers when OAR refused the lease's reservation: BUSY when the job in the way is our own
        earlier reservation of a lease since deleted (an orphan, say of a Provision cut short whose allocation was
        deleted and booked again), which this call deletes as the reconciler would; else the refusal (7, OAR's
        hint)."""
        found = self._our_old_job_in_the_way(lease)
        if found is None:
            return self._provision_error(lease, refused)
        job, old_lease_id, owner = found
        held = (
            f"OAR refuses the reservation of {', '.join(self._addresses(lease))} from {format_time(lease.start)} to "
            f"{format_time(lease.end)} because our own earlier reservation, OAR job {job.id} of lease {old_lease_id} "
            "(deleted), still holds them"
        )
        try:
            self.client.delete_job(job.id, user=owner)
        except OarError as exc:
            log.warning("lease %s: orphan OAR job %d in its way not deleted (%s)", lease.id, job.id, exc.message)
            return GeniError(
                Reason.BUSY,
                f"{held}; deleting it failed ({exc.message}), the reconciler deletes it within about "
                f"{self.settle_s} s: the booking stays allocated, retry Provision then",
            )
        log.info("lease %s: orphan OAR job %d of lease %s in its way deleted", lease.id, job.id, old_lease_id)
        return GeniError(
            Reason.BUSY,
            f"{held}; it has been deleted now and OAR frees the nodes within seconds: the booking stays allocated, "
            "retry Provision in a few seconds",
        )

    def _our_old_job_in_the_way(self, lease: LeaseRecord) -> tuple[OarJob, str, str] | None:
        """A job holding some of the lease's nodes in its window that the reconciler would delete as an orphan
        (``_is_our_orphan``): ours, for a lease of this calendar that is no longer active (cancelled, expired,
        ended). With that lease's id and the login the job was made as; None when there is none (or OAR cannot
        say: the refusal is then answered as it is)."""
        try:
            jobs = self.client.reservations(lease.start, lease.end)
        except (OarError, ValueError):
            return None
        addresses = set(self._addresses(lease))
        in_the_way = [
            (job, other)
            for job in jobs
            if (other := lease_of(job.name)) is not None and other != lease.id and addresses & set(job.nodes)
        ]
        if not in_the_way:
            return None
        states = self.bookings.lease_states(other for _, other in in_the_way)
        gone = {other for _, other in in_the_way if states.get(other) in ("cancelled", "expired", "ended")}
        records = {
            record.id: record
            for record in self.bookings.leases(start=lease.start, end=lease.end, active_only=False)
            if record.id in gone
        }
        for job, other in in_the_way:
            row = self.jobs.get(other) if other in gone else None
            if row is not None and self._is_our_orphan(job, row, records.get(other)):
                return job, other, row.owner
        return None

    def _is_our_orphan(self, job: OarJob, row: JobRecord, record: LeaseRecord | None) -> bool:
        """Whether ``job``, named after a lease no longer active here, is the reservation this aggregate made for it
        (``row``: the lease's job row; ``record``: the lease, None when not read): made as the login recorded for it
        (a job anybody names after the lease is not proof), and the job recorded or exactly the lease's nodes."""
        if not row.owner or job.owner != row.owner:
            return False
        if job.id == row.job_id:
            return True
        # (The nodes' addresses, an inventory read, only for a job other than the one recorded.)
        return record is not None and job.nodes == tuple(self._addresses(record))

    def _provision_error(self, lease: LeaseRecord, exc: Exception) -> GeniError:
        """What Provision answers when asking OAR failed with ``exc``."""
        if isinstance(exc, GeniError):  # refused before OAR was asked (e.g. two disk images in one deploy lease)
            return exc
        if isinstance(exc, OarTimeout):
            return GeniError(
                Reason.TIMEDOUT,
                f"OAR did not answer within {self.client.timeout_s:g} s ({exc.message}); the booking stays allocated: "
                "call Provision again (a reservation OAR made meanwhile is found, not doubled)",
            )
        if isinstance(exc, OarUnavailable):
            return GeniError(
                Reason.UNAVAILABLE,
                f"the OAR server does not answer ({exc.message}); the booking stays allocated: retry Provision later",
            )
        if isinstance(exc, OarRefused):
            when = f"; OAR says it could run at {format_time(exc.could_run_at)}" if exc.could_run_at else ""
            return GeniError(
                Reason.BOOKING_CONFLICT,
                f"OAR refuses the reservation of {', '.join(self._addresses(lease))} from {format_time(lease.start)} "
                f"to {format_time(lease.end)}: the nodes are reserved directly in OAR{when}. Delete this booking and "
                "allocate another slot",
            )
        if isinstance(exc, OarError) and not _nothing_made(exc):  # e.g. OAR's answer gave no job id
            return GeniError(
                Reason.TESTBED,
                f"OAR's answer to the reservation could not be read ({exc.message}); the booking stays allocated: "
                "call Provision again (a reservation OAR made meanwhile is found, not doubled)",
            )
        return GeniError(Reason.TESTBED, f"OAR refused the reservation: {exc}")

    def _wait_until_gone(self, job_id: int, within_s: float = 30) -> None:
        """OAR deletes asynchronously (within ~2 s): wait until the job holds its nodes no more."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            job = self._oar(lambda: self.client.job(job_id))
            if job is None or job.state not in ACTIVE_STATES:
                return
            time.sleep(0.5)
        raise GeniError(Reason.TIMEDOUT, f"OAR did not delete job {job_id} within {within_s:g} s")

    def _check_account(self, login: str) -> None:
        try:
            pwd.getpwnam(login)
        except KeyError:
            raise GeniError(
                Reason.TESTBED,
                f"the local account {login!r} does not exist, and OAR runs jobs only for real accounts: set "
                "[sfa_omf] create_accounts = yes, or create it",
            ) from None

    def _oar(self, call: Callable[[], T]) -> T:
        """``call``'s answer; OAR's failures as GeniError (time-out, unavailable, or OAR's refusal with its words)."""
        try:
            return call()
        except OarTimeout as exc:
            raise GeniError(Reason.TIMEDOUT, f"OAR did not answer in time: {exc.message}") from exc
        except OarUnavailable as exc:
            raise GeniError(Reason.UNAVAILABLE, f"the OAR server does not answer: {exc.message}") from exc
        except OarError as exc:  # OAR's own refusal (a 4xx): its words, not an internal error
            raise GeniError(Reason.TESTBED, f"OAR refused the request: {exc.message}") from exc

    def _seen_job(self, job_id: int) -> OarJob | None:
        """The job as OAR reported it at most cache_s ago (Status asks per sliver; OAR takes ~0.35 s per call)."""
        with self._lock:
            seen = self._jobs_seen.get(job_id)
        if seen is not None and time.monotonic() - seen[0] < self.cache_s:
            return seen[1]
        job = self.client.job(job_id)
        with self._lock:
            self._jobs_seen[job_id] = (time.monotonic(), job)
        return job

    def _forget_seen(self, job_id: int) -> None:
        with self._lock:
            self._jobs_seen.pop(job_id, None)


def _failed(lease_id: str, recorded: JobRecord | None, reason: str) -> LeaseNews:
    """The lease's users are told it failed on the testbed: once per job of ours that OAR lost."""
    job = recorded.job_id if recorded is not None and recorded.job_id is not None else "none"
    return LeaseNews("failed", f"{lease_id}:failed:oar:{job}", reason)


def _being_made(named: Sequence[OarJob], lease: LeaseRecord, owner: str) -> OarJob | None:
    """A job among ``named`` that OAR is still making for ``lease`` as ``owner``: named after it, owned by ``owner``
    and listed with no nodes yet, waiting for its oarsub's acknowledgement (``OarClient.reservations(unplaced=True)``;
    a held reservation has no nodes either, and holds none); None when there is none."""
    name = job_name(lease.id)
    return next(
        (
            job
            for job in named
            if job.name == name
            and job.owner == owner
            and owner
            and not job.nodes
            and job.state == "toAckReservation"
            and not job.deleting
        ),
        None,
    )


def _deleted_by_us(recorded: JobRecord | None) -> bool:
    """Whether the job the row records is one the aggregate deleted itself to replace it (``_replace``)."""
    return (
        recorded is not None
        and recorded.job_id is not None
        and recorded.message in (f"{REPLACING} {recorded.job_id}", f"{NOT_REPLACED} {recorded.job_id}")
    )


def _delete_asked(row: JobRecord) -> bool:
    """Whether the row is a Delete OAR did not confirm in time (the job may be deleted): see DELETE_ASKED."""
    return row.state == DELETING and row.job_id is not None and row.message == f"{DELETE_ASKED} {row.job_id}"


def _replacement_mark(message: str) -> bool:
    """Whether a job row's message says the aggregate deleted the lease's job itself, to replace it."""
    return message.startswith((REPLACING, NOT_REPLACED))


def _nothing_made(exc: Exception) -> bool:
    """Whether a reservation that failed with ``exc`` certainly made no job in OAR: refused before OAR was asked
    (ValueError, GeniError), never sent to OAR (no connection), or refused by OAR itself (its JSON answer with a 4xx
    status). Anything else (no answer in time, a connection broken off, a 5xx, an answer that is not OAR's or has no
    job id) may come after OAR booked it."""
    if isinstance(exc, ValueError | GeniError):
        return True
    if isinstance(exc, OarUnavailable) and exc.not_sent:
        return True  # no connection made, or the request not sent whole: OAR never had it
    return isinstance(exc, OarError) and not isinstance(exc, OarUnavailable | OarTimeout) and 400 <= exc.status < 500


def _end_of(job: OarJob) -> datetime | None:
    """When ``job`` frees its nodes: OAR holds [start, start + walltime], so one second after."""
    return job.start_time + timedelta(seconds=job.walltime_s + 1) if job.start_time is not None else None


def _words(exc: BaseException) -> str:
    """The words of a failure, for a report or a row's message."""
    if isinstance(exc, OarError | GeniError):
        return exc.message
    return str(exc)


def _address(node: NodeRecord) -> str:
    return network_address(node.component_name, node.properties)


def _plans(settings: Any) -> LeasePlans | None:
    """The lease container plans, where the aggregate writes them (sfa_omf/images/instances.py instances_of)."""
    return lease_plans(settings, store_directory(settings.data_dir)) if settings.instance_bridge else None


def make_oar_backend(settings: Any, database: Database) -> OarTestbed:
    """The OAR backend from the configuration ([sfa_oar] settings)."""
    client = OarClient(
        settings.oar_api_url, timeout_s=settings.oar_timeout_s, server_timezone=settings.oar_timezone or None
    )
    # One breaker for the aggregate's client: its calls, the mirror and the reconciler all stop asking a hung OAR.
    client.breaker = CircuitBreaker(
        f"OAR at {client.shown_url}", cooldown_s=getattr(settings, "backend_cooldown_s", COOLDOWN_S)
    )
    return OarTestbed(
        client,
        database,
        settings.interface_hrn,
        job_type=settings.oar_job_type,
        deploy_command=settings.oar_deploy_command,
        cache_s=settings.oar_cache_s,
        reconcile_s=settings.oar_reconcile_s,
        horizon=timedelta(days=settings.horizon_days),
        provisioning_mode=settings.provisioning_mode,
        container_plans=_plans(settings),
        container_command=settings.oar_container_command,
    )
