"""Renewing or replacing the OAR job of a provisioned lease whose job is not the one its row records: a job OAR made
after the call that asked for it gave up (a reservation made again, a renewal's), found by its name.

- A Renew while OAR is still making that job (listed with no nodes) waits for it, as Provision does, then moves it;
  passed over, it would keep the old window while the calendar has the new end. Still being made: BUSY.
- The row's REPLACING mark names the job being replaced, and the row records that job: a process killed between
  deleting it and submitting the replacement leaves a row the reconciler reads as a job the aggregate deleted itself
  (reserved again, nobody told of a loss), not as the loss of the job the row recorded before.

The jobs are the real OAR's (scripts/oar.sh); only a moment is stood in for (ListingAckPendingStandIn, the
aggregate killed: DiesBeforeSubmittingStandIn)."""

from __future__ import annotations

from typing import Any

import pytest

from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.testbed.oar.backend import NOT_REPLACED
from sfa_omf.testbed.oar.client import OarClient, OarJob
from sfa_omf.testbed.oar.jobs import SUBMITTED, job_name
from tests.testbed.oar import test_backend
from tests.testbed.oar.conftest import OarJobs, wait_for_job
from tests.testbed.oar.test_backend import HOUR, Site, job_of, settle
from tests.testbed.oar.test_being_made import (
    ImpatientSubmissions,
    ListingAckPendingStandIn,
    made_in_oar,
    provisioned_job,
)
from tests.testbed.oar.test_faults import failed_notices
from tests.testbed.oar.test_job_matching import TWO_HOURS_WALLTIME, assert_second_hour_is_held, renew

site = test_backend.site  # the fixture: an aggregate on the OAR backend, alice and bob mapped to their Unix users


def made_again_too_late(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs, node: str
) -> tuple[str, OarJob]:
    """A provisioned lease of ``node`` whose job OAR lost, made again by a reconciler round that OAR answered too
    late: OAR holds the new job, the row still records the lost one. The lease and the new job (deleted at the end
    whatever becomes of it: the row does not record it)."""
    lease_id, lost = provisioned_job(site, node)
    oar_client.delete_job(lost, user="alice")
    wait_for_job(oar_client, lost, {"Error", "Terminated"})
    site.backend.client = ImpatientSubmissions(oar_url)
    assert "did not answer" in site.backend.reconcile().failed[lease_id]
    (made,) = made_in_oar(site, oar_client, lease_id)
    oar_jobs.track(made.id, "alice")
    site.backend.client = oar_client
    assert job_of(site, lease_id) == lost
    return lease_id, made


def test_renew_waits_for_the_job_oar_is_still_making_then_moves_it(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    lease_id, made = made_again_too_late(site, oar_url, oar_client, oar_jobs, "node10")
    listing = ListingAckPendingStandIn(oar_url, job_name(lease_id), pending=2)
    site.backend.client = listing
    site.backend.placing_wait_s = 30
    renew(site, 2)
    assert listing.listings_shown_pending == 2, "the renewal waited for OAR to finish the job"
    site.backend.client = oar_client
    job = oar_client.job(job_of(site, lease_id), with_nodes=True)
    assert job is not None and job.id != made.id
    assert (job.start_time, job.walltime_s, job.nodes) == (site.start, TWO_HOURS_WALLTIME, ("node10",))
    assert [other.id for other in made_in_oar(site, oar_client, lease_id)] == [job.id], "the 1-hour job is gone"
    assert_second_hour_is_held(site, "node10", oar_jobs)


def test_renew_while_oar_is_still_making_the_job_answers_busy_and_changes_nothing(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    lease_id, made = made_again_too_late(site, oar_url, oar_client, oar_jobs, "node9")
    site.backend.client = ListingAckPendingStandIn(oar_url, job_name(lease_id), pending=1000)
    site.backend.placing_wait_s = 1
    with pytest.raises(GeniError) as busy:
        renew(site, 2)
    assert busy.value.code == GeniCode.BUSY
    assert f"still making OAR job {made.id}" in busy.value.message and "Renew again" in busy.value.message
    (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
    assert lease.end == site.start + HOUR, "the lease keeps its end"
    site.backend.client = oar_client  # OAR has finished it
    assert made_in_oar(site, oar_client, lease_id) == [made], "left as it is"
    renew(site, 2)
    job = oar_client.job(job_of(site, lease_id))
    assert job is not None and (job.start_time, job.walltime_s) == (site.start, TWO_HOURS_WALLTIME)


class Killed(BaseException):
    """The aggregate's process killed: nothing of it runs after this (no handler catches it)."""


class DiesBeforeSubmittingStandIn(OarClient):
    """Stands in for the aggregate killed after deleting a job to replace it and before submitting the replacement:
    a moment too short to kill a real server in reliably (test_crash.py kills one during a Provision). The real client
    on the real OAR, whose submissions raise Killed: what was done until then (the row written, the job deleted in
    OAR) stays as a killed process leaves it."""

    def __init__(self, url: str) -> None:
        super().__init__(url, timeout_s=60)

    def submit_reservation(self, **arguments: Any) -> int:  # type: ignore[override]
        raise Killed


def renewal_left_in_oar(site: Site, oar_client: OarClient, oar_jobs: OarJobs, node: str) -> tuple[str, int]:
    """A provisioned lease of ``node`` after a renewal to two hours that OAR answered too late: OAR made the 2-hour
    job once the call had given up, so the 1-hour window could not be put back, and the calendar kept one hour. The
    row records the first job, deleted by the aggregate itself (its mark says so), and not the 2-hour one. The lease
    and the 2-hour job."""
    lease_id, first = provisioned_job(site, node)
    oar_client.delete_job(first, user="alice")
    wait_for_job(oar_client, first, {"Error", "Terminated"})
    site.backend.jobs.set(lease_id, SUBMITTED, job_id=first, message=f"{NOT_REPLACED} {first}")  # as _not_replaced
    renewed = oar_jobs.submit(
        user="alice", nodes=[node], start=site.start, walltime_s=TWO_HOURS_WALLTIME, name=job_name(lease_id)
    )
    return lease_id, renewed


def test_a_replacement_cut_short_by_a_crash_is_not_told_as_a_lost_job(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """The reconciler replaces the 2-hour job by one for the calendar's hour, and the aggregate is killed between the
    deletion and the submission. Restarted, the reconciler reserves the hour again and tells nobody of a lost job:
    the aggregate deleted both jobs itself."""
    lease_id, renewed = renewal_left_in_oar(site, oar_client, oar_jobs, "node8")
    site.backend.client = DiesBeforeSubmittingStandIn(oar_url)
    with pytest.raises(Killed):
        site.backend.reconcile()
    wait_for_job(oar_client, renewed, {"Error", "Terminated"})
    site.backend.client = oar_client  # restarted, long after (no call is replacing the job any more)
    settle(site, lease_id)
    report = site.backend.reconcile()
    assert report.resubmitted == [lease_id] and not report.failed, report
    assert failed_notices(site) == [], "a job the aggregate deleted itself is not told as lost"
    job = oar_client.job(job_of(site, lease_id), with_nodes=True)
    assert job is not None and (job.start_time, job.walltime_s, job.nodes) == (site.start, 3599, ("node8",))


def test_the_reconciler_replaces_a_job_of_ours_the_row_does_not_record(
    site: Site, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """The same, not killed: the 2-hour job is replaced by the calendar's hour, and the replacement kept (the row's
    change by the replacement itself is no call's)."""
    lease_id, renewed = renewal_left_in_oar(site, oar_client, oar_jobs, "node7")
    report = site.backend.reconcile()
    assert report.resubmitted == [lease_id] and not report.orphans_deleted and not report.failed, report
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.state == SUBMITTED and row.job_id not in (None, renewed) and not row.message
    job = oar_client.job(job_of(site, lease_id), with_nodes=True)
    assert job is not None and (job.state, job.start_time, job.walltime_s) == ("Waiting", site.start, 3599)
    assert failed_notices(site) == []
