"""The node's side: ``sfa-omf agent enrol`` and ``sfa-omf agent run``.

Enrolment makes the node's key (it never leaves the node), asks the aggregate to certify it with a one-time join
token, and keeps the certificate, our authority's root, the server's address and the aggregate's URN in the state
directory. The agent then loops: heartbeat, fetch the work, make the host match it (accounts and keys of running
leases, removal of finished ones), report. Every call verifies the server against the root given at enrolment, and
that its certificate names the aggregate (``...+authority+am``): any node or user of our authority also holds a
certificate chaining to the root, and must not pass for the aggregate. At enrolment, before the token is sent, the
aggregate is the one the invitation names, or the aggregate of the root's own authority. A server that is down or
restarting is waited for: the loop keeps its state on disk and carries on where it was. A file of the node that
cannot be written (the state directory's disk full) is told apart from a server that does not answer (local_fault),
and a lease it held up waits for room, not reported failed.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import random
import re
import signal
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fcntl import ioctl
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from sfa_omf.agents.host import Host, write_replacing
from sfa_omf.agents.staging import MAX_NAME_LENGTH, check_name
from sfa_omf.errors import BadArgs, GeniError
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import gid_from_der, load_gid_chain_file
from sfa_omf.trust.pki import load_private_key, new_private_key, private_key_pem
from sfa_omf.xrn import Urn, parse_urn

log = logging.getLogger("sfa_omf.agent")
#: Seconds a call waits for each step of an exchange once connected: the server's answer, or room on a stalled link for
#: the next CHUNK_BYTES of a body (not for a whole upload: a slow uplink sends a large file in many such steps).
TIMEOUT_S = 30
#: Seconds to reach the server and complete the TLS handshake: shorter than TIMEOUT_S, so a round during an outage
#: ends early and the next heartbeat is not held up behind it.
CONNECT_TIMEOUT_S = 10
#: A request body is written in pieces of this size, each bounded by TIMEOUT_S (64 KiB is 8 s at 64 kbit/s).
CHUNK_BYTES = 64 * 1024
#: After a round that failed (no answer, a refusal), the next is tried after 2, 4, 8 ... s (less a random part of up
#: to a quarter, so that nodes cut off together do not come back in step), never longer than the interval.
RETRY_FIRST_S = 2.0
KEY, CERT, ROOT, CONFIG, APPLIED = "node.pkey", "node.gid", "root.gid", "agent.json", "leases.json"
STAGE_IN, STAGE_OUT = "stage-in", "stage-out"  # folders in each account's home for a lease's files
#: The largest file staged out when the server does not say (an older server): its default limit.
DEFAULT_MAX_FILE_BYTES = 1024 * 1024
#: Rounds a finished lease's accounts are kept while some of its files could not be staged out yet (no answer, the
#: server busy or answering what we cannot read): then they go all the same, and the files left are named in the log
#: and in the lease's "ended" report. The lease's users keep their access that long: not for ever.
STAGE_OUT_ROUNDS = 20
#: The node's OpenVPN client configuration (``agent vpn``) and the pid file it has OpenVPN write (``writepid``).
VPN_CONF, VPN_PID = "vpn.conf", "vpn.pid"
#: The part of its VPN client certificate's lifetime (agents/vpn.py CLIENT_LIFETIME, a year) after which the agent
#: asks for a new one by itself: four months of rounds left to get it before the tunnel would end.
VPN_RENEW_AFTER = 2 / 3
#: The agent's records, in its state folder: per lease, the stage-out files the server accepted (sent name -> SHA-256:
#: not sent again after a round that failed part-way), and the "ended" reports not delivered yet (lease -> message:
#: the accounts are gone, the message must not be).
SENT, ENDING = "sent.json", "ending.json"
#: Times a stage-in file may arrive damaged (SHA-256 differs) before the lease is reported failed: once may be the
#: network's doing, twice in a row is the file's.
STAGE_IN_MISMATCHES = 2
#: Rounds a stage-in file may fail in a way that may pass (no answer, cut off, a 5xx, an answer that is not JSON, its
#: write finding the disk full) before the lease is reported failed with the last error. Such a round is one whose
#: heartbeat and work went through (a server down fails the round before it): 10 rounds are 5 minutes at the default
#: heartbeat (30 s), longer than a restart of the server or a passing fault of its disk or link, while a file the
#: server cannot serve for good (its answer to any error of its own: 500), or the node cannot hold, is reported to the
#: experimenter within minutes, not never.
STAGE_IN_ROUNDS = 10


class AgentCallError(Exception):
    """The server answered with a refusal: its status, reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


#: The reason of an AgentCallError for an answer that is not a JSON object: nothing says the call was done.
NOT_JSON = "not_json"
#: The reason of an AgentCallError for a stage-in file whose content is not the SHA-256 the server declared.
CHECKSUM = "checksum"


def is_refusal(exc: AgentCallError) -> bool:
    """The server read the call and refused it in its own words (a 4xx JSON answer): the same call would be refused
    again. Anything else (5xx, an answer that is not JSON, whatever its status) may go through when tried again."""
    return 400 <= exc.status < 500 and exc.reason != NOT_JSON


class StageInGaveUp(Exception):
    """A stage-in file not fetched, or not written, in STAGE_IN_ROUNDS rounds: the lease's failure, with the last
    error."""


class StageInNoRoom(Exception):
    """A stage-in file larger than the space free where it goes on the node: the lease's failure at once, the file
    unfetched (room might come later, but the lease would wait unseen meanwhile, the file downloaded for nothing at
    every round; the experimenter is told now)."""


class ServerNotTrusted(AgentCallError):
    """The server's certificate chains to our root but does not name the aggregate (a node's, a user's ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "untrusted", message)


def aggregate_urn_of(node_urn: str) -> str:
    """The URN of the aggregate that enrolled a node: ``authority+am`` of the node's authority."""
    return str(Urn(authority=parse_urn(node_urn).authority, type="authority", name="am"))


def expected_aggregate(root_path: str, aggregate_urn: str = "") -> str:
    """The aggregate an agent enrols with, checked in the server's certificate before the join token is sent:
    ``aggregate_urn`` when the invitation names it (``sfa-omf node invite`` prints ``--aggregate``), else the
    aggregate of the authority the root belongs to (``urn:publicid:IDN+<root's authority>+authority+am``: the
    aggregate's own authority is that root). Any other certificate under the root (a node's, a user's, another
    authority's aggregate) must not receive the token."""
    if aggregate_urn:
        if not _is_aggregate_urn(aggregate_urn):
            raise BadArgs(
                f"--aggregate {aggregate_urn!r} is not an aggregate's URN (urn:publicid:IDN+...+authority+am)"
            )
        return aggregate_urn
    try:
        root = load_gid_chain_file(root_path)[0]
        authority = parse_urn(root.urn or "")
    except (ValueError, BadArgs) as exc:
        raise BadArgs(
            f"the root {root_path} names no authority ({exc}): give --aggregate URN (sfa-omf node invite prints it)"
        ) from None
    if not authority.is_authority:
        raise BadArgs(f"the root {root_path} names {root.urn!r}, not an authority: give the authority's root GID")
    return str(Urn(authority=authority.authority, type="authority", name="am"))


def _is_aggregate_urn(urn: str) -> bool:
    try:
        parsed = parse_urn(urn)
    except BadArgs:
        return False
    return parsed.type == "authority" and parsed.name == "am"


#: The agent's folder (under its state folder) for files a lease's users left to stage out that the server refused.
UNSENT = "unsent"


def _plain(name: str) -> str:
    """``name`` as a file name of the agent's own folders: characters other than letters, digits, '.', '_' and '-'
    become '_', and no name starts with a dot."""
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200] or "_"
    return f"_{plain}" if plain.startswith(".") else plain


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as kept:
        return hashlib.file_digest(kept, "sha256").hexdigest()


def _size_words(size: int) -> str:
    """``size`` bytes in words: 1000 bytes, 508 KiB, 1.25 MiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{size} bytes"


#: errno values of a file system that is full (its blocks or its inodes, or the user's quota): once space is freed
#: the same write succeeds, so such a failure is the node's passing fault, never the lease's.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: errno values that are a file's and never a network's, even when they come without a file name (a write()).
LOCAL_ERRNOS = DISK_FULL | {errno.EROFS}
#: errno values of a file that cannot be written, and what to do about it.
WRITE_ADVICE = {
    errno.ENOSPC: "free space there",
    errno.EDQUOT: "free space there (a disk quota is reached)",
    errno.EROFS: "its file system is mounted read-only: make it writable",
    errno.EACCES: "the agent must run as a user that may write there (root)",
    errno.EPERM: "the agent must run as a user that may write there (root)",
}


class LocalFault(Exception):
    """A file of the node could not be written or read (a full or read-only disk, a permission): the node's own
    fault, neither the server's (no answer) nor the lease's; the next round tries again. ``error`` is the OSError;
    ``passing`` says that the lease is not to be reported failed for it (a full disk, or the agent's own state
    directory: whatever is wrong there is the node's, and the lease goes ahead once it is mended)."""

    def __init__(self, message: str, error: OSError, passing: bool) -> None:
        super().__init__(message)
        self.message = message
        self.error = error
        self.passing = passing


def local_fault(exc: BaseException, state_dir: str | Path) -> LocalFault | None:
    """``exc`` as a fault of the node's own files, or None when it is not one (a network's: a socket's errors carry
    no file name). An OSError naming a file is local, and so is one of a full or read-only file system (LOCAL_ERRNOS)
    without a name. The words name the agent's state directory (made absolute) when the file is there
    (``state_dir``), else the file's directory, and say what to do. Only a name that is absolute can be in the state
    directory: the agent names its files so (Agent, enrol, the hosts' ledger), and a relative one is someone else's
    (a program not found: ``useradd``; a name relative to a descriptor's directory), even under ``--state .``."""
    if isinstance(exc, LocalFault):
        return exc
    if not isinstance(exc, OSError) or (exc.filename is None and exc.errno not in LOCAL_ERRNOS):
        return None
    name = os.fsdecode(exc.filename) if isinstance(exc.filename, str | bytes | os.PathLike) else ""
    path = Path(name)
    state = Path(os.path.abspath(state_dir))
    in_state = path.is_absolute() and Path(os.path.abspath(path)).is_relative_to(state)
    advice = WRITE_ADVICE.get(exc.errno or 0, "")
    verb = "cannot be written" if advice else "cannot be used"
    why = exc.strerror or str(exc)
    if path.is_absolute():
        where = f"the agent's state directory {state}" if in_state else f"the node's directory {path.parent}"
        if not advice:  # (not a write's failure: which file, then)
            why += f" ({path.name})"
    else:  # a name relative to a descriptor's directory, or none (a write()): where is not known here
        where = "a file of the node" + (f" ({name})" if name else "")
        advice = "free space on the node's disks" if exc.errno in DISK_FULL else advice
    text = f"{where} {verb}: {why}" + (f"; {advice}" if advice else "")
    return LocalFault(text, exc, in_state or exc.errno in DISK_FULL)


def _self_signed(key: Any, hostname: str) -> bytes:
    """A throwaway certificate of the node's key, presented at the TLS handshake of registration only (proof that
    the agent holds the key of its request)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = utcnow()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _drained(sock: socket.socket) -> None:
    """Return once the bytes written on ``sock`` reached the peer (the kernel's send queue empty, Linux SIOCOUTQ) or
    the peer closed (an early answer, a reset: read next), waiting as long as the queue keeps shrinking:
    TimeoutError when it does not move for TIMEOUT_S. The kernel may hold much of an upload when the last write
    returns; on a slow uplink sending it can take longer than the answer's time-out, which is for the server to
    answer, not for the link to carry what was queued."""
    last, since = -1, time.monotonic()
    while True:
        try:
            queued = struct.unpack("i", ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            # The server closed (an early refusal, or the link reset): read what it said. (Not readability: a TLS
            # 1.3 server sends its session tickets whenever it likes.)
            closed = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_ESTABLISHED
        except OSError:  # not known here: the answer's time-out only
            return
        if queued <= 0 or closed:
            return
        now = time.monotonic()
        if queued != last:
            last, since = queued, now
        elif now - since > TIMEOUT_S:
            raise TimeoutError(f"the upload stalled: {queued} bytes not taken in {TIMEOUT_S} s")
        time.sleep(0.05)


#: The state of a TCP connection open both ways (the first byte of Linux's TCP_INFO).
TCP_ESTABLISHED = 1


class Client:
    """JSON over HTTPS to the agent API, presenting a certificate and verifying the server against our root and its
    URN: ``server_urn`` when given (pinned at enrolment), else any aggregate's (``...+authority+am``)."""

    def __init__(self, url: str, cert_path: str, key_path: str, root_path: str, server_urn: str = "") -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"the server must be an https:// URL, not {url!r}")
        self.host, self.port = parts.hostname, parts.port or 443
        self.base = parts.path.rstrip("/") + "/agents/v1/"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # The server is known by its certificate: chaining to our root and naming the aggregate (checked after the
        # handshake, before anything is sent), not by its host name.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(root_path)
        context.load_cert_chain(cert_path, key_path)
        self.context = context
        self.server_urn = server_urn

    def _check_server(self, connection: http.client.HTTPSConnection) -> None:
        """Refuse a server whose certificate (verified against our root at the handshake) is not the aggregate's."""
        sock = connection.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        if not der:
            raise ServerNotTrusted(f"the server at {self.host}:{self.port} presented no certificate")
        urn = gid_from_der(der).urn or ""
        if self.server_urn and urn != self.server_urn:
            raise ServerNotTrusted(f"the server's certificate names {urn!r}, not the aggregate {self.server_urn!r}")
        if not _is_aggregate_urn(urn):
            raise ServerNotTrusted(f"the server's certificate names {urn!r}, not an aggregate (...+authority+am)")

    def _exchange(
        self, method: str, path: str, payload: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes, str]:
        connection = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=CONNECT_TIMEOUT_S)
        try:
            connection.connect()
            if connection.sock is not None:
                connection.sock.settimeout(TIMEOUT_S)
            self._check_server(connection)
            connection.putrequest(method, self.base + path)
            for header, value in headers.items():
                connection.putheader(header, value)
            body = memoryview(payload or b"")
            if payload is not None or method in ("POST", "PUT"):
                connection.putheader("Content-Length", str(len(body)))
            # Piece by piece: the socket's time-out bounds each write, where one sendall() of the whole body would
            # be bounded by it in total (a file that takes longer than TIMEOUT_S to upload could never go).
            connection.endheaders(bytes(body[:CHUNK_BYTES]))
            for offset in range(CHUNK_BYTES, len(body), CHUNK_BYTES):
                connection.send(body[offset : offset + CHUNK_BYTES])
            if len(body) > CHUNK_BYTES and connection.sock is not None:
                _drained(connection.sock)
            response = connection.getresponse()
            return response.status, response.read(), response.getheader("x-content-sha256", "")
        finally:
            connection.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"content-type": "application/json"} if payload is not None else {}
        status, raw, _ = self._exchange(method, path, payload, headers)
        return self._decode(status, raw)

    def put_file(self, lease_id: str, name: str, data: bytes) -> dict[str, Any]:
        """Stage a file out for a lease, with its SHA-256 (the server checks it)."""
        headers = {"content-type": "application/octet-stream", "x-content-sha256": hashlib.sha256(data).hexdigest()}
        # Quoted: a space, '?', '#', '%' or a non-ASCII letter in a user's file name must not break the request line
        # (http.client raises on them); the server unquotes the segment and checks the name itself.
        status, raw, _ = self._exchange("PUT", f"files/{lease_id}/out/{quote(name, safe='')}", data, headers)
        return self._decode(status, raw)

    def get_file(self, lease_id: str, name: str) -> bytes:
        """A file staged in for a lease, checked against the SHA-256 the server declares."""
        status, raw, declared = self._exchange("GET", f"files/{lease_id}/in/{quote(name, safe='')}", None, {})
        if status != 200:
            self._decode(status, raw)
        if hashlib.sha256(raw).hexdigest() != declared:
            raise AgentCallError(status, CHECKSUM, f"{name} arrived damaged (SHA-256 differs from {declared!r})")
        return raw

    @staticmethod
    def _decode(status: int, raw: bytes) -> dict[str, Any]:
        """The server's JSON object; AgentCallError for a refusal, and for any answer that is not a JSON object
        whatever its status (a 200 from something else than the agent API, e.g. an XML-RPC fault, is no success)."""
        try:
            answer = json.loads(raw)
        except ValueError:  # UnicodeDecodeError included
            answer = None
        if not isinstance(answer, dict):
            text = raw[:200].decode("utf-8", "replace")
            raise AgentCallError(status, NOT_JSON, f"the server's answer is not a JSON object: {text!r}")
        if status != 200:
            raise AgentCallError(status, str(answer.get("error", "")), str(answer.get("message", "")))
        return answer


@dataclass
class Enrolled:
    node: str
    server: str
    state_dir: str


def enrol(
    server: str,
    token: str,
    root_path: str,
    state_dir: str,
    hostname: str,
    local_address: str = "",
    lan_group: str = "",
    properties: dict[str, str] | None = None,
    retry_for_s: float = 0,
    sleep: Callable[[float], None] = time.sleep,
    aggregate_urn: str = "",
) -> Enrolled:
    """Register with a join token and keep key, certificate, root and server in ``state_dir``. The key is made once
    and reused, so running enrol again with the same token is harmless — which is what ``retry_for_s`` does while
    the server is busy or unreachable (503, no answer in time: many nodes joining at once, its DNS or testbed down),
    waiting 1, 2, 4 ... 30 s between tries. The server's certificate must name the aggregate (``aggregate_urn``,
    else the aggregate of the root's authority: see expected_aggregate) before anything is sent to it."""
    server_urn = expected_aggregate(root_path, aggregate_urn)
    state = Path(os.path.abspath(state_dir))  # its files named absolutely, as local_fault tells the state's by
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = state / KEY
    if not key_path.exists():
        write_replacing(key_path, private_key_pem(new_private_key()))
    key = load_private_key(key_path.read_bytes())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .sign(key, hashes.SHA256())
    )
    bootstrap = state / "bootstrap.pem"
    write_replacing(bootstrap, _self_signed(key, hostname))
    request = {
        "token": token,
        "hostname": hostname,
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "local_address": local_address,
        "lan_group": lan_group,
        "properties": properties or {},
    }
    try:
        # Pinned from the first connection: the token goes to the aggregate only, never to whatever else chains to
        # the root (ServerNotTrusted, raised after the handshake and before the request, is not retried).
        client = Client(server, str(bootstrap), str(key_path), root_path, server_urn)
        answer = _register_until(lambda: client.call("POST", "register", request), retry_for_s, sleep)
    finally:
        bootstrap.unlink(missing_ok=True)
    given_root = Path(root_path).read_text().strip()
    if str(answer.get("root", "")).strip() != given_root:
        raise AgentCallError(200, "untrusted", "the server's root is not the root given to enrol with")
    # The aggregate is the one of the authority that named our node; its URN is pinned for every later call.
    if aggregate_urn_of(str(answer["node"])) != server_urn:
        raise ServerNotTrusted(f"the server {server_urn!r} named our node {answer['node']!r}, of another authority")
    write_replacing(state / CERT, str(answer["certificate"]).encode("ascii"), 0o644)
    write_replacing(state / ROOT, given_root.encode("ascii") + b"\n", 0o644)
    config = {
        "node": answer["node"],
        "server": server,
        "server_urn": server_urn,
        "heartbeat_s": answer.get("heartbeat_s", 30),
    }
    write_replacing(state / CONFIG, json.dumps(config).encode("utf-8"), 0o644)
    return Enrolled(node=str(answer["node"]), server=server, state_dir=state_dir)


#: Answers worth trying the registration again for: the server could not complete it now (and wrote nothing).
RETRY_STATUSES = frozenset({503, 504})  # not 502: the testbed refused the node (e.g. its name is an operator's)


def _register_until(
    register: Callable[[], dict[str, Any]], retry_for_s: float, sleep: Callable[[float], None]
) -> dict[str, Any]:
    deadline = time.monotonic() + retry_for_s
    wait_s = 1.0
    while True:
        try:
            return register()
        except AgentCallError as exc:
            if exc.status not in RETRY_STATUSES or time.monotonic() + wait_s > deadline:
                raise
            log.warning("registration not done (%s); trying again in %.0f s", exc, wait_s)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, or no answer within TIMEOUT_S
            if time.monotonic() + wait_s > deadline:
                raise
            log.warning("no answer from the server (%s); trying again in %.0f s", exc, wait_s)
        sleep(wait_s)
        wait_s = min(wait_s * 2, 30.0)


def pinned_urn(config: dict[str, Any]) -> str:
    """The aggregate's URN kept at enrolment; derived from the node's URN for a state written before it was kept."""
    return str(config.get("server_urn") or aggregate_urn_of(str(config["node"])))


def request_vpn(state_dir: str, client: Client | None = None) -> tuple[str, str]:
    """Ask for an OpenVPN client certificate for the node's key (``client``: the agent's own, else one made from the
    state); writes ``vpn.conf`` (the key stays where it is, referenced by path; OpenVPN writes its pid to ``vpn.pid``
    for the agent's renewal to signal it), replacing the previous one only once the new one is complete. Returns
    (configuration path, the node's VPN address)."""
    state = Path(state_dir)
    config = json.loads((state / CONFIG).read_text())
    key = load_private_key((state / KEY).read_bytes())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    if client is None:
        client = Client(
            str(config["server"]), str(state / CERT), str(state / KEY), str(state / ROOT), pinned_urn(config)
        )
    answer = client.call("POST", "vpn", {"csr": csr.public_bytes(serialization.Encoding.PEM).decode("ascii")})
    text = str(answer["config"]).replace(
        "key KEY_PATH", f"key {(state / KEY).resolve()}\nwritepid {(state / VPN_PID).resolve()}"
    )
    write_replacing(state / VPN_CONF, text.encode("ascii"))
    return str(state / VPN_CONF), str(answer["address"])


def vpn_renewal_due(config_text: str) -> datetime:
    """When the client certificate inline in an OpenVPN configuration (``<cert>``) is due for renewal:
    VPN_RENEW_AFTER of its lifetime. ValueError when it holds none that can be read."""
    found = re.search(r"<cert>\s*(.*?)\s*</cert>", config_text, re.DOTALL)
    if found is None:
        raise ValueError("no <cert> in the VPN configuration")
    certificate = x509.load_pem_x509_certificate(found.group(1).encode("ascii"))
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return start + (end - start) * VPN_RENEW_AFTER


def _openvpn_argv(pid: int) -> list[bytes] | None:
    """The command line of process ``pid`` when it is an OpenVPN (its program named openvpn), else None."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return argv if os.path.basename(argv[0]) == b"openvpn" else None


def _openvpn_of(config: Path) -> list[int]:
    """The OpenVPN processes started on ``config`` (``openvpn --config FILE`` or ``openvpn FILE``, a relative path
    from the process's directory): an OpenVPN started before its configuration had it write a pid file."""
    target = config.resolve()
    found = []
    for entry in Path("/proc").iterdir():
        argv = _openvpn_argv(int(entry.name)) if entry.name.isdigit() else None
        if argv is None:
            continue
        named = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == b"--config"] or argv[1:2]
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if any((cwd / os.fsdecode(name)).resolve() == target for name in named if name):
            found.append(int(entry.name))
    return found


def signal_openvpn(pid_path: Path, signum: int = signal.SIGHUP, config: Path | None = None) -> str | None:
    """Send ``signum`` to the OpenVPN process whose pid file is ``pid_path`` (SIGHUP: it restarts, reading its
    configuration and certificates again); without a pid file, to those started on ``config`` (when given). None when
    it was sent, else why not: no such process, or the pid file's pid is no longer an OpenVPN (a stale file: that pid
    may be another process's now, never signalled)."""
    try:
        pids = [int(pid_path.read_text().split()[0])]
    except (OSError, ValueError, IndexError) as exc:
        pids = _openvpn_of(config) if config is not None else []
        if not pids:
            return f"no running OpenVPN found through {pid_path}" + (f" or {config}" if config else "") + f": {exc}"
    else:
        if _openvpn_argv(pids[0]) is None:
            return f"process {pids[0]} of {pid_path} is not OpenVPN (a stale pid file)"
    try:
        for pid in pids:
            os.kill(pid, signum)
    except OSError as exc:
        return f"OpenVPN (process {', '.join(map(str, pids))}) could not be signalled: {exc}"
    return None


@dataclass
class StageOut:
    """What became of a finished lease's ~/stage-out files."""

    #: Files that were not and will not be staged out, each with why (for the log and the "ended" report).
    lost: list[str] = field(default_factory=list)
    #: Files that may go through when sent again: the accounts (and their files) are kept for another round.
    pending: list[str] = field(default_factory=list)

    def report(self) -> str:
        """The "ended" report's message: the files not staged out (the aggregate keeps up to 2000 characters)."""
        if not (self.lost or self.pending):
            return ""
        text = "files not staged out: " + "; ".join(self.lost + self.pending)
        return text if len(text) <= 1900 else text[:1900] + " ..."


def staged_out_name(login: str, name: str, accounts: int) -> str:
    """The name a file of ``login``'s ~/stage-out is sent (and kept) under, for a lease with ``accounts`` accounts
    on the node: ``name`` itself for one account (as it always was), ``<login>.<name>`` for more, so that files of
    the same name from two accounts are both kept and say whose they are. A login holds no '.', so the first '.'
    of the kept name ends the login."""
    return name if accounts <= 1 else f"{login}.{name}"


def _unkept_name_advice(name: str, sent_name: str) -> str:
    """Why a file of ~/stage-out was not sent, for the lease's "ended" report: its name, or the name with the
    account's login in front, is not one the aggregate keeps."""
    rule = f"letters, digits, '.', '_', '-', at most {MAX_NAME_LENGTH} characters"
    if sent_name == name:
        return f"not a name the aggregate keeps: use {rule}"
    return (
        f"with the account's login in front, as for every file of a lease with several accounts, its name is "
        f"{len(sent_name)} characters long ({sent_name[:24]}...), not a name the aggregate keeps: use {rule} "
        "for the login, '.' and the name together"
    )


class Agent:
    """The loop of an enrolled node. ``run_once`` is one round; ``run`` repeats it until ``stop`` is set."""

    def __init__(
        self, state_dir: str, host: Host, interval_s: float | None = None, stage_out_rounds: int = STAGE_OUT_ROUNDS
    ) -> None:
        # Absolute (``--state .``): its files' names say they are the state's (local_fault), and so do its words.
        self.state = Path(os.path.abspath(state_dir))
        config = json.loads((self.state / CONFIG).read_text())
        self.node = str(config["node"])
        self.interval_s = float(interval_s if interval_s is not None else config.get("heartbeat_s", 30))
        self.server = str(config["server"])
        self.server_urn = pinned_urn(config)
        self._certificate_mtime = 0.0
        self.client = self._client()
        # vpn.conf's stamp when last read, and when its certificate is due for renewal (None: no certificate there).
        self._vpn_seen: tuple[tuple[int, int], datetime | None] | None = None
        self.host = host
        path = self.state / APPLIED
        # lease id -> logins set up for it: what to take away at its end, even after a restart of the agent.
        self.applied: dict[str, list[str]] = json.loads(path.read_text()) if path.exists() else {}
        staged = self.state / "staged.json"
        self.staged: dict[str, dict[str, str]] = json.loads(staged.read_text()) if staged.exists() else {}
        self.stage_out_rounds = stage_out_rounds
        # lease id -> rounds its stage-out was left incomplete (in memory: a restarted agent tries as many again).
        self.stage_out_tries: dict[str, int] = {}
        self.ending: dict[str, str] = self._load(ENDING)
        # (lease id, name) -> times that stage-in file arrived damaged; rounds it could not be fetched (in memory: a
        # restarted agent gives it as many again).
        self.stage_in_mismatches: dict[tuple[str, str], int] = {}
        self.stage_in_failures: dict[tuple[str, str], int] = {}
        # Seams of ``run``: the clock rounds are timed with, and the random part of a retry's wait (0 to 1).
        self.clock: Callable[[], float] = time.monotonic
        self.jitter: Callable[[], float] = random.random

    def _load(self, name: str) -> Any:
        path = self.state / name
        return json.loads(path.read_text()) if path.exists() else {}

    def _write(self, name: str, records: dict[str, Any]) -> None:
        write_replacing(self.state / name, json.dumps(records, sort_keys=True).encode("utf-8"))

    def _client(self) -> Client:
        """A client with the certificate on disk now (``agent enrol`` again replaces it under a running agent)."""
        self._certificate_mtime = (self.state / CERT).stat().st_mtime
        state = self.state
        return Client(self.server, str(state / CERT), str(state / KEY), str(state / ROOT), self.server_urn)

    def _save(self) -> None:
        write_replacing(self.state / APPLIED, json.dumps(self.applied, sort_keys=True).encode("utf-8"))

    def _record(self, lease_id: str, logins: list[str]) -> None:
        """Keep the logins set up (or about to be) for the lease, before touching the host: whatever part of a
        lease was applied, even when applying or staging in failed, is taken away at its end."""
        before = self.applied.get(lease_id)
        if before != logins:
            self.applied[lease_id] = logins
            try:
                self._save()
            except OSError:  # not on disk: the host is not touched, and memory says what the disk says
                if before is None:
                    self.applied.pop(lease_id)
                else:
                    self.applied[lease_id] = before
                raise

    def _report(self, lease_id: str, state: str, message: str = "") -> None:
        try:
            self.client.call("PUT", f"work/{lease_id}", {"state": state, "message": message})
        except AgentCallError as exc:
            if exc.status != 404:  # a lease deleted meanwhile has nothing to report to
                raise

    def run_once(self) -> dict[str, Any]:
        """Heartbeat, then make the host match the work; returns the work as received. A file of the node that
        cannot be written (its disk full: see local_fault) is LocalFault, not an OSError that would read as the
        server's silence; a lease it held up is not reported failed, and the other leases go on: it is raised at the
        end of the round, which the next round tries again. (A stage-in file the disk has no room for is the
        lease's failure, not this: see _stage_in.)"""
        try:
            return self._round()
        except OSError as exc:
            fault = local_fault(exc, self.state)
            if fault is None:
                raise
            raise fault from exc

    def _held_up(self, lease_id: str, exc: BaseException) -> LocalFault | None:
        """The node's passing fault that kept a lease from being set up this round (logged), or None when ``exc``
        is the lease's failure."""
        fault = local_fault(exc, self.state)
        if fault is None or not fault.passing:
            return None
        log.warning("lease %s not set up yet, tried again next round: %s", lease_id, fault)
        return fault

    def _round(self) -> dict[str, Any]:
        if (self.state / CERT).stat().st_mtime != self._certificate_mtime:
            self.client = self._client()
        self.client.call("POST", "heartbeat", {})
        self.renew_vpn()
        work = self.client.call("GET", "work")
        held_up: LocalFault | None = None  # the first lease held up by the node's own fault this round
        active_ids = set()
        for item in work.get("active", []):
            lease_id = str(item["lease_id"])
            active_ids.add(lease_id)
            accounts = {str(a["login"]): [str(k) for k in a.get("ssh_keys", [])] for a in item.get("accounts", [])}
            if item.get("reported") == "failed":
                continue  # said once; the experimenter or the operator acts on it
            previous = self.applied.get(lease_id, [])
            try:
                self._record(lease_id, sorted(set(previous) | set(accounts)))
                self.host.apply(lease_id, accounts)
            except Exception as exc:  # any other failure of the host is the lease's failure, reported in its words
                fault = self._held_up(lease_id, exc)
                if fault is not None:  # the node's disk full, or its state directory: not the lease's failure
                    held_up = held_up or fault
                    continue
                log.warning("lease %s could not be set up: %s", lease_id, exc)
                self._report(lease_id, "failed", str(exc))
                continue
            try:
                later = self._stage_in(lease_id, item.get("stage_in", []), sorted(accounts))
            except (AgentCallError, OSError, StageInGaveUp, StageInNoRoom) as exc:
                fault = self._held_up(lease_id, exc)
                if fault is not None:
                    held_up = held_up or fault
                    continue
                log.warning("lease %s: staging in failed: %s", lease_id, exc)
                self._report(lease_id, "failed", f"staging in failed: {exc}")
                continue
            if later:  # not reported: the lease is not failed, only not ready yet
                log.warning("lease %s: staging in not complete, tried again next round: %s", lease_id, later)
                continue
            gone = [login for login in previous if login not in accounts]
            if gone:
                self.host.remove(lease_id, gone)
            self._record(lease_id, sorted(accounts))
            if item.get("reported") != "started":
                self._report(lease_id, "started")
        finished = {str(item["lease_id"]) for item in work.get("finished", [])}
        for lease_id in set(self.ending) - finished - set(self.applied):  # the server asks for no report any more
            self.ending.pop(lease_id)
            self._write(ENDING, self.ending)
        for lease_id in sorted((set(self.applied) - active_ids) | finished):
            logins = self.applied.get(lease_id, [])
            # The last round given to it: files that could not go yet are kept on the node before the accounts go.
            last = self.stage_out_tries.get(lease_id, 0) + 1 >= self.stage_out_rounds
            stage_out = self._stage_out(lease_id, logins, int(work.get("max_file_bytes") or 0), keep_pending=last)
            if stage_out.pending:
                tries = self.stage_out_tries[lease_id] = self.stage_out_tries.get(lease_id, 0) + 1
                if tries < self.stage_out_rounds:
                    log.warning(
                        "lease %s: its accounts are kept until its files are staged out (round %d of %d)",
                        lease_id, tries, self.stage_out_rounds,
                    )  # fmt: skip
                    continue
                log.error(
                    "lease %s: stage-out still fails after %d rounds: its accounts go all the same (the files left "
                    "are kept on the node, in %s)", lease_id, tries, self.state / UNSENT / _plain(lease_id),
                )  # fmt: skip
            self.host.remove(lease_id, logins)
            # Kept until said: when the report does not get through, the next round (no accounts, no files left to
            # look at) says the same, not an empty "ended".
            if lease_id not in self.ending or stage_out.report():
                self.ending[lease_id] = stage_out.report()
                self._write(ENDING, self.ending)
            self.applied.pop(lease_id, None)
            self.staged.pop(lease_id, None)
            self.stage_out_tries.pop(lease_id, None)
            for counts in (self.stage_in_mismatches, self.stage_in_failures):
                for key in [key for key in counts if key[0] == lease_id]:
                    counts.pop(key)
            sent = self._load(SENT)
            if sent.pop(lease_id, None) is not None:
                self._write(SENT, sent)
            self._save()
            self._report(lease_id, "ended", self.ending[lease_id])
            self.ending.pop(lease_id)
            self._write(ENDING, self.ending)
        if held_up is not None:
            raise held_up
        return work

    def renew_vpn(self) -> bool:
        """Ask for a new VPN client certificate once VPN_RENEW_AFTER of the current one's lifetime passed (a node
        with a ``vpn.conf``), through the same call as ``agent vpn``, and signal the node's OpenVPN (SIGHUP, its pid
        from ``vpn.pid``) to load it. The old configuration stays until the new one is written: a failure leaves it
        working, and the next round tries again. True when renewed. When nothing is due: a stat of vpn.conf."""
        path = self.state / VPN_CONF
        try:
            found = path.stat()
        except FileNotFoundError:  # no VPN on this node
            return False
        stamp = (found.st_mtime_ns, found.st_size)
        if self._vpn_seen is None or self._vpn_seen[0] != stamp:
            try:
                due: datetime | None = vpn_renewal_due(path.read_text())
            except (OSError, ValueError) as exc:  # not ours to repair: `agent vpn` writes it anew
                log.warning("%s holds no readable VPN certificate (%s): not renewed", path, exc)
                due = None
            self._vpn_seen = (stamp, due)
        due = self._vpn_seen[1]
        if due is None or utcnow() < due:
            return False
        try:
            _, address = request_vpn(str(self.state), self.client)
        except (AgentCallError, OSError, http.client.HTTPException, KeyError, ValueError) as exc:
            log.warning("VPN certificate due for renewal since %s not renewed yet (next round): %s", due, exc)
            return False
        problem = signal_openvpn(self.state / VPN_PID, config=path)
        if problem is None:
            log.info("VPN certificate renewed (address %s); OpenVPN signalled to load it", address)
        else:
            log.error("VPN certificate renewed in %s, but %s: restart OpenVPN with it", path, problem)
        return True

    def _stage_in(self, lease_id: str, files: list[dict[str, Any]], logins: list[str]) -> str:
        """Fetch the lease's staged-in files not fetched yet (checked) into each account's ~/stage-in. A file larger
        than the space free on the file system of an account's home is not fetched: StageInNoRoom, the lease's
        failure. A fetch that may go through when tried again (no answer, cut off, a 5xx, an answer that is not
        JSON, a file damaged on the way for the first time), or a write of the file that finds the disk full (room
        may come), stops here: why, returned, for the next round to try again; STAGE_IN_ROUNDS such rounds for one
        file raise StageInGaveUp, with the last error. A refusal, a file damaged again, or the host failing to
        write it otherwise (an OSError) raises: the lease's failure. Only the record of what was staged in
        (``staged.json``, the agent's state directory) failing on a full disk is the node's passing fault
        (local_fault): the lease waits for room there."""
        done = self.staged.setdefault(lease_id, {})
        for entry in files:
            name, sha256 = str(entry["name"]), str(entry["sha256"])
            if done.get(name) == sha256:
                continue
            self._check_room(name, int(entry.get("size") or 0), logins)
            try:
                data = self.client.get_file(lease_id, name)
            except AgentCallError as exc:
                if is_refusal(exc):
                    raise
                if exc.reason == CHECKSUM:
                    seen = self.stage_in_mismatches[lease_id, name] = (
                        self.stage_in_mismatches.get((lease_id, name), 0) + 1
                    )
                    if seen >= STAGE_IN_MISMATCHES:
                        raise
                return self._stage_in_later(lease_id, name, str(exc))
            except (OSError, http.client.HTTPException) as exc:  # the rest would most likely wait as long: next round
                return self._stage_in_later(lease_id, name, f"no answer ({exc})")
            self.stage_in_mismatches.pop((lease_id, name), None)
            try:
                for login in logins:
                    self.host.write_file(login, STAGE_IN, name, data)
            except OSError as exc:
                if exc.errno not in DISK_FULL:
                    raise
                where = f" in {Path(os.fsdecode(exc.filename)).parent}" if exc.filename else ""
                why = f"no room for {name} ({_size_words(len(data))}) on the node: {exc.strerror}{where}"
                return self._stage_in_later(lease_id, name, why, "written")
            self.stage_in_failures.pop((lease_id, name), None)
            done[name] = sha256
            write_replacing(self.state / "staged.json", json.dumps(self.staged, sort_keys=True).encode("utf-8"))
        return ""

    def _stage_in_later(self, lease_id: str, name: str, why: str, undone: str = "fetched") -> str:
        """Count a round in which stage-in file ``name`` could not be fetched (or ``undone``: written): why, for the
        next round to try again; StageInGaveUp once that is STAGE_IN_ROUNDS rounds (a file the server cannot serve,
        or the node cannot hold, must fail the lease, said to the experimenter, not leave it not ready until its
        end)."""
        rounds = self.stage_in_failures[lease_id, name] = self.stage_in_failures.get((lease_id, name), 0) + 1
        if rounds >= STAGE_IN_ROUNDS:
            self.stage_in_failures.pop((lease_id, name))
            raise StageInGaveUp(f"{name} could not be {undone} in {rounds} rounds; the last time: {why}")
        return f"{name}: {why} (round {rounds} of {STAGE_IN_ROUNDS})"

    def _check_room(self, name: str, size: int, logins: list[str]) -> None:
        """StageInNoRoom when stage-in file ``name`` (``size`` bytes, as the work says) is larger than the space
        free on the file system of an account's home: it cannot be written there now, and fetching it first would
        be for nothing (a home whose room is not known is not checked: its write says). Each account is checked
        alone: several homes on one file system may still lack room together, which their writes find (rounds)."""
        for login in logins:
            room = self.host.free_space(login)
            if room is None or size <= room[1]:
                continue
            home, free = room
            needed, left = _size_words(size), _size_words(free)
            if needed == left:  # (rounded alike: the bytes tell them apart)
                needed, left = f"{size} bytes", f"{free} bytes"
            raise StageInNoRoom(f"no room for {name} ({needed}) on the node: the file system of {home} has {left} free")

    def _stage_out(self, lease_id: str, logins: list[str], max_bytes: int, keep_pending: bool = False) -> StageOut:
        """Send back each account's ~/stage-out files before the account goes. A file larger than the server takes
        (``max_bytes``) is not read: the user's file must not fill root's memory. One file's failure stops no other
        file and no teardown: a name the server does not keep is not sent, a refusal is final; both are logged and
        named in the result. A file that may go through later (no answer, a 5xx, an answer that is not JSON) makes
        the result ``pending``: sending again is harmless (PUT is idempotent). With more than one account on the
        node each file goes as ``<login>.<name>`` (see ``staged_out_name``): two accounts' ``results.txt`` are both
        kept. A file the server accepted (recorded in SENT with its SHA-256) is not sent again unless it changed.
        With ``keep_pending`` (the lease's last round), the files that may go later are kept on the node (UNSENT)."""
        result = StageOut()
        accepted: dict[str, str] = self._load(SENT).get(lease_id, {})  # (read from disk: the record is there only)
        for login in logins:
            try:
                files = self.host.read_files(login, STAGE_OUT, max_bytes or DEFAULT_MAX_FILE_BYTES)
            except OSError as exc:
                log.warning("lease %s: %s/%s could not be read, not staged out: %s", lease_id, login, STAGE_OUT, exc)
                result.lost.append(f"{login}/{STAGE_OUT} (unreadable: {exc})")
                continue
            for name, data in files:
                where = f"{login}/{STAGE_OUT}/{name}"
                sent_name = staged_out_name(login, name, len(logins))
                sha256 = hashlib.sha256(data).hexdigest()
                if accepted.get(sent_name) == sha256:
                    continue
                unsent = ""
                try:
                    check_name(sent_name)  # the server's own rule: sending it would only be refused
                    self.client.put_file(lease_id, sent_name, data)
                    accepted[sent_name] = sha256
                    self._write(SENT, {**self._load(SENT), lease_id: accepted})
                except GeniError as exc:
                    log.warning("lease %s: %r not staged out as %r: %s", lease_id, where, sent_name, exc.message)
                    kept = self._keep_unsent(lease_id, sent_name, data)
                    result.lost.append(f"{where!r} ({_unkept_name_advice(name, sent_name)}; {kept})")
                except AgentCallError as exc:
                    if is_refusal(exc):
                        log.warning("lease %s: %r not staged out, refused: %s", lease_id, where, exc)
                        result.lost.append(f"{where!r} ({exc}; {self._keep_unsent(lease_id, sent_name, data)})")
                    else:
                        log.warning("lease %s: %r not staged out yet: %s", lease_id, where, exc)
                        unsent = f"{exc}"
                except (OSError, http.client.HTTPException) as exc:  # no answer: the server may be back next round
                    fault = local_fault(exc, self.state)
                    if fault is not None:  # sent, not recorded (a full disk): sending it again is harmless
                        log.warning("lease %s: %r not recorded as staged out yet: %s", lease_id, where, fault)
                        unsent = fault.message
                    else:
                        log.warning("lease %s: %r not staged out yet (no answer: %s)", lease_id, where, exc)
                        unsent = f"no answer: {exc}"
                except Exception:  # a failure of ours with this one file: it must not keep the lease's accounts
                    log.exception("lease %s: %r not staged out (agent error)", lease_id, where)
                    result.lost.append(f"{where!r} (agent error: see the agent's log)")
                if unsent:
                    if keep_pending:
                        unsent += f"; {self._keep_unsent(lease_id, sent_name, data)}"
                    result.pending.append(f"{where!r} ({unsent})")
        return result

    def _keep_unsent(self, lease_id: str, name: str, data: bytes) -> str:
        """Keep a file the server refused (its lease's window over, a quota, a name it does not keep) in the agent's
        own state folder, root's only, before the account and its home go: the experimenter's results are not
        destroyed with it; the operator can hand them over. Where it is, in words, for the lease's report. A copy of
        the same content kept already under that name (or one of its '_'-prefixed variants) is not written again: a
        lease whose removal fails is given a "last" round again and again, and must not fill the node's disk."""
        folder = self.state / UNSENT / _plain(lease_id)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder.parent, 0o700)
            os.chmod(folder, 0o700)
            path = folder / _plain(name)
            sha256 = hashlib.sha256(data).hexdigest()
            while path.exists():  # (a name kept before, from another account: neither is lost)
                if path.stat().st_size == len(data) and _file_sha256(path) == sha256:
                    log.info("lease %s: %r kept on the node already, in %s", lease_id, name, path)
                    return f"kept on the node in {path}"
                path = path.with_name(f"_{path.name}")
            write_replacing(path, data)
        except OSError as exc:
            log.error("lease %s: %r could not be kept on the node either: %s", lease_id, name, exc)
            return f"not kept on the node either: {exc}"
        log.warning("lease %s: %r kept on the node in %s", lease_id, name, path)
        return f"kept on the node in {path}"

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop``: a round every interval, counted from the round's start (the round's own length does
        not delay the next heartbeat, unless it is longer than the interval). A round that fails (a server that
        cannot be reached, restarting, the network down) is tried again sooner: after RETRY_FIRST_S, doubling, at
        most the interval, less a random part. A round held up by the node's own files (LocalFault: its disk full)
        is a warning naming where, and the next round comes at its time (its heartbeat with it)."""
        retry_s = RETRY_FIRST_S
        while not stop.is_set():
            started = self.clock()
            try:
                self.run_once()
            except LocalFault as exc:  # the node's own: the server answered, the next round comes at its time
                wait_s = max(0.0, self.interval_s - (self.clock() - started))
                log.warning("%s; trying again in %.0f s", exc, wait_s)
                retry_s = RETRY_FIRST_S
                stop.wait(wait_s)
                continue
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                wait_s = self._retry_wait(retry_s)
                log.warning("server unreachable (%s); trying again in %.0f s", exc, wait_s)
            except AgentCallError as exc:
                wait_s = self._retry_wait(retry_s)
                log.error("the server refused: %s; trying again in %.0f s", exc, wait_s)
            except Exception:  # an answer we cannot use, or a host that misbehaves: the loop must keep going
                wait_s = self._retry_wait(retry_s)
                log.exception("this round failed; trying again in %.0f s", wait_s)
            else:
                retry_s = RETRY_FIRST_S
                stop.wait(max(0.0, self.interval_s - (self.clock() - started)))
                continue
            retry_s = min(retry_s * 2, max(self.interval_s, RETRY_FIRST_S))
            stop.wait(wait_s)

    def _retry_wait(self, retry_s: float) -> float:
        """The wait before trying a failed round again: ``retry_s`` at most the interval, less up to a quarter."""
        return min(retry_s, self.interval_s) * (1 - self.jitter() / 4)
