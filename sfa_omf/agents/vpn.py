"""The nodes' VPN (OpenVPN from Debian): a CA of the aggregate's own for it, client certificates signed from the
agents' certificate signing requests, a stable address per node's agent, revocation with a CRL, and the configurations.

Layout, in ``DATA_DIR/vpn/`` (made on first use; keys 0600)::

    ca.key, ca.pem           the VPN's CA (self-signed; only VPN certificates chain to it, so no GID of the
                             federation can open the tunnel)
    server.key, server.pem   the OpenVPN server's certificate (extended key usage serverAuth)
    ccd/<hostname>           the node's fixed address (OpenVPN client-config-dir; ccd-exclusive refuses others)
    issued/<hostname>.pem    the node's current client certificate
    revoked.json, crl.pem    revoked serial numbers, and the CRL OpenVPN reads (crl-verify)

Several hosts on one database (``VpnCa(..., records=VpnRecords(database))``, what ``sfa-omf serve`` builds) are one
VPN: the CA is made once, by the first host, and its fingerprint recorded in the database; a host whose directory
holds another CA, or none, refuses to start the VPN and says what to copy from which host (never a second CA).
Issued and revoked certificates are recorded in the database, and every host writes issued/, ccd/, revoked.json and
crl.pem from those rows (``refresh``: at start, after each issue or revocation, and every few seconds), so a
certificate revoked through one host is in every host's CRL within that period. Without records (an operator's
command given no database) the files alone are kept, as on a single host; the next refresh of a host records what
such a command changed there (a revocation, a certificate) for the cluster. The files alone (SQLite's one host): what
revoked.json or crl.pem revokes stays revoked, both are written from that at start and before each issue, and an issue
that fails is undone in issued/, ccd/, revoked.json and crl.pem alike.

A refresh costs one small query when nothing changed: it compares the records' version and the timestamps of
revoked.json, crl.pem, issued/ and ccd/ with those it saw when it last wrote them, and reads or writes no file when
both are the same. The files are read again (each only when its timestamps changed) when another process changed
them, and written where they differ from the records. Every writer here replaces a file (a new inode, a change to its
directory), never edits it in place, which is what the timestamps see.

A node's address is fixed by its agent's VPN number (calendar/agents.py: 1..VPN_NUMBERS, the lowest free one at
registration, free again once the node is removed and VPN_NUMBER_QUARANTINE_S has passed since its certificate's
revocation): 10.200.0.0/16, host part = number + 1 (the server is .0.1). OpenVPN checks the CRL only at a handshake:
the server renegotiates every VPN_RENEGOTIATION_S and keeps a tunnel's old key VPN_KEY_TRANSITION_S after that
(server_config), so a revoked node's established tunnel ends within their sum of the CRL naming it; until then its
number is nobody else's.
The client's key is the node's own key: the request must hold the key the agent enrolled with.

Certificates expire (OpenVPN checks their dates at every handshake, so at every renegotiation): the server's is issued
for SERVER_LIFETIME and re-issued for the same key when SERVER_RENEW_BEFORE or less is left, at start and at every
refresh (a stat of server.pem when nothing is due), after which the OpenVPN server is sent SIGHUP (its pid from
SERVER_PID, which server_config has it write) to load it; a node's is issued for CLIENT_LIFETIME and its agent asks
for a new one once two thirds of it passed (agents/node.py, VPN_RENEW_AFTER).
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sfa_omf.agents.node import signal_openvpn
from sfa_omf.calendar.agents import VPN_KEY_TRANSITION_S, VPN_NETWORK, VPN_NUMBERS, VPN_RENEGOTIATION_S, vpn_number_of
from sfa_omf.calendar.vpn_records import IssuedCertificate, VpnRecords, VpnState
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import utcnow
from sfa_omf.trust.pki import load_private_key, new_private_key, private_key_pem

NETWORK = VPN_NETWORK
SERVER_ADDRESS = NETWORK.network_address + 1
#: How long a node's VPN client certificate is valid (its agent asks for a new one after two thirds of it).
CLIENT_LIFETIME = timedelta(days=365)
#: How long the OpenVPN server's certificate is valid, and how long before its end it is re-issued (at start and at
#: each refresh): a month for the OpenVPN server to be reloaded when it could not be signalled.
SERVER_LIFETIME = timedelta(days=365)
SERVER_RENEW_BEFORE = timedelta(days=30)
#: The OpenVPN server's pid file in DATA_DIR/vpn/ (server_config's writepid): whom a re-issued certificate is
#: signalled to (SIGHUP: OpenVPN reads its certificate only when it starts or restarts).
SERVER_PID = "openvpn.pid"
CA_LIFETIME = timedelta(days=10 * 365)
#: The files that make a host's VPN CA: what is copied from the host that made it.
CA_FILES = ("ca.key", "ca.pem", "server.key", "server.pem")
#: A file changed less than this before it was looked at may change again without its timestamps showing it (they are
#: coarse: a tick of the kernel's clock on Linux, up to 2 s on some file systems): what was seen of it is not trusted
#: the next time (git's "racy" files).
SETTLED_S = 2.0
log = logging.getLogger("sfa_omf.agents")

#: What tells that a file or a directory changed: inode, size, modification and change times (ns).
Stamp = tuple[int, int, int, int]


class VpnCaMismatch(GeniError):
    """This host's DATA_DIR/vpn does not hold the cluster's VPN CA: the VPN is not started (the message says what to
    copy from where)."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.UNSUPPORTED, message)


def ca_fingerprint(ca: x509.Certificate) -> str:
    """SHA-256 of the CA certificate (DER), hex: how the database names the cluster's CA."""
    return hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()


def node_address(number: int) -> ipaddress.IPv4Address:
    """The fixed VPN address of the node whose agent has VPN number ``number`` (1..VPN_NUMBERS; .0.1 is the
    server)."""
    if not 1 <= number <= VPN_NUMBERS:
        raise GeniError(Reason.UNSUPPORTED, f"VPN number {number} is not one of the VPN's 1..{VPN_NUMBERS}")
    return ipaddress.IPv4Address(NETWORK.network_address + 1 + number)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes, private: bool = False) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644), "wb") as out:
        out.write(data)
    os.replace(temporary, path)


def _every_revoked(listed: list[int] | None, in_crl: list[int] | None) -> list[int]:
    """revoked.json's serials (``listed``), then those only the CRL revokes (``in_crl``)."""
    known = set(listed or [])  # once: a set per CRL entry made a re-issue quadratic in the revoked serials
    return (listed or []) + [serial for serial in in_crl or [] if serial not in known]


def _serial_of(certificate_pem: str, hostname: str) -> int | None:
    """The serial of a node's issued certificate; None (said in the log) when the file cannot be read as one: cut
    short by a power cut (files are not synced), it must not stop the node from getting a new one, nor its removal."""
    try:
        return x509.load_pem_x509_certificate(certificate_pem.encode("ascii")).serial_number
    except ValueError as exc:
        log.warning("node %s: its issued VPN certificate cannot be read (%s); taken as none", hostname, exc)
        return None


def _ccd(address: str) -> bytes:
    return f"ifconfig-push {address} {NETWORK.netmask}\n".encode()


def _ccd_number(path: Path) -> int | None:
    """The VPN number of the address a ccd/ entry gives its node; None when it is absent or unreadable."""
    try:
        words = path.read_text(encoding="ascii").split()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return vpn_number_of(words[1]) if len(words) > 1 else None


@dataclass(frozen=True)
class RevokedNode:
    """What the file-only VPN revoked of a node: its certificate's serial (None: its issued/ file could not be read,
    so the CRL does not name it; its ccd/ entry went all the same) and the VPN number its ccd/ entry gave it (None
    when it had none)."""

    serial: int | None
    number: int | None


def _stamp(path: Path) -> Stamp | None:
    """The file's or directory's stamp, None when it is absent."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


def _settled(stamp: Stamp | None, now_s: float) -> bool:
    """True when the stamp's last change is SETTLED_S old: a later change gives another stamp."""
    return stamp is None or now_s - stamp[3] / 1e9 >= SETTLED_S


@dataclass
class _Files:
    """What a host's VPN files hold, as this process last read or wrote them (contents as bytes)."""

    revoked: list[int] | None  # revoked.json, sorted; None when absent or unreadable
    crl: list[int] | None  # the serials crl.pem revokes, sorted; None when absent, unreadable or not signed by the CA
    issued: dict[str, bytes] = field(default_factory=dict)  # hostname -> issued/<hostname>.pem
    ccd: dict[str, bytes] = field(default_factory=dict)  # hostname -> ccd/<hostname>


def _leaf(
    subject: str,
    public_key: rsa.RSAPublicKey,
    ca_key: rsa.RSAPrivateKey,
    ca: x509.Certificate,
    server: bool,
    lifetime: timedelta = CLIENT_LIFETIME,
    not_before: datetime | None = None,
) -> x509.Certificate:
    """A server or client certificate signed by the VPN's CA, valid from ``not_before`` (five minutes ago: clocks
    differ) for ``lifetime``."""
    now = not_before if not_before is not None else utcnow() - timedelta(minutes=5)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + lifetime)
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

    def __init__(
        self,
        directory: str,
        authority_hrn: str,
        records: VpnRecords | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """The CA in ``directory`` (made when absent, on a single host or the cluster's first). With ``records`` it
        must be the cluster's CA (VpnCaMismatch otherwise), and the files are written from the database at once.
        ``clock``: the time now (epoch seconds), to tell whether the files' timestamps are settled (SETTLED_S)."""
        self.directory = Path(directory)
        self.records = records
        self.clock = clock
        self._lock = threading.Lock()
        # What refresh() last saw (with records): the records' version its files were written from, and the stamps of
        # the files after it (None when not yet settled: they are read again); the files' contents then; the bytes of
        # each file read, by path, with its stamp (only settled ones: a file whose stamp is the same is not read).
        self._seen: tuple[str, tuple[Stamp | None, ...] | None] | None = None
        self._files: _Files | None = None
        self._read_cache: dict[Path, tuple[Stamp, bytes]] = {}
        # server.pem's stamp when last looked at, and when it is due for re-issue (renew_server_certificate).
        self._server_seen: tuple[Stamp | None, datetime] | None = None
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.directory / "ccd").mkdir(exist_ok=True)
        # The server and an operator's command may both be first: the CA is made once, under a lock across processes.
        with open(self.directory / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if records is not None:
                self._check_cluster_ca(records, authority_hrn)
            elif not (self.directory / "ca.pem").exists():
                self._create(authority_hrn)
            self.ca_key = load_private_key((self.directory / "ca.key").read_bytes())
            self.ca = x509.load_pem_x509_certificate((self.directory / "ca.pem").read_bytes())
            try:  # at start: a server certificate near its end (or past it) is re-issued (else: each refresh)
                self._renew_server()
            except OSError as exc:
                log.error("VPN server certificate in %s not checked for re-issue: %s", self.directory, exc)
            if records is None:  # the file-only VPN: its two files agree before any use (with records: refresh)
                try:
                    self._revocation_in_line()
                except OSError as exc:  # (the CRL, written first, revokes what either does; each issue tries again)
                    log.warning("VPN files in %s could not be brought in line at start: %s", self.directory, exc)
            elif not (self.directory / "crl.pem").exists():  # (lost: what revoked.json says is revoked stays so)
                self._write_crl(self._revoked_here())
        if records is not None:
            self.refresh()

    def _check_cluster_ca(self, records: VpnRecords, authority_hrn: str) -> None:
        """Make sure this directory holds the cluster's CA: record it (making it first) when the cluster has none,
        refuse another or none when it has one. Called under the directory's lock."""
        ca_path = self.directory / "ca.pem"
        cluster = records.cluster_ca()
        made_here = False
        if cluster is None:
            if not ca_path.exists():  # the cluster's first host: its CA becomes the cluster's
                self._create(authority_hrn)
                made_here = True
            local = ca_fingerprint(x509.load_pem_x509_certificate(ca_path.read_bytes()))
            cluster = records.record_ca(local, socket.gethostname())
            if cluster.sha256 != local and made_here:  # another host recorded its CA first: ours was never used
                for name in CA_FILES:
                    (self.directory / name).unlink(missing_ok=True)
        copy = (
            f"copy {', '.join(CA_FILES)} from DATA_DIR/vpn/ of host {cluster.made_on!r} (which made the cluster's VPN "
            f"CA, SHA-256 {cluster.sha256}) into {self.directory}/, keeping their modes (keys 0600), then start again "
            "(docs/operators.md, Several hosts)"
        )
        if not ca_path.exists():
            raise VpnCaMismatch(f"the VPN is not started: this host's {self.directory} holds no VPN CA; {copy}")
        local = ca_fingerprint(x509.load_pem_x509_certificate(ca_path.read_bytes()))
        if local != cluster.sha256:
            raise VpnCaMismatch(
                f"the VPN is not started: this host's {self.directory} holds another VPN CA (SHA-256 {local}) than "
                f"the cluster's: certificates it signed would not open the other hosts' tunnels. Move this host's "
                f"{', '.join(CA_FILES)} aside and {copy}"
            )

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
        server = _leaf("server", server_key.public_key(), key, ca, server=True, lifetime=SERVER_LIFETIME)
        _write(self.directory / "server.key", private_key_pem(server_key), private=True)
        _write(self.directory / "server.pem", server.public_bytes(serialization.Encoding.PEM))
        _write(self.directory / "ca.key", private_key_pem(key), private=True)
        _write(self.directory / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))  # last: marks it complete

    def renew_server_certificate(self) -> bool:
        """Re-issue the OpenVPN server's certificate (same key, this CA, SERVER_LIFETIME) when SERVER_RENEW_BEFORE
        or less of it is left, or it is unreadable or not this CA's, then signal the OpenVPN server to load it; True
        when it was re-issued. When nothing is due: a stat of server.pem (another process's re-issue changes it)."""
        seen = self._server_seen
        if seen is not None and seen[0] == _stamp(self.directory / "server.pem") and utcnow() < seen[1]:
            return False
        with self._locked():
            return self._renew_server()

    def _renew_server(self) -> bool:
        """renew_server_certificate under the directory's lock."""
        path = self.directory / "server.pem"
        stamp = _stamp(path)
        old: x509.Certificate | None = None
        try:
            old = x509.load_pem_x509_certificate(path.read_bytes())
            old.verify_directly_issued_by(self.ca)
        except (OSError, ValueError, TypeError, InvalidSignature) as exc:
            log.warning("VPN server certificate %s unreadable or not this CA's (%s): issuing a new one", path, exc)
            old = None
        if old is not None and utcnow() < old.not_valid_after_utc - SERVER_RENEW_BEFORE:
            self._server_seen = (stamp, old.not_valid_after_utc - SERVER_RENEW_BEFORE)
            return False
        key_path = self.directory / "server.key"
        try:
            key = load_private_key(key_path.read_bytes())
        except (OSError, ValueError) as exc:  # lost: a new key, written before the certificate that holds it
            log.warning("VPN server key %s unreadable (%s): a new one is made", key_path, exc)
            key = new_private_key()
            _write(key_path, private_key_pem(key), private=True)
        # The same key: only server.pem changes (one rename), so an OpenVPN starting meanwhile loads a matching pair.
        certificate = _leaf("server", key.public_key(), self.ca_key, self.ca, server=True, lifetime=SERVER_LIFETIME)
        _write(path, certificate.public_bytes(serialization.Encoding.PEM))
        self._server_seen = (_stamp(path), certificate.not_valid_after_utc - SERVER_RENEW_BEFORE)
        ends = "is unreadable" if old is None else f"ends {old.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        log.warning(
            "VPN server certificate re-issued (the previous one %s; the new one ends %s UTC)",
            ends, f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M}",
        )  # fmt: skip
        problem = signal_openvpn(self.directory / SERVER_PID, signal.SIGHUP)
        if problem is None:
            log.warning("OpenVPN server signalled (SIGHUP) to load its new certificate")
        else:
            log.error(
                "the OpenVPN server could not be signalled (%s): restart it (or send it SIGHUP) so that it loads "
                "%s before the previous one %s, or every node loses its tunnel then",
                problem, path, ends,
            )  # fmt: skip
        return True

    @property
    def ca_pem(self) -> str:
        return self.ca.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, open(self.directory / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _sign(self, hostname: str, number: int, public_key: rsa.RSAPublicKey) -> tuple[str, str]:
        address = node_address(number)
        certificate = _leaf(hostname, public_key, self.ca_key, self.ca, server=False)
        _write(self.directory / "ccd" / hostname, _ccd(str(address)))
        return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"), str(address)

    def sign_client(self, hostname: str, number: int, public_key: rsa.RSAPublicKey) -> tuple[str, str]:
        """A client certificate (CN = hostname) for the node's key, and its fixed address (written to ccd/) from its
        agent's VPN number."""
        with self._locked():
            return self._sign(hostname, number, public_key)

    def issue(
        self,
        hostname: str,
        number: int,
        public_key: rsa.RSAPublicKey,
        enrolled: Callable[[], bool] | None = None,
    ) -> tuple[str, str]:
        """sign_client (``number``: the agent's VPN number), keeping the certificate in issued/ (the previous one of
        the node is revoked), all at once. With records: recorded for the cluster together with this host's files
        (nothing when either fails). With ``enrolled`` (whether the node's agent is still enrolled), only while it
        is: a node removed meanwhile gets none (NOT_FOUND). It is asked under the file lock, which the removal's
        revocation waits for; with records the agent's row (holding ``number``) is checked and locked in the unit of
        work that records the certificate instead."""
        if self.records is not None:
            address = str(node_address(number))
            certificate = _leaf(hostname, public_key, self.ca_key, self.ca, server=False)
            pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
            record = IssuedCertificate(hostname, certificate.serial_number, address, pem)
            # The agent's row must still hold this key (a node re-bound to a new key meanwhile gets none for the old).
            key_der = public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            key_sha256 = hashlib.sha256(key_der).hexdigest()  # as agents/service.key_sha256 records it
            self._issue_recorded(self.records, record, number if enrolled is not None else None, key_sha256)
            return pem, address
        issued = self.directory / "issued" / f"{hostname}.pem"
        with self._locked():
            if enrolled is not None and not enrolled():
                raise GeniError(
                    Reason.NOT_FOUND,
                    f"node {hostname} is no longer enrolled (removed, or re-bound to another key): no VPN certificate "
                    "is issued",
                )
            previous = issued.read_text() if issued.exists() else None
            revocation_before: tuple[bytes | None, bytes | None] | None = None
            # A failure is undone (the node's working certificate stays). The previous certificate is revoked before
            # the new one replaces it in issued/: a stop in between leaves it revoked and in issued/ (the node asks
            # again), never valid and forgotten, out of reach of the node's later revocations (removal, new key).
            try:
                self._revocation_in_line()  # what a failure below is undone to: the CRL and revoked.json agreeing
                revocation_before = self._revocation_files()
                pem, address = self._sign(hostname, number, public_key)
                previous_serial = _serial_of(previous, hostname) if previous is not None else None
                if previous_serial is not None:
                    self._revoke_serial(previous_serial, hostname, keep_address=True)
                issued.parent.mkdir(exist_ok=True)
                _write(issued, pem.encode("ascii"))
            except OSError as exc:
                self._undo_issue(hostname, previous, revocation_before)
                raise GeniError(
                    Reason.UNAVAILABLE,
                    f"node {hostname}: this host's VPN files in {self.directory} could not be written ({exc}); no "
                    "VPN certificate was issued: try again",
                ) from exc
        return pem, address

    def _undo_issue(
        self, hostname: str, previous: str | None, revocation_before: tuple[bytes | None, bytes | None] | None
    ) -> None:
        """After a failed file-only issue: the previous certificate back in issued/ (its ccd/ entry is the same), or
        no ccd/ entry when the node had none; then revoked.json and crl.pem as they were before the call
        (``revocation_before``, from _revocation_files; None: the call failed before it changed them): a re-issue
        whose revoked.json failed after its CRL must not leave the node's working certificate in the CRL. Under the
        locks."""
        issued = self.directory / "issued" / f"{hostname}.pem"
        try:
            if previous is None:
                (self.directory / "ccd" / hostname).unlink(missing_ok=True)
            elif not issued.exists() or issued.read_text() != previous:
                _write(issued, previous.encode("ascii"))
            if revocation_before is not None:
                (crl_path, revoked_path), (crl_before, revoked_before) = self._revocation_paths(), revocation_before
                # The reverse of their writes' order (revoked.json, then the CRL): a failure here stops with the CRL
                # revoking at least what revoked.json does, which the next operation makes both say (never less).
                for path, before in ((revoked_path, revoked_before), (crl_path, crl_before)):
                    now = path.read_bytes() if path.exists() else None
                    if now != before:
                        if before is None:
                            path.unlink()
                        else:
                            _write(path, before)
        except OSError:  # the call's own error is the answer
            log.exception("VPN files in %s not put back after a failed issue for %s", self.directory, hostname)

    def _issue_recorded(
        self, records: VpnRecords, issued: IssuedCertificate, agent_number: int | None, agent_key_sha256: str
    ) -> None:
        """Record ``issued`` and write this host's files for it in one go: the rows are committed only once its
        issued/ and ccd/ files are written, and when either fails the rows are rolled back and the files written from
        the records again (a failed call issues nothing and revokes nothing, here or on any other host). The CRL with
        the previous certificate's revocation is written after the commit (or by the next refresh)."""
        with self._locked():
            try:
                self._refresh(records)  # the files as the records are: what a failure below brings them back to
                records.replace(issued, self._write_files_before_commit, agent_number, agent_key_sha256)
            except BaseException as exc:
                self._restore_files(records)
                if isinstance(exc, OSError):
                    raise GeniError(
                        Reason.UNAVAILABLE,
                        f"node {issued.hostname}: this host's VPN files in {self.directory} could not be written "
                        f"({exc}); no VPN certificate was issued: try again",
                    ) from exc
                raise
            try:  # committed: the certificate is issued; a CRL not written here is written by the next refresh
                self._refresh(records)
            except Exception:
                log.exception("VPN CRL in %s not written after an issue; the next refresh writes it", self.directory)

    def _write_files_before_commit(self, state: VpnState) -> None:
        files = self._files
        if files is None:  # (set by the refresh just before)
            files = self._read_files()
        # issued/ and ccd/ only, the CRL as it is: a stop before the commit must leave no revocation in the files,
        # which the next refresh would record as an operator's command's (the node's working certificate revoked, the
        # new one never recorded). version "": the next refresh writes the CRL from the committed records.
        revoked = frozenset(files.crl if files.crl is not None else state.revoked)
        self._write_state(replace(state, revoked=revoked, version=""), files)

    def _restore_files(self, records: VpnRecords) -> None:
        """After a failed issue: the files written from the records again, recording nothing from them (what the
        failed call wrote there must not become a revocation or a certificate of the cluster)."""
        self._files, self._seen = None, None
        try:
            self._write_state(records.state(), self._read_files())
        except Exception:  # the call's own error is the answer; the next refresh tries again
            log.exception("VPN files in %s not back in line with the records after a failed issue", self.directory)

    def revoke_node(self, hostname: str) -> bool:
        """Revoke the node's current VPN certificate (a node removed); False when it has none."""
        if self.records is not None:
            revoked = self.records.revoke_current(hostname) is not None
            self.refresh()
            return revoked
        return self.revoke_node_files(hostname) is not None

    def revoke_node_files(self, hostname: str) -> RevokedNode | None:
        """The file-only VPN's revoke_node, saying what it revoked (for the calendar's record of the node's number,
        which the caller makes once this host's file lock is let go); None when the node has no certificate."""
        issued = self.directory / "issued" / f"{hostname}.pem"
        with self._locked():
            if not issued.exists():
                return None
            number = _ccd_number(self.directory / "ccd" / hostname)
            then = f"once they can, run `sfa-omf node vpn-revoke {hostname}`"
            serial = self._revoke_issued(issued.read_text(), hostname, then)
        return RevokedNode(serial, number)

    def revoke_other_key(self, hostname: str, public_key: rsa.RSAPublicKey) -> bool:
        """Revoke the node's current VPN certificate when it holds another key than ``public_key``: the node was
        re-bound to a new key (a reinstalled machine), and the old key must not keep its tunnel. Its ccd/ entry goes
        too, until the new key asks for its own certificate. False when there was nothing to revoke."""

        def same_key(certificate_pem: str) -> bool:  # the same key enrolled again (a new token): its tunnel stays
            try:
                return x509.load_pem_x509_certificate(certificate_pem.encode("ascii")).public_key() == public_key
            except ValueError:  # unreadable (an issued/ file cut short): the new key gets its own
                return False

        if self.records is not None:
            revoked = self.records.revoke_current(hostname, keep=same_key) is not None
            if revoked:
                self.refresh()
            return revoked
        issued = self.directory / "issued" / f"{hostname}.pem"
        with self._locked():
            if not issued.exists():
                return False
            certificate_pem = issued.read_text()
            if same_key(certificate_pem):
                return False
            self._revoke_issued(certificate_pem, hostname, "try again")
        return True

    def _revoke_issued(self, certificate_pem: str, hostname: str, then: str) -> int | None:
        """The file-only revocation of the node's current certificate: into revoked.json and the CRL, its ccd/ entry
        and issued/ file gone. When a write fails: UNAVAILABLE, saying ``then`` (what completes it once the files can
        be written), instead of an internal error that names a temporary file (a removed node would keep its tunnel
        with nobody told how to close it). The serial revoked (None: the certificate could not be read). Under the
        locks."""
        try:
            serial = self._revoke(certificate_pem, hostname)
            (self.directory / "issued" / f"{hostname}.pem").unlink()
        except OSError as exc:  # what was written stays: a revocation in the CRL only is kept (_revoked_here)
            raise GeniError(
                Reason.UNAVAILABLE,
                f"node {hostname}: its VPN certificate is not revoked, or not completely: this host's VPN files in "
                f"{self.directory} could not be written ({exc}); {then}",
            ) from exc
        return serial

    def revoke(self, certificate_pem: str, hostname: str) -> None:
        """Revoke a client certificate (a removed node): into the CRL, and its address entry gone."""
        if self.records is not None:
            serial = x509.load_pem_x509_certificate(certificate_pem.encode("ascii")).serial_number
            self.records.revoke_serial(serial, hostname)
            self.refresh()
            return
        with self._locked():
            self._revoke(certificate_pem, hostname)

    def _revoke(self, certificate_pem: str, hostname: str, keep_address: bool = False) -> int | None:
        """Into revoked.json and the CRL; the node's ccd/ entry goes too unless ``keep_address`` (a re-issue). A
        certificate that cannot be read (an issued/ file cut short) is not revoked: its ccd/ entry goes all the
        same, and OpenVPN (ccd-exclusive) lets no certificate of that name in. The serial revoked (None: that
        case)."""
        serial = _serial_of(certificate_pem, hostname)
        if serial is None:
            if not keep_address:
                (self.directory / "ccd" / hostname).unlink(missing_ok=True)
            return None
        self._revoke_serial(serial, hostname, keep_address)
        return serial

    def _revoke_serial(self, serial: int, hostname: str, keep_address: bool = False) -> None:
        """``_revoke`` of the certificate with this serial."""
        revoked = self._revoked_here()
        if serial not in revoked:
            revoked.append(serial)
        # The CRL first: revoked.json is the record of what the CRL holds (a stop in between leaves the CRL ahead).
        self._write_crl(revoked)
        _write(self.directory / "revoked.json", json.dumps(revoked).encode("ascii"))
        if not keep_address:
            (self.directory / "ccd" / hostname).unlink(missing_ok=True)

    def _revocation_paths(self) -> tuple[Path, Path]:
        """crl.pem and revoked.json, in the order a revocation writes them."""
        return self.directory / "crl.pem", self.directory / "revoked.json"

    def _revocation_files(self) -> tuple[bytes | None, bytes | None]:
        """The bytes of crl.pem and revoked.json (None: absent), for an undo to write them back."""
        crl_path, revoked_path = self._revocation_paths()
        return (
            crl_path.read_bytes() if crl_path.exists() else None,
            revoked_path.read_bytes() if revoked_path.exists() else None,
        )

    def _revocation_in_line(self) -> None:
        """The file-only VPN: crl.pem and revoked.json written again where they differ from every serial either of
        them revokes (_revoked_here: the one list both are made from). A stop between a revocation's two writes, a
        CRL lost, unreadable or restored from an older copy: what either revokes stays revoked, and OpenVPN's CRL
        says so before the next certificate is issued. Under the directory's lock."""
        listed, in_crl = self._revocation_lists()
        revoked = _every_revoked(listed, in_crl)
        if in_crl != sorted(revoked):
            self._write_crl(revoked)  # the CRL first, as in _revoke
        if listed != revoked:
            _write(self.directory / "revoked.json", json.dumps(revoked).encode("ascii"))

    def _revoked_here(self) -> list[int]:
        """Every serial revoked.json or the CRL revokes: the CRL may be ahead of revoked.json (a stop between the
        two writes), and what it revokes stays revoked."""
        return _every_revoked(*self._revocation_lists())

    def _revocation_lists(self) -> tuple[list[int] | None, list[int] | None]:
        """What revoked.json lists ([] when absent, None when unreadable) and the serials crl.pem revokes (sorted;
        None when absent, unreadable or not this CA's)."""
        path = self.directory / "revoked.json"
        try:
            listed = [int(serial) for serial in json.loads(path.read_text())] if path.exists() else []
        except (ValueError, TypeError):  # unreadable: the records (or the next revocation) write it anew
            listed = None
        crl_path = self.directory / "crl.pem"
        return listed, self._crl_serials(crl_path.read_bytes() if crl_path.exists() else None)

    def refresh(self) -> bool:
        """Write this host's issued/, ccd/, revoked.json and crl.pem from the cluster's records (with records only),
        after recording what this host's files know that the records do not (see the module's docstring). Writes
        only what changed, and reads no file when neither the records nor the files changed since this process last
        wrote them; True when the CRL or a client config changed. OpenVPN reads crl.pem and ccd/ at each new
        connection. First (also without records): the server's certificate re-issued when due
        (renew_server_certificate)."""
        try:  # never in the way of the CRL's refresh
            self.renew_server_certificate()
        except Exception:
            log.exception("VPN server certificate not checked for re-issue (next refresh)")
        if self.records is None:
            return False
        seen = self._seen  # one read: another thread's refresh replaces it whole
        if seen is not None and seen[1] is not None and self.records.version() == seen[0] and self._stamps() == seen[1]:
            return False
        with self._locked():
            return self._refresh(self.records)

    def _refresh(self, records: VpnRecords) -> bool:
        """refresh() under the locks."""
        stamps = self._stamps()  # before reading: a change made after this is seen by the next refresh
        state = records.state()
        files = self._files
        if files is None or self._seen is None or self._seen[1] != stamps:
            # First, or another process changed the files (an operator's command, another worker of this host).
            files = self._read_files()
            known = {certificate.hostname for certificate in state.issued}
            # The CRL's too: it is written before revoked.json, so a stop in between leaves a revocation there only.
            unknown_revoked = (set(files.revoked or []) | set(files.crl or [])) - state.revoked
            unknown_issued = self._unknown_certificates(files, known, state.revoked)
            if unknown_revoked or unknown_issued:  # rare: a write only then
                records.record_local(unknown_revoked, unknown_issued)
                state = records.state()
        return self._write_state(state, files)

    def _write_state(self, state: VpnState, files: _Files) -> bool:
        """Write the files where they differ from ``state`` (``files``: what they hold now); True when the CRL or a
        client config changed. Under the locks."""
        self._files = None  # until the files are written: a failure below leaves them to be read again
        changed = False
        revoked = sorted(state.revoked)
        # What OpenVPN reads is crl.pem itself: it is compared with the records too, never taken on revoked.json's
        # word (a stop between the two writes, a CRL lost or restored from elsewhere).
        if files.revoked != revoked or files.crl != revoked:
            self._write_crl(revoked)  # the CRL first: revoked.json is the record of what the CRL holds
            _write(self.directory / "revoked.json", json.dumps(revoked).encode("ascii"))
            files.revoked, files.crl = revoked, revoked
            changed = True
        issued_dir = self.directory / "issued"
        issued_dir.mkdir(exist_ok=True)
        current = {certificate.hostname: certificate for certificate in state.issued}
        for hostname, certificate in current.items():
            ccd = _ccd(certificate.address)
            if files.ccd.get(hostname) != ccd:
                _write(self.directory / "ccd" / hostname, ccd)
                files.ccd[hostname] = ccd
                changed = True
            pem = certificate.certificate.encode("ascii")
            if files.issued.get(hostname) != pem:
                _write(issued_dir / f"{hostname}.pem", pem)
                files.issued[hostname] = pem
        for hostname in [hostname for hostname in files.ccd if hostname not in current]:
            (self.directory / "ccd" / hostname).unlink(missing_ok=True)
            del files.ccd[hostname]
            changed = True
        for hostname in [hostname for hostname in files.issued if hostname not in current]:
            (issued_dir / f"{hostname}.pem").unlink(missing_ok=True)
            del files.issued[hostname]
        self._files = files
        after = self._stamps()
        now_s = self.clock()
        self._seen = (state.version, after if all(_settled(stamp, now_s) for stamp in after) else None)
        return changed

    def _stamps(self) -> tuple[Stamp | None, ...]:
        """The stamps that change when any VPN file a refresh writes changes: revoked.json and crl.pem (replaced: a
        new inode each time), issued/ and ccd/ (a file in them made, replaced or removed)."""
        d = self.directory
        return tuple(_stamp(path) for path in (d / "revoked.json", d / "crl.pem", d / "issued", d / "ccd"))

    def _read_files(self) -> _Files:
        """This host's VPN files as they are (each file read only when its stamp changed since it was last read)."""
        now_s = self.clock()
        cache, self._read_cache = self._read_cache, {}
        revoked_json = self._read(self.directory / "revoked.json", cache, now_s)
        try:
            revoked = None if revoked_json is None else sorted(int(serial) for serial in json.loads(revoked_json))
        except (ValueError, TypeError):  # written anew from the records
            revoked = None
        files = _Files(revoked, self._crl_serials(self._read(self.directory / "crl.pem", cache, now_s)))
        for path in (self.directory / "issued").glob("*.pem"):
            data = self._read(path, cache, now_s)
            if data is not None:
                files.issued[path.name.removesuffix(".pem")] = data
        for path in (self.directory / "ccd").iterdir():
            if not path.name.endswith(".tmp"):  # another writer's file, being written
                data = self._read(path, cache, now_s)
                if data is not None:
                    files.ccd[path.name] = data
        return files

    def _read(self, path: Path, cache: dict[Path, tuple[Stamp, bytes]], now_s: float) -> bytes | None:
        """The file's bytes (None when absent), from ``cache`` when its stamp is the same; kept for the next read
        when settled."""
        stamp = _stamp(path)
        if stamp is None:
            return None
        cached = cache.get(path)
        if cached is not None and cached[0] == stamp:
            data = cached[1]
        else:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
        if _settled(stamp, now_s):
            self._read_cache[path] = (stamp, data)
        return data

    def _unknown_certificates(self, files: _Files, known: set[str], revoked: frozenset[int]) -> list[IssuedCertificate]:
        """The certificates in this host's issued/ of nodes the records have none for, not revoked, signed by this
        CA, with the address of their ccd/ entry (one without it cannot connect anyway: ccd-exclusive). Only these
        are parsed."""
        found = []
        for hostname, data in sorted(files.issued.items()):
            if hostname in known:
                continue
            try:
                certificate = x509.load_pem_x509_certificate(data)
                certificate.verify_directly_issued_by(self.ca)
                address = files.ccd[hostname].decode("ascii").split()[1]
            except (KeyError, ValueError, IndexError, TypeError, InvalidSignature):
                continue
            if certificate.serial_number in revoked:
                continue
            pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
            found.append(IssuedCertificate(hostname, certificate.serial_number, address, pem))
        return found

    def _crl_serials(self, crl_pem: bytes | None) -> list[int] | None:
        """The serials a CRL file revokes, sorted; None when there is none, or it is unreadable or not this CA's."""
        if crl_pem is None:
            return None
        try:
            crl = x509.load_pem_x509_crl(crl_pem)
            if not crl.is_signature_valid(self.ca.public_key()):  # type: ignore[arg-type]
                return None
        except ValueError:
            return None
        return sorted(revoked.serial_number for revoked in crl)

    def _write_crl(self, revoked: list[int]) -> None:
        now = utcnow()
        entries = [
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build() for serial in revoked
        ]
        # (All entries at once: adding them one by one copies the list each time, seconds for 20 000 of them.)
        builder = x509.CertificateRevocationListBuilder(
            issuer_name=self.ca.subject,
            last_update=now - timedelta(minutes=5),
            next_update=now + CA_LIFETIME,
            revoked_certificates=entries,
        )
        crl = builder.sign(self.ca_key, hashes.SHA256())
        _write(self.directory / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))

    def server_config(
        self,
        listen: str,
        port: int,
        renegotiation_s: int = VPN_RENEGOTIATION_S,
        key_transition_s: int = VPN_KEY_TRANSITION_S,
    ) -> str:
        """An OpenVPN server configuration for this CA (topology subnet; only known nodes, at their addresses).

        OpenVPN reads the CRL (and ccd/) only at a handshake: a certificate revoked while its tunnel is up keeps it
        until the next. The server renegotiates every ``renegotiation_s`` (reneg-sec: whichever side's timer fires
        first starts it, so the nodes' configurations need nothing), and keeps the old key ``key_transition_s`` more
        (tran-window), also when the new handshake fails, as a revoked certificate's does: such a tunnel ends within
        their sum of the CRL naming it (calendar/agents.py keeps its number from other nodes longer)."""
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
                f"writepid {d / SERVER_PID}",
                f"client-config-dir {d / 'ccd'}",
                "ccd-exclusive",
                "remote-cert-tls client",
                "client-to-client",
                "keepalive 2 10",
                f"reneg-sec {renegotiation_s}",
                f"tran-window {key_transition_s}",
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
