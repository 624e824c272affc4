"""What the agent does to a host, inside a throwaway root directory: accounts, per-lease key blocks, removal."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfa_omf.agents.host import DirectoryHost
from sfa_omf.errors import GeniError
from tests.sshkeys import ssh_key

L1, L2 = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"


def test_an_account_shared_by_two_leases_stays_until_both_end(tmp_path: Path) -> None:
    host = DirectoryHost(str(tmp_path / "root"), str(tmp_path / "state"))
    host.apply(L1, {"ann_1a2b3c": [ssh_key("one")]})
    host.apply(L2, {"ann_1a2b3c": [ssh_key("two")]})
    keys = host.authorized_keys("ann_1a2b3c")
    assert ssh_key("one") in keys and ssh_key("two") in keys
    host.remove(L1, ["ann_1a2b3c"])
    assert host.logins() == ["ann_1a2b3c"]
    assert ssh_key("one") not in host.authorized_keys("ann_1a2b3c")
    assert ssh_key("two") in host.authorized_keys("ann_1a2b3c")
    # A new agent process (restart) reads what it made from its state directory.
    restarted = DirectoryHost(str(tmp_path / "root"), str(tmp_path / "state"))
    restarted.remove(L2, ["ann_1a2b3c"])
    assert restarted.logins() == []


def test_accounts_the_agent_did_not_make_are_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("operator:x:::op:/home/operator:/bin/sh\n")
    ssh = root / "home" / "operator" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "authorized_keys").write_text(ssh_key("the operator's own") + "\n")
    host = DirectoryHost(str(root), str(tmp_path / "state"))
    host.apply(L1, {"operator": [ssh_key("guest")]})
    host.remove(L1, ["operator"])
    assert host.logins() == ["operator"]
    assert host.authorized_keys("operator") == ssh_key("the operator's own") + "\n"


def test_invalid_logins_and_keys(tmp_path: Path) -> None:
    host = DirectoryHost(str(tmp_path / "root"), str(tmp_path / "state"))
    with pytest.raises(GeniError, match="not a usable Unix login"):
        host.apply(L1, {"../etc": [ssh_key("x")]})
    assert host.logins() == []
    host.apply(L1, {"bob": ["not a key", ssh_key("good")]})
    assert "not a key" not in host.authorized_keys("bob")
    assert ssh_key("good") in host.authorized_keys("bob")
