"""Slices as the calendar knows them: expiry, shut-down flag, and the users (with SSH keys) attached to them."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Insert, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, selectinload

from sfa_omf.calendar.database import Database, connection_of, retry_transient
from sfa_omf.calendar.models import Slice, SliceUser, UserContact
from sfa_omf.calendar.outbox import ADDRESS_CHANGED, addresses_of, drop_queued
from sfa_omf.calendar.plain_statements import PlainStatement, execute_plain
from sfa_omf.calendar.queries import from_s, lock_slice, table_of, to_s
from sfa_omf.calendar.records import SliceUserRecord
from sfa_omf.errors import GeniError, Reason


@dataclass(frozen=True)
class SliceRecord:
    urn: str
    expires: datetime
    shut_down: bool
    users: tuple[SliceUserRecord, ...]


def _record(slice_row: Slice) -> SliceRecord:
    return SliceRecord(
        urn=slice_row.urn,
        expires=from_s(slice_row.expires_s),
        shut_down=slice_row.shut_down,
        users=tuple(
            SliceUserRecord(user.user_urn, tuple(user.ssh_keys))
            for user in sorted(slice_row.users, key=lambda user: user.user_urn)
        ),
    )


def _find(session: Session, slice_urn: str) -> Slice:
    slice_row = session.scalar(
        select(Slice).where(Slice.urn == slice_urn).options(selectinload(Slice.users)).with_for_update()
    )
    if slice_row is None:
        raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has nothing here (it never booked on this aggregate)")
    return slice_row


def apply_users(slice_row: Slice, users: Mapping[str, Sequence[str]], replace: bool = False) -> None:
    """Merge ``users`` and their keys into the slice's (or, with ``replace``, make them exactly these), inside the
    caller's unit of work: a booking and the users sent with it are written together or not at all."""
    current = {user.user_urn: user for user in slice_row.users}
    if replace:
        for urn, user in current.items():
            if urn not in users:
                slice_row.users.remove(user)
    for urn, keys in users.items():
        cleaned = [key.strip() for key in keys if key.strip()]
        if urn in current:
            existing = current[urn]
            existing.ssh_keys = cleaned if replace else list(dict.fromkeys([*existing.ssh_keys, *cleaned]))
        else:
            slice_row.users.append(SliceUser(user_urn=urn, ssh_keys=list(dict.fromkeys(cleaned))))


@dataclass(frozen=True)
class Contact:
    """A caller's URN and the e-mail address in the GID they presented."""

    user_urn: str
    gid_email: str


def record_contact(session: Session, contact: Contact | None, now_s: int) -> None:
    """Keep the caller's GID e-mail (the default address of their lease e-mails), in the caller's unit of work. When
    it replaces another, what is still queued for the old one is not sent there (``replace_contact``)."""
    if contact is None or not contact.gid_email:
        return
    # One statement (an upsert): two first calls of the same user at once (Provision is not serialised per user
    # like Allocate) would otherwise both insert, and the second fail on the key. It writes a new user's e-mail, and
    # answers the one stored when it differs (that row is locked, left as it is); the same e-mail again: no row.
    parameters = {"user_urn": contact.user_urn, "gid_email": contact.gid_email, "updated_s": now_s}
    # On the connection, on the table: as an ORM-enabled statement it went through the ORM's bulk insert machinery,
    # several times the cost of the statement itself.
    connection = connection_of(session, writes=True)
    stored = execute_plain(connection, _contact_upsert(connection.dialect.name), parameters)
    if stored and stored[0][0] != contact.gid_email:  # (a new user's row answers the e-mail just written)
        replace_contact(session, contact, now_s)


def replace_contact(session: Session, contact: Contact, now_s: int) -> None:
    """The user's stored GID e-mail becomes ``contact``'s, and what is still queued for the address they no longer
    have (the old e-mail, when it was their default: no address chosen, none in the registry) is marked failed in
    this unit of work, as a changed registry e-mail is (registry/records.py)."""
    before = addresses_of(session, contact.user_urn)
    session.execute(
        update(UserContact)
        .where(UserContact.user_urn == contact.user_urn)
        .values(gid_email=contact.gid_email, updated_s=now_s)
    )
    drop_queued(session, contact.user_urn, before - addresses_of(session, contact.user_urn), ADDRESS_CHANGED)


@functools.lru_cache(maxsize=2)
def _contact_upsert(dialect: str) -> PlainStatement[Insert]:
    """``record_contact``'s statement for one dialect, with bound parameters, built once (Allocate runs it): the
    stored e-mail is answered where it differs, and not changed (the update sets a column to itself)."""
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    contacts = table_of(UserContact)
    statement = insert(contacts).values(
        user_urn=bindparam("user_urn"), gid_email=bindparam("gid_email"), updated_s=bindparam("updated_s")
    )
    return PlainStatement(
        statement.on_conflict_do_update(
            index_elements=[contacts.c.user_urn],
            set_={"updated_s": contacts.c.updated_s},
            where=contacts.c.gid_email != statement.excluded.gid_email,
        ).returning(contacts.c.gid_email)
    )


# Built once: building a statement costs more than running it (see booking._lease_query).
_SLICE_WITH_USERS = PlainStatement(
    select(Slice.expires_s, Slice.shut_down, SliceUser.user_urn, SliceUser.ssh_keys)
    .outerjoin(SliceUser, SliceUser.slice_id == Slice.id)
    .where(Slice.urn == bindparam("slice_urn"))
)


class Slices:
    def __init__(self, database: Database) -> None:
        self.database = database

    def holds(self, slice_urn: str) -> bool:
        """Whether the calendar has a record of the slice (it booked here, or was shut down here)."""
        return bool(self.database.fetch_all(_SLICE_WITH_USERS, {"slice_urn": slice_urn}))

    def get(self, slice_urn: str) -> SliceRecord:
        """The slice and its users, by user URN; one column query (Describe and Provision read it on every call)."""
        rows = self.database.fetch_all(_SLICE_WITH_USERS, {"slice_urn": slice_urn})
        if not rows:
            raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has nothing here")
        expires_s, shut_down = rows[0][0], rows[0][1]
        # Sorted here, not by SQL: PostgreSQL's collation may order URNs differently from Python's code points.
        users = tuple(
            sorted(
                (SliceUserRecord(user_urn, tuple(keys)) for _, _, user_urn, keys in rows if user_urn is not None),
                key=lambda user: user.user_urn,
            )
        )
        return SliceRecord(urn=slice_urn, expires=from_s(expires_s), shut_down=shut_down, users=users)

    def update_users(self, slice_urn: str, users: Mapping[str, Sequence[str]], replace: bool = False) -> SliceRecord:
        """Attach users and their SSH keys to a slice.

        Merging (the default, as geni_update_users and Provision do) adds users and keys and never drops one.
        ``replace`` makes the slice's users exactly these, with exactly these keys: what is not listed stops
        working at the next account update.
        """

        def unit_of_work() -> SliceRecord:
            with self.database.write() as session:
                lock_slice(session, slice_urn)  # an Allocate writing the slice's users meanwhile: one after the other
                slice_row = _find(session, slice_urn)
                apply_users(slice_row, users, replace)
                session.flush()
                return _record(slice_row)

        return retry_transient(unit_of_work)

    def set_shut_down(self, slice_urn: str, shut_down: bool, expires: datetime | None = None) -> SliceRecord:
        """Shut a slice down (it books nothing more) or release it (an operator's decision).

        A slice this aggregate has not seen yet is recorded when ``expires`` is given, so that shutting it down
        holds even before it ever booked here.
        """
        with self.database.write() as session:
            # After any booking of the slice under way (same lock): Shutdown then sees and cancels its lease, and a
            # booking after it sees the slice shut down.
            lock_slice(session, slice_urn)
            slice_row = session.scalar(select(Slice).where(Slice.urn == slice_urn).options(selectinload(Slice.users)))
            if slice_row is None and expires is not None:
                slice_row = Slice(urn=slice_urn, expires_s=to_s(expires), shut_down=shut_down, users=[])
                session.add(slice_row)
                session.flush()
            if slice_row is None:
                raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has nothing here")
            slice_row.shut_down = shut_down
            return _record(slice_row)
