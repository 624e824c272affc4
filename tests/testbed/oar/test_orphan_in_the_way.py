"""A Provision cut short (its worker killed after OAR made the job) leaves our own job in OAR and a Provision hold on
the allocation. Provision again answers 14 saying the reconciler finishes it within about 2 x timeout_s + reconcile_s.
Should the user Delete the allocation and allocate the slot again, the old job (named after the deleted lease, owned
by the login recorded for it) is in the way: Provision answers 14 (our own reservation being removed: retry), not 7
(reserved directly in OAR); the reconciler deletes that orphan and Provision then succeeds. Against the real OAR."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.testbed.oar.jobs import SUBMITTING, job_name
from tests.testbed.oar import test_backend
from tests.testbed.oar.conftest import OarJobs, wait_for_job
from tests.testbed.oar.test_backend import Site, job_of, settle

site = test_backend.site  # the fixture: an aggregate on the OAR backend, alice and bob mapped to their Unix users


def provision_cut_short(site: Site, oar_jobs: OarJobs, node: str) -> tuple[str, int]:
    """Allocate ``node`` and leave what a Provision whose worker was killed after OAR made the job leaves: its hold,
    its row (submitting, owner alice, written long ago) and the job in OAR. The lease's id and the job's."""
    site.allocate([node], site.start)
    (lease_id,) = site.lease_ids()
    site.aggregate.bookings.hold_for_provision([lease_id], datetime.now(UTC))
    site.backend.jobs.set(lease_id, SUBMITTING, owner="alice")
    made = oar_jobs.submit(user="alice", nodes=[node], start=site.start, walltime_s=3599, name=job_name(lease_id))
    settle(site, lease_id)
    return lease_id, made


def test_provision_held_by_a_call_cut_short_says_when_the_reconciler_finishes_it(site: Site, oar_jobs: OarJobs) -> None:
    provision_cut_short(site, oar_jobs, "node5")
    with pytest.raises(GeniError) as busy:
        site.provision()
    assert busy.value.code == GeniCode.BUSY
    assert site.backend.settle_s == 2 * 60 + 300  # 2 x timeout_s + reconcile_s, told by the aggregate's calendar
    assert f"reconciler finishes what it began within about {site.backend.settle_s} s" in busy.value.message


def test_our_own_deleted_leases_job_in_the_way_answers_busy_not_a_direct_oar_reservation(
    site: Site, oar_jobs: OarJobs, oar_client: OarClient
) -> None:
    old_lease, orphan = provision_cut_short(site, oar_jobs, "node6")
    site.delete()  # the allocation: OAR is not asked, the job stays until the reconciler's round
    site.allocate(["node6"], site.start)
    (new_lease,) = site.lease_ids()
    with pytest.raises(GeniError) as busy:
        site.provision()
    assert busy.value.code == GeniCode.BUSY, busy.value
    assert f"our own earlier reservation, OAR job {orphan} of lease {old_lease}" in busy.value.message
    assert "it has been deleted now" in busy.value.message and "retry Provision in a few seconds" in busy.value.message
    assert "reserved directly in OAR" not in busy.value.message

    # Provision deleted the orphan itself, as the reconciler would have: the retry needs no reconcile round.
    wait_for_job(oar_client, orphan, {"Error", "Terminated"})
    site.provision()
    assert job_of(site, new_lease) != orphan
    assert site.backend.reconcile().orphans_deleted == []


def test_our_deleted_leases_job_on_other_nodes_too_is_not_taken_for_our_orphan(
    site: Site, oar_jobs: OarJobs, oar_client: OarClient
) -> None:
    """A job of the recorded owner, named after our deleted lease, that holds more nodes than that lease had and is
    not the job recorded for it: the reconciler would not delete it, so Provision does not either and answers OAR's
    refusal (7), never a BUSY that would ask to retry for ever."""
    site.allocate(["node7"], site.start)
    (old_lease,) = site.lease_ids()
    site.backend.jobs.set(old_lease, SUBMITTING, owner="alice")
    other = oar_jobs.submit(
        user="alice", nodes=["node7", "node8"], start=site.start, walltime_s=3599, name=job_name(old_lease)
    )
    settle(site, old_lease)
    site.delete()
    site.allocate(["node7"], site.start)
    with pytest.raises(GeniError) as refused:
        site.provision()
    assert refused.value.code == GeniCode.REFUSED, refused.value
    assert "reserved directly in OAR" in refused.value.message
    assert oar_client.job(other) is not None and oar_client.job(other).state not in ("Error", "Terminated")


def test_a_job_named_after_our_deleted_lease_but_of_another_owner_is_still_a_direct_reservation(
    site: Site, oar_jobs: OarJobs
) -> None:
    """Anybody may name a job ``sfa-omf_<id>``: only the owner recorded for the lease makes it ours."""
    site.allocate(["node7"], site.start)
    (old_lease,) = site.lease_ids()
    site.backend.jobs.set(old_lease, SUBMITTING, owner="alice")
    oar_jobs.submit(user="bob", nodes=["node7"], start=site.start, walltime_s=3599, name=job_name(old_lease))
    site.delete()
    site.allocate(["node7"], site.start)
    with pytest.raises(GeniError) as refused:
        site.provision()
    assert refused.value.code == GeniCode.REFUSED, refused.value
    assert "reserved directly in OAR" in refused.value.message
