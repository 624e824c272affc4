"""Defects of the web calendar found by the hunt of session 25, on both databases (real SQLite and PostgreSQL):

- An external (OAR-mirrored) reservation that ran to its end was published as CANCELLED and left the Gantt: OAR
  lists unfinished jobs only, and the mirror cancelled every hold no longer listed.
- The Gantt's details and the node page called the stored operational state (what Provision asked for, lease-wide)
  "sliver", as if it were what the node does.
- A node moved between a federated and a private pool, or renamed, changed the SUMMARY and LOCATION of public feed
  events without raising their SEQUENCE (clients kept the old text).
- Feed events named nodes by the end of their URN where the pages and the feed's title use the node's name.

The node page's properties and HTTP validators (ETag, 304) are tested over the real TLS server in
test_web_hunt25_served.py.
"""

from __future__ import annotations

import json
from html import unescape

from sfa_omf.calendar.external import ExternalHold, ExternalHolds
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki
from tests.web.conftest import ALICE, DEMO, EXPIRES, OTHER, Lab, at
from tests.web.test_web_app import events, get


def lease_details(page: str) -> dict[str, list[list[str]]]:
    """The Gantt page's details of each bar (the JSON the page's script shows on hover), by lease id."""
    text = page.split('<script id="lease-details" type="application/json">', 1)[1].split("</script>", 1)[0]
    return json.loads(unescape(text))


def test_an_external_reservation_that_ran_is_published_ended_not_cancelled(lab: Lab, pki: DemoPki) -> None:
    """The fixture's OAR job 12 holds u1 from 1 h to 3 h; at 2 h OAR lists it no more (it was deleted while it ran):
    the feeds keep it as CONFIRMED "reserved in the testbed" ending at 2 h; the Gantt draws it faded, the testbed's."""
    before = events(get(lab, "/node/u1.ics"))
    (job,) = before
    assert before[job]["status"] == "CONFIRMED" and before[job]["end"] == at(3)  # the control

    lab.clock[0] = at(2)
    report = ExternalHolds(lab.database, "testbed", clock=lambda: lab.clock[0]).sync("oar", [])
    assert report.removed == ["oar:12"] and report.ended == ["oar:12"]

    for who in (None, "carol"):
        after = events(get(lab, "/node/u1.ics", who, pki))
        assert after[job]["status"] == "CONFIRMED", "the reservation ran: it is no cancelled event"
        assert after[job]["summary"] == "reserved in the testbed: u1"
        assert after[job]["end"] == at(2) and after[job]["sequence"] == before[job]["sequence"] + 1
    page = get(lab, "/", "carol", pki, start=f"{at(0):%Y-%m-%d}").body.decode()
    assert 'class="bar external ended" style="left: ' in page and f'data-lease="{job}">reserved</div>' in page
    assert ["source", "oar:12"] in lease_details(page)[job]  # the operator sees whose it was

    # One that vanishes before its start stays a cancelled event.
    holds = ExternalHolds(lab.database, "testbed", clock=lambda: lab.clock[0])
    holds.sync("oar", [ExternalHold("oar:13", (node_urn("u1"),), at(5), at(6), "job 13")])
    (later,) = set(events(get(lab, "/node/u1.ics"))) - {job}
    assert holds.sync("oar", []).ended == []
    assert events(get(lab, "/node/u1.ics"))[later]["status"] == "CANCELLED"


def test_the_stored_operational_state_is_shown_as_what_was_asked_for(lab: Lab, pki: DemoPki) -> None:
    """Provision records geni_ready for the whole lease (wanted running): the Gantt and the node page say so, not
    that the sliver is ready."""
    lab.bookings.mark_provisioned(lab.demo_lease)
    gantt = get(lab, "/", "alice", pki, start=f"{at(0):%Y-%m-%d}").body.decode()
    details = dict(tuple(pair) for pair in lease_details(gantt)[lab.demo_lease])
    assert details.get("requested") == "running" and "sliver" not in details, details
    page = get(lab, "/node/n1", "alice", pki).body.decode()
    assert "requested: running<br>" in page and "sliver:" not in page and "geni_ready" not in page


def test_a_node_moved_to_a_private_pool_raises_the_sequence_of_its_leases(lab: Lab, pki: DemoPki) -> None:
    """The demo lease holds n1 and n2; n2 moves to the private pool: anonymous readers of n1's feed now see the lease
    on n1 only, and every reader gets a higher SEQUENCE (once), so a client replaces the event it holds."""
    before = events(get(lab, "/node/n1.ics"))[lab.demo_lease]
    assert before["summary"] == "booked: n1, n2" and before["sequence"] == 0  # the control

    lab.inventory.move_node(node_urn("n2"), "hidden")
    moved = events(get(lab, "/node/n1.ics"))[lab.demo_lease]
    assert moved["summary"] == "booked: n1"
    assert moved["sequence"] == 1, "the event's SUMMARY and LOCATION changed: its SEQUENCE must grow"
    operator = events(get(lab, "/node/n1.ics", "carol", pki))[lab.demo_lease]
    assert operator["summary"] == "demo: n1, n2" and operator["sequence"] == 1, "readers agree on the revision"
    assert events(get(lab, "/node/n1.ics"))[lab.demo_lease]["sequence"] == 1, "nothing changed since"

    lab.inventory.move_node(node_urn("n2"), "default")
    assert events(get(lab, "/node/n1.ics"))[lab.demo_lease] | {"sequence": 2} == {**before, "sequence": 2}


def test_feed_events_name_nodes_by_their_name_and_a_rename_raises_the_sequence(lab: Lab, pki: DemoPki) -> None:
    """A node whose name is not the end of its URN: SUMMARY and LOCATION say its name, as the pages and the feed's
    title do; DESCRIPTION keeps its URN. Renaming it is a new revision."""
    lab.inventory.add_node(NodeSpec(node_urn("x-17"), "radio-17", hardware_type="usrp2"))
    lease = lab.bookings.book(
        DEMO, EXPIRES, [BookingRequest(node_urn("x-17"), at(10), at(11))], owner_urn=ALICE
    ).leases[0]
    answer = get(lab, "/node/radio-17/feed.ics", "alice", pki)
    event = events(answer)[lease.id]
    assert event["summary"] == "demo: radio-17", event
    assert b"LOCATION:radio-17\r\n" in answer.body
    assert f"nodes: {node_urn('x-17')}" in str(event["description"])
    assert events(get(lab, "/node/radio-17/feed.ics"))[lease.id]["summary"] == "booked: radio-17"

    lab.inventory.update_node(node_urn("x-17"), "radio-18", {})
    renamed = events(get(lab, "/node/radio-18/feed.ics"))[lease.id]
    assert renamed["summary"] == "booked: radio-18" and renamed["sequence"] == 1


def test_other_slices_leases_stay_anonymous_with_names(lab: Lab) -> None:
    """The other slice's lease on n1 (no viewer's) names the node and nothing of the slice."""
    event = events(get(lab, "/node/n1.ics"))[lab.other_lease]
    assert event["summary"] == "booked: n1" and OTHER not in str(event)
