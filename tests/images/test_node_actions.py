"""Operational actions on containers a testbed's job runs (the OAR backend), without OAR: the aggregate hands the
lease's run an action next to its plan and waits (bounded) for the run's report; the run trusts an action as it trusts
the plan and does each once; a save's archive comes from the node and is checked before anything is imported. The
node side here is either the real node command with real LXC, or a stand-in (named so) writing what a run reports.
The whole thing with OAR running the job is tests/testbed/oar/test_containers.py."""

from __future__ import annotations

import io
import os
import queue
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
from sfa_omf.images.archives import MAX_ARCHIVE_BYTES, ArchiveError, check_archive, save_rootfs, sha256_of
from sfa_omf.images.instances import FAILED, PLANNED, RUNNING, STOPPED, Instances
from sfa_omf.images.lxc import InstanceSpec, LxcHost, hardware_address
from sfa_omf.images.node_plans import (
    ActionDone,
    LeaseAction,
    LeasePlan,
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


class Lines:
    """The lines a stream of the node command writes, read by a thread of their own into a queue: a line is never
    missed (select() on a buffered stream waits for bytes the buffer may already hold, read ahead with the line
    before)."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put("")  # the stream's end

    def next(self, within_s: float = 180) -> str:
        """The next line ("" at the stream's end), or a failure (never a hang) when none comes within ``within_s``."""
        try:
            return self._lines.get(timeout=within_s)
        except queue.Empty:
            pytest.fail(f"the node command said nothing within {within_s:g} s")

    def rest(self) -> str:
        """What is left to read, once the command has exited (its stream then ends)."""
        self._reader.join(timeout=60)
        assert not self._reader.is_alive(), "the node command's stream stayed open after it exited"
        return "".join(iter(self._lines.get_nowait, ""))


class NodeRun:
    """The real node command, ``sfa-omf-lease-containers run PLAN``, in a process of its own (root, as OAR's job
    runs it through sudo), its run records in ``runs`` and its output read line by line."""

    def __init__(self, plan_path: Path, runs: Path) -> None:
        script = node_script(runs, node_containers.SIGNERS_FILE)
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, "run", str(plan_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out, self.err = Lines(self.process.stdout), Lines(self.process.stderr)

    def stop(self) -> int:
        """SIGTERM (the job's end): the run destroys its containers; its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def plan_on_the_bridge(
    plan_signer: PlanSigner, tmp_path: Path, keys: tuple[str, ...], *containers: tuple[str, int]
) -> tuple[LeasePlans, LeasePlan, Path]:
    """A plan for this host (PLAN's node) of containers (name, host number on the tests' bridge) kept under
    ``tmp_path``, written and signed as the aggregate writes it: the plans, the plan and its path."""
    plan = replace(
        PLAN,
        bridge=bridge(),
        lxc_path=str(tmp_path / "lxc"),
        keys=keys,
        containers=tuple(PlannedContainer(name, address(number), "") for name, number in containers),
    )
    plans = LeasePlans(tmp_path / "leases", plan_signer)
    return plans, plan, plans.write(plan)


def wait_until(condition: Callable[[], bool], what: str, within_s: float = 180) -> None:
    """Return once ``condition()`` holds; a failure (never a hang) naming ``what`` when it does not within_s."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within_s:g} s")
        time.sleep(0.05)


@needs_lxc
def test_the_node_command_does_each_action_once_and_reports_it(plan_signer: PlanSigner, tmp_path: Path) -> None:
    """The real run with real LXC: stop, start (SSH answers again), restart, save; an action file it must not trust
    is ignored; an action already done is not done again."""
    key, public = key_pair(tmp_path, "alice")
    name = "sfaomf-0f94acts-0"
    plans, plan, path = plan_on_the_bridge(plan_signer, tmp_path, (public,), (name, 233))
    node = LxcHost(bridge(), lxc_path=plan.lxc_path)
    command = NodeRun(path, tmp_path / "runs")
    host = address(233).split("/")[0]

    def act(seq: int, action: str, containers: tuple[str, ...] = ()) -> str:
        plans.write_action(plan.lease_id, LeaseAction(plan.plan_id, seq, action, containers))
        line = command.out.next()
        assert line.startswith(f"action {seq} {action}: done"), line
        return line

    try:
        assert command.out.next().strip() == f"container {name}: running"
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
        refusal = command.err.next()
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
        assert command.stop() == 0
        out = command.out.rest()
        assert "action 5 stop" not in out and "destroying" in out
        assert "action refused" not in command.err.rest()  # said once only
        assert node.instances() == []
    finally:
        command.kill()
        for record in node.instances():
            node.destroy(record.name)


@needs_lxc
def test_an_action_handed_while_the_run_makes_its_containers_is_done_once_they_run(
    plan_signer: PlanSigner, tmp_path: Path
) -> None:
    """The action there when a run begins is an earlier run's (not done); one handed after it began (while it makes
    its containers, or the instant it reports them) is this run's, done once they run. The run once read the "earlier"
    action only after reporting its containers: an action handed in between (the aggregate hands one as soon as
    the report says running) was taken for an earlier run's and never done."""
    name = "sfaomf-0f94acts-1"
    plans, plan, path = plan_on_the_bridge(plan_signer, tmp_path, (), (name, 243))
    plans.write_action(plan.lease_id, LeaseAction(plan.plan_id, 1, "restart"))  # an earlier run's
    node = LxcHost(bridge(), lxc_path=plan.lxc_path)
    runs = tmp_path / "runs"
    command = NodeRun(path, runs)
    try:
        # Its record is written once the plan is trusted, before any container is made: the run has begun.
        wait_until(lambda: any(runs.glob("*.json")), "the run's record")
        plans.write_action(plan.lease_id, LeaseAction(plan.plan_id, 2, "stop"))
        assert command.out.next().strip() == f"container {name}: running"
        line = command.out.next()
        assert line.startswith("action 2 stop: done"), line
        assert node.state(name) == "STOPPED" and plans.states(plan.lease_id) == {name: ("stopped", "")}
        assert command.stop() == 0
        assert "action 1" not in command.out.rest()
    finally:
        command.kill()
        for record in node.instances():
            node.destroy(record.name)


@needs_lxc
def test_update_users_reaches_the_containers_a_run_already_runs_on_its_node(
    plan_signer: PlanSigner, pki: DemoPki, tmp_path: Path
) -> None:
    """geni_update_users on OAR: the aggregate rewrites the lease's plan (signed, a newer revision), and the run on
    the node, which follows its plan, makes the new set root's whole authorized_keys in the containers it runs: a key
    left out is refused from the next login on, in every container. An earlier signed version of the plan put back
    in its place (the removed key in it) is not followed."""
    site = provisioned(plan_signer, pki, tmp_path)
    laptop, laptop_public = key_pair(tmp_path, "laptop")
    desk, desk_public = key_pair(tmp_path, "desk")
    alice = pki.users["alice"]

    def update_users(*keys: str) -> None:
        users = {"geni_users": [{"urn": alice.chain[0].urn, "keys": list(keys)}]}
        site.am.perform_operational_action(alice.chain, [pki.slice_urn], [alice.slice_cred], "geni_update_users", users)

    # The lease's node is this host, its containers on the tests' bridge (a stand-in for OAR's node: the plan is
    # the aggregate's otherwise, and only the aggregate writes it from here on).
    numbers = dict(zip(site.names, (241, 242), strict=True))
    assert site.plans.update(
        site.lease_id,
        lambda plan: replace(
            plan,
            nodes=PLAN.nodes,
            bridge=bridge(),
            lxc_path=str(tmp_path / "lxc"),
            containers=tuple(replace(c, address=address(numbers[c.name])) for c in plan.containers),
        ),
    )
    update_users(laptop_public, desk_public)
    both = site.plans.plan_path(site.lease_id).read_text()  # signed, with both keys
    hosts = [address(number).split("/")[0] for number in numbers.values()]
    node = LxcHost(bridge(), lxc_path=str(tmp_path / "lxc"))
    command = NodeRun(site.plans.plan_path(site.lease_id), tmp_path / "runs")
    try:
        assert sorted(command.out.next().strip() for _ in site.names) == [f"container {n}: running" for n in site.names]
        assert all(logs_in(laptop, host) and logs_in(desk, host) for host in hosts)

        update_users(desk_public)  # the laptop's key is left out
        line = command.out.next()
        assert line.strip() == f"keys: 1 of the plan written into {', '.join(site.names)}", line
        for host in hosts:
            assert logs_in(desk, host) and not logs_in(laptop, host), host

        # Root of another node sharing the plans directory puts the earlier signed version back: not followed.
        earlier = site.plans.directory / ".earlier"
        earlier.write_text(both)
        earlier.replace(site.plans.plan_path(site.lease_id))
        refusal = command.err.next()
        assert refusal.startswith("plan not followed:") and "an earlier version of the plan" in refusal, refusal
        for host in hosts:
            assert not logs_in(laptop, host), host

        update_users(laptop_public)  # the aggregate's next version is followed again
        assert command.out.next().strip() == f"keys: 1 of the plan written into {', '.join(site.names)}"
        assert all(logs_in(laptop, host) and not logs_in(desk, host) for host in hosts)
        assert command.stop() == 0
        assert node.instances() == []
    finally:
        command.kill()
        for record in node.instances():
            node.destroy(record.name)


def logs_in(key: Path, host: str) -> bool:
    return ssh(key, host, "true").returncode == 0


def test_a_run_follows_only_a_newer_version_of_its_plan_for_its_node_user_and_slot(
    plan_signer: PlanSigner, tmp_path: Path
) -> None:
    """What a run takes of its plan rewritten: a newer version the aggregate signed of the same plan, naming this
    node and the same user, its slot running. Anything else is not followed, said once."""
    if os.geteuid() != 0:
        pytest.fail("the node command's tests run as root (LXC needs it; scripts/test.sh runs them so)")
    plans = LeasePlans(tmp_path / "leases", plan_signer)
    path = plans.write(PLAN)
    followed = plans.read(PLAN.lease_id)
    assert followed is not None and followed.revision > 0
    said: set[str] = set()

    def newer() -> LeasePlan | None:
        return node_containers._newer_plan(path, followed, plan_signer.verifier, frozenset({0}), "127.0.0.1", said)

    assert newer() is None and said == set()  # the version followed, read again: nothing to say
    fewer = replace(PLAN, keys=())
    plans.update(PLAN.lease_id, lambda plan: fewer)
    found = newer()
    assert found == fewer and found is not None and found.revision > followed.revision
    refused = {
        "for node 192.0.2.1, not this one": replace(fewer, nodes=("192.0.2.1",)),
        "is for bob's job, not alice's": replace(fewer, user="bob"),
        "which is over": replace(fewer, slot_start_s=1_000_000_000, slot_end_s=1_000_003_600),
        "is now plan 0123456789abcdef": replace(fewer, plan_id="0123456789abcdef"),
    }
    for words, plan in refused.items():
        plans.update(PLAN.lease_id, lambda _plan, plan=plan: plan)
        assert newer() is None and any(words in problem for problem in said), words
    stranger = PlanSigner(tmp_path / "stranger.key")
    path.write_text(stranger.sign(KIND_PLAN, replace(fewer, revision=followed.revision + 10**9).to_json()))
    assert newer() is None and any("not trusted here" in problem for problem in said)
    path.write_text(plan_signer.sign(KIND_PLAN, replace(fewer, revision=followed.revision - 1).to_json()))
    assert newer() is None and any("an earlier version of the plan" in problem for problem in said)
    path.chmod(0o666)
    assert newer() is None and any("may be changed by others" in problem for problem in said)
    assert len(said) == 7


@needs_lxc
@pytest.mark.parametrize("archived", [True, False], ids=["archived", "archive fails"])
def test_a_nodes_save_freezes_the_running_container_and_unfreezes_it_whatever_happens(
    plan_signer: PlanSigner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archived: bool
) -> None:
    """As a save on the aggregate's host: the run archives a running container frozen (its root changes nothing
    under the walk), and it runs again after, also when the archive could not be written."""
    name = "sfaomf-0f94acts-2"
    plans, plan, path = plan_on_the_bridge(plan_signer, tmp_path, (), (name, 244))
    host = LxcHost(bridge(), lxc_path=plan.lxc_path)
    try:
        host.launch(InstanceSpec(name, address(244), ()), plan.ssh_timeout_s)
        lease_run = node_containers.LeaseRun(
            path, plan, plan_signer.verifier, plan.nodes[0], host, (name,), {name: ("running", "")}
        )
        archive = plans.archive_path(plan.lease_id, plan.nodes[0], 1)
        partial = archive.with_name(f".{archive.name}.tmp")
        if not archived:  # where the run writes it first is taken (in the node's directory, made with the plan)
            partial.write_text("taken\n")
        seen: list[str] = []  # the container's state while its root file system is archived
        save = node_containers.save_rootfs

        def watched(rootfs: Path, into: Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> None:
            seen.append(host.state(name))
            save(rootfs, into, max_bytes)

        monkeypatch.setattr(node_containers, "save_rootfs", watched)
        done = node_containers._act(LeaseAction(plan.plan_id, 1, "save", (name,)), lease_run)
        assert seen == ["FROZEN"] and host.state(name) == "RUNNING"
        if archived:
            assert done.errors == {} and done.archive == str(archive) and archive.is_file()
        else:
            assert "File exists" in done.errors[name] and not archive.exists()
    finally:
        for record in host.instances():
            host.destroy(record.name)
