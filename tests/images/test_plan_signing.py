"""Signed plans and actions, and reports in each node's own directory: what closes the plans directory to the root
of other nodes (a lease's experimenter is root on its node, and the nodes share the directory). The node command
acts only on what the aggregate's key signed, for a lease, node and user it names; the aggregate believes only its
own plans and the report in the directory of the lease's node."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.calendar.records import NodeSpec
from sfa_omf.cli import main
from sfa_omf.errors import GeniError, Reason
from sfa_omf.images import node_containers
from sfa_omf.images.node_plans import (
    LeasePlan,
    LeasePlans,
    PlanError,
    is_node_name,
    open_signed,
    report_path_of,
    write_states,
)
from sfa_omf.images.plan_signing import KIND_ACTION, KIND_PLAN, PlanSigner, PlanVerifier, SignatureError
from sfa_omf.times import format_time
from tests.conftest import DemoPki
from tests.images.test_node_side import KEY, NODE, PLAN, Site, provision
from tests.images.test_node_side import site as site  # the fixture: an aggregate whose leases' jobs run them

NODE_2 = "urn:publicid:IDN+testbed+node+node2"
NODE_3 = "urn:publicid:IDN+testbed+node+node3"


# -- the signature --------------------------------------------------------------------------------------------------
def test_a_signed_document_opens_only_as_signed(plan_signer: PlanSigner, tmp_path: Path) -> None:
    document = PLAN.to_json()
    signed = plan_signer.sign(KIND_PLAN, document)
    assert plan_signer.verifier.open(KIND_PLAN, signed) == document
    with pytest.raises(SignatureError, match="not as a action"):
        plan_signer.verifier.open(KIND_ACTION, signed)  # a plan never passes for an action
    with pytest.raises(SignatureError, match="not trusted here"):
        PlanSigner(tmp_path / "other.key").verifier.open(KIND_PLAN, signed)
    envelope = json.loads(signed)
    envelope["document"] = document.replace("alice", "mallory")
    with pytest.raises(SignatureError, match="does not match"):
        plan_signer.verifier.open(KIND_PLAN, json.dumps(envelope))
    with pytest.raises(SignatureError, match="not a signed document"):
        plan_signer.verifier.open(KIND_PLAN, document)
    with pytest.raises(SignatureError, match="not JSON"):
        plan_signer.verifier.open(KIND_PLAN, "{")
    with pytest.raises(SignatureError, match="not JSON: RecursionError"):
        plan_signer.verifier.open(KIND_PLAN, "[" * 200_000)
    envelope = json.loads(signed) | {"ed25519": "not base64!"}
    with pytest.raises(SignatureError, match="does not match"):
        plan_signer.verifier.open(KIND_PLAN, json.dumps(envelope))


def test_the_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "data" / "plan-signing.key"
    first = PlanSigner(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PlanSigner(path).public_line() == first.public_line()
    # Processes starting at once: all end with the one key written first.
    racing = tmp_path / "race.key"
    lines: list[str] = []
    threads = [threading.Thread(target=lambda: lines.append(PlanSigner(racing).public_line())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lines) == 8 and len(set(lines)) == 1 and PlanSigner(racing).public_line() == lines[0]
    assert [entry.name for entry in tmp_path.iterdir() if entry.name.startswith(".")] == []


def test_a_key_file_that_is_no_ed25519_key_is_refused_saying_so(tmp_path: Path) -> None:
    (tmp_path / "text").write_text("not a key\n")
    with pytest.raises(ValueError, match="is not an unencrypted PEM private key"):
        PlanSigner(tmp_path / "text")
    rsa = rsa_key(tmp_path / "rsa.pem")
    with pytest.raises(ValueError, match="not Ed25519"):
        PlanSigner(rsa)
    assert (tmp_path / "text").read_text() == "not a key\n"  # never replaced


def rsa_key(path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def test_a_signers_file_lists_keys_and_says_which_line_is_wrong(tmp_path: Path) -> None:
    one, two = PlanSigner(tmp_path / "one.key"), PlanSigner(tmp_path / "two.key")
    verifier = PlanVerifier.from_lines(f"# two aggregates\n{one.public_line()}\n\n{two.public_line()}  # new\n")
    assert verifier.open(KIND_PLAN, two.sign(KIND_PLAN, "{}")) == "{}"
    assert verifier.open(KIND_PLAN, one.sign(KIND_PLAN, "{}")) == "{}"
    with pytest.raises(SignatureError, match="line 2 is not"):
        PlanVerifier.from_lines(f"{one.public_line()}\nssh-ed25519 AAAA\n")
    with pytest.raises(SignatureError, match="line 1: not an Ed25519 public key"):
        PlanVerifier.from_lines("sfa-omf-plan-signer AAAA\n")


def test_the_cli_prints_the_line_for_the_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "tb")]) == 0
    config = str(tmp_path / "tb" / "sfa-omf.conf")
    capsys.readouterr()
    assert main(["instance", "signing-key", "--config", config]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("sfa-omf-plan-signer ") and len(line.split()) == 3
    assert main(["instance", "signing-key", "--config", config]) == 0  # the same key, kept in the data directory
    assert capsys.readouterr().out.strip() == line
    PlanVerifier.from_lines(line)  # what a node reads


# -- the node command ------------------------------------------------------------------------------------------------
def refused(path: Path, runs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the node command on ``path`` as alice's job: it must refuse (exit 2) and make nothing; its stderr."""
    monkeypatch.setenv("SUDO_USER", "alice")
    monkeypatch.setattr(node_containers, "RUNS_DIR", runs)
    assert node_containers.main(["run", str(path)]) == 2
    assert not runs.exists()  # nothing made, nothing recorded
    return capsys.readouterr().err


@pytest.mark.parametrize("forgery", ["unsigned", "another key", "altered", "another lease's", "another node's"])
def test_the_node_command_runs_only_a_plan_the_aggregate_signed_for_this_lease_and_node(
    plan_signer: PlanSigner,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    forgery: str,
) -> None:
    """What root on another node sharing the plans directory could write in a lease's plan's place, owned by root
    as the aggregate's: each is refused, exit 2, nothing made."""
    plans = LeasePlans(tmp_path / "leases", plan_signer)
    path = plans.write(PLAN)
    mine = replace(PLAN, keys=(*PLAN.keys, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMallory mallory"))
    if forgery == "unsigned":
        path.write_text(mine.to_json())
        words = "not a signed document"
    elif forgery == "another key":
        path.write_text(PlanSigner(tmp_path / "mallory.key").sign(KIND_PLAN, mine.to_json()))
        words = "which is not trusted here"
    elif forgery == "altered":
        envelope = json.loads(path.read_text())
        envelope["document"] = mine.to_json()
        path.write_text(json.dumps(envelope))
        words = "its signature does not match"
    elif forgery == "another lease's":  # a signed plan of mallory's own lease, copied over alice's
        other = plans.write(replace(mine, lease_id="0f94ffff", plan_id="fedcba9876543210"))
        path.write_text(other.read_text())
        words = "is the plan of lease 0f94ffff, not of the lease its file names"
    else:  # signed, but for a node that is not this host (TEST-NET-1: no packet is sent, the bind fails)
        plans.write(replace(PLAN, nodes=("192.0.2.1",)))
        words = "is for node 192.0.2.1, not this one"
    err = refused(path, tmp_path / "runs", capsys, monkeypatch)
    assert err.startswith("refused: plan") and words in err, err


def test_without_a_trusted_key_the_node_command_runs_nothing_and_says_what_to_install(
    plan_signer: PlanSigner, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = LeasePlans(tmp_path / "leases", plan_signer).write(PLAN)
    monkeypatch.setattr(node_containers, "SIGNERS_FILE", tmp_path / "etc" / "plan-signers")
    err = refused(path, tmp_path / "runs", capsys, monkeypatch)
    assert "no aggregate key is trusted here" in err and "sfa-omf instance signing-key" in err
    signers = tmp_path / "etc" / "plan-signers"
    signers.parent.mkdir()
    signers.write_text(plan_signer.public_line() + "\n")
    signers.chmod(0o666)  # anybody could add their key: not trusted either
    err = refused(path, tmp_path / "runs", capsys, monkeypatch)
    assert "may be changed by others" in err


def test_a_plan_runs_on_this_host_under_any_of_its_names() -> None:
    assert node_containers.is_this_node("127.0.0.1")
    assert node_containers.is_this_node("127.0.0.2")  # what scripts/oar.sh's exec nodes are named
    assert node_containers.is_this_node(socket.gethostname())
    assert not node_containers.is_this_node("192.0.2.1")
    assert node_containers.is_this_node("::1")  # a node OAR reaches by IPv6
    assert not node_containers.is_this_node("2001:db8::1")  # documentation prefix: bound nowhere


def test_a_run_reports_into_its_nodes_directory_and_never_through_a_link(
    plan_signer: PlanSigner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = LeasePlans(tmp_path / "leases", plan_signer).write(PLAN)
    report = report_path_of(path, "127.0.0.1")
    assert report.parent == tmp_path / "leases" / "nodes" / "127.0.0.1" and report.parent.is_dir()
    node_containers._report(report, {"c0": ("running", "")}, PLAN.plan_id)
    assert json.loads(report.read_text())["containers"] == {"c0": {"state": "running", "error": ""}}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    report.unlink()
    report.parent.rmdir()
    report.parent.symlink_to(elsewhere)  # planted by root of the node, to have root write elsewhere
    node_containers._report(report, {"c0": ("running", "")}, PLAN.plan_id)
    assert list(elsewhere.iterdir()) == [] and "is not a directory (a link?)" in capsys.readouterr().err


# -- the aggregate ---------------------------------------------------------------------------------------------------
def test_the_aggregate_believes_only_the_report_of_the_leases_node(site: Site, pki: DemoPki) -> None:
    lease_id = provision(site, pki)
    plan = site.plans.read(lease_id)
    assert plan is not None and plan.nodes == ("node1",)  # the node's name: it has no network_address
    first, second = (record.name for record in site.instances.of_lease(lease_id))
    states = {first: ("running", ""), second: ("running", "")}
    forged = site.plans.report_path(lease_id, "node2")  # root of node2 reporting on node1's lease
    forged.parent.mkdir(parents=True)
    write_states(forged, states, plan.plan_id)
    next_to_the_plan = site.plans.directory / f"{lease_id}.state.json"  # where reports went before
    write_states(next_to_the_plan, states, plan.plan_id)
    assert site.plans.states(lease_id) == {} and site.am.run_instances() == ([], [])
    write_states(site.plans.report_path(lease_id, "node1"), states, plan.plan_id)
    assert site.plans.states(lease_id) == states


def test_the_aggregate_never_reads_nor_signs_over_a_plan_it_did_not_sign(site: Site, pki: DemoPki) -> None:
    """A plan replaced by root of a node: not read back (None), and a later rewrite (new keys, a Renew, the
    rounds) never signs what it holds; the forged file stays unsigned, which every node refuses."""
    lease_id = provision(site, pki)
    plan = site.plans.read(lease_id)
    assert plan is not None
    path = site.plans.plan_path(lease_id)
    forged = replace(plan, keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMallory mallory",))
    path.write_text(forged.to_json())
    assert site.plans.read(lease_id) is None
    assert site.instances.rewrite_keys([lease_id], ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlice alice"]) == []
    assert path.read_text() == forged.to_json()
    with pytest.raises(PlanError):
        open_signed(site.plans.signer.verifier, KIND_PLAN, path.read_text())


def test_removing_a_lease_removes_its_files_in_its_nodes_directory_only(site: Site, pki: DemoPki) -> None:
    lease_id = provision(site, pki)
    plan = site.plans.read(lease_id)
    assert plan is not None
    node_dir = site.plans.report_path(lease_id, "node1").parent
    write_states(site.plans.report_path(lease_id, "node1"), {}, plan.plan_id)
    (node_dir / f"{lease_id}.save-1.tar").write_bytes(b"x")
    (node_dir / f".{lease_id}.save-2.tar.tmp").write_bytes(b"x")
    (node_dir / "0f94ffff.state.json").write_text("{}")  # another lease's report on that node
    site.plans.remove(lease_id)
    assert sorted(entry.name for entry in node_dir.iterdir()) == ["0f94ffff.state.json"]
    assert not site.plans.plan_path(lease_id).exists()


def test_a_taken_save_drops_the_archives_of_earlier_saves_too(plan_signer: PlanSigner, tmp_path: Path) -> None:
    """A save whose node answered after its call gave up leaves an archive no call takes: the next save taken
    removes it with its own; later ones (a save still to be taken) stay."""
    plans = LeasePlans(tmp_path / "leases", plan_signer)
    plans.write(PLAN)
    for seq in (1, 2, 3, 12):
        plans.archive_path(PLAN.lease_id, "127.0.0.1", seq).write_bytes(b"x")
    plans.drop_archives(PLAN.lease_id, "127.0.0.1", upto_seq=3)
    left = sorted(entry.name for entry in plans.report_path(PLAN.lease_id, "127.0.0.1").parent.iterdir())
    assert left == [f"{PLAN.lease_id}.save-12.tar"]


def test_a_plan_without_nodes_is_refused(plan_signer: PlanSigner) -> None:
    """Written by an aggregate older than node directories: Provision again rewrites it."""
    data = json.loads(PLAN.to_json())
    del data["nodes"]
    with pytest.raises(PlanError, match="names no node"):
        LeasePlan.from_json(json.dumps(data))
    with pytest.raises(PlanError, match="nodes must be"):
        LeasePlan.from_json(json.dumps(data | {"nodes": ["../etc"]}))
    assert os.path.basename(str(report_path_of(Path("/x/l.plan.json"), "n1"))) == "l.state.json"


def test_a_lease_with_containers_books_one_node_where_jobs_make_them(site: Site, pki: DemoPki) -> None:
    """The lease's job runs its command on one node, which makes all its containers: a lease of two nodes asking for
    containers is refused (UNSUPPORTED, nothing booked); the same nodes in a lease each are booked, the containers'
    lease's plan naming its own node."""
    site.am.inventory.add_node(NodeSpec(NODE_2, "node2", grain_s=60, properties={"network_address": "10.0.0.2"}))
    alice = pki.users["alice"]
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=10)
    until = start + timedelta(minutes=30)

    def request(lease_of_b: str) -> str:
        leases = "".join(
            f'<ol:lease client_id="{label}" valid_from="{format_time(start)}" valid_until="{format_time(until)}"/>'
            for label in sorted({"la", lease_of_b})
        )
        return (
            '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
            'xmlns:inst="http://sfa-omf.org/rspec/ext/instances/1" '
            f'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">{leases}'
            f'<node client_id="a" component_id="{NODE}" exclusive="true"><sliver_type name="lxc"/>'
            '<ol:lease_ref id_ref="la"/></node>'
            f'<node client_id="b" component_id="{NODE_2}" exclusive="true"><sliver_type name="raw-pc"/>'
            f'<ol:lease_ref id_ref="{lease_of_b}"/></node></rspec>'
        )

    options = {"geni_users": [{"urn": alice.chain[0].urn, "keys": [KEY]}]}
    with pytest.raises(GeniError) as refused:
        site.am.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], request("la"), options)
    assert refused.value.reason == Reason.UNSUPPORTED and "a lease of its own" in refused.value.message
    assert site.am.bookings.leases(slice_urn=pki.slice_urn) == []
    site.am.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], request("lb"), options)
    site.am.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], options)
    leases = site.am.bookings.leases(slice_urn=pki.slice_urn)
    plans = [site.plans.read(lease.id) for lease in leases]
    assert len(leases) == 2 and [plan.nodes for plan in plans if plan is not None] == [("node1",)]


# -- review: what a node's root can still write ------------------------------------------------------------------
def test_a_report_left_for_a_later_lease_is_written_over_by_its_run(plan_signer: PlanSigner, tmp_path: Path) -> None:
    """An earlier tenant of the node read a later lease's plan (every node reads plans) and left a report for it in
    the node's directory: the lease's run writes its own back at its next poll (and its word could not destroy
    anything meanwhile: the aggregate never frees an address on a node's word)."""
    plans = LeasePlans(tmp_path / "leases", plan_signer)
    plans.write(PLAN)
    report = plans.report_path(PLAN.lease_id, "127.0.0.1")
    states = {"sfaomf-0f94abcd-0": ("running", "")}
    write_states(report, {"sfaomf-0f94abcd-0": ("failed", "forged")}, PLAN.plan_id)
    node_containers._reassert(report, states, PLAN.plan_id, None)
    assert plans.states(PLAN.lease_id) == states
    written = report.stat().st_mtime_ns
    node_containers._reassert(report, states, PLAN.plan_id, None)  # holding its own: not written again
    assert report.stat().st_mtime_ns == written
    report.unlink()
    node_containers._reassert(report, states, PLAN.plan_id, None)
    assert plans.states(PLAN.lease_id) == states


def test_a_report_nested_too_deep_is_no_report(site: Site, pki: DemoPki) -> None:
    """JSON nested deep enough overflows the parser: read as no report, every round goes on."""
    lease_id = provision(site, pki)
    site.plans.report_path(lease_id, "node1").write_text("[" * 200_000)
    assert site.plans.states(lease_id) == {} and site.plans.done(lease_id) is None
    assert site.am.run_instances() == ([], [])


def test_directories_planted_under_a_leases_file_names_are_left_and_stop_nothing(site: Site, pki: DemoPki) -> None:
    lease_id = provision(site, pki)
    plan = site.plans.read(lease_id)
    assert plan is not None
    node_dir = site.plans.report_path(lease_id, "node1").parent
    planted = [node_dir / f"{lease_id}.state.json", node_dir / f"{lease_id}.save-1.tar"]
    for directory in planted:
        directory.mkdir()
    site.plans.drop_archives(lease_id, "node1", upto_seq=5)
    site.plans.write(plan)  # Provision again
    old_report = site.plans.directory / f"{lease_id}.state.json"  # where a report went before node directories
    old_report.write_text("{}")
    # A node's directory replaced by a link (a read-write export): never followed to remove anything.
    elsewhere = node_dir.parent.parent.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f"{lease_id}.state.json").write_text("not the aggregate's to remove")
    (node_dir.parent / "node-link").symlink_to(elsewhere)
    site.plans.plan_path(lease_id).write_text("unsigned: every node directory is looked at")
    site.plans.remove(lease_id)
    assert all(directory.is_dir() for directory in planted)
    assert not site.plans.plan_path(lease_id).exists() and not old_report.exists()
    assert (elsewhere / f"{lease_id}.state.json").exists()


def test_a_key_made_by_root_belongs_to_the_data_directorys_owner(tmp_path: Path) -> None:
    """`sfa-omf instance signing-key` run as root before the service (its account owns the data directory) first
    started: the service can still read the key it made."""
    if os.geteuid() != 0:
        pytest.fail("the node command's tests run as root (LXC needs it; scripts/test.sh runs them so)")
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 65534, 65534)
    PlanSigner(data / "plan-signing.key")
    key = (data / "plan-signing.key").stat()
    assert (key.st_uid, key.st_gid, stat.S_IMODE(key.st_mode)) == (65534, 65534, 0o600)


def test_a_save_is_never_written_through_a_link_in_place_of_the_nodes_directory(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "leases" / "nodes").mkdir(parents=True)
    (tmp_path / "leases" / "nodes" / "127.0.0.1").symlink_to(elsewhere)
    archive = tmp_path / "leases" / "nodes" / "127.0.0.1" / "0f94abcd.save-1.tar"
    with pytest.raises(OSError, match="is not a directory"):
        node_containers._node_directory(archive)
    assert list(elsewhere.iterdir()) == []


def test_nodes_reached_by_ipv6_or_long_names_get_a_directory_and_others_are_refused(site: Site, pki: DemoPki) -> None:
    assert all(map(is_node_name, ["fd00::2", "node-1.cluster.example.org", "n" * 253]))
    assert not any(map(is_node_name, ["a b", "../etc", "", "n" * 254, ".hidden", "a/b"]))
    site.am.inventory.add_node(NodeSpec(NODE_2, "node2", grain_s=60, properties={"network_address": "fd00::2"}))
    assert site.instances._network_addresses([NODE_2]) == ("fd00::2",)
    site.am.inventory.add_node(NodeSpec(NODE_3, "node3", grain_s=60, properties={"network_address": "node 3"}))
    with pytest.raises(GeniError) as refused:
        site.instances._network_addresses([NODE_3])
    assert refused.value.reason == Reason.TESTBED and "network_address" in refused.value.message
