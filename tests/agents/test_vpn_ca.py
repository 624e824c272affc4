"""The VPN's CA on disk: made once when the server and an operator's command start together, and revocation."""

from __future__ import annotations

import threading
from pathlib import Path

from cryptography import x509

from sfa_omf.agents.vpn import VpnCa, node_address
from sfa_omf.trust.pki import new_private_key


def test_made_once_by_racers_and_the_server_certificate_is_the_cas(tmp_path: Path) -> None:
    barrier = threading.Barrier(6)
    made: list[str] = []

    def racer() -> None:
        barrier.wait()
        made.append(VpnCa(str(tmp_path / "vpn"), "lab").ca_pem)

    threads = [threading.Thread(target=racer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 1 and len(made) == 6
    ca = x509.load_pem_x509_certificate((tmp_path / "vpn" / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "vpn" / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)  # raises when another racer's CA signed it


def test_a_new_certificate_revokes_the_previous_one(tmp_path: Path) -> None:
    ca = VpnCa(str(tmp_path / "vpn"), "lab")
    key = new_private_key().public_key()
    first, address = ca.issue("pc1", 7, key)
    second, again = ca.issue("pc1", 7, key)
    assert address == again == str(node_address(7)) == "10.200.0.8"
    crl = x509.load_pem_x509_crl((tmp_path / "vpn" / "crl.pem").read_bytes())
    serial = lambda pem: x509.load_pem_x509_certificate(pem.encode("ascii")).serial_number  # noqa: E731
    assert crl.get_revoked_certificate_by_serial_number(serial(first)) is not None
    assert crl.get_revoked_certificate_by_serial_number(serial(second)) is None
    assert (tmp_path / "vpn" / "ccd" / "pc1").read_text() == "ifconfig-push 10.200.0.8 255.255.0.0\n"
    assert ca.revoke_node("pc1") is True and ca.revoke_node("pc1") is False
    assert not (tmp_path / "vpn" / "ccd" / "pc1").exists()
