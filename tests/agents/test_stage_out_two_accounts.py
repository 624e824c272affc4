"""Stage-out of a lease with two accounts on the node (two slice members with keys), both leaving a file of the same
name in ~/stage-out: a real agent round against the aggregate over real TLS on loopback, a throwaway host root. Both
files are kept, each under its account's login, and the operator's ``sfa-omf node stage-out`` collects both; the
aggregate never replaces a staged-out file with another content (what an older agent would make it do)."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from sfa_omf.agents.host import DirectoryHost
from sfa_omf.agents.node import KEY, Agent, AgentCallError, Client, enrol
from sfa_omf.agents.staging import FileStore
from sfa_omf.times import utcnow
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import NODE, SLICE, USER, environment, request, sfa_omf, slice_call
from tests.sshkeys import ssh_key

#: A second member of the slice, sent with the slice's users (geni_users) like ann.
BOB = "urn:publicid:IDN+lab+user+bob"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TwoAccounts:
    """An enrolled pc1 whose agent has set up a lease of ann and bob (one round): two accounts, each with its
    ~/stage-out made."""

    def __init__(self, lab: Lab, tmp_path: Path) -> None:
        enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
        client, cred = slice_call(lab)
        grain = timedelta(seconds=lab.aggregate.policy.default_grain_s)
        allocated = client.Allocate(SLICE, [cred], request(utcnow(), 2 * grain), {})
        assert allocated["code"]["geni_code"] == 0, allocated
        users = {"geni_users": [{"urn": USER, "keys": [ssh_key("ann@laptop")]}, {"urn": BOB, "keys": [ssh_key("bob")]}]}
        provisioned = client.Provision([SLICE], [cred], users)
        assert provisioned["code"]["geni_code"] == 0, provisioned
        (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
        self.lease_id = lease.id
        self.host = DirectoryHost(str(tmp_path / "root"), str(tmp_path / "a1"))
        self.agent = Agent(str(tmp_path / "a1"), self.host, interval_s=0)
        self.agent.run_once()
        self.logins = sorted(account.login for account in lab.aggregate.local_accounts(SLICE))
        assert len(self.logins) == 2 and self.host.logins() == self.logins
        for login in self.logins:
            self.stage_out(login).mkdir()
        self.store = FileStore(str(lab.directory / "agent_files"), lab.settings.agent_max_file_bytes)

    def stage_out(self, login: str) -> Path:
        return self.host.root / "home" / login / "stage-out"

    def end(self, lab: Lab) -> None:
        """Delete the slice and run the agent's round that stages out and takes the accounts away."""
        client, cred = slice_call(lab)
        assert client.Delete([SLICE], [cred], {})["code"]["geni_code"] == 0
        self.agent.run_once()
        assert self.host.logins() == []


def test_two_accounts_same_file_name_both_kept_and_collected(lab: Lab, tmp_path: Path) -> None:
    node = TwoAccounts(lab, tmp_path)
    ann, bob = node.logins
    results = {ann: b"ann's results\n", bob: b"bob's results\n"}
    for login, data in results.items():
        (node.stage_out(login) / "results.txt").write_bytes(data)
    node.end(lab)
    kept = {(file.name, file.sha256) for file in node.store.list(node.lease_id, "pc1", "out")}
    assert kept == {(f"{login}.results.txt", _sha256(data)) for login, data in results.items()}
    assert lab.agents.node_health(NODE, node.lease_id) == (False, "ended", "")
    # The operator collects both.
    copied = subprocess.run(
        sfa_omf(
            "node", "stage-out", "pc1", node.lease_id, "--to", str(tmp_path / "got"), "--config", lab.settings_path
        ),
        env=environment(),
        capture_output=True,
        text=True,
    )
    assert copied.returncode == 0, copied.stderr
    for login, data in results.items():
        assert (tmp_path / "got" / f"{login}.results.txt").read_bytes() == data


def test_a_name_too_long_with_the_login_is_reported_lost(lab: Lab, tmp_path: Path) -> None:
    node = TwoAccounts(lab, tmp_path)
    ann, bob = node.logins
    long_name = "r" * 96 + ".txt"  # 100 characters: kept alone, not with "<login>." in front
    (node.stage_out(ann) / long_name).write_bytes(b"long\n")
    (node.stage_out(bob) / "results.txt").write_bytes(b"bob's\n")
    node.end(lab)
    kept = [(file.name, file.sha256) for file in node.store.list(node.lease_id, "pc1", "out")]
    assert kept == [(f"{bob}.results.txt", _sha256(b"bob's\n"))]
    lost, state, message = lab.agents.node_health(NODE, node.lease_id) or (True, "", "")
    assert (lost, state) == (False, "ended")
    assert f"{ann}/stage-out/{long_name}" in message and "100 characters" in message, message


def test_the_aggregate_never_replaces_a_staged_out_file_with_another(lab: Lab, tmp_path: Path) -> None:
    node = TwoAccounts(lab, tmp_path)
    client = Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root)
    # What an agent that sends each account's file under its own name does: the second is refused, in words.
    assert client.put_file(node.lease_id, "results.txt", b"first\n")["changed"] is True
    with pytest.raises(AgentCallError) as refused:
        client.put_file(node.lease_id, "results.txt", b"second\n")
    assert (refused.value.status, refused.value.reason) == (409, "already_exists")
    assert "results.txt" in refused.value.message and "other content" in refused.value.message
    assert node.store.get(node.lease_id, "pc1", "out", "results.txt") == (b"first\n", _sha256(b"first\n"))
    # The same file again (a re-send after no answer) is still fine.
    assert client.put_file(node.lease_id, "results.txt", b"first\n")["changed"] is False
    # The operator's stage-in may still replace an input with a newer one.
    node.store.put(node.lease_id, "pc1", "in", "input.dat", b"v1", _sha256(b"v1"))
    assert node.store.put(node.lease_id, "pc1", "in", "input.dat", b"v2", _sha256(b"v2")) is True
    assert node.store.get(node.lease_id, "pc1", "in", "input.dat") == (b"v2", _sha256(b"v2"))
