"""Each webhook subscription has a secret of its own (channels.subscription_secret, derived from the site's
``[sfa_notify] webhook_key``): a POST is signed with it over a timestamp and the body (X-SFA-OMF-Timestamp,
X-SFA-OMF-Signature). One user's secret, as the page /calendar/me or the CLI shows it to them, signs nothing another
user's receiver accepts (the one site-wide key let any user forge events to anyone's webhook), and a captured message
cannot be sent again later. Real HTTP receivers on 127.0.0.1, real databases (SQLite and PostgreSQL), the real
page and CLI."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from html import unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.models import NotifySubscription
from sfa_omf.calendar.outbox import WEBHOOK_TAKEN, Outbox
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.notify import notifier as notifier_module
from sfa_omf.notify.channels import post_webhook, subscription_secret
from sfa_omf.notify.notifier import Notifier, NotifySettings
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import build_aggregate, start_aggregate
from sfa_omf.web.app import WebRequest
from tests.calendar.conftest import NOW, node_urn
from tests.conftest import DemoPki
from tests.notify.conftest import ALICE, SECRET, Booked, Receiver
from tests.tls_harness import client_context
from tests.web.conftest import Lab, database, lab  # noqa: F401 (the web calendar's fixtures, for /calendar/me)
from tests.web.test_web_forms import OURS

BOB = "urn:publicid:IDN+testbed+user+bob"
BOBS_SLICE = "urn:publicid:IDN+testbed+slice+bobs"
FRESH_S = 300  # the receivers' freshness window, as docs/notifications.md suggests


def verified(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """A receiver's check, as docs/notifications.md gives it: the timestamp within 5 minutes, and one of the
    signatures the HMAC-SHA256 with ``secret`` of ``timestamp + "." + body`` (a constant-time compare)."""
    timestamp = headers.get("x-sfa-omf-timestamp", "")
    if not timestamp.isdigit() or abs((time.time() if now is None else now) - int(timestamp)) > FRESH_S:
        return False
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    signatures = [part.strip() for part in headers.get("x-sfa-omf-signature", "").split(",")]
    return any(hmac.compare_digest(expected, signature) for signature in signatures)


def old_site_wide_check(headers: dict[str, str], body: bytes) -> bool:
    """What receivers were told to check before: the HMAC of the body with the site's one key."""
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("x-sfa-omf-signature", ""), expected)


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    """Two real HTTP receivers (alice's and bob's webhooks), each keeping what it was sent."""
    servers = []
    states = []
    for _ in range(2):
        state = Receiver()

        class Handler(BaseHTTPRequestHandler):
            mine = state

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.mine.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(self.mine.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        state.url = f"http://127.0.0.1:{server.server_address[1]}/hook/token-{len(states)}"
        servers.append(server)
        states.append(state)
    yield states[0], states[1]
    for server in servers:
        server.shutdown()
        server.server_close()


def secret_shown(text: str) -> str:
    """The signing secret a command's output shows (its one run of 64 hex digits)."""
    found = re.findall(r"\b([0-9a-f]{64})\b", text)
    assert len(found) == 1, text
    return str(found[0])


def page_secret(page: str) -> str:
    """The signing secret /calendar/me shows (its form tokens are 64 hex digits too)."""
    found = re.findall(r'id="webhook-secret".*?<code>([0-9a-f]{64})</code>', page, re.DOTALL)
    assert len(found) == 1, page
    return str(found[0])


def cli_secret(config: Path, url: str, user: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["notify", "secret", url, *([user] if user else []), "--config", str(config)]) == 0
    return secret_shown(capsys.readouterr().out)


@pytest.fixture
def lab_config(tmp_path: Path) -> Path:
    """A site made by ``sfa-omf init`` (users ann and bob), its notifier's webhook_key SECRET."""
    assert main(["init", str(tmp_path / "lab"), "--authority", "lab", "--user", "ann"]) == 0
    config = tmp_path / "lab" / "sfa-omf.conf"
    with config.open("a") as handle:
        handle.write(f"\n[sfa_notify]\nwebhook_key = {SECRET}\n")
    return config


def _two_users_delivered(booked: Booked, alice: Receiver, bob: Receiver, config: Path) -> Notifier:
    """Alice's lease (the booked one) and one of bob's, each user's webhook subscribed by the CLI; their events
    noticed and delivered by the notifier with the site's key."""
    booked.bookings.book(
        BOBS_SLICE,
        NOW + timedelta(days=5),
        [BookingRequest(node_urn("n1"), NOW + timedelta(hours=6), NOW + timedelta(hours=8))],
        owner_urn=BOB,
    )
    outbox = Outbox(booked.database)
    outbox.subscribe(ALICE, "webhook", alice.url)
    outbox.subscribe(BOB, "webhook", bob.url)
    notifier = Notifier(booked.database, NotifySettings(webhook_secret=SECRET), clock=lambda: booked.clock[0])
    notifier.notice()
    assert notifier.deliver() == 2
    return notifier


def test_each_users_webhook_is_signed_with_their_own_secret_only(
    booked: Booked,
    receivers: tuple[Receiver, Receiver],
    lab_config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice, bob = receivers
    _two_users_delivered(booked, alice, bob, lab_config)
    # The secrets each user is given (the operator's command; the page derives the same, see below).
    alices = cli_secret(lab_config, alice.url, ALICE, capsys)
    bobs = cli_secret(lab_config, bob.url, BOB, capsys)
    assert alices != bobs and SECRET not in (alices, bobs)
    ((alice_headers, alice_body),) = alice.received
    ((bob_headers, bob_body),) = bob.received
    assert json.loads(alice_body)["event"] == json.loads(bob_body)["event"] == "allocated"
    assert verified(alices, alice_headers, alice_body) and verified(bobs, bob_headers, bob_body)
    assert alice_headers["x-sfa-omf-signature"].startswith("sha256=")
    assert alice_headers["x-sfa-omf-signature"] != bob_headers["x-sfa-omf-signature"]
    # Neither user's secret checks the other's messages; the old site-wide check validates nothing any more.
    assert not verified(alices, bob_headers, bob_body) and not verified(bobs, alice_headers, alice_body)
    assert not old_site_wide_check(alice_headers, alice_body) and not old_site_wide_check(bob_headers, bob_body)
    assert not verified(SECRET, alice_headers, alice_body)


def test_a_user_cannot_forge_a_message_another_users_receiver_accepts(
    booked: Booked,
    receivers: tuple[Receiver, Receiver],
    lab_config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice, bob = receivers
    _two_users_delivered(booked, alice, bob, lab_config)
    alices = cli_secret(lab_config, alice.url, ALICE, capsys)
    bobs = cli_secret(lab_config, bob.url, BOB, capsys)
    # Alice, holding her secret, forges a "cancelled" of bob's lease to bob's webhook, signed as the aggregate signs.
    forged = {"event": "cancelled", "slice": BOBS_SLICE, "reason": "cancelled by the operator: slice shut down"}
    post_webhook(bob.url, "forged", forged, [alices])
    headers, body = bob.received[-1]
    assert json.loads(body)["event"] == "cancelled"
    assert not verified(bobs, headers, body)  # bob's receiver refuses it
    assert verified(alices, headers, body)  # (it is a valid signature, with alice's secret: not bob's)


def test_an_altered_body_an_altered_or_old_timestamp_fail_the_check(
    booked: Booked,
    receivers: tuple[Receiver, Receiver],
    lab_config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice, bob = receivers
    _two_users_delivered(booked, alice, bob, lab_config)
    alices = cli_secret(lab_config, alice.url, ALICE, capsys)
    ((headers, body),) = alice.received
    assert verified(alices, headers, body)
    altered = json.dumps({**json.loads(body), "event": "cancelled"}, sort_keys=True).encode()
    assert not verified(alices, headers, altered)
    stamp = int(headers["x-sfa-omf-timestamp"])
    assert abs(stamp - time.time()) <= FRESH_S  # the time it was signed, in Unix seconds
    moved = {**headers, "x-sfa-omf-timestamp": str(stamp + 1)}  # a replay dressed as fresh: the signature says no
    assert not verified(alices, moved, body, now=stamp + 1)
    # A message captured an hour ago and sent again: its signature is right, its time is not.
    assert verified(alices, headers, body, now=stamp + FRESH_S) and not verified(alices, headers, body, stamp + 3600)


def test_the_page_shows_each_user_their_own_webhooks_secret(lab: Lab, pki: DemoPki) -> None:  # noqa: F811
    lab.web.settings = replace(lab.web.settings, webhook_key=SECRET)
    secrets = {}
    for who, urn in (("alice", ALICE), ("bob", BOB)):
        chain = pki.users[who].chain
        page = lab.web.handle(WebRequest(path="/me", caller_chain=chain))
        assert "webhook-secret" not in page.body.decode()  # no webhook yet: no secret
        token = re.search(r'name="token" value="([0-9a-f]+)"', page.body.decode())
        assert token is not None
        url = f"https://hooks.example.org/{who}"
        form = {"token": token.group(1), "channel": "webhook", "action": "subscribe", "address": url}
        answer = lab.web.handle(
            WebRequest(path="/me/notify", caller_chain=chain, method="POST", form=form, came_from=OURS)
        )
        assert answer.status == 200 and f"You will be told by webhook at {url}" in unescape(answer.body.decode())
        secrets[urn] = page_secret(unescape(answer.body.decode()))
        again = unescape(lab.web.handle(WebRequest(path="/me", caller_chain=chain)).body.decode())
        assert page_secret(again) == secrets[urn]
    assert secrets[ALICE] != secrets[BOB]
    alice_page = unescape(lab.web.handle(WebRequest(path="/me", caller_chain=pki.users["alice"].chain)).body.decode())
    assert secrets[BOB] not in alice_page and SECRET not in alice_page
    # The secret shown is the one the notifier signs alice's webhook with.
    notifier = Notifier(lab.database, NotifySettings(webhook_secret=SECRET))
    assert notifier.webhook_secrets("https://hooks.example.org/alice") == [secrets[ALICE]]
    # Without a webhook_key nothing is signed, and the page says so.
    lab.web.settings = replace(lab.web.settings, webhook_key="")
    unsigned = unescape(lab.web.handle(WebRequest(path="/me", caller_chain=pki.users["alice"].chain)).body.decode())
    assert "webhook-secret" not in unsigned and "are not signed" in unsigned
    # A server that did not pass the key: neither a secret nor a wrong "not signed".
    lab.web.settings = replace(lab.web.settings, webhook_key=None)
    unknown = unescape(lab.web.handle(WebRequest(path="/me", caller_chain=pki.users["alice"].chain)).body.decode())
    assert "webhook-secret" not in unknown and "are not signed" not in unknown


def test_the_cli_shows_the_subscribers_secret_and_an_operators_url_has_its_own(
    tmp_path: Path,
    receivers: tuple[Receiver, Receiver],
    lab_config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ann = "urn:publicid:IDN+lab+user+ann"
    mine, operators = receivers
    capsys.readouterr()
    assert main(["notify", "subscribe", ann, "webhook", mine.url, "--config", str(lab_config)]) == 0
    anns = secret_shown(capsys.readouterr().out)
    assert anns == cli_secret(lab_config, mine.url, ann, capsys)
    assert anns != cli_secret(lab_config, mine.url, "urn:publicid:IDN+lab+user+bob", capsys)
    assert main(["notify", "secret", mine.url, "ann", "--config", str(lab_config)]) == 2
    assert "is not a user URN" in capsys.readouterr().err
    # The operator's test message to ann's webhook is signed with ann's secret.
    assert main(["notify", "test", mine.url, "--config", str(lab_config)]) == 0
    ((headers, body),) = mine.received
    assert json.loads(body)["event"] == "test" and verified(anns, headers, body)
    # A URL of [sfa_notify] operators is nobody's subscription: its secret is the operator's ("notify secret URL").
    operators_secret = cli_secret(lab_config, operators.url, "", capsys)
    assert operators_secret not in (anns, SECRET)
    ops_database = Database(sqlite_url(str(tmp_path / "ops.sqlite")))
    ops_database.upgrade()
    try:
        settings = NotifySettings(webhook_secret=SECRET, operator_addresses=(operators.url,))
        Notifier(ops_database, settings).send(notifier_module.test_message(operators.url))
    finally:
        ops_database.dispose()
    ((headers, body),) = operators.received
    assert verified(operators_secret, headers, body) and not verified(anns, headers, body)


def test_a_url_two_users_chose_carries_each_ones_signature(
    tmp_path: Path,
    receivers: tuple[Receiver, Receiver],
    lab_config: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two users' subscriptions to one URL, written before a second one was refused (below), keep working; the
    notifier warns of it (by the URL's origin: its path holds a token)."""
    shared, _ = receivers
    ops_database = Database(sqlite_url(str(tmp_path / "shared.sqlite")))
    ops_database.upgrade()
    try:
        with ops_database.write() as session:  # as an older version let them be written
            session.add_all(
                NotifySubscription(user_urn=user, channel="webhook", address=shared.url) for user in (ALICE, BOB)
            )
        # One outbox row serves both users of the address: one POST, with one signature per subscription.
        Notifier(ops_database, NotifySettings(webhook_secret=SECRET)).send(notifier_module.test_message(shared.url))
    finally:
        ops_database.dispose()
    ((headers, body),) = shared.received
    assert len(headers["x-sfa-omf-signature"].split(", ")) == 2
    (warning,) = [r.getMessage() for r in caplog.records if "subscription of 2 users" in r.getMessage()]
    assert "/hook/" not in warning
    for user in (ALICE, BOB):
        assert verified(cli_secret(lab_config, shared.url, user, capsys), headers, body)
    assert not verified(
        cli_secret(lab_config, shared.url, "urn:publicid:IDN+testbed+user+carol", capsys), headers, body
    )


def webhooks(site_database: Database) -> dict[str, str]:
    """user -> their webhook URL, for every user who has one."""
    with site_database.read() as session:
        found = session.execute(
            select(NotifySubscription.user_urn, NotifySubscription.address).where(
                NotifySubscription.channel == "webhook"
            )
        )
        return {user: address for user, address in found}


def test_a_url_another_user_holds_is_refused_on_the_page(lab: Lab, pki: DemoPki) -> None:  # noqa: F811
    """Mallory (bob here) learns alice's webhook URL (it holds her token) and subscribes it: every POST to it would
    carry a signature with each subscriber's secret, so bob's own lease events would reach alice's receiver signed
    validly for her. The page refuses it without saying whose it is, and writes nothing; alice may set it again, and
    bob a URL of his own."""
    url = "https://hooks.example.org/alice-token-123"

    def subscribe(who: str, address: str) -> tuple[int, str]:
        chain = pki.users[who].chain
        page = lab.web.handle(WebRequest(path="/me", caller_chain=chain))
        token = re.search(r'name="token" value="([0-9a-f]+)"', page.body.decode())
        assert token is not None
        form = {"token": token.group(1), "channel": "webhook", "action": "subscribe", "address": address}
        answer = lab.web.handle(
            WebRequest(path="/me/notify", caller_chain=chain, method="POST", form=form, came_from=OURS)
        )
        return answer.status, unescape(answer.body.decode())

    assert subscribe("alice", url)[0] == 200
    status, text = subscribe("bob", url)
    assert status == 400 and WEBHOOK_TAKEN in text
    assert "alice" not in text.lower()
    assert webhooks(lab.database) == {ALICE: url}  # nothing written for bob
    # Alice's own again, and bob's own URL, are fine.
    assert subscribe("alice", url)[0] == 200
    assert subscribe("bob", "https://hooks.example.org/bob-token-456")[0] == 200
    assert webhooks(lab.database) == {ALICE: url, BOB: "https://hooks.example.org/bob-token-456"}
    assert Notifier(lab.database, NotifySettings(webhook_secret=SECRET)).webhook_secrets(url) == [
        subscription_secret(SECRET, ALICE, url)
    ]


def test_a_url_another_user_holds_is_refused_by_the_cli(lab_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The operator's ``notify subscribe`` refuses it the same way (exit status 2, nothing written)."""
    ann, bob = "urn:publicid:IDN+lab+user+ann", "urn:publicid:IDN+lab+user+bob"
    url = "https://hooks.example.org/ann-token"
    assert main(["notify", "subscribe", ann, "webhook", url, "--config", str(lab_config)]) == 0
    capsys.readouterr()
    assert main(["notify", "subscribe", bob, "webhook", url, "--config", str(lab_config)]) == 2
    out, err = capsys.readouterr()
    assert WEBHOOK_TAKEN in err and "ann" not in err and not re.search(r"\b[0-9a-f]{64}\b", out + err)
    site_database = Database(read_config(str(lab_config)).calendar_url)
    try:
        assert webhooks(site_database) == {ann: url}
    finally:
        site_database.dispose()
    # Ann subscribing it again is no refusal.
    assert main(["notify", "subscribe", ann, "webhook", url, "--config", str(lab_config)]) == 0


def test_the_served_page_shows_the_secret_the_notifier_signs_with(running_reactor: Any, tmp_path: Path) -> None:
    """``sfa-omf serve``'s own wiring (server/app.py) hands the web calendar the site's key: the page a user reaches
    over TLS shows their subscription's secret (a server that did not pass it showed none)."""
    report = init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    settings = replace(
        read_config(str(tmp_path / "lab" / "sfa-omf.conf")), notify_enabled=True, notify_webhook_key=SECRET
    )
    aggregate = build_aggregate(settings)
    ann = "urn:publicid:IDN+lab+user+ann"
    url = "https://hooks.example.org/ann"
    Outbox(aggregate.database).subscribe(ann, "webhook", url)
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)
    try:
        sfi = Path(report.sfi_dirs["ann"])
        context = client_context(str(sfi / "lab.ann.user.gid"), str(sfi / "lab.ann.pkey"))
        connection = http.client.HTTPSConnection("127.0.0.1", server.port_number, context=context, timeout=30)
        try:
            connection.request("GET", "/calendar/me")
            response = connection.getresponse()
            status, body = response.status, unescape(response.read().decode())
        finally:
            connection.close()
    finally:
        blockingCallFromThread(running_reactor, server.stop)
    assert status == 200
    shown = page_secret(body)
    assert shown == Notifier(aggregate.database, NotifySettings(webhook_secret=SECRET)).webhook_secrets(url)[0]
