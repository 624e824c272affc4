"""What a lease set up on a node is taken away at its end, even when setting it up failed part way (real TLS on
loopback, a throwaway host root)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from sfa_omf.agents.host import DirectoryHost
from sfa_omf.agents.node import Agent, enrol
from sfa_omf.agents.staging import FileStore
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import SLICE, book_now, slice_call, sliver_status
from tests.sshkeys import ssh_key


def _end_lease(lab: Lab) -> None:
    client, cred = slice_call(lab)
    assert client.Delete([SLICE], [cred], {})["code"]["geni_code"] == 0


def _fails_then_ends_clean(lab: Lab, agent: Agent, host: DirectoryHost, key: str, failure: str) -> None:
    """The agent's round sets the lease's account up with the key, then fails (the sliver says why); once the lease
    ends, the next round leaves no account and no key."""
    agent.run_once()
    (account,) = lab.aggregate.local_accounts(SLICE)
    assert key in host.authorized_keys(account.login)
    state, error = sliver_status(lab)
    assert state == "geni_failed" and failure in error
    _end_lease(lab)
    agent.run_once()
    assert host.authorized_keys(account.login) == ""
    assert host.logins() == []


def test_keys_of_a_lease_whose_stage_in_failed_go_at_its_end(lab: Lab, tmp_path: Path) -> None:
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    key = ssh_key("ann@laptop")
    book_now(lab, key)
    (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
    store = FileStore(str(lab.directory / "agent_files"), lab.settings.agent_max_file_bytes)
    store.put(lease.id, "pc1", "in", "input.dat", b"data in", hashlib.sha256(b"data in").hexdigest())
    # The file is damaged on the server after it was checked in: its download fails the agent's check.
    (lab.directory / "agent_files" / lease.id / "pc1" / "in" / "input.dat").write_bytes(b"damaged")
    host = DirectoryHost(str(tmp_path / "root"), str(tmp_path / "a1"))
    agent = Agent(str(tmp_path / "a1"), host)
    agent.run_once()  # damaged once may be the network's doing: fetched again next round, the lease not failed yet
    assert sliver_status(lab)[0] != "geni_failed"
    _fails_then_ends_clean(lab, agent, host, key, "staging in failed")  # damaged twice: the file's, the lease fails
    # A restarted agent has nothing left to take away.
    assert Agent(str(tmp_path / "a1"), host).applied == {}


class HalfHost(DirectoryHost):
    """Sets up the first account of a lease, then fails (a useradd refused for the second)."""

    def apply(self, lease_id: str, accounts: Mapping[str, Sequence[str]]) -> None:
        first = sorted(accounts)[0]
        super().apply(lease_id, {first: accounts[first]})
        raise OSError("useradd: cannot lock /etc/passwd")


def test_accounts_of_a_lease_applied_in_part_go_at_its_end(lab: Lab, tmp_path: Path) -> None:
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    key = ssh_key("ann@laptop")
    book_now(lab, key)
    host = HalfHost(str(tmp_path / "root"), str(tmp_path / "a1"))
    _fails_then_ends_clean(lab, Agent(str(tmp_path / "a1"), host), host, key, "cannot lock /etc/passwd")
