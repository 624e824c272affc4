"""A lease whose slot ended while OAR did not answer, its job ended by OAR already, is released by the next reconcile
round: bookkeeping, not a repair (no ``deleted``, no reconciler_repaired alert). Against the real OAR, on both
databases; the retirement is the aggregate's own, its calendar's clock set after the lease's end."""

from __future__ import annotations

from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.testbed.oar.jobs import DELETED, DELETING
from tests.testbed.oar import test_reconcile_during_renew
from tests.testbed.oar.conftest import OarJobs, wait_for_job
from tests.testbed.oar.test_backend import HOUR, Site, job_of

site = test_reconcile_during_renew.site  # the fixture: an aggregate on the OAR backend, on either database

NOBODY_LISTENS = "http://127.0.0.1:9/oarapi"  # the discard port: the connection is refused, OAR "does not answer"


def test_a_lease_that_ended_while_oar_was_away_is_released_not_repaired(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """The round reported the release as a repair (``deleted=[lease]``, an alert) though OAR had ended the job."""
    site.allocate(["node9"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    job_id = job_of(site, lease_id)
    oar_jobs.track(job_id, "alice")
    # The job ends in OAR: a reservation deleted before its start ends in Error (its slot's real end, Terminated, is
    # days away; the round treats both final states alike).
    oar_client.delete_job(job_id, user="alice")
    assert wait_for_job(oar_client, job_id, {"Error", "Terminated"}).state in ("Error", "Terminated")
    # The slot ends in the calendar while OAR does not answer: the aggregate's retirement leaves the release to the
    # reconciler.
    site.backend.client = OarClient(NOBODY_LISTENS, timeout_s=5)
    site.aggregate.bookings.clock = lambda: site.start + 2 * HOUR
    assert site.aggregate.retire_ended() == 1
    left = site.backend.jobs.get(lease_id)
    assert left is not None and (left.state, left.job_id) == (DELETING, job_id), left
    # OAR is back: the next round finishes the release and repairs nothing.
    site.backend.client = OarClient(oar_url, timeout_s=60)
    report = site.backend.reconcile()
    assert report.deleted == [] and not report.changed, report
    released = site.backend.jobs.get(lease_id)
    assert released is not None and released.state == DELETED, released
