"""The notifier: notices lease events (and the recorded ones of alerts.py) and writes them to the outbox
(``notice``), and delivers what is due (``deliver``), retrying with exponential backoff. Both run as background tasks
of the server, never in an AM call. Several notifiers may share one database: each delivers only what it claimed.
Its pass also deletes what is past retention (``prune``): recorded events after EVENT_RETENTION, messages sent or
failed for good after OUTBOX_RETENTION."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import NotifySubscription
from sfa_omf.calendar.outbox import MAX_KEY, Message, NotifyEvents, Outbox, RecordedEvent
from sfa_omf.calendar.timeline import Timeline
from sfa_omf.cluster.leadership import LeadershipLost
from sfa_omf.notify.alerts import BACKEND_STATES, CANCEL_REASON
from sfa_omf.notify.channels import (
    OPERATOR_SUBSCRIBER,
    DeliveryError,
    SmtpSettings,
    SmtpUnavailable,
    WebhookUnavailable,
    origin,
    post_webhook,
    send_email,
    shown_webhook,
    subscription_secret,
)
from sfa_omf.notify.events import LeaseEvent, lease_events
from sfa_omf.times import format_time, utcnow

log = logging.getLogger("sfa_omf.notify")

#: Leases that ended longer ago than this are not looked at (a first start does not mail last month's news).
LOOK_BACK = timedelta(days=1)

SUBJECTS = {
    "allocated": "booked",
    "provisioned": "provisioned",
    "starting_soon": "starts soon",
    "started": "has started",
    "ending_soon": "ends soon",
    "ended": "has ended",
    "cancelled": "cancelled",
    "failed": "failed on the testbed",
    "node_maintenance": "is affected: a node goes into maintenance",
}
STOP = (
    "Stop these messages: on the aggregate's page /calendar/me (in a browser presenting your GENI certificate), "
    "or ask the operator (sfa-omf notify unsubscribe).\n"
)
#: Recorded events are deleted this long after they were recorded (the notifier reads only the last LOOK_BACK; the
#: margin leaves them to an operator's look for a week). Those whose key still keeps a notice from being sent again
#: stay (NotifyEvents.prune).
EVENT_RETENTION = LOOK_BACK + timedelta(days=7)
#: Messages sent (or failed for good) are deleted this long after; those of a lease the notifier still reads stay
#: (Outbox.prune). Pending messages are never deleted.
OUTBOX_RETENTION = timedelta(days=30)
#: How often the notifier's pass deletes what is past retention; sooner while a pass stopped at its bound.
PRUNE_PERIOD = timedelta(hours=1)
#: Units of work (of outbox.PRUNE_BATCH rows each) a pass spends on each table at most.
PRUNE_BATCHES = 20
#: Messages claimed at a time; the claim lasts long enough to try each of them against a silent server.
CLAIM_BATCH = 10
#: Messages a round keeps claimed, untried, for the next round (their origin used its time this round) at most; then
#: the round ends. Its later claims skip an origin that used its time (``_Skipped``), so each held message is the first
#: of its webhook URL's spelling seen after that: this bounds a round on very many URLs of slow origins.
MAX_HELD = 1000


@dataclass(frozen=True)
class NotifySettings:
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    # [sfa_notify] webhook_key: never sent nor shown; each subscription's secret derives from it (subscription_secret)
    webhook_secret: str = field(default="", repr=False)
    webhook_timeout_s: float = 10  # a webhook's whole exchange ends by this
    # Wall time a round waits on one webhook origin at most (then its other messages wait for the next round); a
    # post begun before it is used up may end a time-out later.
    webhook_origin_budget_s: float = 10
    lead: timedelta = timedelta(minutes=15)
    retry_base_s: int = 30  # first retry after this; doubles each time
    retry_max_s: int = 3600
    max_attempts: int = 12  # then the message is marked failed (the operator sees it in `notify status`)
    operator_urns: frozenset[str] = frozenset()  # operators' events go to these users' subscriptions ...
    operator_addresses: tuple[str, ...] = ()  # ... and to these e-mail addresses and webhook URLs
    email_by_default: bool = True  # users who chose no e-mail address (and did not opt out) get it at the one on record


class Notifier:
    def __init__(self, database: Database, settings: NotifySettings, clock: Callable[[], datetime] = utcnow) -> None:
        self.timeline = Timeline(database)
        self.outbox = Outbox(database, clock)
        self.recorded = NotifyEvents(database)
        self.settings = settings
        self.clock = clock
        # Who holds a claim on outbox rows: unique per notifier, readable in the table when debugging.
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        # Webhook origins (scheme://host:port) that were unreachable or silent: origin -> (not tried again before,
        # failures in a row). Kept across rounds: each dead receiver costs one time-out per its own backoff, not one
        # per round, however many messages are due to it (a round waited for each dead origin in turn).
        self._origins_down: dict[str, tuple[datetime, int]] = {}
        # When the pass deletes what is past retention next, and the id each table's deletion goes on from.
        self._next_prune: datetime | None = None
        self._pruned_up_to = (0, 0)
        self._shared_warned: set[str] = set()  # webhook URLs of several users already warned of (once a process)

    def notice(self) -> int:
        """Write every event that happened (and is not in the outbox yet) for every subscribed recipient; then, when
        it is due, delete what is past retention (``prune``)."""
        added = self._notice()
        self._prune_when_due()
        return added

    def _prune_when_due(self) -> None:
        now = self.clock()
        if self._next_prune is not None and now < self._next_prune:
            return
        self._next_prune = now + PRUNE_PERIOD  # also after a failure: one warning an hour, not one a round
        try:
            more = self.prune()
        except LeadershipLost:  # another process leads: the task stops, Leadership logs it
            raise
        except Exception:  # the notices and deliveries go on; the next pass tries again
            log.exception("could not delete old notifications; will try again")
            return
        if more:
            self._next_prune = now

    def prune(self) -> bool:
        """Delete the recorded events older than EVENT_RETENTION and the messages sent or failed for good more than
        OUTBOX_RETENTION ago, except those whose presence still keeps a notice from being sent again (the newest
        down/recovered state of a backend, the events and messages of leases the notifier still reads); at most
        PRUNE_BATCHES short units of work per table. True if rows past retention may remain (the next call goes on
        from where this one stopped)."""
        now = self.clock()
        live_after = now - LOOK_BACK  # the leases notice() reads
        events_from, messages_from = self._pruned_up_to
        events = self.recorded.prune(now - EVENT_RETENTION, live_after, BACKEND_STATES, PRUNE_BATCHES, events_from)
        messages = self.outbox.prune(now - OUTBOX_RETENTION, live_after, PRUNE_BATCHES, messages_from)
        self._pruned_up_to = (events.last, messages.last)
        if events.deleted or messages.deleted:
            log.info("deleted %d old notification event(s) and %d old message(s)", events.deleted, messages.deleted)
        return events.more or messages.more

    def _notice(self) -> int:
        now = self.clock()
        events = lease_events(
            self.timeline.bookings(start=now - LOOK_BACK, include_inactive=True), now, self.settings.lead
        )
        recorded = self.recorded.since(now - LOOK_BACK)
        # Notes of why a lease was cancelled and by whom (read after the calendar: written before the cancellation,
        # so a lease seen cancelled has its note here): part of the lease's ``cancelled`` message, never sent alone.
        notes = {str(e.payload.get("lease")): e.payload for e in recorded if e.event == CANCEL_REASON}
        recorded = [e for e in recorded if e.event != CANCEL_REASON]
        if not events and not recorded:
            return 0
        slices = {event.slice_urn for event in events} | {e.slice_urn for e in recorded if e.slice_urn}
        members = self.timeline.users_of_slices(slices)
        wanted: list[tuple[str, str, set[str], dict[str, object]]] = [  # (key, event, users, payload)
            (event.key, event.event, _recipients(event, members), payload(event, notes.get(event.lease_id)))
            for event in events
        ]
        wanted += [(e.key, e.event, self._recorded_recipients(e, members), e.payload) for e in recorded]
        subscriptions = self._subscriptions(sorted({user for _, _, users, _ in wanted for user in users}))
        messages: list[Message] = []
        # Message key -> the users it is for: the outbox adds it only if one of them still has its address when it
        # commits (an opt-out, a new address or a removal may commit between the read above and the enqueue).
        recipients: dict[str, set[str]] = {}
        for key, event, users, body in wanted:
            for channel, address in _channels(users, subscriptions):
                message = Message(message_key(key, channel, address), event, channel, address, body)
                messages.append(message)
                recipients.setdefault(message.key, set()).update(users)
        for e in recorded:
            if e.slice_urn is not None:
                continue
            for address in self.settings.operator_addresses:  # the configuration's: for no user, not checked
                channel = channel_of(address)
                message = Message(message_key(e.key, channel, address), e.event, channel, address, e.payload)
                messages.append(message)
                recipients.pop(message.key, None)
        return self.outbox.enqueue(messages, recipients, self.settings.email_by_default)

    def _subscriptions(self, users: list[str]) -> dict[str, list[tuple[str, str]]]:
        """The channels of these users: what they chose, and (``email_by_default``) e-mail at the address on record
        for those who chose none and did not opt out."""
        chosen = self.outbox.subscriptions(users)
        if self.settings.email_by_default:
            for user, address in self.outbox.email_defaults(users).items():
                chosen.setdefault(user, []).append(("email", address))
        return chosen

    def _recorded_recipients(self, event: RecordedEvent, members: dict[str, list[str]]) -> set[str]:
        if event.slice_urn is None:
            return set(self.settings.operator_urns)
        users = set(members.get(event.slice_urn, ()))
        for who in ("caller", "owner"):  # who asked (a refused renewal), who booked (a lease's news)
            user = event.payload.get(who)
            if isinstance(user, str) and user:
                users.add(user)
        return users

    def deliver(self, limit: int = 100) -> int:
        """Deliver the due messages this notifier claims (at most ``limit`` tried); how many were accepted. Failures
        are retried later (backoff), never raised. Fair between receivers: each webhook origin gets at most
        ``webhook_origin_budget_s`` of the round's waiting, then its other messages wait untried (attempts untouched)
        for the next round while the others' go on; within a claimed batch, origins take turns."""
        sent = tried = 0
        smtp_down = False
        failed_this_round: set[str] = set()  # webhook origins that did not answer in this round
        forgotten = self.clock() - timedelta(seconds=self.settings.retry_max_s)
        self._origins_down = {origin: down for origin, down in self._origins_down.items() if down[0] > forgotten}
        hold_s = int(CLAIM_BATCH * (max(self.settings.smtp.timeout_s, self.settings.webhook_timeout_s) + 5))
        waited: dict[str, float] = {}  # webhook origin -> seconds this round waited on it
        served: dict[str, int] = {}  # origin ("email" for all e-mails) -> messages tried this round
        # Messages whose origin used its time: kept claimed (so this round's later claims skip them) and released,
        # due at once, when the round ends, for the next round (here or in another process) to take.
        held: dict[int, Message] = {}
        # The webhooks of origins that used their time: this round's later claims leave their messages in the queue
        # (else a long queue to one slow receiver filled the round with held messages, and a message of another
        # user queued behind them waited for rounds on end).
        skipped = _Skipped()
        try:
            while tried < limit and len(held) < MAX_HELD:
                batch = self.outbox.claim(
                    self.owner, min(CLAIM_BATCH, limit - tried), hold_s, skipped.addresses, skipped.prefixes
                )
                if not batch:
                    break
                for message in _taking_turns(batch, served):
                    origin = webhook_origin(message.address) if message.channel == "webhook" else ""
                    if origin and waited.get(origin, 0.0) >= self.settings.webhook_origin_budget_s:
                        held[message.id] = message  # (a claim of ours that expired and came back: held once)
                        skipped.add(message.address)
                        continue
                    tried += 1
                    served[origin or "email"] = served.get(origin or "email", 0) + 1
                    if smtp_down and message.channel == "email":
                        # The server did not answer this round: each e-mail would wait for it in turn, ahead of the
                        # webhooks. The next round tries again; this message's attempts are untouched.
                        self.outbox.postpone(message.id, self.owner, self.settings.retry_base_s)
                        continue
                    if origin and (origin in failed_this_round or self._resting(origin)):
                        # The same for a webhook's origin: one silent receiver would hold every other user's messages
                        # its time-out per message (and its own failed message, due again, would be tried again).
                        self.outbox.postpone(message.id, self.owner, self._rest_left_s(origin))
                        continue
                    started = time.monotonic()
                    try:
                        sent += self._deliver_one(message)
                    except SmtpUnavailable:
                        smtp_down = True
                    except WebhookUnavailable:
                        self._origin_failed(origin)
                        failed_this_round.add(origin)
                    else:
                        self._origins_down.pop(origin, None)
                    finally:
                        if origin:  # a slow answer counts as much as a silent one
                            waited[origin] = waited.get(origin, 0.0) + time.monotonic() - started
                            if waited[origin] >= self.settings.webhook_origin_budget_s:
                                skipped.add(message.address)
        except BaseException:
            self._release(held, quiet=True)  # (else their claims expire after hold_s)
            raise
        self._release(held)
        return sent

    def _release(self, held: Mapping[int, Message], quiet: bool = False) -> None:
        """Give back the held messages untried, due at once (attempts untouched). ``quiet``: on the way out of a
        failed round, whose own error is the one raised (claims not given back expire after their hold)."""
        if not held:
            return
        log.info(
            "%d notification(s) wait for the next round: their webhook used its time in this one (%s)",
            len(held),
            ", ".join(sorted({shown_webhook(message.address) for message in held.values()})),
        )
        try:
            self.outbox.release(held, self.owner)  # one unit of work (it was one per message)
        except Exception:
            if not quiet:
                raise
            log.warning("could not release held notifications; their claims expire", exc_info=True)

    def _resting(self, origin: str) -> bool:
        """True while a webhook origin that did not answer is held back (its backoff)."""
        return self._rest_left_s(origin) > 0

    def _rest_left_s(self, origin: str) -> int:
        down = self._origins_down.get(origin)
        return 0 if down is None else max(0, math.ceil((down[0] - self.clock()).total_seconds()))

    def _origin_failed(self, origin: str) -> None:
        """The origin did not answer: held back for retry_base_s, doubled with each failure in a row."""
        _, failures = self._origins_down.get(origin, (self.clock(), 0))
        rest_s = min(self.settings.retry_base_s * 2**failures, self.settings.retry_max_s)
        self._origins_down[origin] = (self.clock() + timedelta(seconds=rest_s), failures + 1)

    def _deliver_one(self, message: Message) -> int:
        """1 if the channel took the message, else 0 (marked for a retry or given up); SmtpUnavailable (after
        marking it) when the SMTP server could not be reached, WebhookUnavailable (likewise) when the webhook's host
        could not be reached or did not answer in time."""
        try:
            self.send(message)
        except DeliveryError as exc:
            retry = self.settings.retry_base_s * 2**message.attempts
            give_up = message.attempts + 1 >= self.settings.max_attempts
            self.outbox.mark_failed(
                message.id, self.owner, str(exc), None if give_up else min(retry, self.settings.retry_max_s)
            )
            log.warning(
                "notification %s not delivered (%s)%s", shown_key(message), exc, "; giving up" if give_up else ""
            )
            if isinstance(exc, (SmtpUnavailable, WebhookUnavailable)):
                raise
            return 0
        except Exception as exc:  # a message that cannot even be written: trying again would fail again
            self.outbox.mark_failed(message.id, self.owner, f"cannot be sent: {exc}", None)
            log.exception("notification %s cannot be sent; given up", shown_key(message))
            return 0
        if not self.outbox.mark_sent(message.id, self.owner):
            log.warning(
                "notification %s was delivered after its claim expired (a repeat is possible)", shown_key(message)
            )
        return 1

    def send(self, message: Message) -> None:
        """Hand one message to its channel (DeliveryError if it did not take it)."""
        if message.channel == "email":
            subject, text = email_text(message)
            send_email(self.settings.smtp, message.address, message.key, subject, text)
        else:
            key = shown_key(message)
            # Signed now, with the current time, on every try (post_webhook's default timestamp): a retry after an
            # hour's backoff keeping the first try's time would fall outside every receiver's freshness window and
            # be refused for ever; the body is the same on every try, and its key lets receivers drop a repeat.
            post_webhook(
                message.address,
                key,
                {**message.payload, "key": key},
                self.webhook_secrets(message.address),
                timeout_s=self.settings.webhook_timeout_s,
                public_only=self.may_be_self_service(message.address),
            )

    def webhook_secrets(self, url: str) -> list[str]:
        """The secrets a POST to this webhook is signed with (``subscription_secret``), read when it is sent: one per
        user whose webhook it is now (usually one; an outbox row serves every user of its address), and the
        operators' (``OPERATOR_SUBSCRIBER``) when it is one of ``[sfa_notify] operators`` or nobody chose it (a
        ``notify test``). Never the site's key itself. None without a webhook_key."""
        site_key = self.settings.webhook_secret
        if not site_key:
            return []
        with self.outbox.database.read() as session:
            users = sorted(
                set(
                    session.scalars(
                        select(NotifySubscription.user_urn).where(
                            NotifySubscription.channel == "webhook", NotifySubscription.address == url
                        )
                    )
                )
            )
        if len(users) > 1 and url not in self._shared_warned:
            # Written before a second subscriber was refused (Outbox.subscribe): kept working, but each of them can
            # sign what the others' receiver accepts.
            self._shared_warned.add(url)
            log.warning(
                "webhook %s is the subscription of %d users: each one's events reach it signed with every one's "
                "secret; all but its owner should set a URL of their own (sfa-omf notify subscribe)",
                shown_webhook(url),
                len(users),
            )
        if not users or url in self.settings.operator_addresses:
            users.append(OPERATOR_SUBSCRIBER)
        return [subscription_secret(site_key, user, url) for user in users]

    def may_be_self_service(self, url: str) -> bool:
        """Whether a webhook may have been set by a user (``/calendar/me``), so it may reach public addresses only.
        Users can set https:// URLs only (check_self_service_webhook), so an http:// URL is an operator's; so are the
        URLs of ``[sfa_notify] operators``. An operator's https:// webhook to an internal host must be listed there
        (or given as http://)."""
        return url.startswith("https://") and url not in self.settings.operator_addresses


class _Skipped:
    """The webhooks a round's claims leave (``Outbox.claim``): those of origins that used their time. A URL's text up
    to the end of its host and port and the next ``/``, ``?`` or ``#`` (``https://a.example/``): every URL beginning
    with that text has that origin (``https://a.example.org/...`` does not begin with it). A URL without such an end,
    or that urlsplit reads otherwise than its text, is left exactly. Another spelling of the same origin
    (``https://a.example:443/``) is claimed once more, then left too."""

    def __init__(self) -> None:
        self.addresses: set[str] = set()
        self.prefixes: set[str] = set()

    def add(self, url: str) -> None:
        try:
            parts = urlsplit(url)
        except ValueError:
            self.addresses.add(url)
            return
        start = f"{parts.scheme}://{parts.netloc}"
        if parts.netloc and url.startswith(start) and url[len(start) : len(start) + 1] in ("/", "?", "#"):
            self.prefixes.add(url[: len(start) + 1])
        else:
            self.addresses.add(url)


def _taking_turns(batch: list[Message], served: Mapping[str, int]) -> list[Message]:
    """The batch in turns by origin (``webhook_origin``; all e-mails one): each origin's first message, then each
    one's second, ... (queue order within a turn), origins served less this round (``served``) first. One user's many
    messages then delay another's by one message each, not by all of them."""
    seen: dict[str, int] = {}
    order: list[tuple[int, int, Message]] = []
    for position, message in enumerate(batch):
        key = webhook_origin(message.address) if message.channel == "webhook" else "email"
        turn = served.get(key, 0) + seen.get(key, 0)
        seen[key] = seen.get(key, 0) + 1
        order.append((turn, position, message))
    return [message for _, _, message in sorted(order, key=lambda item: item[:2])]


def shown_key(message: Message) -> str:
    """The message's key as logged and sent (X-SFA-OMF-Event): a webhook's URL in it shown as its origin
    (``scheme://host[:port]``), since its path or query often holds a token, followed by ``#`` and the first 12 hex
    digits of the whole URL's SHA-256, so that two webhooks at one origin (two users' tokens at one provider) get
    distinct keys. The same on every retry."""
    if message.channel == "webhook" and message.key.endswith(message.address):
        return f"{message.key[: len(message.key) - len(message.address)]}{shown_webhook(message.address)}"
    return message.key


def webhook_origin(url: str) -> str:
    """The webhook's origin with its port always written (``https://h`` and ``https://h:443`` are one receiver): what
    one unreachable receiver holds back in a delivery round."""
    shown = origin(url)
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # malformed: post_webhook refuses it before connecting anywhere
        return shown
    return shown if shown.endswith(f":{port}") else f"{shown}:{port}"


def message_key(event_key: str, channel: str, address: str) -> str:
    """The outbox key of an event's message to one address: ``event key:channel:address``; one longer than the
    table's column (a long slice URN and a long URL) keeps the event key's start and a digest of the whole, the same
    on every round (and never shows the URL)."""
    key = f"{event_key}:{channel}:{address}"
    if len(key) <= MAX_KEY:
        return key
    return f"{event_key[:200]}:{channel}:sha256:{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def _recipients(event: LeaseEvent, members: dict[str, list[str]]) -> set[str]:
    users = set(members.get(event.slice_urn, ()))
    if event.owner_urn:
        users.add(event.owner_urn)
    return users


def _channels(users: set[str], subscriptions: dict[str, list[tuple[str, str]]]) -> set[tuple[str, str]]:
    """The (channel, address) pairs of these users (one message per address, even if two users share it)."""
    return {pair for user in users for pair in subscriptions.get(user, [])}


def channel_of(address: str) -> str:
    """email for an e-mail address, webhook for anything else (a URL; check_address says what is wrong)."""
    return "email" if "@" in address and not address.startswith("http") else "webhook"


def payload(event: LeaseEvent, note: Mapping[str, Any] | None = None) -> dict[str, object]:
    """The event as JSON-able data (the webhook's body; the e-mail's text is made from it). ``note``: why the lease
    was cancelled and by whom (``Alerts.cancelling``), for its ``cancelled`` event: added as ``cancelled_by``,
    ``reason`` and ``summary`` (a cancellation with no note, the users' own Delete or an expiry, has none)."""
    data: dict[str, object] = {
        "event": event.event,
        "lease": event.lease_id,
        "slice": event.slice_urn,
        "nodes": list(event.nodes),
        "start": format_time(event.start),
        "end": format_time(event.end),
        "state": event.state,
    }
    if event.event == "cancelled" and note is not None:
        by, cause, advice = (" ".join(str(note.get(name, "")).split()) for name in ("by", "cause", "advice"))
        data["cancelled_by"] = by
        data["reason"] = f"cancelled by {by}: {cause}" + (f". {advice}" if advice else "")
        data["summary"] = f"lease of {_slice_name(event.slice_urn)} cancelled by {by}: {cause}"
    return data


def _slice_name(slice_urn: str) -> str:
    """The slice's name, on one line (a slice URN is the caller's text and may hold a line break)."""
    return " ".join(slice_urn.rsplit("+", 1)[-1].split())


def email_text(message: Message) -> tuple[str, str]:
    """(subject, body) of a lease event's e-mail."""
    data = message.payload
    if message.event == "test":
        return "sfa-omf test message", "This is a test message from sfa-omf: notifications reach you here.\n"
    if message.event == "reconciler_repaired" and isinstance(data.get("text"), str):  # the backend's own words
        return f"[sfa-omf] {' '.join(str(data['summary']).split())}", (
            f"{data['summary']} ({data['backend']}).\n\n{data['text']}\n{STOP}"
        )
    if "summary" in data and "lease" not in data:  # a recorded event (alerts.py): its summary, then its details
        details = "".join(f"  {name}: {value}\n" for name, value in sorted(data.items()) if name != "summary")
        # A header holds one line: an error's text may have several (EmailMessage refuses a line break).
        return f"[sfa-omf] {' '.join(str(data['summary']).split())}", f"{data['summary']}.\n\n{details}\n{STOP}"
    # One line, as for a recorded event's summary: a slice URN is the caller's text and may hold a line break.
    subject = f"[sfa-omf] lease of {_slice_name(str(data['slice']))} {SUBJECTS.get(message.event, message.event)}"
    if "summary" in data:  # a lease's event that says more (cancelled by the operator): its summary
        subject = f"[sfa-omf] {' '.join(str(data['summary']).split())}"
    nodes = ", ".join(str(node) for node in data["nodes"])
    reason = f"  why:    {data['reason']}\n" if data.get("reason") else ""  # the testbed's or operator's words
    body = (
        f"Your lease of slice {data['slice']} {SUBJECTS.get(message.event, message.event)}.\n\n"
        f"  window: {data['start']} .. {data['end']} (UTC)\n  nodes:  {nodes}\n  state:  {data['state']}\n"
        f"  lease:  {data['lease']}\n{reason}\n{STOP}"
    )
    return subject, body


def notify_settings(
    smtp_host: str,
    smtp_port: int,
    starttls: bool,
    user: str,
    password: str,
    sender: str,
    webhook_secret: str,
    lead_s: int,
    operator_urns: frozenset[str] = frozenset(),
    operator_addresses: tuple[str, ...] = (),
    email_by_default: bool = True,
    tls: bool = False,
    webhook_timeout_s: float = 10,
    webhook_origin_budget_s: float = 10,
) -> NotifySettings:
    """NotifySettings from the configuration's [sfa_notify] values (``tls``: smtp_tls)."""
    return NotifySettings(
        smtp=SmtpSettings(smtp_host, smtp_port, starttls, user, password, sender, tls=tls),
        webhook_secret=webhook_secret,
        lead=timedelta(seconds=lead_s),
        operator_urns=operator_urns,
        operator_addresses=operator_addresses,
        email_by_default=email_by_default,
        webhook_timeout_s=webhook_timeout_s,
        webhook_origin_budget_s=webhook_origin_budget_s,
    )


def test_message(address: str) -> Message:
    """A one-off message to check a channel (``sfa-omf notify test``); its key is unique per call."""
    return Message(f"test:{format_time(utcnow())}:{address}", "test", channel_of(address), address, {"event": "test"})
