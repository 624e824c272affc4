"""Lease containers on the OAR backend, with the shared real OAR 2.5.9 and real LXC: the lease's OAR job runs on one
of scripts/oar.sh's execution nodes (127.0.0.2, 127.0.0.3: OAR really executes jobs there), and its command
(``sudo -n sfa-omf-lease-containers run PLAN``, as the job's user) creates and starts the containers the aggregate
planned; the aggregate never runs LXC itself (its LxcHost fails the test if used). Killing the job (oardel behind
sfa-omf's back) or Delete through the aggregate destroys them on the node (OAR's node epilogue) — as the OAR Cloud
project checked by hand. Each test books a short slot from now on an exec node nothing holds now, and deletes its
job and containers at the end whatever happens."""

from __future__ import annotations

import contextlib
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import GeniError
from sfa_omf.images.instances import DESTROYED, FAILED, RUNNING, Instance, Instances
from sfa_omf.images.lxc import LxcHost
from sfa_omf.images.node_plans import LeasePlans, plans_directory
from sfa_omf.images.plan_signing import PlanSigner
from sfa_omf.images.store import ImageStore
from sfa_omf.registry.accounts import Accounts
from sfa_omf.testbed.oar.backend import PLAN_REFUSED, OarTestbed
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.testbed.oar.jobs import FAILED as JOB_FAILED
from sfa_omf.testbed.oar.jobs import job_name
from sfa_omf.times import format_time
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki
from tests.images.lxc_env import bridge, bridge_network, key_pair, needs_lxc, ssh
from tests.testbed.oar.conftest import RIG_PLAN_KEY, wait_for_job
from tests.testbed.oar.test_faults import FORWARD, FORWARD_THEN_502, jobs_named, oar_through_fault_proxy

pytestmark = needs_lxc
NODE = "urn:publicid:IDN+testbed+node+execnode"
EXEC_NODES = ("127.0.0.2", "127.0.0.3")  # scripts/oar.sh's exec=YES nodes
FINAL = {"Error", "Terminated"}


class AggregateLxcUntouched(LxcHost):
    """The aggregate's own LxcHost on OAR: it names the containers and tells the nodes the bridge and LXC directory;
    acting on LXC through it fails the test (the job's command on the node does that)."""

    def _used(self, *args: Any, **kwargs: Any) -> Any:
        pytest.fail("the aggregate acted on LXC itself on the OAR backend")

    launch = create = start = stop = destroy = state = made = instances = destroy_lease = _used


@dataclass
class Site:
    am: Aggregate
    backend: OarTestbed
    node_lxc: LxcHost  # the test's own view of the node's containers (the rig's node is this host)
    plans: LeasePlans
    jobs: list[int]  # their output files in alice's home go at the end


def free_exec_node(client: OarClient) -> str:
    """An exec node no job holds in the next ten minutes."""
    now = datetime.now(UTC)
    busy = {node for job in client.reservations(now, now + timedelta(minutes=10)) for node in job.nodes}
    free = [node for node in EXEC_NODES if node not in busy]
    if not free:
        pytest.fail(f"every exec node of the shared OAR is held now: {sorted(busy)}")
    return free[0]


@pytest.fixture
def site(oar_url: str, oar_users: tuple[str, ...], pki: DemoPki, tmp_path: Path) -> Iterator[Site]:
    database = Database(sqlite_url(str(tmp_path / "oar-lxc.sqlite")))
    database.upgrade()
    client = OarClient(oar_url, timeout_s=60)
    store = ImageStore(database, tmp_path / "images")
    # Root's, as the node command requires, and signed with the key the rig's nodes trust.
    plans = LeasePlans(plans_directory(store.directory), PlanSigner(RIG_PLAN_KEY))
    backend = OarTestbed(client, database, "testbed", cache_s=0, container_plans=plans)  # job state every round
    accounts = Accounts(database)
    accounts.pin(pki.users["alice"].chain[0].urn or "", "alice")
    lxc_path = str(tmp_path / "lxc")
    instances = Instances(
        database, AggregateLxcUntouched(bridge(), lxc_path=lxc_path), str(bridge_network().network), store, plans=plans
    )
    am = Aggregate(
        AggregateSettings(authority_hrn="testbed"),
        database,
        CredentialVerifier(pki.roots),
        Policy(min_duration_s=60),
        backend=backend,
        accounts=accounts,
        images=store,
        instances=instances,
    )
    am.inventory.add_node(
        NodeSpec(NODE, "execnode", grain_s=60, properties={"network_address": free_exec_node(client)})
    )
    made = Site(am, backend, LxcHost(bridge(), lxc_path=lxc_path), plans, [])
    yield made
    for lease in am.bookings.leases(active_only=False):  # leave nothing in OAR, nor in LXC
        with contextlib.suppress(GeniError):
            backend.release(lease)
    for record in made.node_lxc.instances():
        made.node_lxc.destroy(record.name)
    for job_id in made.jobs:
        for output in Path("/home/alice").glob(f"OAR.*.{job_id}.std*"):
            output.unlink()


def until(what: str, check: Callable[[], Any], within_s: float = 60) -> Any:
    """Poll ``check`` (bounded) until it returns something true; fail saying ``what`` otherwise."""
    deadline = time.monotonic() + within_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within_s} s")
        time.sleep(0.5)


def provision_running(site: Site, pki: DemoPki, tmp_path: Path) -> tuple[int, Path, list[Instance]]:
    """A lease of two containers from now, provisioned; returns its job id, the slice user's key and the containers
    once they run (the job's command made them on the node)."""
    am = site.am
    alice = pki.users["alice"]
    key, public = key_pair(tmp_path, "alice")
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:inst="http://sfa-omf.org/rspec/ext/instances/1">'
        f'<node client_id="n" component_id="{NODE}" exclusive="true">'
        '<sliver_type name="lxc" inst:count="2"/></node></rspec>'
    )
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=5)
    options = {
        "geni_end_time": format_time(end),  # from now: the slot has begun, so OAR launches the job at once
        "geni_users": [{"urn": alice.chain[0].urn, "keys": [public]}],
    }
    am.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, options)
    am.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], options)
    (lease,) = am.bookings.leases(slice_urn=pki.slice_urn)
    row = site.backend.jobs.get(lease.id)
    assert row is not None and row.job_id is not None
    site.jobs.append(row.job_id)
    job = site.backend.client.job(row.job_id)
    assert job is not None
    # An ordinary job (no noop type: OAR runs its command), whose command is the node side with the lease's plan.
    assert job.types == ()
    assert job.command == f"sudo -n /usr/local/sbin/sfa-omf-lease-containers run {site.plans.plan_path(lease.id)}"
    wait_for_job(site.backend.client, row.job_id, {"Running"}, within_s=200)  # OAR's scheduler may start it late
    assert am.instances is not None
    instances = am.instances

    def running() -> list[Instance]:
        am.run_instances()  # the server's round: the rows follow what the node reported
        found = instances.of_lease(lease.id)
        failed = [(record.name, record.error) for record in found if record.state == FAILED]
        if failed:
            pytest.fail(f"the job's command failed containers: {failed}")
        return found if found and all(record.state == RUNNING for record in found) else []

    return row.job_id, key, until("the job's command reports both containers running", running, within_s=120)


def test_a_provision_whose_answer_was_lost_keeps_the_plan_and_addresses_its_job_needs(
    site: Site, pki: DemoPki, oar_url: str
) -> None:
    """OAR made the lease's job but its answer was lost (a proxy's 502 after forwarding the reservation, made by
    test_faults.py's ``OarProxyFaultStandIn``): Provision fails, and the job OAR made (which the next Provision, Delete
    or the reconciler finds) keeps its plan and its containers' addresses, as after a time-out: a job whose plan is
    gone would fail when it starts, and an address given back would be handed out twice."""
    am = site.am
    alice = pki.users["alice"]
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:inst="http://sfa-omf.org/rspec/ext/instances/1">'
        f'<node client_id="n" component_id="{NODE}" exclusive="true">'
        '<sliver_type name="lxc" inst:count="2"/></node></rspec>'
    )
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(hours=3)  # (the job does not run)
    window = {"geni_start_time": format_time(start), "geni_end_time": format_time(start + timedelta(minutes=5))}
    am.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, window)
    (lease,) = am.bookings.leases(slice_urn=pki.slice_urn)

    def lose_the_reservations_answer(method: str, path: str) -> str:
        return FORWARD_THEN_502 if (method, path) == ("POST", "/oarapi/jobs.json") else FORWARD

    with oar_through_fault_proxy(site, oar_url, lose_the_reservations_answer), pytest.raises(GeniError) as failed:
        am.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    site.jobs.extend(jobs_named(site.backend.client, lease.id, start))  # (deleted at the end by the fixture)
    assert failed.value.maybe_made, failed.value
    assert len(site.jobs) == 1, "OAR made the job all the same"
    assert site.plans.plan_path(lease.id).exists(), "the plan the job runs is kept"
    assert am.instances is not None
    records = am.instances.of_lease(lease.id)
    assert len(records) == 2 and all(record.address for record in records), records


def container_states(status: dict[str, Any]) -> dict[str, str]:
    return {
        sliver["geni_sliver_urn"]: sliver["geni_operational_status"]
        for sliver in status["geni_slivers"]
        if "-c" in sliver["geni_sliver_urn"].rsplit("+", 1)[-1]
    }


def test_the_jobs_command_makes_the_containers_and_killing_the_job_destroys_them(
    site: Site, pki: DemoPki, tmp_path: Path
) -> None:
    am, client = site.am, site.backend.client
    alice = pki.users["alice"]
    job_id, key, containers = provision_running(site, pki, tmp_path)
    job = client.job(job_id, with_nodes=True)
    assert job is not None and job.nodes[0] in EXEC_NODES and job.owner == "alice"
    # Made on the node by the job's command (the aggregate's LxcHost was never used), with the planned addresses.
    made = {record.name: record for record in site.node_lxc.instances()}
    assert sorted(made) == sorted(record.name for record in containers)
    assert all(made[record.name].state == "RUNNING" for record in containers)
    assert {made[record.name].address for record in containers} == {record.address for record in containers}
    stdout = sorted(Path("/home/alice").glob(f"OAR.*.{job_id}.stdout"))
    assert stdout, "the job left no stdout file in alice's home"
    said = stdout[0].read_text()
    assert all(f"container {record.name}: running" in said for record in containers), said
    # Status: each container a sliver, ready (it runs and answers SSH); the slice user's key logs in.
    status = am.status(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert sorted(container_states(status).values()) == ["geni_ready", "geni_ready"]
    assert ssh(key, containers[0].host, "true").returncode == 0
    client.delete_job(job_id, user="alice")  # behind sfa-omf's back
    wait_for_job(client, job_id, FINAL)
    until("the node destroyed the containers", lambda: site.node_lxc.instances() == [])
    assert ssh(key, containers[0].host, "true").returncode != 0

    def rows_destroyed() -> bool:
        am.run_instances()
        return all(record.state == DESTROYED for record in am.instances.listing(live_only=False))  # type: ignore[union-attr]

    until("the rows say destroyed", rows_destroyed)


def test_stop_start_restart_and_save_act_on_the_containers_the_job_runs(
    site: Site, pki: DemoPki, tmp_path: Path
) -> None:
    """PerformOperationalAction hands each action to the job's run on its node (the aggregate never runs LXC here)
    and answers with what the node reported; a save becomes the user's image, which a later Allocate can name."""
    am = site.am
    alice = pki.users["alice"]
    _, key, containers = provision_running(site, pki, tmp_path)
    first = containers[0]

    def act(action: str, options: dict[str, Any] | None = None) -> list[str]:
        answer = am.perform_operational_action(alice.chain, [pki.slice_urn], [alice.slice_cred], action, options or {})
        return sorted(container_states({"geni_slivers": answer}).values())

    def status() -> list[str]:
        return sorted(container_states(am.status(alice.chain, [pki.slice_urn], [alice.slice_cred], {})).values())

    assert act("geni_stop") == ["geni_notready", "geni_notready"]
    assert {record.state for record in site.node_lxc.instances()} == {"STOPPED"}
    assert ssh(key, first.host, "true").returncode != 0 and status() == ["geni_notready", "geni_notready"]
    assert act("geni_start") == ["geni_ready", "geni_ready"]  # the node waited for SSH before it reported
    assert {record.state for record in site.node_lxc.instances()} == {"RUNNING"}
    assert ssh(key, first.host, "echo made-in-the-lease > /etc/motd").returncode == 0
    restarted = act("geni_restart")
    errors = [(i.name, i.state, i.error) for i in am.instances.of_lease(first.lease_id)]  # type: ignore[union-attr]
    assert restarted == ["geni_ready", "geni_ready"], errors
    assert status() == ["geni_ready", "geni_ready"]
    assert ssh(key, first.host, "cat /etc/motd").stdout.strip() == "made-in-the-lease"  # restarted as it was

    act("sfa_omf_save_image", {"sfa_omf_label": "saved-on-oar", "sfa_omf_instance": first.name})
    image = am.images.get("saved-on-oar")
    assert image is not None and image.private and image.added_by == alice.chain[0].urn
    with tarfile.open(image.path) as tar:
        motd = tar.extractfile("./etc/motd")
        assert motd is not None and motd.read() == b"made-in-the-lease\n"
        assert not [name for name in tar.getnames() if name.startswith("./root/.ssh")]
    assert list(site.plans.directory.glob("**/*.save-*.tar")) == []  # the node's archive is not kept
    # A later Allocate names the new image (Allocate only: no second job on the shared OAR).
    (lease,) = am.bookings.leases(slice_urn=pki.slice_urn)
    later = lease.end + timedelta(minutes=10)
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:inst="http://sfa-omf.org/rspec/ext/instances/1">'
        f'<node client_id="m" component_id="{NODE}" exclusive="true">'
        '<sliver_type name="lxc"><disk_image name="saved-on-oar"/></sliver_type></node></rspec>'
    )
    options = {"geni_start_time": format_time(later), "geni_end_time": format_time(later + timedelta(minutes=5))}
    am.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, options)
    assert am.instances is not None
    images = {i.image for found in am.instances.of_leases(x.id for x in am.bookings.leases()).values() for i in found}
    assert "saved-on-oar" in images


def test_delete_through_the_aggregate_destroys_the_containers_on_the_node(
    site: Site, pki: DemoPki, tmp_path: Path
) -> None:
    am, client = site.am, site.backend.client
    alice = pki.users["alice"]
    job_id, _, containers = provision_running(site, pki, tmp_path)
    (lease,) = am.bookings.leases(slice_urn=pki.slice_urn)
    am.delete(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert am.instances is not None
    assert {record.state for record in am.instances.of_lease(lease.id)} == {DESTROYED}
    assert not site.plans.plan_path(lease.id).exists()
    wait_for_job(client, job_id, FINAL)
    until("the node destroyed the containers", lambda: site.node_lxc.instances() == [])
    assert len(containers) == 2


def test_a_job_whose_command_refuses_its_plan_fails_the_containers_with_why_and_where(
    site: Site, pki: DemoPki, tmp_path: Path
) -> None:
    """The plans directory is one anybody may change (an operator's mistake): the node command refuses the plan (exit
    status 2), its job ends Terminated before the node reported anything, and Status says so on each container, with
    the exit status and where the job's stderr is, instead of leaving them "planned" until the slot's end."""
    am, client = site.am, site.backend.client
    alice = pki.users["alice"]
    site.plans.directory.mkdir(parents=True)
    site.plans.directory.chmod(0o777)  # not sticky: the node command trusts no plan in it
    _, public = key_pair(tmp_path, "alice")
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:inst="http://sfa-omf.org/rspec/ext/instances/1">'
        f'<node client_id="n" component_id="{NODE}" exclusive="true">'
        '<sliver_type name="lxc" inst:count="2"/></node></rspec>'
    )
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=5)
    options = {"geni_end_time": format_time(end), "geni_users": [{"urn": alice.chain[0].urn, "keys": [public]}]}
    am.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, options)
    am.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], options)
    (lease,) = am.bookings.leases(slice_urn=pki.slice_urn)
    row = site.backend.jobs.get(lease.id)
    assert row is not None and row.job_id is not None
    site.jobs.append(row.job_id)
    ended = wait_for_job(client, row.job_id, FINAL, within_s=200)  # OAR's scheduler may start it late
    assert ended.state == "Terminated", ended
    assert am.instances is not None
    instances = am.instances

    def failed() -> list[Instance]:
        am.run_instances()
        found = instances.of_lease(lease.id)
        return found if found and all(record.state == "failed" for record in found) else []

    until("the rows say failed", failed)
    stderr = f"/home/alice/OAR.{job_name(lease.id)}.{row.job_id}.stderr"
    status = am.status(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    containers = [s for s in status["geni_slivers"] if "-c" in s["geni_sliver_urn"].rsplit("+", 1)[-1]]
    assert len(containers) == 2
    for sliver in containers:
        assert sliver["geni_operational_status"] == "geni_failed"
        error = sliver["geni_error"]
        assert f"OAR job {row.job_id} terminated before the lease's end (its command exited with status 2)" in error
        assert f"its stderr is {stderr} on node {site.am.inventory.list_nodes()[0].properties['network_address']}" in (
            error
        )
    said = Path(stderr).read_text()
    assert "refused" in said and "may be changed by others" in said, said
    assert site.node_lxc.instances() == []  # nothing was made
    # Reserving it again would be refused the same way, every round with a notice: the reconciler says it once.
    first = site.backend.reconcile()
    assert lease.id in first.failed and lease.id not in first.resubmitted, first
    recorded = site.backend.jobs.get(lease.id)
    assert recorded is not None and recorded.state == JOB_FAILED and recorded.message.startswith(PLAN_REFUSED)
    again = site.backend.reconcile()
    assert lease.id not in again.failed and lease.id not in again.resubmitted, again


def test_the_node_command_under_sudo_never_imports_a_package_of_the_callers(oar_url: str) -> None:
    """Any user may run the node command as root through the rig's sudo rule: run from a directory holding a package
    named like ours, root must still run the installed command (``python -m`` would import the caller's first)."""
    import shutil
    import subprocess
    import tempfile

    wrapper = "/usr/local/sbin/sfa-omf-lease-containers"  # scripts/oar.sh up installs it with the sudo rule
    shadow = Path(tempfile.mkdtemp(prefix="sfaomf-shadow-", dir="/tmp"))
    try:
        package = shadow / "sfa_omf" / "images"
        package.mkdir(parents=True)
        (shadow / "sfa_omf" / "__init__.py").write_text("")
        (package / "__init__.py").write_text("")
        (package / "node_containers.py").write_text("import os\nprint('SHADOWED as', os.getuid())\n")
        for path in [shadow, *shadow.rglob("*")]:
            path.chmod(0o755)
        ran = subprocess.run(
            ["runuser", "-u", "alice", "--", "sh", "-c", f"cd {shadow} && sudo -n {wrapper} run {shadow}/no-plan"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "SHADOWED" not in ran.stdout + ran.stderr
        assert ran.returncode == 2 and "refused" in ran.stderr, ran.stderr  # the installed command ran, and refused
    finally:
        shutil.rmtree(shadow)
