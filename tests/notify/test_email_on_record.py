"""Lease e-mails go by default to the address on record ([sfa_notify] email_by_default = yes): the local registry's
record, else the e-mail in the GID the user presented at Allocate or Provision (kept in the booking's unit of work);
an address the user chose wins, an opt-out is kept, and ``email_by_default = no`` sends only to subscribers. A real
aggregate call path (credentials checked), a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.models import UserContact
from sfa_omf.calendar.outbox import Outbox
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.calendar.slices import Contact, record_contact
from sfa_omf.errors import GeniError
from sfa_omf.notify.channels import SmtpSettings
from sfa_omf.notify.notifier import Notifier, NotifySettings
from sfa_omf.registry.records import Record, Records
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki
from tests.notify.conftest import Booked, SmtpServer

NODE = "urn:publicid:IDN+testbed+node+n1"
ANN = "urn:publicid:IDN+testbed+user+ann"


@pytest.fixture
def aggregate(pki: DemoPki, tmp_path: Path) -> Iterator[Aggregate]:
    database = Database(sqlite_url(str(tmp_path / "c.sqlite")))
    database.upgrade()
    made = Aggregate(AggregateSettings(authority_hrn="testbed"), database, CredentialVerifier(pki.roots))
    made.inventory.add_node(NodeSpec(NODE, "n1"))
    yield made
    database.dispose()


def allocate(aggregate: Aggregate, pki: DemoPki, hours: int, user: str = "alice") -> None:
    person = pki.users[user]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours)
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
        f'<node client_id="c" component_id="{NODE}" exclusive="true"/></rspec>'
    )
    window = {"geni_start_time": format_time(start), "geni_end_time": format_time(start + timedelta(hours=1))}
    aggregate.allocate(person.chain, pki.slice_urn, [person.slice_cred], rspec, window)


def delivered(aggregate: Aggregate, smtp: SmtpServer, by_default: bool = True) -> list[tuple[str, str]]:
    """(recipient, subject) of the e-mails a notifier sends now."""
    settings = NotifySettings(smtp=SmtpSettings(port=smtp.port, timeout_s=5), email_by_default=by_default)
    note = Notifier(aggregate.database, settings)
    before = len(smtp.mailbox.messages)
    note.notice()
    note.deliver()
    return [(str(m["To"]), str(m["Subject"])) for m in smtp.mailbox.messages[before:]]


def contacts(aggregate: Aggregate) -> list[tuple[str, str]]:
    with aggregate.database.read() as session:
        return [tuple(row) for row in session.execute(select(UserContact.user_urn, UserContact.gid_email))]  # type: ignore[misc]


def test_the_gid_email_of_the_booking_user_is_the_default_address(
    aggregate: Aggregate, pki: DemoPki, smtp: SmtpServer
) -> None:
    alice = pki.users["alice"].chain[0]
    assert alice.email == "alice@testbed.example.org"
    allocate(aggregate, pki, hours=3)
    assert contacts(aggregate) == [(alice.urn, alice.email)]
    assert delivered(aggregate, smtp) == [("alice@testbed.example.org", "[sfa-omf] lease of demo booked")]
    assert delivered(aggregate, smtp) == [], "once"


def test_a_refused_allocate_records_no_address(aggregate: Aggregate, pki: DemoPki, smtp: SmtpServer) -> None:
    allocate(aggregate, pki, hours=3, user="bob")
    with pytest.raises(GeniError) as refused:  # carol asks for the same slot: a conflict writes nothing
        allocate(aggregate, pki, hours=3, user="carol")
    assert refused.value.code == 7  # REFUSED: a booking conflict
    assert [urn for urn, _ in contacts(aggregate)] == [pki.users["bob"].chain[0].urn]


def test_the_registry_record_wins_a_chosen_address_wins_and_an_opt_out_holds(
    aggregate: Aggregate, pki: DemoPki, smtp: SmtpServer
) -> None:
    alice = pki.users["alice"].chain[0]
    Records(aggregate.database).add(Record("testbed.alice", "user", alice.urn or "", "", email="ann@lab.example.org"))
    allocate(aggregate, pki, hours=3)
    assert [to for to, _ in delivered(aggregate, smtp)] == ["ann@lab.example.org"]
    outbox = Outbox(aggregate.database)
    outbox.subscribe(alice.urn or "", "email", "alice.private@example.org")
    allocate(aggregate, pki, hours=5)
    # (a new address also gets the day's earlier news: the outbox's key names the address)
    assert {to for to, _ in delivered(aggregate, smtp)} == {"alice.private@example.org"}
    assert outbox.unsubscribe(alice.urn or "", "email") is True
    assert outbox.unsubscribe(alice.urn or "", "email") is False, "already out"
    allocate(aggregate, pki, hours=7)
    assert delivered(aggregate, smtp) == [], "opted out: not even at the address on record"
    outbox.subscribe(alice.urn or "", "email", "back@example.org")  # opting in again replaces the opt-out
    allocate(aggregate, pki, hours=9)
    assert {to for to, _ in delivered(aggregate, smtp)} == {"back@example.org"}


def test_without_email_by_default_only_subscribers_are_told(
    aggregate: Aggregate, pki: DemoPki, smtp: SmtpServer
) -> None:
    allocate(aggregate, pki, hours=3)
    assert delivered(aggregate, smtp, by_default=False) == []
    assert Outbox(aggregate.database).email_defaults([pki.users["alice"].chain[0].urn or ""]) == {
        pki.users["alice"].chain[0].urn: "alice@testbed.example.org"
    }


def test_two_first_contacts_of_one_user_at_once_both_succeed(booked: Booked) -> None:
    """A user's first Provision and another first call at once (Provision is not serialised per user): both record
    the GID's address, neither fails on the key; the later one's address stays (SQLite and PostgreSQL)."""
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with booked.database.write() as session:
                record_contact(session, Contact(ANN, "ann@laptop.example.org"), 2)
        except BaseException as exc:  # seen below
            errors.append(exc)

    racer = threading.Thread(target=second)
    with booked.database.write() as session:
        record_contact(session, Contact(ANN, "ann@desk.example.org"), 1)
        racer.start()
        racer.join(timeout=1)  # it waits for this unit of work (the key on PostgreSQL, the write lock on SQLite)
    racer.join(timeout=60)
    assert not racer.is_alive() and errors == []
    with booked.database.read() as session:
        assert session.get(UserContact, ANN).gid_email == "ann@laptop.example.org"  # type: ignore[union-attr]
