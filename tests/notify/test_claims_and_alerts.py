"""Several notifiers on one database deliver every message exactly once (claims), and the events that are not lease
states (refused renewal, node down, testbed backend down/recovered, reconciler repairs) reach their recipients once,
with real peers: aiosmtpd and an HTTP receiver on 127.0.0.1, SQLite and a real PostgreSQL."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.outbox import NotifyEvents, Outbox
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.notify.alerts import Alerts
from sfa_omf.notify.channels import SmtpSettings
from sfa_omf.notify.notifier import Notifier, NotifySettings
from sfa_omf.server.app import _backend_task
from sfa_omf.testbed.base import BackgroundTask
from sfa_omf.testbed.oar.backend import ReconcileReport
from tests.calendar.conftest import NOW, fresh_database, node_urn
from tests.notify.conftest import ALICE, SECRET, SLICE, Booked, Receiver, SmtpServer, free_port

OPERATOR = "urn:publicid:IDN+testbed+user+ops"
LEASES = 20
LIFE = 6  # events of a provisioned lease whose slot is over


def settings(smtp_port: int, **more: object) -> NotifySettings:
    return NotifySettings(
        smtp=SmtpSettings(port=smtp_port, sender="am@testbed.example", timeout_s=5),
        webhook_secret=SECRET,
        **more,  # type: ignore[arg-type]
    )


def many_leases(database: Database, clock: Callable[[], datetime]) -> list[str]:
    """LEASES provisioned leases of ALICE's slice on nodes of their own, over by the clock's time."""
    inventory = Inventory(database, Policy())
    bookings = Bookings(database, Policy(), "testbed", clock=clock)
    ids = []
    for i in range(LEASES):
        inventory.add_node(NodeSpec(node_urn(f"m{i}"), f"m{i}"))
        lease = bookings.book(
            SLICE,
            NOW + timedelta(days=5),
            [BookingRequest(node_urn(f"m{i}"), NOW + timedelta(hours=1), NOW + timedelta(hours=2))],
            owner_urn=ALICE,
        ).leases[0]
        bookings.mark_provisioned(lease.id)
        ids.append(lease.id)
    return ids


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_two_notifiers_on_one_database_send_each_message_once(
    kind: str, tmp_path: Path, smtp: SmtpServer, receiver: Receiver
) -> None:
    """Two notifiers, each with its own connections (as two server processes have), notice and deliver at the same
    time, twice: every event arrives exactly once on each channel, and both took a share of the work."""
    first = fresh_database(kind, tmp_path)
    second = Database(first.url)
    later = NOW + timedelta(hours=3)
    many_leases(first, lambda: NOW)
    Outbox(first).subscribe(ALICE, "email", "alice@example.org")
    Outbox(first).subscribe(ALICE, "webhook", receiver.url)
    notifiers = [Notifier(db, settings(smtp.port), clock=lambda: later) for db in (first, second)]
    delivered = [0, 0]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            start.wait()
            for _ in range(2):
                notifiers[index].notice()
                delivered[index] += notifiers[index].deliver(limit=1000)
        except BaseException as exc:  # seen by the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not any(thread.is_alive() for thread in threads), "a notifier did not finish within 300 s"
        assert errors == []
        expected = 2 * LEASES * LIFE
        mail, hooks = Counter(smtp.mailbox.events()), Counter(receiver.events())
        assert len(mail) == len(hooks) == LEASES * LIFE, "every event arrived on both channels"
        assert set(mail.values()) == set(hooks.values()) == {1}, "and none twice"
        # Which notifier wins each claim is the scheduler's choice (usually both deliver some): not asserted.
        assert sum(delivered) == expected, f"delivered between them: {delivered}"
        assert Outbox(first).counts().sent == expected and Outbox(first).counts().pending == 0
    finally:
        second.dispose()
        first.dispose()


def test_a_claim_keeps_others_off_until_it_expires(booked: Booked, smtp: SmtpServer) -> None:
    """A notifier that claimed a message and died: nobody sends it until the claim expires, then another does; the
    dead one's late mark changes nothing."""
    Outbox(booked.database).subscribe(ALICE, "email", "alice@example.org")
    clock = [NOW]
    outbox = Outbox(booked.database, clock=lambda: clock[0])
    survivor = Notifier(booked.database, settings(smtp.port), clock=lambda: clock[0])
    assert survivor.notice() == 1
    (claimed,) = outbox.claim("dead-notifier", limit=10, hold_s=300)
    assert outbox.claim("another", limit=10, hold_s=300) == [] and outbox.due() == []
    assert survivor.deliver() == 0 and smtp.mailbox.events() == []
    clock[0] = NOW + timedelta(seconds=300)
    assert survivor.deliver() == 1
    assert outbox.mark_sent(claimed.id, "dead-notifier") is False
    assert outbox.mark_failed(claimed.id, "dead-notifier", "late", 30) is False
    assert survivor.deliver() == 0
    assert [key.split(":")[1] for key in smtp.mailbox.events()] == ["allocated"]
    assert outbox.counts().sent == 1 and outbox.counts().pending == 0


def operators(database: Database, smtp: SmtpServer, receiver: Receiver, clock: Callable[[], datetime]) -> Notifier:
    Outbox(database).subscribe(OPERATOR, "email", "ops@example.org")
    return Notifier(
        database,
        settings(smtp.port, operator_urns=frozenset({OPERATOR}), operator_addresses=(receiver.url,)),
        clock=clock,
    )


def test_backend_down_and_recovered_are_told_once(
    booked: Booked, smtp: SmtpServer, receiver: Receiver, tmp_path: Path
) -> None:
    """The backend's periodic task fails (its testbed refuses connections: a real closed port), keeps failing, then
    works (a real listening socket): one "down", one "recovered", to the admins' subscriptions and the operators'
    addresses; a second process seeing the same states adds nothing."""
    aggregate_like = _AggregateView(booked.database, lambda: booked.clock[0])
    listener = socket.create_server(("127.0.0.1", 0))
    port = [free_port()]

    def reach_testbed() -> None:
        socket.create_connection(("127.0.0.1", port[0]), timeout=5).close()

    task = BackgroundTask("mirror the testbed's own reservations", 30, reach_testbed)
    try:
        for _ in range(3):
            _backend_task(aggregate_like, task)  # type: ignore[arg-type]
        Alerts(booked.database, lambda: booked.clock[0]).backend_failed(
            "fake-testbed", task.name, "again, from another process"
        )
        port[0] = listener.getsockname()[1]
        for _ in range(2):
            _backend_task(aggregate_like, task)  # type: ignore[arg-type]
        Alerts(booked.database, lambda: booked.clock[0]).backend_worked("fake-testbed", task.name)
    finally:
        listener.close()
    events = [event.event for event in NotifyEvents(booked.database).since(NOW - timedelta(days=1))]
    assert events == ["backend_down", "backend_recovered"]
    note = operators(booked.database, smtp, receiver, lambda: booked.clock[0])
    note.notice()
    note.deliver()
    note.notice()
    note.deliver()
    ops_mail = [m for m in smtp.mailbox.messages if m["To"] == "ops@example.org"]
    assert [str(m["Subject"]) for m in ops_mail] == [
        "[sfa-omf] testbed backend fake-testbed is down (mirror the testbed's own reservations: "
        "[Errno 111] Connection refused)",
        "[sfa-omf] testbed backend fake-testbed has recovered (mirror the testbed's own reservations works again)",
    ]
    assert [key.split(":")[0] for key in receiver.events()] == ["backend_", "backend_"]
    assert all(m["To"] != "alice@example.org" or "backend" not in str(m["Subject"]) for m in smtp.mailbox.messages)


def test_one_task_failing_while_another_works_is_down_once_and_a_multi_line_error_is_sent(
    booked: Booked, smtp: SmtpServer, receiver: Receiver
) -> None:
    """OAR's mirror failing every 30 s while its reconciler works: one "down", no flapping; the error's several
    lines (a database's or OAR's message) make a one-line subject, and the message is delivered."""
    alerts = Alerts(booked.database, lambda: booked.clock[0])  # the tests' time, as every event here
    for _ in range(3):
        alerts.backend_failed("fake-testbed", "mirror", "could not connect\nis the server running?\n")
        alerts.backend_worked("fake-testbed", "reconcile")
    events = [event.event for event in NotifyEvents(booked.database).since(NOW - timedelta(days=1))]
    assert events == ["backend_down"]
    note = operators(booked.database, smtp, receiver, lambda: booked.clock[0])
    note.notice()
    assert note.deliver() == 2  # the e-mail and the webhook
    (mail,) = [m for m in smtp.mailbox.messages if m["To"] == "ops@example.org"]
    assert str(mail["Subject"]) == (
        "[sfa-omf] testbed backend fake-testbed is down (mirror: could not connect is the server running?)"
    )
    # The body keeps the error as it was, line breaks included.
    assert "  error: could not connect\nis the server running?\n" in mail.get_content().replace("\r\n", "\n")


def test_reconciler_repairs_are_told_and_quiet_rounds_are_not(
    booked: Booked, smtp: SmtpServer, receiver: Receiver
) -> None:
    view = _AggregateView(booked.database, lambda: booked.clock[0])
    reports = [ReconcileReport(), ReconcileReport(resubmitted=["lease-1"]), ReconcileReport()]
    task = BackgroundTask("reconcile the calendar with the testbed", 300, lambda: reports.pop(0), repairs=True)
    for _ in range(3):
        _backend_task(view, task)  # type: ignore[arg-type]
        booked.clock[0] += timedelta(seconds=300)
    (event,) = NotifyEvents(booked.database).since(NOW - timedelta(days=1))
    assert event.event == "reconciler_repaired" and "lease-1" in str(event.payload["report"])
    note = operators(booked.database, smtp, receiver, lambda: booked.clock[0])
    note.notice()
    note.deliver()
    ops = [m for m in smtp.mailbox.messages if m["To"] == "ops@example.org"]
    assert len(ops) == 1 and "lease-1" in ops[0].get_content()
    assert [key.split(":")[0] for key in receiver.events()] == ["reconciler_repaired"]


def test_refused_renewal_reaches_the_slice_users_once(booked: Booked, smtp: SmtpServer) -> None:
    Outbox(booked.database).subscribe(ALICE, "email", "alice@example.org")
    alerts = Alerts(booked.database, clock=lambda: booked.clock[0])
    for _ in range(2):  # the same request refused twice: one message
        alerts.renewal_refused(SLICE, ALICE, [], booked.at(40), "another booking took the time")
    note = Notifier(booked.database, settings(smtp.port), clock=lambda: booked.clock[0])
    note.notice()
    note.deliver()
    refused = [m for m in smtp.mailbox.messages if "refused" in str(m["Subject"])]
    assert len(refused) == 1
    assert str(refused[0]["Subject"]) == f"[sfa-omf] renewal of {SLICE} to {booked.at(40):%Y-%m-%dT%H:%M:%SZ} refused"
    assert "another booking took the time" in refused[0].get_content()


class _AggregateView:
    """What the server's backend loop uses of the aggregate: its backend's name and its alerts (a real Alerts over
    the test's database)."""

    def __init__(self, database: Database, clock: Callable[[], datetime]) -> None:
        self.alerts = Alerts(database, clock)
        self.backend = _Named()


class _Named:
    name = "fake-testbed"
