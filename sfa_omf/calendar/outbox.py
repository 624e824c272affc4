"""The notifications' outbox and subscriptions, in the calendar's database (so an event is recorded with the same
durability as the calendar, and survives restarts and crashes).

Exactly once: every message has a unique key (event key + channel + address); enqueuing a message already there does
nothing, so noticing the same event again (after a restart, or in two processes) adds no second message. A notifier
*claims* the messages it is about to deliver (``claim``: on PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED``, on
SQLite under the write lock; the claim is the notifier's id and an expiry), so two notifiers on one database never
deliver the same message; a crashed notifier's claims expire and another takes the rows up. A message is marked sent
as soon as its channel accepted it. The one window for a repeat is a crash between the channel accepting and that
mark (or a delivery slower than the claim); the message then carries the same key again (Message-ID,
X-SFA-OMF-Event) so receivers can drop it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sfa_omf.addresses import is_public_address
from sfa_omf.calendar.database import Database, retry_raced
from sfa_omf.calendar.models import (
    Lease,
    Node,
    NotifyEvent,
    NotifyOutbox,
    NotifySubscription,
    RegistryRecord,
    Slice,
    Sliver,
    UserContact,
)
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.calendar.records import CHANNELS
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import format_time, utcnow

#: The address of an e-mail opt-out row: the user wants no e-mail, not even at the address on record.
OPTED_OUT = ""
#: The longest address (e-mail or webhook URL) and message key the tables hold (models.NotifyOutbox).
MAX_ADDRESS = 500
MAX_KEY = 600
#: PostgreSQL advisory lock class (the other number is a hash of a user's URN, ``lock_recipients``) of the units of work
#: that take addresses from a user (``drop_queued``) and of the enqueue that checks its users still have them. Two
#: numbers: a key space of their own, apart from the one-number keys of slices and bookers (calendar/queries.py).
RECIPIENT_LOCK_CLASS = 0x5F0B
#: PostgreSQL advisory lock class (the other number is a hash of a webhook URL, ``_lock_webhook``) of the subscriptions
#: to one URL: two users subscribing it at once cannot both find it free.
WEBHOOK_LOCK_CLASS = 0x5F0E
#: What a user is told when the webhook URL they chose is another user's (not whose: the URL is all they know).
WEBHOOK_TAKEN = "this URL is already another user's webhook; use a URL of your own"


@dataclass(frozen=True)
class Message:
    """One message for one recipient."""

    key: str
    event: str
    channel: str
    address: str
    payload: dict[str, Any]
    attempts: int = 0
    id: int = 0


@dataclass(frozen=True)
class OutboxCounts:
    pending: int
    sent: int
    failed: int


class Outbox:
    """Messages waiting for delivery, and who wants which."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.database = database
        self.clock = clock

    # -- subscriptions --------------------------------------------------------------------------------------------
    def subscribe(self, user_urn: str, channel: str, address: str) -> None:
        """Opt a user in to a channel (replacing that channel's address). A webhook URL another user holds is refused
        (BAD_ARGS, WEBHOOK_TAKEN; nothing written): a POST to a URL is signed with the secret of each of its
        subscribers, so a second subscriber's events would reach the first one's receiver signed validly for it."""
        if channel not in CHANNELS:
            raise GeniError(Reason.BAD_ARGS, f"channel {channel!r}: use one of {', '.join(CHANNELS)}")
        if "+user+" not in user_urn:
            raise GeniError(Reason.BAD_ARGS, f"{user_urn!r} is not a user URN (urn:publicid:IDN+AUTHORITY+user+NAME)")
        check_address(channel, address)
        # Again when another request for the same user and channel inserted its row meanwhile (PostgreSQL refuses the
        # second row: a double click on the page, or the page and the command at once): the next try replaces it.
        retry_raced(lambda: self._subscribe(user_urn, channel, address), "the subscription change")

    def _subscribe(self, user_urn: str, channel: str, address: str) -> None:
        with self.database.write() as session:
            if channel == "webhook":
                _lock_webhook(session, address)  # before the read: a concurrent subscription to it committed first
                if _used_by_another(session, user_urn, channel, address):
                    raise GeniError(Reason.BAD_ARGS, WEBHOOK_TAKEN)
            before = addresses_of(session, user_urn)
            session.execute(
                delete(NotifySubscription).where(
                    NotifySubscription.user_urn == user_urn, NotifySubscription.channel == channel
                )
            )
            session.add(NotifySubscription(user_urn=user_urn, channel=channel, address=address))
            session.flush()
            # What was queued for the address replaced (or the one on record) is not sent there any more.
            drop_queued(session, user_urn, before - addresses_of(session, user_urn), ADDRESS_CHANGED)

    def unsubscribe(self, user_urn: str, channel: str) -> bool:
        """Opt a user out of a channel; False if they had no address of their own on it. For e-mail an opt-out is
        kept (a row without address): the default address on record (``email_defaults``) is not used either."""
        return retry_raced(lambda: self._unsubscribe(user_urn, channel), "the subscription change")  # (as subscribe)

    def _unsubscribe(self, user_urn: str, channel: str) -> bool:
        with self.database.write() as session:
            before = addresses_of(session, user_urn)
            result = session.execute(
                delete(NotifySubscription).where(
                    NotifySubscription.user_urn == user_urn,
                    NotifySubscription.channel == channel,
                    NotifySubscription.address != OPTED_OUT,
                )
            )
            if channel == "email" and not session.scalar(
                select(NotifySubscription.id).where(
                    NotifySubscription.user_urn == user_urn, NotifySubscription.channel == channel
                )
            ):
                session.add(NotifySubscription(user_urn=user_urn, channel=channel, address=OPTED_OUT))
            session.flush()
            # "It stays off": what was queued for the channel (retries included) is not sent either.
            drop_queued(session, user_urn, before - addresses_of(session, user_urn), UNSUBSCRIBED)
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def subscriptions(self, user_urns: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """user -> [(channel, address)] these users chose (an opt-out is not a subscription)."""
        found: dict[str, list[tuple[str, str]]] = {}
        if not user_urns:
            return found
        with self.database.read() as session:
            rows = session.execute(
                select(NotifySubscription.user_urn, NotifySubscription.channel, NotifySubscription.address).where(
                    NotifySubscription.user_urn.in_(set(user_urns)), NotifySubscription.address != OPTED_OUT
                )
            )
            for user, channel, address in rows:
                found.setdefault(user, []).append((channel, address))
        return found

    def email_defaults(self, user_urns: Sequence[str]) -> dict[str, str]:
        """user -> the address on record, for those of these users who neither chose an e-mail address nor opted
        out: the local registry's record, else the e-mail in the GID they presented here (Allocate, Provision).
        Column queries; an address that is not one is left out."""
        if not user_urns:
            return {}
        with self.database.read() as session:
            return _email_defaults(session, set(user_urns))

    # -- the outbox -----------------------------------------------------------------------------------------------
    def enqueue(
        self,
        messages: Sequence[Message],
        recipients: Mapping[str, Collection[str]] | None = None,
        email_by_default: bool = True,
    ) -> int:
        """Add the messages not already there, in one unit of work; how many were new. Should a racer add one of the
        same keys meanwhile (the unique key refuses ours), they are added one by one instead.

        ``recipients``: message key -> the users it is for. Such a message is added only if one of them has its
        address at this commit (chosen, or with ``email_by_default`` the e-mail on record: ``current_addresses``),
        checked in this unit of work under their locks (``lock_recipients``), which every change taking an address
        from a user takes too (``drop_queued``): an opt-out, a replaced address or a removal committed after the
        caller read the subscriptions is seen here, and one committed after this check sees the rows added here.
        A message not listed (an operator's address from the configuration) is added as it is."""
        if not messages:
            return 0
        wanted_by = recipients or {}
        try:
            with self.database.write() as session:
                return self._insert_new(session, messages, wanted_by, email_by_default)
        except IntegrityError:
            added = 0
            for message in messages:
                try:
                    with self.database.write() as session:
                        added += self._insert_new(session, [message], wanted_by, email_by_default)
                except IntegrityError:
                    continue  # another process enqueued this key meanwhile: already there
            return added

    def _insert_new(
        self,
        session: Session,
        messages: Sequence[Message],
        recipients: Mapping[str, Collection[str]],
        email_by_default: bool,
    ) -> int:
        now_s = to_s(self.clock())
        wanted = {message.key: message for message in messages}
        known: set[str] = set()
        keys = list(wanted)
        for first in range(0, len(keys), 500):  # bounded IN lists
            known.update(
                session.scalars(select(NotifyOutbox.key).where(NotifyOutbox.key.in_(keys[first : first + 500])))
            )
        new = [message for key, message in wanted.items() if key not in known]
        if any(message.key in recipients for message in new):  # (a round with nothing new checks nothing)
            new = _still_wanted(session, new, recipients, email_by_default)
        session.add_all(
            NotifyOutbox(
                key=message.key,
                event=message.event,
                channel=message.channel,
                address=message.address,
                payload=message.payload,
                state="pending",
                attempts=0,
                next_attempt_s=now_s,
                created_s=now_s,
                last_error="",
            )
            for message in new
        )
        session.flush()
        return len(new)

    def due(self, limit: int = 100) -> list[Message]:
        """Pending messages whose next attempt is due and that no notifier holds, oldest first (reads only; a
        notifier delivers what it ``claim``-ed)."""
        with self.database.read() as session:
            return self._due(session, to_s(self.clock()), limit, lock=False)

    def claim(
        self,
        owner: str,
        limit: int,
        hold_s: int,
        skip_addresses: Collection[str] = (),
        skip_prefixes: Collection[str] = (),
    ) -> list[Message]:
        """Take up to ``limit`` due messages for ``owner`` to deliver: no other claim gets them for ``hold_s``
        seconds (then a notifier that died with them is taken over). Atomic: concurrent claims share nothing.
        Webhook messages whose address is one of ``skip_addresses`` or begins with one of ``skip_prefixes`` are
        left for others (a round's origins that used their time): exact text comparisons, no pattern."""
        now_s = to_s(self.clock())
        with self.database.write() as session:
            messages = self._due(session, now_s, limit, lock=True, skipped=_skipped(skip_addresses, skip_prefixes))
            if messages:
                session.execute(
                    update(NotifyOutbox)
                    .where(NotifyOutbox.id.in_([message.id for message in messages]))
                    .values(claimed_by=owner, claim_until_s=now_s + hold_s)
                )
            return messages

    @staticmethod
    def _due(
        session: Session, now_s: int, limit: int, lock: bool, skipped: ColumnElement[bool] | None = None
    ) -> list[Message]:
        query = (
            select(
                NotifyOutbox.id,
                NotifyOutbox.key,
                NotifyOutbox.event,
                NotifyOutbox.channel,
                NotifyOutbox.address,
                NotifyOutbox.payload,
                NotifyOutbox.attempts,
            )
            .where(
                NotifyOutbox.state == "pending",
                NotifyOutbox.next_attempt_s <= now_s,
                or_(NotifyOutbox.claim_until_s.is_(None), NotifyOutbox.claim_until_s <= now_s),
            )
            .order_by(NotifyOutbox.id)
            .limit(limit)
        )
        if skipped is not None:
            query = query.where(~skipped)
        if lock:  # PostgreSQL: rows another claim is taking are skipped, not waited for (SQLite: the write lock)
            query = query.with_for_update(skip_locked=True)
        return [
            Message(key, event, channel, address, payload, attempts, row_id)
            for row_id, key, event, channel, address, payload, attempts in session.execute(query)
        ]

    def mark_sent(self, message_id: int, owner: str) -> bool:
        """The channel took the message; False (and nothing written) if ``owner`` no longer holds its claim."""
        with self.database.write() as session:
            result = session.execute(
                update(NotifyOutbox)
                .where(NotifyOutbox.id == message_id, NotifyOutbox.claimed_by == owner)
                .values(
                    state="sent",
                    attempts=NotifyOutbox.attempts + 1,
                    sent_s=to_s(self.clock()),
                    last_error="",
                    claimed_by=None,
                    claim_until_s=None,
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def mark_failed(self, message_id: int, owner: str, error: str, retry_in_s: int | None) -> bool:
        """A delivery failed: try again in retry_in_s, or give up (None); the claim is released. False (and nothing
        written) if ``owner`` no longer holds the claim."""
        values: dict[str, Any] = {
            "attempts": NotifyOutbox.attempts + 1,
            "last_error": error[:2000],
            "claimed_by": None,
            "claim_until_s": None,
        }
        if retry_in_s is None:
            values["state"] = "failed"
        else:
            values["next_attempt_s"] = to_s(self.clock()) + retry_in_s
        with self.database.write() as session:
            result = session.execute(
                update(NotifyOutbox)
                .where(NotifyOutbox.id == message_id, NotifyOutbox.claimed_by == owner)
                .values(**values)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def postpone(self, message_id: int, owner: str, delay_s: int) -> bool:
        """Release a claimed message untried, due again in ``delay_s`` (its attempts unchanged); False (and nothing
        written) if ``owner`` no longer holds its claim."""
        with self.database.write() as session:
            result = session.execute(
                update(NotifyOutbox)
                .where(NotifyOutbox.id == message_id, NotifyOutbox.claimed_by == owner)
                .values(next_attempt_s=to_s(self.clock()) + delay_s, claimed_by=None, claim_until_s=None)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def release(self, message_ids: Collection[int], owner: str) -> int:
        """Give back claimed messages untried, due at once (their attempts unchanged), in one statement per
        RELEASE_BATCH of them, one unit of work; those ``owner`` no longer holds are left alone. How many were."""
        ids = sorted(message_ids)
        released = 0
        if not ids:
            return 0
        with self.database.write() as session:
            for first in range(0, len(ids), RELEASE_BATCH):
                result = session.execute(
                    update(NotifyOutbox)
                    .where(NotifyOutbox.id.in_(ids[first : first + RELEASE_BATCH]), NotifyOutbox.claimed_by == owner)
                    .values(next_attempt_s=to_s(self.clock()), claimed_by=None, claim_until_s=None)
                )
                released += result.rowcount  # type: ignore[attr-defined]
        return released

    def prune(self, before: datetime, live_after: datetime, batches: int, after: int = 0) -> Pruned:
        """Delete the messages sent before ``before``, and those failed for good and queued before it, oldest first
        from id ``after`` on, in at most ``batches`` units of work of PRUNE_BATCH rows. Pending messages stay. Kept
        too: the messages of a lease (their key begins with its id) that ends after ``live_after``: the notifier
        still reads that lease, and its row's key is what keeps a message from being queued (and sent) again."""
        before_s, live_after_s = to_s(before), to_s(live_after)
        past = or_(
            and_(NotifyOutbox.state == "sent", NotifyOutbox.sent_s < before_s),
            and_(NotifyOutbox.state == "failed", NotifyOutbox.created_s < before_s),
        )
        return _prune(
            self.database,
            NotifyOutbox,
            past,
            lambda session, rows: _of_live_leases(session, rows, live_after_s),
            batches,
            after,
        )

    def counts(self) -> OutboxCounts:
        with self.database.read() as session:
            states = list(session.scalars(select(NotifyOutbox.state)))
        return OutboxCounts(states.count("pending"), states.count("sent"), states.count("failed"))

    def next_attempt(self, message_id: int) -> datetime | None:
        with self.database.read() as session:
            row = session.get(NotifyOutbox, message_id)
            return None if row is None or row.state != "pending" else from_s(row.next_attempt_s)


#: Why queued messages were given up unsent (``last_error`` of their outbox rows): the user changed their channels.
UNSUBSCRIBED = "not sent: the user unsubscribed"
ADDRESS_CHANGED = "not sent: the user changed this address"
USER_REMOVED = "not sent: the user was removed from the registry"


def _email_defaults(session: Session, wanted: set[str]) -> dict[str, str]:
    """Outbox.email_defaults in this unit of work."""
    found: dict[str, str] = {}
    chose = set(
        session.scalars(
            select(NotifySubscription.user_urn).where(
                NotifySubscription.user_urn.in_(wanted), NotifySubscription.channel == "email"
            )
        )
    )
    wanted = wanted - chose
    if not wanted:
        return found
    presented = session.execute(
        select(UserContact.user_urn, UserContact.gid_email).where(UserContact.user_urn.in_(wanted))
    )
    registered = session.execute(
        select(RegistryRecord.urn, RegistryRecord.email).where(
            RegistryRecord.urn.in_(wanted), RegistryRecord.type == "user", RegistryRecord.email != ""
        )
    )
    for user, address in [*presented, *registered]:  # the registry's record wins over the GID's
        try:
            check_address("email", address)
        except GeniError:
            continue
        found[user] = address
    return found


def addresses_of(session: Session, user_urn: str) -> set[tuple[str, str]]:
    """The (channel, address) pairs the user's messages may go to now, read in this unit of work: the addresses they
    chose, and e-mail at the address on record if they neither chose one nor opted out (``email_defaults``; taken
    whatever ``[sfa_notify] email_by_default`` says, which this layer does not know)."""
    return current_addresses(session, [user_urn], email_by_default=True).get(user_urn, set())


def current_addresses(
    session: Session, user_urns: Iterable[str], email_by_default: bool
) -> dict[str, set[tuple[str, str]]]:
    """user -> the (channel, address) pairs their messages may go to now, read in this unit of work: the addresses
    they chose, and (``email_by_default``) e-mail at the address on record for those who neither chose one nor opted
    out. Users with none are left out."""
    found: dict[str, set[tuple[str, str]]] = {}
    users = sorted(set(user_urns))
    for first in range(0, len(users), 500):  # bounded IN lists
        chunk = users[first : first + 500]
        rows = session.execute(
            select(NotifySubscription.user_urn, NotifySubscription.channel, NotifySubscription.address).where(
                NotifySubscription.user_urn.in_(chunk), NotifySubscription.address != OPTED_OUT
            )
        )
        for user, channel, address in rows:
            found.setdefault(user, set()).add((channel, address))
        if email_by_default:
            for user, address in _email_defaults(session, set(chunk)).items():
                found.setdefault(user, set()).add(("email", address))
    return found


def lock_recipients(session: Session, user_urns: Iterable[str]) -> None:
    """PostgreSQL: take these users' recipient locks (RECIPIENT_LOCK_CLASS) until the end of the transaction, in the
    order of their keys (never in a cycle), each statement after the other: a read that follows sees what every
    earlier holder committed. SQLite's write lock (BEGIN IMMEDIATE) serializes these units of work already."""
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = sorted({_recipient_key(urn) for urn in user_urns})
    for first in range(0, len(keys), 100):  # PostgreSQL evaluates a select list in order
        locks = [func.pg_advisory_xact_lock(RECIPIENT_LOCK_CLASS, key) for key in keys[first : first + 100]]
        session.execute(select(*locks))


def _lock_webhook(session: Session, url: str) -> None:
    """PostgreSQL: take the lock of subscriptions to this webhook URL (WEBHOOK_LOCK_CLASS) until the end of the
    transaction (SQLite's write lock serializes them already). Taken before any recipient lock, and only here."""
    if session.get_bind().dialect.name != "postgresql":
        return
    key = int.from_bytes(hashlib.sha256(url.encode("utf-8")).digest()[:4], "big", signed=True)
    session.execute(select(func.pg_advisory_xact_lock(WEBHOOK_LOCK_CLASS, key)))


def _skipped(addresses: Collection[str], prefixes: Collection[str]) -> ColumnElement[bool] | None:
    """The webhook messages a claim leaves (``Outbox.claim``): address equal to one of ``addresses`` or beginning
    with one of ``prefixes`` (compared as text, by length: no LIKE, whose wildcards a URL may hold)."""
    by_length: dict[int, set[str]] = {}
    for prefix in prefixes:
        by_length.setdefault(len(prefix), set()).add(prefix)
    matches: list[ColumnElement[bool]] = [
        func.substr(NotifyOutbox.address, 1, length).in_(sorted(texts)) for length, texts in sorted(by_length.items())
    ]
    if addresses:
        matches.append(NotifyOutbox.address.in_(sorted(set(addresses))))
    if not matches:
        return None
    return and_(NotifyOutbox.channel == "webhook", or_(*matches))


def _recipient_key(user_urn: str) -> int:
    return int.from_bytes(hashlib.sha256(user_urn.encode("utf-8")).digest()[:4], "big", signed=True)


def _still_wanted(
    session: Session, messages: Sequence[Message], recipients: Mapping[str, Collection[str]], email_by_default: bool
) -> list[Message]:
    """Those of ``messages`` that one of their users (``recipients``) has the address of at this commit, or that have
    no users listed (Outbox.enqueue)."""
    users = {user for message in messages for user in recipients.get(message.key, ())}
    lock_recipients(session, users)  # before the read: it sees every change that took the lock first
    current = current_addresses(session, users, email_by_default)
    return [
        message
        for message in messages
        if message.key not in recipients
        or any((message.channel, message.address) in current.get(user, ()) for user in recipients[message.key])
    ]


def drop_queued(session: Session, user_urn: str, dropped: set[tuple[str, str]], reason: str) -> int:
    """In the unit of work that took these (channel, address) pairs from the user (an opt-out, a replaced address,
    the user's removal), mark the messages still pending for them failed with ``reason``, so that no notifier sends
    them after it commits (nor before: it is one commit). An address another user still has (chose, or has on
    record) keeps its messages: an outbox row does not say for whom it is, and one row serves every user of an
    address. A row a notifier is sending at this moment keeps its claim: if the channel takes it, it is marked sent
    (it did go), else it stays failed. How many rows were marked.

    On PostgreSQL it takes the user's recipient lock first (``lock_recipients``), as an enqueue of messages for the
    user does before it checks their addresses: an enqueue that checked before this change committed commits its
    rows first, and they are marked here (SQLite's write lock serializes the two already)."""
    marked = 0
    if dropped:
        lock_recipients(session, [user_urn])
    for channel, address in sorted(dropped):  # one order in every process: concurrent changes do not deadlock
        if _used_by_another(session, user_urn, channel, address):
            continue
        result = session.execute(
            update(NotifyOutbox)
            .where(
                NotifyOutbox.channel == channel,
                NotifyOutbox.address == address,
                NotifyOutbox.state == "pending",
            )
            .values(state="failed", last_error=reason)
        )
        marked += result.rowcount  # type: ignore[attr-defined]
    return marked


def _used_by_another(session: Session, user_urn: str, channel: str, address: str) -> bool:
    """Whether a user other than ``user_urn`` has this address on this channel now (chosen, or e-mail on record)."""
    chosen = session.scalar(
        select(NotifySubscription.id)
        .where(
            NotifySubscription.channel == channel,
            NotifySubscription.address == address,
            NotifySubscription.user_urn != user_urn,
        )
        .limit(1)
    )
    if chosen is not None:
        return True
    if channel != "email":
        return False
    on_record = set(
        session.scalars(
            select(RegistryRecord.urn).where(
                RegistryRecord.type == "user", RegistryRecord.email == address, RegistryRecord.urn != user_urn
            )
        )
    )
    on_record.update(
        session.scalars(
            select(UserContact.user_urn).where(UserContact.gid_email == address, UserContact.user_urn != user_urn)
        )
    )
    return bool(on_record) and address in _email_defaults(session, on_record).values()


@dataclass(frozen=True)
class RecordedEvent:
    """An event that is not a lease's state (see models.NotifyEvent): to a slice's users, or (no slice) to the
    operators."""

    key: str
    event: str
    slice_urn: str | None
    payload: dict[str, Any]
    created: datetime
    id: int = 0


def add_event(session: Session, event: RecordedEvent) -> bool:
    """Record the event in this unit of work (with the change it is about) unless its key is there; True if added."""
    if session.scalar(select(NotifyEvent.id).where(NotifyEvent.key == event.key)) is not None:
        return False
    session.add(
        NotifyEvent(
            key=event.key,
            event=event.event,
            slice_urn=event.slice_urn,
            payload=event.payload,
            created_s=to_s(event.created),
        )
    )
    return True


@dataclass(frozen=True)
class LeaseNews:
    """What to tell a lease's users about it (a recorded event of the lease: ``failed``, ``node_maintenance``), in
    the unit of work that records the change it is about. ``key`` is unique per occurrence."""

    event: str
    key: str
    reason: str


def add_lease_event(session: Session, lease_id: str, news: LeaseNews, now: datetime) -> bool:
    """Record ``news`` about the lease (its slice, owner, window and nodes read in this unit of work) unless its key
    is there; False also when the lease is unknown."""
    row = session.execute(
        select(Slice.urn, Lease.owner_urn, Lease.start_s, Lease.end_s, Lease.state)
        .join(Slice, Slice.id == Lease.slice_id)
        .where(Lease.id == lease_id)
    ).first()
    if row is None:
        return False
    slice_urn, owner_urn, start_s, end_s, state = row
    nodes = sorted(
        session.scalars(
            select(Node.component_id).join(Sliver, Sliver.node_id == Node.id).where(Sliver.lease_id == lease_id)
        )
    )
    return add_event(
        session,
        RecordedEvent(
            key=news.key,
            event=news.event,
            slice_urn=slice_urn,
            payload={
                "event": news.event,
                "lease": lease_id,
                "slice": slice_urn,
                "owner": owner_urn,
                "nodes": nodes,
                "start": format_time(from_s(start_s)),
                "end": format_time(from_s(end_s)),
                "state": state,
                "reason": news.reason,
            },
            created=now,
        ),
    )


class NotifyEvents:
    """The recorded events: written where they happen, read by the notifier."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def record(self, event: RecordedEvent) -> bool:
        """Record the event in a unit of work of its own; False if its key was there (or a racer added it)."""
        try:
            with self.database.write() as session:
                return add_event(session, event)
        except IntegrityError:
            return False

    def since(self, start: datetime) -> list[RecordedEvent]:
        """The events recorded from ``start`` on, oldest first."""
        with self.database.read() as session:
            rows = session.execute(
                select(*_EVENT_COLUMNS).where(NotifyEvent.created_s >= to_s(start)).order_by(NotifyEvent.id)
            )
            return [_recorded(row) for row in rows]

    def last(self, events: Sequence[str], key_prefix: str) -> RecordedEvent | None:
        """The newest recorded event of these kinds whose key starts with ``key_prefix`` (e.g. a backend's state)."""
        with self.database.read() as session:
            row = session.execute(
                select(*_EVENT_COLUMNS)
                .where(NotifyEvent.event.in_(events), NotifyEvent.key.startswith(key_prefix, autoescape=True))
                .order_by(NotifyEvent.id.desc())
                .limit(1)
            ).first()
        return None if row is None else _recorded(row)

    def prune(
        self, before: datetime, live_after: datetime, states: Collection[str], batches: int, after: int = 0
    ) -> Pruned:
        """Delete the events recorded before ``before`` (retention: the notifier reads only its last day), oldest
        first from id ``after`` on, in at most ``batches`` units of work of PRUNE_BATCH rows. Kept, since their key,
        present, is what keeps them from being recorded and sent again: an event of a lease (its key begins with the
        lease's id) whose lease ends after ``live_after`` (the notifier's window), and the newest event of each state
        of ``states`` (kinds keyed ``<state's prefix><kind>:after:<id>``, alerts.py: a backend's down/recovered,
        whose newest says what was last told). An outbox message does not need its event: it holds its payload."""
        live_after_s = to_s(live_after)

        def kept(session: Session, rows: Sequence[tuple[int, str, str]]) -> set[int]:
            keep = _of_live_leases(session, rows, live_after_s)
            prefixes = {_state_prefix(key, event) for _, key, event in rows if event in states}
            for prefix in sorted(prefix for prefix in prefixes if prefix is not None):
                keep.add(
                    session.scalar(
                        select(func.max(NotifyEvent.id)).where(
                            NotifyEvent.event.in_(states), NotifyEvent.key.startswith(prefix, autoescape=True)
                        )
                    )
                    or 0
                )
            return keep

        return _prune(self.database, NotifyEvent, NotifyEvent.created_s < to_s(before), kept, batches, after)


def _state_prefix(key: str, event: str) -> str | None:
    """The state's prefix of a state event's key (``<prefix><event>:after:<id>``); None for another key."""
    at = key.rfind(f"{event}:after:")
    return key[:at] if at >= 0 else None


@dataclass(frozen=True)
class Pruned:
    """What a retention pass over a table did: rows deleted; ``more``: it stopped at its bound, rows past retention
    may remain after id ``last`` (the next pass goes on from there)."""

    deleted: int
    more: bool
    last: int


#: Rows one unit of work of a retention pass looks at (and deletes) at most: a first pass over a large table holds no
#: long transaction, and the writers it shares the database with wait for one short batch at most.
PRUNE_BATCH = 500
#: Claimed messages given back in one statement (``Outbox.release``): a round holds at most notifier.MAX_HELD.
RELEASE_BATCH = 1000


def _prune(
    database: Database,
    model: type[NotifyEvent] | type[NotifyOutbox],
    past: ColumnElement[bool],
    kept: Callable[[Session, Sequence[tuple[int, str, str]]], set[int]],
    batches: int,
    after: int,
) -> Pruned:
    """Delete the rows of ``model`` matching ``past``, except those ``kept`` names among each batch's (id, key,
    event), in at most ``batches`` units of work of PRUNE_BATCH rows by ascending id from ``after``. Column queries
    and a Core delete; each unit of work is a write (fenced, in a background task: a process that no longer leads
    deletes nothing)."""
    deleted = 0
    for _ in range(batches):
        with database.write() as session:
            rows = [
                (row_id, key, event)
                for row_id, key, event in session.execute(
                    select(model.id, model.key, model.event)
                    .where(past, model.id > after)
                    .order_by(model.id)
                    .limit(PRUNE_BATCH)
                )
            ]
            if rows:
                after = rows[-1][0]
                keep = kept(session, rows)
                doomed = [row_id for row_id, _, _ in rows if row_id not in keep]
                if doomed:
                    result = session.execute(delete(model).where(model.id.in_(doomed)))
                    deleted += result.rowcount  # type: ignore[attr-defined]
        if len(rows) < PRUNE_BATCH:
            return Pruned(deleted, more=False, last=0)
    return Pruned(deleted, more=True, last=after)


def _of_live_leases(session: Session, rows: Sequence[tuple[int, str, str]], live_after_s: int) -> set[int]:
    """The ids of those rows whose key begins with the id of a lease ending after ``live_after_s``: the notifier
    still reads that lease (its window), so it would notice (or record) the same key again were the row gone."""
    first = {row_id: key.split(":", 1)[0] for row_id, key, _ in rows}
    candidates = {lease_id for lease_id in first.values() if 0 < len(lease_id) <= LEASE_ID_CHARS}
    if not candidates:
        return set()
    live = set(session.scalars(select(Lease.id).where(Lease.id.in_(candidates), Lease.end_s > live_after_s)))
    return {row_id for row_id, lease_id in first.items() if lease_id in live}


#: The longest lease id (models.Lease.id, a UUID).
LEASE_ID_CHARS = 36


_EVENT_COLUMNS = (
    NotifyEvent.key,
    NotifyEvent.event,
    NotifyEvent.slice_urn,
    NotifyEvent.payload,
    NotifyEvent.created_s,
    NotifyEvent.id,
)


def _recorded(row: Any) -> RecordedEvent:
    key, event, slice_urn, payload, created_s, row_id = row
    return RecordedEvent(key, event, slice_urn, payload, from_s(created_s), row_id)


#: Unicode categories of characters no address, form field or key holds: controls (a NUL, a line break), formatting
#: characters (bidi overrides, zero-width ones: invisible, they make one text display as another) and the line and
#: paragraph separators.
UNFIT_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def unfit_character_problem(text: str, what: str) -> str | None:
    """The first control or formatting character of ``text``, said for a person ("character 2 of the address is a
    control character (U+0000); ..."); None when there is none. A NUL is refused by PostgreSQL (a database failure,
    where it is the caller's input), stored by SQLite; the others would reach e-mail headers, webhooks and log lines."""
    for index, char in enumerate(text):
        category = unicodedata.category(char)
        if category in UNFIT_CATEGORIES:
            kind = "a formatting character" if category == "Cf" else "a control character or line break"
            name = unicodedata.name(char, "")
            shown = f"{name} (U+{ord(char):04X})" if name else f"U+{ord(char):04X}"
            return f"character {index + 1} of {what} is {shown}, {kind}; it holds none"
    return None


def check_address(channel: str, address: str) -> None:
    """An e-mail address or an http(s) URL, as the channel needs; GeniError saying what is wrong otherwise."""
    problem = unfit_character_problem(address, "the address")
    if problem is not None:
        raise GeniError(Reason.BAD_ARGS, f"{problem}: give the address without it")
    if channel == "email":
        local, _, domain = address.partition("@")
        # One address: a separator or an angle bracket would make several recipients, or a header of its own.
        several = any(c.isspace() or c in ',;<>"' for c in address) or "@" in domain
        if not local or "." not in domain.strip(".") or several or len(address) > 254:
            raise GeniError(Reason.BAD_ARGS, f"{address!r} is not an e-mail address (name@example.org)")
    elif not (address.startswith("http://") or address.startswith("https://")) or any(c.isspace() for c in address):
        raise GeniError(Reason.BAD_ARGS, f"{address!r} is not a webhook URL (http:// or https://)")
    elif len(address) > MAX_ADDRESS:  # PostgreSQL would refuse it as a database failure
        raise GeniError(Reason.BAD_ARGS, f"a webhook URL has at most {MAX_ADDRESS} characters, not {len(address)}")


def check_self_service_webhook(address: str) -> None:
    """A webhook a user sets for themselves (the web page): https only, and not to this host or a private,
    link-local or reserved address given literally, so users cannot make the aggregate post inside its own network.
    Numeric hosts in legacy forms (``127.1``, ``2130706433``) and IPv6 forms of such addresses (``[::ffff:10.0.0.1]``,
    ``[64:ff9b::7f00:1]``) are refused too. Operators may still subscribe such URLs with ``sfa-omf notify subscribe``
    (as http://, or listed in ``[sfa_notify] operators``). Names are not resolved here: the notifier resolves them
    when it sends, and posts only to public addresses (``post_webhook``'s ``public_only``)."""
    check_address("webhook", address)
    parts = urlsplit(address)
    host = (parts.hostname or "").rstrip(".").lower()
    if parts.scheme != "https" or not host:
        raise GeniError(Reason.BAD_ARGS, f"{address!r}: a webhook you set yourself must be an https:// URL")
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    # inet_aton takes the legacy numeric forms too (127.1, 2130706433, 0x7f000001, 0177.0.0.1, 0), which resolvers
    # turn into addresses: only an address written the usual way (and public) is taken.
    legacy_numeric = literal is None and _inet_aton_accepts(host)
    inside = (
        host == "localhost"
        or host.endswith(".localhost")
        or legacy_numeric
        or (literal is not None and not is_public_address(literal))
    )
    if inside:
        raise GeniError(
            Reason.BAD_ARGS,
            f"{address!r}: a webhook you set yourself must reach a public address, not {host} (ask the operator)",
        )


def _inet_aton_accepts(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True
