"""Operational actions on containers a testbed's job runs (the OAR backend), without OAR: the aggregate hands the
lease's run an action next to its plan and waits (bounded) for the run's report; the run trusts an action as it trusts
the plan and does each once; a save's archive comes from the node and is checked before anything is imported. The
node side here is either the real node command with real LXC, or a stand-in (named so) writing what a run reports.
The whole thing with OAR running the job is tests/testbed/oar/test_containers.py."""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.states import Operational
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.images import node_containers
from sfa_omf.images.archives import ArchiveError, check_archive, save_rootfs, sha256_of
from sfa_omf.images.instances import FAILED, PLANNED, RUNNING, STOPPED, Instances
from sfa_omf.images.lxc import LxcHost, hardware_address
from sfa_omf.images.node_plans import (
    ActionDone,
    LeaseAction,
    LeasePlans,
    PlanError,
    PlannedContainer,
    write_states,
)
from sfa_omf.images.plan_signing import KIND_ACTION, KIND_PLAN, PlanSigner
from sfa_omf.images.store import ImageStore
from sfa_omf.registry.accounts import Accounts
from sfa_omf.testbed.base import SliverHealth
from sfa_omf.times import format_time
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki
from tests.images.lxc_env import address, bridge, key_pair, needs_lxc, ssh
from tests.images.plans_env import node_script, report_of
from tests.images.test_node_side import KEY, NODE, PLAN, NoLxc


@dataclass
class Site:
    am: Aggregate
    instances: Instances
    plans: LeasePlans
    lease_id: str
    names: tuple[str, str]


def provisioned(plan_signer: PlanSigner, pki: DemoPki, tmp_path: Path) -> Site:
    """An aggregate whose leases' jobs run the containers (plans), and a lease of two containers whose slot runs,
    provisioned; its node reported nothing yet."""
    database = Database(sqlite_url(str(tmp_path / "am.sqlite")))
    database.upgrade()
    store = ImageStore(database, tmp_path / "images")
    plans = LeasePlans(tmp_path / "images" / "leases", plan_signer)
    instances = Instances(
        database, NoLxc("br-test", lxc_path="/srv/lxc"), "10.217.0.0/24", store, plans=plans, action_timeout_s=0.5
    )
    accounts = Accounts(database)
    alice = pki.users["alice"]
    accounts.pin(alice.chain[0].urn or "", "alice")
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
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:inst="http://sfa-omf.org/rspec/ext/instances/1">'
        f'<node client_id="n" component_id="{NODE}" exclusive="true"><sliver_type name="lxc" inst:count="2"/>'
        "</node></rspec>"
    )
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=30)
    options = {"geni_end_time": format_time(end), "geni_users": [{"urn": alice.chain[0].urn, "keys": [KEY]}]}
    am.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, options)
    am.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], options)
    (lease,) = am.bookings.leases(slice_urn=pki.slice_urn)
    first, second = (record.name for record in instances.of_lease(lease.id))
    return Site(am, instances, plans, lease.id, (first, second))


@pytest.fixture
def site(plan_signer: PlanSigner, pki: DemoPki, tmp_path: Path) -> Site:
    return provisioned(plan_signer, pki, tmp_path)


def running(site: Site) -> str:
    """The node's first report: both containers run. Returns the plan's id."""
    plan = site.plans.read(site.lease_id)
    assert plan is not None
    write_states(report_of(site.plans, site.lease_id), dict.fromkeys(site.names, ("running", "")), plan.plan_id)
    site.am.run_instances()
    assert {record.state for record in site.instances.of_lease(site.lease_id)} == {RUNNING}
    return plan.plan_id


class NodeRunStandIn:
    """A stand-in for the lease's run on its node (the real one is sfa-omf-lease-containers, tested with LXC below):
    it waits for the aggregate's next action and reports it done as ``answer(action)`` says, from a thread."""

    def __init__(self, site: Site, answer: Callable[[LeaseAction], tuple[dict[str, tuple[str, str]], ActionDone]]):
        self.site, self.answer = site, answer
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        plans = self.site.plans
        while not self.done.wait(0.05):
            action = plans.action(self.site.lease_id)
            if action is not None:
                states, done = self.answer(action)
                write_states(report_of(plans, self.site.lease_id), states, action.plan_id, done)
                return

    def __enter__(self) -> NodeRunStandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def operate(site: Site, pki: DemoPki, action: str, options: dict[str, Any] | None = None) -> dict[str, str]:
    alice = pki.users["alice"]
    answer = site.am.perform_operational_action(alice.chain, [pki.slice_urn], [alice.slice_cred], action, options or {})
    return {
        item["geni_sliver_urn"]: item["geni_operational_status"] for item in answer if "-c" in item["geni_sliver_urn"]
    }


# -- the aggregate's side -------------------------------------------------------------------------------------------
def test_an_action_before_the_node_reported_is_refused_and_nothing_is_handed(site: Site, pki: DemoPki) -> None:
    with pytest.raises(GeniError) as refused:
        operate(site, pki, "geni_stop")
    assert refused.value.code == GeniCode.BUSY and "still being made" in refused.value.message
    assert site.plans.action(site.lease_id) is None
    assert {record.state for record in site.instances.of_lease(site.lease_id)} == {PLANNED}


def test_an_action_on_containers_whose_job_ended_before_any_report_is_refused(site: Site, pki: DemoPki) -> None:
    """The rows failed without a word from the node (its job ended first, e.g. it refused the plan): no run is there
    to act, so the call is refused at once, hands nothing, and Status keeps saying why they failed."""
    ended = SliverHealth(Operational.FAILED, "OAR job 12 terminated (its command exited with status 2)", ended=True)
    site.instances.tick(datetime.now(UTC), lambda _slice: [], lambda _slice, _lease: ended)
    assert {record.state for record in site.instances.of_lease(site.lease_id)} == {FAILED}
    with pytest.raises(GeniError) as refused:
        operate(site, pki, "geni_start")
    assert refused.value.code == GeniCode.BADARGS and "never reported" in refused.value.message
    assert site.plans.action(site.lease_id) is None
    assert all("status 2" in record.error for record in site.instances.of_lease(site.lease_id))


def test_an_action_the_node_reports_in_time_is_answered_with_its_states(site: Site, pki: DemoPki) -> None:
    running(site)
    first, second = site.names
    site.instances.action_timeout_s = 30

    def stop(action: LeaseAction) -> tuple[dict[str, tuple[str, str]], ActionDone]:
        assert (action.seq, action.action, action.containers) == (1, "stop", ())
        return {first: ("stopped", ""), second: ("running", "")}, ActionDone(1, "stop", {second: "lxc-stop failed"})

    with NodeRunStandIn(site, stop):
        states = operate(site, pki, "geni_stop")
    assert sorted(states.values()) == ["geni_configuring", "geni_notready"]  # running (no SSH here), and stopped
    rows = {record.name: record.state for record in site.instances.of_lease(site.lease_id)}
    assert rows == {first: STOPPED, second: RUNNING}

    def restart(action: LeaseAction) -> tuple[dict[str, tuple[str, str]], ActionDone]:
        assert (action.seq, action.action) == (2, "restart")
        return {first: ("failed", "lxc-start: no rootfs"), second: ("running", "")}, ActionDone(2, "restart")

    with NodeRunStandIn(site, restart):
        operate(site, pki, "geni_restart")
    failed = {record.name: (record.state, record.error) for record in site.instances.of_lease(site.lease_id)}
    assert failed[first] == (FAILED, "lxc-start: no rootfs")  # Status: geni_failed with the reason


def test_an_action_whose_node_never_answers_is_in_progress_and_a_later_round_takes_the_report(
    site: Site, pki: DemoPki
) -> None:
    """Nothing polls here: like a run that is not looking for actions (busy, or an older node command)."""
    plan_id = running(site)
    states = operate(site, pki, "geni_stop")  # no error: the action stays handed
    assert sorted(states.values()) == ["geni_stopping", "geni_stopping"]
    assert site.plans.action(site.lease_id) == LeaseAction(plan_id, 1, "stop")
    assert {record.state for record in site.instances.of_lease(site.lease_id)} == {RUNNING}
    alice = pki.users["alice"]
    status = site.am.status(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    errors = [item["geni_error"] for item in status["geni_slivers"] if "-c" in item["geni_sliver_urn"]]
    assert errors == ["geni_stop handed to the lease's job on its node: in progress"] * 2
    write_states(
        report_of(site.plans, site.lease_id), dict.fromkeys(site.names, ("stopped", "")), plan_id, ActionDone(1, "stop")
    )  # the node's report comes later
    site.am.run_instances()
    assert {record.state for record in site.instances.of_lease(site.lease_id)} == {STOPPED}
    assert site.instances.pending_actions([site.lease_id]) == {}
    states = operate(site, pki, "geni_start")  # the next action is the next seq
    assert site.plans.action(site.lease_id) == LeaseAction(plan_id, 2, "start")
    assert sorted(states.values()) == ["geni_configuring", "geni_configuring"]


def good_archive(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in (("./etc/motd", b"saved\n"), ("./bin/tool", b"#!/bin/sh\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "/bin/busybox"  # absolute targets are normal in a rootfs
        tar.addfile(link)


def saver(site: Site, make: Callable[[Path], None]) -> NodeRunStandIn:
    """A stand-in node run that answers a save with the archive ``make`` writes where the run writes it."""

    def save(action: LeaseAction) -> tuple[dict[str, tuple[str, str]], ActionDone]:
        archive = site.plans.archive_path(site.lease_id, "node1", action.seq)
        make(archive)
        digest = sha256_of(archive) if archive.is_file() and not archive.is_symlink() else ""
        size = archive.lstat().st_size
        return dict.fromkeys(site.names, ("running", "")), ActionDone(
            action.seq, "save", {}, str(archive), size, digest
        )

    return NodeRunStandIn(site, save)


def test_a_save_imports_the_nodes_archive_as_the_users_private_image(site: Site, pki: DemoPki) -> None:
    running(site)
    site.instances.action_timeout_s = 30
    first = site.names[0]
    with saver(site, good_archive):
        operate(site, pki, "sfa_omf_save_image", {"sfa_omf_label": "mine", "sfa_omf_instance": first})
    handed = site.plans.action(site.lease_id)
    assert handed is not None and (handed.seq, handed.action, handed.containers) == (1, "save", (first,))
    image = site.instances.images.get("mine")
    assert image is not None and image.private and image.added_by == pki.users["alice"].chain[0].urn
    with tarfile.open(image.path) as tar:
        assert sorted(tar.getnames()) == ["./bin/sh", "./bin/tool", "./etc/motd"]
    assert not site.plans.archive_path(site.lease_id, "node1", 1).exists()  # the node's file is not kept


def test_a_save_to_a_label_taken_is_refused_before_the_node_is_asked(site: Site, pki: DemoPki, tmp_path: Path) -> None:
    running(site)
    source = tmp_path / "taken.tar"
    good_archive(source)
    site.instances.images.add(source, "taken", "urn:publicid:IDN+testbed+user+bob", datetime.now(UTC))
    with pytest.raises(GeniError) as refused:
        operate(site, pki, "sfa_omf_save_image", {"sfa_omf_label": "taken", "sfa_omf_instance": site.names[0]})
    assert refused.value.code == GeniCode.ALREADYEXISTS and site.plans.action(site.lease_id) is None


def hostile(kind: str) -> Callable[[Path], None]:
    """An archive a node could write instead of its container's root file system."""

    def make(path: Path) -> None:
        if kind == "symlinked file":
            path.symlink_to("/etc/shadow")
            return
        if kind == "gzip":
            with tarfile.open(path, "w:gz") as tar:
                tar.addfile(tarfile.TarInfo("./etc/empty"))
            return
        with tarfile.open(path, "w") as tar:
            member = tarfile.TarInfo({"absolute": "/etc/cron.d/x", "dotdot": "./../../etc/x"}.get(kind, "./x"))
            if kind == "device":
                member.type, member.devmajor, member.devminor = tarfile.BLKTYPE, 8, 0
            if kind == "through a link":
                link = tarfile.TarInfo("./etc")
                link.type, link.linkname = tarfile.SYMTYPE, "/etc"
                tar.addfile(link)
                member.name = "./etc/passwd"
            if kind == "hard link out":
                member.type, member.linkname = tarfile.LNKTYPE, "/etc/shadow"
            if kind in ("hard link to a symbolic link", "a name twice"):
                # A symbolic link out, then a hard link to it (or a file of the same name: the second replaces the
                # first): unpacking would change the owner and mode of what it points to, on the host.
                link = tarfile.TarInfo("./s")
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
                tar.addfile(link)
                member.name = "./h" if kind == "hard link to a symbolic link" else "./s"
                member.type, member.linkname = tarfile.LNKTYPE, "./s"
                if kind == "a name twice":
                    member.type = tarfile.REGTYPE
            tar.addfile(member)

    return make


@pytest.mark.parametrize(
    "kind",
    [
        "absolute",
        "dotdot",
        "device",
        "through a link",
        "hard link out",
        "hard link to a symbolic link",
        "a name twice",
        "gzip",
        "symlinked file",
    ],
)
def test_a_hostile_archive_from_the_node_is_refused_and_nothing_is_imported(
    site: Site, pki: DemoPki, kind: str
) -> None:
    running(site)
    site.instances.action_timeout_s = 30
    with saver(site, hostile(kind)), pytest.raises(GeniError) as refused:
        operate(site, pki, "sfa_omf_save_image", {"sfa_omf_label": "bad", "sfa_omf_instance": site.names[0]})
    assert refused.value.code == GeniCode.ERROR and "Nothing was saved" in refused.value.message
    assert site.instances.images.get("bad") is None
    assert [path.name for path in site.instances.images.directory.iterdir() if path.name != "leases"] == []
    assert not site.plans.archive_path(site.lease_id, "node1", 1).exists()


def test_an_archive_that_is_not_the_one_reported_is_refused(site: Site, pki: DemoPki) -> None:
    running(site)
    site.instances.action_timeout_s = 30

    def swapped(action: LeaseAction) -> tuple[dict[str, tuple[str, str]], ActionDone]:
        archive = site.plans.archive_path(site.lease_id, "node1", action.seq)
        good_archive(archive)
        return {}, ActionDone(action.seq, "save", {}, str(archive), 1, "0" * 64)

    with NodeRunStandIn(site, swapped), pytest.raises(GeniError) as refused:
        operate(site, pki, "sfa_omf_save_image", {"sfa_omf_label": "bad", "sfa_omf_instance": site.names[0]})
    assert "sha256 differs" in refused.value.message and site.instances.images.get("bad") is None


def test_check_archive_bounds_the_size(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    good_archive(path)
    check_archive(path)
    with pytest.raises(ArchiveError, match="more than"):
        check_archive(path, max_bytes=100)


# -- the node side -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"plan_id": "p", "seq": 0, "action": "stop", "containers": []}', "seq"),
        ('{"plan_id": "p", "seq": true, "action": "stop", "containers": []}', "seq"),
        ('{"plan_id": "p", "seq": 1, "action": "rm -rf", "containers": []}', "action"),
        ('{"plan_id": "p", "seq": 1, "action": "stop", "containers": ["../x"]}', "containers"),
        ('{"plan_id": "p", "seq": 1, "action": "save", "containers": []}', "exactly one"),
        ('{"plan_id": "../p", "seq": 1, "action": "stop", "containers": []}', "plan_id"),
        ("[]", "object"),
    ],
)
def test_an_action_the_aggregate_would_not_write_is_refused(text: str, words: str) -> None:
    with pytest.raises(PlanError, match=words):
        LeaseAction.from_json(text)


def test_the_node_command_trusts_an_action_only_as_it_trusts_the_plan(plan_signer: PlanSigner, tmp_path: Path) -> None:
    """Signed by the aggregate's key, owned as the plan, about this very plan: anything else is refused (and said
    once), whoever is root on a node sharing the plans directory."""
    if os.geteuid() != 0:
        pytest.fail("the node command's tests run as root (LXC needs it; scripts/test.sh runs them so)")
    plans = LeasePlans(tmp_path / "leases", plan_signer)
    plans.write(PLAN)
    path = plans.write_action(PLAN.lease_id, LeaseAction(PLAN.plan_id, 3, "stop"))
    said: set[str] = set()
    verifier = plan_signer.verifier

    def trusted() -> LeaseAction | None:
        return node_containers._trusted_action(path, PLAN, verifier, frozenset({0}), said)

    assert trusted() == LeaseAction(PLAN.plan_id, 3, "stop")
    os.chown(path, 65534, -1)  # nobody's: the job's user could have written it
    assert trusted() is None
    os.chown(path, 0, -1)
    path.chmod(0o666)
    assert trusted() is None
    path.chmod(0o644)
    plans.write_action(PLAN.lease_id, LeaseAction("0123456789abcdef", 4, "stop"))  # about another plan
    assert trusted() is None
    # Root on another node writes what the aggregate would: unsigned, signed with a key of its own, a signed plan
    # in the action's place, a signed action altered.
    stranger = PlanSigner(tmp_path / "stranger.key")
    action = LeaseAction(PLAN.plan_id, 5, "save", ("sfaomf-0f94abcd-0",)).to_json()
    path.write_text(action)
    assert trusted() is None
    path.write_text(stranger.sign(KIND_ACTION, action))
    assert trusted() is None
    path.write_text(plan_signer.sign(KIND_PLAN, action))
    assert trusted() is None
    signed = plan_signer.sign(KIND_ACTION, action)
    altered = signed.replace('\\"seq\\": 5', '\\"seq\\": 6')
    assert altered != signed
    path.write_text(altered)
    assert trusted() is None
    assert len(said) == 7 and any("not owned by root" in problem for problem in said)
    assert sum("not signed by the aggregate" in problem for problem in said) == 4


def test_a_nodes_save_leaves_secrets_and_devices_out(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    for name in ("etc/motd", "etc/shadow", "root/.ssh/authorized_keys", "etc/dropbear/key"):
        (rootfs / name).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / name).write_text("x\n")
    if os.geteuid() == 0:
        (rootfs / "dev").mkdir()
        os.mknod(rootfs / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    save_rootfs(rootfs, tmp_path / "saved.tar")
    check_archive(tmp_path / "saved.tar")  # what the aggregate accepts
    with tarfile.open(tmp_path / "saved.tar") as tar:
        names = set(tar.getnames())
    assert "./etc/motd" in names and not names & {"./etc/shadow", "./root/.ssh/authorized_keys", "./dev/null"}


def test_a_nodes_save_stops_writing_at_the_bound(tmp_path: Path) -> None:
    """The node writes a save into the aggregate's plans directory: it stops at the bound the aggregate would
    refuse anyway, instead of filling that disk first."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "data").mkdir(parents=True)
    (rootfs / "data" / "big").write_bytes(os.urandom(256 * 1024))
    with pytest.raises(ArchiveError, match="more than the 65536 bytes"):
        save_rootfs(rootfs, tmp_path / "big.tar", max_bytes=64 * 1024)
    assert (tmp_path / "big.tar").stat().st_size <= 64 * 1024  # what was written before it stopped, no more
    save_rootfs(rootfs, tmp_path / "fits.tar", max_bytes=1 << 20)
    check_archive(tmp_path / "fits.tar")


def bounded_line(stream: IO[str] | None, within_s: float = 180) -> str:
    """The command's next line, or a failure (never a hang) when it says nothing for ``within_s``."""
    assert stream is not None
    ready, _, _ = select.select([stream], [], [], within_s)
    if not ready:
        pytest.fail(f"the node command said nothing within {within_s} s")
    return stream.readline()


@needs_lxc
def test_the_node_command_does_each_action_once_and_reports_it(plan_signer: PlanSigner, tmp_path: Path) -> None:
    """The real run with real LXC: stop, start (SSH answers again), restart, save; an action file it must not trust
    is ignored; an action already done is not done again."""
    key, public = key_pair(tmp_path, "alice")
    name = "sfaomf-0f94acts-0"
    host_address = address(233)
    plan = replace(
        PLAN,
        bridge=bridge(),
        lxc_path=str(tmp_path / "lxc"),
        keys=(public,),
        containers=(PlannedContainer(name, host_address, ""),),
    )
    plans = LeasePlans(tmp_path / "leases", plan_signer)
    path = plans.write(plan)
    node = LxcHost(bridge(), lxc_path=plan.lxc_path)
    script = node_script(tmp_path / "runs", node_containers.SIGNERS_FILE)
    command = subprocess.Popen(
        [sys.executable, "-c", script, "run", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    host = host_address.split("/")[0]

    def act(seq: int, action: str, containers: tuple[str, ...] = ()) -> str:
        plans.write_action(plan.lease_id, LeaseAction(plan.plan_id, seq, action, containers))
        line = bounded_line(command.stdout)
        assert line.startswith(f"action {seq} {action}: done"), line
        return line

    try:
        assert bounded_line(command.stdout).strip() == f"container {name}: running"
        act(1, "stop")
        assert node.state(name) == "STOPPED" and plans.states(plan.lease_id) == {name: ("stopped", "")}
        assert ssh(key, host, "true").returncode != 0
        act(2, "start")
        assert plans.states(plan.lease_id) == {name: ("running", "")} and ssh(key, host, "true").returncode == 0
        # Not trusted (others may change it): ignored, said on stderr once, nothing done.
        # Made writable by others before it is moved into place: never seen trusted, even for a moment.
        untrusted = plans.directory / ".untrusted"
        untrusted.write_text(LeaseAction(plan.plan_id, 3, "stop").to_json())
        untrusted.chmod(0o666)
        untrusted.replace(plans.action_path(plan.lease_id))
        refusal = bounded_line(command.stderr)
        assert refusal.startswith("action refused:") and "may be changed by others" in refusal, refusal
        assert node.state(name) == "RUNNING" and plans.done(plan.lease_id) == ActionDone(2, "start", node=plan.nodes[0])
        # The same MAC at every start: hosts caching the old one would not reach it after a restart for a while.
        config = (Path(plan.lxc_path) / name / "config").read_text()
        assert f"lxc.net.0.hwaddr = {hardware_address(name)}" in config and hardware_address(name).startswith("02:")
        act(4, "restart")
        assert node.state(name) == "RUNNING" and ssh(key, host, "echo saved > /etc/motd").returncode == 0
        act(5, "save", (name,))
        done = plans.done(plan.lease_id)
        archive = plans.archive_path(plan.lease_id, plan.nodes[0], 5)
        assert done is not None and (done.archive, done.size, done.sha256) == (
            str(archive),
            archive.stat().st_size,
            sha256_of(archive),
        )
        check_archive(archive)
        with tarfile.open(archive) as tar:
            motd = tar.extractfile("./etc/motd")
            assert motd is not None and motd.read() == b"saved\n"
            assert not any(member.startswith("./root/.ssh") for member in tar.getnames())
        # seq 5 again (done already): not done; the run's next line is action 6's, once it has polled past it.
        plans.write_action(plan.lease_id, LeaseAction(plan.plan_id, 5, "stop"))
        time.sleep(3 * node_containers.ACTION_POLL_S)  # (not a threshold: time for the run to see seq 5 and skip it)
        assert node.state(name) == "RUNNING"
        act(6, "stop")
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=60) == 0
        out = command.stdout.read() if command.stdout else ""
        assert "action 5 stop" not in out and "destroying" in out
        assert "action refused" not in (command.stderr.read() if command.stderr else "")  # said once only
        assert node.instances() == []
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
        for record in node.instances():
            node.destroy(record.name)
