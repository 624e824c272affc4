"""The file-only VPN (SQLite's one host, agents/vpn.py without records): crl.pem (what OpenVPN reads) and
revoked.json must agree, and a re-issue that fails part-way must leave both as they were, the node's working
certificate valid. A revocation writes the CRL first, then revoked.json; every serial either file revokes stays
revoked (VpnCa._revoked_here), and the next operation writes both from that. What OpenVPN would accept is asked of
the real openssl (``openssl verify -crl_check``: the chain to the VPN's CA and the CRL, as OpenVPN's crl-verify)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from sfa_omf.agents.vpn import VpnCa
from sfa_omf.errors import GeniError, Reason
from sfa_omf.trust.pki import new_private_key, private_key_pem


def serial(pem: str) -> int:
    """The certificate's serial number."""
    return x509.load_pem_x509_certificate(pem.encode("ascii")).serial_number


def crl_serials(directory: Path) -> set[int]:
    """The serials crl.pem revokes."""
    return {revoked.serial_number for revoked in x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())}


def listed_revoked(directory: Path) -> set[int]:
    """The serials revoked.json lists (none when it is absent)."""
    path = directory / "revoked.json"
    return set(json.loads(path.read_text())) if path.exists() else set()


def openssl_accepts(directory: Path, pem: str) -> bool:
    """Whether the real openssl accepts the client certificate with the VPN's CA and its CRL (what OpenVPN's
    crl-verify checks at each connection)."""
    certificate = directory.parent / "client.pem"
    certificate.write_text(pem)
    command = ["openssl", "verify", "-crl_check", "-CAfile", str(directory / "ca.pem")]
    verified = subprocess.run(
        [*command, "-CRLfile", str(directory / "crl.pem"), str(certificate)], capture_output=True, text=True
    )
    return verified.returncode == 0


def crl_put_back(directory: Path) -> tuple[VpnCa, str]:
    """A file-only VPN in ``directory`` whose crl.pem was put back from a copy older than a revocation (a restored
    backup): revoked.json lists the revoked certificate, the CRL does not. The VPN, and that certificate."""
    ca = VpnCa(str(directory), "lab")
    older_crl = (directory / "crl.pem").read_bytes()
    revoked, _ = ca.issue("n1", 1, new_private_key().public_key())
    assert ca.revoke_node("n1")
    (directory / "crl.pem").write_bytes(older_crl)
    return ca, revoked


@pytest.mark.parametrize("failing", ["revoked.json", "crl.pem"])
def test_a_reissue_whose_revocation_fails_leaves_the_crl_and_revoked_json_as_they_were(
    tmp_path: Path, failing: str
) -> None:
    """The node's certificate is re-issued and the previous one's revocation fails at one of its two writes (a
    directory in the way of the file's temporary copy makes the write fail with an OSError, as a full or read-only
    disk would). revoked.json failing after the CRL was written is the case that left the node's working certificate
    in the CRL; the CRL failing (written first) is the reverse. Either way: 503, and the CRL, revoked.json and
    issued/ are what they were, the working certificate accepted, also after the next operations."""
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab")
    removed, _ = ca.issue("n2", 2, new_private_key().public_key())
    assert ca.revoke_node("n2")  # revoked.json and the CRL hold a serial already
    key = new_private_key().public_key()
    working, _ = ca.issue("n1", 1, key)
    crl_before, revoked_before = (directory / "crl.pem").read_bytes(), (directory / "revoked.json").read_bytes()
    (directory / f"{failing}.tmp").mkdir()

    with pytest.raises(GeniError) as failed:
        ca.issue("n1", 1, key)

    assert failed.value.reason is Reason.UNAVAILABLE and "no VPN certificate was issued" in failed.value.message
    assert serial(working) not in crl_serials(directory), "OpenVPN refuses the node's working certificate"
    assert (directory / "crl.pem").read_bytes() == crl_before
    assert (directory / "revoked.json").read_bytes() == revoked_before
    assert (directory / "issued" / "n1.pem").read_text() == working and (directory / "ccd" / "n1").exists()
    assert openssl_accepts(directory, working) and not openssl_accepts(directory, removed)

    (directory / f"{failing}.tmp").rmdir()
    again = VpnCa(str(directory), "lab")  # the next process, and its next issue and revocation
    again.issue("n3", 3, new_private_key().public_key())
    assert again.revoke_node("n3")
    assert serial(working) not in crl_serials(directory) | listed_revoked(directory)
    assert openssl_accepts(directory, working)


def test_a_crl_behind_revoked_json_revokes_everything_again_at_the_next_operation(tmp_path: Path) -> None:
    """crl.pem put back from an older copy (a restored backup), so revoked.json lists a revocation the CRL lacks:
    the next process's start (a server, an operator's command) writes the CRL from every serial either file
    revokes, before any other certificate is issued; the revoked certificate no longer opens the tunnel."""
    directory = tmp_path / "vpn"
    _ca, revoked = crl_put_back(directory)
    assert openssl_accepts(directory, revoked)  # (what the restored copy lets in)

    VpnCa(str(directory), "lab")

    assert serial(revoked) in crl_serials(directory)
    assert not openssl_accepts(directory, revoked), "OpenVPN lets a revoked certificate in"


def test_the_next_issue_writes_the_crl_from_revoked_json_too(tmp_path: Path) -> None:
    """The same with the server running (its VpnCa made before the CRL was put back): the next certificate it
    issues, to any node, writes the CRL first."""
    directory = tmp_path / "vpn"
    ca, revoked = crl_put_back(directory)

    ca.issue("n2", 2, new_private_key().public_key())

    assert serial(revoked) in crl_serials(directory)
    assert not openssl_accepts(directory, revoked), "OpenVPN lets a revoked certificate in"


# What the crash stand-in's child process runs: a re-issue for n1 in the test's VPN directory (the node's key in the
# key file), whose process dies (os._exit) when it is about to write the file named by the last argument.
_DIES_WRITING = """
import os, sys
from pathlib import Path
from sfa_omf.agents import vpn
from sfa_omf.trust.pki import load_private_key

directory, key_file, dies_at = sys.argv[1:4]
write = vpn._write

def write_or_die(path, data, private=False):
    if path.name == dies_at:
        os._exit(9)
    write(path, data, private)

vpn._write = write_or_die
vpn.VpnCa(directory, "lab").issue("n1", 1, load_private_key(Path(key_file).read_bytes()).public_key())
"""


def reissue_dying_at(directory: Path, key_file: Path, file_name: str) -> None:
    """CrashStandIn: a re-issue for n1 whose process is killed (os._exit in a child process, standing in for a crash
    or a power cut, which a test cannot cause at that exact moment) as it is about to write ``file_name``."""
    child = [sys.executable, "-c", _DIES_WRITING, str(directory), str(key_file), file_name]
    died = subprocess.run(child, cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=300)
    assert died.returncode == 9, died.stderr


def test_a_reissue_whose_process_dies_between_the_crl_and_revoked_json(tmp_path: Path) -> None:
    """The CRL revoking the previous certificate is written, revoked.json not: the next process keeps the
    certificate revoked and revoked.json says so too; the node (whose request got no answer) asks again and gets a
    certificate that works."""
    directory = tmp_path / "vpn"
    key = new_private_key()
    (tmp_path / "node.key").write_bytes(private_key_pem(key))
    working, _ = VpnCa(str(directory), "lab").issue("n1", 1, key.public_key())

    reissue_dying_at(directory, tmp_path / "node.key", "revoked.json")
    assert serial(working) in crl_serials(directory) and serial(working) not in listed_revoked(directory)

    ca = VpnCa(str(directory), "lab")

    assert serial(working) in crl_serials(directory) and serial(working) in listed_revoked(directory)
    assert not openssl_accepts(directory, working)
    again, _ = ca.issue("n1", 1, key.public_key())
    assert openssl_accepts(directory, again) and (directory / "issued" / "n1.pem").read_text() == again


def test_a_reissue_that_dies_before_its_revocation_leaves_no_valid_certificate_forgotten(tmp_path: Path) -> None:
    """The re-issue's process dies as it is about to write the CRL revoking the previous certificate; later the node
    is re-bound to a new key (a reinstalled machine), which revokes the old key's certificate, and the new key gets
    its own (its ccd/ entry back). The old key's certificate must be refused: it was the one issued/ held, not a
    new certificate the dead call wrote over it there, which would leave the working one valid and known nowhere."""
    directory = tmp_path / "vpn"
    old_key, new_key = new_private_key(), new_private_key()
    (tmp_path / "node.key").write_bytes(private_key_pem(old_key))
    working, _ = VpnCa(str(directory), "lab").issue("n1", 1, old_key.public_key())

    reissue_dying_at(directory, tmp_path / "node.key", "crl.pem")
    ca = VpnCa(str(directory), "lab")
    assert ca.revoke_other_key("n1", new_key.public_key())
    ca.issue("n1", 1, new_key.public_key())

    assert (directory / "ccd" / "n1").exists()  # (the tunnel's name n1 is open again, to a certificate not revoked)
    assert not openssl_accepts(directory, working), "the old key opens n1's tunnel"
    assert serial(working) in crl_serials(directory) | listed_revoked(directory)


def test_a_revocation_whose_files_cannot_be_written_says_how_to_complete_it(tmp_path: Path) -> None:
    """A node removed (``sfa-omf node remove``, ``node vpn-revoke``) while the CRL cannot be written (a directory in
    the way of its temporary file, as a full or read-only disk would): the operator is told the certificate is not
    revoked and which command completes it, instead of an internal error naming crl.pem.tmp. A node re-bound to a
    new key whose revoked.json cannot be written after the CRL: the agent is told to retry (503), and the CRL
    written meanwhile keeps the old key out."""
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab")
    removed, _ = ca.issue("n1", 1, new_private_key().public_key())
    (directory / "crl.pem.tmp").mkdir()

    with pytest.raises(GeniError) as failed:
        ca.revoke_node("n1")

    assert failed.value.reason is Reason.UNAVAILABLE
    assert "not revoked" in failed.value.message and "sfa-omf node vpn-revoke n1" in failed.value.message
    (directory / "crl.pem.tmp").rmdir()
    assert ca.revoke_node("n1")  # what the message says to run
    assert not openssl_accepts(directory, removed) and not (directory / "ccd" / "n1").exists()

    old_key = new_private_key()
    re_bound, _ = ca.issue("n2", 2, old_key.public_key())
    (directory / "revoked.json.tmp").mkdir()
    with pytest.raises(GeniError) as failed:
        ca.revoke_other_key("n2", new_private_key().public_key())
    assert failed.value.reason is Reason.UNAVAILABLE and "try again" in failed.value.message
    assert not openssl_accepts(directory, re_bound)
    (directory / "revoked.json.tmp").rmdir()
    assert ca.revoke_other_key("n2", new_private_key().public_key())  # the agent's retry
    assert serial(re_bound) in listed_revoked(directory) and not (directory / "ccd" / "n2").exists()


@pytest.mark.parametrize("content", ["", "-----BEGIN CERTIFICATE-----\nMIIB"])
def test_an_issued_certificate_cut_short_stops_neither_a_new_one_nor_the_removal(tmp_path: Path, content: str) -> None:
    """issued/n1.pem empty or cut short (files are not synced: a power cut after an issue): the node still gets a new
    certificate (the unreadable one is nothing to revoke), a re-bound key revokes it, and the node's removal takes
    its address away. Reading it was revoking it first, which failed for ever: an internal error at every request."""
    directory = tmp_path / "vpn"
    ca = VpnCa(str(directory), "lab")
    ca.issue("n1", 1, new_private_key().public_key())
    issued = directory / "issued" / "n1.pem"
    issued.write_text(content)
    key = new_private_key().public_key()
    fresh, address = ca.issue("n1", 1, key)
    assert issued.read_text() == fresh and openssl_accepts(directory, fresh) and address
    issued.write_text(content)
    assert ca.revoke_other_key("n1", key), "a certificate that cannot be read is not the key's"
    assert not issued.exists() and not (directory / "ccd" / "n1").exists()
    ca.issue("n1", 1, key)
    issued.write_text(content)
    assert ca.revoke_node("n1")
    assert not issued.exists() and not (directory / "ccd" / "n1").exists(), "OpenVPN lets no certificate of n1 in"


def test_the_server_starts_when_the_revocation_files_cannot_be_brought_in_line(tmp_path: Path) -> None:
    """The CRL behind revoked.json and the disk refusing writes (a directory in the way of the CRL's temporary copy,
    as a full disk would): the aggregate still starts (the VPN is not all it serves), and the next issue, once the
    files can be written, brings the CRL in line first."""
    directory = tmp_path / "vpn"
    _ca, revoked = crl_put_back(directory)
    (directory / "crl.pem.tmp").mkdir()

    started = VpnCa(str(directory), "lab")

    assert openssl_accepts(directory, revoked), "(the CRL could not be written yet)"
    (directory / "crl.pem.tmp").rmdir()
    started.issue("n2", 2, new_private_key().public_key())
    assert not openssl_accepts(directory, revoked)
