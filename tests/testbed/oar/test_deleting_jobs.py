"""A job somebody asked OAR to delete: OAR deletes asynchronously, and lists such a job as it was (Waiting, its nodes)
for up to a few seconds more (measured on scripts/oar.sh's OAR: 0.3-3.9 s after the request), refusing other
reservations of its nodes meanwhile. The request is in its events (FRAG_JOB_REQUEST): the mirror holds nothing for
it, and a Provision never takes it over as the lease's reservation (it would be lost within seconds)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.testbed.oar.backend import EXTERNAL_SOURCE, NOT_REPLACED
from sfa_omf.testbed.oar.client import OarClient, OarJob
from sfa_omf.testbed.oar.jobs import SUBMITTED
from tests.testbed.oar import test_backend
from tests.testbed.oar.conftest import OarJobs
from tests.testbed.oar.test_backend import Site, job_of
from tests.testbed.oar.test_faults import failed_notices

site = test_backend.site  # the fixture: an aggregate on the OAR backend, alice and bob mapped to their Unix users


class ListingDeletingStandIn(OarClient):
    """Stands in for OAR's listing in the seconds after a job's deletion was asked for (too short a moment to catch
    reliably on the real OAR): the job ``job_id``, really alive, is listed as OAR lists it then, with its deletion
    request. Everything else is the real OAR."""

    def __init__(self, url: str, job_id: int) -> None:
        super().__init__(url, timeout_s=60)
        self.job_id = job_id

    def reservations(self, start: datetime, end: datetime, *, unplaced: bool = False) -> list[OarJob]:
        jobs = super().reservations(start, end, unplaced=unplaced)
        return [replace(job, deleting=True) if job.id == self.job_id else job for job in jobs]


def test_a_deleted_job_says_so_at_once(oar_client: OarClient, oar_jobs: OarJobs, oar_start: datetime) -> None:
    """The real OAR: right after the DELETE, whatever state OAR has it in yet, the job carries the request."""
    job_id = oar_jobs.submit(user="bob", nodes=["node6"], start=oar_start, walltime_s=599)
    alive = oar_client.job(job_id)
    assert alive is not None and not alive.deleting
    oar_client.delete_job(job_id, user="bob")
    asked = oar_client.job(job_id)
    assert asked is not None and asked.deleting


def test_the_mirror_holds_nothing_for_a_job_being_deleted(site: Site, oar_url: str, oar_jobs: OarJobs) -> None:
    local = oar_jobs.submit(user="bob", nodes=["node7"], start=site.start, walltime_s=3599, name="bobs-own")
    site.backend.client = ListingDeletingStandIn(oar_url, local)
    site.backend.refresh_external()
    assert [hold.key for hold in site.backend.external.holds(EXTERNAL_SOURCE)] == []
    site.backend.client = OarClient(oar_url, timeout_s=60)  # the job lives on: mirrored
    site.backend.refresh_external()
    assert [hold.key for hold in site.backend.external.holds(EXTERNAL_SOURCE)] == [f"oar:{local}"]


def test_provision_never_takes_over_a_job_being_deleted(site: Site, oar_url: str, oar_client: OarClient) -> None:
    """The lease's job is being deleted (a call's rollback gave it back a moment ago): Provision answers BUSY, which
    names it, instead of taking it over; once OAR lists it alive (here: it is), it is taken over."""
    site.allocate(["node8"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    job_id = job_of(site, lease_id)
    (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
    site.backend.client = ListingDeletingStandIn(oar_url, job_id)
    with pytest.raises(GeniError) as busy:
        site.backend.provision(lease, "alice", [])
    assert busy.value.code == GeniCode.BUSY and f"still deleting OAR job {job_id}" in busy.value.message
    site.backend.client = oar_client
    site.backend.provision(lease, "alice", [])
    assert job_of(site, lease_id) == job_id


def test_a_running_job_being_deleted_is_still_mirrored(site: Site, oar_url: str, oar_jobs: OarJobs) -> None:
    """OAR ends a running job it was asked to delete only within minutes (JOBDEL_WALLTIME): it holds its nodes until
    then, and stays mirrored (as OAR lists it: running, with the request)."""
    local = oar_jobs.submit(user="bob", nodes=["node9"], start=site.start, walltime_s=3599, name="bobs-own")

    class RunningDeletingStandIn(ListingDeletingStandIn):
        """As ListingDeletingStandIn, the job listed as running (a slot in the future cannot run on the rig)."""

        def reservations(self, start: datetime, end: datetime, *, unplaced: bool = False) -> list[OarJob]:
            jobs = super().reservations(start, end, unplaced=unplaced)
            return [replace(job, state="Running") if job.id == self.job_id else job for job in jobs]

    site.backend.client = RunningDeletingStandIn(oar_url, local)
    site.backend.refresh_external()
    assert [hold.key for hold in site.backend.external.holds(EXTERNAL_SOURCE)] == [f"oar:{local}"]


def test_the_reconciler_leaves_a_lease_whose_job_oar_is_still_deleting(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    """The aggregate deleted the lease's job itself (a Delete whose answer was lost, a replacement cut short: the row
    says so) and OAR is still deleting it, refusing its window meanwhile: the round does not reserve it again (refused,
    the lease would be marked failed and its users told), and leaves it to the next round."""
    site.allocate(["node10"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    job_id = job_of(site, lease_id)
    site.backend.jobs.set(lease_id, SUBMITTED, job_id=job_id, message=f"{NOT_REPLACED} {job_id}")
    site.backend.client = ListingDeletingStandIn(oar_url, job_id)
    report = site.backend.reconcile()
    assert lease_id not in report.failed and lease_id not in report.resubmitted, report
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.state, row.job_id) == (SUBMITTED, job_id)
    assert failed_notices(site) == []
