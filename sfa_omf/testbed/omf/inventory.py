"""The omf_sfa-compatible inventory, as plain data: what ``GET /resources/nodes|leases|accounts`` answer, and the
lease writes of operator tools (POST/PUT/DELETE ``/resources/leases``). No HTTP here (rest.py serves it).

An OMF 6 testbed's resource controllers (cm_factory, frisbee_factory) ask ``GET /resources/nodes?name=X`` on every
request and accept it only when the signer's account (the emailAddress of its certificate) holds a lease on X whose
``valid_from <= now <= valid_until`` and whose status is ``active``. So each node carries its leases, and a lease's
status follows the calendar and the time:

    calendar state            status
    allocated                 pending     (booked, not provisioned: the controllers must refuse)
    provisioned, before slot  accepted
    provisioned, in slot      active
    provisioned, after / ended past
    cancelled, expired        cancelled

A lease's *account* is the local login the calendar maps its booker to (registry/accounts.py: per user, per slice
or shared); its URN is the slice's. A lease whose booker (or slice) the registry removed shows the login it ran
under, which the removal retired (registry/accounts.py ``LeaseLogins``), and ``removed: true``; its name is null
when that login is not on record. Writes go through the same calendar (Bookings): no double booking, and a
conflict is refused with the calendar's reason. Writes need authority rights (``check_operator``).

Who reads what (``check_reader``), the web calendar's privacy rule: operators (who may write leases, and the web
calendar's ``[sfa_web] admins``) and the testbed's controllers (``[sfa_frcp] controllers``) see everything; any other
certificate issued under this testbed's authority (its users, the testbed accounts' certificates) sees the federated
pools' nodes, every lease's window and status, and the account and name of its own slices' leases only; certificates
of other authorities, even trusted ones, read nothing. A user certificate of this authority counts as that user only
with the key the registry holds for the user now (am/caller_keys.py, as for the AM API and the web calendar): the
certificate of a user the registry removed, or of an earlier holder of a name registered again, is refused (403),
admins included, for it would read the next holder's accounts and leases; another certificate naming a user the
registry never removed (a testbed account's, minted for a login of the same name, or a replaced key) reads as no
user: the federated nodes and the windows, no account.

History is bounded: a node (and ``/resources/accounts``) carries the leases that have not ended and those whose
window ended (or, cancelled, would have ended) within ``RECENT_LEASES_S``, read so in SQL, so that the controllers'
question on every request costs what the recent bookings do, not a year of slots. ``/resources/leases`` answers the
same unless asked for history: ``status=past`` or ``status=cancelled``, ``uuid`` or ``account_urn`` list every
matching lease.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from sfa_omf.am.caller_keys import RegisteredKeys
from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.lease_view import LeaseRow, NodeRow, lease_rows, node_rows
from sfa_omf.calendar.models import Lease, Slice, SliceUser
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.calendar.records import BookingRequest, LeaseRecord
from sfa_omf.calendar.timeline import Timeline
from sfa_omf.errors import BadArgs, GeniError, Reason, TrustError
from sfa_omf.registry.accounts import (
    LeaseLogins,
    check_login,
    lease_logins,
    mapped_login,
    retired_logins,
    system_login_reason,
)
from sfa_omf.registry.records import Records, record_chain
from sfa_omf.registry.removed_marks import is_removed_mark
from sfa_omf.testbed.base import TestbedBackend
from sfa_omf.times import format_time, parse_time, utcnow
from sfa_omf.trust.gid import Gid, GidChain
from sfa_omf.trust.verifier import CredentialVerifier
from sfa_omf.xrn import hrn_to_urn, is_authority_for, is_urn, parse_urn, split_hrn

LEASE_STATUSES = ("pending", "accepted", "active", "past", "cancelled")
COLLECTIONS = ("nodes", "leases", "accounts")
#: The query parameters each collection answers (omf_sfa's names).
PARAMETERS: dict[str, tuple[str, ...]] = {
    "nodes": ("name", "uuid"),
    "leases": ("name", "uuid", "status", "account_urn"),
    "accounts": ("name", "uuid", "urn"),
}
#: Lease fields an operator tool may send (anything else is refused, so a typo is not silently ignored).
LEASE_FIELDS = ("uuid", "name", "valid_from", "valid_until", "account_attributes", "account", "components", "urn")
#: The longest lease name (the calendar's client_id column) and slice URN (the slice and account tables' column).
MAX_LEASE_NAME_CHARS = 200
MAX_SLICE_URN_CHARS = 300
#: How long after the end of its window a lease stays in the node and account listings (and in the lease listing
#: when it is not asked for history): a day of slots, whatever the node's history holds.
RECENT_LEASES_S = 24 * 3600
#: The lease statuses that ask the lease listing for history: with one of them, every matching lease is listed.
HISTORY_STATUSES = ("past", "cancelled")


def check_text(text: str, where: str) -> str:
    """``text`` if it holds no control character (NUL, newline, escape...) nor lone surrogate, else BadArgs: no name
    the inventory stores or looks up has one, and PostgreSQL cannot even compare a NUL."""
    for character in text:
        if unicodedata.category(character) in ("Cc", "Cs"):
            raise BadArgs(f"{where} holds the control character {character!r}; names and times are printable text")
    return text


def check_texts(value: Any, where: str) -> None:
    """Every string in a decoded JSON value (keys too) passes ``check_text``; walked without recursion, so a deep
    value costs no stack."""
    pending: list[tuple[Any, str]] = [(value, where)]
    while pending:
        item, place = pending.pop()
        if isinstance(item, str):
            check_text(item, place)
        elif isinstance(item, dict):
            for key, inner in item.items():
                check_text(str(key), f"{place}: a key")
                pending.append((inner, f"{place}.{key}"))
        elif isinstance(item, list):
            pending.extend((inner, f"{place}[{index}]") for index, inner in enumerate(item))


def lease_status(state: str, start: datetime, end: datetime, now: datetime) -> str:
    """omf_sfa's status of a lease in calendar ``state`` with window [start, end) at ``now`` (table above)."""
    if state == "allocated":
        return "pending"
    if state == "provisioned":
        if now < start:
            return "accepted"
        return "active" if now < end else "past"
    if state == "ended":
        return "past"
    return "cancelled"


def recent_after_s(now: datetime) -> int:
    """The bound of the listings without history: leases whose window ends after this (epoch seconds)."""
    return to_s(now) - RECENT_LEASES_S


def node_uuid(node: NodeRow) -> str:
    """The node's uuid: the one the operator recorded (property ``uuid``), else derived from its URN (stable)."""
    return uuid_of(node.component_id, str(node.properties.get("uuid") or ""))


def uuid_of(component_id: str, recorded: str) -> str:
    return recorded or str(uuid.uuid5(uuid.NAMESPACE_URL, component_id))


def account_uuid(slice_urn: str, login: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{slice_urn}#account={login}"))


@dataclass(frozen=True)
class AccountView:
    """A lease's account: ``name`` the login (None: its holder was removed and the login is not on record),
    ``removed`` whether the registry removed the lease's booker (per user) or slice (per slice)."""

    name: str | None
    urn: str
    uuid: str
    removed: bool = False

    def json(self) -> dict[str, Any]:
        """As omf_sfa shows a lease's account; a removed holder's says so (``removed``: true)."""
        shown: dict[str, Any] = {"uuid": self.uuid, "name": self.name, "urn": self.urn}
        if self.removed:
            shown["removed"] = True
        return shown


@dataclass(frozen=True)
class Reader:
    """Who reads the inventory: ``everything`` (operators, controllers), or a user of this testbed's authority who
    sees the federated nodes, and the account and name of the leases of ``slices`` (theirs) only."""

    urn: str
    everything: bool = False
    slices: frozenset[str] = frozenset()

    def sees(self, slice_urn: str) -> bool:
        """May this reader see the account (login, slice URN) and name of this slice's leases?"""
        return self.everything or slice_urn in self.slices


#: What the aggregate's own tools (node import) read: everything.
EVERYTHING = Reader("", everything=True)


class OmfInventory:
    """Answers the omf_sfa REST inventory from the calendar. ``clock`` decides "now" (tests); ``registered_keys``
    (the aggregate's, so one cache with the AM API and the web calendar) is the registry's word on its users' keys,
    None: the URN alone (a calendar without registry)."""

    def __init__(
        self,
        database: Database,
        bookings: Bookings,
        verifier: CredentialVerifier,
        backend: TestbedBackend,
        authority_hrn: str,
        base_url: str,
        account_policy: str = "per-user",
        shared_login: str = "federation",
        clock: Callable[[], datetime] = utcnow,
        controllers: Collection[str] = (),
        admins: Collection[str] = (),
        frcp_account: str = "root",
        registered_keys: RegisteredKeys | None = None,
    ) -> None:
        self.database = database
        self.bookings = bookings
        self.verifier = verifier
        self.backend = backend
        self.authority_hrn = authority_hrn
        self.base_url = base_url.rstrip("/")
        self.account_policy = account_policy
        self.shared_login = shared_login
        self.clock = clock
        self.controllers = frozenset(controllers)  # [sfa_frcp] controllers: certificate URNs (or subject CNs)
        self.admins = frozenset(admins)  # [sfa_web] admins: user URNs
        self.frcp_account = frcp_account  # [sfa_frcp] account: never a lease's account
        self.registered_keys = registered_keys
        self.records = Records(database)
        self.timeline = Timeline(database)

    # -- who may ----------------------------------------------------------------------------------------------
    def check_reader(self, caller_chain: GidChain) -> Reader:
        """Who may read, and how much (the module's docstring): TrustError for a chain that is not trusted or not
        issued under this testbed's authority (a peer authority's users read nothing here)."""
        leaf = self.verifier.verify_caller(caller_chain, self.clock())
        identity = leaf.urn or leaf.subject_cn  # as [sfa_frcp] controllers names a certificate (frcp.py too)
        # Operators are an authority's certificate or a PI with the registered key (checked there); controllers
        # are certificates the operator named in the configuration.
        if self._is_operator(leaf) or identity in self.controllers:
            return Reader(identity, everything=True)
        # Before the admins' URNs and the slices of the URN: a URN is that user only with the key registered now.
        if self._not_the_registered_user(leaf):
            return Reader(identity)
        if (leaf.urn or "") in self.admins:
            return Reader(identity, everything=True)
        if not _under(self.authority_hrn, leaf.hrn):
            raise TrustError(
                Reason.INSUFFICIENT_PRIVILEGES,
                f"{leaf.hrn} is not under this testbed's authority {self.authority_hrn}: the inventory is read by the "
                f"testbed's own controllers, tools and users (a controller whose certificate comes from elsewhere is "
                f"named in [sfa_frcp] controllers)",
            )
        slices = frozenset(self.timeline.slices_of_user(leaf.urn)) if leaf.urn else frozenset()
        return Reader(identity, slices=slices)

    def _not_the_registered_user(self, leaf: Gid) -> bool:
        """True when ``leaf`` names a user of this authority with a key the registry does not hold for them, though
        the registry never removed that user (a testbed account's certificate for a login of the same name, a
        replaced key): it reads as no user. TrustError (FORBIDDEN) for the certificate of a user the registry removed,
        or of an earlier holder of a name registered again, whose URN may be someone else's now. False: the user's
        registered key, not a local user, or no registry to ask."""
        keys = self.registered_keys
        refused = keys.refusal(leaf.urn or "", leaf.key_id) if keys is not None else None
        if refused is None:
            return False
        # A removal retires the user's login under the URN as the registry writes it (registry/accounts.py).
        if not retired_logins(self.database, hrn_to_urn(parse_urn(refused.urn).hrn, "user")):
            return True  # never removed: no earlier holder whose key this could be
        why = "is no longer registered here" if refused.removed else "is registered here with another certificate now"
        raise TrustError(
            Reason.CALLER_UNTRUSTED,
            f"the user your certificate names ({refused.urn}) {why}; use the certificate your authority gives you "
            "now (this one reads nothing here)",
        )

    def check_operator(self, caller_chain: GidChain) -> str:
        """Writing leases needs authority rights over this testbed; the caller's URN, or TrustError.

        Accepted: a trusted chain whose leaf is an authority over this testbed (its own authority or a parent:
        whoever holds that key runs the testbed), or a user who is a PI of this testbed's authority in the local
        registry (the aggregate's own operators: ``sfa-omf`` registry commands set them) presenting the key the
        registry holds for them (a testbed account's certificate for a login of the same name is not that user).
        """
        leaf = self.verifier.verify_caller(caller_chain, self.clock())
        if self._is_operator(leaf):
            return leaf.urn or leaf.hrn
        raise TrustError(
            Reason.INSUFFICIENT_PRIVILEGES,
            f"{leaf.hrn} may not change leases: that needs the certificate of the authority {self.authority_hrn} "
            f"(or a parent), or a user who is a PI of {self.authority_hrn} in the registry (sfa-omf user ... --pi) "
            "with the key registered for them",
        )

    def _is_operator(self, leaf: Gid) -> bool:
        """An authority over this testbed, or a PI of its authority whose key is the one the registry holds."""
        if leaf.is_authority and _under(leaf.hrn, self.authority_hrn):
            return True
        if leaf.type != "user":
            return False
        authority = self.records.get(self.authority_hrn)
        if authority is None or leaf.hrn not in authority.pis:
            return False
        registered = self.records.get(leaf.hrn)
        if registered is None or registered.type != "user" or not registered.gid:
            return False
        return record_chain(registered)[0].key_id == leaf.key_id

    # -- reading ----------------------------------------------------------------------------------------------
    def get(self, collection: str, query: Mapping[str, Sequence[str]], reader: Reader = EVERYTHING) -> dict[str, Any]:
        """The answer to ``GET /resources/<collection>?<query>`` in omf_sfa's envelope, as ``reader`` may see it:
        ``resource`` when the query names one (by uuid, or a name only one resource has), else ``resources``."""
        if collection not in COLLECTIONS:
            raise GeniError(
                Reason.NOT_FOUND, f"/resources/{collection} is not served here; served: {', '.join(COLLECTIONS)}"
            )
        params = _single_values(query, PARAMETERS[collection])
        now = self.clock()
        if collection == "nodes":
            found = self._nodes(params.get("name"), params.get("uuid"), now, reader)
        elif collection == "leases":
            found = self._leases(params, now, reader)
        else:
            found = self._accounts(params, now, reader)
        about = f"/resources/{collection}"
        if "uuid" in params or "name" in params:
            if not found:
                wanted = ", ".join(f"{key}={value!r}" for key, value in params.items())
                raise GeniError(Reason.NOT_FOUND, f"no {collection[:-1]} with {wanted}")
            if len(found) == 1:
                return {"resource_response": {"resource": found[0], "about": about}}
        return {"resource_response": {"resources": found, "about": about}}

    def _shown_nodes(self, reader: Reader) -> set[str] | None:
        """The component ids of the nodes ``reader`` may see (the federated pools', as advertised), None: all."""
        if reader.everything:
            return None
        return {node.component_id for node in self.timeline.nodes() if node.federated}

    def _nodes(self, name: str | None, wanted_uuid: str | None, now: datetime, reader: Reader) -> list[dict[str, Any]]:
        shown = self._shown_nodes(reader)
        nodes = [
            node
            for node in node_rows(self.database, name)
            if wanted_uuid in (None, node_uuid(node)) and (shown is None or node.component_id in shown)
        ]
        if not nodes:
            return []
        by_node: dict[str, list[dict[str, Any]]] = {node.component_id: [] for node in nodes}
        rows = lease_rows(self.database, nodes=list(by_node), ending_after_s=recent_after_s(now))
        logins = self._lease_logins(rows)
        for lease in rows:
            brief = self._lease_json(lease, now, logins, components=False, reader=reader)
            for component_id, _, _ in lease.nodes:
                if component_id in by_node:
                    by_node[component_id].append(brief)
        return [self._node_json(node, by_node[node.component_id]) for node in nodes]

    def _leases(self, params: Mapping[str, str], now: datetime, reader: Reader) -> list[dict[str, Any]]:
        status = params.get("status")
        if status is not None and status not in LEASE_STATUSES:
            raise BadArgs(f"status={status!r} is not a lease status; one of {', '.join(LEASE_STATUSES)}")
        account_urn = params.get("account_urn")
        # History (every matching lease) when asked for: past or cancelled ones, one lease, one slice's leases.
        history = status in HISTORY_STATUSES or "uuid" in params or account_urn is not None
        rows = lease_rows(
            self.database,
            slice_urn=account_urn,
            lease_id=params.get("uuid"),
            ending_after_s=None if history else recent_after_s(now),
        )
        if account_urn is not None:
            rows = [row for row in rows if reader.sees(row.slice_urn)]  # whose leases they are is not for all
        logins = self._lease_logins(rows)
        shown = self._shown_nodes(reader)
        found = []
        for row in rows:
            if shown is not None and not reader.sees(row.slice_urn):
                # Another slice's lease shows its federated nodes only; one on private nodes alone, not at all.
                row = replace(row, nodes=tuple(node for node in row.nodes if node[0] in shown))
                if not row.nodes:
                    continue
            found.append(self._lease_json(row, now, logins, components=True, reader=reader))
        return [
            lease
            for lease in found
            if status in (None, lease["status"]) and params.get("name") in (None, lease["name"])
        ]

    def _accounts(self, params: Mapping[str, str], now: datetime, reader: Reader) -> list[dict[str, Any]]:
        """The accounts of the leases not ended or ended recently (RECENT_LEASES_S)."""
        recent = lease_rows(self.database, ending_after_s=recent_after_s(now))
        rows = [row for row in recent if reader.sees(row.slice_urn)]
        logins = self._lease_logins(rows)
        accounts: dict[str, dict[str, Any]] = {}
        for row in rows:
            account = self._account(row, logins)
            entry = accounts.setdefault(
                account.uuid,
                {
                    "uuid": account.uuid,
                    "href": f"{self.base_url}/resources/accounts/{account.uuid}",
                    "name": account.name,
                    "urn": account.urn,
                    "type": "account",
                    "valid_until": format_time(row.slice_expires),
                    **({"removed": True} if account.removed else {}),
                },
            )
            entry["valid_until"] = max(entry["valid_until"], format_time(row.slice_expires))
        return [
            entry
            for entry in accounts.values()
            if all(params.get(key) in (None, entry[key]) for key in ("name", "uuid", "urn"))
        ]

    def _account_key(self, row: LeaseRow) -> str:
        """Whose login a lease's account is: per user the booker's; per slice (and operator leases, booked by the
        slice itself) the slice's."""
        return row.slice_urn if self.account_policy == "per-slice" else row.owner_urn or row.slice_urn

    def _lease_logins(self, rows: Sequence[LeaseRow]) -> LeaseLogins:
        """The logins of the accounts of ``rows``, read for their keys only (none under the shared policy)."""
        keys = () if self.account_policy == "shared" else {self._account_key(row) for row in rows}
        return lease_logins(self.database, keys)

    def _account(self, row: LeaseRow, logins: LeaseLogins) -> AccountView:
        if self.account_policy == "shared":
            return AccountView(self.shared_login, row.slice_urn, account_uuid(row.slice_urn, self.shared_login))
        # Not mapped yet (allocated, never provisioned): the login the mapping rule will give. A booker or slice the
        # registry removed ("URN (removed TIME)"): the login the lease ran under, which the removal retired, never
        # one derived from the marked text (a login that never existed) nor the next holder of the name's.
        key = self._account_key(row)
        login = logins.login_of(key)
        return AccountView(login, row.slice_urn, account_uuid(row.slice_urn, login or ""), is_removed_mark(key))

    def _node_json(self, node: NodeRow, leases: list[dict[str, Any]]) -> dict[str, Any]:
        identifier = node_uuid(node)
        properties = node.properties
        return {
            "uuid": identifier,
            "href": f"{self.base_url}/resources/nodes/{identifier}",
            "name": node.component_name,
            "urn": node.component_id,
            "type": "node",
            "hardware_type": node.hardware_type,
            "hostname": str(properties.get("hostname") or node.component_name),
            "exclusive": node.exclusive,
            "available": node.state == "usable",
            "status": node.state,
            "interfaces": list(properties.get("interfaces") or []),
            "cmc": properties.get("cmc") or None,
            "leases": leases,
        }

    def _lease_json(
        self,
        row: LeaseRow,
        now: datetime,
        logins: LeaseLogins,
        components: bool,
        reader: Reader = EVERYTHING,
    ) -> dict[str, Any]:
        """omf_sfa's lease; for a reader who may not see its slice, as the web calendar's public view: its window
        and status, its uuid as its name, and no account (null)."""
        seen = reader.sees(row.slice_urn)
        account = self._account(row, logins)
        lease: dict[str, Any] = {
            "uuid": row.id,
            "href": f"{self.base_url}/resources/leases/{row.id}",
            "name": (row.client_id or row.id) if seen else row.id,
            "urn": hrn_to_urn(f"{self.authority_hrn}.{row.id}", "lease"),
            "type": "lease",
            "valid_from": format_time(row.start),
            "valid_until": format_time(row.end),
            "status": lease_status(row.state, row.start, row.end, now),
            "account": account.json() if seen else None,
        }
        if components:
            lease["components"] = [
                {"uuid": uuid_of(component_id, recorded), "name": name, "urn": component_id}
                for component_id, name, recorded in row.nodes
            ]
        return lease

    # -- writing (operators) ----------------------------------------------------------------------------------
    def create_lease(self, caller_chain: GidChain, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /resources/leases`` {name, valid_from, valid_until, account_attributes: {name}, components:
        [{uuid} | {name} | {urn}]}: book the nodes for the account's slice through the calendar, provisioned at
        once (an operator's lease is accepted, as omf_sfa's), or refuse and write nothing."""
        self.check_operator(caller_chain)
        return self._one_lease(self.book_lease(body).id)

    def book_lease(self, body: Mapping[str, Any]) -> LeaseRecord:
        """Book and provision an omf_sfa lease body (create_lease's work, without the caller check: ``node
        import --from-omf`` runs as the operator), or refuse and write nothing."""
        check_texts(body, "the lease")
        _known_fields(body)
        start, end = _window(body)
        account_name, slice_urn = self._account_of(body)
        nodes = self._components(body.get("components"))
        label = _text(body, "name")
        if len(label) > MAX_LEASE_NAME_CHARS:
            raise BadArgs(f"the lease name is {len(label)} characters long; at most {MAX_LEASE_NAME_CHARS}")
        requests = [BookingRequest(node=node, start=start, end=end, lease_label=label) for node in nodes]
        expires = self._slice_expiry(slice_urn, end)
        # Booked by the slice itself, so that the lease's account is the one named (per user or per slice alike).
        result = self.bookings.book(slice_urn, expires, requests, owner_urn=slice_urn)
        booked = [lease.id for lease in result.leases]
        try:
            provisioned = [self.bookings.mark_provisioned(lease_id) for lease_id in booked]
            for lease in provisioned:
                self.backend.provision(lease, account_name, ())
            self._map_account(slice_urn, account_name)
        except Exception:
            self.bookings.discard(booked)  # the call fails whole: nobody holds these leases
            raise
        return provisioned[0]

    def _slice_expiry(self, slice_urn: str, end: datetime) -> datetime:
        """The expiry the booking gives the slice. A slice an experimenter booked through the AM API keeps its own
        (its credential's word: an operator's lease in it must end by then). An operator's slice has no credential
        to say when it expires: it lasts as far as the policy lets any booking reach, so that a later PUT can extend
        the lease within the policy."""
        with self.database.read() as session:
            stored = session.execute(select(Slice.id, Slice.expires_s).where(Slice.urn == slice_urn)).first()
            experimenters = stored is not None and (
                session.scalar(select(SliceUser.id).where(SliceUser.slice_id == stored[0]).limit(1)) is not None
                or session.scalar(
                    select(Lease.id).where(Lease.slice_id == stored[0], Lease.owner_urn != slice_urn).limit(1)
                )
                is not None
            )
        if stored is not None and experimenters:
            expires = from_s(stored[1])
            if end > expires:
                raise GeniError(
                    Reason.POLICY,
                    f"slice {slice_urn} expires at {format_time(expires)} (its credential): a lease in it must end by "
                    "then; its users renew the slice at their authority first",
                )
            return expires
        policy = self.bookings.policy
        return max(end, self.clock() + timedelta(seconds=policy.max_advance_s + policy.max_duration_s))

    def has_lease(self, body: Mapping[str, Any]) -> bool:
        """Whether the calendar holds a live lease for this lease body's account, window and nodes already (so
        that importing again books nothing twice)."""
        check_texts(body, "the lease")
        _, slice_urn = self._account_of(body)
        start, end = _window(body)
        nodes = set(self._components(body.get("components")))
        return any(
            record.start == start and record.end == end and set(record.nodes) == nodes
            for record in self.bookings.leases(slice_urn=slice_urn)
            if record.state in ("allocated", "provisioned")
        )

    def update_lease(self, caller_chain: GidChain, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /resources/leases`` {uuid, valid_until}: move the lease's end through the calendar (the same
        checks as a renewal: no double booking, policy); its start cannot move (delete and post a new one)."""
        self.check_operator(caller_chain)
        _known_fields(body)
        record = self._lease_record(body)
        if "valid_from" in body and _time(body, "valid_from") != record.start:
            raise BadArgs(
                f"lease {record.id}: valid_from cannot change ({format_time(record.start)}); delete the lease and "
                "post a new one"
            )
        if "valid_until" not in body:
            raise GeniError(Reason.BAD_ARGS, "PUT /resources/leases changes valid_until; the body names none")
        new_end = _time(body, "valid_until")
        if new_end <= record.start:
            raise BadArgs(f"valid_until {format_time(new_end)} is not after valid_from {format_time(record.start)}")
        self.bookings.renew(record.id, new_end)
        try:
            self.backend.renew(record, new_end)
        except Exception:
            self.bookings.renew(record.id, record.end)  # the testbed could not follow: the calendar as it was
            raise
        return self._one_lease(record.id)

    def delete_lease(self, caller_chain: GidChain, body: Mapping[str, Any]) -> dict[str, Any]:
        """``DELETE /resources/leases`` {uuid}: release the lease on the testbed, then in the calendar."""
        self.check_operator(caller_chain)
        _known_fields(body)
        record = self._lease_record(body)
        if record.state in ("allocated", "provisioned"):
            if record.state == "provisioned":
                self.backend.release(record)
            self.bookings.cancel(record.id)
        return self._one_lease(record.id)

    def _one_lease(self, lease_id: str) -> dict[str, Any]:
        rows = lease_rows(self.database, lease_id=lease_id)
        lease = self._lease_json(rows[0], self.clock(), self._lease_logins(rows[:1]), components=True)
        return {"resource_response": {"resource": lease, "about": "/resources/leases"}}

    def _lease_record(self, body: Mapping[str, Any]) -> LeaseRecord:
        lease_id = _text(body, "uuid")
        if not lease_id:
            raise GeniError(Reason.BAD_ARGS, "the body names no lease: give its uuid")
        rows = lease_rows(self.database, lease_id=lease_id)
        if not rows:
            raise GeniError(Reason.NOT_FOUND, f"there is no lease {lease_id}")
        for record in self.bookings.leases(slice_urn=rows[0].slice_urn, active_only=False):
            if record.id == lease_id:
                return record
        raise GeniError(Reason.NOT_FOUND, f"there is no lease {lease_id}")

    def _account_of(self, body: Mapping[str, Any]) -> tuple[str, str]:
        """(login, slice URN) of the account a posted lease names: {name} (a login: the slice of that name under
        this authority; or a slice HRN such as onelab.upmc.demo, as R2Lab's tools send) or {urn} (a slice URN).

        The login is the one the lease will show: with the shared policy the shared login; for a slice mapped to a
        login already, that login (a different name is refused); else the name, which the slice's account becomes.
        """
        account = body.get("account_attributes", body.get("account"))
        if not isinstance(account, dict) or not (account.get("name") or account.get("urn")):
            raise GeniError(Reason.BAD_ARGS, "the lease names no account: give account_attributes: {name: ...}")
        urn = account.get("urn")
        name = account.get("name")
        if name is not None and not isinstance(name, str):
            raise BadArgs(f"account name {name!r} is not text")
        if urn is not None:
            if not isinstance(urn, str) or not is_urn(urn) or parse_urn(urn).type != "slice":
                raise BadArgs(f"account urn {urn!r} is not a slice URN (urn:publicid:IDN+<authority>+slice+<name>)")
            slice_urn = str(parse_urn(urn))  # prefix and type as the AM API stores them: one slice, not two
            named = _login_of(name) if name else None
        else:
            assert isinstance(name, str)
            slice_urn = _slice_urn(name if "." in name else f"{self.authority_hrn}.{name}")
            # A slice HRN (R2Lab's tools send onelab.upmc.demo) names the slice, not a login: the slice's own login
            # when it has one (an AM-API slice's may be derived, demo_1a2b3c), else its last part.
            named = None if "." in name else _login_of(name)
        if len(slice_urn) > MAX_SLICE_URN_CHARS:
            raise BadArgs(f"the account's slice URN is {len(slice_urn)} characters long; at most {MAX_SLICE_URN_CHARS}")
        if self.account_policy == "shared":
            return self._lease_login(self.shared_login, slice_urn), slice_urn
        mapped = mapped_login(self.database, slice_urn)
        if mapped is not None and named not in (None, mapped):
            raise BadArgs(
                f"slice {slice_urn} uses the account {mapped!r} already, not {named!r}: post with account_attributes "
                f"{{name: {mapped!r}}} or {{urn: {slice_urn!r}}}"
            )
        return self._lease_login(mapped or named or _login_of(parse_urn(slice_urn).name), slice_urn), slice_urn

    def _lease_login(self, login: str, slice_urn: str) -> str:
        """``login``, unless a system login (``system_login``): user_factory would create or reach it, install a
        certificate naming it and the slice's keys, and close it at the slot's end."""
        why = system_login(login, self.frcp_account)
        if why:
            raise BadArgs(
                f"the lease's account {login!r} (slice {slice_urn}) is {why}: a lease's account is a Unix account its "
                "slice's users log in to and that is closed when the lease ends, so it may not be one; nothing was "
                "booked: name an account of the lease's own, e.g. account_attributes {name: maintenance}"
            )
        return login

    def _map_account(self, slice_urn: str, login: str) -> None:
        """The slice's account is the login the operator named, unless the slice is mapped already."""
        from sfa_omf.registry.accounts import Accounts  # the writer of the mapping table

        if self.account_policy != "shared" and mapped_login(self.database, slice_urn) is None:
            Accounts(self.database, self.account_policy, self.shared_login).pin(slice_urn, login)

    def _components(self, components: Any) -> list[str]:
        if not isinstance(components, list) or not components:
            raise GeniError(Reason.BAD_ARGS, "the lease names no node: give components: [{uuid: ...}]")
        nodes = node_rows(self.database)
        index: dict[str, str] = {}
        for node in nodes:
            index.setdefault(f"uuid:{node_uuid(node)}", node.component_id)
            index.setdefault(f"urn:{node.component_id}", node.component_id)
            index.setdefault(f"name:{node.component_name}", node.component_id)
        wanted: list[str] = []
        for component in components:
            key = _component_key(component)
            if key not in index:
                raise GeniError(Reason.NOT_FOUND, f"there is no node with {key.replace(':', ' ', 1)}")
            if index[key] not in wanted:
                wanted.append(index[key])
        return wanted


def _under(authority_hrn: str, hrn: str) -> bool:
    """``is_authority_for``, False for a name that is no HRN (a certificate with an empty subject)."""
    try:
        return is_authority_for(authority_hrn, hrn)
    except BadArgs:
        return False


def _slice_urn(hrn: str) -> str:
    """The URN of a slice HRN, refused (BadArgs) unless it reads back as the same slice: no part may hold a '+' or
    ':' (they separate a URN's fields and authority parts) nor white space."""
    parts = split_hrn(hrn)
    if len(parts) < 2 or any(any(c in part for c in "+:") or any(c.isspace() for c in part) for part in parts):
        raise BadArgs(
            f"account {hrn!r} is not a slice HRN (<authority>.<name>, parts without '+', ':' or spaces) nor a login"
        )
    urn = hrn_to_urn(hrn, "slice")
    parsed = parse_urn(urn)
    if parsed.type != "slice" or parsed.hrn_parts != parts:
        raise BadArgs(f"account {hrn!r} is not a slice HRN")
    return urn


def system_login(login: str, frcp_account: str) -> str:
    """Why ``login`` is no login a lease's account may be ("" when it may be): root, the account the aggregate signs
    FRCP as, a built-in system login, or a system user of this host (registry/accounts.py system_login_reason)."""
    if login == frcp_account:
        return "the account this aggregate signs FRCP messages as ([sfa_frcp] account)"
    return system_login_reason(login)


def _login_of(name: str) -> str:
    """The login an account name stands for: lower case, dots as '_'; refused unless a usable Unix login."""
    login = name.lower().replace(".", "_")
    check_login(login)
    return login


def _component_key(component: Any) -> str:
    if isinstance(component, dict):
        for key in ("uuid", "urn", "name"):
            if isinstance(component.get(key), str) and component[key]:
                return f"{key}:{component[key]}"
    raise BadArgs(f"component {component!r} names no node: give {{uuid: ...}}, {{urn: ...}} or {{name: ...}}")


def _single_values(query: Mapping[str, Sequence[str]], allowed: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, given in query.items():
        if key not in allowed:
            raise BadArgs(f"unknown parameter {key!r}; this collection takes {', '.join(allowed)}")
        if len(given) != 1:
            raise BadArgs(f"parameter {key!r} is given {len(given)} times; give it once")
        values[key] = given[0]
    return values


def _known_fields(body: Mapping[str, Any]) -> None:
    unknown = sorted(set(body) - set(LEASE_FIELDS))
    if unknown:
        raise BadArgs(f"unknown lease field(s) {', '.join(unknown)}; a lease has {', '.join(LEASE_FIELDS)}")


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise BadArgs(f"{key} must be text, not {type(value).__name__}")
    return value


def _time(body: Mapping[str, Any], key: str) -> datetime:
    if key not in body:
        raise GeniError(Reason.BAD_ARGS, f"the lease has no {key} (a time such as 2026-12-01T10:00:00Z)")
    try:
        return parse_time(body[key])
    except BadArgs as exc:
        raise BadArgs(f"{key}: {exc.message}") from exc


def _window(body: Mapping[str, Any]) -> tuple[datetime, datetime]:
    start, end = _time(body, "valid_from"), _time(body, "valid_until")
    if end <= start:
        raise BadArgs(f"valid_until {format_time(end)} is not after valid_from {format_time(start)}")
    return start, end
