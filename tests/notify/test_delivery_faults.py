"""Delivery against hostile or broken peers and hostile texts, with real sockets and a real SMTP server: a server that
drips its answers is left at the deadline, a slice name with a line break still gives one e-mail with a one-line
subject, and long addresses and keys fit the outbox (PostgreSQL enforces its columns' lengths)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.outbox import Message, Outbox, check_self_service_webhook
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.errors import GeniError
from sfa_omf.notify.alerts import Alerts, renewal_refused_key
from sfa_omf.notify.channels import DeliveryError, SmtpSettings, send_email
from sfa_omf.notify.notifier import Notifier, NotifySettings
from tests.calendar.conftest import NOW, fresh_database, node_urn
from tests.notify.conftest import ALICE, SECRET, Receiver, SilentServer, SmtpServer, url_digest


class DrippingServer:
    """A TCP server that sends an SMTP greeting one byte at a time, each byte well within the client's timeout, so
    that only a deadline on the whole exchange stops the client. Records how much it sent before the client left."""

    def __init__(self, greeting: bytes, pause_s: float) -> None:
        self.greeting = greeting
        self.pause_s = pause_s
        self.sent = 0
        self.client_left = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            for byte in self.greeting:
                if self.client_left.wait(self.pause_s):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:  # the client closed the connection: it gave up
                    self.client_left.set()
                    return
                self.sent += 1
                # A closed client shows as readable with nothing to read; checking keeps the drip short once it left.
                connection.setblocking(False)
                try:
                    if connection.recv(1) == b"":
                        self.client_left.set()
                except BlockingIOError:
                    pass
                except OSError:
                    self.client_left.set()
                finally:
                    connection.setblocking(True)

    def close(self) -> None:
        self.client_left.set()
        self.thread.join()
        self.listener.close()


def test_a_server_that_drips_its_answer_is_left_at_the_deadline() -> None:
    """smtplib's timeout bounds each read: a byte every pause would keep the notifier there for ever (and past its
    claim). The whole exchange must end by ``timeout_s``, long before this greeting is complete."""
    greeting = b"220 " + b"x" * 200 + b"\r\n"  # 204 bytes at 0.1 s: about 20 s, against a 1 s deadline
    server = DrippingServer(greeting, pause_s=0.1)
    try:
        with pytest.raises(DeliveryError, match=f"SMTP 127.0.0.1:{server.port}"):
            send_email(SmtpSettings("127.0.0.1", server.port, timeout_s=1), "alice@example.org", "k", "subject", "text")
        server.client_left.set()
        server.thread.join()
        assert server.sent < len(greeting)  # the client hung up in the middle of the greeting
    finally:
        server.close()


@dataclass
class Calendar:
    database: Database
    bookings: Bookings
    notifier: Notifier


def calendar_of(kind: str, tmp_path: Path, slice_urn: str, smtp_port: int) -> Calendar:
    database = fresh_database(kind, tmp_path)
    Inventory(database, Policy()).add_node(NodeSpec(node_urn("n1"), "n1"))
    bookings = Bookings(database, Policy(), "testbed", clock=lambda: NOW)
    bookings.book(
        slice_urn,
        NOW + timedelta(days=5),
        [BookingRequest(node_urn("n1"), NOW + timedelta(hours=2), NOW + timedelta(hours=4))],
        owner_urn=ALICE,
    )
    settings = NotifySettings(smtp=SmtpSettings(port=smtp_port, timeout_s=5), webhook_secret=SECRET)
    return Calendar(database, bookings, Notifier(database, settings, clock=lambda: NOW))


@pytest.fixture(params=["sqlite", "postgresql"])
def kind(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


def test_a_slice_name_with_a_line_break_gives_one_mail_with_a_one_line_subject(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    """The slice URN is the caller's text: a line break in it was refused by the e-mail library, and the message
    given up for good (lost); it must neither be lost nor start a header of its own."""
    hostile = "urn:publicid:IDN+testbed+slice+demo\r\nBcc: mallory@example.org"
    calendar = calendar_of("sqlite", tmp_path, hostile, smtp.port)
    try:
        Outbox(calendar.database).subscribe(ALICE, "email", "alice@example.org")
        assert calendar.notifier.notice() == 1
        assert calendar.notifier.deliver() == 1
        (message,) = smtp.mailbox.messages
        assert str(message["Subject"]) == "[sfa-omf] lease of demo Bcc: mallory@example.org booked"
        assert message["Bcc"] is None and Outbox(calendar.database).counts().failed == 0
    finally:
        calendar.database.dispose()


def test_a_webhook_url_too_long_to_store_is_refused_clearly(kind: str, tmp_path: Path) -> None:
    """PostgreSQL refused a URL longer than its column with a database error (the web page answered 503, "try
    again"); it is a bad argument, on either database."""
    database = fresh_database(kind, tmp_path)
    try:
        url = "https://hooks.example.org/" + "a" * 600
        with pytest.raises(GeniError, match="at most 500 characters") as refused:
            check_self_service_webhook(url)
        assert refused.value.reason.name == "BAD_ARGS"
        with pytest.raises(GeniError, match="at most 500 characters"):
            Outbox(database).subscribe(ALICE, "webhook", url)
        assert Outbox(database).subscriptions([ALICE]) == {}
    finally:
        database.dispose()


def test_an_event_key_and_a_long_address_beyond_the_key_column_are_still_delivered(
    kind: str, tmp_path: Path, receiver: Receiver
) -> None:
    """A refused renewal's key names the slice; with a long slice URN and a long webhook URL the message key was
    longer than the outbox's column: PostgreSQL refused the whole batch, so every notification of the round (and of
    the next rounds, while the event was recent) stayed unwritten."""
    long_slice = "urn:publicid:IDN+testbed+slice+" + "s" * 260  # within the calendar's 300 characters
    calendar = calendar_of(kind, tmp_path, long_slice, smtp_port=1)
    try:
        url = receiver.url + "/" + "h" * (480 - len(receiver.url))  # within the 500 characters of an address
        Outbox(calendar.database).subscribe(ALICE, "webhook", url)
        Alerts(calendar.database, clock=lambda: NOW).renewal_refused(
            long_slice, ALICE, [], NOW + timedelta(hours=8), "another booking took the time"
        )
        assert calendar.notifier.notice() == 2  # the lease's booking and the refused renewal
        assert calendar.notifier.notice() == 0  # the same keys again: nothing new
        assert calendar.notifier.deliver() == 2
        assert sorted(json.loads(body)["event"] for _, body in receiver.received) == ["allocated", "renewal_refused"]
        assert all(url not in headers["x-sfa-omf-event"] for headers, _ in receiver.received)  # no token shown
    finally:
        calendar.database.dispose()


def test_an_event_key_with_a_line_break_and_non_latin_letters_reaches_mail_and_webhook_once(
    tmp_path: Path, smtp: SmtpServer, receiver: Receiver
) -> None:
    """A refused renewal's key names the slice, and the key is sent as a header (X-SFA-OMF-Event): a line break
    (e-mail, HTTP) or a letter outside Latin-1 (HTTP) in it made the message fail for good; it is sent, once, with
    the key percent-encoded in the header and as it is in the webhook's JSON."""
    hostile = "urn:publicid:IDN+testbed+slice+δemo\nX-Injected: 1"
    calendar = calendar_of("sqlite", tmp_path, hostile, smtp.port)
    try:
        Outbox(calendar.database).subscribe(ALICE, "email", "alice@example.org")
        Outbox(calendar.database).subscribe(ALICE, "webhook", receiver.url)
        asked = NOW + timedelta(hours=8)
        Alerts(calendar.database, clock=lambda: NOW).renewal_refused(hostile, ALICE, [], asked, "taken")
        assert calendar.notifier.notice() == 4  # booked and refused, by e-mail and webhook
        assert calendar.notifier.deliver() == 4 and calendar.notifier.deliver() == 0
        assert Outbox(calendar.database).counts().failed == 0
        suffix = renewal_refused_key(hostile, "taken", NOW).removeprefix(f"renewal_refused:{hostile}:")
        encoded = f"renewal_refused:urn:publicid:IDN+testbed+slice+%CE%B4emo%0AX-Injected:%201:{suffix}"
        refused_mail = [m for m in smtp.mailbox.messages if "refused" in str(m["Subject"])]
        assert [str(m["X-SFA-OMF-Event"]) for m in refused_mail] == [f"{encoded}:email:alice@example.org"]
        assert all(m["X-Injected"] is None for m in smtp.mailbox.messages)
        refused_hooks = [(h, json.loads(b)) for h, b in receiver.received if b'"renewal_refused"' in b]
        ((headers, body),) = refused_hooks
        assert (
            headers["x-sfa-omf-event"]
            == f"{encoded}:webhook:{receiver.url.rsplit('/', 1)[0]}#{url_digest(receiver.url)}"
        )
        assert body["slice"] == hostile and "x-injected" not in headers
    finally:
        calendar.database.dispose()


def test_an_smtp_server_that_does_not_answer_is_tried_once_a_round_and_webhooks_go_on(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Each e-mail waited the whole timeout for a silent server in turn (a hundred e-mails: fifty minutes), the
    webhooks queued behind them. Once it did not answer, the round's other e-mails wait for the next round, their
    attempts untouched, and the webhooks are delivered."""
    server = SilentServer()
    database = fresh_database("sqlite", tmp_path)
    try:
        Inventory(database, Policy()).add_node(NodeSpec(node_urn("n1"), "n1"))
        bookings = Bookings(database, Policy(), "testbed", clock=lambda: NOW)
        for hour in (2, 4, 6):  # three leases: three "booked" events
            bookings.book(
                "urn:publicid:IDN+testbed+slice+demo",
                NOW + timedelta(days=5),
                [BookingRequest(node_urn("n1"), NOW + timedelta(hours=hour), NOW + timedelta(hours=hour + 1))],
                owner_urn=ALICE,
            )
        Outbox(database).subscribe(ALICE, "email", "alice@example.org")
        Outbox(database).subscribe(ALICE, "webhook", receiver.url)
        settings = NotifySettings(smtp=SmtpSettings(port=server.port, timeout_s=1), webhook_secret=SECRET)
        notifier = Notifier(database, settings, clock=lambda: NOW)
        assert notifier.notice() == 6
        assert notifier.deliver() == 3 and len(receiver.received) == 3  # every webhook
        assert len(server.held) == 1  # one e-mail tried the server; the two others did not wait for it too
        later = Outbox(database, clock=lambda: NOW + timedelta(hours=1))
        assert sorted(message.attempts for message in later.due()) == [0, 0, 1]
        assert Outbox(database).counts().pending == 3  # none lost, none given up
    finally:
        database.dispose()
        server.close()


class RefusingGone:
    """A real SMTP server's handler (aiosmtpd) that refuses the mailbox gone@ (550) and takes the others."""

    def __init__(self) -> None:
        self.delivered_to: list[str] = []

    async def handle_RCPT(self, server: object, session: object, envelope: Any, address: str, options: object) -> str:
        if address.startswith("gone@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.delivered_to += envelope.rcpt_tos
        return "250 OK"


def test_a_refused_recipient_does_not_hold_the_rounds_other_emails(tmp_path: Path) -> None:
    """A refusal of one message (550 for a dead address) is that message's failure, not a server that is down: the
    round's other e-mails are sent (an SMTPException is an OSError, and was taken for one)."""
    from aiosmtpd.controller import Controller

    from tests.notify.conftest import free_port

    handler = RefusingGone()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    database = fresh_database("sqlite", tmp_path)
    try:
        addresses = ["gone@example.org", "alice@example.org", "bob@example.org"]
        Outbox(database, clock=lambda: NOW).enqueue(
            [Message(f"ev:email:{a}", "x", "email", a, {"summary": "something happened"}) for a in addresses]
        )
        settings = NotifySettings(smtp=SmtpSettings(port=controller.port, timeout_s=5))
        assert Notifier(database, settings, clock=lambda: NOW).deliver() == 2
        assert handler.delivered_to == ["alice@example.org", "bob@example.org"]
    finally:
        database.dispose()
        controller.stop()
