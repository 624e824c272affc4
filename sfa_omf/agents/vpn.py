"""The nodes' VPN (OpenVPN from Debian): a CA of the aggregate's own for it, client certificates signed from the
agents' certificate signing requests, a stable address per node, revocation with a CRL, and the configurations.

Layout, in ``DATA_DIR/vpn/`` (made on first use; keys 0600)::

    ca.key, ca.pem           the VPN's CA (self-signed; only VPN certificates chain to it, so no GID of the
                             federation can open the tunnel)
    server.key, server.pem   the OpenVPN server's certificate (extended key usage serverAuth)
    ccd/<hostname>           the node's fixed address (OpenVPN client-config-dir; ccd-exclusive refuses others)
    revoked.json, crl.pem    revoked serial numbers, and the CRL OpenVPN reads (crl-verify)

A node's address is fixed by its calendar node id: 10.200.0.0/16, host part = node id + 1 (the server is .0.1).
The client's key is the node's own key: the request must hold the key the agent enrolled with.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import utcnow
from sfa_omf.trust.pki import load_private_key, new_private_key, private_key_pem

NETWORK = ipaddress.ip_network("10.200.0.0/16")
SERVER_ADDRESS = NETWORK.network_address + 1
CLIENT_LIFETIME = timedelta(days=365)
CA_LIFETIME = timedelta(days=10 * 365)


def node_address(node_id: int) -> ipaddress.IPv4Address:
    """The node's fixed VPN address (node ids start at 1; .0.1 is the server)."""
    address = NETWORK.network_address + 1 + node_id
    if address not in NETWORK or address == NETWORK.broadcast_address:
        raise GeniError(Reason.UNSUPPORTED, f"node id {node_id} is past the VPN's {NETWORK} addresses")
    return ipaddress.IPv4Address(address)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes, private: bool = False) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644), "wb") as out:
        out.write(data)
    os.replace(temporary, path)


def _leaf(
    subject: str, public_key: rsa.RSAPublicKey, ca_key: rsa.RSAPrivateKey, ca: x509.Certificate, server: bool
) -> x509.Certificate:
    now = utcnow() - timedelta(minutes=5)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + CLIENT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )  # digitalSignature, keyEncipherment: what OpenVPN's remote-cert-tls checks
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


class VpnCa:
    """The VPN's CA on disk. One signer at a time (the CRL, the issued certificates): a lock for the threads of this
    process and a file lock for other processes (``sfa-omf node vpn-revoke`` beside the server)."""

    def __init__(self, directory: str, authority_hrn: str) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.directory / "ccd").mkdir(exist_ok=True)
        # The server and an operator's command may both be first: the CA is made once, under a lock across processes.
        with open(self.directory / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (self.directory / "ca.pem").exists():
                self._create(authority_hrn)
            self.ca_key = load_private_key((self.directory / "ca.key").read_bytes())
            self.ca = x509.load_pem_x509_certificate((self.directory / "ca.pem").read_bytes())
            if not (self.directory / "crl.pem").exists():
                self._write_crl([])

    def _create(self, authority_hrn: str) -> None:
        key = new_private_key()
        now = utcnow() - timedelta(minutes=5)
        name = _name(f"{authority_hrn} node VPN CA")
        ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )  # keyCertSign, cRLSign
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        server_key = new_private_key()
        server = _leaf("server", server_key.public_key(), key, ca, server=True)
        _write(self.directory / "server.key", private_key_pem(server_key), private=True)
        _write(self.directory / "server.pem", server.public_bytes(serialization.Encoding.PEM))
        _write(self.directory / "ca.key", private_key_pem(key), private=True)
        _write(self.directory / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))  # last: marks it complete

    @property
    def ca_pem(self) -> str:
        return self.ca.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, open(self.directory / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _sign(self, hostname: str, node_id: int, public_key: rsa.RSAPublicKey) -> tuple[str, str]:
        address = node_address(node_id)
        certificate = _leaf(hostname, public_key, self.ca_key, self.ca, server=False)
        _write(self.directory / "ccd" / hostname, f"ifconfig-push {address} {NETWORK.netmask}\n".encode())
        return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"), str(address)

    def sign_client(self, hostname: str, node_id: int, public_key: rsa.RSAPublicKey) -> tuple[str, str]:
        """A client certificate (CN = hostname) for the node's key, and its fixed address (written to ccd/)."""
        with self._locked():
            return self._sign(hostname, node_id, public_key)

    def issue(self, hostname: str, node_id: int, public_key: rsa.RSAPublicKey) -> tuple[str, str]:
        """sign_client, keeping the certificate in issued/ (the previous one of the node is revoked), all at once."""
        issued = self.directory / "issued" / f"{hostname}.pem"
        with self._locked():
            if issued.exists():
                self._revoke(issued.read_text(), hostname)
            certificate, address = self._sign(hostname, node_id, public_key)
            issued.parent.mkdir(exist_ok=True)
            _write(issued, certificate.encode("ascii"))
        return certificate, address

    def revoke_node(self, hostname: str) -> bool:
        """Revoke the node's current VPN certificate (a node removed); False when it has none."""
        issued = self.directory / "issued" / f"{hostname}.pem"
        with self._locked():
            if not issued.exists():
                return False
            self._revoke(issued.read_text(), hostname)
            issued.unlink()
        return True

    def revoke_other_key(self, hostname: str, public_key: rsa.RSAPublicKey) -> bool:
        """Revoke the node's current VPN certificate when it holds another key than ``public_key``: the node was
        re-bound to a new key (a reinstalled machine), and the old key must not keep its tunnel. Its ccd/ entry goes
        too, until the new key asks for its own certificate. False when there was nothing to revoke."""
        issued = self.directory / "issued" / f"{hostname}.pem"
        with self._locked():
            if not issued.exists():
                return False
            certificate_pem = issued.read_text()
            if x509.load_pem_x509_certificate(certificate_pem.encode("ascii")).public_key() == public_key:
                return False  # the same key enrolled again (a new token): its tunnel stays
            self._revoke(certificate_pem, hostname)
            issued.unlink()
        return True

    def revoke(self, certificate_pem: str, hostname: str) -> None:
        """Revoke a client certificate (a removed node): into the CRL, and its address entry gone."""
        with self._locked():
            self._revoke(certificate_pem, hostname)

    def _revoke(self, certificate_pem: str, hostname: str) -> None:
        serial = x509.load_pem_x509_certificate(certificate_pem.encode("ascii")).serial_number
        path = self.directory / "revoked.json"
        revoked: list[int] = json.loads(path.read_text()) if path.exists() else []
        if serial not in revoked:
            revoked.append(serial)
        _write(path, json.dumps(revoked).encode("ascii"))
        self._write_crl(revoked)
        (self.directory / "ccd" / hostname).unlink(missing_ok=True)

    def _write_crl(self, revoked: list[int]) -> None:
        now = utcnow()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca.subject)
            .last_update(now - timedelta(minutes=5))
            .next_update(now + CA_LIFETIME)
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        crl = builder.sign(self.ca_key, hashes.SHA256())
        _write(self.directory / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))

    def server_config(self, listen: str, port: int) -> str:
        """An OpenVPN server configuration for this CA (topology subnet; only known nodes, at their addresses)."""
        d = self.directory
        return "\n".join(
            [
                "dev tun",
                "topology subnet",
                "proto udp",
                f"local {listen}",
                f"port {port}",
                f"server {NETWORK.network_address} {NETWORK.netmask}",
                f"ca {d / 'ca.pem'}",
                f"cert {d / 'server.pem'}",
                f"key {d / 'server.key'}",
                "dh none",
                f"crl-verify {d / 'crl.pem'}",
                f"client-config-dir {d / 'ccd'}",
                "ccd-exclusive",
                "remote-cert-tls client",
                "client-to-client",
                "keepalive 2 10",
                "persist-tun",
                "verb 3",
                "",
            ]
        )


def client_config(remote: str, port: int, ca_pem: str, certificate_pem: str, key_path: str) -> str:
    """A ready OpenVPN client configuration: the CA and the certificate inline, the key by path (it stays put)."""
    return "\n".join(
        [
            "client",
            "dev tun",
            "proto udp",
            f"remote {remote} {port}",
            "nobind",
            "remote-cert-tls server",
            f"key {key_path}",
            f"<ca>\n{ca_pem.strip()}\n</ca>",
            f"<cert>\n{certificate_pem.strip()}\n</cert>",
            "verb 3",
            "",
        ]
    )
