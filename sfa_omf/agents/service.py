"""The agent API's logic, without I/O: register (CSR in, certificate out), heartbeat, work, reports.

server/agent_http.py carries it over HTTPS as JSON under ``/agents/v1/``. Each method takes the caller's TLS chain
(leaf first) and the decoded JSON body and returns what to answer, or raises GeniError; the HTTP layer maps the
reason to a status. The agent's private key never leaves its node: registration takes a certificate signing request
whose key must be the very key the agent presented at the TLS handshake (a self-signed certificate before it has
ours), and later calls are recognised by the exact certificate we issued.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sfa_omf.agents.dns import GROUP, RESERVED_HOSTNAMES, DnsZones, NodeName, names_fingerprint
from sfa_omf.agents.staging import FileStore
from sfa_omf.agents.vpn import NETWORK as VPN_NETWORK
from sfa_omf.agents.vpn import VpnCa, client_config
from sfa_omf.calendar.agents import (
    HOSTNAME,
    REPORT_STATES,
    AgentRecord,
    Agents,
    Enrolment,
    LeaseWork,
    StagingLease,
    check_agent_text,
)
from sfa_omf.calendar.inventory import check_node_fields
from sfa_omf.cluster.leadership import LeadershipLost
from sfa_omf.errors import BadArgs, GeniError, Reason
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.testbed.base import AgentNode, TestbedNodes
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import format_time
from sfa_omf.trust.gid import GidChain, chain_pem
from sfa_omf.trust.pki import create_gid
from sfa_omf.xrn import hrn_to_urn, join_hrn, split_hrn

MAX_PROPERTIES = 32
MAX_PROPERTY_CHARS = 200
MIN_KEY_BITS = 2048
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_LEASE_ID = re.compile(r"^[0-9a-f-]{36}$")
# Properties the aggregate sets itself or the operator records: network_address would point the OAR backend at
# another node; hostname and uuid name the node in the OMF backend's REST inventory (another node's would be claimed);
# cmc and interfaces are what the OMF controllers read to switch the node and reach it (they would be redirected).
_SET_BY_THE_AGGREGATE = frozenset({"local_address", "lan_group"})
#: Names an agent's node never carries from its agent (migration 0020 removed what older agents had stored).
NOT_FROM_AGENTS = frozenset({"network_address", "hostname", "uuid", "cmc", "interfaces"})
_RESERVED_PROPERTIES = _SET_BY_THE_AGGREGATE | NOT_FROM_AGENTS
log = logging.getLogger("sfa_omf.agents")


@dataclass(frozen=True)
class AgentSettings:
    heartbeat_s: int = 30
    timeout_s: int = 120
    vpn_remote: str = ""  # the address agents reach the OpenVPN server at
    vpn_port: int = 1194
    stage_out_grace_s: int = 3600  # a lease's files are staged out from its start until this long after its end


def key_sha256(public_key: Any) -> str:
    """SHA-256 (hex) of a public key's DER SubjectPublicKeyInfo: how keys are compared and recorded."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def cert_sha256(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _bad(message: str) -> GeniError:
    return GeniError(Reason.BAD_ARGS, message)


def _not_to_set_up(lease_id: str, lease: StagingLease, hostname: str) -> str:
    """Why an agent's "started" for a lease that is not provisioned is refused, in words its operator can act on."""
    window = f"{format_time(lease.start)} to {format_time(lease.end)}"
    why = {
        "cancelled": f"was cancelled (its slice deleted it, or the testbed gave it up; it was booked {window})",
        "expired": f"expired before it was provisioned (it was booked {window})",
        "ended": f"ended at {format_time(lease.end)}",
        "allocated": f"is allocated, not provisioned: a node sets it up once it is, from {format_time(lease.start)}",
    }.get(lease.state, f"is {lease.state}")
    return (
        f'lease {lease_id} {why}: it is not to be set up on {hostname}, and its "started" is not recorded (no '
        "files are staged out for it); whatever was made on the node for it is to be removed (the agent does at its "
        'next round; then report "ended")'
    )


def _text(body: Mapping[str, Any], name: str, required: bool = True, limit: int = 200) -> str:
    """The string field ``name`` of an agent's body: at most ``limit`` characters, and none that XML cannot carry
    (what an agent sends can reach Status answers, notifications and the database)."""
    value = body.get(name, None if required else "")
    if value is None:
        raise _bad(f"{name!r} is missing")
    if not isinstance(value, str) or len(value) > limit:
        raise _bad(f"{name!r} must be a string of at most {limit} characters")
    check_agent_text(value, repr(name))
    return value


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # "this host on this network" (RFC 1122): never a destination
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_GIVE_LAN_ADDRESS = "give the node's own address on its LAN (where the other nodes of its LAN group reach it)"


def local_address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``address`` cannot be a node's local address (what DNS publishes for it and OAR is told), said for the
    agent's operator; None when it can. Refused: addresses that name no one host (unspecified, broadcast,
    multicast), every host itself (loopback), a host only on one link (link-local: DNS carries no scope), reserved
    ranges, and the nodes' VPN network (a node's VPN address is the aggregate's to give)."""
    if address.is_unspecified or (isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK):
        return f"local_address {address} means 'this host' (the unspecified address): no one reaches a node there"
    if address.is_loopback:
        return f"local_address {address} is a loopback address: every host reaches itself there, not this node"
    if address == _BROADCAST:
        return f"local_address {address} is the broadcast address: it reaches every host of the LAN, not this node"
    if address.is_multicast:
        return f"local_address {address} is a multicast address: it names a group of receivers, not this node"
    if address.is_link_local:
        return f"local_address {address} is a link-local address: it holds on one link only, which DNS cannot say"
    if address.is_reserved:
        return f"local_address {address} is in a reserved range that no host is given"
    if isinstance(address, ipaddress.IPv4Address) and address in VPN_NETWORK:
        return (
            f"local_address {address} is in the nodes' VPN network {VPN_NETWORK}, whose addresses the aggregate "
            "gives (each node's VPN address)"
        )
    return None


class AgentService:
    """What the agent API answers. ``accounts_of(slice_urn)`` gives the slice's local logins and SSH keys (the
    aggregate's account mapping); ``testbed_nodes``, when the testbed keeps its own list of nodes (OAR), is told
    about registrations, lost nodes and their return."""

    def __init__(
        self,
        agents: Agents,
        authority: LocalAuthority,
        accounts_of: Callable[[str], Sequence[LocalAccount]],
        settings: AgentSettings,
        files: FileStore | None = None,
        vpn: VpnCa | None = None,
        dns: DnsZones | None = None,
        testbed_nodes: TestbedNodes | None = None,
    ) -> None:
        self.agents = agents
        self.testbed_nodes = testbed_nodes
        self.dns = dns
        self.files = files
        self.vpn = vpn
        self.authority = authority
        self.accounts_of = accounts_of
        self.settings = settings
        self.root_pem = authority.chain[-1].pem()
        # Heartbeats of live agents are gathered here and written together by flush_heartbeats() (the server runs
        # it every few seconds, and before each sweep): one commit for many agents instead of one each.
        self._heard: dict[str, int] = {}
        self._heard_lock = threading.Lock()
        # DNS rewrites: tickets taken after each commit, the last ticket a finished rewrite covered.
        self._dns_counter_lock = threading.Lock()
        self._dns_publish_lock = threading.Lock()
        self._dns_requested = 0
        self._dns_published = 0
        # Names of registrations written but not committed yet: every rewrite publishes them with the calendar's.
        self._dns_pending: dict[str, NodeName] = {}
        # The last warning of the periodic zone refresh: said once, not every round while it lasts.
        self._dns_refresh_warning = ""

    def node_urn(self, hostname: str) -> str:
        return hrn_to_urn(join_hrn([*split_hrn(self.authority.hrn), hostname]), "node")

    # -- register ----------------------------------------------------------------------------------------------
    def register(self, caller_chain: GidChain, body: Mapping[str, Any]) -> dict[str, Any]:
        """Enrol the agent (see Agents.register): the node's URN, our certificate for its key, our root."""
        token = _text(body, "token")
        hostname = _text(body, "hostname").lower()
        if not HOSTNAME.fullmatch(hostname):
            raise _bad(f"host name {hostname!r} must be one DNS label: letters, digits and '-', at most 63")
        if hostname in RESERVED_HOSTNAMES:
            raise _bad(f"host name {hostname!r} is the DNS server's own name in the nodes' zone: choose another")
        if self.dns is not None:
            too_long = self.dns.full_name_problem(hostname)
            if too_long is not None:
                raise _bad(too_long)
        local_address = _text(body, "local_address", required=False, limit=64)
        if local_address:
            try:
                address = ipaddress.ip_address(local_address)
            except ValueError as exc:
                raise _bad(f"local_address {local_address!r} is not an IP address") from exc
            if "%" in local_address:  # a scope (fe80::1%eth0) means nothing to others, and named refuses the zone
                raise _bad(f"local_address {local_address!r} has a scope: give an address without '%...'")
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped  # ::ffff:a.b.c.d is the IPv4 host: checked and kept as that
            problem = local_address_problem(address)
            if problem is not None:
                raise _bad(f"{problem}; {_GIVE_LAN_ADDRESS}")
            local_address = str(address)  # one spelling per address (IPv6 compressed, lower case)
        lan_group = _text(body, "lan_group", required=False, limit=100)
        if lan_group and not GROUP.fullmatch(lan_group):
            raise _bad(f"lan_group {lan_group!r} may hold letters, digits, '_', '.', '-' only")
        properties = self._properties(body.get("properties", {}))
        csr = self._csr(_text(body, "csr", limit=8192))
        if not caller_chain:
            raise GeniError(Reason.CALLER_UNTRUSTED, "present the key of the request at the TLS handshake")
        fingerprint = key_sha256(csr.public_key())
        if key_sha256(caller_chain[0].certificate.public_key()) != fingerprint:
            raise GeniError(
                Reason.CALLER_UNTRUSTED,
                "the certificate request's key is not the key presented at the TLS handshake: present the same key",
            )
        public_key = csr.public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)  # checked by _csr

        def issue(node_urn: str) -> tuple[str, str]:
            gid = create_gid(node_urn, public_key, self.authority.key, issuer=self.authority.chain[0])
            return chain_pem((gid, *self.authority.chain)), cert_sha256(gid.certificate)

        enrolment = Enrolment(
            token=token,
            hostname=hostname,
            node_urn=self.node_urn(hostname),
            key_sha256=fingerprint,
            properties=properties,
            local_address=local_address,
            lan_group=lan_group,
        )
        agent = self._register_everywhere(enrolment, issue, public_key)
        return {
            "node": agent.node,
            "hostname": agent.hostname,
            "pool": agent.pool,
            "certificate": agent.certificate,
            "root": self.root_pem,
            "heartbeat_s": self.settings.heartbeat_s,
        }

    def _register_everywhere(
        self, enrolment: Enrolment, issue: Callable[[str], tuple[str, str]], public_key: rsa.RSAPublicKey
    ) -> AgentRecord:
        """The registration in the calendar, the testbed's list of nodes and DNS, or in none of them; a node
        re-bound to a new key loses the VPN certificate of its old key (revoked before the commit: a registration
        that then fails leaves the old key without its tunnel, never the other way round).

        The calendar's unit of work stays open while the node joins the testbed (OAR) and its name is published and
        the DNS server reloaded; it commits only when both worked. When anything fails the unit of work is rolled
        back, a resource this call created is removed again and the zone is rewritten without the name, so the agent
        is told to retry (503) and the retry, with the same token, starts from nothing."""
        undo: list[Callable[[], None]] = []
        pending: list[NodeName] = []

        def outside_the_database(record: AgentRecord, exclusive: Callable[[], None]) -> None:
            if self.testbed_nodes is not None:
                node = AgentNode(record.hostname, record.number, record.local_address)
                remove = self.testbed_nodes.join(node, exclusive)
                if remove is not None:
                    undo.append(remove)
            if self.dns is not None:
                # Held until this registration commits: another process's rewrite of the zone (which knows only its
                # own uncommitted names) waits, and then reads this one from the calendar.
                exclusive()
                # (NodeName's node_id is the agent's VPN number, what the zone's VPN address is made from.)
                pending.append(NodeName(record.hostname, record.number, record.local_address, record.lan_group))
                self._publish(pending[0])
            if self.vpn is not None and self.vpn.revoke_other_key(record.hostname, public_key):
                log.info("node %s was re-bound to a new key: its previous VPN certificate is revoked", record.hostname)

        try:
            agent, _changed = self.agents.register(enrolment, issue, outside_the_database)
        except BaseException:
            self._forget_pending(pending)
            if pending:
                undo.append(self._republish_alone)
            for action in reversed(undo):
                try:
                    action()
                except Exception:  # the registration's own error is the answer; this is for the operator
                    log.exception("undoing the failed registration of %s did not work", enrolment.hostname)
            raise
        self._forget_pending(pending)
        return agent

    def _forget_pending(self, pending: list[NodeName]) -> None:
        with self._dns_counter_lock:
            for name in pending:
                if self._dns_pending.get(name.hostname) is name:
                    del self._dns_pending[name.hostname]

    def _republish_alone(self) -> None:
        """The zone from the calendar again, while no other process's registration is between its own rewrite and
        its commit (their names would be missing from this rewrite)."""
        with self.agents.testbed_lock() as exclusive:
            exclusive()
            self.publish_names()

    def publish_names(self) -> None:
        """Rewrite the nodes' DNS zone from the calendar (every agent), when this aggregate keeps one."""
        self._publish(None)

    def write_names(self) -> None:
        """At start: the zone files from the calendar, without asking the DNS server to reload. named may not run yet
        (it reads them when it starts, and its configuration's include needs them); a running one is reloaded by the
        first heartbeats' flush (refresh_names), as the files are not marked read by the server. A failure is a
        warning: that flush tries again."""
        if self.dns is None:
            return
        try:
            self.dns.publish([NodeName(*row) for row in self.agents.names()], reload=False)
        except (GeniError, OSError) as exc:
            log.warning("nodes' DNS zone files not written at start (the heartbeats' flush tries again): %s", exc)

    def refresh_names(self) -> None:
        """Rewrite and reload the zone when the calendar's names are not those the DNS server was last reloaded with:
        a registration or removal made through another host of the cluster, DNS turned on after nodes enrolled, a
        failed reload. When nothing changed, one column query (Agents.names) and a small file's read. Errors are
        logged (once while they last): the next round tries again."""
        if self.dns is None:
            return
        try:
            calendar = names_fingerprint(NodeName(*row) for row in self.agents.names())
            if calendar == self.dns.published_fingerprint():
                self._dns_refresh_warning = ""
                return
            self._republish_alone()
            log.info("nodes' DNS zone %s brought in line with the calendar", self.dns.zone)
            self._dns_refresh_warning = ""
        except LeadershipLost:  # another process leads: the flush stops, Leadership logs it once
            raise
        except (GeniError, OSError) as exc:  # the DNS server or the database away a moment
            warning = f"nodes' DNS zone {self.dns.zone} not brought in line with the calendar (next round): {exc}"
            if warning != self._dns_refresh_warning:
                log.warning("%s", warning)
            self._dns_refresh_warning = warning
        except Exception:  # never in the way of the heartbeats' flush, which follows
            log.exception("nodes' DNS zone not brought in line with the calendar (next round)")

    def _publish(self, pending: NodeName | None) -> None:
        """Rewrite the zone from the calendar plus the names of registrations not committed yet (``pending`` among
        them). Returns once a rewrite that started after this call has finished; concurrent callers share one
        rewrite (group commit), so simultaneous registrations do not each wait for their own reload."""
        if self.dns is None:
            return
        with self._dns_counter_lock:
            if pending is not None:
                self._dns_pending[pending.hostname] = pending
            self._dns_requested += 1
            ticket = self._dns_requested
        # One limit for the wait for another rewrite and this one's own (see DnsZones.publish): a registration holds
        # its unit of work, on SQLite the database's write lock, for that long at most.
        deadline = time.monotonic() + self.dns.reload_timeout_s
        if not self._dns_publish_lock.acquire(timeout=self.dns.reload_timeout_s):
            raise GeniError(
                Reason.UNAVAILABLE,
                f"the DNS zone {self.dns.zone} is being rewritten and its DNS reload has not finished within "
                f"{self.dns.reload_timeout_s:g} s: try again later",
            )
        try:
            if self._dns_published >= ticket:
                return  # a rewrite that read the calendar and the pending names after this call's own has finished
            with self._dns_counter_lock:
                target = self._dns_requested
                uncommitted = list(self._dns_pending.values())
            # The calendar is read after the pending names: a registration that left them had committed first.
            names = {row[0]: NodeName(*row) for row in self.agents.names()}
            names.update((name.hostname, name) for name in uncommitted)
            self.dns.publish(list(names.values()), deadline=deadline)
            self._dns_published = target
        finally:
            self._dns_publish_lock.release()

    @staticmethod
    def _properties(value: Any) -> dict[str, str]:
        if not isinstance(value, dict) or len(value) > MAX_PROPERTIES:
            raise _bad(f"'properties' must be an object of at most {MAX_PROPERTIES} names")
        checked: dict[str, str] = {}
        for name, item in value.items():
            if name in _RESERVED_PROPERTIES:
                raise _bad(
                    f"property {name!r} is set by the aggregate or its operator, not by an agent: leave it out "
                    f"(reserved: {', '.join(sorted(_RESERVED_PROPERTIES))})"
                )
            if not _LABEL.fullmatch(name):
                raise _bad(f"property name {name!r} is not allowed (letters, digits, '_', '.', '-')")
            if not isinstance(item, str | int | float) or isinstance(item, bool) or len(str(item)) > MAX_PROPERTY_CHARS:
                raise _bad(f"property {name!r} must be a string or number of at most {MAX_PROPERTY_CHARS} characters")
            try:  # what a node's row cannot hold or an advertisement cannot carry (control characters, NaN)
                check_node_fields({"properties": {name: item}})
            except BadArgs as exc:
                raise _bad(exc.message) from exc
            checked[name] = str(item)
        return checked

    @staticmethod
    def _csr(pem: str) -> x509.CertificateSigningRequest:
        try:
            csr = x509.load_pem_x509_csr(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise _bad("'csr' is not a PEM certificate signing request") from exc
        if not csr.is_signature_valid:
            raise _bad("the certificate signing request's signature does not verify")
        key = csr.public_key()
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_KEY_BITS:
            raise _bad(f"the certificate signing request must hold an RSA key of at least {MIN_KEY_BITS} bits")
        return csr

    # -- calls of enrolled agents ------------------------------------------------------------------------------
    def authenticate(self, caller_chain: GidChain) -> AgentRecord:
        """The enrolled agent presenting exactly the certificate we issued to it, or CALLER_UNTRUSTED."""
        if not caller_chain:
            raise GeniError(Reason.CALLER_UNTRUSTED, "present the certificate you received at registration")
        agent = self.agents.by_certificate(cert_sha256(caller_chain[0].certificate))
        if agent is None:
            raise GeniError(
                Reason.CALLER_UNTRUSTED,
                "this certificate was not issued to an enrolled agent (or was replaced): enrol with a join token",
            )
        return agent

    def heartbeat(self, caller_chain: GidChain) -> dict[str, Any]:
        """The agent is alive; tells it how often to come back. A lost agent's node is back in service at once."""
        agent = self.authenticate(caller_chain)
        if agent.lost:
            self.agents.heartbeat(agent.node)
            self._back_in_testbed(agent)
        else:
            with self._heard_lock:
                self._heard[agent.node] = int(self.agents.clock().timestamp())
        return {"node": agent.node, "heartbeat_s": self.settings.heartbeat_s, "timeout_s": self.settings.timeout_s}

    def flush_heartbeats(self) -> int:
        """Write the heartbeats gathered since the last flush; how many agents that was. Every process runs it every
        few seconds, so it also brings this host's VPN files (CRL, ccd/) in line with the cluster's records: a
        certificate revoked through another host is refused here from then on (when nothing changed, one small
        query and a few stats: VpnCa.refresh), and this host's DNS zone with the calendar's names (refresh_names)."""
        self._refresh_vpn()
        self.refresh_names()
        with self._heard_lock:
            heard, self._heard = self._heard, {}
        try:
            self.agents.record_heard(heard)
        except Exception:
            with self._heard_lock:  # keep them for the next flush (newer ones win)
                for node, seconds in heard.items():
                    self._heard[node] = max(seconds, self._heard.get(node, 0))
            raise
        return len(heard)

    def _refresh_vpn(self) -> None:
        if self.vpn is None:
            return
        try:
            if self.vpn.refresh():
                log.info("VPN files (CRL, client configs) brought in line with the cluster's records")
        except LeadershipLost:  # another process leads: the flush stops, Leadership logs it once
            raise
        except (GeniError, OSError) as exc:  # the database away a moment: the next round tries again
            log.warning("VPN files not brought in line with the cluster's records (next round): %s", exc)
        except Exception:  # never in the way of the heartbeats' flush, which follows
            log.exception("VPN files not brought in line with the cluster's records (next round)")

    def sweep_lost(self) -> list[str]:
        """Flush, then put the nodes of agents silent for the timeout out of service (in the testbed's list of
        nodes too, which is brought in line with the calendar for every agent: a change it missed is made now)."""
        self.flush_heartbeats()
        lost = self.agents.sweep_lost(self.settings.timeout_s)
        if self.testbed_nodes is not None:
            nodes = [AgentNode(*row) for row in self.agents.presence()]
            try:
                with self.agents.testbed_lock() as exclusive:
                    changed = self.testbed_nodes.sync(nodes, exclusive)
            except GeniError as exc:
                log.warning("the testbed's list of nodes not brought in line with the agents (next sweep): %s", exc)
            else:
                if changed:
                    log.info("testbed's list of nodes brought in line with their agents: %s", ", ".join(changed))
        return lost

    def _back_in_testbed(self, agent: AgentRecord) -> None:
        """A lost node heard again is back in the testbed's pool at once (else at the next sweep)."""
        if self.testbed_nodes is None:
            return
        try:
            with self.agents.testbed_lock() as exclusive:
                self.testbed_nodes.join(AgentNode(agent.hostname, agent.number, agent.local_address), exclusive)
        except GeniError as exc:
            log.warning("node %s is back but not yet in the testbed's pool (next sweep): %s", agent.hostname, exc)

    def work(self, caller_chain: GidChain) -> dict[str, Any]:
        """What must be true on the node now: the running leases with their accounts, and leases to tear down."""
        agent = self.authenticate(caller_chain)
        work = self.agents.work(agent.node)
        return {
            "active": [self._active(item, agent.hostname) for item in work.active],
            "finished": [{"lease_id": item.lease_id, "slice": item.slice_urn} for item in work.finished],
            # The largest file staged out that the server takes: the agent leaves bigger ones unread.
            "max_file_bytes": self.files.max_bytes if self.files is not None else 0,
        }

    def _active(self, item: LeaseWork, hostname: str) -> dict[str, Any]:
        staged = self.files.list(item.lease_id, hostname, "in") if self.files is not None else []
        return {
            "lease_id": item.lease_id,
            "slice": item.slice_urn,
            "start": format_time(item.start),
            "end": format_time(item.end),
            "image": item.disk_image,
            "reported": item.reported,
            "accounts": [
                {"login": account.login, "ssh_keys": list(account.ssh_keys)}
                for account in self.accounts_of(item.slice_urn)
            ],
            "stage_in": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in staged],
        }

    def report(self, caller_chain: GidChain, lease_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Record started / failed / ended for a lease on the caller's node (PUT: the same report is harmless).

        A report says the agent set the lease up, which opens a cancelled or ended lease's stage-out (``stage_out``).
        So for a lease that is not provisioned (cancelled, expired, ended; or allocated only): "started" is refused
        (POLICY, saying why), unless it is the report recorded already; a "failed" or "ended" while none is recorded
        is taken and ignored, nothing written (the agent tears down what it made either way, and the slice's users
        are not told that a lease they deleted could not be set up). Reports recorded before go on as they were."""
        agent = self.authenticate(caller_chain)
        if not _LEASE_ID.fullmatch(lease_id):
            raise _bad(f"{lease_id!r} is not a lease id")
        state = _text(body, "state", limit=20)
        message = _text(body, "message", required=False, limit=2000)
        # (Not one unit of work with the write: a lease cancelled in between was running when the agent asked for
        # its work, and set up then; its report may open its window as one sent a moment earlier would have.)
        lease = self.agents.staging_lease(agent.node, lease_id) if state in REPORT_STATES else None
        if lease is not None and lease.state != "provisioned":
            health = self.agents.node_health(agent.node, lease_id) if lease.set_up else None
            recorded = health[1] if health is not None else ""
            if state == "started" and recorded != "started":
                raise GeniError(Reason.POLICY, _not_to_set_up(lease_id, lease, agent.hostname))
            if not recorded:
                return {"lease_id": lease_id, "state": state}
        self.agents.report(agent.node, lease_id, state, message)
        return {"lease_id": lease_id, "state": state}

    # -- staged files ------------------------------------------------------------------------------------------
    def _staging(self, caller_chain: GidChain, lease_id: str) -> tuple[FileStore, AgentRecord]:
        agent = self.authenticate(caller_chain)
        if self.files is None:
            raise GeniError(Reason.UNSUPPORTED, "this aggregate keeps no staged files")
        if not _LEASE_ID.fullmatch(lease_id):
            raise GeniError(Reason.NOT_FOUND, f"lease {lease_id!r} has no sliver on {agent.node}")
        return self.files, agent

    def stage_out(self, caller_chain: GidChain, lease_id: str, name: str, data: bytes, sha256: str) -> dict[str, Any]:
        """Keep a file the agent sends back for a lease on its node (PUT: the same file again changes nothing), from
        the lease's start until stage_out_grace_s after its end, for a lease that was provisioned (a cancelled one
        only when the agent set it up: a slice deleted during its slot). Otherwise POLICY, saying when files are
        taken: an agent may not fill the aggregate's disk with a future lease's or a cancelled booking's files."""
        files, agent = self._staging(caller_chain, lease_id)
        lease = self.agents.staging_lease(agent.node, lease_id)
        if lease is None:
            raise GeniError(Reason.NOT_FOUND, f"lease {lease_id!r} has no sliver on {agent.node}")
        if files.kept_already(lease_id, agent.hostname, "out", name, sha256):  # sent again: its answer was lost
            return {"name": name, "size": len(data), "sha256": sha256, "changed": False}
        opens, closes = lease.start, lease.end + timedelta(seconds=self.settings.stage_out_grace_s)
        window = f"from its start ({format_time(opens)}) until {format_time(closes)} ([sfa_agents] stage_out_grace_s)"
        if not (lease.state == "provisioned" or (lease.state in ("ended", "cancelled") and lease.set_up)):
            raise GeniError(
                Reason.POLICY,
                f"lease {lease_id} is {lease.state} and was never set up on {agent.hostname}: no files are staged out "
                f"for it (they are taken for a provisioned lease {window})",
            )
        now = self.agents.clock()
        if now < opens:
            raise GeniError(
                Reason.POLICY, f"lease {lease_id} has not started: its files are taken {window}; send them then"
            )
        if now >= closes:
            raise GeniError(
                Reason.POLICY, f"lease {lease_id} is over: its files were taken {window}; this one is not kept"
            )
        changed = files.put(lease_id, agent.hostname, "out", name, data, sha256)
        return {"name": name, "size": len(data), "sha256": sha256, "changed": changed}

    def stage_in(self, caller_chain: GidChain, lease_id: str, name: str) -> tuple[bytes, str]:
        """A file staged in for a lease on the caller's node, and its SHA-256 (whatever the lease's state: the
        operator stages in before the slot, and the agent fetches when the lease is active)."""
        files, agent = self._staging(caller_chain, lease_id)
        if not self.agents.lease_on_node(agent.node, lease_id):
            raise GeniError(Reason.NOT_FOUND, f"lease {lease_id!r} has no sliver on {agent.node}")
        return files.get(lease_id, agent.hostname, "in", name)

    # -- VPN -----------------------------------------------------------------------------------------------------
    def vpn_certificate(self, caller_chain: GidChain, body: Mapping[str, Any]) -> dict[str, Any]:
        """Sign an OpenVPN client certificate for the node's own key (CSR in, certificate out) and give the node's
        fixed VPN address and a ready client configuration. Asking again gives a new certificate and revokes the
        previous one."""
        agent = self.authenticate(caller_chain)
        if self.vpn is None:
            raise GeniError(Reason.UNSUPPORTED, "this aggregate runs no VPN for nodes")
        csr = self._csr(_text(body, "csr", limit=8192))
        if key_sha256(csr.public_key()) != key_sha256(caller_chain[0].certificate.public_key()):
            raise GeniError(Reason.CALLER_UNTRUSTED, "the request must hold the key this node enrolled with")
        public_key = csr.public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)  # checked by _csr
        number = self.agents.node_number(agent.node)  # the agent's VPN number: its fixed address

        def enrolled() -> bool:
            # A node removed meanwhile (the operator's command, another host), or re-bound to another key (its
            # certificate replaced), gets none.
            try:
                still = self.agents.by_certificate(cert_sha256(caller_chain[0].certificate)) is not None
                return still and self.agents.node_number(agent.node) == number
            except GeniError as exc:
                if exc.reason is not Reason.NOT_FOUND:
                    raise
                return False

        certificate, address = self.vpn.issue(agent.hostname, number, public_key, enrolled)
        return {
            "certificate": certificate,
            "ca": self.vpn.ca_pem,
            "address": address,
            "config": client_config(
                self.settings.vpn_remote, self.settings.vpn_port, self.vpn.ca_pem, certificate, "KEY_PATH"
            ),
        }
