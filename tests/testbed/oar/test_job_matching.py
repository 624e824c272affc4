"""A job in OAR counts as a lease's reservation only if it is the one sfa-omf made for it: its name, the owner recorded
for the lease, exactly its nodes and its window, against the real OAR 2.5.9 (scripts/oar.sh). A job of ours for an
older window is replaced by the calendar's, never adopted as it is; a job anybody names ``sfa-omf_<id>`` is neither
adopted, nor deleted, nor hidden from the mirror; one lease OAR cannot be asked for does not stop the reconciler."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.models import OarJob as OarJobRow
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.testbed.oar.backend import OarTestbed
from sfa_omf.testbed.oar.client import OarClient, OarRefused
from sfa_omf.testbed.oar.jobs import DELETED, DELETING, SUBMITTED, SUBMITTING, job_name
from sfa_omf.times import format_time
from tests.ports import free_port
from tests.testbed.oar import test_backend
from tests.testbed.oar.conftest import OarJobs, wait_for_job
from tests.testbed.oar.test_backend import HOUR, Site, job_of, node_urn, provision_timing_out, settle

site = test_backend.site  # the fixture: an aggregate on the OAR backend, alice and bob mapped to their Unix users

TWO_HOURS_WALLTIME = 2 * 3600 - 1


def renew(site: Site, hours: int) -> None:
    alice = site.pki.users["alice"]
    site.aggregate.renew(
        alice.chain, [site.pki.slice_urn], [alice.slice_cred], format_time(site.start + hours * HOUR), {}
    )


def assert_second_hour_is_held(site: Site, node: str, oar_jobs: OarJobs) -> None:
    """bob cannot reserve the lease's second hour directly in OAR: OAR holds it for the lease."""
    with pytest.raises(OarRefused):
        oar_jobs.submit(user="bob", nodes=[node], start=site.start + HOUR, walltime_s=3599, name="bobs-hour")


def test_provision_after_the_booking_was_renewed_reserves_the_renewed_window(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """Provision times out while OAR makes the 1-hour job; the still allocated booking is renewed to 2 hours; the
    retried Provision replaces that job by one for the 2 hours instead of adopting it."""
    site.allocate(["node10"], site.start)
    (lease_id,) = site.lease_ids()
    slow = provision_timing_out(site, oar_url)
    assert slow.code == GeniCode.TIMEDOUT
    deadline = time.monotonic() + 60
    while not [job for job in oar_client.reservations(site.start, site.start + HOUR) if job.name == job_name(lease_id)]:
        assert time.monotonic() < deadline, "OAR never made the job the timed-out Provision asked for"
        time.sleep(0.5)
    renew(site, 2)
    site.provision()
    (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
    assert (lease.state, lease.end) == ("provisioned", site.start + 2 * HOUR)
    job = oar_client.job(job_of(site, lease_id), with_nodes=True)
    assert job is not None and job.state == "Waiting"
    assert (job.start_time, job.walltime_s, job.nodes, job.owner) == (
        site.start,
        TWO_HOURS_WALLTIME,
        ("node10",),
        "alice",
    )
    ours = [
        job.id for job in oar_client.reservations(site.start, site.start + 2 * HOUR) if job.name == job_name(lease_id)
    ]
    assert ours == [job.id], "the 1-hour job is gone, not doubled"
    assert not site.backend.reconcile().changed
    assert_second_hour_is_held(site, "node10", oar_jobs)


def test_a_renewal_after_a_failed_delete_moves_the_oar_reservation(
    site: Site, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """A Delete that failed while OAR was down leaves the row 'deleting' (the lease still provisioned, its job
    alive): a later Renew still moves the reservation, and the reconciler keeps the renewed one."""
    site.allocate(["node9"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    first = job_of(site, lease_id)
    # What release() records when OAR's API does not answer the deletion.
    site.backend.jobs.set(lease_id, DELETING, job_id=first, message="cannot reach OAR's API")
    renew(site, 2)
    site.backend.reconcile()
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.state == SUBMITTED and row.job_id != first
    job = oar_client.job(job_of(site, lease_id), with_nodes=True)
    assert job is not None and (job.start_time, job.walltime_s, job.nodes) == (
        site.start,
        TWO_HOURS_WALLTIME,
        ("node9",),
    )
    assert_second_hour_is_held(site, "node9", oar_jobs)


def test_the_reconciler_replaces_a_waiting_job_for_another_window(
    site: Site, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """The calendar renewed a provisioned lease but OAR kept the old window (the renewal's rollback could not reach
    OAR): the reconciler reserves the calendar's window in place of the old job."""
    site.allocate(["node8"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    old = job_of(site, lease_id)
    site.aggregate.bookings.renew(lease_id, site.start + 2 * HOUR)  # the calendar only
    settle(site, lease_id)  # (written before the round: not a call's write during it)
    report = site.backend.reconcile()
    assert report.resubmitted == [lease_id] and not report.failed
    job = oar_client.job(job_of(site, lease_id), with_nodes=True)
    assert job is not None and job.id != old
    assert (job.start_time, job.walltime_s, job.nodes, job.owner) == (
        site.start,
        TWO_HOURS_WALLTIME,
        ("node8",),
        "alice",
    )
    assert wait_for_job(oar_client, old, {"Error", "Terminated"}).state in ("Error", "Terminated")
    assert not site.backend.reconcile().changed
    assert_second_hour_is_held(site, "node8", oar_jobs)


def test_a_job_named_like_ours_is_mirrored_unless_it_is_our_leases_reservation(
    site: Site, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """Another sfa-omf on the same OAR, or a local user, names a job ``sfa-omf_<id>``: the mirror shows it like any
    OAR reservation and Allocate refuses its slot; this calendar's own provisioned lease's job is not mirrored."""
    foreign = oar_jobs.submit(
        user="bob", nodes=["node7"], start=site.start, walltime_s=3599, name=job_name(str(uuid.uuid4()))
    )
    site.allocate(["node6"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    # bob names a job after alice's lease, on another node: not her reservation either.
    spoof = oar_jobs.submit(user="bob", nodes=["node5"], start=site.start, walltime_s=3599, name=job_name(lease_id))
    report = site.backend.refresh_external()
    assert {f"oar:{foreign}", f"oar:{spoof}"} <= set(report.added)
    assert f"oar:{job_of(site, lease_id)}" not in report.added + report.clashing
    with pytest.raises(GeniError) as conflict:
        site.allocate(["node7"], site.start)
    assert conflict.value.code == GeniCode.REFUSED and f"OAR job {foreign} of bob" in conflict.value.message


def test_the_reconciler_neither_adopts_nor_deletes_a_job_it_did_not_make(
    site: Site, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """bob names jobs after alice's leases: one holding exactly the nodes and window of her allocated lease (whose
    Provision was interrupted long ago: the reconciler looks for its job), one after her cancelled lease. Nothing is
    adopted (bob's job is not hers: the owner recorded for the lease is alice), her lease stays allocated and its
    row is forgotten (OAR holds no job of hers for it), and only her own orphan job is deleted; bob's jobs are
    untouched."""
    site.allocate(["node9"], site.start + 5 * HOUR)
    site.provision()
    (cancelled,) = site.lease_ids()
    orphan = job_of(site, cancelled)
    site.aggregate.bookings.cancel(cancelled)  # the calendar only: her job stays in OAR, an orphan
    spoof_of_cancelled = oar_jobs.submit(
        user="bob", nodes=["node7"], start=site.start + 6 * HOUR, walltime_s=600, name=job_name(cancelled)
    )
    site.allocate(["node10"], site.start)
    (allocated,) = site.lease_ids()
    site.backend.jobs.set(allocated, SUBMITTING, owner="alice")  # a Provision interrupted before OAR answered
    settle(site, allocated)  # long ago: the reconciler looks for its job (a recent one is left to its call)
    spoof = oar_jobs.submit(user="bob", nodes=["node10"], start=site.start, walltime_s=3599, name=job_name(allocated))
    report = site.backend.reconcile()
    assert report.adopted == [] and report.orphans_deleted == [orphan]
    (lease,) = [lease for lease in site.aggregate.bookings.leases() if lease.id == allocated]
    assert lease.state == "allocated"
    row = site.backend.jobs.get(allocated)
    assert row is not None and (row.state, row.owner) == (DELETED, "alice"), "no job of alice's in OAR: none taken"
    for job_id in (spoof, spoof_of_cancelled):
        job = oar_client.job(job_id)
        assert job is not None and job.state == "Waiting", f"bob's job {job_id} is untouched"
    wait_for_job(oar_client, orphan, {"Error", "Terminated"})


# --- a time OAR cannot be told: the hour that occurs twice when clocks go back ----------------------------------------
# The OAR here runs in UTC. The client is told the server's zone is Europe/London, which is UTC in winter: every time
# sent in winter is right, and 2027-10-31 00:00 UTC (01:00 BST, followed by 01:00 GMT) is one OAR cannot be told.
REPEATED_HOUR = datetime(2027, 10, 31, 0, 0, tzinfo=UTC)


@pytest.fixture
def london(oar_url: str, oar_users: tuple[str, ...], tmp_path: Path) -> OarTestbed:
    """An OAR backend whose client takes the OAR server's zone to be Europe/London; nodes node5..node7."""
    database = Database(sqlite_url(str(tmp_path / "london.sqlite")))
    database.upgrade()
    for name in ("node5", "node6", "node7"):
        Inventory(database).add_node(NodeSpec(node_urn(name), name))
    client = OarClient(oar_url, timeout_s=60, server_timezone="Europe/London")
    return OarTestbed(client, database, "testbed")


def provisioned(backend: OarTestbed, node: str, start: datetime) -> LeaseRecord:
    slice_urn = f"urn:publicid:IDN+testbed+slice+s{uuid.uuid4().hex[:8]}"
    bookings = Bookings(backend.jobs.database, Policy(max_advance_s=400 * 86400))
    (lease,) = bookings.book(
        slice_urn, start + 30 * 24 * HOUR, [BookingRequest(node_urn(node), start, start + HOUR)]
    ).leases
    return bookings.mark_provisioned(lease.id)


def test_a_lease_oar_cannot_be_asked_for_does_not_stop_the_reconciler(
    london: OarTestbed, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """Two provisioned leases whose jobs OAR lost: the first starts in the repeated hour, the other in winter. The
    first is listed as failed with why; the other is reserved again in the same round."""
    winter = datetime(2027, 11, 2, tzinfo=UTC) + timedelta(hours=random.randrange(24 * 25))
    repeated = provisioned(london, "node5", REPEATED_HOUR)
    ordinary = provisioned(london, "node6", winter)
    for lease in (repeated, ordinary):
        london.jobs.set(lease.id, SUBMITTED, owner="alice", job_id=999_999_999)  # a job OAR does not know (lost)
    with london.jobs.database.write() as session:  # written before the round: not a call's write during it
        session.execute(update(OarJobRow).values(updated_s=0))
    report = london.reconcile()
    for lease in (repeated, ordinary):
        row = london.jobs.get(lease.id)
        if row is not None and row.job_id not in (None, 999_999_999):
            oar_jobs.track(row.job_id, "alice")
    assert report.resubmitted == [ordinary.id]
    assert list(report.failed) == [repeated.id] and "occurs twice" in report.failed[repeated.id]
    row = london.jobs.get(ordinary.id)
    assert row is not None and row.state == SUBMITTED
    job = oar_client.job(row.job_id or 0, with_nodes=True)
    assert job is not None and (job.start_time, job.walltime_s, job.nodes) == (winter, 3599, ("node6",))


def test_a_renewal_oar_cannot_be_asked_for_leaves_the_reservation_in_place(
    london: OarTestbed, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """The renewed window starts in the repeated hour: the renewal is refused before the old job is deleted."""
    lease = provisioned(london, "node7", REPEATED_HOUR)
    made = oar_jobs.submit(user="alice", nodes=["node7"], start=REPEATED_HOUR, walltime_s=3599, name=job_name(lease.id))
    london.jobs.set(lease.id, SUBMITTED, owner="alice", job_id=made)
    with pytest.raises(GeniError) as refused:
        london.renew(lease, lease.end + HOUR)
    assert refused.value.code == GeniCode.ERROR and "occurs twice" in refused.value.message
    job = oar_client.job(made)
    assert job is not None and job.state == "Waiting", "the reservation is still there"


# --- OAR's API unreachable -------------------------------------------------------------------------------------------
def test_looking_for_an_earlier_job_while_oar_is_unreachable_answers_unavailable(tmp_path: Path) -> None:
    """Provision and Delete of a booking whose earlier Provision was interrupted look for its job in OAR; OAR's API
    does not answer (nothing listens on the port): UNAVAILABLE, and nothing is written."""
    database = Database(sqlite_url(str(tmp_path / "down.sqlite")))
    database.upgrade()
    Inventory(database).add_node(NodeSpec(node_urn("node5"), "node5"))
    backend = OarTestbed(OarClient(f"http://127.0.0.1:{free_port()}/oarapi", timeout_s=5), database, "testbed")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + 3 * HOUR
    (lease,) = (
        Bookings(database)
        .book(
            "urn:publicid:IDN+testbed+slice+s",
            start + 10 * HOUR,
            [BookingRequest(node_urn("node5"), start, start + HOUR)],
        )
        .leases
    )
    backend.jobs.set(lease.id, SUBMITTING, owner="alice")
    before = backend.jobs.get(lease.id)
    for call in (lambda: backend.provision(lease, "alice", []), lambda: backend.release(lease)):
        with pytest.raises(GeniError) as down:
            call()
        assert down.value.code == GeniCode.UNAVAILABLE and "does not answer" in down.value.message
        assert backend.jobs.get(lease.id) == before
