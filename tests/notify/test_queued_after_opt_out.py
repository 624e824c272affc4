"""Messages already queued in the outbox (an e-mail waiting for a down SMTP server, a webhook's retries) are not sent
to an address its user no longer has: after an opt-out, a replaced address (chosen or on record), the user's removal
from the registry. Unless another user still has that address. A real SMTP server (aiosmtpd) and a real HTTP
receiver on 127.0.0.1, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sfa_omf.calendar.outbox import ADDRESS_CHANGED, UNSUBSCRIBED, USER_REMOVED, Outbox
from sfa_omf.notify.notifier import Notifier
from sfa_omf.registry.records import Record, Records
from tests.calendar.conftest import NOW
from tests.notify.conftest import ALICE, Booked, Receiver, SmtpServer, outbox_rows, smtp_notifier
from tests.ports import free_port

BOB = "urn:publicid:IDN+testbed+user+bob"
ALICE_HRN = "testbed.alice"


def queue_undelivered(booked: Booked, note: Notifier) -> None:
    """The lease's "allocated" news is queued and its first delivery fails (the peers are down or refuse)."""
    assert note.notice() >= 1
    assert note.deliver() == 0
    assert outbox_rows(booked)[0][1] == "pending"


def retry_later(booked: Booked, note: Notifier) -> int:
    """Thirty seconds on (the first retry is due): notice again and deliver; how many were sent."""
    booked.clock[0] = NOW + timedelta(seconds=30)
    note.notice()
    return note.deliver()


def test_an_email_queued_before_the_opt_out_is_not_sent(booked: Booked) -> None:
    port = free_port()  # nothing listens yet: the SMTP server is down
    Outbox(booked.database).subscribe(ALICE, "email", "alice@example.org")
    note = smtp_notifier(booked, port)
    queue_undelivered(booked, note)
    assert Outbox(booked.database).unsubscribe(ALICE, "email")  # what `notify unsubscribe` and /calendar/me call
    server = SmtpServer(port).start()
    try:
        assert retry_later(booked, note) == 0
        assert server.mailbox.messages == [], "it stays off: the queued e-mail went out after the opt-out"
        assert outbox_rows(booked) == [("alice@example.org", "failed", UNSUBSCRIBED)]
    finally:
        server.stop()


def test_an_email_queued_for_the_address_on_record_is_not_sent_after_the_opt_out(booked: Booked) -> None:
    """A user mailed by default (no address of their own) who turns e-mail off."""
    Records(booked.database).add(Record(ALICE_HRN, "user", ALICE, "", email="alice@lab.example.org"))
    port = free_port()
    note = smtp_notifier(booked, port)
    queue_undelivered(booked, note)
    assert not Outbox(booked.database).unsubscribe(ALICE, "email")  # no address of her own: an opt-out is written
    server = SmtpServer(port).start()
    try:
        assert retry_later(booked, note) == 0
        assert server.mailbox.messages == []
        assert outbox_rows(booked) == [("alice@lab.example.org", "failed", UNSUBSCRIBED)]
    finally:
        server.stop()


def test_a_replaced_webhook_gets_no_retries(booked: Booked, receiver: Receiver) -> None:
    old, new = receiver.url + "?token=old", receiver.url + "?token=new"
    Outbox(booked.database).subscribe(ALICE, "webhook", old)
    note = smtp_notifier(booked, free_port())
    receiver.status = 503
    queue_undelivered(booked, note)
    Outbox(booked.database).subscribe(ALICE, "webhook", new)  # the user replaces the URL
    receiver.status = 200
    assert retry_later(booked, note) == 1
    assert len(receiver.received) == 1, "the old URL kept getting the retries"
    assert outbox_rows(booked) == [(old, "failed", ADDRESS_CHANGED), (new, "sent", "")]


def test_a_changed_address_on_record_gets_nothing_queued(booked: Booked) -> None:
    """The registry's record of the user (their default e-mail address) changes (Update, ``sfa-omf user``)."""
    Records(booked.database).add(Record(ALICE_HRN, "user", ALICE, "", email="alice@old.example.org"))
    port = free_port()
    note = smtp_notifier(booked, port)
    queue_undelivered(booked, note)
    Records(booked.database).update(ALICE_HRN, email="alice@new.example.org")
    server = SmtpServer(port).start()
    try:
        assert retry_later(booked, note) == 1
        assert [str(message["To"]) for message in server.mailbox.messages] == ["alice@new.example.org"]
        assert outbox_rows(booked) == [
            ("alice@old.example.org", "failed", ADDRESS_CHANGED),
            ("alice@new.example.org", "sent", ""),
        ]
    finally:
        server.stop()


def test_a_removed_user_gets_nothing_queued(booked: Booked, receiver: Receiver) -> None:
    Records(booked.database).add(Record(ALICE_HRN, "user", ALICE, "", email="alice@lab.example.org"))
    Outbox(booked.database).subscribe(ALICE, "webhook", receiver.url)
    port = free_port()
    note = smtp_notifier(booked, port)
    receiver.status = 503
    queue_undelivered(booked, note)
    assert Records(booked.database).remove(ALICE_HRN)
    receiver.status = 200
    server = SmtpServer(port).start()
    try:
        assert retry_later(booked, note) == 0
        assert server.mailbox.messages == [] and receiver.received == []
        assert sorted(outbox_rows(booked)) == [
            ("alice@lab.example.org", "failed", USER_REMOVED),
            (receiver.url, "failed", USER_REMOVED),
        ]
    finally:
        server.stop()


def test_an_address_another_user_still_has_keeps_its_messages(booked: Booked) -> None:
    """One row serves every user of an address (a team's list): it is not for the opted-out user alone."""
    port = free_port()
    Outbox(booked.database).subscribe(ALICE, "email", "team@example.org")
    Outbox(booked.database).subscribe(BOB, "email", "team@example.org")
    note = smtp_notifier(booked, port)
    queue_undelivered(booked, note)
    assert Outbox(booked.database).unsubscribe(ALICE, "email")
    server = SmtpServer(port).start()
    try:
        assert retry_later(booked, note) == 1
        assert [str(message["To"]) for message in server.mailbox.messages] == ["team@example.org"]
    finally:
        server.stop()
