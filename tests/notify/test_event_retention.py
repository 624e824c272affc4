"""A refused renewal is told once per slice, kind of refusal and day (a script retrying Renew to "now + 8 days" every
minute recorded an event, so a message per member, for each second asked), and the notifier's pass deletes recorded
events and sent or given-up messages past their retention (nothing deleted them), keeping those whose presence still
keeps a notice from being sent again. Real calendar refusals, a real SMTP server and webhook receiver, SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from sfa_omf.calendar.models import NotifyEvent, NotifyOutbox
from sfa_omf.calendar.outbox import PRUNE_BATCH, LeaseNews, NotifyEvents, Outbox, add_event, add_lease_event
from sfa_omf.calendar.outbox import RecordedEvent as Recorded
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.errors import GeniError
from sfa_omf.notify.alerts import BACKEND_STATES, Alerts
from sfa_omf.notify.notifier import EVENT_RETENTION, LOOK_BACK, OUTBOX_RETENTION
from tests.calendar.conftest import NOW, node_urn
from tests.notify.conftest import ALICE, SLICE, Booked, Receiver, SmtpServer, smtp_notifier

LATER_SLICE = "urn:publicid:IDN+testbed+slice+later"


def refused_renewal(booked: Booked, asked: datetime) -> str:
    """The calendar's own words refusing to renew the booked lease to ``asked`` (what the AM's Renew passes on)."""
    try:
        booked.bookings.renew(booked.lease_id, asked, "up")
    except GeniError as exc:
        return exc.message
    raise AssertionError(f"the renewal to {asked} was not refused")


def refusals(booked: Booked) -> list[Recorded]:
    return [e for e in NotifyEvents(booked.database).since(NOW - timedelta(days=1)) if e.event == "renewal_refused"]


def test_retried_refused_renewals_are_told_once_per_kind_and_day(booked: Booked, smtp: SmtpServer) -> None:
    booked.bookings.mark_provisioned(booked.lease_id)  # (an allocation would expire meanwhile: another refusal)
    Outbox(booked.database).subscribe(ALICE, "email", "alice@example.org")
    alerts = Alerts(booked.database, clock=lambda: booked.clock[0])
    first_asked = NOW + timedelta(days=9)
    for i in range(12):  # a script retrying "now + 9 days" every minute: each asks another second (and slot)
        booked.clock[0] = NOW + timedelta(minutes=i)
        asked = first_asked + timedelta(seconds=i, minutes=37 * i)
        alerts.renewal_refused(SLICE, ALICE, [], asked, refused_renewal(booked, asked))
    (told,) = refusals(booked)
    assert told.payload["asked_end"] == f"{first_asked:%Y-%m-%dT%H:%M:%SZ}"  # the first refusal's words
    assert "policy rule slice_expiry" in str(told.payload["reason"])
    note = smtp_notifier(booked, smtp.port)
    note.notice()
    note.deliver()
    assert len([m for m in smtp.mailbox.messages if "refused" in str(m["Subject"])]) == 1

    # Another reason the same day (a booking holds the time) is told; retried, it is not told again.
    booked.bookings.book(
        SLICE, NOW + timedelta(days=5), [BookingRequest(node_urn("n1"), booked.at(5), booked.at(8))], owner_urn=ALICE
    )
    for minutes in (60, 61, 62):
        booked.clock[0] = NOW + timedelta(minutes=minutes)
        asked = booked.at(4) + timedelta(hours=2, seconds=minutes)
        alerts.renewal_refused(SLICE, ALICE, [], asked, refused_renewal(booked, asked))
    assert len(refusals(booked)) == 2 and "is booked" in str(refusals(booked)[1].payload["reason"])

    # The next day, the same refusal is told again.
    booked.clock[0] = NOW + timedelta(days=1)
    alerts.renewal_refused(SLICE, ALICE, [], first_asked, refused_renewal(booked, first_asked))
    assert len(refusals(booked)) == 3
    note.notice()
    note.deliver()
    assert len([m for m in smtp.mailbox.messages if "refused" in str(m["Subject"])]) == 3


def test_the_notifiers_pass_deletes_what_is_past_retention_and_keeps_what_still_matters(
    booked: Booked, smtp: SmtpServer, receiver: Receiver
) -> None:
    database = booked.database
    clock = booked.clock
    later = booked.bookings.book(  # a lease the notifier still reads a month on
        LATER_SLICE,
        NOW + timedelta(days=60),
        [BookingRequest(node_urn("n1"), NOW + timedelta(days=28), NOW + timedelta(days=33))],
        owner_urn=ALICE,
    ).leases[0]
    outbox = Outbox(database, lambda: clock[0])
    outbox.subscribe(ALICE, "email", "old@example.org")
    receiver.status = 500  # webhooks stay pending (retried)
    outbox.subscribe(ALICE, "webhook", receiver.url)
    alerts = Alerts(database, clock=lambda: clock[0])
    alerts.renewal_refused(SLICE, ALICE, [], booked.at(9), "another booking took the time")
    with database.write() as session:
        for lease_id in (booked.lease_id, later.id):
            add_lease_event(session, lease_id, LeaseNews("failed", f"{lease_id}:failed:agent:1", "it broke"), NOW)
    alerts.backend_failed("oar", "reconcile", "unreachable")  # down since, never recovered
    alerts.backend_failed("oar", "mirror", "unreachable")
    note = smtp_notifier(booked, smtp.port)  # no operators: the backend's events make no messages
    assert note.notice() > 0
    outbox.subscribe(ALICE, "email", "alice@example.org")  # what was queued for old@ is given up (failed)
    note.notice()
    note.deliver()  # e-mails sent, webhooks pending
    clock[0] = NOW + timedelta(hours=1)
    alerts.backend_worked("oar", "mirror")
    clock[0] = NOW + timedelta(hours=2)
    alerts.backend_failed("oar", "mirror", "unreachable again")  # the newest state: down
    clock[0] = NOW + timedelta(days=29)
    alerts.renewal_refused(LATER_SLICE, ALICE, [], NOW + timedelta(days=40), "beyond (policy rule max_duration)")
    note.notice()
    note.deliver()
    before = outbox_rows(booked)
    newest_mirror = NotifyEvents(database).last(BACKEND_STATES, "backend_:oar:mirror:")
    assert newest_mirror is not None and newest_mirror.event == "backend_down"

    clock[0] = NOW + timedelta(days=31)
    assert note.notice() == 0  # its pass deleted what is past retention, and queued nothing again

    events = event_keys(booked)
    lease1, lease2 = booked.lease_id, later.id
    assert not any(key.startswith(f"renewal_refused:{SLICE}:") for key in events)  # older than EVENT_RETENTION
    assert f"{lease1}:failed:agent:1" not in events  # its lease ended long ago
    assert f"{lease2}:failed:agent:1" in events  # its lease is still read: its key keeps it from being told again
    assert any(key.startswith(f"renewal_refused:{LATER_SLICE}:") for key in events)  # 2 days old
    backend = [key for key in events if key.startswith("backend_:")]
    assert len(backend) == 2 and all(":backend_down:" in key for key in backend)  # each task's newest state
    assert [key for key in backend if ":mirror:" in key] == [newest_mirror.key]

    after = outbox_rows(booked)
    gone = set(before) - set(after)
    done = {key for key, state in before.items() if state in ("sent", "failed")}
    # Sent and given up a month ago: deleted (the lease's, the refusal's: e-mails sent, and given up to old@).
    assert {key for key in done if key.startswith(lease1)} <= gone
    assert {key for key in done if key.startswith(f"renewal_refused:{SLICE}:")} <= gone
    assert {before[key] for key in gone} == {"sent", "failed"}
    assert {k: s for k, s in before.items() if s == "pending"}.items() <= after.items()  # never deleted
    assert {k for k in before if k.startswith(lease2)} <= set(after)  # its lease is still read
    assert any(k.startswith(f"renewal_refused:{LATER_SLICE}:") and s == "sent" for k, s in after.items())

    # The backend state is still known: still failing tells nothing again, working again is told.
    alerts.backend_failed("oar", "mirror", "still unreachable")
    alerts.backend_failed("oar", "reconcile", "still unreachable")
    assert event_keys(booked) == events
    alerts.backend_worked("oar", "reconcile")
    assert [e.event for e in NotifyEvents(database).since(clock[0] - LOOK_BACK)] == ["backend_recovered"]


def test_a_first_pass_over_a_large_table_deletes_in_short_units_of_work(booked: Booked) -> None:
    events = NotifyEvents(booked.database)
    count = 2 * PRUNE_BATCH + 7
    with booked.database.write() as session:
        for i in range(count):
            add_event(session, Recorded(f"node_down:n{i}:1", "node_down", None, {"event": "node_down"}, NOW))
    now = NOW + EVENT_RETENTION + timedelta(days=1)
    first = events.prune(now - EVENT_RETENTION, now - LOOK_BACK, BACKEND_STATES, batches=1)
    assert (first.deleted, first.more) == (PRUNE_BATCH, True)
    second = events.prune(now - EVENT_RETENTION, now - LOOK_BACK, BACKEND_STATES, batches=1, after=first.last)
    assert (second.deleted, second.more) == (PRUNE_BATCH, True)
    rest = events.prune(now - EVENT_RETENTION, now - LOOK_BACK, BACKEND_STATES, batches=5, after=second.last)
    assert (rest.deleted, rest.more) == (7, False)
    assert event_keys(booked) == set()
    assert OUTBOX_RETENTION > EVENT_RETENTION > LOOK_BACK


def event_keys(booked: Booked) -> set[str]:
    with booked.database.read() as session:
        return set(session.scalars(select(NotifyEvent.key)))


def outbox_rows(booked: Booked) -> dict[str, str]:
    """outbox key -> state."""
    with booked.database.read() as session:
        return {key: state for key, state in session.execute(select(NotifyOutbox.key, NotifyOutbox.state))}
