"""A webhook that answers, but slowly (within the time-out), holds back other users' notifications by a bounded time:
each origin gets a budget of waiting per delivery round, then its other messages wait for the next round; within a
batch, origins take turns. Real peers on 127.0.0.1: HTTP receivers (one answering each POST after 1 s, others at
once) and an SMTP server (aiosmtpd); the outbox on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import NotifyOutbox
from sfa_omf.calendar.outbox import Message, Outbox
from sfa_omf.config import load_config
from sfa_omf.notify import notifier as notifier_module
from sfa_omf.notify.channels import SmtpSettings
from sfa_omf.notify.notifier import Notifier, NotifySettings, message_key, shown_key
from sfa_omf.server.app import notify_settings_of
from tests.calendar.conftest import NOW, fresh_database
from tests.notify.conftest import SmtpServer

BOB_MAIL = "bob@example.org"
LEASE_NEWS = {
    "event": "started",
    "slice": "urn:publicid:IDN+testbed+slice+demo",
    "nodes": [],
    "start": "",
    "end": "",
    "state": "",
}
SLOW_S = 1.0  # each POST to the slow receiver takes this long, far under the time-out
BUDGET_S = 3.0  # the test's budget per origin and round: at most 3 slow posts (each >= 1 s) fit in it


class Receivers:
    """Real HTTP receivers sharing one log of the webhook keys they were sent, in the order they arrived (the
    notifier posts one at a time, so the order is the order of delivery)."""

    def __init__(self) -> None:
        self.arrived: list[tuple[str, str]] = []  # (receiver's name, X-SFA-OMF-Event)
        self.servers: list[ThreadingHTTPServer] = []

    def start(self, name: str, delay_s: float = 0.0) -> str:
        arrived = self.arrived

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                arrived.append((name, self.headers["X-SFA-OMF-Event"]))
                time.sleep(delay_s)  # slow, but answers within the notifier's time-out
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/hook"

    def of(self, name: str) -> list[str]:
        return [key for who, key in self.arrived if who == name]

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    db = fresh_database(request.param, tmp_path)
    yield db
    db.dispose()


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    peers = Receivers()
    yield peers
    peers.stop()


def webhook(lease: str, url: str) -> Message:
    return Message(message_key(f"{lease}:started", "webhook", url), "started", "webhook", url, {"event": "started"})


def rows(database: Database) -> dict[str, tuple[str, int, str | None]]:
    """Each outbox row's key -> (state, attempts, claimed_by)."""
    with database.read() as session:
        found = session.execute(
            select(NotifyOutbox.key, NotifyOutbox.state, NotifyOutbox.attempts, NotifyOutbox.claimed_by)
        )
        return {key: (state, attempts, claimed_by) for key, state, attempts, claimed_by in found}


def test_a_slow_webhook_holds_back_others_one_budget_not_all_its_messages(
    database: Database, smtp: SmtpServer, receivers: Receivers
) -> None:
    """Twenty of alice's messages to a webhook answering each in 1 s, then bob's e-mail and webhook. Before the fix
    the first round posted all twenty (20 s) before bob's; now the slow origin gets its budget, bob's go out in the
    first round, and alice's rest wait, untried and unclaimed, for later rounds, where each goes out once."""
    slow = receivers.start("slow", SLOW_S)
    fast = receivers.start("fast")
    alice = [webhook(f"l{i}", slow) for i in range(20)]
    bob_mail = Message(
        message_key("l90:started", "email", BOB_MAIL), "started", "email", BOB_MAIL, {**LEASE_NEWS, "lease": "l90"}
    )
    bob = webhook("l91", fast)
    Outbox(database).enqueue([*alice, bob_mail, bob])
    settings = NotifySettings(smtp=SmtpSettings(port=smtp.port), webhook_origin_budget_s=BUDGET_S)
    first = Notifier(database, settings, clock=lambda: NOW)

    sent = first.deliver()

    assert receivers.of("fast") == [shown_key(bob)]
    assert [str(m["X-SFA-OMF-Event"]) for m in smtp.mailbox.messages] == [bob_mail.key]
    # Each slow post takes at least SLOW_S, so at most BUDGET_S / SLOW_S of them fit in the round's budget; bob's
    # webhook went out right after them (not after all twenty).
    posted = receivers.of("slow")
    assert 1 <= len(posted) <= BUDGET_S / SLOW_S, posted
    assert [who for who, _ in receivers.arrived].index("fast") == len(posted)
    assert sent == len(posted) + 2
    state = rows(database)
    waiting = [message.key for message in alice if state[message.key][0] == "pending"]
    assert waiting == [message.key for message in alice[len(posted) :]]
    # Postponed, not failed: no attempt counted, and released (no claim left) for the next round to take.
    assert {state[key][1:] for key in waiting} == {(0, None)}

    # Later rounds, by this notifier and by another one on the same database (as after a restart or in a second
    # process): each takes what the previous round released, until none is left.
    second = Notifier(database, settings, clock=lambda: NOW)
    rounds = 1
    while Outbox(database, clock=lambda: NOW).counts().pending:
        before = len(receivers.of("slow"))
        (first if rounds % 2 == 0 else second).deliver()
        rounds += 1
        assert len(receivers.of("slow")) > before  # each round goes on with the slow origin
        assert rounds <= len(alice)
    assert rounds > 1
    assert sorted(receivers.of("slow")) == sorted(shown_key(message) for message in alice)  # each once, none lost
    assert set(rows(database).values()) == {("sent", 1, None)}  # one attempt each, postponements not counted
    assert receivers.of("fast") == [shown_key(bob)] and len(smtp.mailbox.messages) == 1


def test_origins_take_turns_within_a_batch(database: Database, receivers: Receivers) -> None:
    """Alice's five messages queued before bob's one, all in one claimed batch: bob's goes second, not sixth."""
    alice_url = receivers.start("alice")
    bob_url = receivers.start("bob")
    alice = [webhook(f"a{i}", alice_url) for i in range(5)]
    bob = webhook("b0", bob_url)
    Outbox(database).enqueue([*alice, bob])
    notifier = Notifier(database, NotifySettings(smtp=SmtpSettings(port=1)), clock=lambda: NOW)

    assert notifier.deliver() == 6
    assert receivers.arrived == [("alice", shown_key(alice[0])), ("bob", shown_key(bob))] + [
        ("alice", shown_key(message)) for message in alice[1:]
    ]


def test_webhook_timeout_and_budget_settings(tmp_path: Path) -> None:
    """The webhook's time-out defaults to 10 s (it was 30); both it and the origin's budget are [sfa_notify]
    settings that reach the notifier."""
    assert NotifySettings().webhook_timeout_s == 10
    path = tmp_path / "sfa-omf.conf"
    path.write_text(f"[sfa]\ninterface_hrn = testbed\ndata_dir = {tmp_path}\n[sfa_notify]\n")
    defaults = notify_settings_of(load_config(str(path), environ={}).settings)
    assert (defaults.webhook_timeout_s, defaults.webhook_origin_budget_s) == (10, 10)
    path.write_text(
        f"[sfa]\ninterface_hrn = testbed\ndata_dir = {tmp_path}\n[sfa_notify]\n"
        "webhook_timeout_s = 5\nwebhook_origin_budget_s = 20\n"
    )
    loaded = load_config(str(path), environ={})
    assert loaded.problems == ()
    chosen = notify_settings_of(loaded.settings)
    assert (chosen.webhook_timeout_s, chosen.webhook_origin_budget_s) == (5, 20)


def test_a_backlog_of_a_slow_origin_does_not_hide_another_users_message(
    database: Database, receivers: Receivers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More of alice's messages to a slow webhook than a round may hold (MAX_HELD, lowered here), then bob's one.
    Before the fix the round went on claiming alice's messages (the lowest ids) into its held ones until MAX_HELD and
    ended: bob's waited rounds on end (50 min for a 2000-message backlog). Now, once the slow origin used its time,
    the round's claims leave its messages in the queue: bob's goes out in the first round, and the held ones are
    released in one statement (it was one unit of work per message)."""
    monkeypatch.setattr(notifier_module, "MAX_HELD", 15)
    slow = receivers.start("slow", 0.5)
    fast = receivers.start("fast")
    alice = [webhook(f"l{i:02}", slow) for i in range(40)]  # four claimed batches of hers before bob's
    bob = webhook("l99", fast)
    Outbox(database).enqueue([*alice, bob])
    # A budget under one slow post: the slow origin's first post uses it (no time is measured by the test).
    settings = NotifySettings(smtp=SmtpSettings(port=1), webhook_origin_budget_s=0.1)
    notifier = Notifier(database, settings, clock=lambda: NOW)
    releases: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE NOTIFY_OUTBOX") and "next_attempt_s" in statement:
            releases.append(statement)

    event.listen(database.engine, "before_cursor_execute", note)
    try:
        assert notifier.deliver() == 2
    finally:
        event.remove(database.engine, "before_cursor_execute", note)

    assert receivers.of("fast") == [shown_key(bob)]
    assert receivers.of("slow") == [shown_key(alice[0])]
    state = rows(database)
    assert state[bob.key] == ("sent", 1, None) and state[alice[0].key] == ("sent", 1, None)
    # Alice's others wait for the next round: untried, unclaimed (the held ones released, the rest never claimed).
    assert {state[message.key] for message in alice[1:]} == {("pending", 0, None)}
    assert len(releases) == 1, releases  # the first batch's nine held messages, released at once


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_claim_leaves_exactly_the_skipped_origins(kind: str, tmp_path: Path) -> None:
    """The claim's filter compares text: a prefix ``https://a.example/`` leaves https://a.example's messages, never
    those of https://a.example.org nor https://a.example:8443 (another origin that begins with the same letters), nor
    e-mails; an exact address leaves that address only; a LIKE wildcard in a URL is just a character."""
    database = fresh_database(kind, tmp_path)
    try:
        kept = [
            webhook("k1", "https://a.example.org/hook"),
            webhook("k2", "https://a.example:8443/hook"),
            webhook("k3", "https://a_example/hook"),
            webhook("k4", "https://b.example?token=2"),
            Message(message_key("k5:started", "email", BOB_MAIL), "started", "email", BOB_MAIL, LEASE_NEWS),
        ]
        left = [
            webhook("s1", "https://a.example/one"),
            webhook("s2", "https://a.example/two?x"),
            webhook("s3", "https://b.example?token=1"),
        ]
        Outbox(database).enqueue([left[0], kept[0], left[1], kept[1], kept[2], left[2], kept[3], kept[4]])
        claimed = Outbox(database, clock=lambda: NOW).claim(
            "me",
            100,
            60,
            skip_addresses={"https://b.example?token=1"},
            skip_prefixes={"https://a.example/", "https://a%example/"},
        )
        assert sorted(message.key for message in claimed) == sorted(message.key for message in kept)
        assert {rows(database)[message.key] for message in left} == {("pending", 0, None)}
    finally:
        database.dispose()
