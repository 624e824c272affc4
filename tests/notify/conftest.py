"""Real peers for the notification tests: an SMTP server (aiosmtpd) and an HTTP receiver of webhooks, both on
127.0.0.1, and a calendar with one booked lease (SQLite and PostgreSQL)."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import Message as EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.models import NotifyOutbox
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.notify.channels import SmtpSettings
from sfa_omf.notify.notifier import Notifier, NotifySettings
from tests.calendar.conftest import NOW, fresh_database, node_urn
from tests.ports import free_port

ALICE = "urn:publicid:IDN+testbed+user+alice"
SLICE = "urn:publicid:IDN+testbed+slice+demo"
SECRET = "s3cret-shared-with-the-receiver"


@dataclass
class Mailbox:
    """What a real SMTP server received."""

    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def events(self) -> list[str]:
        return [str(message["X-SFA-OMF-Event"]) for message in self.messages]


class SmtpServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.mailbox = Mailbox()
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=port)

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port()).start()
    yield server
    server.stop()


@dataclass
class Receiver:
    """A real HTTP server taking webhooks: (headers, body) of each POST; answers ``status``."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    status: int = 200

    def events(self) -> list[str]:
        return [headers["x-sfa-omf-event"] for headers, _ in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if state.status == 200:
                state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Booked:
    database: Database
    bookings: Bookings
    lease_id: str
    clock: list[datetime]

    def at(self, hours: float) -> datetime:
        return NOW + timedelta(hours=hours)


@pytest.fixture(params=["sqlite", "postgresql"])
def booked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Booked]:
    database = fresh_database(request.param, tmp_path)
    clock = [NOW]
    Inventory(database, Policy()).add_node(NodeSpec(node_urn("n1"), "n1"))
    bookings = Bookings(database, Policy(), "testbed", clock=lambda: clock[0])
    lease = bookings.book(
        SLICE,
        NOW + timedelta(days=5),
        [BookingRequest(node_urn("n1"), NOW + timedelta(hours=2), NOW + timedelta(hours=4))],
        owner_urn=ALICE,
    ).leases[0]
    yield Booked(database, bookings, lease.id, clock)
    database.dispose()


def signed_with(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Whether one of a received POST's signatures (X-SFA-OMF-Signature) is the HMAC-SHA256 with ``secret`` (a
    subscription's, channels.subscription_secret) of its X-SFA-OMF-Timestamp, "." and its body, as
    docs/notifications.md tells receivers to check (its freshness: test_webhook_secret_per_subscriber)."""
    signed = headers["x-sfa-omf-timestamp"].encode() + b"." + body
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, part.strip()) for part in headers["x-sfa-omf-signature"].split(","))


def url_digest(url: str) -> str:
    """The digest a webhook's key carries after its origin (notifier.shown_key): the first 12 hex digits of the
    whole URL's SHA-256."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]


class SilentServer:
    """A TCP server that accepts connections and never says a word (an SMTP server hung or overloaded, a webhook
    receiver that never answers): each client waits until its own deadline. Keeps the connections (``held``)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"  # as a webhook
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            self.held.append(connection)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        self.thread.join()
        self.listener.close()
        for connection in self.held:
            connection.close()


def smtp_notifier(booked: Booked, smtp_port: int) -> Notifier:
    """A notifier of the booked calendar sending through the SMTP server at ``smtp_port`` (5 s time-out), on the
    booked calendar's clock."""
    return Notifier(
        booked.database, NotifySettings(smtp=SmtpSettings(port=smtp_port, timeout_s=5)), lambda: booked.clock[0]
    )


def outbox_rows(booked: Booked) -> list[tuple[str, str, str]]:
    """(address, state, last_error) of every outbox row, in the order they were queued."""
    with booked.database.read() as session:
        rows = session.execute(
            select(NotifyOutbox.address, NotifyOutbox.state, NotifyOutbox.last_error).order_by(NotifyOutbox.id)
        )
        return [(address, state, error) for address, state, error in rows]
