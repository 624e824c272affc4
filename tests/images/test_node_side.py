"""Lease containers run by a testbed's jobs (the OAR backend), without OAR nor LXC: the plan the aggregate writes at
Provision and what the node command accepts of it, the rows following the node side's reports, Delete removing the
plan, and the OAR job the backend makes of a lease with a plan. The real thing, with OAR
running the job on a node and LXC, is tests/testbed/oar/test_containers.py."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.states import Operational
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.models import RepositoryImage
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import LeaseRecord, NodeSpec
from sfa_omf.errors import GeniCode, GeniError, Reason
from sfa_omf.images import node_containers
from sfa_omf.images.instances import DESTROYED, FAILED, PLANNED, RUNNING, Instances
from sfa_omf.images.lxc import LxcHost
from sfa_omf.images.node_plans import (
    LeasePlan,
    LeasePlans,
    PlanError,
    PlannedContainer,
    read_states,
    report_path_of,
    write_states,
)
from sfa_omf.images.plan_signing import PlanSigner
from sfa_omf.images.store import ImageStore
from sfa_omf.registry.accounts import Accounts
from sfa_omf.testbed.base import SliverHealth
from sfa_omf.testbed.embedded import EmbeddedTestbed
from sfa_omf.testbed.oar.backend import OarTestbed
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.times import format_time
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki
from tests.images.lxc_env import address, bridge, key_pair, needs_lxc, ssh
from tests.images.plans_env import node_script, plan_file, report_of

NODE = "urn:publicid:IDN+testbed+node+node1"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForPlansOnly0000000000000000000000 alice"
PLAN = LeasePlan(
    lease_id="0f94abcd",
    user="alice",
    bridge="sfaomf-lxc0",
    lxc_path="/var/lib/lxc",
    ssh_timeout_s=30.0,
    keys=(KEY,),
    containers=(PlannedContainer("sfaomf-0f94abcd-0", "10.217.0.2/24", "/srv/images/tools.tar"),),
    # A slot that runs now (the node command runs a plan only then), whatever the time of day the tests run at.
    slot_start_s=int(time.time()) - 3600,
    slot_end_s=int(time.time()) + 86400,
    nodes=("127.0.0.1",),  # this host (the node command runs a plan only on one of its nodes)
)


class NoLxc(LxcHost):
    """The aggregate's LxcHost when the testbed's jobs run the containers: any LXC action through it fails."""

    def _used(self, *args: Any, **kwargs: Any) -> Any:
        pytest.fail("the aggregate acted on LXC itself")

    launch = create = start = stop = destroy = state = made = instances = destroy_lease = _used


# -- the plan and what the node command accepts -----------------------------------------------------------------
def test_a_plan_reads_back_as_written() -> None:
    assert LeasePlan.from_json(PLAN.to_json()) == PLAN


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"user": "alice; rm -rf /"}, "user"),
        ({"lxc_path": "lxc"}, "lxc_path"),
        ({"keys": ["not a key\nsecond line"]}, "keys"),
        ({"ssh_timeout_s": 0}, "ssh_timeout_s"),
        ({"containers": ()}, "no containers"),
        ({"containers": (PlannedContainer("../etc", "10.217.0.2/24", ""),)}, "name"),
        ({"containers": (PlannedContainer("c0", "10.217.0.2", ""),)}, "prefix"),
        ({"containers": (PlannedContainer("c0", "10.217.0.2/24", "tools.tar"),)}, "absolute"),
        ({"containers": (PlannedContainer("c0", "10.217.0.2/24", ""), PlannedContainer("c0", "10.217.0.3/24", ""))},
         "twice"),
        ({"slot_start_s": 1_800_000_000, "slot_end_s": 1_800_000_000}, "end after it starts"),
        ({"slot_start_s": True, "slot_end_s": 1_800_000_000}, "epoch seconds"),
        ({"slot_start_s": None, "slot_end_s": 1_800_000_000}, "epoch seconds"),
        ({"slot_start_s": 1_800_000_000, "slot_end_s": 10**12}, "before the year 10000"),
        ({"revision": -1}, "revision"),
        ({"revision": True}, "revision"),
    ],
)  # fmt: skip
def test_a_plan_the_aggregate_would_not_write_is_refused(change: dict[str, Any], words: str) -> None:
    with pytest.raises(PlanError, match=words):
        LeasePlan.from_json(replace(PLAN, **change).to_json())


def test_the_node_command_trusts_only_root_owned_plans(plan_signer: PlanSigner, tmp_path: Path) -> None:
    plans = LeasePlans(tmp_path / "leases", plan_signer)
    path = plans.write(PLAN)
    if os.geteuid() == 0:
        assert node_containers.untrusted(path) == ""
        os.chown(path, 65534, -1)  # nobody's
    assert "not owned by root or a plan writer" in node_containers.untrusted(path)


def test_the_node_command_trusts_the_plan_writers_an_operator_lists(
    plan_signer: PlanSigner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The aggregate may run as a service account (sfa-omf): listed in /etc/sfa-omf/plan-writers, its plans count;
    a job of that very account is then refused (it could write its own plan)."""
    if os.geteuid() != 0:
        pytest.fail("the node command's tests run as root (LXC needs it; scripts/test.sh runs them so)")
    writers = tmp_path / "plan-writers"
    writers.write_text("# the aggregate's account\nnobody\nno-such-user\n")
    monkeypatch.setattr(node_containers, "WRITERS_FILE", writers)
    path = LeasePlans(tmp_path / "leases", plan_signer).write(PLAN)
    for item in (path, path.parent):
        os.chown(item, 65534, -1)
    assert node_containers.untrusted(path, node_containers.plan_writers()) == ""
    monkeypatch.setenv("SUDO_USER", "nobody")
    assert node_containers.run(str(path)) == 2
    assert "nobody writes plans" in capsys.readouterr().err


def test_the_node_command_refuses_a_directory_others_may_change(plan_signer: PlanSigner, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the node command's tests run as root (LXC needs it; scripts/test.sh runs them so)")
    path = LeasePlans(tmp_path / "leases", plan_signer).write(PLAN)
    path.parent.chmod(0o777)  # not sticky: anybody could replace the plan
    assert "may be changed by others" in node_containers.untrusted(path)
    path.parent.chmod(0o1777)  # sticky (like /tmp): nobody replaces root's file
    assert node_containers.untrusted(path) == ""


def test_the_node_command_refuses_a_plan_for_another_users_job(
    plan_signer: PlanSigner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() != 0:
        pytest.fail("the node command's tests run as root (LXC needs it; scripts/test.sh runs them so)")
    path = LeasePlans(tmp_path / "leases", plan_signer).write(PLAN)
    monkeypatch.setenv("SUDO_USER", "bob")  # bob's job names alice's plan
    runs = tmp_path / "runs"
    monkeypatch.setattr(node_containers, "RUNS_DIR", runs)
    assert node_containers.run(str(path)) == 2
    assert "for alice's job, not bob's" in capsys.readouterr().err
    assert not runs.exists() and not report_path_of(path, "127.0.0.1").exists()  # nothing done


@pytest.mark.parametrize(
    ("slot", "words"),
    [
        ((-7200, -3600), "which is over"),  # a plan kept after its slot (Delete failed to remove it, say)
        ((3600, 7200), "which has not begun"),  # the lease's user running it before the slot
        ((None, None), "Provision the lease's slivers again"),  # written by an aggregate older than slots
    ],
)
def test_the_node_command_refuses_a_plan_whose_slot_does_not_run_now(
    plan_signer: PlanSigner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    slot: tuple[int | None, int | None],
    words: str,
) -> None:
    """The plan's user may run the node command through its sudo rule at any time: outside the lease's slot (or for a
    plan without one) it is refused before anything is made (exit 2, why on stderr)."""
    if os.geteuid() != 0:
        pytest.fail("the node command's tests run as root (LXC needs it; scripts/test.sh runs them so)")
    now = int(time.time())
    start, end = (None if moment is None else now + moment for moment in slot)
    path = LeasePlans(tmp_path / "leases", plan_signer).write(replace(PLAN, slot_start_s=start, slot_end_s=end))
    monkeypatch.setenv("SUDO_USER", "alice")
    runs = tmp_path / "runs"
    monkeypatch.setattr(node_containers, "RUNS_DIR", runs)
    assert node_containers.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"refused: plan {path} ") and words in err
    assert not runs.exists() and not report_path_of(path, "127.0.0.1").exists()  # nothing done


def test_a_slot_runs_from_a_little_before_its_start_to_its_end() -> None:
    """OAR starts the job at the slot's start: a node clock up to SLOT_EARLY_S ahead is let through."""
    early = node_containers.SLOT_EARLY_S
    plan = replace(PLAN, slot_start_s=1_800_000_000, slot_end_s=1_800_003_600)
    assert node_containers.slot_refusal(plan, 1_800_000_000 - early) == ""
    assert node_containers.slot_refusal(plan, 1_800_001_000) == ""
    assert "not begun" in node_containers.slot_refusal(plan, 1_800_000_000 - early - 1)
    assert "2027-01-15T08:00:00Z to 2027-01-15T09:00:00Z" in node_containers.slot_refusal(plan, 1_800_003_600)


# -- the aggregate: plan at Provision, follow the node's reports --------------------------------------------------
@dataclass
class Site:
    am: Aggregate
    instances: Instances
    plans: LeasePlans


@pytest.fixture
def site(plan_signer: PlanSigner, pki: DemoPki, tmp_path: Path) -> Iterator[Site]:
    database = Database(sqlite_url(str(tmp_path / "am.sqlite")))
    database.upgrade()
    store = ImageStore(database, tmp_path / "images")
    plans = LeasePlans(tmp_path / "images" / "leases", plan_signer)
    instances = Instances(database, NoLxc("br-test", lxc_path="/srv/lxc"), "10.217.0.0/24", store, plans=plans)
    accounts = Accounts(database)
    accounts.pin(pki.users["alice"].chain[0].urn or "", "alice")
    am = Aggregate(
        AggregateSettings(authority_hrn="testbed"),
        database,
        CredentialVerifier(pki.roots),
        Policy(min_duration_s=60),
        accounts=accounts,
        images=store,
        instances=instances,
    )
    am.inventory.add_node(NodeSpec(NODE, "node1", grain_s=60))
    yield Site(am, instances, plans)


def provision(site: Site, pki: DemoPki, image: str = "", before: Callable[[], object] = lambda: None) -> str:
    alice = pki.users["alice"]
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:inst="http://sfa-omf.org/rspec/ext/instances/1">'
        f'<node client_id="n" component_id="{NODE}" exclusive="true">'
        f'<sliver_type name="lxc" inst:count="2">{image and f"<disk_image name={image!r}/>"}</sliver_type>'
        "</node></rspec>"
    )
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=30)
    options = {"geni_end_time": format_time(end), "geni_users": [{"urn": alice.chain[0].urn, "keys": [KEY]}]}
    site.am.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, options)
    before()
    site.am.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], options)
    (lease,) = site.am.bookings.leases(slice_urn=pki.slice_urn)
    return lease.id


def test_provision_writes_the_plan_the_node_command_reads(site: Site, pki: DemoPki) -> None:
    lease_id = provision(site, pki)
    plan = plan_file(site.plans, lease_id)
    records = site.instances.of_lease(lease_id)
    assert plan.user == "alice" and plan.keys == (KEY,)
    (lease,) = site.am.bookings.leases(slice_urn=pki.slice_urn)
    assert (plan.slot_start_s, plan.slot_end_s) == (int(lease.start.timestamp()), int(lease.end.timestamp()))
    assert (plan.bridge, plan.lxc_path) == ("br-test", "/srv/lxc")
    assert [(c.name, c.address) for c in plan.containers] == [(r.name, r.address) for r in records]
    assert len({c.address for c in plan.containers}) == 2 and all(r.state == PLANNED for r in records)


def test_a_failed_provision_leaves_no_plan_and_gives_the_addresses_back(site: Site, pki: DemoPki) -> None:
    """The OAR API does not answer (nothing listens on port 9): Provision fails and writes nothing."""
    site.am.backend = OarTestbed(
        OarClient("http://127.0.0.1:9/oarapi"), site.am.database, "testbed", container_plans=site.plans
    )
    with pytest.raises(GeniError):
        provision(site, pki)
    (lease,) = site.am.bookings.leases(slice_urn=pki.slice_urn)
    assert lease.state == "allocated" and not site.plans.plan_path(lease.id).exists()
    assert {(r.state, r.address) for r in site.instances.of_lease(lease.id)} == {(PLANNED, "")}


def test_an_image_removed_since_allocate_is_refused_at_provision_and_nothing_is_written(
    site: Site, pki: DemoPki, tmp_path: Path
) -> None:
    archive = tmp_path / "tools.tar"
    with tarfile.open(archive, "w"):
        pass
    site.instances.images.add(archive, "tools", "urn:publicid:IDN+testbed+user+alice", datetime.now(UTC))

    def forget_image() -> None:  # the store refuses to remove an image a lease uses: its row goes behind its back
        with site.am.database.write() as session:
            session.execute(delete(RepositoryImage).where(RepositoryImage.label == "tools"))

    with pytest.raises(GeniError) as refused:
        provision(site, pki, "tools", before=forget_image)
    assert refused.value.code == GeniCode.SEARCHFAILED and "tools" in refused.value.message
    (lease,) = site.am.bookings.leases(slice_urn=pki.slice_urn)
    assert lease.state == "allocated" and not site.plans.plan_path(lease.id).exists()
    assert {(r.state, r.address) for r in site.instances.of_lease(lease.id)} == {(PLANNED, "")}


def test_a_job_that_ends_before_its_node_reported_fails_the_containers_saying_so(site: Site, pki: DemoPki) -> None:
    lease_id = provision(site, pki)
    ended = SliverHealth(Operational.FAILED, "OAR job 12: Error")
    assert site.instances.tick(datetime.now(UTC), lambda _slice: [], lambda _slice, _lease: ended) == ([], [])
    for record in site.instances.of_lease(lease_id):
        assert record.state == FAILED and record.address  # held until the slot ends, like any live row
        assert "OAR job 12: Error" in record.error and "before its node reported" in record.error
        assert "exit status 2" not in record.error, "no refusal hinted where the job did not exit with status 2"
    site.instances.tick(datetime.now(UTC), lambda _slice: [], lambda _slice, _lease: ended)
    assert {r.state for r in site.instances.of_lease(lease_id)} == {FAILED}  # not destroyed while the slot runs


def test_a_job_that_terminated_before_its_node_reported_fails_the_containers_once(site: Site, pki: DemoPki) -> None:
    """OAR reads Terminated (not Error) for a job whose command exited, e.g. the node command refusing its plan (exit
    status 2): the rows fail with the backend's words, written once (later rounds write nothing)."""
    lease_id = provision(site, pki)
    waiting = SliverHealth(Operational.NOTREADY)  # a job not started yet (Waiting): nothing is failed
    site.instances.tick(datetime.now(UTC), lambda _slice: [], lambda _slice, _lease: waiting)
    assert {r.state for r in site.instances.of_lease(lease_id)} == {PLANNED}
    words = "OAR job 12 terminated before the lease's end (its command exited with status 2); its stderr is /x"
    ended = SliverHealth(Operational.NOTREADY, words, ended=True)
    assert site.instances.tick(datetime.now(UTC), lambda _slice: [], lambda _slice, _lease: ended) == ([], [])
    for record in site.instances.of_lease(lease_id):
        assert record.state == FAILED and record.address
        assert words in record.error and "exit status 2: the node command refused" in record.error
    with site.am.database.read() as session:
        before = read_generation(session)
    site.instances.tick(datetime.now(UTC), lambda _slice: [], lambda _slice, _lease: ended)
    with site.am.database.read() as session:
        assert read_generation(session) == before
    assert {r.state for r in site.instances.of_lease(lease_id)} == {FAILED}


def test_new_keys_reach_the_plan_of_a_provisioned_lease(site: Site, pki: DemoPki) -> None:
    lease_id = provision(site, pki)
    alice = pki.users["alice"]
    first = site.plans.read(lease_id)
    other = KEY.replace("alice", "alice-laptop").replace("Fake", "Else")
    users = {"geni_users": [{"urn": alice.chain[0].urn, "keys": [other]}]}
    site.am.perform_operational_action(alice.chain, [pki.slice_urn], [alice.slice_cred], "geni_update_users", users)
    plan = site.plans.read(lease_id)
    assert first is not None and plan is not None
    assert plan.keys == (other,) and plan.plan_id == first.plan_id  # the same plan, the new keys
    more = KEY.replace("alice", "alice-desk").replace("Fake", "More")
    options = {"geni_users": [{"urn": alice.chain[0].urn, "keys": [other, more]}]}
    site.am.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], options)  # Provision again, more keys
    plan = site.plans.read(lease_id)
    assert plan is not None and set(plan.keys) == {other, more}


def test_provision_again_gives_a_plan_without_a_slot_its_slot_and_renew_moves_it(site: Site, pki: DemoPki) -> None:
    """A plan an aggregate older than slots wrote is refused by the node side: Provision again (with geni_users)
    rewrites it with the lease's slot, the same plan otherwise; Renew moves the plan's end with the lease's."""
    lease_id = provision(site, pki)
    first = site.plans.read(lease_id)
    assert first is not None
    site.plans.write(replace(first, slot_start_s=None, slot_end_s=None))
    alice = pki.users["alice"]
    options = {"geni_users": [{"urn": alice.chain[0].urn, "keys": [KEY]}]}
    site.am.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], options)
    assert site.plans.read(lease_id) == first
    (lease,) = site.am.bookings.leases(slice_urn=pki.slice_urn)
    later = lease.end + timedelta(minutes=30)
    site.am.renew(alice.chain, [pki.slice_urn], [alice.slice_cred], format_time(later), {})
    renewed = site.plans.read(lease_id)
    assert renewed is not None and renewed.slot_end_s == int(later.timestamp())
    assert replace(renewed, slot_end_s=first.slot_end_s) == first


def test_the_rows_follow_what_the_node_reports(site: Site, pki: DemoPki) -> None:
    lease_id = provision(site, pki)
    first, second = site.instances.of_lease(lease_id)
    report = report_of(site.plans, lease_id)
    plan = site.plans.read(lease_id)
    assert plan is not None
    assert site.am.run_instances() == ([], [])  # nothing reported yet: nothing changes, LXC untouched here
    stale = {first.name: ("running", ""), second.name: ("failed", "no space left")}
    write_states(report, stale, "0123456789abcdef")  # an earlier plan's run reported this: ignored
    assert site.am.run_instances() == ([], []) and {r.state for r in site.instances.of_lease(lease_id)} == {PLANNED}
    write_states(report, stale, plan.plan_id)
    assert site.am.run_instances() == ([first.name], [])
    assert read_states(report.read_text()) == stale
    states = {r.name: (r.state, r.error) for r in site.instances.of_lease(lease_id)}
    assert states == {first.name: (RUNNING, ""), second.name: (FAILED, "no space left")}
    # A node's word never destroys a row nor frees its address (root of a node, or an earlier tenant of it, can
    # write a report, and an address freed while its container runs would be handed out twice): the aggregate's own
    # end of the lease does (the job's end, Delete, the slot's end).
    addresses = {r.name: r.address for r in site.instances.of_lease(lease_id)}
    write_states(report, {first.name: ("destroyed", ""), second.name: ("destroyed", "")}, plan.plan_id)
    assert site.am.run_instances() == ([], [])
    assert {r.name: (r.state, r.address) for r in site.instances.of_lease(lease_id)} == {
        first.name: (RUNNING, addresses[first.name]),
        second.name: (FAILED, addresses[second.name]),
    }
    assert all(addresses.values())
    write_states(report, {first.name: ("running", ""), second.name: ("running", "")}, plan.plan_id)  # the truth
    assert site.am.run_instances()[0] == [second.name]  # a failed row the node says runs follows it


def test_delete_forgets_the_plan_and_leaves_lxc_to_the_node(site: Site, pki: DemoPki) -> None:
    lease_id = provision(site, pki)
    alice = pki.users["alice"]
    site.am.delete(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert {r.state for r in site.instances.of_lease(lease_id)} == {DESTROYED}
    assert not site.plans.plan_path(lease_id).exists()


class ReleaseFailsStandIn(EmbeddedTestbed):
    """A stand-in testbed whose release fails (as oardel with the OAR API down): only this fault is faked."""

    def release(self, lease: LeaseRecord) -> None:
        raise GeniError(Reason.UNAVAILABLE, "the testbed does not answer")


class ProvisionTimesOutStandIn(EmbeddedTestbed):
    """A stand-in testbed that answers too slowly to Provision (OAR's API past its time-out, having perhaps made the
    job): only this fault is faked."""

    def provision(self, lease: LeaseRecord, owner: str, accounts: Any) -> None:
        raise GeniError(Reason.TIMEDOUT, "the testbed answered too slowly")


def test_a_provision_that_timed_out_keeps_the_plan_its_job_may_need(site: Site, pki: DemoPki) -> None:
    """The job may exist (the reconciler adopts it): its plan and its containers' addresses stay."""
    site.am.backend = ProvisionTimesOutStandIn()
    with pytest.raises(GeniError) as failed:
        provision(site, pki)
    assert failed.value.reason == Reason.TIMEDOUT
    (lease,) = site.am.bookings.leases(slice_urn=pki.slice_urn)
    plan = plan_file(site.plans, lease.id)
    records = site.instances.of_lease(lease.id)
    assert [(c.name, c.address) for c in plan.containers] == [(r.name, r.address) for r in records]
    assert all(r.address for r in records)


def test_a_delete_the_testbed_refuses_leaves_the_containers_live_and_its_retry_ends_them(
    site: Site, pki: DemoPki
) -> None:
    lease_id = provision(site, pki)
    before = site.instances.of_lease(lease_id)
    alice = pki.users["alice"]
    working, site.am.backend = site.am.backend, ReleaseFailsStandIn()
    with pytest.raises(GeniError):
        site.am.delete(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert site.instances.of_lease(lease_id) == before and site.plans.plan_path(lease_id).exists()
    with pytest.raises(GeniError):
        site.am.shutdown(alice.chain, pki.slice_urn, [alice.slice_cred])
    assert site.instances.of_lease(lease_id) == before
    site.am.backend = working
    site.am.delete(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    assert {(r.state, r.address) for r in site.instances.of_lease(lease_id)} == {(DESTROYED, "")}


# -- the OAR job of a lease with containers ----------------------------------------------------------------------
def test_a_lease_with_a_plan_is_an_ordinary_oar_job_running_the_node_command(site: Site, pki: DemoPki) -> None:
    lease_id = provision(site, pki)
    (lease,) = site.am.bookings.leases(slice_urn=pki.slice_urn)
    client = OarClient("http://127.0.0.1:9/oarapi")  # never called here
    backend = OarTestbed(client, site.am.database, "testbed", container_plans=site.plans, container_command="/x/c")
    assert backend._job_of(lease) == ("", f"sudo -n /x/c run {site.plans.plan_path(lease_id)}")
    backend.job_type = "deploy"
    with pytest.raises(GeniError) as refused:
        backend._job_of(lease)
    assert refused.value.reason == Reason.UNSUPPORTED
    site.plans.remove(lease_id)
    backend.job_type = "noop"
    assert backend._job_of(lease) == ("noop", "")


# -- the node command for real (LXC on the project's bridge; root) ----------------------------------------------
@needs_lxc
def test_the_node_command_makes_the_containers_and_destroys_them_on_sigterm(
    plan_signer: PlanSigner, tmp_path: Path
) -> None:
    key, public = key_pair(tmp_path, "alice")
    plan = replace(
        PLAN,
        bridge=bridge(),
        lxc_path=str(tmp_path / "lxc"),
        keys=(public,),
        containers=(PlannedContainer("sfaomf-0f94abcd-0", address(231), ""),),
    )
    path = LeasePlans(tmp_path / "leases", plan_signer).write(plan)
    runs = tmp_path / "runs"
    node = LxcHost(bridge(), lxc_path=plan.lxc_path)
    command = start_run(path, runs)
    try:
        line = command.stdout.readline() if command.stdout else ""  # once the containers are made
        assert line.strip() == "container sfaomf-0f94abcd-0: running"
        assert read_states(report_path_of(path, "127.0.0.1").read_text()) == {"sfaomf-0f94abcd-0": ("running", "")}
        assert [record.name for record in node.instances()] == ["sfaomf-0f94abcd-0"] and len(list(runs.iterdir())) == 1
        assert ssh(key, address(231).split("/")[0], "true").returncode == 0
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=60) == 0
        assert node.instances() == [] and list(runs.iterdir()) == []
        assert read_states(report_path_of(path, "127.0.0.1").read_text()) == {"sfaomf-0f94abcd-0": ("destroyed", "")}
    finally:
        end_run(command, node)


@needs_lxc
def test_the_node_command_destroys_the_containers_at_the_slots_end_by_itself(
    plan_signer: PlanSigner, tmp_path: Path
) -> None:
    """A run (the job's, or one the plan's user started through the sudo rule) ends with the lease's slot: its
    containers never outlive it, signal or not. The slot here ends a few seconds after the run begins."""
    plan = replace(
        PLAN,
        bridge=bridge(),
        lxc_path=str(tmp_path / "lxc"),
        containers=(PlannedContainer("sfaomf-0f94abce-0", address(232), ""),),
        slot_end_s=int(time.time()) + 5,
    )
    path = LeasePlans(tmp_path / "leases", plan_signer).write(plan)
    runs = tmp_path / "runs"
    node = LxcHost(bridge(), lxc_path=plan.lxc_path)
    command = start_run(path, runs)
    try:
        lines = command.communicate(timeout=300)[0].splitlines()  # no signal is sent: it ends by itself
        assert command.returncode == 0, lines
        assert lines[0] == "container sfaomf-0f94abce-0: running", lines
        assert "the lease's slot is over: destroying the containers" in lines
        assert node.instances() == [] and list(runs.iterdir()) == []
        assert read_states(report_path_of(path, "127.0.0.1").read_text()) == {"sfaomf-0f94abce-0": ("destroyed", "")}
    finally:
        end_run(command, node)


def start_run(path: Path, runs: Path) -> subprocess.Popen[str]:
    """The node command's ``run`` of the plan at ``path`` in a process of its own (as its job runs it), with its run
    records in ``runs`` and trusting the tests' key; its stdout piped."""
    script = node_script(runs, node_containers.SIGNERS_FILE)
    return subprocess.Popen([sys.executable, "-c", script, "run", str(path)], stdout=subprocess.PIPE, text=True)


def end_run(command: subprocess.Popen[str], node: LxcHost) -> None:
    """A test's clean-up: the run killed if it still runs, and whatever it left on the node destroyed."""
    if command.poll() is None:
        command.kill()
        command.wait()
    for record in node.instances():
        node.destroy(record.name)


def test_the_node_command_leaves_alone_a_container_it_did_not_make(plan_signer: PlanSigner, tmp_path: Path) -> None:
    """A container of a planned name exists already (another run of the plan): this run neither records it nor
    destroys it at its end, and reports it failed saying why. No LXC command runs: nothing is to be made."""
    taken = tmp_path / "lxc" / PLAN.containers[0].name
    taken.mkdir(parents=True)
    (taken / "config").write_text("# somebody else's\n")
    path = LeasePlans(tmp_path / "leases", plan_signer).write(replace(PLAN, lxc_path=str(tmp_path / "lxc")))
    runs = tmp_path / "runs"
    script = node_script(runs, node_containers.SIGNERS_FILE)
    command = subprocess.Popen(
        [sys.executable, "-c", script, "run", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OAR_JOB_ID": "4242"},
    )
    try:
        line = command.stdout.readline() if command.stdout else ""
        assert line.startswith(f"container {taken.name}: failed (a container named {taken.name} exists already")
        (record,) = runs.iterdir()
        assert json.loads(record.read_text())["names"] == [] and json.loads(record.read_text())["job_id"] == "4242"
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=60) == 1
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
    assert (taken / "config").read_text() == "# somebody else's\n"
    assert read_states(report_path_of(path, "127.0.0.1").read_text())[taken.name][0] == "failed"


def test_reap_destroys_the_containers_of_runs_that_are_gone_and_only_those(
    plan_signer: PlanSigner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OAR SIGKILLs a job's processes; its epilogue's reap then destroys what the run made (here: LXC directories
    that do not exist, so nothing else is touched), and leaves a live run alone."""
    runs = tmp_path / "runs"
    monkeypatch.setattr(node_containers, "RUNS_DIR", runs)
    path = LeasePlans(tmp_path / "leases", plan_signer).write(PLAN)
    # pid_max is at most 2**22: no process has this pid (a gone run, as after OAR's SIGKILL)
    report = str(report_path_of(path, "127.0.0.1"))
    dead = node_containers.RunRecord(
        2**22 + 1, "1", str(path), "br", str(tmp_path / "lxc"), ("sfaomf-a-0",), PLAN.plan_id, report=report
    )
    live = node_containers.RunRecord(
        os.getpid(), node_containers._start_time(os.getpid()), str(path), "br", str(tmp_path / "lxc"), ("sfaomf-b-0",)
    )
    for record in (dead, live):
        node_containers._register(record)
    assert node_containers.reap() == 0
    assert sorted(entry.name for entry in runs.iterdir()) == [f"{os.getpid()}.json"]
    assert read_states(report_path_of(path, "127.0.0.1").read_text()) == {"sfaomf-a-0": ("destroyed", "")}


def test_a_report_root_cannot_write_is_said_and_the_containers_still_go(
    plan_signer: PlanSigner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where the report should go, root cannot write (here a directory is in the way; NFS's root squash alike)."""
    runs = tmp_path / "runs"
    monkeypatch.setattr(node_containers, "RUNS_DIR", runs)
    path = LeasePlans(tmp_path / "leases", plan_signer).write(PLAN)
    report = report_path_of(path, "127.0.0.1")
    report.mkdir()
    gone = node_containers.RunRecord(
        2**22 + 1, "1", str(path), "br", str(tmp_path / "lxc"), ("sfaomf-a-0",), report=str(report)
    )
    node_containers._register(gone)
    assert node_containers.reap() == 0
    out, err = capsys.readouterr()
    assert "container sfaomf-a-0: destroyed" in out and "no_root_squash" in err
    assert list(runs.iterdir()) == []  # destroyed all the same: the record goes


def test_reap_ends_its_own_jobs_run_and_only_a_few_others(
    plan_signer: PlanSigner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epilogue of OAR job 77 passes 77: that run goes whatever the backlog of other dead runs, and the sweep of
    the others stops at REAP_OTHERS (the next epilogues take the rest)."""
    runs = tmp_path / "runs"
    monkeypatch.setattr(node_containers, "RUNS_DIR", runs)
    monkeypatch.setattr(node_containers, "REAP_OTHERS", 2)
    path = LeasePlans(tmp_path / "leases", plan_signer).write(PLAN)
    lxc = str(tmp_path / "lxc")
    for n in range(6):  # dead runs of other jobs, named before job 77's run in the directory's order
        node_containers._register(node_containers.RunRecord(2**22 + 1 + n, "1", str(path), "br", lxc, (f"o-{n}",)))
    mine = node_containers.RunRecord(2**22 + 9, "1", str(path), "br", lxc, ("m-0",), PLAN.plan_id, "77")
    node_containers._register(mine)
    assert node_containers.main(["reap", "77"]) == 0
    left = sorted(entry.name for entry in runs.iterdir())
    assert f"{2**22 + 9}.json" not in left and len(left) == 6 - 2


# -- scripts/oar.sh installs the node side's files ----------------------------------------------------------------
def install_file(path: Path, content: str, *check: str) -> subprocess.CompletedProcess[str]:
    """scripts/oar.sh's install_file, run alone (its definition taken from the script; as_root: already root)."""
    script = Path(__file__).parents[2] / "scripts" / "oar.sh"
    shell = (
        'as_root() { "$@"; }; eval "$(sed -n "/^install_file()/,/^}/p" "$0")"; install_file "$1" 440 "${@:3}" <<<"$2"'
    )
    command = ["bash", "-c", shell, str(script), str(path), content, *check]
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.mark.skipif(not shutil.which("visudo"), reason="no visudo (sudo not installed)")
def test_a_sudoers_rule_visudo_refuses_never_replaces_the_one_in_place(tmp_path: Path) -> None:
    rule = tmp_path / "sfa-omf-lease-containers"
    good = "ALL ALL=(root) NOPASSWD: /usr/local/sbin/sfa-omf-lease-containers run *"
    assert install_file(rule, good, "visudo", "-cq", "-f").returncode == 0
    assert rule.read_text() == good + "\n" and rule.stat().st_mode & 0o777 == 0o440
    refused = install_file(rule, "ALL ALL=(root NOPASSWD this is not sudoers", "visudo", "-cq", "-f")
    assert refused.returncode != 0 and "the old file is kept" in refused.stderr
    assert rule.read_text() == good + "\n" and sorted(p.name for p in tmp_path.iterdir()) == [rule.name]


def test_a_key_written_with_tabs_or_spaces_is_one_plan_line_the_node_reads(site: Site, pki: DemoPki) -> None:
    """The registry accepts a key whose words are separated by tabs or several spaces; the plan holds it as one
    OpenSSH line, which the node side reads (a key it could not read would refuse the whole plan)."""
    from sfa_omf.images.instances import plan_keys

    kind, body = KEY.split()[:2]
    assert plan_keys([f"{kind}\t{body}   alice@laptop\n", " "]) == (f"{kind} {body} alice@laptop",)
    lease_id = provision(site, pki)
    site.instances.rewrite_keys([lease_id], [f"{kind}\t\t{body}"])
    assert plan_file(site.plans, lease_id).keys == (f"{kind} {body}",)


def test_new_keys_reach_the_plans_of_every_provisioned_lease_of_the_slice(site: Site, pki: DemoPki) -> None:
    """geni_update_users naming one lease's sliver sets the whole slice's users: every lease's plan follows."""
    alice = pki.users["alice"]
    first_lease = provision(site, pki)
    site.am.inventory.add_node(NodeSpec("urn:publicid:IDN+testbed+node+node2", "node2", grain_s=60))
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
        '<node client_id="m" component_id="urn:publicid:IDN+testbed+node+node2" exclusive="true">'
        '<sliver_type name="lxc"/></node></rspec>'
    )
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=30)
    options = {"geni_end_time": format_time(end), "geni_users": [{"urn": alice.chain[0].urn, "keys": [KEY]}]}
    site.am.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, options)
    site.am.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], options)
    leases = {lease.id: lease for lease in site.am.bookings.leases(slice_urn=pki.slice_urn)}
    (second_lease,) = set(leases) - {first_lease}
    other = KEY.replace("alice", "alice-laptop").replace("Fake", "Else")
    users = {"geni_users": [{"urn": alice.chain[0].urn, "keys": [other]}]}
    named = [sliver.urn for sliver in leases[first_lease].slivers]  # only the first lease's sliver is named
    site.am.perform_operational_action(alice.chain, named, [alice.slice_cred], "geni_update_users", users)
    for lease_id in (first_lease, second_lease):
        plan = site.plans.read(lease_id)
        assert plan is not None and plan.keys == (other,), lease_id


def test_a_report_or_plan_too_large_is_refused_unread(site: Site, pki: DemoPki) -> None:
    """A node's report (or a plan) over MAX_FILE_BYTES is not read into memory: the aggregate takes it as no report,
    and the plan reader refuses it."""
    from sfa_omf.images.node_plans import MAX_FILE_BYTES, PlanError, read_bounded

    lease_id = provision(site, pki)
    report_of(site.plans, lease_id).write_text("{" + " " * MAX_FILE_BYTES + "}")
    assert site.plans.states(lease_id) == {}
    with pytest.raises(PlanError, match="larger than"):
        read_bounded(report_of(site.plans, lease_id))
    assert read_bounded(site.plans.plan_path(lease_id)).startswith("{")  # a plan of the usual size reads


def test_plan_updates_from_two_writers_lose_nothing(plan_signer: PlanSigner, tmp_path: Path) -> None:
    """Two writers (threads here; processes and hosts take the same flock) each add keys to one plan, read and
    written under the plans' lock: every key is there at the end (a read-then-write without it loses some)."""
    plans = LeasePlans(tmp_path / "leases", plan_signer)
    plans.write(replace(PLAN, keys=()))
    errors: list[BaseException] = []

    def add_keys(writer: str) -> None:
        try:
            for index in range(40):
                key = f"ssh-ed25519 AAAA{writer}{index} {writer}@test"
                assert plans.update(PLAN.lease_id, lambda plan, key=key: replace(plan, keys=(*plan.keys, key)))
        except BaseException as exc:  # reported below: a thread must not fail silently
            errors.append(exc)

    writers = [threading.Thread(target=add_keys, args=(name,)) for name in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert errors == []
    plan = plans.read(PLAN.lease_id)
    assert plan is not None and len(plan.keys) == 80 and len(set(plan.keys)) == 80


def test_an_update_never_brings_a_removed_plan_back(plan_signer: PlanSigner, tmp_path: Path) -> None:
    plans = LeasePlans(tmp_path / "leases", plan_signer)
    plans.write(PLAN)
    plans.remove(PLAN.lease_id)
    assert plans.update(PLAN.lease_id, lambda plan: replace(plan, keys=())) is False
    assert not plans.plan_path(PLAN.lease_id).exists()


def test_a_round_brings_a_plan_to_the_calendars_slot_and_keys_and_then_writes_nothing(site: Site, pki: DemoPki) -> None:
    """What a failed rewrite or an older aggregate left (no slot, keys of before) is repaired by the next round,
    from the calendar; a plan already right is not written again."""
    lease_id = provision(site, pki)
    right = site.plans.read(lease_id)
    assert right is not None and right.keys and right.slot_start_s
    site.plans.write(replace(right, slot_start_s=None, slot_end_s=None, keys=()))
    site.am.run_instances()
    assert site.plans.read(lease_id) == right
    written = site.plans.plan_path(lease_id).stat().st_mtime_ns
    site.am.run_instances()
    assert site.plans.plan_path(lease_id).stat().st_mtime_ns == written


def test_a_renew_whose_plan_cannot_be_written_is_done_and_the_round_repairs_the_plan(
    site: Site, pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calendar and the testbed have the new end when the plan's write fails (a stale NFS handle, a full disk):
    the call answers the renewal (its change is recorded), the plan is logged as left, and the next round writes
    the lease's slot into it."""
    lease_id = provision(site, pki)
    alice = pki.users["alice"]
    (lease,) = site.am.bookings.leases(slice_urn=pki.slice_urn)
    later = lease.end + timedelta(minutes=30)

    def stale_handle(_self: LeasePlans, _plan: LeasePlan) -> Path:
        raise OSError(errno.ESTALE, "Stale file handle")

    with monkeypatch.context() as patched:
        patched.setattr(LeasePlans, "_write", stale_handle)
        answer = site.am.renew(alice.chain, [pki.slice_urn], [alice.slice_cred], format_time(later), {})
    assert answer and site.am.bookings.leases(slice_urn=pki.slice_urn)[0].end == later
    plan = site.plans.read(lease_id)
    assert plan is not None and plan.slot_end_s == int(lease.end.timestamp())  # left as it was
    site.am.run_instances()
    plan = site.plans.read(lease_id)
    assert plan is not None and plan.slot_end_s == int(later.timestamp())
