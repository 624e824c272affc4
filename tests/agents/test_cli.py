"""The operator's agent commands: ``sfa-omf node invite`` and ``sfa-omf node agents``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.agents.node import enrol
from sfa_omf.agents.staging import FileStore
from sfa_omf.cli import main
from sfa_omf.config import read_config
from tests.agents.conftest import Lab
from tests.agents.named import Named


@contextlib.contextmanager
def named_zone(lab: Lab, tmp_path: Path) -> Iterator[Named]:
    """The lab serving the nodes' zone nodes.lab, written to the configuration file (the command reads it, as the
    server does), with a real named answering for it; named is stopped at the end."""
    if shutil.which("named") is None or shutil.which("dig") is None:
        pytest.fail("bind9 is not installed: scripts/test.sh installs it (apt-get install bind9 bind9-dnsutils)")
    (tmp_path / "named").mkdir()
    named = Named(tmp_path / "named", lab.directory / "dns", "nodes.lab")
    try:
        config = Path(lab.settings_path)
        config.write_text(
            config.read_text() + f"\n[sfa_agents]\ndns_zone = nodes.lab\ndns_reload = {named.reload_command}\n"
        )
        lab.settings = read_config(lab.settings_path)
        lab.restart()
        yield named
    finally:
        named.stop()


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
    with named_zone(lab, tmp_path) as named:
        pc7 = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a7"), "pc7", "192.0.2.7")
        enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a8"), "pc8", "192.0.2.8")
        assert named.resolve(["pc7", "pc8"]) == ["192.0.2.7", "192.0.2.8"]
        store = FileStore(str(lab.directory / "agent_files"), 1024)
        lease, other_lease = "0" * 8 + "-0000-4000-8000-" + "0" * 12, "1" * 8 + "-0000-4000-8000-" + "0" * 12
        for lease_id, hostname in ((lease, "pc7"), (lease, "pc8"), (other_lease, "pc7")):
            store.put(lease_id, hostname, "out", "result.txt", b"42\n", hashlib.sha256(b"42\n").hexdigest())

        assert main(["node", "remove", pc7.node, "--config", lab.settings_path]) == 0
        for zone_file in ("local.zone", "vpn.zone"):
            text = (lab.directory / "dns" / zone_file).read_text()
            assert "pc7" not in text and "pc8 IN A" in text, text
        assert named.resolve(["pc7"]) == [""] and named.resolve(["pc8"]) == ["192.0.2.8"]
        assert sorted(path.name for path in (lab.directory / "agent_files").iterdir()) == [lease]
        assert [file.name for file in store.list(lease, "pc8", "out")] == ["result.txt"]
        assert store.list(lease, "pc7", "out") == []
        out = capsys.readouterr().out
        assert "removed its DNS names" in out and "removed its staged files (2 lease folder(s)" in out, out


def test_invite_prints_the_aggregate_for_agent_enrol(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "invite", "--config", lab.settings_path]) == 0
    printed = capsys.readouterr().out
    assert "--aggregate urn:publicid:IDN+lab+authority+am" in printed, printed
    token = printed.splitlines()[1].strip()  # printed once, on its own line; the command reads it from a file
    token_file = tmp_path / "join.token"
    token_file.write_text(f"{token}\n")
    token_file.chmod(0o600)
    enrol_command = ["agent", "enrol", "--server", lab.url, "--token-file", str(token_file), "--root", lab.root]
    enrol_command.extend(["--retry-for", "0"])
    # An invitation naming another aggregate: the real one is refused, the token not sent (still good below).
    other = "urn:publicid:IDN+lab:site2+authority+am"
    assert main([*enrol_command, "--state", str(tmp_path / "a1"), "--hostname", "pc7", "--aggregate", other]) == 1
    said = capsys.readouterr().err
    assert f"names 'urn:publicid:IDN+lab+authority+am', not the aggregate {other!r}; the token was not sent" in said
    aggregate = "urn:publicid:IDN+lab+authority+am"
    assert main([*enrol_command, "--state", str(tmp_path / "a1"), "--hostname", "pc7", "--aggregate", aggregate]) == 0
    assert "enrolled as urn:publicid:IDN+lab+node+pc7" in capsys.readouterr().out


def test_a_node_whose_vpn_certificate_cannot_be_revoked_is_removed_but_for_it_saying_how_to_finish(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The VPN's CRL cannot be written (a directory in the way of its temporary copy, as a full or read-only disk
    would; a real fault also as root): the removal used to stop there, after the calendar had let the node go,
    leaving its DNS names, staged files and registry record. Now everything else goes, the command says what is
    left and what finishes it (once), and exits 2; that command then does finish it. The certificate is issued as
    the server issues it (cluster_vpn_ca): on PostgreSQL the revocation is then recorded for the cluster before
    this host's CRL fails, and the command says so instead of "not revoked", and `node vpn-revoke` finds it done."""
    from cryptography import x509

    from sfa_omf.calendar.agents import Agents
    from sfa_omf.cli_agents import cluster_vpn_ca
    from sfa_omf.registry.authority import LocalAuthority
    from sfa_omf.registry.nodes import record_nodes
    from sfa_omf.registry.records import Records
    from sfa_omf.trust.pki import new_private_key

    with named_zone(lab, tmp_path) as named:
        pc7 = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a7"), "pc7", "192.0.2.7")
        # The registry records the nodes it does not know yet at its start (registry server, `node add`).
        records = Records(lab.aggregate.database)
        record_nodes(LocalAuthority.load(str(lab.directory), "lab"), records, lab.aggregate.inventory.list_nodes())
        vpn = lab.directory / "vpn"
        number = Agents(lab.aggregate.database).node_number(pc7.node)
        certificate, _ = cluster_vpn_ca(lab.settings).issue("pc7", number, new_private_key().public_key())
        serial = x509.load_pem_x509_certificate(certificate.encode("ascii")).serial_number
        store = FileStore(str(lab.directory / "agent_files"), 1024)
        lease = "0" * 8 + "-0000-4000-8000-" + "0" * 12
        store.put(lease, "pc7", "out", "result.txt", b"42\n", hashlib.sha256(b"42\n").hexdigest())
        hrn = "lab.pc7"
        had_record = records.get(hrn) is not None
        (vpn / "crl.pem.tmp").mkdir()  # the fault
        capsys.readouterr()

        code = main(["node", "remove", pc7.node, "--config", lab.settings_path])

        out, err = capsys.readouterr()
        assert lab.aggregate.inventory.list_nodes() == []
        assert named.resolve(["pc7"]) == [""], (out, err)
        assert not (lab.directory / "agent_files" / lease / "pc7").exists()
        assert had_record and records.get(hrn) is None
        assert "removed its DNS names" in out and "removed its staged files (1 lease folder(s)" in out, out
        assert "removed its record from the registry of lab" in out, out
        assert code == 2, (out, err)
        assert "revoked the VPN certificate" not in out
        assert f"{pc7.node} is removed but for what follows: " in err, err
        assert err.count("sfa-omf node vpn-revoke pc7") == 1, err  # said once
        if lab.aggregate.database.is_sqlite:  # the files alone: nothing is revoked (the CRL is written first)
            assert "its VPN certificate is not revoked, or not completely" in err, err
        else:  # recorded for the cluster: every serving host's refresh writes it into its CRL
            cause = f"{vpn / 'crl.pem.tmp'}: Is a directory"  # as every sfa-omf error says an OSError
            assert (
                "its VPN certificate's revocation is recorded for the cluster; this host's CRL file not rewritten: "
                f"{cause}; the server's next refresh rewrites it, or run `sfa-omf node vpn-revoke pc7` once fixed"
            ) in err, err
            assert "not revoked" not in err, err

        (vpn / "crl.pem.tmp").rmdir()  # the cause fixed: what the command said to run
        assert main(["node", "vpn-revoke", "pc7", "--config", lab.settings_path]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        if lab.aggregate.database.is_sqlite:
            assert "revoked the VPN certificate of pc7" in out, out
        else:
            assert f"the VPN certificate of pc7 is already revoked; CRL written ({vpn / 'crl.pem'})" in out, out
        crl = x509.load_pem_x509_crl((vpn / "crl.pem").read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None
        # A node that never had one is still told apart.
        assert main(["node", "vpn-revoke", "pc9", "--config", lab.settings_path]) == 2
        assert "node pc9 has no VPN certificate" in capsys.readouterr().err


def test_a_node_whose_staged_files_cannot_be_deleted_is_removed_but_for_them_with_its_registry_record(
    lab: Lab, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A staged file that cannot be deleted (immutable as root, in a read-only folder otherwise: a real fault of
    the file system): shutil.rmtree's error used to end the command before the registry record went. Now the record
    goes, the command names the folder left and the error as every sfa-omf error says one (path: reason), exit 2."""
    from sfa_omf.registry.authority import LocalAuthority
    from sfa_omf.registry.nodes import record_nodes
    from sfa_omf.registry.records import Records

    pc7 = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a7"), "pc7", "192.0.2.7")
    records = Records(lab.aggregate.database)
    record_nodes(LocalAuthority.load(str(lab.directory), "lab"), records, lab.aggregate.inventory.list_nodes())
    store = FileStore(str(lab.directory / "agent_files"), 1024)
    lease = "0" * 8 + "-0000-4000-8000-" + "0" * 12
    store.put(lease, "pc7", "out", "result.txt", b"42\n", hashlib.sha256(b"42\n").hexdigest())
    (staged,) = (lab.directory / "agent_files" / lease / "pc7").rglob("result.txt")
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(["chattr", "+i", str(staged)], check=True)
    else:
        staged.parent.chmod(0o500)
    try:
        assert records.get("lab.pc7") is not None

        code = main(["node", "remove", pc7.node, "--config", lab.settings_path])

        out, err = capsys.readouterr()
        assert lab.aggregate.inventory.list_nodes() == []
        assert "removed its record from the registry of lab" in out and records.get("lab.pc7") is None, (out, err)
        assert code == 2, (out, err)
        folders = lab.directory / "agent_files" / "*" / "pc7"
        said = f"{pc7.node} is removed but for what follows: its staged files are not all deleted: {staged.name}: "
        assert said in err and f"; delete {folders} once fixed" in err, err  # (rmtree names the file alone)
        assert "Errno" not in err, err
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(staged)], check=True)
        else:
            staged.parent.chmod(0o700)


def test_a_node_without_a_vpn_certificate_is_removed_when_this_hosts_crl_cannot_be_written_with_a_warning(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On PostgreSQL another host revoked pc8 in the cluster's records, and this host's CRL, out of date, cannot be
    written (a directory in the way of its temporary copy). Removing pc7, which never had a certificate, used to say
    "its VPN certificate is not revoked (it still opens pc7's tunnel)" and exit 2, naming `node vpn-revoke pc7`,
    which then said pc7 has no certificate. Now the node is removed (exit 0) with a warning that this host's CRL is
    not in line with the records. On SQLite (files only: each revocation writes the CRL) nothing is said."""
    from cryptography import x509

    from sfa_omf.cli_agents import cluster_vpn_ca
    from sfa_omf.trust.pki import new_private_key

    pc7 = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a7"), "pc7")
    vpn = lab.directory / "vpn"
    ca = cluster_vpn_ca(lab.settings)
    certificate, _ = ca.issue("pc8", 8, new_private_key().public_key())
    (vpn / "crl.pem.tmp").mkdir()  # the fault, before the revocation: the server's refresh cannot write it either
    if ca.records is not None:
        ca.records.revoke_current("pc8")  # on another host: this host's CRL not rewritten yet
    capsys.readouterr()

    code = main(["node", "remove", pc7.node, "--config", lab.settings_path])

    out, err = capsys.readouterr()
    assert lab.aggregate.inventory.list_nodes() == []
    assert code == 0, (out, err)
    assert "not revoked" not in err and "tunnel" not in err and "vpn-revoke" not in err, err
    if lab.aggregate.database.is_sqlite:
        assert err == "", err
        return
    cause = f"{vpn / 'crl.pem.tmp'}: Is a directory"
    assert (
        "warning: pc7 had no VPN certificate to revoke, but this host's VPN files (its CRL) are not in line with the "
        f"cluster's records and could not be rewritten: {cause}; once that is fixed, the server's next refresh "
        "rewrites them"
    ) in err, err
    (vpn / "crl.pem.tmp").rmdir()  # the cause fixed: a refresh (as the server's) writes pc8's revocation
    cluster_vpn_ca(lab.settings).refresh()
    crl = x509.load_pem_x509_crl((vpn / "crl.pem").read_bytes())
    serial = x509.load_pem_x509_certificate(certificate.encode("ascii")).serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


@pytest.mark.parametrize("lab", ["postgresql"], indirect=True)  # (SQLite has no cluster records: see the test above)
def test_a_nodes_vpn_revocation_is_recorded_for_the_cluster_when_this_hosts_crl_is_out_of_date_and_unwritable(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL: this host's CRL is out of date (another host revoked pc8 in the cluster's records) and cannot be
    written, so the CA's set-up (which writes the files from the records) fails. Removing pc7, which has a
    certificate, used to leave its revocation unrecorded ("not revoked"): now the records take it, the command says
    only this host's CRL is left, and `node vpn-revoke pc7` then finds it done. pc9, revoked on another host before
    its removal here, is said the same way (its revocation is not in this host's CRL), not as having none."""
    from cryptography import x509

    from sfa_omf.calendar.agents import Agents
    from sfa_omf.cli_agents import cluster_vpn_ca
    from sfa_omf.trust.pki import new_private_key

    agents = Agents(lab.aggregate.database)
    pc7 = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a7"), "pc7")
    pc9 = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a9"), "pc9")
    vpn = lab.directory / "vpn"
    ca = cluster_vpn_ca(lab.settings)
    assert ca.records is not None
    serials: dict[str, int] = {}
    for name, node in (("pc7", pc7.node), ("pc9", pc9.node)):
        certificate, _ = ca.issue(name, agents.node_number(node), new_private_key().public_key())
        serials[name] = x509.load_pem_x509_certificate(certificate.encode("ascii")).serial_number
    ca.issue("pc8", 8, new_private_key().public_key())
    (vpn / "crl.pem.tmp").mkdir()  # the fault, before the revocations: the server's refresh cannot write it either
    ca.records.revoke_current("pc8")  # on other hosts: this host's CRL not rewritten
    ca.records.revoke_current("pc9")
    capsys.readouterr()

    for name, node in (("pc7", pc7.node), ("pc9", pc9.node)):
        code = main(["node", "remove", node, "--config", lab.settings_path])

        out, err = capsys.readouterr()
        assert code == 2, (out, err)
        cause = f"{vpn / 'crl.pem.tmp'}: Is a directory"
        assert (
            f"{node} is removed but for what follows: its VPN certificate's revocation is recorded for the cluster; "
            f"this host's CRL file not rewritten: {cause}; the server's next refresh rewrites it, or run `sfa-omf "
            f"node vpn-revoke {name}` once fixed"
        ) in err, err
        assert "not revoked" not in err, err
    state = ca.records.state()
    assert {serials["pc7"], serials["pc9"]} <= state.revoked
    assert [issued.hostname for issued in state.issued] == []

    (vpn / "crl.pem.tmp").rmdir()  # the cause fixed: what the command said to run
    assert main(["node", "vpn-revoke", "pc7", "--config", lab.settings_path]) == 0, capsys.readouterr().err
    assert f"the VPN certificate of pc7 is already revoked; CRL written ({vpn / 'crl.pem'})" in capsys.readouterr().out
    crl = x509.load_pem_x509_crl((vpn / "crl.pem").read_bytes())
    assert all(crl.get_revoked_certificate_by_serial_number(serial) is not None for serial in serials.values())
