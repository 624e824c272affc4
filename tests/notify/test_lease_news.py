"""A lease's news recorded where it happens, in the unit of work of the change, and delivered once to the slice's
users (real aiosmtpd and HTTP receiver; SQLite and PostgreSQL): a node agent's failure report, a node lost while a
lease runs on it, and an operator putting a booked node into maintenance (also an operators' event)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.outbox import NotifyEvents, Outbox
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.errors import GeniError
from sfa_omf.notify.channels import SmtpSettings
from sfa_omf.notify.notifier import Notifier, NotifySettings
from sfa_omf.times import utcnow
from tests.calendar.conftest import node_urn
from tests.notify.conftest import ALICE, SECRET, Booked, Receiver, SmtpServer, url_digest

BOB = "urn:publicid:IDN+testbed+user+bob"


def notifier(booked: Booked, smtp: SmtpServer, **more: object) -> Notifier:
    settings = NotifySettings(
        smtp=SmtpSettings(port=smtp.port, sender="am@testbed.example", timeout_s=5),
        webhook_secret=SECRET,
        **more,  # type: ignore[arg-type]
    )
    return Notifier(booked.database, settings, clock=lambda: booked.clock[0])


def run_twice(note: Notifier) -> None:
    for _ in range(2):  # noticing again adds nothing
        note.notice()
        note.deliver()


def test_an_agents_failure_report_reaches_the_slice_users_once(
    booked: Booked, smtp: SmtpServer, receiver: Receiver
) -> None:
    outbox = Outbox(booked.database)
    outbox.subscribe(ALICE, "email", "alice@example.org")
    outbox.subscribe(ALICE, "webhook", receiver.url)
    agents = Agents(booked.database, clock=lambda: booked.clock[0])
    for _ in range(2):  # the agent reports again after a restart: told once
        agents.report(node_urn("n1"), booked.lease_id, "failed", "useradd: /etc/passwd is read-only")
    agents.report(node_urn("n1"), booked.lease_id, "ended", "")
    run_twice(notifier(booked, smtp))
    failed = [m for m in smtp.mailbox.messages if "failed on the testbed" in str(m["Subject"])]
    assert len(failed) == 1, smtp.mailbox.events()
    text = failed[0].get_content()
    assert "why:    the agent of node urn:publicid:IDN+testbed+node+n1 could not set the lease up: useradd" in text
    assert [e for e in receiver.events() if ":failed:" in e] == [
        # The URL's origin and a digest of the whole URL (two webhooks at one origin get distinct keys)
        f"{booked.lease_id}:failed:agent:1:webhook:{receiver.url.removesuffix('/hook')}#{url_digest(receiver.url)}"
    ]


def test_a_report_for_a_lease_not_on_the_node_records_no_news(booked: Booked) -> None:
    with pytest.raises(GeniError):
        Agents(booked.database).report(node_urn("n1"), "no-such-lease", "failed", "x")
    assert NotifyEvents(booked.database).since(booked.at(-48)) == []


def test_a_node_lost_while_a_lease_runs_on_it_fails_the_lease_for_its_users(booked: Booked, smtp: SmtpServer) -> None:
    """The sweep marks the agent's node lost; the leases running on it now are failed, in the same unit of work."""
    from sfa_omf.calendar.agent_models import Agent
    from sfa_omf.calendar.models import Node

    booked.bookings.mark_provisioned(booked.lease_id)
    with booked.database.write() as session:  # an enrolled agent last heard an hour before the slot's start
        node = session.query(Node).filter_by(component_id=node_urn("n1")).one()
        heard_s = int(booked.at(1).timestamp())
        session.add(
            Agent(
                node_id=node.id,
                hostname="n1",
                key_sha256="0" * 64,
                cert_sha256="0" * 64,
                certificate="",
                registered_s=heard_s,
                last_seen_s=heard_s,
                lost=False,
                vpn_number=1,
            )
        )
    Outbox(booked.database).subscribe(ALICE, "email", "alice@example.org")
    booked.clock[0] = booked.at(3)  # inside the slot [2 h, 4 h)
    agents = Agents(booked.database, clock=lambda: booked.clock[0])
    assert agents.sweep_lost(timeout_s=600) == [node_urn("n1")]
    assert agents.sweep_lost(timeout_s=600) == []
    run_twice(notifier(booked, smtp))
    failed = [m for m in smtp.mailbox.messages if "failed on the testbed" in str(m["Subject"])]
    assert len(failed) == 1
    assert "lost contact: its agent was last heard at" in failed[0].get_content()


def test_maintenance_of_a_booked_node_tells_its_users_and_the_operators(
    booked: Booked, smtp: SmtpServer, receiver: Receiver
) -> None:
    outbox = Outbox(booked.database)
    outbox.subscribe(ALICE, "email", "alice@example.org")
    # bob's lease on n1 was cancelled: he is not told
    cancelled = booked.bookings.book(
        "urn:publicid:IDN+testbed+slice+old",
        booked.at(100),
        [BookingRequest(node_urn("n1"), booked.at(6), booked.at(7))],
        owner_urn=BOB,
    ).leases[0]
    booked.bookings.cancel(cancelled.id)
    outbox.subscribe(BOB, "email", "bob@example.org")
    inventory = Inventory(booked.database, Policy())
    inventory.set_state(node_urn("n1"), "maintenance")
    inventory.set_state(node_urn("n1"), "maintenance")  # already in maintenance: nothing new
    booked.clock[0] = utcnow()
    run_twice(notifier(booked, smtp, operator_addresses=(receiver.url,)))
    told = [m for m in smtp.mailbox.messages if "maintenance" in str(m["Subject"])]
    to_alice = [m for m in told if str(m["To"]) == "alice@example.org"]
    assert [str(m["Subject"]) for m in to_alice] == [
        "[sfa-omf] lease of demo is affected: a node goes into maintenance"
    ]
    assert "the operator put node urn:publicid:IDN+testbed+node+n1 into maintenance" in to_alice[0].get_content()
    assert [str(m["To"]) for m in told] == ["alice@example.org"], f"not bob, whose lease {cancelled.id} is cancelled"
    (operators,) = receiver.received
    assert operators[0]["x-sfa-omf-event"].startswith(f"node_maintenance:{node_urn('n1')}:")
    assert b'"leases": ["' + booked.lease_id.encode() + b'"]' in operators[1]
    inventory.set_state(node_urn("n1"), "usable")
    assert len(NotifyEvents(booked.database).since(utcnow() - timedelta(hours=1))) == 2
