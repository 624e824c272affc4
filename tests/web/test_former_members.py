"""A user removed from a slice (geni_update_users replacing its users, a registry change) no longer sees it: not its
later leases, not its member list, not its feed. What they still see is the leases they booked themselves, and only
those (sans-IO, real database, real GIDs as viewers)."""

from __future__ import annotations

import re
from html import unescape

from sfa_omf.calendar.feeds import FeedTokens
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.calendar.slices import Slices
from sfa_omf.calendar.timeline import Timeline
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki
from tests.web.conftest import ALICE, DEMO, EXPIRES, OTHER, Lab, at
from tests.web.test_web_app import bars_of, events, get

BOB = "urn:publicid:IDN+testbed+user+bob"


def remove_alice_and_let_bob_book(lab: Lab) -> str:
    """Alice booked in the demo slice (the lab's demo lease); its users become bob alone, who books again in it.
    The id of bob's lease."""
    Slices(lab.database).update_users(DEMO, {BOB: ["ssh-ed25519 AAAA bob"]}, replace=True)
    request = [BookingRequest(node_urn("n2"), at(10), at(12))]
    return lab.bookings.book(DEMO, EXPIRES, request, owner_urn=BOB, users={BOB: ["ssh-ed25519 AAAA bob"]}).leases[0].id


def test_a_removed_member_is_no_member_of_the_slice(lab: Lab) -> None:
    remove_alice_and_let_bob_book(lab)
    timeline = Timeline(lab.database)
    assert timeline.slices_of_user(ALICE) == set()
    assert timeline.slices_of_user(BOB) == {DEMO}


def test_members_booking_without_a_user_list_see_each_others_leases(lab: Lab) -> None:
    """A slice booked by clients that send no geni_users (a bare omni allocate) lists no user: whoever booked in it
    belongs to it, as before. Once it lists its users, the list decides."""
    shared = "urn:publicid:IDN+testbed+slice+shared"
    for owner, node in ((ALICE, "n1"), (BOB, "n2")):
        lab.bookings.book(shared, EXPIRES, [BookingRequest(node_urn(node), at(14), at(15))], owner_urn=owner)
    timeline = Timeline(lab.database)
    assert DEMO not in timeline.slices_of_user(BOB)
    assert shared in timeline.slices_of_user(ALICE) and shared in timeline.slices_of_user(BOB)
    Slices(lab.database).update_users(shared, {BOB: ["ssh-ed25519 AAAA bob"]}, replace=True)
    assert shared not in timeline.slices_of_user(ALICE) and shared in timeline.slices_of_user(BOB)


def test_a_removed_members_private_feed_has_their_own_lease_only(lab: Lab) -> None:
    bobs_lease = remove_alice_and_let_bob_book(lab)
    alice = events(get(lab, f"/feed/{FeedTokens(lab.database).issue(ALICE)}.ics"))
    assert set(alice) == {lab.demo_lease}, "her own lease, not bob's later one in the slice she left"
    description = str(alice[lab.demo_lease]["description"])
    assert DEMO in description and ALICE in description  # her own lease is no secret to her
    assert "users:" not in description and BOB not in description  # the slice's members are
    bob = events(get(lab, f"/feed/{FeedTokens(lab.database).issue(BOB)}.ics"))
    assert set(bob) == {lab.demo_lease, bobs_lease}  # the member sees the slice's every lease
    assert "users: " + BOB in str(bob[bobs_lease]["description"])


def test_a_removed_member_sees_bookings_of_the_slice_as_anyone_does(lab: Lab, pki: DemoPki) -> None:
    bobs_lease = remove_alice_and_let_bob_book(lab)
    slice_feed = events(get(lab, f"/slice/{DEMO}.ics", "alice", pki))
    assert set(slice_feed) == {lab.demo_lease}, "the slice's feed: her own lease only"
    assert "users:" not in str(slice_feed) and BOB not in str(slice_feed)
    assert get(lab, f"/slice/{DEMO}.ics", "carol", pki).status == 200  # the operator's
    assert get(lab, f"/slice/{OTHER}.ics", "alice", pki).status == 403  # neither hers nor any lease of hers
    me = unescape(get(lab, "/me", "alice", pki).body.decode())
    assert DEMO in me, "the slice's feed is on her page: it holds her own lease (and only it)"

    page = get(lab, "/", "alice", pki, view="day").body.decode()
    on_n2 = {bar[0]: bar for bar in bars_of(page)[node_urn("n2")]}
    assert on_n2[bobs_lease][3] == "other" and [key for key, _ in on_n2[bobs_lease][4]] == ["window"]
    assert on_n2[lab.demo_lease][3] == "mine" and ["slice", DEMO] in on_n2[lab.demo_lease][4]
    assert "users" not in [key for key, _ in on_n2[lab.demo_lease][4]] and BOB not in page

    # Her feed of a node shows her own lease whole, also on n2 beside bob's (each lease decided by itself, as on the
    # Gantt); his stays "booked" (tests/web/test_node_feed_viewers.py: every kind of viewer).
    assert DEMO in str(events(get(lab, "/node/n1.ics", "alice", pki))[lab.demo_lease]["description"])
    node = events(get(lab, "/node/n2.ics", "alice", pki))
    assert DEMO in str(node[lab.demo_lease]["description"])
    assert node[bobs_lease]["summary"] == "booked: n2" and node[bobs_lease]["description"] == ""
    assert BOB not in str(node)
    node_page = get(lab, "/node/n2", "alice", pki).body.decode()
    assert BOB not in node_page and re.search(r"\bbooked\b", node_page)
