"""The registry's records (authorities, users, slices, nodes) in the calendar's database, as plain data."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from sqlalchemy import Text, cast, delete, func, or_, select, update
from sqlalchemy.orm import Session

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.external import is_source_slice_name
from sfa_omf.calendar.models import (
    FeedToken,
    Lease,
    NotifyEvent,
    NotifySubscription,
    RegistryRecord,
    RepositoryImage,
    RetiredLogin,
    Slice,
    SliceUser,
    UserContact,
)
from sfa_omf.calendar.outbox import ADDRESS_CHANGED, USER_REMOVED, addresses_of, drop_queued
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.errors import BadArgs, GeniError, Reason
from sfa_omf.registry.accounts import retire_login
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.removed_marks import is_removed_mark, removed_holder
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import GidChain, chain_pem, load_gid_chain, load_gid_chain_file
from sfa_omf.xrn import hrn_part_problem, hrn_to_urn, is_authority_for, parse_urn, split_hrn

log = logging.getLogger("sfa_omf.registry")

#: What the registry_record columns hold (calendar/models.py); a name or address over these is refused up front.
MAX_URN_CHARS = 300
MAX_EMAIL_CHARS = 200
#: An HRN names files (gids/HRN.gid; in an sfi.py directory HRN.pkey, HRN.user.gid and what sfi.py adds), and a file
#: name holds at most 255 bytes: 200 bytes of UTF-8 leave room for every suffix (and fit the 300-character columns).
MAX_HRN_BYTES = 200
#: A user or slice name removed is registered again only this long after its removal. The AM keeps a verdict on a
#: (user or slice, key) for 10 s (am/caller_keys.py DEFAULT_TTL_S) in each process, so the removed holder's calls can
#: pass for that long after the removal, and a call let through may still be writing: registered again before, the
#: name's next holder would get what they write (a lease under their URN). 60 s covers both, with clocks of the
#: cluster's hosts a few seconds apart.
REGISTER_AGAIN_AFTER_S = 60


def new_record_urn(hrn: str, kind: str) -> str:
    """The URN of a record about to be registered, after checking its HRN names exactly one URN and back: no ':',
    '+', '/', white space, control characters or characters that are not ASCII in a part (a GID's URI must be
    ASCII), and within what the database columns hold."""
    if len(hrn.encode("utf-8")) > MAX_HRN_BYTES:
        raise BadArgs(
            f"the HRN {hrn[:60]}... is {len(hrn.encode('utf-8'))} bytes long (UTF-8); the registry holds at most "
            f"{MAX_HRN_BYTES} (its files are named after it): choose a shorter name"
        )
    for part in split_hrn(hrn):
        problem = hrn_part_problem(part)
        if problem is not None:
            raise BadArgs(problem)
    if kind == "slice" and is_source_slice_name(split_hrn(hrn)[-1]):
        # The slice would be the pseudo-slice of the testbed's mirror (calendar/external.py): the aggregate would mix
        # its bookings with the reservations made directly in the testbed.
        raise BadArgs(
            f"the slice name {split_hrn(hrn)[-1][:60]!r} is refused: names starting with 'external-' are reserved for "
            "the testbed's own reservations (those made directly in the testbed, which the aggregate mirrors); "
            "choose another name"
        )
    urn = hrn_to_urn(hrn, kind)
    if len(urn) > MAX_URN_CHARS:
        raise BadArgs(f"the URN {urn[:60]}... is {len(urn)} characters long; the registry holds {MAX_URN_CHARS}")
    if parse_urn(urn).hrn != hrn:  # the URN must name this record and no other
        raise BadArgs(f"the HRN {hrn[:80]!r} does not survive its URN {urn[:80]!r}: choose a plainer name")
    return urn


def record_email(address: str) -> str:
    """An e-mail address the registry can store and put in a GID: ASCII before the '@', a domain that is ASCII or
    IDNA-encodable (stored in its ASCII form), at most what the column holds. Empty: none."""
    if not address:
        return ""
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        raise BadArgs(f"the e-mail address {address[:80]!r} must be ASCII before the '@' (GIDs carry ASCII addresses)")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise BadArgs(f"the e-mail domain {domain[:80]!r} is not a usable domain name: {exc}") from None
    address = f"{local}@{domain}"
    if len(address) > MAX_EMAIL_CHARS:
        raise BadArgs(f"the e-mail address is {len(address)} characters long; the registry holds {MAX_EMAIL_CHARS}")
    return address


#: The payload fields of a recorded event that name a user it goes to (notify/notifier.py _recorded_recipients).
EVENT_USER_FIELDS = ("caller", "owner")


def _rename_in_events(session: Session, user_urn: str, removed_as: str) -> None:
    """``removed_as`` in place of ``user_urn`` wherever a recorded event of a slice names the user as a recipient:
    the notifier reads them again for a day, and would send them to the next holder of the name. The database finds
    the few events whose JSON holds the URN as a string (events are kept 8 days and more: reading them all into Python
    held the write lock for seconds); the exact check is made on those."""
    # As the JSON column writes it (json.dumps: non-ASCII escaped), and raw, as another writer may have.
    written = {json.dumps(user_urn), json.dumps(user_urn, ensure_ascii=False)}
    payload_text = cast(NotifyEvent.payload, Text)
    naming = or_(*(payload_text.contains(form, autoescape=True) for form in sorted(written)))
    for row in session.scalars(select(NotifyEvent).where(NotifyEvent.slice_urn.is_not(None), naming)):
        named = [name for name in EVENT_USER_FIELDS if row.payload.get(name) == user_urn]
        if named:
            row.payload = {**row.payload, **dict.fromkeys(named, removed_as)}  # a new dict: the JSON column is saved


def _mark_as_removed(session: Session, user_urn: str, removed_as: str) -> None:
    """``removed_as`` in place of ``user_urn`` in what the calendar recorded as the user's: the leases they booked,
    the images they saved, the recorded events naming them as a recipient."""
    session.execute(update(Lease).where(Lease.owner_urn == user_urn).values(owner_urn=removed_as))
    session.execute(update(RepositoryImage).where(RepositoryImage.added_by == user_urn).values(added_by=removed_as))
    _rename_in_events(session, user_urn, removed_as)


def _last_removal_s(session: Session, urn: str) -> int | None:
    """When a user or slice of ``urn`` was last removed (its login retired then), epoch seconds; None: never."""
    return session.scalar(select(func.max(RetiredLogin.retired_s)).where(RetiredLogin.urn == urn))


def _refuse_too_soon(hrn: str, last_removed_s: int) -> None:
    """BUSY while a name removed less than ``REGISTER_AGAIN_AFTER_S`` ago: the removed holder may still act."""
    waited_s = int(utcnow().timestamp()) - last_removed_s
    if waited_s < REGISTER_AGAIN_AFTER_S:
        # A remover whose clock runs ahead of ours stamps the removal in our future (waited_s < 0): the wait asked
        # for is never more than the rule's whole wait.
        wait_s = min(REGISTER_AGAIN_AFTER_S - waited_s, REGISTER_AGAIN_AFTER_S)
        raise GeniError(
            Reason.BUSY,
            f"{hrn[:200]} was removed {max(waited_s, 0)} s ago: a removed name is given again "
            f"{REGISTER_AGAIN_AFTER_S} s after its removal, once no process of the aggregate acts for its removed "
            f"holder any more; register it again in {wait_s} s",
        )


def _mark_left_after_removal(session: Session, user_urn: str, last_removed_s: int) -> None:
    """Before ``user_urn`` is registered again: what still carries it plain was written after its last removal (a
    call in flight then, or one the aggregate let through on a key verdict it still kept), so by the removed holder,
    and is marked as the removal marked theirs."""
    _mark_as_removed(session, user_urn, removed_holder(user_urn, from_s(last_removed_s)))


def _rename_slice(session: Session, slice_urn: str, removed: datetime) -> None:
    """The aggregate's slice of ``slice_urn`` (if it has one), with its leases, named as a slice removed then
    (``removed_holder``) from now on; a name another removed slice took already gets a number (slice names are
    unique). Its operator leases, booked by the slice itself (omf/inventory.py book_lease), name the renamed slice
    as their booker too: under the per-user policy their account is their booker's, and the plain URN would be the
    next slice of the name's (its account) once that slice has one."""
    slice_id = session.scalar(select(Slice.id).where(Slice.urn == slice_urn))
    if slice_id is None:
        return
    removed_as, number = removed_holder(slice_urn, removed), 1  # "URN (removed TIME)"
    while session.scalar(select(Slice.id).where(Slice.urn == removed_as)) is not None:
        number += 1
        removed_as = removed_holder(slice_urn, removed, number)  # "URN (removed TIME #2)", ...
    # The leases before the slice, the order in which a Renew or a Provision locks them (lease, then slice): the
    # other order deadlocked with a Renew of an operator lease that wrote the slice's expiry.
    session.execute(
        update(Lease).where(Lease.slice_id == slice_id, Lease.owner_urn == slice_urn).values(owner_urn=removed_as)
    )
    session.execute(update(Slice).where(Slice.id == slice_id).values(urn=removed_as))


def _mark_slice_members(session: Session, slice_urn: str, removed: datetime) -> None:
    """The users of the aggregate's slice of ``slice_urn`` (if it has one), removed with it: their keys go, and each
    is kept as the removed slice's member "URN (removed TIME)" (``removed_holder``), which no reader takes for the
    user (their slices, feed, lease news). Kept for the aggregate: at the end of the slice's last provisioned lease
    it takes the slice's keys out of the logins it wrote them in, these members' (am/aggregate.py
    withdraw_keys_if_done); deleted, the keys stayed in their logins for ever."""
    slice_id = session.scalar(select(Slice.id).where(Slice.urn == slice_urn))
    if slice_id is None:
        return
    marked: set[str] = set()
    members = list(session.scalars(select(SliceUser).where(SliceUser.slice_id == slice_id).order_by(SliceUser.id)))
    for member in members:
        mark = member.user_urn if is_removed_mark(member.user_urn) else removed_holder(member.user_urn, removed)
        if mark in marked:  # two URNs long enough to be cut alike: one row (their slice lists each once)
            session.delete(member)
            continue
        marked.add(mark)
        member.user_urn, member.ssh_keys = mark, []


def _rename_slice_left_after_removal(session: Session, slice_urn: str) -> None:
    """Before ``slice_urn`` is registered again: an aggregate's slice still under it was made after the slice's last
    removal (a call in flight then) or before this rule (an upgraded calendar), so it is the removed slice's."""
    _rename_slice(session, slice_urn, utcnow())


#: PostgreSQL advisory locks (class, key) of registered names in lower case: two registrations of names that differ
#: only in case (tb.Bob, tb.bob) check for each other one after the other.
NAME_LOCK_CLASS = 0x5F0C


def _lock_name_but_for_case(session: Session, hrn: str) -> None:
    """PostgreSQL: until the end of the transaction, the lock of ``hrn`` in lower case, so that the twin check that
    follows sees a twin registered meanwhile (SQLite's BEGIN IMMEDIATE serializes the writers already)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    key = int.from_bytes(hashlib.sha256(hrn.lower().encode("utf-8")).digest()[:4], "big", signed=True)
    session.execute(select(func.pg_advisory_xact_lock(NAME_LOCK_CLASS, key)))


def _same_but_for_case(session: Session, hrn: str) -> RegistryRecord | None:
    """The record whose HRN differs from ``hrn`` only in case (a scan: registering is rare)."""
    query = select(RegistryRecord).where(func.lower(RegistryRecord.hrn) == hrn.lower(), RegistryRecord.hrn != hrn)
    return session.scalars(query.limit(1)).first()


def _refuse_twin(hrn: str, registered_hrn: str, registered_type: str) -> NoReturn:
    raise GeniError(
        Reason.ALREADY_EXISTS,
        f"{hrn[:200]} differs from the registered {registered_type} {registered_hrn[:200]} only in the case of its "
        "letters: the testbed's local logins do not tell such names apart, so both would share one Unix account; "
        f"choose another name (or use {registered_hrn[:200]})",
    )


@dataclass(frozen=True)
class Record:
    hrn: str
    type: str
    urn: str
    gid: str
    email: str = ""
    keys: tuple[str, ...] = ()  # users: SSH public keys
    researchers: tuple[str, ...] = ()  # slices: member user HRNs
    pis: tuple[str, ...] = ()  # authorities: user HRNs who get the authority's credential
    expires: datetime | None = None  # slices: when the slice ends
    created: datetime | None = None  # when the record was made (None: not stored yet)
    updated: datetime | None = None  # when it was last changed
    # Users: whether someone holds the private half of the key their GID certifies (False: nobody, the registry made
    # it and kept nothing; None: not known, a record made before sfa-omf kept this)
    key_held: bool | None = None


#: A user's slices (the slices listing them as a researcher) and the authorities listing them as a PI, HRNs in order.
Memberships = tuple[tuple[str, ...], tuple[str, ...]]
#: Up to this many users, the memberships query has the database pick the rows naming one of them (their HRN in the
#: JSON text); for more, it reads the member lists of every slice and authority (still one query) and picks here.
MEMBERSHIPS_PREFILTER_MAX = 32


def _record(row: RegistryRecord) -> Record:
    return Record(
        row.hrn,
        row.type,
        row.urn,
        row.gid,
        row.email,
        tuple(row.keys),
        tuple(row.researchers),
        tuple(row.pis or ()),
        from_s(row.expires_s) if row.expires_s is not None else None,
        from_s(row.created_s),
        from_s(row.updated_s if row.updated_s is not None else row.created_s),
        row.key_held,
    )


class Records:
    def __init__(self, database: Database) -> None:
        self.database = database

    def get(self, hrn: str) -> Record | None:
        with self.database.read() as session:
            row = session.scalar(select(RegistryRecord).where(RegistryRecord.hrn == hrn))
            return _record(row) if row is not None else None

    def under(self, authority_hrn: str) -> list[Record]:
        """The records directly under an authority (SFA's List)."""
        depth = len(split_hrn(authority_hrn)) + 1
        with self.database.read() as session:
            rows = session.scalars(select(RegistryRecord).order_by(RegistryRecord.hrn))
            return [
                _record(row)
                for row in rows
                if is_authority_for(authority_hrn, row.hrn) and len(split_hrn(row.hrn)) == depth
            ]

    def same_but_for_case(self, hrn: str) -> Record | None:
        """A record whose HRN is ``hrn`` but for the case of its letters (tb.Bob for tb.bob), None when there is none:
        local logins are derived from URNs read in lower case (registry/accounts.py), so two such names would be one
        user's (or slice's) login."""
        with self.database.read() as session:
            row = _same_but_for_case(session, hrn)
            return _record(row) if row is not None else None

    def refuse_same_but_for_case(self, hrn: str) -> None:
        """ALREADY_EXISTS naming the record whose HRN is ``hrn`` but for case (``same_but_for_case``), if any."""
        twin = self.same_but_for_case(hrn)
        if twin is not None:
            _refuse_twin(hrn, twin.hrn, twin.type)

    def refuse_if_removed_lately(self, hrn: str, urn: str) -> None:
        """BUSY (Reason.BUSY, as ``add`` would answer) when ``hrn`` has no record and ``urn`` was removed less than
        ``REGISTER_AGAIN_AFTER_S`` ago. Called before a GID is issued or a file written for a name about to be
        registered, so that a refusal leaves nothing behind; ``add`` checks again in its transaction (the guarantee)."""
        with self.database.read() as session:
            if session.scalar(select(RegistryRecord.id).where(RegistryRecord.hrn == hrn)) is not None:
                return  # registered: add merges into the record, nothing is registered again
            last_removed_s = _last_removal_s(session, urn)
        if last_removed_s is not None:
            _refuse_too_soon(hrn, last_removed_s)

    def add(self, record: Record) -> None:
        """Add a record, or merge researchers and keys into the existing one (never drops either). A user or slice
        registered under a URN removed before does not get what the removed holder left under it
        (``Records.remove``); one removed less than ``REGISTER_AGAIN_AFTER_S`` ago is refused (BUSY)."""
        with self.database.write() as session:
            row = session.scalar(select(RegistryRecord).where(RegistryRecord.hrn == record.hrn))
            if row is None:
                if record.type in ("user", "slice"):
                    _lock_name_but_for_case(session, record.hrn)
                twin = _same_but_for_case(session, record.hrn) if record.type in ("user", "slice") else None
                if twin is not None:  # checked again here, in the transaction that adds the record
                    _refuse_twin(record.hrn, twin.hrn, twin.type)
                last_removed_s = _last_removal_s(session, record.urn) if record.type in ("user", "slice") else None
                if last_removed_s is not None:  # a name removed before: nothing of its removed holder's passes
                    _refuse_too_soon(record.hrn, last_removed_s)
                    if record.type == "user":
                        _mark_left_after_removal(session, record.urn, last_removed_s)
                    else:
                        _rename_slice_left_after_removal(session, record.urn)
                # A user's e-mail on record replaces the e-mail of their GID as their default address: what is queued
                # for the GID's is not sent there any more (as Update's change of the address on record).
                addresses = addresses_of(session, record.urn) if record.type == "user" and record.email else set()
                session.add(
                    RegistryRecord(
                        hrn=record.hrn,
                        type=record.type,
                        urn=record.urn,
                        gid=record.gid,
                        email=record.email,
                        keys=list(dict.fromkeys(record.keys)),
                        researchers=list(dict.fromkeys(record.researchers)),
                        pis=list(dict.fromkeys(record.pis)),
                        expires_s=to_s(record.expires) if record.expires is not None else None,
                        created_s=int(utcnow().timestamp()),
                        key_held=record.key_held,
                    )
                )
                if addresses:
                    session.flush()
                    drop_queued(session, record.urn, addresses - addresses_of(session, record.urn), ADDRESS_CHANGED)
                return
            before = (list(row.keys), list(row.researchers), list(row.pis or []))
            row.keys = list(dict.fromkeys([*row.keys, *record.keys]))
            row.researchers = list(dict.fromkeys([*row.researchers, *record.researchers]))
            row.pis = list(dict.fromkeys([*(row.pis or []), *record.pis]))
            if (row.keys, row.researchers, row.pis) != before:
                row.updated_s = int(utcnow().timestamp())

    def update(
        self,
        hrn: str,
        email: str | None = None,
        keys: Sequence[str] | None = None,
        researchers: Sequence[str] | None = None,
        pis: Sequence[str] | None = None,
        expires: datetime | None = None,
        gid: str | None = None,
        key_held: bool | None = None,
    ) -> Record | None:
        """Replace the given fields of a record (None leaves a field as it is), in one transaction; the record as it
        is now. ``gid``: a user's GID re-issued for another key (Update with keys), written with the rest: a key the
        user gave, so held from then on. ``key_held``: True when someone holds the key the user's GID certifies
        (the key pair ``sfa-omf init`` wrote for a demo user)."""
        with self.database.write() as session:
            row = session.scalar(select(RegistryRecord).where(RegistryRecord.hrn == hrn))
            if row is None:
                return None
            if email is not None and email != row.email and row.type == "user":
                # Lease e-mails queued for the old address on record (the user's default) are not sent there any more.
                before = addresses_of(session, row.urn)
                row.email = email
                session.flush()
                drop_queued(session, row.urn, before - addresses_of(session, row.urn), ADDRESS_CHANGED)
            elif email is not None:
                row.email = email
            if keys is not None:  # (each once, in the order given)
                row.keys = list(dict.fromkeys(keys))
            if researchers is not None:
                row.researchers = list(dict.fromkeys(researchers))
            if pis is not None:
                row.pis = list(dict.fromkeys(pis))
            if expires is not None:
                row.expires_s = to_s(expires)
            if gid is not None:
                row.gid = gid
                row.key_held = True
            if key_held is not None:
                row.key_held = key_held
            row.updated_s = int(utcnow().timestamp())
            return _record(row)

    def memberships(self, user_hrns: Collection[str]) -> dict[str, Memberships]:
        """For each user HRN, the slices whose researchers and the authorities whose PIs name it, by HRN (a user in
        none gets empty ones): what Resolve and List show as a user's reg-slices and reg-pi-authorities. One query of
        the member columns, whatever the number of users and slices (never a record read per slice)."""
        wanted = set(user_hrns)
        if not wanted:
            return {}
        found: dict[str, tuple[list[str], list[str]]] = {hrn: ([], []) for hrn in wanted}
        query = select(RegistryRecord.hrn, RegistryRecord.type, RegistryRecord.researchers, RegistryRecord.pis).where(
            RegistryRecord.type.in_(("slice", "authority"))
        )
        if len(wanted) <= MEMBERSHIPS_PREFILTER_MAX:
            # The few rows whose JSON lists hold one of the names as a string (as _rename_in_events finds events);
            # the exact check is made on those below.
            forms = sorted({form for hrn in wanted for form in (json.dumps(hrn), json.dumps(hrn, ensure_ascii=False))})
            lists = (cast(RegistryRecord.researchers, Text), cast(RegistryRecord.pis, Text))
            query = query.where(or_(*(column.contains(form, autoescape=True) for column in lists for form in forms)))
        with self.database.read() as session:
            for hrn, kind, researchers, pis in session.execute(query.order_by(RegistryRecord.hrn)):
                members = researchers if kind == "slice" else pis
                for member in dict.fromkeys(members or ()):
                    if member in found:
                        found[member][0 if kind == "slice" else 1].append(hrn)
        return {hrn: (tuple(slices), tuple(authorities)) for hrn, (slices, authorities) in found.items()}

    def recorded_hrns(self, kind: str | None = None) -> set[str]:
        """The HRNs of every record (of one type), read as one column: what start-up compares with before adding."""
        query = select(RegistryRecord.hrn)
        with self.database.read() as session:
            return set(session.scalars(query if kind is None else query.where(RegistryRecord.type == kind)))

    def of_type(self, kind: str) -> list[Record]:
        """Every record of one type (user, slice, node, authority), by HRN."""
        with self.database.read() as session:
            rows = session.scalars(
                select(RegistryRecord).where(RegistryRecord.type == kind).order_by(RegistryRecord.hrn)
            )
            return [_record(row) for row in rows]

    def remove(self, hrn: str, retire: bool = True) -> bool:
        """Remove a record and, in the same transaction, its HRN from every slice's researchers and every authority's
        PIs, and (a user or slice, with ``retire``) its local login from the account mapping (registry/accounts.py
        retire_login): whoever registers the name next must inherit neither the memberships nor the Unix account,
        nor (a user) the removed user's feed token, notification subscriptions or e-mail address, nor their leases,
        saved images and recorded events as their own: these name ``removed_holder`` from now on; nor (a slice) the
        users the aggregate's slice of that URN listed, with their SSH keys.
        ``retire=False`` only undoes a registration that failed (nobody held the name). False: no such record."""
        now = utcnow()
        with self.database.write() as session:
            row = session.scalar(select(RegistryRecord).where(RegistryRecord.hrn == hrn))
            if row is None:
                return False
            # Where the user's messages went (chosen addresses, the one on record): read before the rows go.
            addresses = addresses_of(session, row.urn) if retire and row.type == "user" else set()
            session.delete(row)
            if retire and row.type in ("user", "slice"):
                retire_login(session, row.urn, int(now.timestamp()))
            if retire and row.type == "user":
                # The aggregate's slices forget the user and the keys they sent: whoever registers the name next
                # (the same URN) must not get them in their login, nor have them taken for theirs (the AM's
                # geni_users rule). The removed user's retired account keeps what is in it until the operator
                # removes it (sfa-omf user remove says so).
                session.execute(delete(SliceUser).where(SliceUser.user_urn == row.urn))
                # Nor read the removed user's private feed (its token), nor have lease news go to the removed user's
                # e-mail address or webhook (subscriptions, the address of their last GID).
                for table in (FeedToken, NotifySubscription, UserContact):
                    session.execute(delete(table).where(table.user_urn == row.urn))
                # Nor get what was already queued for them (an e-mail waiting for the SMTP server, a webhook's
                # retries), unless another user still has that address.
                session.flush()
                drop_queued(session, row.urn, addresses, USER_REMOVED)
                # What they booked, saved or asked for stays for the record, as a removed user's: every reader compares
                # it with the URN of a viewer or recipient (their feed, /calendar/me, the web calendar's "mine", lease
                # news, the per-user limit, private images), and the next holder of the name has that URN.
                _mark_as_removed(session, row.urn, removed_holder(row.urn, now))
            if retire and row.type == "slice":
                # The aggregate's slice of that URN loses its users and their keys (a slice registered later under the
                # name would list them: accounts with their keys on its nodes), and its name: its leases run to their
                # end as a removed slice's, which the next holder of the name neither sees nor acts on (Status
                # listed them, Delete cancelled them).
                _mark_slice_members(session, row.urn, now)
                _rename_slice(session, row.urn, now)
            holders = session.scalars(select(RegistryRecord).where(RegistryRecord.type.in_(("slice", "authority"))))
            for holder in holders:
                researchers = [member for member in holder.researchers if member != hrn]
                pis = [pi for pi in holder.pis or [] if pi != hrn]
                if researchers != list(holder.researchers) or pis != list(holder.pis or []):
                    holder.researchers, holder.pis = researchers, pis
                    holder.updated_s = int(now.timestamp())
            return True

    def import_authority(
        self, authority: LocalAuthority, researchers: Mapping[str, Sequence[str]] | None = None
    ) -> int:
        """Record the authority and every GID it issued (gids/); ``researchers`` maps slice HRNs to member user HRNs.
        Idempotent: existing records are kept, researchers are merged. Run at every start of every worker: a GID
        file named by an HRN already recorded, with no researchers to merge, is not read (adding it would change
        nothing), so that a site of thousands of nodes starts in seconds. The number of GID files added or merged."""
        count = 0
        self.add(Record(authority.hrn, "authority", authority.urn, chain_pem(authority.chain)))
        recorded = self.recorded_hrns()
        gids_dir = os.path.join(authority.directory, "gids")
        for name in sorted(os.listdir(gids_dir)) if os.path.isdir(gids_dir) else []:
            if not name.endswith(".gid"):
                continue
            # The authority names each file by the HRN it issued it for (LocalAuthority.issue_gid).
            if name[: -len(".gid")] in recorded and not (researchers or {}).get(name[: -len(".gid")]):
                continue
            chain = load_gid_chain_file(os.path.join(gids_dir, name))
            leaf = chain[0]
            if leaf.name_problem is not None:  # issued before names were checked (a blank in a slice's name)
                log.warning(
                    "%s is not recorded: the name it gives is refused (%s); remove it, and its record if any "
                    "(sfa-omf user/slice remove), and register the name again without it",
                    os.path.join(gids_dir, name),
                    leaf.name_problem,
                )
                continue
            kind = leaf.type or "user"
            members = tuple((researchers or {}).get(leaf.hrn, ())) if kind == "slice" else ()
            try:
                self.add(Record(leaf.hrn, kind, leaf.urn or "", chain_pem(chain), leaf.email or "", (), members))
            except GeniError as exc:
                if exc.reason is Reason.ALREADY_EXISTS:
                    # A GID issued for a name another record holds but for case (credential issue --type slice).
                    log.warning(
                        "%s is not recorded: %s; remove the file if nobody uses it",
                        os.path.join(gids_dir, name),
                        exc.message,
                    )
                    continue
                if exc.reason is not Reason.BUSY:
                    raise
                # A GID issued for a name just removed (credential issue --type slice): recorded at the next start.
                log.warning("%s is not recorded yet: %s", os.path.join(gids_dir, name), exc)
                continue
            count += 1
        return count


def record_chain(record: Record) -> GidChain:
    return load_gid_chain(record.gid)
