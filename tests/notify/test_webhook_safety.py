"""Webhook delivery against hostile or broken receivers, all real servers on 127.0.0.1: redirects are failures and
not followed; a webhook a user may have set reaches public addresses only (checked after resolving, at send time,
and in every numeric form when set); a malformed answer is retried; a receiver dripping its answer cannot hold the
notifier past the deadline; a webhook's path and query (a token) are neither logged nor sent as the event key.

No test connects to an address that is not 127.0.0.1: that public addresses are taken is tested on the
classification function alone."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.addresses import is_public_address
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.outbox import Message, Outbox, check_self_service_webhook
from sfa_omf.errors import GeniError
from sfa_omf.notify import notifier as notifier_module
from sfa_omf.notify.channels import DeliveryError, WebhookUnavailable, post_webhook
from sfa_omf.notify.notifier import Notifier, NotifySettings
from tests.calendar.conftest import fresh_database
from tests.notify.conftest import Receiver, url_digest
from tests.server_certificates import server_certificate

#: A token in a webhook's path and query, as receivers such as chat services put it there.
TOKEN = "t0k3n-abc123"


class Recorder:
    """A real HTTP server that records every request (any method, any path) and answers as told."""

    def __init__(self, status: int = 200, location: str = "") -> None:
        self.requests: list[tuple[str, str]] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                state.requests.append((self.command, self.path))
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_HEAD = answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RawServer:
    """A real TCP server on 127.0.0.1 that counts the connections it accepts and plays ``script`` on each."""

    def __init__(self, script: Any = None) -> None:
        self.accepted = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = int(self.listener.getsockname()[1])
        self.script = script
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            with connection:
                if self.script is not None:
                    with contextlib.suppress(OSError):
                        self.script(connection)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = fresh_database("sqlite", tmp_path)
    yield database
    database.dispose()


# -- 2. redirects ------------------------------------------------------------------------------------------------


def test_a_redirect_is_a_failure_and_is_not_followed() -> None:
    inside = Recorder()
    redirecting = Recorder(status=302, location=f"http://127.0.0.1:{inside.port}/internal-admin")
    try:
        with pytest.raises(DeliveryError, match=r"302 .*redirects are not followed"):
            post_webhook(f"http://127.0.0.1:{redirecting.port}/hook", "k", {"event": "test"}, "secret")
        assert redirecting.requests == [("POST", "/hook")]
        assert inside.requests == []  # urllib's opener went there (as a GET, with the signature headers)
    finally:
        inside.close()
        redirecting.close()


# -- 1. public addresses only for webhooks users set -------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
        "2002:a00:1::",
        "2001:db8::1",
        "2001::1",
        "fec0::1",  # site-local (deprecated, still routed in places): Python's is_global calls it global
    ],
)
def test_non_public_addresses_and_their_ipv6_forms_are_not_public(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::"]
)
def test_public_addresses_are_public(address: str) -> None:
    """Classification only: nothing connects to these addresses."""
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "https://127.1/hook",
        "https://2130706433/hook",
        "https://0x7f000001/hook",
        "https://0177.0.0.1/hook",
        "https://0/hook",
        "https://2852039166/latest/meta-data/",
        "https://10.1/hook",
        "https://[64:ff9b::7f00:1]/hook",
        "https://[::ffff:169.254.169.254]/hook",
        "https://[2002:7f00:1::]/hook",
    ],
)
def test_numeric_forms_of_inside_addresses_are_refused_when_a_user_sets_them(url: str) -> None:
    with pytest.raises(GeniError, match="must reach a public address"):
        check_self_service_webhook(url)


def test_a_public_address_or_name_may_be_set_by_a_user() -> None:
    check_self_service_webhook("https://93.184.216.34/hook")  # no connection: the check does not resolve
    check_self_service_webhook("https://hooks.example.org/sfa")


@pytest.mark.parametrize(
    "host", ["127.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.0.0.1", "localhost", "[::ffff:127.0.0.1]"]
)
def test_a_users_webhook_resolving_to_loopback_is_never_connected(database: Database, host: str) -> None:
    """A webhook set before the check knew these forms (or a name resolving inside): the notifier resolves it and
    refuses before connecting. The listener is on 127.0.0.1: nothing else is reached."""
    listener = RawServer()
    try:
        url = f"https://{host}:{listener.port}/hook"
        with pytest.raises(DeliveryError) as raised:
            Notifier(database, NotifySettings()).send(notifier_module.test_message(url))
        assert listener.accepted == 0  # before the fix: connected (then failed the TLS handshake)
        assert "refused, the host resolves to a non-public address" in str(raised.value)
    finally:
        listener.close()


def test_operators_webhooks_still_reach_internal_addresses(database: Database, receiver: Receiver) -> None:
    """http:// (users can set only https://) and the URLs of [sfa_notify] operators are the operator's own."""
    Notifier(database, NotifySettings()).send(notifier_module.test_message(receiver.url))
    assert len(receiver.received) == 1


@pytest.mark.parametrize(("certified", "delivered"), [("localhost", True), ("elsewhere.example", False)])
def test_tls_verifies_the_urls_host_name_on_the_checked_address(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certified: str, delivered: bool
) -> None:
    """A real HTTPS receiver on 127.0.0.1 named localhost in the URL; an operator's (listed) webhook, so the
    connection goes to the resolved address while the certificate is checked against the name."""
    ca, chain, key = server_certificate(tmp_path, certified)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the default context trusts the test CA
    recorder = Recorder()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(chain), str(key))
    recorder.server.socket = context.wrap_socket(recorder.server.socket, server_side=True)
    url = f"https://localhost:{recorder.port}/hook"
    notifier = Notifier(database, NotifySettings(operator_addresses=(url,)))
    try:
        if delivered:
            notifier.send(notifier_module.test_message(url))
            assert recorder.requests == [("POST", "/hook")]
        else:
            with pytest.raises(DeliveryError, match="certificate verify failed"):
                notifier.send(notifier_module.test_message(url))
            assert recorder.requests == []
    finally:
        recorder.close()


# -- 4. malformed answers are retried ----------------------------------------------------------------------------


def _bad_status_line(connection: socket.socket) -> None:
    connection.recv(65536)
    connection.sendall(b"this is not HTTP\r\n\r\n")


def test_a_malformed_url_fails_its_message_alone(database: Database, receiver: Receiver) -> None:
    """An operator's subscription too malformed to split (an unclosed IPv6 bracket) fails its own message; the other
    messages of the round are delivered, and the logs name it without crashing."""
    bad, good = "http://[::1/hook", receiver.url
    outbox = Outbox(database)
    outbox.enqueue(
        [
            Message(f"e1:webhook:{bad}", "started", "webhook", bad, {"event": "started"}),
            Message(f"e1:webhook:{good}", "started", "webhook", good, {"event": "started"}),
        ]
    )
    assert Notifier(database, NotifySettings()).deliver() == 1
    assert len(receiver.received) == 1
    counts = outbox.counts()
    assert (counts.sent, counts.pending + counts.failed) == (1, 1)


def test_a_malformed_answer_is_a_delivery_failure_retried_later(database: Database) -> None:
    server = RawServer(_bad_status_line)
    url = f"http://127.0.0.1:{server.port}/hook"
    try:
        with pytest.raises(DeliveryError, match="BadStatusLine"):
            post_webhook(url, "k", {"event": "test"}, "")
        outbox = Outbox(database)
        outbox.enqueue([Message(f"e1:webhook:{url}", "started", "webhook", url, {"event": "started"})])
        assert Notifier(database, NotifySettings()).deliver() == 0
        counts = outbox.counts()
        assert (counts.pending, counts.failed) == (1, 0)  # not given up on the first try
    finally:
        server.close()


# -- 3. a total deadline ------------------------------------------------------------------------------------------


#: How long the dripping receiver would take to finish its headers, and the bound the cut must come well within: so far
#: apart that no load of the machine blurs them (the deadline itself is 1.5 s).
DRIP_S = 120
CUT_WITHIN_S = 60


def _drip(connection: socket.socket) -> None:
    connection.recv(65536)
    connection.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
    for _ in range(int(DRIP_S / 0.3)):  # a byte every 0.3 s: each read well within a per-read timeout
        time.sleep(0.3)
        connection.sendall(b"a")
    connection.sendall(b"\r\nContent-Length: 0\r\n\r\n")


def test_a_dripping_receiver_is_cut_off_at_the_deadline() -> None:
    server = RawServer(_drip)
    try:
        started = time.monotonic()
        with pytest.raises(WebhookUnavailable) as cut:
            post_webhook(f"http://127.0.0.1:{server.port}/hook", "k", {"event": "test"}, "", timeout_s=1.5)
        assert time.monotonic() - started < CUT_WITHIN_S  # cut at the deadline, not when the drip ends
        assert "TimeoutError" in str(cut.value), cut.value  # the deadline ran out: no other failure
        assert "deadline of 1.5 s" in str(cut.value), cut.value  # the whole exchange's, not one read's
    finally:
        server.close()


# -- 5. no token in logs or headers -------------------------------------------------------------------------------


def test_a_webhooks_path_and_query_are_neither_logged_nor_sent_as_the_key(
    database: Database, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{receiver.url}/{TOKEN}?auth={TOKEN}"
    outbox = Outbox(database)
    outbox.enqueue([Message(f"e1:started:webhook:{url}", "started", "webhook", url, {"event": "started"})])
    notifier = Notifier(database, NotifySettings())
    assert notifier.deliver() == 1
    headers, body = receiver.received[0]
    origin = receiver.url.rsplit("/", 1)[0]
    assert headers["x-sfa-omf-event"] == f"e1:started:webhook:{origin}#{url_digest(url)}"
    assert TOKEN.encode() not in body

    receiver.status = 500
    outbox.enqueue([Message(f"e2:started:webhook:{url}", "started", "webhook", url, {"event": "started"})])
    with caplog.at_level(logging.WARNING, logger="sfa_omf.notify"):
        assert notifier.deliver() == 0
    assert "not delivered" in caplog.text
    assert TOKEN not in caplog.text
    with pytest.raises(DeliveryError) as raised:
        post_webhook(url, "k", {"event": "test"}, "")
    assert TOKEN not in str(raised.value)
