"""Two defects of the iCal feeds found by the hunt of session 20, on both databases (real SQLite and PostgreSQL):

- A process that had rendered a lease's event kept serving its text after the registry removed the lease's booker or
  slice: the event cache's key left out the booker and the slice, which the event shows (and the removal renames to
  "URN (removed TIME)"), and the SEQUENCE did not grow either, so a calendar client kept the old names too.
- Recording the revisions of a feed (a GET, anonymous) bumped the calendar's generation: every process threw away
  its cached answers (the advertisement) at the first read of a feed.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from sqlalchemy import select

from sfa_omf.calendar.feeds import Revision
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.models import LeaseRevision
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.registry.records import Record, Records
from sfa_omf.web.ical import EventCache, LeaseEvent, fingerprint, render_feed
from tests.calendar.conftest import NOW, node_urn
from tests.conftest import DemoPki
from tests.web.conftest import ALICE, DEMO, EXPIRES, OTHER, Lab, at
from tests.web.test_web_app import events, get

BOB = "urn:publicid:IDN+testbed+user+bob"


def test_a_feed_already_rendered_shows_the_removal_of_the_booker_and_of_the_slice(lab: Lab, pki: DemoPki) -> None:
    """The operator's feed of n1, rendered (and cached) before bob and then the other slice are removed from the
    registry, names them as removed afterwards, in the same process, with a higher SEQUENCE each time. Bob booked in
    the demo slice without being one of its listed users, and the other slice lists none: their removals leave the
    member lists as they were (a change of those made a new cache key already)."""
    records = Records(lab.database)
    records.add(Record("testbed.bob", "user", BOB, ""))
    records.add(Record("elsewhere.secret", "slice", OTHER, ""))
    bobs_lease = lab.bookings.book(DEMO, EXPIRES, [BookingRequest(node_urn("n1"), at(10), at(12))], owner_urn=BOB)
    before = events(get(lab, "/node/n1.ics", "carol", pki))
    assert f"booked by: {BOB}\n" in str(before[bobs_lease.leases[0].id]["description"])  # the control
    assert f"slice: {OTHER}\n" in str(before[lab.other_lease]["description"])
    assert {event["sequence"] for event in before.values()} == {0}

    assert records.remove("testbed.bob")
    lab.clock[0] += timedelta(minutes=1)
    booker_removed = events(get(lab, "/node/n1.ics", "carol", pki))[bobs_lease.leases[0].id]
    assert f"booked by: {BOB} (removed " in str(booker_removed["description"]), "the cached text of the event"
    assert f"users: {ALICE}" in str(booker_removed["description"])  # the slice's members, as before
    assert booker_removed["sequence"] == 1, "a client replaces the event it holds only for a higher SEQUENCE"

    assert records.remove("elsewhere.secret")
    lab.clock[0] += timedelta(minutes=1)
    slice_removed = events(get(lab, "/node/n1.ics", "carol", pki))[lab.other_lease]
    assert f"slice: {OTHER} (removed " in str(slice_removed["description"]), "the cached text of the event"
    assert str(slice_removed["summary"]).startswith("secret (removed ")
    assert slice_removed["sequence"] == 1


def test_the_event_cache_keys_on_every_field_of_the_lease() -> None:
    """The cache alone, at one revision (as a process sees it before its own feed records the next): an event of
    another booker or slice is rendered again, not taken from the cache."""
    cache = EventCache()
    lease = LeaseEvent(
        lease_id="lease-1",
        slice_urn=DEMO,
        owner_urn=ALICE,
        state="allocated",
        client_id="",
        nodes=(node_urn("n1"),),
        start=NOW,
        end=NOW + timedelta(hours=1),
    )
    revisions = {"lease-1": Revision(0, NOW)}

    def text(event: LeaseEvent) -> str:
        feed = render_feed("n1", [event], revisions, lambda _: True, "am.testbed.example", cache=cache)
        return feed.decode().replace("\r\n ", "")  # unfolded

    assert f"booked by: {ALICE}" in text(lease)  # now in the cache
    removed_booker = dataclasses.replace(lease, owner_urn=f"{ALICE} (removed 2026-01-01T00:00:00Z)")
    assert f"booked by: {ALICE} (removed 2026-01-01T00:00:00Z)" in text(removed_booker)
    removed_slice = dataclasses.replace(removed_booker, slice_urn=f"{DEMO} (removed 2026-01-01T00:00:00Z)")
    assert "SUMMARY:demo (removed 2026-01-01T00:00:00Z): n1" in text(removed_slice)


def test_the_fingerprint_changes_with_every_field_of_the_lease_the_event_shows() -> None:
    """Every field of LeaseEvent but its id and its nodes (and their names) is shown by its event the same to every
    reader: a change of any must raise the SEQUENCE (a field added later and left out of the fingerprint fails here).
    The nodes shown depend on the reader: they are not in it; every node of the lease is, as the placement."""
    lease = LeaseEvent(
        lease_id="lease-1",
        slice_urn=DEMO,
        owner_urn=ALICE,
        state="allocated",
        client_id="label",
        nodes=(node_urn("n1"),),
        start=NOW,
        end=NOW + timedelta(hours=1),
    )
    other_values: dict[str, object] = {
        "slice_urn": f"{DEMO} (removed 2026-01-01T00:00:00Z)",
        "owner_urn": f"{ALICE} (removed 2026-01-01T00:00:00Z)",
        "state": "provisioned",
        "client_id": "another label",
        "nodes": (node_urn("n1"), node_urn("n2")),
        "start": NOW - timedelta(hours=1),
        "end": NOW + timedelta(hours=2),
        "node_names": ("n1", "n2"),
    }
    per_reader = ("nodes", "node_names")
    shown = [field.name for field in dataclasses.fields(LeaseEvent) if field.name not in ("lease_id", *per_reader)]
    assert sorted([*shown, *per_reader]) == sorted(other_values), "a new field of LeaseEvent: give it another value"
    for name in shown:
        changed = dataclasses.replace(lease, **{name: other_values[name]})
        assert fingerprint(changed) != fingerprint(lease), f"the fingerprint ignores {name}"
    assert fingerprint(dataclasses.replace(lease, lease_id="lease-2")) == fingerprint(lease)
    assert fingerprint(dataclasses.replace(lease, nodes=other_values["nodes"])) == fingerprint(lease)  # type: ignore[arg-type]
    assert fingerprint(dataclasses.replace(lease, node_names=("n2",))) == fingerprint(lease)


def test_readers_who_see_different_nodes_of_a_lease_do_not_raise_its_sequence(lab: Lab, pki: DemoPki) -> None:
    """A lease on a federated node and a private pool's node: an anonymous reader's event lists the first only, the
    operator's both. Reading in turns changes nothing about the lease: no SEQUENCE grows, no revision is written."""
    lab.inventory.add_node(NodeSpec(node_urn("h1"), "h1", pool="hidden", hardware_type="icarus"))
    requests = [BookingRequest(node_urn("n1"), at(20), at(22)), BookingRequest(node_urn("h1"), at(20), at(22))]
    lease = lab.bookings.book(OTHER, EXPIRES, requests, owner_urn="").leases[0].id
    seen = []
    for _ in range(3):
        anonymous = events(get(lab, "/node/n1.ics"))[lease]
        operator = events(get(lab, "/node/n1.ics", "carol", pki))[lease]
        assert "h1" not in str(anonymous.get("summary", "")) and "h1" in str(operator["summary"])  # the control
        seen += [anonymous["sequence"], operator["sequence"]]

    with lab.database.read() as session:
        stored = session.scalar(select(LeaseRevision.sequence).where(LeaseRevision.lease_id == lease))
    assert seen == [0] * 6 and stored == 0, "nothing about the lease changed between the reads"


def test_reading_a_feed_records_revisions_without_bumping_the_generation(lab: Lab) -> None:
    """An anonymous GET of a feed that records new revisions (first read, then after a change) leaves the calendar's
    generation, on which every process's cached answers key, as it was."""

    def generation() -> int:
        with lab.database.read() as session:
            return read_generation(session)

    def recorded() -> dict[str, int]:
        with lab.database.read() as session:
            return {
                lease: sequence
                for lease, sequence in session.execute(select(LeaseRevision.lease_id, LeaseRevision.sequence))
            }

    assert recorded() == {}
    before = generation()
    assert set(events(get(lab, "/node/n1.ics"))) == {lab.demo_lease, lab.other_lease}
    assert recorded() == {lab.demo_lease: 0, lab.other_lease: 0}, "the first read records the leases' revisions"
    assert generation() == before, "a feed read bumped the calendar's generation"

    lab.bookings.mark_provisioned(lab.demo_lease)  # a write: bumps the generation itself
    before = generation()
    assert events(get(lab, "/node/n1.ics"))[lab.demo_lease]["sequence"] == 1
    assert recorded() == {lab.demo_lease: 1, lab.other_lease: 0}
    assert generation() == before, "recording a new revision bumped the calendar's generation"
