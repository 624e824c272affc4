"""iCal feeds of names with the characters RFC 5545 escapes in TEXT (``,`` ``;`` ``\\`` and line breaks): every
line of the feed stays a valid content line, folded at 75 octets, and names read back as they are."""

from __future__ import annotations

from icalendar import Calendar

from sfa_omf.calendar.records import BookingRequest
from sfa_omf.web.app import WebRequest
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki
from tests.web.conftest import ALICE, EXPIRES, Lab, at

#: A slice name as a slice authority may spell it: the calendar takes any text after ``+slice+``.
HOSTILE_SLICE = "urn:publicid:IDN+testbed+slice+dé,mo;x\\y\r\nX-INJECTED:1"


def test_a_slice_feed_named_with_a_line_break_and_separators_is_valid(lab: Lab, pki: DemoPki) -> None:
    """The feed's name (X-WR-CALNAME) was written unescaped: a line break in it made the icalendar library fail (an
    internal error instead of the feed), and ``,`` ``;`` ``\\`` made invalid TEXT."""
    lease = lab.bookings.book(
        HOSTILE_SLICE,
        EXPIRES,
        [BookingRequest(node_urn("n2"), at(10), at(12))],
        owner_urn=ALICE,
        users={ALICE: ["ssh-ed25519 AAAA alice"]},
    ).leases[0]
    answer = lab.web.handle(WebRequest(path=f"/slice/{HOSTILE_SLICE}.ics", caller_chain=pki.users["alice"].chain))
    assert answer.status == 200, answer.body
    lines = answer.body.split(b"\r\n")
    assert lines[-1] == b"" and all(len(line) <= 75 for line in lines)
    assert b"\nX-INJECTED" not in answer.body and b"\rX-INJECTED" not in answer.body
    unfolded = answer.body.replace(b"\r\n ", b"")
    (calname,) = [line for line in unfolded.split(b"\r\n") if line.startswith(b"X-WR-CALNAME:")]
    assert calname == "X-WR-CALNAME:dé\\,mo\\;x\\\\y\\nX-INJECTED:1 (am.testbed.example)".encode()
    (event,) = Calendar.from_ical(answer.body).walk("VEVENT")
    assert str(event["uid"]) == f"{lease.id}@am.testbed.example"
    assert str(event["summary"]) == "dé,mo;x\\y\nX-INJECTED:1: n2"
