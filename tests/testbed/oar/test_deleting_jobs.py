"""A job somebody asked OAR to delete: OAR deletes asynchronously, and lists such a job as it was (Waiting, its nodes)
for up to a few seconds more (measured on scripts/oar.sh's OAR: 0.3-3.9 s after the request), refusing other
reservations of its nodes meanwhile. The request is in its events (FRAG_JOB_REQUEST): the mirror holds nothing for
it, and a Provision never takes it over as the lease's reservation (it would be lost within seconds)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.testbed.oar.backend import EXTERNAL_SOURCE
from sfa_omf.testbed.oar.client import OarClient, OarJob
from tests.testbed.oar import test_backend
from tests.testbed.oar.conftest import OarJobs
from tests.testbed.oar.test_backend import Site, job_of

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
