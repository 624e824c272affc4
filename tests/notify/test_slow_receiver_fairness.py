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
from sqlalchemy import select

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import NotifyOutbox
from sfa_omf.calendar.outbox import Message, Outbox
from sfa_omf.config import load_config
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
