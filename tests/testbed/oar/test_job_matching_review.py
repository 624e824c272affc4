"""How the reconciler tells a lease's OAR reservation, against the real OAR 2.5.9 (scripts/oar.sh), in the ways OAR's
meta-scheduler moves a reservation by itself: a begun lease's job that OAR keeps waiting for a node (its start moved
to "now + 1 s" at each pass, its walltime unchanged) is kept, never deleted and resubmitted; a job OAR launched on
fewer nodes is the lease's; a replacement OAR still holds in another window (a wrong [sfa_oar] timezone) is not
replaced again every round; and a Provision that timed out against OAR is finished even after the allocation's time
to be provisioned has passed.

OAR's clock cannot be moved, and a reservation really kept waiting needs a node down at a start within minutes, on an
OAR the whole test suite shares: instead, the backend's clock is set five minutes into a far-future lease, and the job
OAR would then hold is submitted as it would look (a real job in the real OAR)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from sfa_omf.calendar.models import Sliver
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.testbed.oar.backend import OTHER_WINDOW
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.testbed.oar.jobs import FAILED, SUBMITTED, SUBMITTING, job_name
from tests.testbed.oar import test_backend
from tests.testbed.oar.conftest import OarJobs, wait_for_job
from tests.testbed.oar.test_backend import HOUR, Site, job_of, provision_timing_out, settle

site = test_backend.site  # the fixture: an aggregate on the OAR backend, alice and bob mapped to their Unix users

INTO_THE_LEASE = timedelta(minutes=5)


def as_oar_moved_it(site: Site, oar_client: OarClient, oar_jobs: OarJobs, lease_id: str, nodes: list[str]) -> int:
    """Replace the lease's job by the one OAR holds five minutes into the lease while it waits for resources: the
    start moved to "now + 1 s", the walltime the lease's (``nodes``: all of the lease's, or those OAR launched it on);
    the row records it, as OAR keeps the job's id. The backend's clock is set to that "now"."""
    first = job_of(site, lease_id)
    oar_client.delete_job(first, user="alice")
    wait_for_job(oar_client, first, {"Error", "Terminated"})
    now = site.start + INTO_THE_LEASE
    moved = oar_jobs.submit(
        user="alice", nodes=nodes, start=now + timedelta(seconds=1), walltime_s=3599, name=job_name(lease_id)
    )
    site.backend.jobs.set(lease_id, SUBMITTED, owner="alice", job_id=moved)
    site.backend.clock = lambda: now
    return moved


def test_a_begun_lease_whose_job_oar_keeps_waiting_is_kept_not_replaced(
    site: Site, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """Five minutes into the lease OAR still waits for a node: its job starts a second from now with the lease's
    whole walltime. The reconciler keeps it (no deletion, no resubmission, nothing failed), and a Renew is refused
    without touching it: OAR cannot be asked again for a start that has passed."""
    site.allocate(["node7"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    moved = as_oar_moved_it(site, oar_client, oar_jobs, lease_id, ["node7"])

    report = site.backend.reconcile()
    assert not report.changed and not report.failed, report
    assert job_of(site, lease_id) == moved
    (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
    with pytest.raises(GeniError) as refused:
        site.backend.renew(lease, lease.end + HOUR)
    assert refused.value.code == GeniCode.REFUSED and "has begun" in refused.value.message
    job = oar_client.job(moved)
    assert job is not None and job.state == "Waiting", "OAR's job is untouched"
    assert job_of(site, lease_id) == moved
    assert f"oar:{moved}" not in site.backend.refresh_external().added, "not mirrored as somebody else's"


def test_a_job_oar_launched_on_fewer_nodes_is_the_leases(site: Site, oar_client: OarClient, oar_jobs: OarJobs) -> None:
    """OAR gave up waiting for node9 and launched the lease's reservation on node8 alone: the recorded job is the
    lease's. The reconciler neither submits another (OAR would refuse it) nor marks the lease failed."""
    site.allocate(["node8", "node9"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    reduced = as_oar_moved_it(site, oar_client, oar_jobs, lease_id, ["node8"])

    report = site.backend.reconcile()
    assert not report.changed and not report.failed, report
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.state, row.job_id) == (SUBMITTED, reduced) and row.state != FAILED
    job = oar_client.job(reduced, with_nodes=True)
    assert job is not None and job.state == "Waiting" and job.nodes == ("node8",)
    assert f"oar:{reduced}" not in site.backend.refresh_external().added, "not mirrored as somebody else's"


def test_a_replacement_oar_still_holds_in_another_window_is_not_replaced_every_round(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    """[sfa_oar] timezone says UTC+1, the OAR server runs in UTC: every job OAR holds starts an hour after the
    calendar's window. The reconciler replaces it once, sees the new job no better, says so, and keeps it."""
    site.backend.client = OarClient(oar_url, timeout_s=60, server_timezone="Etc/GMT-1")  # (POSIX sign: UTC+1)
    site.allocate(["node6"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    first = job_of(site, lease_id)
    shifted = oar_client.job(first)
    assert shifted is not None and shifted.start_time == site.start + HOUR, "the misconfiguration as described"

    report = site.backend.reconcile()
    assert lease_id in report.failed and OTHER_WINDOW in report.failed[lease_id]
    replacement = job_of(site, lease_id)
    assert replacement != first
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.state == SUBMITTED and row.message.startswith(OTHER_WINDOW)

    again = site.backend.reconcile()
    assert not again.changed, again
    assert job_of(site, lease_id) == replacement
    job = oar_client.job(replacement)
    assert job is not None and job.state == "Waiting", "the replacement is kept"


def test_the_reconciler_finishes_a_timed_out_provision_after_the_allocation_expired(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    """Provision timed out while OAR made the job; the allocation's time to be provisioned then passed before the
    reconciler ran (the sweep not yet). The experimenter asked in time: the reconciler adopts the job and the lease
    is provisioned, not left to expire with its job orphaned."""
    site.allocate(["node5"], site.start)
    (lease_id,) = site.lease_ids()
    slow = provision_timing_out(site, oar_url)
    assert slow.code == GeniCode.TIMEDOUT
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.state == SUBMITTING
    deadline = time.monotonic() + 60
    while not (
        made := [j for j in oar_client.reservations(site.start, site.start + HOUR) if j.name == job_name(lease_id)]
    ):
        assert time.monotonic() < deadline, "OAR never made the job the timed-out Provision asked for"
        time.sleep(0.5)
    with site.aggregate.database.write() as session:  # the allocation's 600 s are over
        session.execute(update(Sliver).where(Sliver.lease_id == lease_id).values(expires_s=int(time.time()) - 1))
    settle(site, lease_id)  # (so is the timed-out call: the round takes its row over)

    report = site.backend.reconcile()
    assert report.adopted == [lease_id] and not report.failed, report
    (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
    assert lease.state == "provisioned"
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.state, row.job_id) == (SUBMITTED, made[0].id)
