"""A node's iCal feed decides each booking by itself, as the Gantt (gantt.layout), the node page and the private feed
do: a user sees whole the leases of the slices that list them and the leases they booked themselves, also in a slice
that lists other users but not them; everything else is "booked". One node holding two leases of one slice, seen by
three viewers: a member of the slice, the booker it no longer lists, a stranger (sans-IO, real database on SQLite and
PostgreSQL, real GIDs as viewers)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from sfa_omf.web.app import WebCalendar, WebRequest, WebSettings
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki
from tests.web.conftest import ALICE, DEMO, Lab
from tests.web.test_former_members import BOB, remove_alice_and_let_bob_book
from tests.web.test_web_app import bars_of, events

CAROL = "urn:publicid:IDN+testbed+user+carol"


def whole_in_node_feed(web: WebCalendar, who: str, pki: DemoPki) -> set[str]:
    """The leases node n2's feed shows to ``who`` with their slice (the others say "booked: " and their nodes only)."""
    feed = events(web.handle(WebRequest(path="/node/n2.ics", caller_chain=pki.users[who].chain)))
    for event in feed.values():
        assert (DEMO in str(event["description"])) == (not str(event["summary"]).startswith("booked: ")), event
    return {lease for lease, event in feed.items() if DEMO in str(event["description"])}


def whole_in_gantt(web: WebCalendar, who: str, pki: DemoPki) -> set[str]:
    """The leases on n2 the Gantt shows to ``who`` with their slice."""
    answer = web.handle(WebRequest(path="/", query={"view": "day"}, caller_chain=pki.users[who].chain))
    return {lease for lease, *_, details in bars_of(answer.body.decode())[node_urn("n2")] if ["slice", DEMO] in details}


def in_private_feed(web: WebCalendar, urn: str) -> set[str]:
    """The leases of the user's private feed (all of them whole: it holds only what the user may see)."""
    feed = events(web.handle(WebRequest(path=f"/feed/{web.tokens.issue(urn)}.ics")))
    assert all(DEMO in str(event["description"]) for event in feed.values())
    return set(feed)


@pytest.fixture
def without_operators(lab: Lab, pki: DemoPki) -> WebCalendar:
    """The lab's calendar with no operator, so that carol is a stranger to the demo slice."""
    settings = WebSettings(host="am.testbed.example", admins=frozenset(), horizon=timedelta(days=2), free_windows=3)
    return WebCalendar(lab.database, CredentialVerifier(pki.roots, VerdictCache()), settings, clock=lambda: lab.now)


def test_each_viewer_sees_in_the_node_feed_what_the_gantt_and_their_private_feed_show(
    lab: Lab, pki: DemoPki, without_operators: WebCalendar
) -> None:
    """n2 holds alice's lease of the demo slice (booked while it listed her) and bob's (it lists bob alone now). The
    node feed decided per slice: with another's lease of the slice beside hers, alice's own lease was "booked" to
    her, while the Gantt, the node page and her private feed show it as hers."""
    bobs_lease = remove_alice_and_let_bob_book(lab)
    web = without_operators
    both = {lab.demo_lease, bobs_lease}

    # (1) A member of the slice: both leases, the member list too.
    assert whole_in_node_feed(web, "bob", pki) == both == whole_in_gantt(web, "bob", pki)
    assert in_private_feed(web, BOB) == both
    assert "users: " + BOB in str(events(web.handle(WebRequest("/node/n2.ics", caller_chain=pki.users["bob"].chain))))

    # (2) The booker the slice does not list: her own lease whole, bob's "booked"; not the slice's members.
    assert whole_in_node_feed(web, "alice", pki) == {lab.demo_lease} == whole_in_gantt(web, "alice", pki)
    assert in_private_feed(web, ALICE) == {lab.demo_lease}
    alices_view = str(events(web.handle(WebRequest("/node/n2.ics", caller_chain=pki.users["alice"].chain))))
    assert BOB not in alices_view and "users:" not in alices_view
    node_page = web.handle(WebRequest("/node/n2", caller_chain=pki.users["alice"].chain)).body.decode()
    assert lab.demo_lease in node_page and DEMO in node_page and BOB not in node_page

    # (3) A stranger: both "booked".
    assert whole_in_node_feed(web, "carol", pki) == set() == whole_in_gantt(web, "carol", pki)
    assert in_private_feed(web, CAROL) == set()
    assert BOB not in str(events(web.handle(WebRequest("/node/n2.ics", caller_chain=pki.users["carol"].chain))))
