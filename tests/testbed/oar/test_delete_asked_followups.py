"""What is told once a Delete OAR did not confirm in time (DELETE_ASKED) leaves OAR's job alive, and when Provision
cannot delete our own orphan job in its way. Status of such a lease names both ways out: Delete again, or the
reconciler asking OAR again and cancelling the lease. A round whose re-asked deletion OAR does not confirm either lists
the lease apart (``deletes_unconfirmed``), told in the operators' alert as that Delete still unconfirmed and asked
again next round, never as a lease OAR would not reserve; the lease stays provisioned. Provision failing to delete the
orphan in its way answers 14 naming the reconciler's time, writes nothing, and leaves the orphan for the reconciler.
Against the real OAR (scripts/oar.sh)."""

from __future__ import annotations

import pytest

from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.testbed.oar.jobs import DELETED
from tests.testbed.oar import test_backend
from tests.testbed.oar.conftest import OarJobs, wait_for_job
from tests.testbed.oar.test_backend import Site, job_of, settle
from tests.testbed.oar.test_delete_timeout import (
    OarNeverGotTheDeleteStandIn,
    oar_client_in_place,
    provisioned_with_a_delete_never_sent,
)
from tests.testbed.oar.test_orphan_in_the_way import provision_cut_short

site = test_backend.site  # the fixture: an aggregate on the OAR backend, alice and bob mapped to their Unix users


def test_status_of_a_delete_asked_whose_job_is_alive_names_the_reconciler_too(site: Site, oar_url: str) -> None:
    _, job_id = provisioned_with_a_delete_never_sent(site, oar_url, "node7")

    (sliver,) = site.status()
    assert sliver["geni_allocation_status"] == "geni_provisioned"
    assert f"OAR job {job_id} is still Waiting: call Delete again to finish it" in sliver["geni_error"], sliver
    assert (
        "or the reconciler asks OAR again to delete it and cancels the lease within about "
        f"{site.backend.settle_s + site.backend.reconcile_s} s"
    ) in sliver["geni_error"], sliver


def test_a_re_asked_delete_oar_does_not_confirm_is_told_as_such_and_asked_again_next_round(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    lease_id, job_id = provisioned_with_a_delete_never_sent(site, oar_url, "node8")
    settle(site, lease_id)  # older than two time-outs: the round asks OAR again (and times out again)
    asked = site.backend.jobs.get(lease_id)

    with oar_client_in_place(site, OarNeverGotTheDeleteStandIn(oar_url, timeout_s=60), oar_url):
        report = site.backend.reconcile()
    assert report.failed == {} and report.deleted == [] and report.cancelled == [], report
    assert list(report.deletes_unconfirmed) == [lease_id], report
    assert f"OAR did not confirm the deletion of job {job_id} again" in report.deletes_unconfirmed[lease_id]
    text = report.alert()["text"]
    assert f"Lease {lease_id}" in text and "its users' Delete, which OAR did not confirm in time, is still not " in text
    assert "the reconciler asks OAR again next round and cancels the lease once OAR has ended its job" in text
    assert "not repaired" not in text and "if OAR keeps refusing" not in text, text
    assert report.alert()["deletes_unconfirmed"] == [lease_id] and report.alert()["failed"] == []
    # Nothing changed: still provisioned, never reserved again, the job alive, the row as the Delete left it.
    assert site.aggregate.bookings.lease_states([lease_id]) == {lease_id: "provisioned"}
    assert site.backend.jobs.get(lease_id) == asked
    job = oar_client.job(job_id)
    assert job is not None and job.state == "Waiting"

    # The next round, OAR taking the deletion, finishes it.
    reports = [site.backend.reconcile()]
    wait_for_job(oar_client, job_id, {"Error", "Terminated"})
    if site.aggregate.bookings.lease_states([lease_id]) != {lease_id: "cancelled"}:
        reports.append(site.backend.reconcile())  # OAR ended the job after the round read it
    assert site.aggregate.bookings.lease_states([lease_id]) == {lease_id: "cancelled"}
    assert all(not report.deletes_unconfirmed and not report.failed for report in reports), reports
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.state == DELETED


def test_provision_failing_to_delete_our_orphan_in_its_way_answers_busy_and_leaves_it_to_the_reconciler(
    site: Site, oar_jobs: OarJobs, oar_client: OarClient, oar_url: str
) -> None:
    """Provision's own deletion of our orphan job in its way fails (the stand-in's time-out, OAR never asked): 14
    naming the reconciler's time; this call writes nothing (its lease has no job row, no hold is left for the testbed,
    the old lease's row is as it was) and the orphan stays in OAR, ours, so the next round deletes it."""
    old_lease, orphan = provision_cut_short(site, oar_jobs, "node9")
    site.delete()  # the allocation: OAR is not asked, the job stays until the reconciler's round
    site.allocate(["node9"], site.start)
    (new_lease,) = site.lease_ids()
    old_row = site.backend.jobs.get(old_lease)

    never_got_it = OarNeverGotTheDeleteStandIn(oar_url, timeout_s=60)
    with oar_client_in_place(site, never_got_it, oar_url), pytest.raises(GeniError) as busy:
        site.provision()
    assert busy.value.code == GeniCode.BUSY, busy.value
    assert f"our own earlier reservation, OAR job {orphan} of lease {old_lease}" in busy.value.message
    assert "deleting it failed (timed out connecting to OAR" in busy.value.message, busy.value
    assert f"the reconciler deletes it within about {site.backend.settle_s} s" in busy.value.message
    assert "retry Provision then" in busy.value.message

    assert site.backend.jobs.get(new_lease) is None
    assert site.aggregate.bookings.lease_states([new_lease]) == {new_lease: "allocated"}
    assert site.aggregate.bookings.provision_hold_ends([new_lease]) == {}
    assert site.backend.jobs.get(old_lease) == old_row
    job = oar_client.job(orphan)
    assert job is not None and job.state == "Waiting"

    # Still known as our orphan: the reconciler's round deletes it, and Provision then succeeds.
    assert site.backend.reconcile().orphans_deleted == [orphan]
    wait_for_job(oar_client, orphan, {"Error", "Terminated"})
    site.provision()
    assert job_of(site, new_lease) != orphan
