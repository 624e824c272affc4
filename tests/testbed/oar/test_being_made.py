"""A reservation OAR is still making when the aggregate looks for it: OAR 2.5.9 lists a scheduled reservation whose
oarsub has not acknowledged it yet (toAckReservation) with no nodes, while it already refuses any other reservation
of them. A Provision that timed out, then Provision again, Delete or the reconciler at that moment must neither
forget the job (it would be nobody's, holding the nodes) nor ask for a second one.

The jobs are the real OAR's (scripts/oar.sh); only the moment is stood in for (ListingAckPendingStandIn)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from sfa_omf.calendar.records import LeaseRecord
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.testbed.oar.backend import REPLACING, _being_made
from sfa_omf.testbed.oar.client import OarClient, OarJob
from sfa_omf.testbed.oar.jobs import DELETED, SUBMITTED, SUBMITTING, job_name
from tests.testbed.oar import test_backend
from tests.testbed.oar.conftest import wait_for_job
from tests.testbed.oar.test_backend import HOUR, Site, job_of, provision_timing_out, settle
from tests.testbed.oar.test_faults import failed_notices

site = test_backend.site  # the fixture: an aggregate on the OAR backend, alice and bob mapped to their Unix users


class ListingAckPendingStandIn(OarClient):
    """Stands in for OAR's listing of a reservation it is still making, a moment too short to catch reliably on the
    real OAR 2.5.9 (scripts/oar.sh's): until its scheduler has placed it (0.2-3.6 s after oarsub inserted it, median
    1.4 s, in its log) OAR does not list it at all (``listed`` False), then, until its oarsub acknowledges it (about
    0.3 s), as state toAckReservation with no nodes. Everything else is the real OAR: the job named ``name`` is
    real, and the next ``pending`` listings show it as OAR does in that moment."""

    def __init__(self, url: str, name: str, pending: int, *, listed: bool = True) -> None:
        super().__init__(url, timeout_s=60)
        self.name = name
        self.pending = pending
        self.listed = listed
        self.listings_shown_pending = 0

    def reservations(self, start: datetime, end: datetime, *, unplaced: bool = False) -> list[OarJob]:
        jobs = super().reservations(start, end, unplaced=True)
        if self.pending > 0:
            self.pending -= 1
            self.listings_shown_pending += 1
            being_made = [replace(job, state="toAckReservation", nodes=()) for job in jobs if job.name == self.name]
            jobs = [job for job in jobs if job.name != self.name] + (being_made if self.listed else [])
        return [job for job in jobs if job.nodes or unplaced]


def made_in_oar(site: Site, oar_client: OarClient, lease_id: str) -> list[OarJob]:
    """The jobs OAR holds named after the lease, once OAR has finished making the one a timed-out call asked for."""
    deadline = time.monotonic() + 60
    while True:
        listed = oar_client.reservations(site.start, site.start + HOUR)
        named = [job for job in listed if job.name == job_name(lease_id)]
        if named or time.monotonic() > deadline:
            return named
        time.sleep(0.5)


def timed_out_provision(site: Site, oar_url: str, oar_client: OarClient, node: str) -> tuple[str, OarJob]:
    """Allocate ``node``, Provision through a client too impatient for OAR; the lease and the job OAR made anyway."""
    site.allocate([node], site.start)
    (lease_id,) = site.lease_ids()
    assert provision_timing_out(site, oar_url).code == GeniCode.TIMEDOUT
    (job,) = made_in_oar(site, oar_client, lease_id)
    return lease_id, job


def settled_before_oar_listed_it(site: Site, oar_url: str, oar_client: OarClient, node: str) -> tuple[str, OarJob]:
    """Alice's Provision of ``node`` timed out long ago, and a reconciler round found no job for it (OAR had not
    listed it yet): her row is kept DELETED, with her login; OAR lists the job from now on. The lease and the job."""
    lease_id, job = timed_out_provision(site, oar_url, oar_client, node)
    settle(site, lease_id)
    site.backend.client = ListingAckPendingStandIn(oar_url, job_name(lease_id), pending=1000, listed=False)
    site.backend.reconcile()
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.state, row.owner) == (DELETED, "alice")
    site.backend.client = oar_client
    return lease_id, job


def test_provision_again_while_oar_still_makes_the_first_reservation_adopts_it(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    lease_id, job = timed_out_provision(site, oar_url, oar_client, "node10")
    listing = ListingAckPendingStandIn(oar_url, job_name(lease_id), pending=2)
    site.backend.client = listing
    site.backend.placing_wait_s = 30
    provisioned = site.provision()
    assert [s["geni_allocation_status"] for s in provisioned["geni_slivers"]] == ["geni_provisioned"]
    assert job_of(site, lease_id) == job.id, "the job OAR was making is the lease's"
    assert listing.listings_shown_pending == 2, "the call waited for OAR to finish it"
    assert made_in_oar(site, oar_client, lease_id) == [job], "no second reservation"


def test_a_reservation_oar_is_slow_to_make_is_kept_then_taken_over(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    lease_id, job = timed_out_provision(site, oar_url, oar_client, "node9")
    site.backend.client = ListingAckPendingStandIn(oar_url, job_name(lease_id), pending=1000)
    site.backend.placing_wait_s = 1
    with pytest.raises(GeniError) as busy:
        site.provision()
    assert busy.value.code == GeniCode.BUSY
    assert f"still making OAR job {job.id}" in busy.value.message and "Provision again" in busy.value.message
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.state, row.owner) == (SUBMITTING, "alice"), "the row names the job's owner still"
    assert [s["geni_allocation_status"] for s in site.status()] == ["geni_allocated"]
    assert made_in_oar(site, oar_client, lease_id) == [job], "nothing submitted beside it"
    site.backend.client = oar_client  # OAR has finished it
    site.provision()
    assert job_of(site, lease_id) == job.id


def test_the_reconciler_keeps_a_row_whose_job_oar_is_still_making(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    lease_id, job = timed_out_provision(site, oar_url, oar_client, "node8")
    settle(site, lease_id)  # the call that wrote the row is long over: the reconciler's to finish
    site.backend.client = ListingAckPendingStandIn(oar_url, job_name(lease_id), pending=1000)
    site.backend.placing_wait_s = 1
    report = site.backend.reconcile()
    assert lease_id not in report.adopted and "still making" in report.failed[lease_id]
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.state == SUBMITTING, "not forgotten: its job would be nobody's"
    site.backend.client = oar_client
    assert lease_id in site.backend.reconcile().adopted
    assert job_of(site, lease_id) == job.id
    assert made_in_oar(site, oar_client, lease_id) == [job]


def test_releasing_a_lease_whose_job_oar_is_still_making_deletes_that_job(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    lease_id, job = timed_out_provision(site, oar_url, oar_client, "node7")
    (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
    site.backend.client = ListingAckPendingStandIn(oar_url, job_name(lease_id), pending=1000)
    site.backend.release(lease)
    gone = wait_for_job(oar_client, job.id, {"Error", "Terminated"})
    assert gone.state in ("Error", "Terminated"), "not left holding the node for nobody"


def test_a_row_whose_job_oar_has_not_listed_yet_keeps_its_owner_and_the_late_job_is_deleted(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    """The reconciler finds no job for a Provision that timed out long ago, because OAR has not listed it yet (it
    lists a reservation only once scheduled): the row is not forgotten but kept with its owner, so that once the
    allocation is deleted, the job OAR lists later is deleted as the orphan it is."""
    _lease_id, job = settled_before_oar_listed_it(site, oar_url, oar_client, "node10")
    site.delete()  # the allocation: no job as far as the aggregate knows
    assert site.backend.reconcile().orphans_deleted == [job.id]
    gone = wait_for_job(oar_client, job.id, {"Error", "Terminated"})
    assert gone.state in ("Error", "Terminated"), "not left holding the node for nobody"


def test_a_held_reservation_is_not_one_oar_is_making() -> None:
    """A reservation put on hold (oarhold) is listed with no nodes too, but holds none and may stay so for ever:
    Provision must not wait for it, nor answer BUSY for ever."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    lease = LeaseRecord("l1", "urn:publicid:IDN+testbed+slice+s", "", start, start + HOUR, "allocated", ())
    made = OarJob(1, "toAckReservation", "Scheduled", "alice", job_name("l1"), start, 3599, ("noop",), "")
    assert _being_made([made], lease, "alice") == made
    assert _being_made([replace(made, state="Hold")], lease, "alice") is None
    assert _being_made([made], lease, "bob") is None, "another owner's"
    assert _being_made([replace(made, nodes=("n",))], lease, "alice") is None, "placed: ours or not, not being made"


def provisioned_job(site: Site, node: str) -> tuple[str, int]:
    """A lease of ``node`` provisioned: its id and its OAR job's."""
    site.allocate([node], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    return lease_id, job_of(site, lease_id)


def test_the_reconciler_leaves_a_job_a_call_is_replacing_to_that_call(site: Site, oar_client: OarClient) -> None:
    """A Renew replaces the lease's job (OAR cannot move one): it marks the row, deletes the old job, then submits the
    new one, which OAR lists only seconds later. A reconciler round meanwhile sees no job: it must not reserve the
    lease again (OAR would refuse one of the two, and the lease be marked failed), until the mark is too old to be a
    call's; then it repairs a replacement cut short as before."""
    lease_id, old = provisioned_job(site, "node9")
    site.backend.jobs.set(lease_id, SUBMITTED, job_id=old, message=f"{REPLACING} {old}")  # as _replace does
    oar_client.delete_job(old, user="alice")
    wait_for_job(oar_client, old, {"Error", "Terminated"})
    report = site.backend.reconcile()
    assert lease_id not in report.resubmitted and lease_id not in report.failed
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.state, row.job_id) == (SUBMITTED, old), "left to the call"
    settle(site, lease_id)  # long ago: no call is replacing it any more
    assert site.backend.reconcile().resubmitted == [lease_id]
    assert job_of(site, lease_id) != old


class ImpatientSubmissions(OarClient):
    """The real client, with a time-out shorter than OAR's reservation call (about a second) for submissions only: OAR
    goes on and makes the job after the client gave up."""

    def __init__(self, url: str) -> None:
        super().__init__(url, timeout_s=60)
        self.impatient = OarClient(url, timeout_s=0.05)

    def submit_reservation(self, **arguments: Any) -> int:  # type: ignore[override]
        return self.impatient.submit_reservation(**arguments)


def test_a_reservation_made_again_that_timed_out_is_not_told_as_failed(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    """The reconciler reserves again a lease whose job OAR lost, and OAR answers too late: it may have made the job,
    so the lease is not marked failed (nor its users told); the next round adopts what OAR made."""
    lease_id, lost = provisioned_job(site, "node8")
    oar_client.delete_job(lost, user="alice")
    wait_for_job(oar_client, lost, {"Error", "Terminated"})
    site.backend.client = ImpatientSubmissions(oar_url)
    report = site.backend.reconcile()
    assert "did not answer" in report.failed[lease_id]
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.state == SUBMITTED, "not failed: OAR may have made it"
    (told,) = failed_notices(site)  # the loss itself is told, once
    assert f"OAR job {lost}" in told and "being reserved again" in told, told
    made = made_in_oar(site, oar_client, lease_id)
    site.backend.client = oar_client
    assert site.backend.reconcile().adopted == [lease_id]
    assert [job_of(site, lease_id)] == [job.id for job in made]
    assert len(failed_notices(site)) == 1


def test_another_member_provisioning_meanwhile_takes_over_the_first_members_job(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    """Per-user logins: alice's Provision timed out, and bob provisions the slice before OAR lists her job. OAR
    refuses his reservation (hers holds the node): her job is taken over as the lease's, owned by her login, not
    forgotten (it would hold the node for nobody) nor doubled."""
    lease_id, job = timed_out_provision(site, oar_url, oar_client, "node7")
    site.backend.client = ListingAckPendingStandIn(oar_url, job_name(lease_id), pending=1, listed=False)
    provisioned = site.provision(user="bob")
    assert [s["geni_allocation_status"] for s in provisioned["geni_slivers"]] == ["geni_provisioned"]
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.job_id, row.owner) == (job.id, "alice")
    assert made_in_oar(site, oar_client, lease_id) == [job], "no second reservation"


def test_a_member_provisioning_after_the_first_members_row_was_settled_takes_over_her_job(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    """Alice's Provision timed out, and a reconciler round found no job yet (OAR had not listed it): her row is kept
    DELETED, with her login. Bob provisions: OAR refuses his reservation (hers holds the node), and her job is taken
    over as the lease's, not forgotten (it would hold the node for nobody while bob is told of a local reservation)."""
    lease_id, job = settled_before_oar_listed_it(site, oar_url, oar_client, "node9")
    provisioned = site.provision(user="bob")
    assert [s["geni_allocation_status"] for s in provisioned["geni_slivers"]] == ["geni_provisioned"]
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.job_id, row.owner) == (job.id, "alice")
    assert made_in_oar(site, oar_client, lease_id) == [job], "no second reservation"
