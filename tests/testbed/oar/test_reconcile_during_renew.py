"""A reconcile round of one process must not act on a Renew still at work on another (against the real OAR, on both
databases).

The aggregate's Renew commits the calendar's new end first, then asks OAR to move the reservation, and puts the old
end back if OAR fails. A round that read the calendar in between (in the hunt: while a slow OAR took 10 s to time
out) replaced the lease's job by one for the new window; the Renew then failed, the calendar went back to the old
end, and OAR held a window the calendar had refused until the next round replaced the job once more: two needless
delete/submit cycles, each a gap with no reservation, and two repair alerts.

The Renew's host and the reconciler's host are two backends over one database; OAR, the database, the Renew and the
rounds are real. Only the moment is stood in for (``OarTooSlowForTheRenewStandIn``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.outbox import LeaseNews
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.testbed.oar.backend import OarTestbed
from sfa_omf.testbed.oar.client import OarClient, OarJob
from sfa_omf.testbed.oar.jobs import SUBMITTED, JobRecord, OarJobs, job_name
from sfa_omf.times import format_time
from tests.calendar.conftest import fresh_database
from tests.conftest import DemoPki
from tests.testbed.oar.conftest import OarJobs as OarJobsMade
from tests.testbed.oar.test_backend import HOUR, Site, job_of, oar_site, settle

WAIT_S = 120  # a bound on waiting for the other side of the race: only a hung test reaches it


class OarTooSlowForTheRenewStandIn(OarClient):
    """The real OAR, asked with a time-out far shorter than its answers take (about a second): the Renew's first
    call to OAR times out for real, as it did through the hunt's slow proxy. The stand-in part is the moment: that
    call waits, before asking OAR, until a reconcile round of the other host has run. In the hunt a round landed in
    the seconds a slow OAR took to time out; here it lands there every time."""

    def __init__(self, url: str) -> None:
        super().__init__(url, timeout_s=0.05)
        self.renew_asking = threading.Event()
        self.round_done = threading.Event()

    def reservations(self, start: datetime, end: datetime, *, unplaced: bool = False) -> list[OarJob]:
        self.renew_asking.set()
        if not self.round_done.wait(WAIT_S):
            raise AssertionError("the reconcile round never ran")
        return super().reservations(start, end, unplaced=unplaced)


@pytest.fixture(params=["sqlite", "postgresql"])
def site(
    request: pytest.FixtureRequest, oar_url: str, oar_users: tuple[str, ...], pki: DemoPki, tmp_path: Path
) -> Iterator[Site]:
    """test_backend's site (the Renew's host: an aggregate on the OAR backend) on either database."""
    database = fresh_database(request.param, tmp_path)
    made = oar_site(database, oar_url, oar_users, pki)
    yield made
    made.backend.client = OarClient(oar_url, timeout_s=60)
    for lease in made.aggregate.bookings.leases():  # leave nothing in OAR (the test tracks the jobs made, too)
        with contextlib.suppress(GeniError):
            made.backend.release(lease)
    database.dispose()


def named_in_oar(site: Site, oar_client: OarClient, lease_id: str) -> list[OarJob]:
    """The jobs OAR holds named after the lease, whatever their window."""
    listed = oar_client.reservations(site.start, site.start + 3 * HOUR, unplaced=True)
    return [job for job in listed if job.name == job_name(lease_id)]


def assert_renew_failed_and_oar_kept_the_old_window(
    site: Site,
    oar_client: OarClient,
    oar_jobs: OarJobsMade,
    lease_id: str,
    first: int,
    renewing: threading.Thread,
    failures: list[GeniError],
) -> None:
    """The Renew (an hour more) ended refused TIMEDOUT; the calendar keeps the old end and OAR holds that window with
    the job it always had (``first``). The lease's jobs in OAR are tracked for deletion."""
    for job in named_in_oar(site, oar_client, lease_id):
        oar_jobs.track(job.id, "alice")
    assert not renewing.is_alive()
    assert [failure.code for failure in failures] == [GeniCode.TIMEDOUT], failures
    (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
    assert lease.end == site.start + HOUR, "the calendar keeps the old end"
    assert [(job.id, job.state, job.walltime_s) for job in named_in_oar(site, oar_client, lease_id)] == [
        (first, "Waiting", 3599)
    ]


def test_a_round_leaves_alone_a_lease_whose_renew_is_at_work(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobsMade
) -> None:
    """The hunt's race: the round, run while the Renew waits for OAR, replaced the lease's job for the new window
    (``resubmitted``) though the Renew then failed and the calendar kept the old end."""
    alice = site.pki.users["alice"]
    site.allocate(["node7"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    first = job_of(site, lease_id)
    oar_jobs.track(first, "alice")
    settle(site, lease_id)  # the Provision is long over: its row is no call's of this round
    other_host = OarTestbed(
        OarClient(oar_url, timeout_s=60), site.aggregate.database, "testbed", cache_s=1, horizon=timedelta(days=30)
    )
    slow = OarTooSlowForTheRenewStandIn(oar_url)
    site.backend.client = slow
    failures: list[GeniError] = []

    def renew() -> None:
        try:
            site.aggregate.renew(
                alice.chain, [site.pki.slice_urn], [alice.slice_cred], format_time(site.start + 2 * HOUR), {}
            )
        except GeniError as exc:
            failures.append(exc)
        finally:
            slow.renew_asking.set()  # (the wait below ends, and says so, should the Renew end before asking OAR)

    renewing = threading.Thread(target=renew)
    renewing.start()
    try:
        assert slow.renew_asking.wait(WAIT_S), "the Renew never asked OAR"
        (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
        assert lease.end == site.start + 2 * HOUR, "the calendar holds the new end while the Renew asks OAR"
        during = other_host.reconcile()
    finally:
        slow.round_done.set()
        renewing.join(WAIT_S)
    assert_renew_failed_and_oar_kept_the_old_window(site, oar_client, oar_jobs, lease_id, first, renewing, failures)
    assert not during.changed, f"the round acted on the Renew at work: {during}"
    # The next round finds nothing to repair either.
    after = other_host.reconcile()
    assert not after.changed, after
    row = other_host.jobs.get(lease_id)
    assert row is not None and (row.state, row.job_id, row.message) == (SUBMITTED, first, ""), row


class RowReadBeforeTheRenewMarksItStandIn(OarJobs):
    """The real job rows (the real database), with a moment held open on both hosts: the Renew's host marks the
    lease's row (``mark_renewal``, right after the calendar took the new end) only once the round has read the row
    (``get``), and the round goes on only once the mark is written. A round reading the calendar and the row in the
    milliseconds between the Renew's commit and its mark is too short a moment to hit otherwise."""

    def __init__(self, database: Database, renewing_host: bool, moment: dict[str, threading.Event]) -> None:
        super().__init__(database)
        self.renewing_host = renewing_host
        self.moment = moment
        self.held = False

    def get(self, lease_id: str) -> JobRecord | None:
        row = super().get(lease_id)
        if not self.renewing_host and not self.held:
            self.held = True
            self.moment["round_read"].set()
            if not self.moment["renew_marked"].wait(WAIT_S):
                raise AssertionError("the Renew never marked the row")
        return row

    def mark_renewal(self, lease_id: str, new_end: datetime) -> None:
        if self.renewing_host and not self.moment["renew_marked"].is_set():
            self.moment["renew_committed"].set()
            if not self.moment["round_read"].wait(WAIT_S):
                raise AssertionError("the round never read the row")
            super().mark_renewal(lease_id, new_end)
            self.moment["renew_marked"].set()
            return
        super().mark_renewal(lease_id, new_end)


def test_a_round_that_read_before_the_renew_marked_the_row_does_not_act(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobsMade
) -> None:
    """The round read the calendar (the Renew's new end) and the row (not yet marked), then replaced the job for the
    new window the Renew, failing, put back: it must read both again right before deleting or submitting."""
    alice = site.pki.users["alice"]
    site.allocate(["node10"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    first = job_of(site, lease_id)
    oar_jobs.track(first, "alice")
    settle(site, lease_id)
    database = site.aggregate.database
    moment = {name: threading.Event() for name in ("renew_committed", "round_read", "renew_marked")}
    other_host = OarTestbed(
        OarClient(oar_url, timeout_s=60), database, "testbed", cache_s=1, horizon=timedelta(days=30)
    )
    other_host.jobs = RowReadBeforeTheRenewMarksItStandIn(database, renewing_host=False, moment=moment)
    site.backend.jobs = RowReadBeforeTheRenewMarksItStandIn(database, renewing_host=True, moment=moment)
    site.backend.client = OarClient(oar_url, timeout_s=0.05)  # OAR too slow for the Renew: it fails, for real
    failures: list[GeniError] = []

    def renew() -> None:
        try:
            site.aggregate.renew(
                alice.chain, [site.pki.slice_urn], [alice.slice_cred], format_time(site.start + 2 * HOUR), {}
            )
        except GeniError as exc:
            failures.append(exc)
        finally:
            moment["renew_committed"].set()  # (the waits end, and say so, should the Renew end before marking)
            moment["renew_marked"].set()

    renewing = threading.Thread(target=renew)
    renewing.start()
    try:
        assert moment["renew_committed"].wait(WAIT_S), "the Renew never came to mark the row"
        during = other_host.reconcile()
    finally:
        moment["round_read"].set()
        renewing.join(WAIT_S)
    assert_renew_failed_and_oar_kept_the_old_window(site, oar_client, oar_jobs, lease_id, first, renewing, failures)
    assert not during.changed, f"the round acted on its reading older than the Renew's mark: {during}"


class DatabaseFailsOnceOarTookTheRenewalStandIn(OarJobs):
    """The real job rows, with the database failing at one moment: right after the Renew recorded the reservation
    OAR made for the new window (the row's new job), its next read of the row (to end its renewal mark) fails. A
    database failing between two statements of one call cannot be made so on demand: SQLAlchemy's OperationalError
    (what a dropped connection raises) is raised inside a real unit of work, so the database layer turns it into what
    a real failure gives (DBERROR)."""

    def __init__(self, database: Database, old_job_id: int) -> None:
        super().__init__(database)
        self.old_job_id = old_job_id
        self.failing = False

    def set(
        self,
        lease_id: str,
        state: str,
        owner: str | None = None,
        job_id: int | None = None,
        message: str = "",
        news: LeaseNews | None = None,
    ) -> None:
        super().set(lease_id, state, owner=owner, job_id=job_id, message=message, news=news)
        if state == SUBMITTED and job_id is not None and job_id != self.old_job_id:
            self.failing = True  # the new window's job is recorded: OAR holds it

    def get(self, lease_id: str) -> JobRecord | None:
        if self.failing:
            self.failing = False
            with self.database.read():
                raise OperationalError(
                    "SELECT oar_jobs.lease_id FROM oar_jobs", {}, Exception("server closed the connection unexpectedly")
                )
        return super().get(lease_id)


def test_a_renew_oar_followed_succeeds_though_the_database_then_fails(
    site: Site, oar_client: OarClient, oar_jobs: OarJobsMade
) -> None:
    """OAR holds the new window: a database failure as the Renew ends its mark must not fail the Renew (the calendar
    would go back to the old end while OAR keeps the new one)."""
    alice = site.pki.users["alice"]
    site.allocate(["node8"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    first = job_of(site, lease_id)
    oar_jobs.track(first, "alice")
    real_jobs = site.backend.jobs
    failing = DatabaseFailsOnceOarTookTheRenewalStandIn(site.aggregate.database, first)
    site.backend.jobs = failing
    try:
        renewed = site.aggregate.renew(
            alice.chain, [site.pki.slice_urn], [alice.slice_cred], format_time(site.start + 2 * HOUR), {}
        )
    finally:
        site.backend.jobs = real_jobs
        for job in named_in_oar(site, oar_client, lease_id):
            oar_jobs.track(job.id, "alice")
    assert renewed and not failing.failing, "the database failed once OAR held the new window"
    (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
    assert lease.end == site.start + 2 * HOUR, "the calendar keeps the new end"
    # OAR holds the new window (the Renew replaced the reservation, which had not begun).
    ((job_id, state, walltime_s),) = [
        (job.id, job.state, job.walltime_s) for job in named_in_oar(site, oar_client, lease_id)
    ]
    assert (state, walltime_s) == ("Waiting", 2 * 3600 - 1) and job_id != first
    settle(site, lease_id)
    assert not site.backend.reconcile().changed, "the next round finds nothing to repair"
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.state, row.job_id, row.message) == (SUBMITTED, job_id, ""), row
