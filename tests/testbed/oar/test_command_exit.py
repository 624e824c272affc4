"""A lease's OAR job whose own command exits before the lease's end, against the real OAR 2.5.9 (scripts/oar.sh):
the job ran on one of the rig's execution nodes and its command ended by itself, so the reconciler records the
lease as failed once, with why, instead of reserving the slot again every round (each time with a notice)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sfa_omf.calendar.outbox import NotifyEvents
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.images.node_plans import LeasePlans
from sfa_omf.images.plan_signing import PlanSigner
from sfa_omf.testbed.oar.backend import COMMAND_ENDED
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.testbed.oar.jobs import FAILED, job_name
from sfa_omf.times import format_time
from tests.testbed.oar import test_backend
from tests.testbed.oar.conftest import wait_for_job

Site = test_backend.Site
site = test_backend.site  # the aggregate on the OAR backend (fixture)
job_of = test_backend.job_of
EXEC_NODES = ("127.0.0.2", "127.0.0.3")  # scripts/oar.sh's exec=YES nodes: OAR runs the job's command there


def free_exec_node(client: OarClient) -> str:
    """An exec node no job holds in the next ten minutes."""
    now = datetime.now(UTC)
    busy = {node for job in client.reservations(now, now + timedelta(minutes=10)) for node in job.nodes}
    free = [node for node in EXEC_NODES if node not in busy]
    assert free, f"every exec node of the shared OAR is held now: {sorted(busy)}"
    return free[0]


def test_a_job_whose_command_exits_by_itself_is_failed_once_not_reserved_again(
    site: Site, oar_client: OarClient, tmp_path: Path
) -> None:
    """The lease's job runs ``sudo -n COMMAND run PLAN`` (a lease with containers); with a command the node's sudo
    rule does not allow, sudo refuses and exits 1: the job ends Terminated with exit status 1 minutes before the
    lease's end. The reconciler marks it failed once, tells the users once, and does not submit it again."""
    node = free_exec_node(oar_client)
    site.aggregate.inventory.add_node(
        NodeSpec(test_backend.node_urn("execnode"), "execnode", grain_s=60, properties={"network_address": node})
    )
    person = site.pki.users["alice"]
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
        f'<node client_id="n" component_id="{test_backend.node_urn("execnode")}" exclusive="true"/></rspec>'
    )
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=6)
    options = {"geni_end_time": format_time(end)}  # from now: OAR launches the job at once
    site.aggregate.allocate(person.chain, site.pki.slice_urn, [person.slice_cred], rspec, options)
    (lease_id,) = site.lease_ids()
    plans = LeasePlans(tmp_path / "plans", PlanSigner(tmp_path / "plan-signing.key"))
    plans.directory.mkdir()
    plans.plan_path(lease_id).write_text("{}")  # its presence makes the job run the container command
    site.backend.container_plans = plans
    site.backend.container_command = "/bin/false"  # no sudo rule allows it: sudo -n refuses, exit status 1
    site.provision()
    job_id = job_of(site, lease_id)
    try:
        ended = wait_for_job(oar_client, job_id, {"Error", "Terminated"}, within_s=200)  # the scheduler may be late
        assert (ended.state, ended.exit_code) == ("Terminated", 1 << 8), ended
        first = site.backend.reconcile()
        assert lease_id in first.failed and first.resubmitted == [], first
        row = site.backend.jobs.get(lease_id)
        assert row is not None and row.state == FAILED and row.message.startswith(COMMAND_ENDED)
        assert "its command exited with status 1" in row.message
        assert "stderr file on the job's first node" in row.message and "Delete the lease and allocate" in row.message
        again = site.backend.reconcile()
        assert lease_id not in again.failed and again.resubmitted == [], again
        assert job_of(site, lease_id) == job_id, "no job was submitted again"
        failed = [
            e for e in NotifyEvents(site.aggregate.database).since(end - timedelta(hours=1)) if e.event == "failed"
        ]
        assert len(failed) == 1 and "its command exited with status 1" in failed[0].payload["reason"], failed
        (sliver,) = site.status()
        assert sliver["geni_operational_status"] == "geni_failed" and COMMAND_ENDED in sliver["geni_error"]
    finally:
        for output in Path("/home/alice").glob(f"OAR.{job_name(lease_id)}.*.std*"):  # (and of any job made again)
            output.unlink()
