"""The notifier: notices lease events and writes them to the outbox (``notice``), and delivers what is due
(``deliver``), retrying with exponential backoff. Both run as background tasks of the server, never in an AM call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.outbox import Message, Outbox
from sfa_omf.calendar.timeline import Timeline
from sfa_omf.notify.channels import DeliveryError, SmtpSettings, post_webhook, send_email
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
}


@dataclass(frozen=True)
class NotifySettings:
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    webhook_secret: str = ""
    lead: timedelta = timedelta(minutes=15)
    retry_base_s: int = 30  # first retry after this; doubles each time
    retry_max_s: int = 3600
    max_attempts: int = 12  # then the message is marked failed (the operator sees it in `notify status`)


class Notifier:
    def __init__(self, database: Database, settings: NotifySettings, clock: Callable[[], datetime] = utcnow) -> None:
        self.timeline = Timeline(database)
        self.outbox = Outbox(database, clock)
        self.settings = settings
        self.clock = clock

    def notice(self) -> int:
        """Write every event that happened (and is not in the outbox yet) for every subscribed recipient."""
        now = self.clock()
        events = lease_events(
            self.timeline.bookings(start=now - LOOK_BACK, include_inactive=True), now, self.settings.lead
        )
        if not events:
            return 0
        slices = {event.slice_urn for event in events}
        members = self.timeline.users_of_slices(slices)
        users = {user for event in events for user in _recipients(event, members)}
        subscriptions = self.outbox.subscriptions(sorted(users))
        messages = [
            Message(f"{event.key}:{channel}:{address}", event.event, channel, address, payload(event))
            for event in events
            for user in _recipients(event, members)
            for channel, address in subscriptions.get(user, [])
        ]
        return self.outbox.enqueue(messages)

    def deliver(self, limit: int = 100) -> int:
        """Deliver the due messages; how many were accepted. Failures are retried later (backoff), never raised."""
        sent = 0
        for message in self.outbox.due(limit):
            try:
                self.send(message)
            except DeliveryError as exc:
                retry = self.settings.retry_base_s * 2**message.attempts
                give_up = message.attempts + 1 >= self.settings.max_attempts
                self.outbox.mark_failed(
                    message.id, str(exc), None if give_up else min(retry, self.settings.retry_max_s)
                )
                log.warning("notification %s not delivered (%s)%s", message.key, exc, "; giving up" if give_up else "")
                continue
            self.outbox.mark_sent(message.id)
            sent += 1
        return sent

    def send(self, message: Message) -> None:
        """Hand one message to its channel (DeliveryError if it did not take it)."""
        if message.channel == "email":
            subject, text = email_text(message)
            send_email(self.settings.smtp, message.address, message.key, subject, text)
        else:
            post_webhook(
                message.address, message.key, {**message.payload, "key": message.key}, self.settings.webhook_secret
            )


def _recipients(event: LeaseEvent, members: dict[str, list[str]]) -> set[str]:
    users = set(members.get(event.slice_urn, ()))
    if event.owner_urn:
        users.add(event.owner_urn)
    return users


def payload(event: LeaseEvent) -> dict[str, object]:
    """The event as JSON-able data (the webhook's body; the e-mail's text is made from it)."""
    return {
        "event": event.event,
        "lease": event.lease_id,
        "slice": event.slice_urn,
        "nodes": list(event.nodes),
        "start": format_time(event.start),
        "end": format_time(event.end),
        "state": event.state,
    }


def email_text(message: Message) -> tuple[str, str]:
    """(subject, body) of a lease event's e-mail."""
    data = message.payload
    if message.event == "test":
        return "sfa-omf test message", "This is a test message from sfa-omf: notifications reach you here.\n"
    slice_name = str(data["slice"]).rsplit("+", 1)[-1]
    subject = f"[sfa-omf] lease of {slice_name} {SUBJECTS.get(message.event, message.event)}"
    nodes = ", ".join(str(node) for node in data["nodes"])
    body = (
        f"Your lease of slice {data['slice']} {SUBJECTS.get(message.event, message.event)}.\n\n"
        f"  window: {data['start']} .. {data['end']} (UTC)\n  nodes:  {nodes}\n  state:  {data['state']}\n"
        f"  lease:  {data['lease']}\n\nStop these messages: ask the operator (sfa-omf notify unsubscribe).\n"
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
) -> NotifySettings:
    """NotifySettings from the configuration's [sfa_notify] values."""
    return NotifySettings(
        smtp=SmtpSettings(smtp_host, smtp_port, starttls, user, password, sender),
        webhook_secret=webhook_secret,
        lead=timedelta(seconds=lead_s),
    )


def test_message(address: str) -> Message:
    """A one-off message to check a channel (``sfa-omf notify test``); its key is unique per call."""
    channel = "email" if "@" in address and not address.startswith("http") else "webhook"
    return Message(f"test:{format_time(utcnow())}:{address}", "test", channel, address, {"event": "test"})
