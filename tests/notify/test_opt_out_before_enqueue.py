"""A notifier's round reads who is subscribed, then enqueues in a unit of work of its own: an opt-out, a replaced
address, a user's removal or a new GID e-mail committed in between keeps that round's message from the address the
user no longer has (the enqueue checks it again, under the user's lock on PostgreSQL). And a new GID e-mail presented
at Allocate or Provision drops what was queued for the old one, as a new registry e-mail does. A real SMTP server
(aiosmtpd) and a real HTTP receiver on 127.0.0.1, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import timedelta

import pytest
from sqlalchemy import event, text

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.outbox import ADDRESS_CHANGED, UNSUBSCRIBED, Message, Outbox
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.calendar.slices import Contact
from sfa_omf.notify.notifier import Notifier
from sfa_omf.registry.records import Record, Records
from tests.calendar.conftest import NOW, node_urn
from tests.notify.conftest import ALICE, SLICE, Booked, Receiver, SmtpServer, outbox_rows, smtp_notifier
from tests.ports import free_port

ALICE_HRN = "testbed.alice"
OLD = "alice@old.example.org"
NEW = "alice@new.example.org"


def change_before_the_enqueue(note: Notifier, change: Callable[[], object]) -> None:
    """The notifier's next round runs ``change`` (committed in a unit of work of its own) after it read the
    subscriptions and before its enqueue begins."""
    enqueue = note.outbox.enqueue

    def changed_first(
        messages: Sequence[Message], recipients: Mapping[str, Collection[str]] | None = None, by_default: bool = True
    ) -> int:
        assert messages, "the round read an address to send to"
        change()
        return enqueue(messages, recipients, by_default)

    note.outbox.enqueue = changed_first  # type: ignore[method-assign]


def book_as_alice(booked: Booked, hours: int, email: str) -> str:
    """Alice's Allocate of n1 for an hour from ``hours`` on, presenting a GID with ``email``: the lease's id."""
    window = [BookingRequest(node_urn("n1"), booked.at(hours), booked.at(hours + 1))]
    result = booked.bookings.book(
        SLICE, NOW + timedelta(days=5), window, owner_urn=ALICE, contact=Contact(ALICE, email)
    )
    return result.leases[0].id


def test_an_opt_out_committed_after_the_read_gets_nothing_queued(booked: Booked) -> None:
    port = free_port()
    Outbox(booked.database).subscribe(ALICE, "email", OLD)
    note = smtp_notifier(booked, port)
    change_before_the_enqueue(note, lambda: Outbox(booked.database).unsubscribe(ALICE, "email"))
    assert note.notice() == 0
    assert outbox_rows(booked) == [], "the round's e-mail was queued for the address its user had dropped"
    server = SmtpServer(port).start()
    try:
        assert note.deliver() == 0 and server.mailbox.messages == []
    finally:
        server.stop()


def test_a_webhook_replaced_after_the_read_gets_nothing_queued(booked: Booked, receiver: Receiver) -> None:
    old, new = receiver.url + "?token=old", receiver.url + "?token=new"
    Outbox(booked.database).subscribe(ALICE, "webhook", old)
    note = smtp_notifier(booked, free_port())
    change_before_the_enqueue(note, lambda: Outbox(booked.database).subscribe(ALICE, "webhook", new))
    assert note.notice() == 0
    assert outbox_rows(booked) == []
    note.outbox = Outbox(booked.database, lambda: booked.clock[0])  # the next round, as it is
    assert note.notice() == 1 and note.deliver() == 1
    assert outbox_rows(booked) == [(new, "sent", "")]
    assert len(receiver.received) == 1


def test_a_user_removed_after_the_read_gets_nothing_queued(booked: Booked, receiver: Receiver) -> None:
    Records(booked.database).add(Record(ALICE_HRN, "user", ALICE, "", email=OLD))
    Outbox(booked.database).subscribe(ALICE, "webhook", receiver.url)
    note = smtp_notifier(booked, free_port())
    change_before_the_enqueue(note, lambda: Records(booked.database).remove(ALICE_HRN))
    assert note.notice() == 0
    assert outbox_rows(booked) == [] and receiver.received == []


def test_a_gid_email_replaced_after_the_read_gets_nothing_queued(booked: Booked) -> None:
    """Alice is mailed at the e-mail of her last GID (no address chosen, no registry record): an Allocate presenting a
    GID with a new e-mail commits between the round's read and its enqueue."""
    book_as_alice(booked, 6, OLD)
    note = smtp_notifier(booked, free_port())
    change_before_the_enqueue(note, lambda: book_as_alice(booked, 8, NEW))
    assert note.notice() == 0
    assert outbox_rows(booked) == [], "the round's e-mails were queued for her old GID e-mail"


@pytest.mark.parametrize("booked", ["postgresql"], indirect=True)
def test_an_opt_out_committing_during_the_enqueue_marks_what_it_added(booked: Booked) -> None:
    """PostgreSQL: the enqueue checked Alice's address (she had it), and its rows are written but not committed when
    her opt-out runs in another connection. The opt-out waits for the enqueue (Alice's recipient lock), then marks
    the rows it committed; without the wait the opt-out would miss them (they were not committed) and they would be
    sent after it."""
    Outbox(booked.database).subscribe(ALICE, "email", OLD)
    note = smtp_notifier(booked, free_port())
    opt_out = threading.Thread(target=lambda: Outbox(booked.database).unsubscribe(ALICE, "email"))
    inserts: list[str] = []

    def opt_out_meanwhile(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO NOTIFY_OUTBOX"):
            inserts.append(statement)
            if len(inserts) == 1:
                opt_out.start()
                _until_done_or_waiting(booked.database, opt_out)

    event.listen(booked.database.engine, "before_cursor_execute", opt_out_meanwhile)
    try:
        assert note.notice() == 1
    finally:
        event.remove(booked.database.engine, "before_cursor_execute", opt_out_meanwhile)
    opt_out.join(timeout=30)
    assert not opt_out.is_alive()
    assert outbox_rows(booked) == [(OLD, "failed", UNSUBSCRIBED)], "queued for the address after its opt-out"


def _until_done_or_waiting(database: Database, thread: threading.Thread) -> None:
    """Until ``thread`` ended or a session of the test's database waits for a lock (bounded against a hang only,
    generously: the thread starts and reaches the lock on a loaded machine)."""
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database() "
        "AND state = 'active'"
    )
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not thread.is_alive() or watcher.execute(text(waiting)).scalar():
                return
            time.sleep(0.05)
    pytest.fail("the opt-out neither ended nor waited")


@pytest.mark.parametrize("call", ["Allocate", "Provision"])
def test_a_new_gid_email_drops_what_was_queued_for_the_old_one(booked: Booked, call: str) -> None:
    """Alice's lease e-mails go to the e-mail of her last GID; they wait for the SMTP server (down). She then
    presents a GID with a new e-mail: the queued ones are not sent to the old one."""
    lease_id = book_as_alice(booked, 6, OLD)
    port = free_port()  # nothing listens yet: the SMTP server is down
    note = smtp_notifier(booked, port)
    assert note.notice() == 2 and note.deliver() == 0  # the two leases' "allocated", at the old e-mail
    assert [row[:2] for row in outbox_rows(booked)] == [(OLD, "pending")] * 2
    if call == "Allocate":
        book_as_alice(booked, 8, NEW)
    else:
        booked.bookings.mark_provisioned_all([lease_id], SLICE, contact=Contact(ALICE, NEW))
    assert outbox_rows(booked) == [(OLD, "failed", ADDRESS_CHANGED)] * 2
    # The same e-mail again: the Allocate reads or writes nothing of the notifications (the same statements as ever).
    seen: list[str] = []

    def note_statement(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement)

    event.listen(booked.database.engine, "before_cursor_execute", note_statement)
    try:
        book_as_alice(booked, 10, NEW)
    finally:
        event.remove(booked.database.engine, "before_cursor_execute", note_statement)
    assert not [s for s in seen if "notify_" in s or "registry_record" in s or "UPDATE user_contact" in s], seen
    booked.clock[0] = NOW + timedelta(seconds=30)  # the retries are due
    server = SmtpServer(port).start()
    try:
        note.notice()
        note.deliver()
        assert {str(message["To"]) for message in server.mailbox.messages} == {NEW}
        assert [row for row in outbox_rows(booked) if row[0] == OLD] == [(OLD, "failed", ADDRESS_CHANGED)] * 2
    finally:
        server.stop()


def test_a_registry_email_given_later_drops_what_was_queued_for_the_gid_email(booked: Booked) -> None:
    """Alice's lease e-mails wait (SMTP down) for the e-mail of her GID, her default address; the registry then
    records her with an e-mail of its own (Register, ``sfa-omf user add``), which becomes her default: the queued
    ones are not sent to the GID's."""
    book_as_alice(booked, 6, OLD)
    port = free_port()
    note = smtp_notifier(booked, port)
    assert note.notice() == 2 and note.deliver() == 0  # the two leases' "allocated", at the GID's e-mail
    Records(booked.database).add(Record("testbed.alice", "user", ALICE, "", email=NEW))
    assert outbox_rows(booked) == [(OLD, "failed", ADDRESS_CHANGED)] * 2
    booked.clock[0] = NOW + timedelta(seconds=30)
    server = SmtpServer(port).start()
    try:
        note.notice()
        note.deliver()
        assert {str(message["To"]) for message in server.mailbox.messages} == {NEW}
    finally:
        server.stop()
