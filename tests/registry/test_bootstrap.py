"""sfa-omf init: the files sfi.py looks for, never overwriting keys, and refusing a different authority."""

from __future__ import annotations

import configparser
import os
import stat
from pathlib import Path

import pytest

from sfa_omf.registry.authority import AuthorityError
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki


def test_sfi_directory_has_the_files_sfi_looks_for(pki: DemoPki) -> None:
    sfi = pki.users["alice"].sfi_dir
    names = sorted(os.listdir(sfi))
    assert names == sorted(
        [
            "sfi_config",
            "omni_config",  # omni's (it has no --cert/--key options)
            "testbed.alice.pkey",
            "testbed.alice.user.gid",
            "testbed.alice.user.cred",
            "testbed.alice-testbed.demo.slice.cred",
            "id_ed25519",  # the demo user's SSH key pair, registered in the registry
            "id_ed25519.pub",
        ]
    )
    assert stat.S_IMODE(os.stat(sfi / "id_ed25519").st_mode) == 0o600
    assert (sfi / "id_ed25519.pub").read_text().startswith("ssh-ed25519 AAAA")
    assert "keep these URLs http://" in (sfi / "sfi_config").read_text(), "why http:// (sfi.py opens TLS itself)"
    config = configparser.ConfigParser()
    config.read(sfi / "sfi_config")
    assert dict(config["sfi"]) == {
        "auth": "testbed",
        "user": "testbed.alice",
        "registry": "http://127.0.0.1:12345/",
        "sm": "http://127.0.0.1:12346/",
    }
    assert stat.S_IMODE(os.stat(sfi / "testbed.alice.pkey").st_mode) == 0o600
    assert "PRIVATE KEY" in (sfi / "testbed.alice.pkey").read_text()
    chain = load_gid_chain_file(str(sfi / "testbed.alice.user.gid"))
    assert [gid.hrn for gid in chain] == ["testbed.alice", "testbed"]


def test_everything_issued_verifies(pki: DemoPki) -> None:
    verifier = CredentialVerifier(load_trusted_roots(str(pki.directory / "trusted_roots")))
    for user in pki.users.values():
        verifier.check_call(user.chain, [user.slice_cred], pki.slice_urn, "createsliver", utcnow())
        verifier.check_call(user.chain, [user.user_cred], user.chain[0].urn, "listnodes", utcnow())
    am = load_gid_chain_file(str(pki.directory / "aggregate" / "am.gid"))
    assert am[0].urn == "urn:publicid:IDN+testbed+authority+am" and am[0].is_ca


def test_config_names_sfa_sections(pki: DemoPki) -> None:
    config = configparser.ConfigParser()
    config.read(pki.directory / "sfa-omf.conf")
    assert config["sfa"]["interface_hrn"] == "testbed"
    assert config["sfa_registry"]["port"] == "12345"
    assert config["sfa_aggregate"]["port"] == "12346"
    assert config["sfa_aggregate"]["type"] == "embedded"


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def test_rerun_changes_nothing_and_adds_new_users(tmp_path: Path) -> None:
    directory = tmp_path / "tb"
    init_directory(str(directory), "tb", ("ann",))
    before = _snapshot(directory)
    again = init_directory(str(directory), "tb", ("ann",))
    assert again.created == []
    assert _snapshot(directory) == before
    more = init_directory(str(directory), "tb", ("ann", "ben"))
    after = _snapshot(directory)
    assert {path: data for path, data in after.items() if path in before} == before, "nothing existing changed"
    assert any(path.endswith("tb.ben.pkey") for path in more.created)


def test_another_authority_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    init_directory(str(tmp_path), "tb", ("ann",))
    before = _snapshot(tmp_path)
    with pytest.raises(AuthorityError, match="already holds authority 'tb'"):
        init_directory(str(tmp_path), "other", ("ann",))
    assert _snapshot(tmp_path) == before


def test_multi_level_authority_and_bad_user_names(tmp_path: Path) -> None:
    report = init_directory(str(tmp_path / "a"), "onelab.inria", ("ann",))
    chain = load_gid_chain_file(report.sfi_dirs["ann"] + "/onelab.inria.ann.user.gid")
    assert chain[0].urn == "urn:publicid:IDN+onelab:inria+user+ann"
    with pytest.raises(AuthorityError, match="not usable"):
        init_directory(str(tmp_path / "b"), "tb", ("Bad Name",))


def test_authority_issues_node_gids_with_dotted_names(tmp_path: Path) -> None:
    """Node names often carry dots (m3-10.grenoble.iot-lab.info): they are escaped in the HRN, plain in the URN."""
    from sfa_omf.registry.authority import LocalAuthority

    authority = LocalAuthority.create(str(tmp_path), "iotlab")
    chain, key = authority.issue_gid("iotlab.m3-10\\.grenoble\\.iot-lab\\.info", "node")
    assert key is not None
    assert chain[0].urn == "urn:publicid:IDN+iotlab+node+m3-10.grenoble.iot-lab.info"
    assert chain[0].hrn == "iotlab.m3-10\\.grenoble\\.iot-lab\\.info" and not chain[0].is_ca
    roots = load_trusted_roots(str(tmp_path / "trusted_roots"))
    from sfa_omf.trust.roots import verify_chain

    assert verify_chain(chain, roots, utcnow()).hrn == "iotlab"
    with pytest.raises(AuthorityError, match="not under authority"):
        authority.issue_gid("other.node1", "node")
    with pytest.raises(AuthorityError, match="exists already"):
        authority.issue_gid("iotlab.m3-10\\.grenoble\\.iot-lab\\.info", "node")
