"""OAR's listings are read a page at a time, by offset, and OAR sorts them by job id: a job that leaves the listing
between two pages (deleted, or ended) moves the later ones one place back under the offsets, and one that arrives
meanwhile keeps OAR's total the same. No job listed during the whole reading may be missed: a job missed by
``reservations()`` makes the aggregate think its nodes free, or leaves it orphaned. And a listing ends although OAR's
total is more than it lists: OAR 2.5.9 counts the total in another query than the page's, one that also counts every
Running job, also those the page leaves out (one ending before the window, or past its walltime). The real OAR and real
jobs, one of them Running; the departure and the arrival are made to happen between the pages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sfa_omf.testbed.oar.client import OarClient
from tests.testbed.oar.conftest import OarJobs, wait_for_job

HOUR = timedelta(hours=1)
SLOT = timedelta(minutes=10)
# A listing still read after this many pages has not seen its end (the few jobs here take one to four): the test
# fails then, rather than waiting for MAX_LISTING_PAGES requests.
ENOUGH_PAGES = 10


@pytest.fixture
def a_running_job(oar_client: OarClient, oar_jobs: OarJobs) -> int:
    """A job Running in OAR now (node2, from a few seconds ahead for 5 minutes; deleted at the end): OAR counts it in
    the total of every job listing, also of a later window, whose pages leave it out."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    job_id = oar_jobs.submit(user="bob", nodes=["node2"], start=start, walltime_s=300)
    wait_for_job(oar_client, job_id, {"Running"}, within_s=200)  # (the scheduler may start it up to a minute late)
    return job_id


class JobsChangeBetweenPages(OarClient):
    """The real client on the real OAR, ``page_size`` jobs a page, counting the pages of jobs it reads (and failing
    the test after ENOUGH_PAGES) and keeping the last total OAR gave. After its first page it runs ``meanwhile``
    (which really deletes and submits jobs in OAR): the moment a listing is otherwise caught in only by chance, made
    to happen."""

    def __init__(self, url: str, page_size: int, meanwhile: Callable[[], None] = lambda: None) -> None:
        super().__init__(url, timeout_s=60, page_size=page_size)
        self.meanwhile = meanwhile
        self.pages_read = 0
        self.total: int | None = None

    def _call(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, str] | None = None,
    ) -> Any:
        answer = super()._call(method, path, user=user, query=query, body=body)
        if path == "/jobs/details.json":
            self.pages_read += 1
            self.total = answer["total"]
            assert self.pages_read < ENOUGH_PAGES, f"the listing did not end: {self.pages_read} pages read"
            if self.pages_read == 1:
                self.meanwhile()
        return answer


def test_a_job_leaving_between_pages_hides_no_other(
    oar_url: str, oar_client: OarClient, oar_jobs: OarJobs, oar_start: datetime, a_running_job: int
) -> None:
    first, second, third, fourth = (
        oar_jobs.submit(user="alice", nodes=["node1"], start=oar_start + number * SLOT, walltime_s=599)
        for number in range(4)
    )
    assert [job.id for job in oar_client.reservations(oar_start, oar_start + HOUR)] == [first, second, third, fourth]
    arrived: list[int] = []

    def first_leaves_and_another_arrives() -> None:
        oar_client.delete_job(first, user="alice")
        wait_for_job(oar_client, first, {"Error", "Terminated"})
        arrived.append(oar_jobs.submit(user="alice", nodes=["node1"], start=oar_start + 4 * SLOT, walltime_s=599))

    listing = JobsChangeBetweenPages(oar_url, 2, first_leaves_and_another_arrives)
    listed = [job.id for job in listing.reservations(oar_start, oar_start + HOUR)]
    # (The first page held first and second; by the second, third had moved to where second was.)
    assert {second, third, fourth, *arrived} <= set(listed), f"listed {listed}"
    assert listed == sorted(set(listed)), "each job once"
    assert listing.pages_read >= 2 and arrived, "the jobs changed between two pages"


def test_a_listing_ends_although_oar_counts_a_running_job_it_does_not_list(
    oar_url: str, oar_jobs: OarJobs, oar_start: datetime, a_running_job: int
) -> None:
    """The window is far after the Running job's end: OAR's page leaves it out, its total counts it. The short page
    ends the listing (it was read again and again, the total never reached)."""
    later = oar_jobs.submit(user="alice", nodes=["node1"], start=oar_start, walltime_s=599)
    listing = JobsChangeBetweenPages(oar_url, 2)
    listed = [job.id for job in listing.reservations(oar_start, oar_start + HOUR)]
    assert listed == [later]
    assert listing.total is not None and listing.total > len(listed), "OAR counted a job it did not list"
    assert listing.pages_read == 1
