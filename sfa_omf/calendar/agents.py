"""The calendar side of node agents: join tokens, enrolment, heartbeats, lost nodes, and each node's work.

Everything here is one unit of work on the calendar's database and hands out plain records. An agent's node is an
ordinary calendar node: booking it goes through Bookings like any other. A node whose agent stopped reporting is put
in the state ``lost`` (not bookable, advertised out of service) by ``sweep_lost`` and back to ``usable`` by its next
heartbeat; an operator's ``maintenance`` is never overridden.

Each agent has a VPN number of its own (``Agent.vpn_number``, 1..VPN_NUMBERS): its node's address in the nodes' VPN
(agents/vpn.py) and its OAR resource's ``vpn_number``. A registration that makes the agent's row gives it the lowest
number no agent holds and none in quarantine: a removed node's number is free again VPN_NUMBER_QUARANTINE_S after
the removal (its row goes with the node; the removal writes vpn_number_release in the same transaction) and after
the revocation of its VPN certificate (vpn_revoked, with its number). Until then its tunnel may still be up (OpenVPN
checks the CRL only at a handshake): a node given its address at once would share it with the removed one. It is
not the node's row id: ids are never given back (PostgreSQL spends one on every insert, a failed registration's
too, and ``node add`` and ``node import`` spend theirs), so an aggregate whose ids passed the VPN's size could enrol
no agent.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, exists, func, literal, select, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sfa_omf.calendar.agent_models import Agent, AgentReport, AgentToken
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import DEFAULT_POOL, NOT_IN_TEXT, check_node_fields
from sfa_omf.calendar.models import Lease, Node, Pool, Slice, Sliver, VpnNumberRelease, VpnRevoked
from sfa_omf.calendar.outbox import LeaseNews, RecordedEvent, add_event, add_lease_event
from sfa_omf.calendar.policy import Policy
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import format_time, utcnow

LOST = "lost"
AGENT_HARDWARE_TYPE = "agent"  # the hardware type of a node an agent registered
REPORT_STATES = ("started", "failed", "ended")
# One DNS label, lower case: the name becomes the node's URN name (and, later, its DNS name).
HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TOKEN = re.compile(r"^([0-9a-f]{12})\.([A-Za-z0-9_-]{20,64})$")
#: The nodes' VPN (agents/vpn.py): agent number n is at its network address + 1 + n (the server is at + 1).
VPN_NETWORK = ipaddress.ip_network("10.200.0.0/16")
#: How many agents the nodes' VPN holds: 10.200.0.0/16 (agents/vpn.py) less its network, server (.0.1) and broadcast
#: addresses. Agent number n is at 10.200.0.0 + 1 + n.
VPN_NUMBERS = 65533
#: The OpenVPN server renegotiates each tunnel's keys this often (agents/vpn.py: reneg-sec; OpenVPN's default is an
#: hour). OpenVPN checks the CRL only at a handshake: a revoked certificate's established tunnel lasts until the next.
VPN_RENEGOTIATION_S = 60
#: How long the server keeps using a tunnel's old key once a renegotiation began (agents/vpn.py: tran-window, default
#: an hour), also when the renegotiation fails: a revoked node's tunnel ends at most this long after the handshake its
#: certificate fails. As long as OpenVPN's hand-window (60 s): a node's handshake may take that long.
VPN_KEY_TRANSITION_S = 60
#: A number whose certificate was revoked is not given to another node for this long after the revocation: the removed
#: node's tunnel ends within VPN_RENEGOTIATION_S + VPN_KEY_TRANSITION_S of its CRL, and a minute more covers every
#: host's refresh of its CRL (a few seconds) and the hosts' clocks.
VPN_NUMBER_QUARANTINE_S = VPN_RENEGOTIATION_S + VPN_KEY_TRANSITION_S + 60


@dataclass(frozen=True)
class TokenRecord:
    """A join token as the operator sees it: never its secret."""

    id: str  # the token's public half (what `node invite-revoke` takes)
    pool: str
    expires: datetime
    used: bool
    hostname: str = ""  # the only host name it enrols (`node invite --hostname`); "" for any new host name
    revoked: bool = False


@dataclass(frozen=True)
class AgentRecord:
    node: str  # the node's component_id
    hostname: str
    pool: str
    certificate: str  # PEM chain we issued to the agent's key, leaf first
    local_address: str
    lan_group: str
    registered: datetime
    last_seen: datetime
    lost: bool
    number: int = 0  # the agent's VPN number: stable while the node exists (its VPN address comes from it)


@dataclass(frozen=True)
class Enrolment:
    """What an agent asks for when it registers (checked by the agents service before it gets here)."""

    token: str
    hostname: str
    node_urn: str
    key_sha256: str
    properties: dict[str, Any] = field(default_factory=dict)
    local_address: str = ""
    lan_group: str = ""


@dataclass(frozen=True)
class LeaseWork:
    """A lease on an agent's node: to set up (active) or to tear down (finished), and what the agent last said."""

    lease_id: str
    slice_urn: str
    start: datetime
    end: datetime
    disk_image: str
    reported: str  # "", started, failed, ended


@dataclass(frozen=True)
class StagingLease:
    """What decides whether a lease's files may be staged out from a node now: the lease's state and window, and
    whether the node's agent set it up (it reported started, failed or ended for it)."""

    state: str
    start: datetime
    end: datetime
    set_up: bool


@dataclass(frozen=True)
class NodeWork:
    active: tuple[LeaseWork, ...]
    finished: tuple[LeaseWork, ...]


# Issue a certificate for (node URN) to the enrolling key: returns (PEM chain, SHA-256 of the leaf's DER).
CertificateIssuer = Callable[[str], tuple[str, str]]
# Called inside the registration's unit of work once its rows are written, before the commit: what must happen
# outside the database with it (DNS, the testbed's own list of nodes). Raising rolls the registration back. The
# second argument takes the lock of additions to the testbed (see testbed_lock) in that unit of work.
OnWritten = Callable[[AgentRecord, Callable[[], None]], None]
#: PostgreSQL advisory lock of additions of agents' nodes to the testbed's own list (OAR resources): one at a time
#: across every process and host of the aggregate.
TESTBED_ADDITIONS_KEY = 0x5FA0_3F00_0ADD


# A heartbeat's time, kept when the database already has a later one.
_RECORD_HEARD = (
    update(Agent)
    .where(Agent.node_id == bindparam("node"), Agent.last_seen_s < bindparam("heard"))
    .values(last_seen_s=bindparam("heard"))
)


def vpn_number_of(address: str) -> int | None:
    """The VPN number whose node's address ``address`` is (VPN_NETWORK + 1 + number); None when it is none."""
    try:
        number = int(ipaddress.IPv4Address(address)) - int(VPN_NETWORK.network_address) - 1
    except ValueError:
        return None
    return number if 1 <= number <= VPN_NUMBERS else None


def _hold_testbed_lock(session: Session) -> None:
    """Take TESTBED_ADDITIONS_KEY for the rest of the session's transaction (PostgreSQL; on SQLite a writing unit
    of work holds the database's lock already)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(TESTBED_ADDITIONS_KEY)))


def _s(moment: datetime) -> int:
    return int(moment.timestamp())


def _t(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def check_agent_text(text: str, what: str) -> None:
    """Refuse (BAD_ARGS naming the character and its position) text an agent sent that holds a character XML 1.0
    cannot carry (NOT_IN_TEXT: control characters but tab and line ends, lone surrogates, U+FFFE, U+FFFF). Such text
    reaches Status answers (an experimenter's XML-RPC client then cannot read the answer at all), notifications and,
    for a NUL, PostgreSQL (which refuses it as a database failure, so the agent would retry for ever)."""
    found = NOT_IN_TEXT.search(text)
    if found is not None:
        raise GeniError(
            Reason.BAD_ARGS,
            f"{what} holds the character U+{ord(found.group()):04X} at position {found.start() + 1} "
            f"({text[:40]!r}), a control character that answers and notifications cannot carry; send it without "
            "(tabs and line ends are fine)",
        )


def parse_token(token: str) -> tuple[str, str]:
    """(id, secret) of a join token, or CALLER_UNTRUSTED saying it is not one."""
    match = _TOKEN.fullmatch(token.strip()) if isinstance(token, str) else None
    if match is None:
        raise GeniError(Reason.CALLER_UNTRUSTED, "this is not a join token (sfa-omf node invite prints one)")
    return match.group(1), match.group(2)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _agent_record(agent: Agent, node: Node) -> AgentRecord:
    return AgentRecord(
        node=node.component_id,
        hostname=agent.hostname,
        pool=node.pool.name,
        certificate=agent.certificate,
        local_address=agent.local_address,
        lan_group=agent.lan_group,
        registered=_t(agent.registered_s),
        last_seen=_t(agent.last_seen_s),
        lost=agent.lost,
        number=agent.vpn_number,
    )


class Agents:
    """Node agents in one calendar database."""

    def __init__(self, database: Database, policy: Policy | None = None, clock: Callable[[], datetime] = utcnow):
        self.database = database
        self.policy = policy or Policy()
        self.clock = clock
        # The sweep counts an agent's silence from the later of its last heartbeat and ``_counting_from_s``: the
        # moment the sweeper last found the database reachable after a time when heartbeats could not be recorded
        # (an outage, a new term). None: such a time is not known to be over; 0: none this process knows of.
        self._silence = threading.Lock()
        self._counting_from_s: int | None = 0
        self._unrecorded = 0  # times heartbeats_unrecorded() was called: a sweep racing one must not end it

    # -- tokens ------------------------------------------------------------------------------------------------
    def create_token(self, pool: str | None, lifetime_s: int, hostname: str = "") -> tuple[str, TokenRecord]:
        """A new one-time join token for a node of ``pool``, valid ``lifetime_s`` seconds. The token itself is
        returned once and only its hash is kept.

        Bound to ``hostname`` when one is given: it enrols that host name only, and is the only kind of token that
        re-binds an enrolled node to a new key (a reinstalled machine). Without one it enrols host names not enrolled
        yet: a token that leaked (a command line, a shell's history) cannot replace a running node's agent.
        ``pool`` None: the pool of the bound host name's node, else the default pool."""
        if lifetime_s <= 0:
            raise GeniError(Reason.BAD_ARGS, f"a token must live a positive number of seconds, not {lifetime_s}")
        bound = hostname.lower()
        if hostname and not HOSTNAME.fullmatch(bound):
            raise GeniError(
                Reason.BAD_ARGS,
                f"host name {hostname!r} must be one DNS label (letters, digits and '-', at most 63), as the node "
                "enrols with it",
            )
        now_s = _s(self.clock())
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self.database.write() as session:
            enrolled_pool = None
            if bound:
                enrolled_pool = session.scalar(
                    select(Pool.name)
                    .join(Node, Node.pool_id == Pool.id)
                    .join(Agent, Agent.node_id == Node.id)
                    .where(Agent.hostname == bound)
                )
            if pool is None:
                pool = enrolled_pool or DEFAULT_POOL
            elif enrolled_pool is not None and enrolled_pool != pool:
                # Registration would refuse it (a token re-binds a node of its own pool only): say so now.
                raise GeniError(
                    Reason.BAD_ARGS,
                    f"node {bound} is enrolled in pool {enrolled_pool!r}: a token of pool {pool!r} cannot re-bind it; "
                    f"leave --pool out (or give --pool {enrolled_pool})",
                )
            if pool != DEFAULT_POOL and session.scalar(select(Pool.id).where(Pool.name == pool)) is None:
                raise GeniError(Reason.NOT_FOUND, f"there is no pool {pool!r}: create it first (sfa-omf pool create)")
            # The default pool is made here, by the operator's command, not by the first registrations: several
            # registering at once would each try to create it, and all but one fail on its unique name.
            self._pool(session, pool)
            session.add(
                AgentToken(
                    id=token_id,
                    secret_sha256=_sha256(secret),
                    pool=pool,
                    created_s=now_s,
                    expires_s=now_s + lifetime_s,
                    bound_hostname=bound or None,
                )
            )
        record = TokenRecord(token_id, pool, _t(now_s + lifetime_s), used=False, hostname=bound)
        return f"{token_id}.{secret}", record

    def list_tokens(self) -> list[TokenRecord]:
        """The invitations that may still enrol a node: not used, not revoked, not expired (soonest expiry first).
        Their secrets are not kept: only what names them."""
        now_s = _s(self.clock())
        with self.database.read() as session:
            rows = session.execute(
                select(AgentToken.id, AgentToken.pool, AgentToken.expires_s, AgentToken.bound_hostname)
                .where(AgentToken.used_s.is_(None), AgentToken.revoked_s.is_(None), AgentToken.expires_s > now_s)
                .order_by(AgentToken.expires_s, AgentToken.id)
            ).all()
        return [TokenRecord(id_, pool, _t(expires_s), False, bound or "") for id_, pool, expires_s, bound in rows]

    def revoke_token(self, token: str) -> tuple[TokenRecord, bool]:
        """Revoke an unused join token at once, named by its id (the part before the dot; the whole token is taken
        too): it enrols nothing from now on. Returns the token and whether this revoked it (False: it was revoked
        already). NOT_FOUND for no such token; BAD_ARGS for one already used (its node is enrolled: `node remove`
        takes a node out)."""
        token_id = token.strip().partition(".")[0]
        if not re.fullmatch(r"[0-9a-f]{12}", token_id):
            raise GeniError(
                Reason.BAD_ARGS,
                f"{token_id[:40]!r} is not a join token's id (12 hex digits: sfa-omf node invites lists them)",
            )
        now_s = _s(self.clock())
        with self.database.write() as session:
            row = session.scalar(select(AgentToken).where(AgentToken.id == token_id).with_for_update())
            if row is None:
                raise GeniError(
                    Reason.NOT_FOUND, f"there is no join token {token_id} (sfa-omf node invites lists the unused ones)"
                )
            if row.used_s is not None:
                raise GeniError(
                    Reason.BAD_ARGS,
                    f"join token {token_id} was used at {format_time(_t(row.used_s))} by host {row.hostname}: it "
                    f"enrols nothing more; to take that node out: sfa-omf node remove {row.hostname}",
                )
            revoking = row.revoked_s is None
            if revoking:
                row.revoked_s = now_s
            record = TokenRecord(
                row.id, row.pool, _t(row.expires_s), used=False, hostname=row.bound_hostname or "", revoked=True
            )
        return record, revoking

    # -- enrolment ---------------------------------------------------------------------------------------------
    def register(
        self, enrolment: Enrolment, issue: CertificateIssuer, on_written: OnWritten | None = None
    ) -> tuple[AgentRecord, bool]:
        """Create the agent's node (or take the existing one over) bound to the enrolling key; returns the agent
        and whether anything changed. The same token with the same key and host name again gives the same answer
        (idempotent); an unknown, expired, revoked or already used token is refused and nothing is written, and so
        are a token bound to another host name (403), a token of one pool for an existing node of another (409) and
        a token bound to no host name for an existing node, unless the key is the node's own already (409: only a
        token made for the host name re-binds it to a new key). ``on_written``
        runs with the agent's record inside the unit of work, before the commit (a repeat too): if it raises,
        nothing is written."""
        token_id, secret = parse_token(enrolment.token)
        # What it writes into the node's row, checked as every node writer does (a newline in a name or URN made
        # every ListResources fail): whatever checked the enrolment before.
        check_node_fields(
            {
                "component_id": enrolment.node_urn,
                "component_name": enrolment.hostname,
                "properties": {
                    **enrolment.properties,
                    "local_address": enrolment.local_address,
                    "lan_group": enrolment.lan_group,
                },
            }
        )
        now_s = _s(self.clock())
        with self.database.read() as session:  # refuse a made-up token before spending a signature on it
            known = session.scalar(select(AgentToken.secret_sha256).where(AgentToken.id == token_id))
        if known is None or not hmac.compare_digest(known, _sha256(secret)):
            raise GeniError(Reason.CALLER_UNTRUSTED, "unknown join token: ask the operator for a new one")
        # Signing is done outside the unit of work; it is thrown away if the registration is a repeat.
        certificate, cert_sha256 = issue(enrolment.node_urn)
        with self.database.write() as session:
            token = session.scalar(select(AgentToken).where(AgentToken.id == token_id).with_for_update())
            if token is None or not hmac.compare_digest(token.secret_sha256, _sha256(secret)):
                raise GeniError(Reason.CALLER_UNTRUSTED, "unknown join token: ask the operator for a new one")
            if token.revoked_s is not None:
                raise GeniError(
                    Reason.CALLER_UNTRUSTED,
                    f"this join token was revoked by the operator at {format_time(_t(token.revoked_s))}: it enrols "
                    "nothing; ask the operator for a new one",
                )
            if token.used_s is not None:
                if token.key_sha256 == enrolment.key_sha256 and token.hostname == enrolment.hostname:
                    agent = session.scalar(select(Agent).where(Agent.hostname == enrolment.hostname))
                    if agent is not None and agent.key_sha256 == enrolment.key_sha256:
                        node = session.get(Node, agent.node_id)
                        assert node is not None
                        self._seen(agent, node, now_s)
                        record = _agent_record(agent, node)
                        if on_written is not None:
                            on_written(record, lambda: _hold_testbed_lock(session))
                        return record, False
                raise GeniError(
                    Reason.CALLER_UNTRUSTED, "this join token was used already: ask the operator for a new one"
                )
            if token.expires_s <= now_s:
                raise GeniError(
                    Reason.CALLER_UNTRUSTED,
                    f"this join token expired at {_t(token.expires_s):%Y-%m-%dT%H:%M:%SZ}: ask the operator for a "
                    "new one",
                )
            if token.bound_hostname is not None and token.bound_hostname != enrolment.hostname:
                raise GeniError(
                    Reason.CALLER_UNTRUSTED,
                    f"this join token was made for host name {token.bound_hostname!r} only, not "
                    f"{enrolment.hostname!r}: enrol with --hostname {token.bound_hostname}, or ask the operator for a "
                    f"token for this host (sfa-omf node invite --hostname {enrolment.hostname})",
                )
            node = session.scalar(select(Node).where(Node.component_id == enrolment.node_urn).with_for_update())
            existed = node is not None
            if node is None:
                node = Node(
                    component_id=enrolment.node_urn,
                    component_name=enrolment.hostname,
                    hardware_type=AGENT_HARDWARE_TYPE,
                    exclusive=True,
                    properties={},
                    disk_images=[],
                    grain_s=self.policy.default_grain_s,
                    state="usable",
                    pool=self._pool(session, token.pool),
                )
                session.add(node)
            properties = dict(node.properties or {})
            properties.update(enrolment.properties)
            properties["local_address"] = enrolment.local_address
            properties["lan_group"] = enrolment.lan_group
            node.properties = properties
            session.flush()
            agent = session.get(Agent, node.id)
            if agent is None and node.hardware_type != AGENT_HARDWARE_TYPE:
                # A node the operator added or imported (an OAR node of that name): an agent never takes it over.
                raise GeniError(
                    Reason.ALREADY_EXISTS,
                    f"node {enrolment.node_urn} is not an agent's node: enrol under another host name",
                )
            if node.pool.name != token.pool:
                # A token is the operator's word for a node of its own pool only: a token handed out for one pool
                # (a volunteers' pool, say) must never take over, nor re-key, a node of another.
                raise GeniError(
                    Reason.ALREADY_EXISTS,
                    f"node {enrolment.node_urn} is in pool {node.pool.name!r} and this join token is for pool "
                    f"{token.pool!r}: enrol under another host name, or ask the operator for a token of pool "
                    f"{node.pool.name!r}",
                )
            if existed and token.bound_hostname is None and (agent is None or agent.key_sha256 != enrolment.key_sha256):
                # Replacing the key that speaks for an existing node takes the operator's word for that node: a
                # token bound to its host name. One for any host name (handed around, pasted, maybe stolen) would
                # let its holder take over a running node, its leases' work and their staged files.
                raise GeniError(
                    Reason.ALREADY_EXISTS,
                    f"node {enrolment.hostname} is enrolled already and this join token was made for new host names "
                    "only: it does not replace a node's agent. If this machine is "
                    f"{enrolment.hostname} (reinstalled), ask the operator for a token made for it: sfa-omf node "
                    f"invite --hostname {enrolment.hostname}; otherwise enrol under another host name",
                )
            self._refuse_address_of_another(session, enrolment, node.id)
            if agent is None:
                other = session.scalar(select(Agent).where(Agent.hostname == enrolment.hostname))
                if other is not None:  # cannot happen while host name and node URN go together; say so if it does
                    raise GeniError(Reason.ALREADY_EXISTS, f"host name {enrolment.hostname} belongs to another node")
                agent = Agent(
                    node_id=node.id,
                    hostname=enrolment.hostname,
                    registered_s=now_s,
                    vpn_number=self._free_vpn_number(session, now_s),
                )
                session.add(agent)
            # A new token is the operator's word that this key now speaks for the node (a reinstalled host).
            agent.key_sha256 = enrolment.key_sha256
            agent.cert_sha256 = cert_sha256
            agent.certificate = certificate
            agent.local_address = enrolment.local_address
            agent.lan_group = enrolment.lan_group
            self._seen(agent, node, now_s)
            token.used_s = now_s
            token.key_sha256 = enrolment.key_sha256
            token.hostname = enrolment.hostname
            try:
                session.flush()
            except IntegrityError as exc:  # the unique VPN number (or host name): the last guard behind the lock
                raise GeniError(
                    Reason.BUSY,
                    f"node {enrolment.hostname}: another registration took the same VPN number or host name at the "
                    "same moment; try again",
                ) from exc
            record = _agent_record(agent, node)
            if on_written is not None:
                on_written(record, lambda: _hold_testbed_lock(session))
            return record, True

    @staticmethod
    def _free_vpn_number(session: Session, now_s: int) -> int:
        """The lowest VPN number no agent holds, that no node removed in the last VPN_NUMBER_QUARANTINE_S gave back and
        no certificate revoked in that time had (a removed node's tunnel may last that long), for a new agent's row;
        ALREADY_EXISTS (409: the agent does not retry) when every number is held, BUSY (503: it retries) saying when
        the next one is free when only the quarantine keeps them. Registrations take it one at a time until their
        commit (PostgreSQL: the testbed additions' lock; SQLite: the database's write lock), so two never get the
        same one."""
        _hold_testbed_lock(session)
        # The numbers in quarantine, with when it began: given back by a node's removal (written with it), or whose
        # certificate was revoked (a revocation without the removal, or recorded before migration 0030).
        since = now_s - VPN_NUMBER_QUARANTINE_S
        quarantine = union_all(
            select(VpnNumberRelease.number.label("number"), VpnNumberRelease.released_s.label("since_s")).where(
                VpnNumberRelease.released_s > since
            ),
            select(VpnRevoked.vpn_number.label("number"), VpnRevoked.revoked_s.label("since_s")).where(
                VpnRevoked.vpn_number.is_not(None), VpnRevoked.revoked_s > since
            ),
        ).subquery()
        # The lowest free number is 1 or follows a taken one.
        candidates = union_all(
            select(literal(1).label("number")),
            select((Agent.vpn_number + 1).label("number")),
            select((quarantine.c.number + 1).label("number")),
        ).subquery()
        candidate = candidates.c.number
        number = session.scalar(
            select(func.min(candidate)).where(
                candidate <= VPN_NUMBERS,
                ~exists().where(Agent.vpn_number == candidate),
                ~exists().where(quarantine.c.number == candidate),
            )
        )
        if number is not None:
            return int(number)
        # Refused: when does the first number in quarantine (and no agent's) come out of it?
        last_since = (
            select(func.max(quarantine.c.since_s).label("since_s"))
            .where(~exists().where(Agent.vpn_number == quarantine.c.number))
            .group_by(quarantine.c.number)
            .subquery()
        )
        first = session.scalar(select(func.min(last_since.c.since_s)))
        if first is not None:
            raise GeniError(
                Reason.BUSY,
                f"the nodes' VPN has no free address now: its {VPN_NUMBERS} numbers are held by enrolled agents' "
                f"nodes or were removed nodes' less than {VPN_NUMBER_QUARANTINE_S} s ago (their tunnels may last "
                f"until then); the next one is free at {format_time(_t(int(first) + VPN_NUMBER_QUARANTINE_S))}: "
                "this node enrols again then (its token was not spent)",
            )
        raise GeniError(
            Reason.ALREADY_EXISTS,
            f"the nodes' VPN has no free address: its {VPN_NUMBERS} numbers are all held by enrolled agents' "
            "nodes. The operator removes nodes that are gone (sfa-omf node agents; sfa-omf node remove "
            "HOSTNAME), then this node enrols again (its token was not spent)",
        )

    @staticmethod
    def _refuse_address_of_another(session: Session, enrolment: Enrolment, node_id: int) -> None:
        """ALREADY_EXISTS when another agent's node of the enrolment's LAN group holds its local address: DNS would
        give the other nodes of the group two nodes at one address, and OAR would be told it for both. (Nodes of
        different groups are on different LANs, where the same private address is two hosts.)"""
        if not enrolment.local_address or not enrolment.lan_group:
            return
        # Registrations are taken one at a time from here to their commit (PostgreSQL; a SQLite write holds the
        # database already): two nodes claiming one address at once cannot both find it free.
        _hold_testbed_lock(session)
        holder = session.scalar(
            select(Agent.hostname).where(
                Agent.lan_group == enrolment.lan_group,
                Agent.local_address == enrolment.local_address,
                Agent.node_id != node_id,
            )
        )
        if holder is not None:
            raise GeniError(
                Reason.ALREADY_EXISTS,
                f"local address {enrolment.local_address} is node {holder}'s in LAN group {enrolment.lan_group!r}: "
                f"give this node's own address on the LAN; if {holder} is gone or moved, the operator removes it "
                f"first (sfa-omf node remove {holder})",
            )

    @contextmanager
    def testbed_lock(self) -> Iterator[Callable[[], None]]:
        """For additions to the testbed's list of nodes outside a registration (the sweep, a lost node heard
        again): calling what it gives takes the lock registrations take before adding, held until the block ends.
        On SQLite there is nothing to take: one process serves it, and its registrations hold the database's write
        lock (the process's own threads are kept apart by the testbed's)."""
        if self.database.is_sqlite:
            yield lambda: None
            return
        with self.database.read() as session:
            yield lambda: _hold_testbed_lock(session)

    @staticmethod
    def _pool(session: Session, name: str) -> Pool:
        pool = session.scalar(select(Pool).where(Pool.name == name))
        if pool is None:
            if name != DEFAULT_POOL:
                raise GeniError(Reason.NOT_FOUND, f"the token's pool {name!r} no longer exists: ask for a new token")
            pool = Pool(name=DEFAULT_POOL, federated=True, description="")
            session.add(pool)
        return pool

    @staticmethod
    def _seen(agent: Agent, node: Node, now_s: int) -> None:
        agent.last_seen_s = now_s
        agent.lost = False
        if node.state == LOST:
            node.state = "usable"

    # -- who is calling ----------------------------------------------------------------------------------------
    def by_certificate(self, cert_sha256: str) -> AgentRecord | None:
        """The agent whose current certificate this is (a replaced or forged one is nobody's)."""
        with self.database.read() as session:
            row = session.execute(select(Agent, Node).join(Node).where(Agent.cert_sha256 == cert_sha256)).first()
            return None if row is None else _agent_record(row[0], row[1])

    # -- heartbeats --------------------------------------------------------------------------------------------
    def heartbeat(self, node_urn: str) -> AgentRecord:
        """The agent of ``node_urn`` was heard now: it is alive, and its node usable again if it was lost."""
        now_s = _s(self.clock())
        with self.database.write() as session:
            row = session.execute(
                select(Agent, Node).join(Node).where(Node.component_id == node_urn).with_for_update()
            ).first()
            if row is None:
                raise GeniError(Reason.NOT_FOUND, f"node {node_urn} has no agent any more: enrol again with a token")
            agent, node = row
            self._seen(agent, node, now_s)
            return _agent_record(agent, node)

    def record_heard(self, heard: dict[str, int]) -> None:
        """Many heartbeats in one unit of work: each node's agent was last heard at the given epoch second (kept
        when the database already has a later one). Whether a node is lost is not changed here: a lost agent's
        heartbeat goes through ``heartbeat`` at once.

        The calendar's generation is not bumped: the time an agent was last heard is in no cached answer (the
        advertisement shows whether a node is in service, which ``sweep_lost`` and ``heartbeat`` change, and bump;
        Status and ``agent list`` read the agent's row at each call). A bump here threw away every process's
        advertisement at each flush, every few seconds while agents report."""
        if not heard:
            return
        try:
            with self.database.write_connection() as connection:
                rows = connection.execute(
                    select(Agent.node_id, Node.component_id)
                    .join(Node)
                    .where(Node.component_id.in_(list(heard)))
                    .order_by(Node.id)
                    .with_for_update()  # in node order, as sweep_lost locks them: flushes and sweeps never deadlock
                ).all()
                if rows:
                    connection.execute(_RECORD_HEARD, [{"node": node_id, "heard": heard[urn]} for node_id, urn in rows])
        except Exception:  # these heartbeats are not in the database yet: the silence of their agents is ours
            self.heartbeats_unrecorded()
            raise

    def heartbeats_unrecorded(self) -> None:
        """Heartbeats may have gone unrecorded until now (the database failed; or this process just began to lead,
        and does not know since when the previous leader could not record them): no agent's silence counts until
        the next sweep that reaches the database, and from then on only (``sweep_lost``)."""
        with self._silence:
            self._counting_from_s = None
            self._unrecorded += 1

    def sweep_lost(self, timeout_s: int) -> list[str]:
        """Agents not heard for ``timeout_s`` are lost: their nodes leave service. Returns the nodes newly lost.

        Silence counts only while heartbeats could be recorded: from the later of an agent's last heartbeat and the
        moment this sweep last found the database reachable after a failure (its own, a flush's) or a new term
        (``heartbeats_unrecorded``). An outage of the database (the agents got 503, their heartbeats unrecorded)
        loses no node and fails no lease: after it, a node is lost only once it stayed silent for ``timeout_s`` with
        the database reachable. A sweep that fails counts as such a failure."""
        with self._silence:
            counting_from_s, unrecorded = self._counting_from_s, self._unrecorded
        try:
            if counting_from_s is None:
                return self._resume_counting(unrecorded)
            return self._sweep_lost(_s(self.clock()) - timeout_s, counting_from_s)
        except Exception:
            self.heartbeats_unrecorded()
            raise

    def _resume_counting(self, unrecorded: int) -> list[str]:
        """The first sweep after heartbeats could not be recorded: once the database answers, silence counts from
        now (unless another failure came meanwhile); nobody is lost yet."""
        with self.database.read() as session:
            session.execute(select(literal(1)))
        reached_s = _s(self.clock())  # after the answer: a database that took long to answer was not reachable
        with self._silence:
            if self._unrecorded == unrecorded:
                self._counting_from_s = reached_s
        return []

    def _sweep_lost(self, deadline: int, counting_from_s: int) -> list[str]:
        if counting_from_s >= deadline:  # nobody silent that long with the database reachable (it is asked all the
            deadline = 0  # same: a sweep that cannot reach it is a failure, and the count starts again after it)
        with self.database.write() as session:
            rows = session.execute(
                select(Agent, Node)
                .join(Node)
                .where(Agent.lost.is_(False), Agent.last_seen_s < deadline)
                .order_by(Node.id)
                .with_for_update()
            ).all()
            for agent, node in rows:
                agent.lost = True
                if node.state == "usable":
                    node.state = LOST
                add_event(session, _node_down(node.component_id, agent.last_seen_s, self.clock()))
                self._tell_running_leases(session, node, agent.last_seen_s)
            return [node.component_id for _, node in rows]

    def _tell_running_leases(self, session: Session, node: Node, last_seen_s: int) -> None:
        """The provisioned leases running on a node that was just lost have failed: their users are told, in the
        unit of work that marks the node lost."""
        now = self.clock()
        running = session.scalars(
            select(Lease.id)
            .join(Sliver, Sliver.lease_id == Lease.id)
            .where(
                Sliver.node_id == node.id,
                Lease.state == "provisioned",
                Lease.start_s <= _s(now),
                Lease.end_s > _s(now),
            )
        ).all()
        last_seen = format_time(datetime.fromtimestamp(last_seen_s, UTC))
        for lease_id in running:
            reason = f"node {node.component_id} lost contact: its agent was last heard at {last_seen}"
            add_lease_event(
                session, lease_id, LeaseNews("failed", f"{lease_id}:failed:lost:{node.id}:{last_seen_s}", reason), now
            )

    # -- work --------------------------------------------------------------------------------------------------
    def work(self, node_urn: str) -> NodeWork:
        """The provisioned leases running on the node now (active), and those the agent set up that are over or
        gone (finished: remove their accounts). Column queries only."""
        now_s = _s(self.clock())
        with self.database.read() as session:
            node_id = session.scalar(select(Node.id).where(Node.component_id == node_urn))
            if node_id is None:
                raise GeniError(Reason.NOT_FOUND, f"there is no node {node_urn}")
            reports = dict(
                session.execute(
                    select(AgentReport.lease_id, AgentReport.state).where(AgentReport.node_id == node_id)
                ).all()
            )
            rows = session.execute(
                select(Lease.id, Slice.urn, Lease.start_s, Lease.end_s, Lease.state, Sliver.disk_image)
                .join(Sliver, Sliver.lease_id == Lease.id)
                .join(Slice, Slice.id == Lease.slice_id)
                .where(Sliver.node_id == node_id)
                # Leases the agent set up and has not reported ended: their teardown may be due.
                .where(
                    (Lease.state == "provisioned")
                    | Lease.id.in_([lease for lease, said in reports.items() if said in ("started", "failed")])
                )
            ).all()
        active: list[LeaseWork] = []
        finished: list[LeaseWork] = []
        for lease_id, slice_urn, start_s, end_s, state, image in rows:
            item = LeaseWork(lease_id, slice_urn, _t(start_s), _t(end_s), image, reports.get(lease_id, ""))
            if state == "provisioned" and start_s <= now_s < end_s:
                active.append(item)
            elif item.reported in ("started", "failed"):
                finished.append(item)
        return NodeWork(
            tuple(sorted(active, key=lambda w: w.lease_id)), tuple(sorted(finished, key=lambda w: w.lease_id))
        )

    def node_number(self, node_urn: str) -> int:
        """The VPN number of the node's agent: stable while the node exists (the VPN's fixed address of the node)."""
        with self.database.read() as session:
            number = session.scalar(select(Agent.vpn_number).join(Node).where(Node.component_id == node_urn))
            if number is None:
                raise GeniError(Reason.NOT_FOUND, f"node {node_urn} has no agent (any more)")
            return int(number)

    def lease_on_node(self, node_urn: str, lease_id: str) -> bool:
        """True when the lease has a sliver on the node (whatever the lease's state)."""
        with self.database.read() as session:
            found = session.scalar(
                select(Sliver.id)
                .join(Node, Node.id == Sliver.node_id)
                .where(Sliver.lease_id == lease_id, Node.component_id == node_urn)
                .limit(1)
            )
            return found is not None

    def staging_lease(self, node_urn: str, lease_id: str) -> StagingLease | None:
        """The lease's state and window and whether the node's agent reported on it, when it has a sliver on the
        node (None otherwise). One query."""
        reported = (
            select(AgentReport.lease_id)
            .where(AgentReport.lease_id == Lease.id, AgentReport.node_id == Node.id)
            .where(AgentReport.state.in_(REPORT_STATES))
            .exists()
        )
        with self.database.read() as session:
            row = session.execute(
                select(Lease.state, Lease.start_s, Lease.end_s, reported)
                .select_from(Sliver)
                .join(Node, Node.id == Sliver.node_id)
                .join(Lease, Lease.id == Sliver.lease_id)
                .where(Sliver.lease_id == lease_id, Node.component_id == node_urn)
                .limit(1)
            ).first()
        if row is None:
            return None
        state, start_s, end_s, set_up = row
        return StagingLease(state, _t(start_s), _t(end_s), bool(set_up))

    def report(self, node_urn: str, lease_id: str, state: str, message: str) -> None:
        """Record what the agent says about a lease on its node (the same report again changes nothing)."""
        if state not in REPORT_STATES:
            raise GeniError(Reason.BAD_ARGS, f"state {state!r} is not one of {', '.join(REPORT_STATES)}")
        check_agent_text(message, "the report's message")  # it goes into Status and the users' notification
        now_s = _s(self.clock())
        with self.database.write() as session:
            node_id = session.scalar(select(Node.id).where(Node.component_id == node_urn))
            on_node = session.scalar(
                select(Sliver.id).where(Sliver.lease_id == lease_id, Sliver.node_id == node_id).limit(1)
            )
            if node_id is None or on_node is None:
                raise GeniError(Reason.NOT_FOUND, f"lease {lease_id} has no sliver on {node_urn}")
            row = session.get(AgentReport, (lease_id, node_id), with_for_update=True)
            if state == "failed" and (row is None or row.state != "failed"):  # its users hear it once per node
                reason = f"the agent of node {node_urn} could not set the lease up: {message}"
                news = LeaseNews("failed", f"{lease_id}:failed:agent:{node_id}", reason)
                add_lease_event(session, lease_id, news, self.clock())
            if row is None:
                session.add(
                    AgentReport(lease_id=lease_id, node_id=node_id, state=state, message=message, updated_s=now_s)
                )
            elif (row.state, row.message) != (state, message):
                row.state, row.message, row.updated_s = state, message, now_s

    def node_health(self, node_urn: str, lease_id: str) -> tuple[bool, str, str] | None:
        """(lost, reported state, message) for a lease on an agent's node; None when the node has no agent."""
        with self.database.read() as session:
            row = session.execute(select(Agent.lost, Node.id).join(Node).where(Node.component_id == node_urn)).first()
            if row is None:
                return None
            lost, node_id = row
            report = session.execute(
                select(AgentReport.state, AgentReport.message).where(
                    AgentReport.lease_id == lease_id, AgentReport.node_id == node_id
                )
            ).first()
            return (bool(lost), report[0], report[1]) if report else (bool(lost), "", "")

    def names(self) -> list[tuple[str, int, str, str]]:
        """(hostname, VPN number, local address, LAN group) of every agent: what DNS publishes (NodeName). One
        column query."""
        with self.database.read() as session:
            rows = session.execute(
                select(Agent.hostname, Agent.vpn_number, Agent.local_address, Agent.lan_group).order_by(Agent.hostname)
            )
            return [(hostname, int(number), address, group) for hostname, number, address, group in rows]

    def presence(self) -> list[tuple[str, int, str, bool]]:
        """(hostname, VPN number, local address, lost) of every agent: what the testbed's own list of nodes follows
        (AgentNode). One column query."""
        with self.database.read() as session:
            rows = session.execute(
                select(Agent.hostname, Agent.vpn_number, Agent.local_address, Agent.lost).order_by(Agent.hostname)
            )
            return [(hostname, int(number), address, bool(lost)) for hostname, number, address, lost in rows]

    def list_agents(self) -> list[AgentRecord]:
        with self.database.read() as session:
            rows = session.execute(select(Agent, Node).join(Node).order_by(Agent.hostname)).all()
            return [_agent_record(agent, node) for agent, node in rows]


def _node_down(node_urn: str, last_seen_s: int, now: datetime) -> RecordedEvent:
    """The operators' "node down" event (notify/alerts.py): one per loss, keyed by when the agent was last heard."""
    last_seen = format_time(datetime.fromtimestamp(last_seen_s, UTC))
    return RecordedEvent(
        key=f"node_down:{node_urn}:{last_seen_s}",
        event="node_down",
        slice_urn=None,
        payload={
            "event": "node_down",
            "summary": f"node {node_urn} is down: its agent was last heard at {last_seen}",
            "node": node_urn,
            "last_seen": last_seen,
        },
        created=now,
    )
