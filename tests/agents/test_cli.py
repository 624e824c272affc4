"""The operator's agent commands: ``sfa-omf node invite`` and ``sfa-omf node agents``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sfa_omf.agents.node import enrol
from sfa_omf.cli import main
from tests.agents.conftest import Lab


def test_invite_then_list(lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab.aggregate.inventory.create_pool("desktops", federated=False)
    assert main(["node", "invite", "--pool", "desktops", "--json", "--config", lab.settings_path]) == 0
    invitation = json.loads(capsys.readouterr().out)
    assert invitation["pool"] == "desktops" and invitation["root"] == lab.root
    enrol(lab.url, invitation["token"], invitation["root"], str(tmp_path / "a1"), "pc7", "10.1.2.3", "lan-b")
    assert main(["node", "agents", "--json", "--config", lab.settings_path]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["hostname"], listed["pool"], listed["local_address"], listed["lost"]) == (
        "pc7",
        "desktops",
        "10.1.2.3",
        False,
    )
    assert [node.component_name for node in lab.aggregate.inventory.list_nodes(pool="desktops")] == ["pc7"]


def test_invite_refusals(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node", "invite", "--pool", "nowhere", "--config", lab.settings_path]) == 2
    assert "no pool 'nowhere'" in capsys.readouterr().err
    assert main(["node", "invite", "--lifetime", "0", "--config", lab.settings_path]) == 2
    assert "positive number of seconds" in capsys.readouterr().err
    assert lab.agents.list_agents() == []


def test_removing_a_node_revokes_its_vpn_certificate(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography import x509

    from sfa_omf.agents.vpn import VpnCa
    from sfa_omf.trust.pki import new_private_key

    enrolled = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc7")
    ca = VpnCa(str(lab.directory / "vpn"), "lab")
    certificate, _ = ca.issue("pc7", 1, new_private_key().public_key())
    assert main(["node", "remove", enrolled.node, "--config", lab.settings_path]) == 0
    assert "revoked the VPN certificate of pc7" in capsys.readouterr().out
    crl = x509.load_pem_x509_crl((lab.directory / "vpn" / "crl.pem").read_bytes())
    serial = x509.load_pem_x509_certificate(certificate.encode("ascii")).serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert not (lab.directory / "vpn" / "ccd" / "pc7").exists()
