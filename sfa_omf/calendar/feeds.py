"""What the iCal feeds need to remember: the revision each lease was last published at, and private feed tokens.

A calendar client replaces an event it holds only when the new one carries a higher SEQUENCE. The revision table
keeps, per lease, a fingerprint of what was published (web/ical.py ``fingerprint``: window, state, slice, booker,
label, the slice's members, its nodes' names and pools' federation) and its sequence: when a feed is made and a
lease's fingerprint differs, the sequence goes up by one and the change's time becomes the DTSTAMP. Nothing is
written while nothing changed, so reading feeds does not contend with bookings; and what is written does not bump
the calendar's generation (``LeaseRevisions._record``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from sfa_omf.calendar.database import Database, retry_raced, retry_transient
from sfa_omf.calendar.models import FeedToken, Lease, LeaseRevision, RegistryRecord, SliceUser
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.calendar.timeline import chunked
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import utcnow
from sfa_omf.xrn import urn_character_problem

#: Bytes of randomness in a feed token (URL-safe base64: 43 characters).
TOKEN_BYTES = 32


@dataclass(frozen=True)
class Revision:
    sequence: int
    stamp: datetime


class LeaseRevisions:
    """The published revision of each lease."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.database = database
        self.clock = clock

    def observe(self, fingerprints: Mapping[str, str]) -> dict[str, Revision]:
        """The revision of each lease given with its current fingerprint; changed or new ones are recorded."""
        if not fingerprints:
            return {}
        known = self._known(set(fingerprints))
        changed = {lease: fp for lease, fp in fingerprints.items() if lease not in known or known[lease][1] != fp}
        if changed:
            # Another request may record a first revision of one of these leases meanwhile (PostgreSQL): its row is
            # there then, so recording again compares with it. Feeds of overlapping leases (a node's, a slice's, a
            # user's) may each win one of the rows: as often as it takes, within bounds.
            known.update(
                retry_raced(lambda: retry_transient(lambda: self._record(changed)), "recording the feed's revisions")
            )
        return {lease: Revision(known[lease][0], from_s(known[lease][2])) for lease in fingerprints}

    def _known(self, lease_ids: set[str]) -> dict[str, tuple[int, str, int]]:
        known: dict[str, tuple[int, str, int]] = {}
        with self.database.read() as session:
            for chunk in chunked(lease_ids):  # a feed may name more leases than one statement takes
                rows = session.execute(
                    select(
                        LeaseRevision.lease_id, LeaseRevision.sequence, LeaseRevision.fingerprint, LeaseRevision.stamp_s
                    ).where(LeaseRevision.lease_id.in_(chunk))
                )
                known.update({lease: (sequence, fp, stamp) for lease, sequence, fp, stamp in rows})
        return known

    def _record(self, changed: Mapping[str, str]) -> dict[str, tuple[int, str, int]]:
        """Record these fingerprints (a new revision where one differs from the row's) in one unit of work that
        does not bump the calendar's generation: ``Database.write()`` would, and a feed read (anonymous, a GET) would
        throw away every process's cached answers (the advertisement). No cached answer reads the revisions: the
        feeds' events key on the revision itself (web/ical.py ``EventInputs``)."""
        now_s = to_s(self.clock())
        recorded: dict[str, tuple[int, str, int]] = {}
        with self.database.write_connection() as connection, Session(connection) as session:
            # Read again under the write lock: another request may have recorded the same change meanwhile.
            rows = {
                row.lease_id: row
                for chunk in chunked(changed)
                for row in session.scalars(
                    select(LeaseRevision).where(LeaseRevision.lease_id.in_(chunk)).with_for_update()
                )
            }
            for lease_id, fingerprint in changed.items():
                row = rows.get(lease_id)
                if row is None:
                    row = LeaseRevision(lease_id=lease_id, sequence=0, fingerprint=fingerprint, stamp_s=now_s)
                    session.add(row)
                elif row.fingerprint != fingerprint:
                    row.sequence += 1
                    row.fingerprint = fingerprint
                    row.stamp_s = now_s
                recorded[lease_id] = (row.sequence, row.fingerprint, row.stamp_s)
            session.flush()  # into the connection's transaction, which write_connection commits
        return recorded


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_user_urn(user_urn: str) -> None:
    """GeniError (BAD_ARGS) unless ``user_urn`` is a user's URN holding only characters a URN may hold
    (xrn.urn_character_problem)."""
    if not user_urn.startswith("urn:publicid:IDN+") or "+user+" not in user_urn:
        raise GeniError(Reason.BAD_ARGS, f"{user_urn!r} is not a user URN (urn:publicid:IDN+AUTHORITY+user+NAME)")
    problem = urn_character_problem(user_urn)  # a line break would be stored, and no certificate holds it
    if problem is not None:
        raise GeniError(Reason.BAD_ARGS, f"{problem}: give the user's URN as their certificate has it")


class FeedTokens:
    """Unguessable tokens of users' private feeds. A user has at most one; making a new one retires the old."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.database = database
        self.clock = clock

    def issue(self, user_urn: str) -> str:
        """A new token for this user (the old one, if any, stops working). Only its digest is stored."""
        check_user_urn(user_urn)
        token = secrets.token_urlsafe(TOKEN_BYTES)

        def replace_token() -> None:
            with self.database.write() as session:
                session.execute(delete(FeedToken).where(FeedToken.user_urn == user_urn))
                session.add(FeedToken(token_sha256=_digest(token), user_urn=user_urn, created_s=to_s(self.clock())))

        # PostgreSQL: another request for this user may insert its token meanwhile (one per user); deleting again
        # then sees it, so the next try replaces it.
        retry_raced(replace_token, "a new feed address")
        return token

    def known_user(self, user_urn: str) -> bool:
        """True when the local registry has this user, or a slice or a lease of the calendar names them (a foreign
        user who is a slice member, or booked here): someone whose private feed can hold anything."""
        with self.database.read() as session:
            registered = select(RegistryRecord.id).where(RegistryRecord.urn == user_urn, RegistryRecord.type == "user")
            member = select(SliceUser.id).where(SliceUser.user_urn == user_urn)
            owner = select(Lease.id).where(Lease.owner_urn == user_urn)
            return any(session.scalar(query.limit(1)) is not None for query in (registered, member, owner))

    def user_of(self, token: str) -> str | None:
        """The user whose feed this token opens, or None."""
        if not token or len(token) > 200:
            return None
        with self.database.read() as session:
            return session.scalar(select(FeedToken.user_urn).where(FeedToken.token_sha256 == _digest(token)))

    def revoke(self, user_urn: str) -> bool:
        """Retire a user's token; False if they had none."""
        with self.database.write() as session:
            return bool(session.execute(delete(FeedToken).where(FeedToken.user_urn == user_urn)).rowcount)  # type: ignore[attr-defined]
