"""A change of a slice's members raises the published revision of the slice's leases in the iCal feeds, as a renew
does, on both databases (real SQLite and PostgreSQL, the real web calendar and its event cache).

An event seen whole lists the slice's members ("users: ..."). A calendar client replaces an event it holds only when
its SEQUENCE (or DTSTAMP) moved: while the revision's fingerprint left the members out, a member added or removed
(geni_users on Allocate/Provision, geni_update_users, the registry's removal of a user) changed the event's text
under the same SEQUENCE, DTSTAMP and LAST-MODIFIED, and subscribed clients kept showing the old members.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from icalendar import Calendar
from sqlalchemy import event as sqlalchemy_event

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.calendar.slices import Slices
from sfa_omf.registry.records import Record, Records
from sfa_omf.web.app import WebResponse
from sfa_omf.web.ical import LeaseEvent, fingerprint
from tests.calendar.conftest import NOW, node_urn
from tests.conftest import DemoPki
from tests.web.conftest import ALICE, DEMO, EXPIRES, OTHER, Lab, at
from tests.web.test_web_app import get

BOB = "urn:publicid:IDN+testbed+user+bob"
ALICE_KEYS = {ALICE: ["ssh-ed25519 AAAA alice"]}


def published(answer: WebResponse, lease_id: str) -> dict[str, Any]:
    """The lease's event in this feed: its revision (SEQUENCE, DTSTAMP, LAST-MODIFIED) and its whole text."""
    assert answer.status == 200 and answer.content_type.startswith("text/calendar")
    for found in Calendar.from_ical(answer.body).walk("VEVENT"):
        if str(found["uid"]) == f"{lease_id}@am.testbed.example":
            return {
                "sequence": int(found["sequence"]),
                "dtstamp": found.decoded("dtstamp"),
                "last_modified": found.decoded("last-modified"),
                "description": str(found.get("description", "")),
                "text": found.to_ical().decode(),
            }
    raise AssertionError(f"lease {lease_id} is not in the feed")


def members_line(event: dict[str, Any]) -> str:
    lines = [line for line in event["description"].splitlines() if line.startswith("users: ")]
    assert len(lines) == 1, event["description"]
    return lines[0]


def test_a_member_added_then_removed_raises_the_sequence_each_time(lab: Lab, pki: DemoPki) -> None:
    """Bob joins the demo slice (merged in, as geni_update_users and Provision do), then leaves it (its users made
    exactly alice again, as geni_update_users with the whole list does). Each time alice's slice feed lists the new
    members with a higher SEQUENCE and a new DTSTAMP/LAST-MODIFIED; an anonymous reader of the node's feed sees the
    same revision, and no member's name."""
    slices = Slices(lab.database)
    slice_feed = f"/slice/{DEMO}.ics"

    def read_both() -> tuple[dict[str, Any], dict[str, Any]]:
        member = published(get(lab, slice_feed, "alice", pki), lab.demo_lease)
        stranger = published(get(lab, "/node/n1.ics"), lab.demo_lease)
        assert "users:" not in stranger["text"] and "alice" not in stranger["text"] and "bob" not in stranger["text"]
        assert stranger["text"].count("SUMMARY:booked: n1") == 1  # what a stranger sees, as before
        assert stranger["sequence"] == member["sequence"], "one revision of the lease, whoever reads it"
        return member, stranger

    first, _ = read_both()
    assert members_line(first) == f"users: {ALICE}" and first["sequence"] == 0  # the control
    assert first["dtstamp"] == first["last_modified"] == lab.now

    lab.clock[0] += timedelta(minutes=1)
    slices.update_users(DEMO, {BOB: ["ssh-ed25519 AAAA bob"]})
    added, _ = read_both()
    assert members_line(added) == f"users: {ALICE}, {BOB}"
    assert added["sequence"] == 1, "a client replaces the event it holds only for a higher SEQUENCE"
    assert added["dtstamp"] == added["last_modified"] == lab.now

    lab.clock[0] += timedelta(minutes=1)
    assert read_both()[0] == added, "nothing changed: the same revision, read by both in turns"

    lab.clock[0] += timedelta(minutes=1)
    slices.update_users(DEMO, ALICE_KEYS, replace=True)
    removed, _ = read_both()
    assert members_line(removed) == f"users: {ALICE}" and BOB not in removed["text"]
    assert removed["sequence"] == 2
    assert removed["dtstamp"] == removed["last_modified"] == lab.now


def test_the_registry_removing_a_member_raises_the_sequence(lab: Lab, pki: DemoPki) -> None:
    """Bob, a member of the demo slice, is removed from the registry: he leaves the slice's members, and the event the
    operator's node feed had rendered (and cached) lists alice alone with a higher SEQUENCE."""
    Records(lab.database).add(Record("testbed.bob", "user", BOB, ""))
    Slices(lab.database).update_users(DEMO, {BOB: ["ssh-ed25519 AAAA bob"]})
    before = published(get(lab, "/node/n1.ics", "carol", pki), lab.demo_lease)
    assert members_line(before) == f"users: {ALICE}, {BOB}"  # the control

    assert Records(lab.database).remove("testbed.bob")
    lab.clock[0] += timedelta(minutes=1)
    after = published(get(lab, "/node/n1.ics", "carol", pki), lab.demo_lease)
    assert members_line(after) == f"users: {ALICE}"
    assert after["sequence"] == before["sequence"] + 1 and after["dtstamp"] == lab.now


def test_the_fingerprint_covers_the_members_in_any_order() -> None:
    """Another member list is another fingerprint; the same members in another order are not (the order they were
    read or added in is no change a client must be told about)."""
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
    assert fingerprint(lease, [ALICE, BOB]) == fingerprint(lease, [BOB, ALICE])
    assert len({fingerprint(lease, []), fingerprint(lease, [ALICE]), fingerprint(lease, [ALICE, BOB])}) == 3


@contextmanager
def statements_run(database: Database) -> Iterator[list[str]]:
    """The SQL statements run on this database meanwhile."""
    seen: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement)

    sqlalchemy_event.listen(database.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sqlalchemy_event.remove(database.engine, "before_cursor_execute", note)


def test_the_members_of_a_feeds_leases_are_read_at_once(lab: Lab, pki: DemoPki) -> None:
    """A node feed's read runs as many statements for many leases of many slices as for two (nothing changed between
    the reads that are counted): the members are read for all of a feed's leases together, not per lease."""

    def statements_of_a_steady_read(who: str | None) -> int:
        get(lab, "/node/n1.ics", who, pki)  # records the revisions of new leases
        with statements_run(lab.database) as seen:
            get(lab, "/node/n1.ics", who, pki)
        return len(seen)

    few = {who: statements_of_a_steady_read(who) for who in (None, "alice", "carol")}
    for number in range(8):
        slice_urn = f"urn:publicid:IDN+testbed+slice+many{number}"
        start: datetime = at(30 + 2 * number)
        users = {f"urn:publicid:IDN+testbed+user+u{number}": ["ssh-ed25519 AAAA u"]}
        lab.bookings.book(
            slice_urn, EXPIRES, [BookingRequest(node_urn("n1"), start, start + timedelta(hours=1))], users=users
        )
    lab.bookings.book(OTHER, EXPIRES, [BookingRequest(node_urn("n1"), at(50), at(51))], owner_urn="")
    assert {who: statements_of_a_steady_read(who) for who in (None, "alice", "carol")} == few
