"""Leases cancelled by somebody else than their users say who and why: the operator's ``sfa-omf slice shutdown`` and a
GENI Shutdown (its caller named). A user's own Delete does not claim anybody else did it. Real peers: aiosmtpd and an
HTTP receiver of webhooks (tests/notify/conftest.py), the real CLI and a real aggregate call path (credentials
checked)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.outbox import Outbox
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.notify.channels import SmtpSettings
from sfa_omf.notify.notifier import Notifier, NotifySettings
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki
from tests.notify.conftest import ALICE, SECRET, SLICE, Receiver, SmtpServer

NODE = "urn:publicid:IDN+testbed+node+n1"
AM = "urn:publicid:IDN+testbed+authority+am"  # the aggregate of `sfa-omf init`'s testbed and of AggregateSettings'


def deliver(database: Database, smtp: SmtpServer) -> None:
    """A notifier's rounds (twice: noticing again adds nothing)."""
    settings = NotifySettings(smtp=SmtpSettings(port=smtp.port, timeout_s=5), webhook_secret=SECRET)
    note = Notifier(database, settings)
    for _ in range(2):
        note.notice()
        note.deliver()


def cancelled_mail(smtp: SmtpServer) -> list[tuple[str, str]]:
    """(subject, text) of each e-mail about a cancellation."""
    return [
        (str(m["Subject"]), m.get_content())
        for m in smtp.mailbox.messages
        if ":cancelled:" in str(m["X-SFA-OMF-Event"])
    ]


def cancelled_hooks(receiver: Receiver) -> list[dict[str, object]]:
    """The JSON body of each webhook about a cancellation."""
    bodies = [json.loads(body) for _, body in receiver.received]
    return [body for body in bodies if body["event"] == "cancelled"]


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["init", str(tmp_path / "tb")]) == 0
    capsys.readouterr()
    return str(tmp_path / "tb" / "sfa-omf.conf")


def test_the_operators_slice_shutdown_tells_who_and_why(
    config: str, capsys: pytest.CaptureFixture[str], smtp: SmtpServer, receiver: Receiver
) -> None:
    assert main(["node", "add", NODE, "--config", config]) == 0
    database = Database(read_config(config).calendar_url)
    now = utcnow().replace(minute=0, second=0, microsecond=0)  # (on the slots' grain)
    # A running lease (booked two hours ago, provisioned, in its slot now) and a future one, both alice's.
    earlier = Bookings(database, Policy(), "testbed", clock=lambda: now - timedelta(hours=2))
    running = earlier.book(
        SLICE,
        now + timedelta(days=1),
        [BookingRequest(NODE, now - timedelta(hours=1), now + timedelta(hours=1))],
        owner_urn=ALICE,
    ).leases[0]
    earlier.mark_provisioned(running.id)
    future = (
        Bookings(database)
        .book(
            SLICE,
            now + timedelta(days=1),
            [BookingRequest(NODE, now + timedelta(hours=3), now + timedelta(hours=4))],
            owner_urn=ALICE,
        )
        .leases[0]
    )
    outbox = Outbox(database)
    outbox.subscribe(ALICE, "email", "alice@example.org")
    outbox.subscribe(ALICE, "webhook", receiver.url)
    capsys.readouterr()
    assert main(["slice", "shutdown", SLICE, "--config", config]) == 0
    assert "2 lease(s) cancelled" in capsys.readouterr().out
    deliver(database, smtp)

    mails = cancelled_mail(smtp)
    assert len(mails) == 2, smtp.mailbox.events()
    for subject, text in mails:
        assert subject == f"[sfa-omf] lease of demo cancelled by the operator of {AM}: slice shut down"
        assert f"why:    cancelled by the operator of {AM}: slice shut down. Contact the operator" in text
    hooks = cancelled_hooks(receiver)
    assert sorted(str(hook["lease"]) for hook in hooks) == sorted([running.id, future.id])
    for hook in hooks:  # the old fields as they were, and who and why added
        assert hook["state"] == "cancelled" and hook["slice"] == SLICE
        assert hook["cancelled_by"] == f"the operator of {AM}"
        assert hook["summary"] == f"lease of demo cancelled by the operator of {AM}: slice shut down"
        assert str(hook["reason"]).startswith(f"cancelled by the operator of {AM}: slice shut down. Contact")
    database.dispose()


@pytest.fixture
def aggregate(pki: DemoPki, tmp_path: Path) -> Iterator[Aggregate]:
    database = Database(sqlite_url(str(tmp_path / "c.sqlite")))
    database.upgrade()
    made = Aggregate(AggregateSettings(authority_hrn="testbed"), database, CredentialVerifier(pki.roots))
    made.inventory.add_node(NodeSpec(NODE, "n1"))
    yield made
    database.dispose()


def allocate(aggregate: Aggregate, pki: DemoPki) -> list[str]:
    """Alice's allocation of n1 for an hour, three hours from now: its sliver URNs."""
    alice = pki.users["alice"]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=3)
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
        f'<node client_id="c" component_id="{NODE}" exclusive="true"/></rspec>'
    )
    window = {"geni_start_time": format_time(start), "geni_end_time": format_time(start + timedelta(hours=1))}
    answer = aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, window)
    return [sliver["geni_sliver_urn"] for sliver in answer["geni_slivers"]]


def subscribe(aggregate: Aggregate, pki: DemoPki, receiver: Receiver) -> None:
    outbox = Outbox(aggregate.database)
    outbox.subscribe(pki.users["alice"].chain[0].urn, "email", "alice@example.org")
    outbox.subscribe(pki.users["alice"].chain[0].urn, "webhook", receiver.url)


def test_a_geni_shutdown_names_its_caller(
    aggregate: Aggregate, pki: DemoPki, smtp: SmtpServer, receiver: Receiver
) -> None:
    alice = pki.users["alice"]
    allocate(aggregate, pki)
    subscribe(aggregate, pki, receiver)
    assert aggregate.shutdown(alice.chain, pki.slice_urn, [alice.slice_cred]) is True
    deliver(aggregate.database, smtp)
    ((subject, text),) = cancelled_mail(smtp)
    assert (
        subject == f"[sfa-omf] lease of demo cancelled by {alice.chain[0].urn}: slice shut down at {AM} (GENI Shutdown)"
    )
    assert "until the operator releases it: contact the operator" in text
    (hook,) = cancelled_hooks(receiver)
    assert hook["cancelled_by"] == alice.chain[0].urn
    assert "slice shut down" in str(hook["reason"])


def test_a_users_own_delete_claims_nobody_else_cancelled_it(
    aggregate: Aggregate, pki: DemoPki, smtp: SmtpServer, receiver: Receiver
) -> None:
    alice = pki.users["alice"]
    slivers = allocate(aggregate, pki)
    subscribe(aggregate, pki, receiver)
    aggregate.delete(alice.chain, slivers, [alice.slice_cred], {})
    deliver(aggregate.database, smtp)
    ((subject, text),) = cancelled_mail(smtp)
    assert subject == "[sfa-omf] lease of demo cancelled"
    assert "operator" not in text.replace("or ask the operator (sfa-omf notify unsubscribe)", "")
    assert "why:" not in text
    (hook,) = cancelled_hooks(receiver)
    assert hook["state"] == "cancelled"
    assert not {"reason", "summary", "cancelled_by"} & set(hook), hook
