"""Notifications end to end with real peers: lease events noticed from the calendar, written once to the outbox,
delivered by e-mail to a real SMTP server (aiosmtpd) and by signed webhooks to a real HTTP receiver; retries when
the SMTP server is down; exactly once across a SIGKILL between noticing and delivering; `sfa-omf notify`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from sfa_omf.calendar.outbox import Outbox
from sfa_omf.calendar.timeline import BookingRow
from sfa_omf.cli import main
from sfa_omf.notify.channels import OPERATOR_SUBSCRIBER, SmtpSettings, subscription_secret
from sfa_omf.notify.events import lease_events
from sfa_omf.notify.notifier import Notifier, NotifySettings
from tests.calendar.conftest import NOW, node_urn
from tests.notify.conftest import ALICE, SECRET, SLICE, Booked, Receiver, SmtpServer, free_port, signed_with

LIFE = ["allocated", "provisioned", "starting_soon", "started", "ending_soon", "ended"]


def notifier(booked: Booked, smtp_port: int) -> Notifier:
    settings = NotifySettings(
        smtp=SmtpSettings(port=smtp_port, sender="am@testbed.example", timeout_s=5),
        webhook_secret=SECRET,
        lead=timedelta(minutes=15),
    )
    return Notifier(booked.database, settings, clock=lambda: booked.clock[0])


def kinds(keys: list[str]) -> list[str]:
    return [key.split(":")[1] for key in keys]


def test_event_rules() -> None:
    row = BookingRow("L", SLICE, ALICE, node_urn("n1"), NOW, NOW + timedelta(hours=1), "provisioned", "", "")
    lead = timedelta(minutes=10)
    assert [e.event for e in lease_events([row], NOW - timedelta(hours=1), lead)] == ["allocated", "provisioned"]
    assert [e.event for e in lease_events([row], NOW, lead)] == ["allocated", "provisioned", "starting_soon", "started"]
    assert [e.event for e in lease_events([row], NOW + timedelta(minutes=50), lead)][-1] == "ending_soon"
    ended = lease_events([row], NOW + timedelta(hours=2), lead)
    assert [e.event for e in ended][-1] == "ended" and ended[
        -1
    ].key == f"L:ended:{int((NOW + timedelta(hours=1)).timestamp())}"
    cancelled = BookingRow("C", SLICE, ALICE, node_urn("n1"), NOW, NOW + timedelta(hours=1), "cancelled", "", "")
    assert [e.event for e in lease_events([cancelled], NOW, lead)] == ["allocated", "cancelled"]
    failed = BookingRow(
        "F", SLICE, ALICE, node_urn("n1"), NOW, NOW + timedelta(hours=1), "provisioned", "geni_failed", ""
    )
    assert "failed" in [e.event for e in lease_events([failed], NOW - timedelta(hours=1), lead)]
    external = BookingRow("X", SLICE, "", node_urn("n1"), NOW, NOW + timedelta(hours=1), "external", "", "oar:1")
    assert lease_events([external], NOW, lead) == []


def test_each_event_arrives_once_by_mail_and_webhook(booked: Booked, smtp: SmtpServer, receiver: Receiver) -> None:
    outbox = Outbox(booked.database)
    outbox.subscribe(ALICE, "email", "alice@example.org")
    outbox.subscribe(ALICE, "webhook", receiver.url)
    note = notifier(booked, smtp.port)
    booked.bookings.mark_provisioned(booked.lease_id)
    for hours in (0, 0.5, 1.8, 2.0, 3.8, 4.0, 4.5):  # through the whole slot, twice at each step
        booked.clock[0] = booked.at(hours)
        for _ in range(2):
            note.notice()
            note.deliver()
    assert kinds(smtp.mailbox.events()) == LIFE and kinds(receiver.events()) == LIFE
    first = smtp.mailbox.messages[0]
    assert first["To"] == "alice@example.org" and first["From"] == "am@testbed.example"
    assert first["Subject"] == "[sfa-omf] lease of demo booked" and booked.lease_id in first.get_payload()
    for headers, body in receiver.received:
        # Signed with alice's subscription's secret (derived from the site's key, never the key itself).
        assert signed_with(subscription_secret(SECRET, ALICE, receiver.url), headers, body)
        assert not signed_with(SECRET, headers, body)
        assert json.loads(body)["lease"] == booked.lease_id and json.loads(body)["slice"] == SLICE
    assert outbox.counts().sent == 12 and outbox.counts().pending == 0


def test_renewal_gives_a_new_end(booked: Booked, smtp: SmtpServer) -> None:
    Outbox(booked.database).subscribe(ALICE, "email", "alice@example.org")
    note = notifier(booked, smtp.port)
    booked.bookings.mark_provisioned(booked.lease_id)
    booked.clock[0] = booked.at(3.8)
    note.notice()
    booked.bookings.renew(booked.lease_id, booked.at(6))
    booked.clock[0] = booked.at(5.9)
    note.notice()
    note.deliver()
    assert kinds(smtp.mailbox.events()) == [
        "allocated",
        "provisioned",
        "starting_soon",
        "started",
        "ending_soon",
        "ending_soon",
    ]


def test_a_down_smtp_server_delays_but_loses_nothing(booked: Booked) -> None:
    port = free_port()  # nothing listens here yet
    Outbox(booked.database).subscribe(ALICE, "email", "alice@example.org")
    note = notifier(booked, port)
    assert note.notice() == 1 and note.deliver() == 0
    later = Outbox(booked.database, clock=lambda: NOW + timedelta(days=1))
    (pending,) = later.due()
    assert pending.attempts == 1 and later.counts().pending == 1
    assert later.next_attempt(pending.id) == NOW + timedelta(seconds=30)
    booked.clock[0] = NOW + timedelta(seconds=29)
    assert note.deliver() == 0  # not due yet: nothing is tried
    server = SmtpServer(port).start()
    try:
        booked.clock[0] = NOW + timedelta(seconds=30)
        assert note.deliver() == 1 and note.deliver() == 0
        assert kinds(server.mailbox.events()) == ["allocated"]
    finally:
        server.stop()


def test_a_refusing_webhook_is_retried_with_backoff(booked: Booked, receiver: Receiver) -> None:
    Outbox(booked.database).subscribe(ALICE, "webhook", receiver.url)
    note = notifier(booked, free_port())
    note.notice()
    receiver.status = 503
    outbox = Outbox(booked.database, clock=lambda: booked.clock[0])
    waits = []
    for _ in range(3):
        assert note.deliver() == 0
        (message,) = [m for m in Outbox(booked.database, clock=lambda: NOW + timedelta(days=1)).due()]
        waits.append(outbox.next_attempt(message.id) - booked.clock[0])  # type: ignore[operator]
        booked.clock[0] = outbox.next_attempt(message.id)  # type: ignore[assignment]
    assert waits == [timedelta(seconds=30), timedelta(seconds=60), timedelta(seconds=120)]
    receiver.status = 200
    assert note.deliver() == 1 and kinds(receiver.events()) == ["allocated"]


def test_exactly_once_across_a_sigkill(tmp_path: Path, smtp: SmtpServer) -> None:
    """A process notices the events, is killed with SIGKILL before it delivers; a new process delivers each once."""
    from sfa_omf.calendar.database import Database, sqlite_url

    database = Database(sqlite_url(str(tmp_path / "cal.sqlite")))
    database.upgrade()
    from sfa_omf.calendar.booking import Bookings
    from sfa_omf.calendar.inventory import Inventory
    from sfa_omf.calendar.policy import Policy
    from sfa_omf.calendar.records import BookingRequest, NodeSpec
    from sfa_omf.times import utcnow

    now = utcnow().replace(microsecond=0)
    Inventory(database, Policy()).add_node(NodeSpec(node_urn("n1"), "n1"))
    # Two hours ahead at least: "starting soon" (15 minutes before) must not be due yet, whatever the minute.
    start = now.replace(minute=0, second=0) + timedelta(hours=2)
    bookings = Bookings(database, Policy(), "testbed")
    lease = bookings.book(
        SLICE,
        now + timedelta(days=2),
        [BookingRequest(node_urn("n1"), start, start + timedelta(hours=1))],
        owner_urn=ALICE,
    ).leases[0]
    bookings.mark_provisioned(lease.id)
    Outbox(database).subscribe(ALICE, "email", "alice@example.org")
    script = textwrap.dedent(
        f"""
        import sys, time
        from sfa_omf.calendar.database import Database
        from sfa_omf.notify.channels import OPERATOR_SUBSCRIBER, SmtpSettings, subscription_secret
        from sfa_omf.notify.notifier import Notifier, NotifySettings
        notifier = Notifier(Database({database.url!r}), NotifySettings(smtp=SmtpSettings(port={smtp.port})))
        print(notifier.notice(), flush=True)
        time.sleep(600)  # killed here, before delivering
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "2"  # allocated, provisioned
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL and smtp.mailbox.messages == []
    restarted = Notifier(database, NotifySettings(smtp=SmtpSettings(port=smtp.port)))
    assert restarted.notice() == 0  # already in the outbox
    assert restarted.deliver() == 2 and restarted.deliver() == 0
    assert kinds(smtp.mailbox.events()) == ["allocated", "provisioned"]
    database.dispose()


def test_notify_commands(
    tmp_path: Path, smtp: SmtpServer, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path / "lab"), "--authority", "lab", "--user", "ann"]) == 0
    config = tmp_path / "lab" / "sfa-omf.conf"
    with config.open("a") as handle:
        handle.write(f"\n[sfa_notify]\nsmtp_port = {smtp.port}\nfrom = am@lab.example\nwebhook_key = {SECRET}\n")
    assert main(["notify", "test", "ann@example.org", "--config", str(config)]) == 0
    (message,) = smtp.mailbox.messages
    assert message["Subject"] == "sfa-omf test message" and message["From"] == "am@lab.example"
    assert main(["notify", "test", receiver.url, "--config", str(config)]) == 0
    ((headers, body),) = receiver.received
    assert json.loads(body)["event"] == "test"
    # A URL nobody subscribed: signed with the operator's secret of it (sfa-omf notify secret URL).
    assert signed_with(subscription_secret(SECRET, OPERATOR_SUBSCRIBER, receiver.url), headers, body)
    capsys.readouterr()
    assert main(["notify", "test", "not an address", "--config", str(config)]) == 2
    assert "is not a webhook URL" in capsys.readouterr().err
    assert main(["notify", "test", f"http://127.0.0.1:{free_port()}/", "--config", str(config)]) == 1
    assert "not delivered" in capsys.readouterr().out
    ann = "urn:publicid:IDN+lab+user+ann"
    assert main(["notify", "subscribe", ann, "email", "ann@example", "--config", str(config)]) == 2
    assert "is not an e-mail address" in capsys.readouterr().err
    assert main(["notify", "subscribe", ann, "email", "--config", str(config)]) == 0  # the registry's address
    assert "at ann@lab.example.org" in capsys.readouterr().out
    assert main(["notify", "subscribe", ann.replace("ann", "zed"), "email", "--config", str(config)]) == 2
    assert "the registry has no e-mail address" in capsys.readouterr().err
    assert main(["notify", "subscribe", ann, "webhook", "--config", str(config)]) == 2
    assert "a webhook needs its URL" in capsys.readouterr().err
    assert main(["notify", "subscribe", ann, "email", "ann@example.org", "--config", str(config)]) == 0
    assert main(["notify", "unsubscribe", ann, "email", "--config", str(config)]) == 0
    assert main(["notify", "unsubscribe", ann, "email", "--config", str(config)]) == 1
    assert main(["notify", "status", "--config", str(config)]) == 0
    assert "pending 0  sent 0  failed 0" in capsys.readouterr().out


def test_racing_writers_enqueue_each_message_once(booked: Booked) -> None:
    """Eight threads write the same 20 messages at once (two notifiers noticing the same events): each lands once."""
    from concurrent.futures import ThreadPoolExecutor

    from sfa_omf.calendar.outbox import Message

    messages = [Message(f"k{i}", "allocated", "email", "a@example.org", {"n": i}) for i in range(20)]
    outbox = Outbox(booked.database)
    with ThreadPoolExecutor(8) as pool:
        added = list(pool.map(lambda _: outbox.enqueue(messages), range(8)))
    assert sum(added) == 20 and outbox.counts().pending == 20
    assert sorted(m.key for m in outbox.due(limit=100)) == sorted(m.key for m in messages)
