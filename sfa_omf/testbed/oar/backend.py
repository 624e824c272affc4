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
"""

from __future__ import annotations

import logging
import math
import posixpath
import pwd
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
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
from sfa_omf.images.provisioning import ONDEMAND, plan_lease
from sfa_omf.images.store import store_directory
from sfa_omf.testbed.base import BackgroundTask, SliverHealth
from sfa_omf.testbed.oar.client import (
    ACTIVE_STATES,
    OarClient,
    OarError,
    OarJob,
    OarRefused,
    OarTimeout,
    OarUnavailable,
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
)
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
FINAL_STATES = ("Error", "Terminated")  # an OAR job in these holds its nodes no more, for good
RECONCILE_AHEAD = timedelta(days=366)  # how far ahead the reconciler looks for our jobs in OAR


@dataclass
class ReconcileReport:
    orphans_deleted: list[int] = field(default_factory=list)
    resubmitted: list[str] = field(default_factory=list)  # lease ids
    adopted: list[str] = field(default_factory=list)  # interrupted provisions finished (lease ids)
    deleted: list[str] = field(default_factory=list)  # interrupted deletions finished (lease ids)
    failed: dict[str, str] = field(default_factory=dict)  # lease id -> OAR's words

    @property
    def changed(self) -> bool:
        """Whether the round repaired anything (the operators' alert): a lease OAR keeps refusing is no repair, and
        would otherwise raise the alert every round."""
        return bool(self.orphans_deleted or self.resubmitted or self.adopted or self.deleted)


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
        self.external = ExternalHolds(database, authority_hrn)
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
        self._jobs_seen: dict[int, tuple[float, OarJob | None]] = {}  # job id -> (when read, job): Status cache
        self._lock = threading.Lock()

    # -- the backend interface ------------------------------------------------------------------------------------
    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        row = self.jobs.get(lease.id)
        if row is not None and row.state == SUBMITTED and row.job_id is not None:
            job = self._oar(lambda: self.client.job(row.job_id or 0))
            if job is not None and job.state in ACTIVE_STATES:
                return  # provisioned already (a retry after an answer that got lost)
        if row is not None and row.state == SUBMITTING:
            # An earlier call may have reached OAR without recording the answer: adopt that job, never double it.
            found = self._our_job(lease)
            if found is not None:
                self.jobs.set(lease.id, SUBMITTED, owner=row.owner, job_id=found.id)
                return
        self._check_account(owner)
        self.jobs.set(lease.id, SUBMITTING, owner=owner)
        try:
            job_id = self._submit(lease, owner)
        except OarTimeout as exc:
            # OAR may have booked it: keep the row; the next Provision or the reconciler finds the job by its name.
            raise GeniError(
                Reason.TIMEDOUT,
                f"OAR did not answer within {self.client.timeout_s:g} s ({exc.message}); the booking stays allocated: "
                "call Provision again (a reservation OAR made meanwhile is found, not doubled)",
            ) from exc
        except OarUnavailable as exc:
            self.jobs.forget(lease.id)
            raise GeniError(
                Reason.UNAVAILABLE,
                f"the OAR server does not answer ({exc.message}); the booking stays allocated: retry Provision later",
            ) from exc
        except OarRefused as exc:
            # The slot may be held by our own job: an earlier Provision whose answer was lost (a crash, a time-out).
            ours = self._our_job(lease)
            if ours is not None:
                self.jobs.set(lease.id, SUBMITTED, owner=ours.owner, job_id=ours.id)
                return
            self.jobs.forget(lease.id)
            when = f"; OAR says it could run at {format_time(exc.could_run_at)}" if exc.could_run_at else ""
            raise GeniError(
                Reason.BOOKING_CONFLICT,
                f"OAR refuses the reservation of {', '.join(self._addresses(lease))} from {format_time(lease.start)} "
                f"to {format_time(lease.end)}: the nodes are reserved directly in OAR{when}. Delete this booking and "
                "allocate another slot",
            ) from exc
        except (OarError, ValueError) as exc:
            self.jobs.forget(lease.id)
            raise GeniError(Reason.TESTBED, f"OAR refused the reservation: {exc}") from exc
        except GeniError:  # refused before OAR was asked (e.g. two disk images in one deploy lease)
            self.jobs.forget(lease.id)
            raise
        self.jobs.set(lease.id, SUBMITTED, owner=owner, job_id=job_id)
        log.info("lease %s is OAR job %d (owner %s)", lease.id, job_id, owner)

    def renew(self, lease: LeaseRecord, new_end: datetime) -> None:
        """OAR 2.5.9 cannot move a reservation's end: a reservation that has not started is replaced by one for the
        new window (if OAR refuses it, the old one is put back and the renewal refused with OAR's hint); one that
        has started cannot change, and the renewal is refused saying so."""
        row = self.jobs.get(lease.id)
        if row is None or row.state != SUBMITTED or row.job_id is None:
            return  # nothing in OAR for it now; the reconciler submits the calendar's window
        job = self._oar(lambda: self.client.job(row.job_id or 0))
        if job is None or job.state not in ACTIVE_STATES:
            return
        if job.state != "Waiting":
            raise GeniError(
                Reason.POLICY,
                f"OAR cannot change a reservation that has started (job {job.id} is {job.state}); the lease still ends "
                f"at {format_time(lease.end)}: allocate a further slot from then",
            )
        self._oar(lambda: self.client.delete_job(job.id, user=row.owner or self.client.admin_user))
        self._wait_until_gone(job.id)
        renewed = replace(lease, end=new_end)
        try:
            new_id = self._submit(renewed, row.owner)
        except OarRefused as exc:
            try:
                restored = self._submit(lease, row.owner)  # the old window was ours a moment ago
                self.jobs.set(lease.id, SUBMITTED, job_id=restored)
            except OarError as lost:  # taken meanwhile, or OAR went away: the reconciler resubmits or says it failed
                log.warning("lease %s: OAR job %d could not be put back: %s", lease.id, job.id, lost.message)
            when = f"; OAR says it could run at {format_time(exc.could_run_at)}" if exc.could_run_at else ""
            raise GeniError(
                Reason.BOOKING_CONFLICT,
                f"OAR refuses to extend the reservation to {format_time(new_end)}: the nodes are reserved directly "
                f"in OAR{when}. The lease keeps its end {format_time(lease.end)}",
            ) from exc
        except OarError as exc:
            # The old job is gone and the new one not made: the reconciler puts the old window back.
            raise GeniError(
                Reason.UNAVAILABLE,
                f"OAR failed while renewing ({exc.message}); the lease keeps its end {format_time(lease.end)} and its "
                "reservation is restored by the reconciler: try again later",
            ) from exc
        self.jobs.set(lease.id, SUBMITTED, job_id=new_id)
        self._forget_seen(job.id)

    def release(self, lease: LeaseRecord) -> None:
        row = self.jobs.get(lease.id)
        if row is None or row.state in (DELETED, FAILED):
            return
        job_id = row.job_id
        if job_id is None:  # an interrupted submission: is there a job after all?
            found = self._our_job(lease)
            if found is None:
                self.jobs.forget(lease.id)
                return
            job_id = found.id
        try:
            self.client.delete_job(job_id, user=row.owner or self.client.admin_user)
        except (OarUnavailable, OarTimeout) as exc:
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
        nodes = self._addresses(lease)
        where = f"node {nodes[0]}" if len(nodes) == 1 else "the job's first node"
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
        """Mirror the reservations made directly in OAR (within the advertised horizon) into the calendar."""
        now = self.clock()
        jobs = self.client.reservations(now, now + self.horizon)
        component_of = self._components_by_address()
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
            if lease_of(job.name) is None and job.start_time is not None
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
        """Make OAR and the calendar agree (see the module docstring). Safe to run at any time, repeatedly."""
        report = ReconcileReport()
        now = self.clock()
        ours: dict[str, OarJob] = {}
        for job in self.client.reservations(now, now + RECONCILE_AHEAD):
            lease_id = lease_of(job.name)
            if lease_id is not None:
                ours[lease_id] = job
        leases = {lease.id: lease for lease in self.bookings.leases(start=now)}
        # Interrupted provisions (a crash between asking OAR and recording its answer) and deletions.
        rows = {row.lease_id: row for row in self.jobs.in_states(SUBMITTING, SUBMITTED, DELETING)}
        for lease_id, found in ours.items():
            row = rows.get(lease_id)
            lease = leases.get(lease_id)
            if lease is not None and lease.state == "allocated" and (row is None or row.state == SUBMITTING):
                # OAR made the reservation the Provision asked for, but the answer was never recorded: finish it.
                self.jobs.set(lease_id, SUBMITTED, owner=found.owner, job_id=found.id)
                leases[lease_id] = self.bookings.mark_provisioned(lease_id)
                rows.pop(lease_id, None)
                report.adopted.append(lease_id)
        settled_before = now.timestamp() - 2 * self.client.timeout_s  # OAR may still be working on a newer one
        for row in rows.values():
            lease = leases.get(row.lease_id)
            their_job = ours.get(row.lease_id)
            if row.state == SUBMITTING and lease is not None and their_job is not None:
                self.jobs.set(lease.id, SUBMITTED, job_id=their_job.id)
                report.adopted.append(lease.id)
            elif (
                row.state == SUBMITTING
                and row.updated_s < settled_before
                and (lease is None or lease.state == "allocated")
            ):
                self.jobs.forget(row.lease_id)  # OAR never got it; the booking waits for Provision as before
            elif row.state == DELETING and lease is not None and lease.state == "provisioned":
                self.jobs.set(row.lease_id, SUBMITTED)  # the Delete that failed changed nothing: the lease holds
            elif row.state == DELETING:
                self.jobs.set(row.lease_id, DELETED)  # its job, if OAR still has it, is an orphan: deleted below
                report.deleted.append(row.lease_id)
        # Orphans: our jobs whose lease this calendar cancelled, expired or ended. A lease id it never had is left
        # alone: another sfa-omf may share this OAR.
        states = self.bookings.lease_states(ours)
        for lease_id, job in sorted(ours.items()):
            if lease_id not in leases and states.get(lease_id) in ("cancelled", "expired", "ended"):
                self.client.delete_job(job.id, user=job.owner or self.client.admin_user)
                report.orphans_deleted.append(job.id)
        # Missing: provisioned leases whose slot is not over and that have no live job in OAR.
        for lease in leases.values():
            if lease.state != "provisioned" or lease.end <= now or lease.id in ours:
                continue
            recorded = self.jobs.get(lease.id)
            owner = recorded.owner if recorded is not None and recorded.owner else ""
            if not owner:
                report.failed[lease.id] = "no owner recorded for its OAR job"
                continue
            if recorded is not None and recorded.state == FAILED and recorded.message.startswith(PLAN_REFUSED):
                continue  # said once; reserving it again would be refused the same way
            try:  # one lease's OAR trouble (a time-out) does not end the round for the others
                lost, refused_plan = self._job_lost(recorded)
            except OarError as exc:
                log.warning(
                    "lease %s: its OAR job could not be read (%s); tried again next round", lease.id, exc.message
                )
                continue
            if refused_plan:
                # The node command refused the lease's plan (an untrusted plans directory, a node clock far off):
                # a job reserved again would be refused the same way, every round, with a notice each time.
                refused = (
                    f"{PLAN_REFUSED} ({lost}): the job's stderr on the node says why; an operator must fix the node, "
                    "then the experimenter can Delete and allocate again"
                )
                self.jobs.set(lease.id, FAILED, owner=owner, message=refused, news=_failed(lease.id, recorded, refused))
                report.failed[lease.id] = refused
                continue
            try:
                job_id = self._submit(lease, owner)
            except OarError as exc:
                refused = f"OAR refused to reserve it again: {exc.message}"
                news = _failed(lease.id, recorded, f"{lost}; {refused}" if lost else refused)
                self.jobs.set(lease.id, FAILED, owner=owner, message=refused, news=news)
                report.failed[lease.id] = exc.message
                continue
            again = (
                _failed(lease.id, recorded, f"{lost}; its slot is reserved again as OAR job {job_id}") if lost else None
            )
            self.jobs.set(lease.id, SUBMITTED, owner=owner, job_id=job_id, news=again)
            report.resubmitted.append(lease.id)
        if report.changed:
            log.info("reconciled with OAR: %s", report)
        if report.failed:
            log.warning("OAR would not reserve these leases again: %s", report.failed)
        return report

    # -- helpers --------------------------------------------------------------------------------------------------
    def _job_lost(self, recorded: JobRecord | None) -> tuple[str, bool]:
        """OAR's words on a submitted job of ours that is gone or ended (killed, deleted in OAR, ended in Error)
        before the lease's end; "" when no job was submitted or OAR still has it in a state that is not final (the
        users are told only of a job that really ended). One call to OAR, only for such leases. With it: whether
        the job's command was the node command refusing the lease's plan (it exited with EXIT_PLAN_REFUSED)."""
        if recorded is None or recorded.job_id is None or recorded.state != SUBMITTED:
            return "", False
        job = self.client.job(recorded.job_id)
        if job is None:
            return f"OAR no longer knows its job {recorded.job_id}", False
        if job.state not in FINAL_STATES:  # (the lease has not ended: the caller looks only at those)
            return "", False
        said = f": {job.message}" if job.message else ""
        refused = job.exit_code == EXIT_PLAN_REFUSED << 8  # a wait status: the exit status times 256
        return f"OAR job {job.id} ended in state {job.state} before the lease's end{said}", refused

    def _submit(self, lease: LeaseRecord, owner: str) -> int:
        now = self.clock()
        # A slot that has begun starts now (OAR launches a past start at once, but the walltime must end in time).
        start = lease.start if lease.start >= now else now.replace(microsecond=0) + timedelta(seconds=1)
        walltime_s = math.floor((lease.end - start).total_seconds()) - 1
        if walltime_s <= 0:
            raise OarError(f"the slot ended at {format_time(lease.end)}")
        job_type, command = self._job_of(lease)
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
        previous lease on the calendar ran another one. "" when no node is to be reprovisioned or no image is asked
        for (the reservation then just holds the nodes)."""
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
        """The disk image the node's previous provisioned (or ended) lease installed: what it runs when ``lease``
        starts. A lease of the same Provision call counts once its job is submitted (the calendar records the whole
        call at its end). A lease booked later into the gap before ``lease`` does not re-plan it (documented)."""
        earlier = [
            other
            for other in self.bookings.leases(node=node, end=lease.start, active_only=False)
            if other.id != lease.id and other.start < lease.start and self._holds_its_slot(other)
        ]
        if not earlier:
            return ""
        previous = max(earlier, key=lambda other: other.start)
        return next((sliver.disk_image for sliver in previous.slivers if sliver.node == node), "")

    def _holds_its_slot(self, lease: LeaseRecord) -> bool:
        """Provisioned or ended in the calendar, or allocated with its OAR job already submitted."""
        if lease.state in ("provisioned", "ended"):
            return True
        row = self.jobs.get(lease.id) if lease.state == "allocated" else None
        return row is not None and row.state == SUBMITTED

    def _addresses(self, lease: LeaseRecord) -> list[str]:
        """The OAR network addresses of the lease's nodes (``network_address`` property, else the node's name)."""
        return sorted(_address(node) for node in self.inventory.list_nodes(component_ids=set(lease.nodes)))

    def _components_by_address(self) -> dict[str, str]:
        return {_address(node): node.component_id for node in self.inventory.list_nodes()}

    def _our_job(self, lease: LeaseRecord) -> OarJob | None:
        now = self.clock()
        window_start = min(lease.start, now)
        for job in self.client.reservations(window_start, max(lease.end, window_start + timedelta(seconds=1))):
            if job.name == job_name(lease.id):
                return job
        return None

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
        try:
            return call()
        except OarTimeout as exc:
            raise GeniError(Reason.TIMEDOUT, f"OAR did not answer in time: {exc.message}") from exc
        except OarUnavailable as exc:
            raise GeniError(Reason.UNAVAILABLE, f"the OAR server does not answer: {exc.message}") from exc

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
