"""Federation identities to local Unix accounts.

Policies (the operator chooses one):
- ``per-user`` (default): one account per federation user. The login is derived from the user's HRN: its last part,
  lower-cased, characters outside [a-z0-9_] replaced by '_' (no '-': OAR reads only the leading word characters of an
  identity), cut so that ``<name>_<tag>`` fits in 32 characters,
  where <tag> is 6 hex digits of the SHA-256 of the whole URN. Same user, same login, always (stable); two users
  whose names look alike (alice of onelab.inria and alice of geni.gpo.gcf) get different tags. The mapping is stored,
  and should two URNs ever meet on one login the tag grows until they differ (collision-free).
- ``per-slice``: one account per slice, derived the same way from the slice URN.
- ``shared``: one account for every federation user (its name is configured).
An operator can pin a mapping by hand (``sfa-omf account map URN LOGIN``); a pinned login is never recomputed.

A name removed from the local registry and registered again names another person under the same URN. Removing a user
(or a slice) retires its login (table retired_login): the mapping goes, and the login is never derived for anyone
again. Until the name is registered again, the URN still resolves to the retired login (the removed user's leases end
in their own account, and their slices' keys are withdrawn from it). The next holder of the name gets a login derived
from the URN and the number of holders before them (``holder``): a login of their own, the same on every call.
Users of other authorities are never removed here: their logins are derived as before (holder 0).

What the removed holder booked names them "URN (removed TIME)" from then on (registry/removed_marks.py; a removed
slice is renamed so too). The login such a lease ran under is the one the removal retired (``LeaseLogins``), never
one derived from the marked text.
"""

from __future__ import annotations

import hashlib
import pwd
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, bindparam, exists, func, select, text
from sqlalchemy.orm import Session

from sfa_omf.calendar.database import Database, retry_transient
from sfa_omf.calendar.models import AccountMapping, RegistryRecord, RetiredLogin
from sfa_omf.calendar.queries import to_s
from sfa_omf.errors import BadArgs
from sfa_omf.registry.removed_marks import is_removed_mark, may_be_cut, removed_mark_parts
from sfa_omf.xrn import parse_urn

MAX_LOGIN = 32
#: What account_mapping.urn holds (calendar/models.py): a longer URN is refused before the database sees it.
MAX_MAPPED_URN = 300
POLICIES = ("per-user", "per-slice", "shared")
VALID_LOGIN = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # fullmatch: "$" lets a final line break through


def derived_login(urn: str, tag_length: int = 6, holder: int = 0) -> str:
    """The login a URN maps to by rule (see the module docstring). ``holder``: how many earlier holders of the URN
    the local registry removed (0 for the first, and for every user of another authority)."""
    name = re.sub(r"[^a-z0-9_]", "_", parse_urn(urn).name.lower())
    if not name or not (name[0].isalpha() or name[0] == "_"):
        name = f"u{name}"
    seed = urn.lower() if holder == 0 else f"{urn.lower()}#{holder}"  # holder 0: the tag as it always was
    tag = hashlib.sha256(seed.encode("utf-8")).hexdigest()[:tag_length]
    return f"{name[: MAX_LOGIN - len(tag) - 1]}_{tag}"


#: Logins no federation user's account may be, whatever this host's passwd says: the testbed's nodes and servers
#: have them (their keys would open them), and OMF's controllers let root do anything.
SYSTEM_LOGINS = frozenset(
    {
        "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "www-data",
        "backup", "list", "irc", "gnats", "nobody", "_apt", "sshd", "messagebus", "syslog", "postgres", "rabbitmq",
        "oar", "omf", "admin", "adm", "operator", "wheel", "sudo", "ftp", "halt", "shutdown",
    }
)  # fmt: skip
#: The first uid useradd gives a person (Debian's FIRST_UID): a login below it on this host is a system user's.
FIRST_USER_UID = 1000


def system_login_reason(login: str) -> str:
    """Why ``login`` is a system login that no federation user may be given ("" when it is not): a built-in system
    login (SYSTEM_LOGINS), or a system user of this host (uid below FIRST_USER_UID)."""
    if login in SYSTEM_LOGINS:
        return "a system login"
    try:
        uid = pwd.getpwnam(login).pw_uid
    except KeyError:
        return ""  # not on this host: a login for a person
    if uid < FIRST_USER_UID:
        return f"a system user of this host (uid {uid})"
    return ""


def check_login(login: str) -> None:
    if not VALID_LOGIN.fullmatch(login):
        raise BadArgs(
            f"{login!r} is not a usable Unix login: at most 32 characters, lower-case letters, digits, '_' and '-', "
            "starting with a letter or '_'"
        )


_LOGIN_OF = select(AccountMapping.login).where(AccountMapping.urn == bindparam("urn"))
#: The login of a URN's removed holder while nobody holds the name again (newest first).
_REMOVED_HOLDERS_LOGIN = (
    select(RetiredLogin.login)
    .where(RetiredLogin.urn == bindparam("urn"))
    .where(~exists().where(RegistryRecord.urn == bindparam("urn")))
    .order_by(RetiredLogin.id.desc())
    .limit(1)
)


def retire_login(session: Session, urn: str, retired_s: int) -> str:
    """In the registry's unit of work that removes the record of ``urn`` (a user, or a slice): its mapping goes and
    its login is retired, never derived for anyone again; the next holder of the URN gets a login of their own. A URN
    never mapped retires the login it would have had (``Accounts.login_for``), never one another URN holds: the
    logins of tb.Bob and tb.bob are derived alike (the URN read in lower case), and removing the one never given a
    login must leave the other's in use. Returns the retired login."""
    _one_at_a_time(session, urn)
    mapping = session.scalar(select(AccountMapping).where(AccountMapping.urn == urn))
    if mapping is not None:
        login = mapping.login
        session.delete(mapping)
    else:
        holder = _earlier_holders(session, urn)
        login = _free_login(session, urn, holder) or _unmapped_login(session, urn, holder)
    session.add(RetiredLogin(urn=urn, login=login, retired_s=retired_s))
    return login


#: How long the tag of a derived login grows (``derived_login``) while the shorter one is taken.
_TAG_LENGTHS = range(6, 17)


def _free_login(session: Session, urn: str, holder: int) -> str | None:
    """The login derived for ``urn`` that nobody holds and nobody held: what its first mapping gets."""
    for tag_length in _TAG_LENGTHS:
        login = derived_login(urn, tag_length, holder)
        mapped = session.scalar(select(AccountMapping.id).where(AccountMapping.login == login).limit(1))
        retired = session.scalar(select(RetiredLogin.id).where(RetiredLogin.login == login).limit(1))
        if mapped is None and retired is None:
            return login
    return None


def _unmapped_login(session: Session, urn: str, holder: int) -> str:
    """A login derived for ``urn`` that no URN holds now (one retired before): what retiring a URN never mapped names
    when every login derived for it was given out once (never in practice)."""
    for tag_length in _TAG_LENGTHS:
        login = derived_login(urn, tag_length, holder)
        if session.scalar(select(AccountMapping.id).where(AccountMapping.login == login).limit(1)) is None:
            return login
    raise BadArgs(f"every login derived for {urn} is another URN's: pin one for it first with sfa-omf account map")


def retired_logins(database: Database, urn: str) -> list[str]:
    """The logins of the removed holders of ``urn``, oldest first."""
    with database.read() as session:
        return list(
            session.scalars(select(RetiredLogin.login).where(RetiredLogin.urn == urn).order_by(RetiredLogin.id))
        )


#: The advisory lock class of the units of work that map or retire a URN (the other number is the URN's hash).
_URN_LOCK_CLASS = 0x5F0A


def _one_at_a_time(session: Session, urn: str) -> None:
    """PostgreSQL: the units of work that map a URN and retire it run one after the other (a transaction-scoped
    advisory lock), so a first mapping made while the registry removes the URN's holder is retired with it, never
    left to whoever is registered next. SQLite's write lock (BEGIN IMMEDIATE) does this already."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(urn.encode("utf-8")).digest()[:4], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:kind, :key)"), {"kind": _URN_LOCK_CLASS, "key": key})


def _earlier_holders(session: Session, urn: str) -> int:
    return int(session.scalar(select(func.count()).select_from(RetiredLogin).where(RetiredLogin.urn == urn)) or 0)


@dataclass(frozen=True)
class LeaseLogins:
    """The logins leases ran under, as read once for an answer about some leases (the OMF inventory), for the keys
    (bookers or slices) of those leases only: their stored mapping, the retired logins of their URNs (URN ->
    [(retired_s, login)], oldest first) and which of those URNs are registered again."""

    mapped: dict[str, str]
    retired: dict[str, list[tuple[int, str]]]
    registered_again: frozenset[str]

    def login_of(self, urn: str) -> str | None:
        """The login of a lease whose key (booker or slice, per the policy) is ``urn`` (one of the keys read). A URN
        marked as removed: the login its removal retired (the account the lease ran under), None when the database
        does not hold it (the account was removed and its login is not on record): never one derived from the
        marked text. A plain URN: its mapping, else what ``Accounts.login_for`` would give it (the removed holder's
        login while nobody holds the name again, else the login derived for the next holder)."""
        mapped = self.mapped.get(urn)
        if mapped is not None:
            return mapped
        if is_removed_mark(urn):
            marked = removed_mark_parts(urn)
            return self._retired_at(marked[0], marked[1], may_be_cut(urn)) if marked is not None else None
        earlier = self.retired.get(urn, [])
        if earlier and urn not in self.registered_again:
            return earlier[-1][1]
        return derived_login(urn, holder=len(earlier))

    def _retired_at(self, urn: str, removed: datetime, cut: bool) -> str | None:
        """The newest login retired for ``urn`` at or before ``removed`` (a slice renamed when its name was
        registered again is marked with that later time). A URN that may be ``cut`` to fit: the one retired URN it
        begins, when it is not one itself."""
        rows = self.retired.get(urn)
        if rows is None and cut:
            longer = {full for full in self.retired if full.startswith(urn)}
            rows = self.retired[longer.pop()] if len(longer) == 1 else None
        before = [login for retired_s, login in rows or () if retired_s <= to_s(removed)]
        return before[-1] if before else None


#: How many keys one IN (...) holds: well within every database's limit on bound parameters.
_KEYS_PER_QUERY = 500


def _chunks(keys: set[str]) -> list[list[str]]:
    ordered = sorted(keys)
    return [ordered[at : at + _KEYS_PER_QUERY] for at in range(0, len(ordered), _KEYS_PER_QUERY)]


def lease_logins(database: Database, keys: Iterable[str]) -> LeaseLogins:
    """The mapping, the retired logins and which URNs are registered again, for the lease keys ``keys`` only (the
    bookers or slices of the leases an answer shows, plain or marked as removed), in one read (``LeaseLogins``).
    Every lookup goes through an index (account_mapping.urn, retired_login.urn, registry_record.hrn): the tables
    hold every user the testbed ever mapped, removed or registered, and an inventory answer is read on every GET."""
    wanted = set(keys)
    with database.read() as session:
        mapped: dict[str, str] = {}
        for chunk in _chunks(wanted):
            query = select(AccountMapping.urn, AccountMapping.login).where(AccountMapping.urn.in_(chunk))
            mapped.update({urn: login for urn, login in session.execute(query)})
        # The URNs whose retired logins the answer needs: an unmapped plain key's, and the URN in a mark.
        plain = {key for key in wanted - mapped.keys() if not is_removed_mark(key)}
        in_marks = {key: parts[0] for key in wanted - mapped.keys() if (parts := removed_mark_parts(key)) is not None}
        retired: dict[str, list[tuple[int, str]]] = {}
        for chunk in _chunks(plain | set(in_marks.values())):
            retired.update(_retired(session, RetiredLogin.urn.in_(chunk)))
        for mark, urn in in_marks.items():
            if urn not in retired and may_be_cut(mark):  # rare (a URN of 270 characters or more): a scan of the
                for full, rows in _retired(session, RetiredLogin.urn.startswith(urn, autoescape=True)).items():
                    retired.setdefault(full, rows)  # small table, not of registry_record
        return LeaseLogins(mapped, retired, _registered(session, {urn for urn in plain if urn in retired}))


def _retired(session: Session, which: ColumnElement[bool]) -> dict[str, list[tuple[int, str]]]:
    """The retired logins ``which`` selects: URN -> [(retired_s, login)], oldest first."""
    query = select(RetiredLogin.urn, RetiredLogin.retired_s, RetiredLogin.login).where(which)
    retired: dict[str, list[tuple[int, str]]] = {}
    for urn, retired_s, login in session.execute(query.order_by(RetiredLogin.retired_s, RetiredLogin.id)):
        retired.setdefault(urn, []).append((retired_s, login))
    return retired


def _registered(session: Session, urns: set[str]) -> frozenset[str]:
    """Which of ``urns`` a registry record holds now. Looked up by HRN (registry_record.hrn is indexed, its urn is
    not: an EXISTS per URN read the whole table each time), a record's URN naming its HRN (records.py
    new_record_urn); the URN is then compared exactly. A URN that names no HRN is looked up by URN (none should)."""
    hrns: dict[str, str] = {}
    unparsed: set[str] = set()
    for urn in urns:
        try:
            hrns[urn] = parse_urn(urn).hrn
        except BadArgs:
            unparsed.add(urn)
    found: set[str] = set()
    for chunk in _chunks(set(hrns)):
        query = select(RegistryRecord.urn).where(
            RegistryRecord.hrn.in_({hrns[urn] for urn in chunk}), RegistryRecord.urn.in_(chunk)
        )
        found.update(session.scalars(query))
    for chunk in _chunks(unparsed):
        found.update(session.scalars(select(RegistryRecord.urn).where(RegistryRecord.urn.in_(chunk))))
    return frozenset(found)


def urns_of_login(database: Database, login: str) -> list[str]:
    """The URNs the account mapping gives ``login`` now (several for a login pinned for several on purpose)."""
    with database.read() as session:
        query = select(AccountMapping.urn).where(AccountMapping.login == login).order_by(AccountMapping.urn)
        return list(session.scalars(query))


def mapped_login(database: Database, urn: str) -> str | None:
    """The stored login of ``urn`` (pinned or derived), None when it has none (an indexed read of one row)."""
    found = database.fetch_all(_LOGIN_OF, {"urn": urn})
    return str(found[0][0]) if found else None


@dataclass(frozen=True)
class AccountRecord:
    urn: str
    login: str
    pinned: bool


class Accounts:
    """The stored mapping, in the calendar's database."""

    def __init__(self, database: Database, policy: str = "per-user", shared_login: str = "federation") -> None:
        if policy not in POLICIES:
            raise BadArgs(f"account policy {policy!r} is not one of {', '.join(POLICIES)}")
        check_login(shared_login)
        self.database = database
        self.policy = policy
        self.shared_login = shared_login

    def login_for(self, user_urn: str, slice_urn: str) -> str:
        """The local login of a user acting in a slice, creating the mapping on first use."""
        if self.policy == "shared":
            return self.shared_login
        key = slice_urn if self.policy == "per-slice" else user_urn
        if len(key) > MAX_MAPPED_URN:
            raise BadArgs(
                f"the URN {key[:80]}... is {len(key)} characters long; this testbed maps local accounts only for URNs "
                f"of at most {MAX_MAPPED_URN} characters: use an identity with a shorter name"
            )
        # Nearly always mapped already (Describe and Allocate ask on every call): one read, without the write
        # unit of work (SQLite's write lock) that creating a mapping needs.
        found = self.database.fetch_all(_LOGIN_OF, {"urn": key})
        if found:
            return str(found[0][0])
        # Removed from the registry and not registered again: the removed holder's own (retired) login, never mapped
        # again, so that their slices' keys leave the account they were put in and nobody later inherits it.
        removed = self.database.fetch_all(_REMOVED_HOLDERS_LOGIN, {"urn": key})
        if removed:
            return str(removed[0][0])
        return retry_transient(lambda: self._mapped(key))

    def _mapped(self, urn: str) -> str:
        with self.database.write() as session:
            _one_at_a_time(session, urn)
            existing = session.scalar(select(AccountMapping).where(AccountMapping.urn == urn))
            if existing is not None:
                return existing.login
            removed = session.scalar(_REMOVED_HOLDERS_LOGIN, {"urn": urn})
            if removed is not None:  # (removed meanwhile)
                return removed
            holder = _earlier_holders(session, urn)  # 0 unless the registry removed someone of this name
            login = _free_login(session, urn, holder)
            if login is None:
                raise BadArgs(f"no free login could be derived for {urn}; pin one with sfa-omf account map")
            session.add(AccountMapping(urn=urn, login=login, pinned=False))
            return login

    def pin(self, urn: str, login: str) -> AccountRecord:
        """An operator's choice: ``urn`` uses ``login`` (several URNs may share a pinned login on purpose)."""
        parse_urn(urn)
        if len(urn) > MAX_MAPPED_URN:
            raise BadArgs(f"the URN is {len(urn)} characters long; the account mapping holds at most {MAX_MAPPED_URN}")
        check_login(login)
        reason = system_login_reason(login)
        if reason:
            raise BadArgs(
                f"{login!r} is {reason}: a user's SSH keys would open it; pin a login of the user's own (or leave the "
                "URN unpinned: it gets one derived from its name)"
            )
        with self.database.write() as session:
            existing = session.scalar(select(AccountMapping).where(AccountMapping.urn == urn))
            if existing is None:
                session.add(AccountMapping(urn=urn, login=login, pinned=True))
            else:
                existing.login, existing.pinned = login, True
        return AccountRecord(urn, login, True)

    def list(self) -> list[AccountRecord]:
        with self.database.read() as session:
            rows = session.scalars(select(AccountMapping).order_by(AccountMapping.urn))
            return [AccountRecord(row.urn, row.login, row.pinned) for row in rows]
