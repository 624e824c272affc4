"""A dead webhook holds back no one else's messages, the e-mail's Message-ID is the same on every send, and two webhooks
at one origin get distinct keys. Real peers on 127.0.0.1: an SMTP server (aiosmtpd), an HTTP receiver, a TCP listener
that accepts and never answers, and a port nothing listens on; the outbox on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.outbox import Message, Outbox
from sfa_omf.notify.channels import SmtpSettings, send_email
from sfa_omf.notify.notifier import Notifier, NotifySettings, message_key
from tests.calendar.conftest import NOW, fresh_database
from tests.notify.conftest import Receiver, SilentServer, SmtpServer
from tests.ports import free_port

BOB_MAIL = "bob@example.org"
LEASE_NEWS = {
    "event": "started",
    "slice": "urn:publicid:IDN+testbed+slice+demo",
    "nodes": [],
    "start": "",
    "end": "",
    "state": "",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    db = fresh_database(request.param, tmp_path)
    yield db
    db.dispose()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    listener = SilentServer()
    yield listener
    listener.close()


def _dead_then_bob(dead_url: str, receiver: Receiver) -> list[Message]:
    """Three messages to the dead webhook (queued first), then another user's e-mail and webhook elsewhere."""
    messages = [
        Message(message_key(f"l{i}:started", "webhook", dead_url), "started", "webhook", dead_url, {"event": "started"})
        for i in range(3)
    ]
    messages.append(
        Message(
            message_key("l9:started", "email", BOB_MAIL), "started", "email", BOB_MAIL, {**LEASE_NEWS, "lease": "l9"}
        )
    )
    messages.append(
        Message(
            message_key("l9:started", "webhook", receiver.url), "started", "webhook", receiver.url, {"event": "started"}
        )
    )
    return messages


def _attempts_and_due(database: Database) -> dict[str, tuple[int, timedelta | None]]:
    """Each message's key -> (attempts, when it is due next counted from NOW; None once sent)."""
    outbox = Outbox(database, clock=lambda: NOW)
    found: dict[str, tuple[int, timedelta | None]] = {}
    for message in Outbox(database, clock=lambda: NOW + timedelta(days=1)).due(limit=100):
        due = outbox.next_attempt(message.id)
        found[message.key] = (message.attempts, None if due is None else due - NOW)
    return found


@pytest.mark.parametrize("dead", ["silent", "refused"])
def test_a_dead_webhook_is_tried_once_a_round_and_others_go_out_in_that_round(
    dead: str,
    database: Database,
    silent: SilentServer,
    smtp: SmtpServer,
    receiver: Receiver,
) -> None:
    """One time-out (or refused connection) at a webhook's origin postpones that origin's other messages for the
    rest of the round, untried and with no attempt counted; the other user's e-mail and webhook go out in the same
    round (before, each message to the dead origin waited for its own time-out ahead of them)."""
    dead_url = silent.url if dead == "silent" else f"http://127.0.0.1:{free_port()}/hook"
    Outbox(database).enqueue(_dead_then_bob(dead_url, receiver))
    settings = NotifySettings(smtp=SmtpSettings(port=smtp.port), webhook_timeout_s=0.5)
    notifier = Notifier(database, settings, clock=lambda: NOW)

    assert notifier.deliver() == 2  # bob's e-mail and webhook, in the round where the dead webhook failed
    assert [str(m["To"]) for m in smtp.mailbox.messages] == [BOB_MAIL]
    assert len(receiver.received) == 1
    if dead == "silent":
        assert len(silent.held) == 1  # the dead receiver was tried once, not once per message
    pending = _attempts_and_due(database)
    first, *others = [message.key for message in _dead_then_bob(dead_url, receiver)[:3]]
    assert pending[first] == (1, timedelta(seconds=30))  # tried, failed: its backoff
    for key in others:
        assert pending[key] == (0, timedelta(seconds=30))  # postponed untried: no attempt counted


def test_a_dead_webhook_due_again_is_not_tried_again_in_the_same_round(
    database: Database, silent: SilentServer, smtp: SmtpServer, receiver: Receiver
) -> None:
    """With no backoff (retry_base_s 0) the failed message is due again at once and claimed again in the same round:
    its origin stays held back for that round instead of being waited for once more."""
    Outbox(database).enqueue(_dead_then_bob(silent.url, receiver))
    settings = NotifySettings(smtp=SmtpSettings(port=smtp.port), webhook_timeout_s=0.5, retry_base_s=0)
    notifier = Notifier(database, settings, clock=lambda: NOW)

    assert notifier.deliver(limit=30) == 2
    assert len(silent.held) == 1
    assert [str(m["To"]) for m in smtp.mailbox.messages] == [BOB_MAIL]


def test_a_dead_webhook_is_not_waited_for_again_before_its_backoff_in_later_rounds(
    database: Database, silent: SilentServer, smtp: SmtpServer, receiver: Receiver
) -> None:
    """A round is a few seconds: before, each round tried the dead origin again (one time-out each, ahead of other
    users' messages) as long as any message to it was due. Now it rests for its backoff, doubled at each failure."""
    now = [NOW]
    outbox = Outbox(database, clock=lambda: now[0])
    settings = NotifySettings(smtp=SmtpSettings(port=smtp.port), webhook_timeout_s=0.5, retry_base_s=30)
    notifier = Notifier(database, settings, clock=lambda: now[0])

    def news(round_number: int, address: str) -> Message:
        key = message_key(f"r{round_number}:started", "webhook", address)
        return Message(key, "started", "webhook", address, {"event": "started"})

    outbox.enqueue([news(1, silent.url)])
    assert notifier.deliver() == 0 and len(silent.held) == 1  # tried: silent, 30 s of rest
    now[0] += timedelta(seconds=10)
    outbox.enqueue([news(2, silent.url), news(2, receiver.url)])
    assert notifier.deliver() == 1  # the other receiver's; the dead one not tried in its rest
    assert len(silent.held) == 1 and len(receiver.received) == 1
    now[0] += timedelta(seconds=25)  # 35 s after the failure: tried again (the second message), silent again
    assert notifier.deliver() == 0 and len(silent.held) == 2
    now[0] += timedelta(seconds=40)  # its rest is 60 s now: not yet
    outbox.enqueue([news(3, silent.url)])
    assert notifier.deliver() == 0 and len(silent.held) == 2
    outbox.enqueue([news(3, receiver.url)])
    assert notifier.deliver() == 1 and len(receiver.received) == 2  # others' messages go out meanwhile
    now[0] += timedelta(seconds=25)  # 65 s after the second failure: tried again
    assert notifier.deliver() == 0 and len(silent.held) == 3


def test_a_webhook_that_answers_an_error_does_not_hold_back_its_origin(database: Database, receiver: Receiver) -> None:
    """Only an unreachable or silent receiver holds its origin back: a 500 is that message's own failure, and the
    next message to the same receiver is still tried in the round."""
    receiver.status = 500
    urls = [receiver.url + "/a", receiver.url + "/b"]
    Outbox(database).enqueue(
        [Message(message_key("l1:started", "webhook", url), "started", "webhook", url, {}) for url in urls]
    )
    assert Notifier(database, NotifySettings(), clock=lambda: NOW).deliver() == 0
    assert [attempts for attempts, _ in _attempts_and_due(database).values()] == [1, 1]


SEND_ONE = """
import sys
from sfa_omf.notify.channels import SmtpSettings, send_email
send_email(SmtpSettings(port=int(sys.argv[1]), sender="SFA OMF <sfa-omf@aggregate.example.org>"),
           "alice@example.org", sys.argv[2], "subject", "text")
"""


def test_the_message_id_derives_from_the_key_on_every_send_and_in_every_process(smtp: SmtpServer) -> None:
    """A re-sent message (the repeat window of the outbox) carries the same Message-ID, whichever process sends it;
    another key gets another one."""
    key = "3f2c:started:email:alice@example.org"
    settings = SmtpSettings(port=smtp.port, sender="SFA OMF <sfa-omf@aggregate.example.org>")
    send_email(settings, "alice@example.org", key, "subject", "text")
    send_email(settings, "alice@example.org", key, "subject", "text")
    subprocess.run([sys.executable, "-c", SEND_ONE, str(smtp.port), key], check=True, cwd=Path(__file__).parents[2])
    send_email(settings, "alice@example.org", "3f2c:ended:email:alice@example.org", "subject", "text")

    ids = [str(message["Message-ID"]) for message in smtp.mailbox.messages]
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert ids[0].endswith("@aggregate.example.org>")  # the domain of [sfa_notify] from


def test_a_sender_without_a_usable_domain_gives_the_message_id_domain_sfa_omf(smtp: SmtpServer) -> None:
    send_email(SmtpSettings(port=smtp.port, sender="sfa-omf"), "alice@example.org", "k", "subject", "text")
    (message,) = smtp.mailbox.messages
    assert str(message["Message-ID"]).endswith("@sfa-omf>")


def test_two_webhooks_at_one_origin_get_distinct_keys_without_their_tokens(
    database: Database, receiver: Receiver
) -> None:
    """Two users' webhooks at one provider (a token each in the path) get one lease event each: a receiver dropping
    repeats by X-SFA-OMF-Event (as the docs advise) must see two keys; neither shows a token."""
    alice, bob = receiver.url + "/T-ALICE-0123456789", receiver.url + "/T-BOB-9876543210"
    Outbox(database).enqueue(
        [Message(message_key("3f2c:started", "webhook", url), "started", "webhook", url, {}) for url in (alice, bob)]
    )
    assert Notifier(database, NotifySettings(), clock=lambda: NOW).deliver() == 2

    events = receiver.events()
    assert len(set(events)) == 2, events
    for headers, body in receiver.received:
        assert b"T-ALICE" not in body and b"T-BOB" not in body
        assert "T-ALICE" not in headers["x-sfa-omf-event"] and "T-BOB" not in headers["x-sfa-omf-event"]
        assert unquote(headers["x-sfa-omf-event"]).startswith("3f2c:started:webhook:" + receiver.url.rsplit("/", 1)[0])
