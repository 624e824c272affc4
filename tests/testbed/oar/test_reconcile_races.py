"""A reconcile round acts on the job rows it read at its start; a newer Provision of the same lease may write the
lease's row after that read and before the round's own write (against the real OAR, on both databases):

1. The round read a settled SUBMITTING row (an earlier Provision died before OAR was asked), or a DELETING one of an
   allocated lease (a failed Provision's release OAR did not answer), and found no job of its owner in OAR. A newer
   Provision then made the lease's job and recorded it (SUBMITTED, its job id). The round must not overwrite that row
   with its own conclusion (DELETED): the job would be lost track of (a Delete leaves it in OAR, holding the nodes).
2. The same, the newer Provision timing out (OAR makes the job after the call gave up): it keeps its provision hold
   for the reconciler, which adopts the job once OAR lists it. The round must not end that hold, asked before the
   round began but left after its read: the sweep would take the allocation whose job OAR holds.

Only the moment is stood in for (``JobRowsReadDuringProvisionStandIn``); OAR, the database and the Provision are
real."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from sfa_omf.calendar.booking import LEFT_FOR_TESTBED, PROVISION_HOLD_S
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import ProvisionHoldRow
from sfa_omf.calendar.outbox import LeaseNews
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.testbed.oar.jobs import DELETING, SUBMITTED, SUBMITTING, JobRecord, OarJobs
from sfa_omf.times import utcnow
from tests.calendar.conftest import fresh_database
from tests.conftest import DemoPki
from tests.testbed.oar.conftest import OarJobs as OarJobsMade
from tests.testbed.oar.conftest import wait_for_job
from tests.testbed.oar.test_backend import Site, oar_site, settle
from tests.testbed.oar.test_being_made import ImpatientSubmissions, made_in_oar

WAIT_S = 120  # a bound on waiting for the other side of the race: only a hung test reaches it


class JobRowsReadDuringProvisionStandIn(OarJobs):
    """The real job rows (the real database), with the moment of the race held open. A real round reads the rows
    right after OAR's reservations call, while a newer Provision of the lease may be taking over an earlier call's
    job (its own reservations call, about a second) before writing its row: a moment too short to hit reliably.
    Here the Provision's first write of the row (``set`` SUBMITTING) waits until the round has read the rows
    (``in_states``), and the round goes on once the Provision has ended."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.provision_writing = threading.Event()
        self.round_read = threading.Event()
        self.provision_ended = threading.Event()

    def in_states(self, *states: str) -> list[JobRecord]:
        rows = super().in_states(*states)
        self.round_read.set()
        if not self.provision_ended.wait(WAIT_S):
            raise AssertionError("the newer Provision never ended")
        return rows

    def set(
        self,
        lease_id: str,
        state: str,
        owner: str | None = None,
        job_id: int | None = None,
        message: str = "",
        news: LeaseNews | None = None,
    ) -> None:
        if state == SUBMITTING:
            self.provision_writing.set()
            if not self.round_read.wait(WAIT_S):
                raise AssertionError("the round never read the rows")
        super().set(lease_id, state, owner=owner, job_id=job_id, message=message, news=news)


@pytest.fixture(params=["sqlite", "postgresql"])
def site(
    request: pytest.FixtureRequest,
    oar_url: str,
    oar_users: tuple[str, ...],
    oar_client: OarClient,
    pki: DemoPki,
    tmp_path: Path,
) -> Iterator[Site]:
    """test_backend's site (an aggregate on the OAR backend, alice and bob mapped to their Unix users) on either
    database."""
    database = fresh_database(request.param, tmp_path)
    made = oar_site(database, oar_url, oar_users, pki)
    yield made
    for lease in made.aggregate.bookings.leases():  # leave nothing in OAR (the tests track the jobs made, too)
        with contextlib.suppress(GeniError):
            made.backend.release(lease)
    database.dispose()


def hold_rows(site: Site) -> list[tuple[str, str, int]]:
    """Every row of ``provision_hold``: (lease id, token, held until)."""
    with site.aggregate.database.read() as session:
        rows = session.execute(select(ProvisionHoldRow.lease_id, ProvisionHoldRow.token, ProvisionHoldRow.held_until_s))
        return sorted((lease_id, token, held_until_s) for lease_id, token, held_until_s in rows)


def round_during_a_newer_provision(
    site: Site, node: str, earlier: str = SUBMITTING
) -> tuple[str, JobRowsReadDuringProvisionStandIn, Exception | None]:
    """Alice's lease of ``node`` whose earlier Provision died before OAR was asked (its row SUBMITTING, settled), or
    failed and could not release what it may have made (``earlier`` DELETING: a Delete OAR did not answer); a
    newer Provision of it (alice's, through the backend's client as the test set it) asked before a reconcile round
    began, writing its row after the round read the rows. The lease, the rows and what the Provision raised (None: it
    succeeded)."""
    site.allocate([node], site.start)
    (lease_id,) = site.lease_ids()
    site.backend.jobs.set(lease_id, earlier, owner="alice")
    settle(site, lease_id)
    rows = JobRowsReadDuringProvisionStandIn(site.aggregate.database)
    site.backend.jobs = rows
    outcome: list[Exception | None] = [None]

    def provision() -> None:
        try:
            site.provision()
        except Exception as exc:  # (told to the test, which says what it expected)
            outcome[0] = exc
        finally:
            rows.provision_ended.set()
            rows.provision_writing.set()  # (the wait below ends, and says so, should it end before writing)

    provisioning = threading.Thread(target=provision)
    provisioning.start()
    assert rows.provision_writing.wait(WAIT_S), "the Provision never came to write its row"
    if rows.provision_ended.is_set():
        pytest.fail(f"the Provision ended before writing its row (OAR down?): {outcome[0]!r}")
    # The round begins in a later second than the Provision was asked (holds count whole seconds).
    ((_, _, held_until_s),) = hold_rows(site)
    until_next_second(held_until_s - PROVISION_HOLD_S)
    site.backend.reconcile()
    provisioning.join(WAIT_S)
    assert not provisioning.is_alive()
    return lease_id, rows, outcome[0]


def until_next_second(asked_s: int) -> None:
    """Return once the wall clock is past the second ``asked_s``."""
    while int(utcnow().timestamp()) <= asked_s:
        time.sleep(0.05)


@pytest.mark.parametrize("earlier", [SUBMITTING, DELETING])
def test_a_round_does_not_overwrite_the_row_of_a_newer_provision(
    site: Site, oar_client: OarClient, oar_jobs: OarJobsMade, earlier: str
) -> None:
    """Race 1: the round's DELETED (from its older reading: no job in OAR) overwrote the row the newer Provision
    wrote meanwhile; the lease was provisioned with a row saying its job was deleted, and a Delete left the job in
    OAR."""
    lease_id, rows, outcome = round_during_a_newer_provision(site, "node9", earlier)
    (job,) = made_in_oar(site, oar_client, lease_id)
    oar_jobs.track(job.id, "alice")
    assert outcome is None, outcome
    row = rows.get(lease_id)
    assert row is not None and (row.state, row.job_id, row.owner) == (SUBMITTED, job.id, "alice"), row
    assert [s["geni_allocation_status"] for s in site.status()] == ["geni_provisioned"]
    site.delete()
    assert wait_for_job(oar_client, job.id, {"Error", "Terminated"}).state in ("Error", "Terminated")


def test_a_round_does_not_end_the_hold_a_newer_provision_kept(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobsMade
) -> None:
    """Race 2: the newer Provision, asked before the round began, timed out (OAR made its job after the call gave up)
    and kept its hold for the reconciler; the round, from its older reading, ended that hold (and overwrote the
    row), so the sweep could take the allocation whose job OAR holds."""
    site.backend.client = ImpatientSubmissions(oar_url)
    lease_id, rows, outcome = round_during_a_newer_provision(site, "node8")
    (job,) = made_in_oar(site, oar_client, lease_id)  # once OAR has made it (after the call gave up)
    oar_jobs.track(job.id, "alice")
    assert isinstance(outcome, GeniError) and outcome.code == GeniCode.TIMEDOUT, outcome
    assert [(held, token) for held, token, _ in hold_rows(site)] == [(lease_id, LEFT_FOR_TESTBED)], (
        "the hold the timed-out Provision kept for its job stays"
    )
    row = rows.get(lease_id)
    assert row is not None and (row.state, row.owner) == (SUBMITTING, "alice") and row.updated_s > 0, row
    # Once the row is settled, a round adopts the job and ends the hold.
    site.backend.client = OarClient(oar_url, timeout_s=60)
    site.backend.jobs = OarJobs(site.aggregate.database)
    settle(site, lease_id)
    assert site.backend.reconcile().adopted == [lease_id]
    assert hold_rows(site) == []
    adopted = site.backend.jobs.get(lease_id)
    assert adopted is not None and adopted.job_id == job.id
