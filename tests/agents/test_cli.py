"""The operator's agent commands: ``sfa-omf node invite`` and ``sfa-omf node agents``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from sfa_omf.agents.node import enrol
from sfa_omf.agents.staging import FileStore
from sfa_omf.cli import main
from sfa_omf.config import read_config
from tests.agents.conftest import Lab
from tests.agents.named import Named


def test_invite_then_list(lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab.aggregate.inventory.create_pool("desktops", federated=False)
    assert main(["node", "invite", "--pool", "desktops", "--json", "--config", lab.settings_path]) == 0
    invitation = json.loads(capsys.readouterr().out)
    assert invitation["pool"] == "desktops" and invitation["root"] == lab.root
    # The aggregate's own URN (am.gid's): the agent sends the token to a server whose certificate names it only.
    assert invitation["aggregate"] == "urn:publicid:IDN+lab+authority+am"
    enrol(
        lab.url,
        invitation["token"],
        invitation["root"],
        str(tmp_path / "a1"),
        "pc7",
        "10.1.2.3",
        "lan-b",
        aggregate_urn=invitation["aggregate"],
    )
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


def test_removing_a_node_takes_its_dns_names_and_staged_files(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("named") is None or shutil.which("dig") is None:
        pytest.fail("bind9 is not installed: scripts/test.sh installs it (apt-get install bind9 bind9-dnsutils)")
    (tmp_path / "named").mkdir()
    named = Named(tmp_path / "named", lab.directory / "dns", "nodes.lab")
    try:
        # In the file: the command reads it, as the server does.
        config = Path(lab.settings_path)
        config.write_text(
            config.read_text() + f"\n[sfa_agents]\ndns_zone = nodes.lab\ndns_reload = {named.reload_command}\n"
        )
        lab.settings = read_config(lab.settings_path)
        lab.restart()
        pc7 = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a7"), "pc7", "127.3.0.7")
        enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a8"), "pc8", "127.3.0.8")
        assert named.resolve(["pc7", "pc8"]) == ["127.3.0.7", "127.3.0.8"]
        store = FileStore(str(lab.directory / "agent_files"), 1024)
        lease, other_lease = "0" * 8 + "-0000-4000-8000-" + "0" * 12, "1" * 8 + "-0000-4000-8000-" + "0" * 12
        for lease_id, hostname in ((lease, "pc7"), (lease, "pc8"), (other_lease, "pc7")):
            store.put(lease_id, hostname, "out", "result.txt", b"42\n", hashlib.sha256(b"42\n").hexdigest())

        assert main(["node", "remove", pc7.node, "--config", lab.settings_path]) == 0
        for zone_file in ("local.zone", "vpn.zone"):
            text = (lab.directory / "dns" / zone_file).read_text()
            assert "pc7" not in text and "pc8 IN A" in text, text
        assert named.resolve(["pc7"]) == [""] and named.resolve(["pc8"]) == ["127.3.0.8"]
        assert sorted(path.name for path in (lab.directory / "agent_files").iterdir()) == [lease]
        assert [file.name for file in store.list(lease, "pc8", "out")] == ["result.txt"]
        assert store.list(lease, "pc7", "out") == []
        out = capsys.readouterr().out
        assert "removed its DNS names" in out and "removed its staged files (2 lease folder(s)" in out, out
    finally:
        named.stop()


def test_invite_prints_the_aggregate_for_agent_enrol(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "invite", "--config", lab.settings_path]) == 0
    printed = capsys.readouterr().out
    assert "--aggregate urn:publicid:IDN+lab+authority+am" in printed, printed
    token = printed.split("--token ", 1)[1].split()[0]
    enrol_command = ["agent", "enrol", "--server", lab.url, "--token", token, "--root", lab.root, "--retry-for", "0"]
    # An invitation naming another aggregate: the real one is refused, the token not sent (still good below).
    other = "urn:publicid:IDN+lab:site2+authority+am"
    assert main([*enrol_command, "--state", str(tmp_path / "a1"), "--hostname", "pc7", "--aggregate", other]) == 1
    said = capsys.readouterr().err
    assert f"names 'urn:publicid:IDN+lab+authority+am', not the aggregate {other!r}; the token was not sent" in said
    aggregate = "urn:publicid:IDN+lab+authority+am"
    assert main([*enrol_command, "--state", str(tmp_path / "a1"), "--hostname", "pc7", "--aggregate", aggregate]) == 0
    assert "enrolled as urn:publicid:IDN+lab+node+pc7" in capsys.readouterr().out
