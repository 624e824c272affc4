"""The web calendar's answers (sans-IO, real database, real GIDs as viewers): feeds parsed back with the icalendar
parser and compared with the calendar, privacy, the Gantt layout, and every bad request answered clearly."""

from __future__ import annotations

import functools
import json
import operator
import re
from datetime import timedelta
from html import unescape

from icalendar import Calendar

from sfa_omf.calendar.feeds import FeedTokens
from sfa_omf.calendar.timeline import Timeline
from sfa_omf.trust.pki import create_gid, new_private_key
from sfa_omf.web import gantt
from sfa_omf.web.app import WebRequest, WebResponse
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki
from tests.web.conftest import ALICE, DEMO, OTHER, Lab, at


def get(lab: Lab, path: str, who: str | None = None, pki: DemoPki | None = None, **query: str) -> WebResponse:
    chain = pki.users[who].chain if who and pki else ()
    return lab.web.handle(WebRequest(path=path, query=query, caller_chain=chain))


def events(answer: WebResponse) -> dict[str, dict[str, object]]:
    """The feed's events by lease id, parsed back with the icalendar parser."""
    assert answer.status == 200 and answer.content_type.startswith("text/calendar")
    calendar = Calendar.from_ical(answer.body)
    assert str(calendar["version"]) == "2.0"
    found = {}
    for event in calendar.walk("VEVENT"):
        uid = str(event["uid"])
        assert uid.endswith("@am.testbed.example")
        found[uid.split("@")[0]] = {
            "start": event.decoded("dtstart"),
            "end": event.decoded("dtend"),
            "status": str(event["status"]),
            "sequence": int(event["sequence"]),
            "summary": str(event["summary"]),
            "description": str(event.get("description", "")),
        }
    return found


def test_slice_feed_is_the_calendars_leases_and_follows_renew_and_delete(lab: Lab, pki: DemoPki) -> None:
    first = events(get(lab, f"/slice/{DEMO}.ics", "alice", pki))
    assert set(first) == {lab.demo_lease}
    event = first[lab.demo_lease]
    assert (event["start"], event["end"], event["status"], event["sequence"]) == (at(2), at(4), "TENTATIVE", 0)
    assert event["start"].tzinfo is not None and event["start"].utcoffset() == timedelta(0)  # type: ignore[attr-defined]
    assert "demo" in str(event["summary"]) and ALICE in str(event["description"])
    assert events(get(lab, "/slice/demo.ics", "alice", pki)) == first  # the short name works for its members

    lab.bookings.mark_provisioned(lab.demo_lease)
    lab.clock[0] += timedelta(minutes=1)
    provisioned = events(get(lab, f"/slice/{DEMO}.ics", "alice", pki))[lab.demo_lease]
    assert (provisioned["status"], provisioned["sequence"]) == ("CONFIRMED", 1)

    renewed_lease = lab.bookings.renew(lab.demo_lease, at(5))
    renewed = events(get(lab, f"/slice/{DEMO}.ics", "alice", pki))[lab.demo_lease]
    assert (renewed["end"], renewed["sequence"]) == (renewed_lease.end, 2)
    assert events(get(lab, f"/slice/{DEMO}.ics", "alice", pki))[lab.demo_lease]["sequence"] == 2  # stable

    lab.bookings.cancel(lab.demo_lease)
    cancelled = events(get(lab, f"/slice/{DEMO}.ics", "alice", pki))[lab.demo_lease]
    assert (cancelled["status"], cancelled["sequence"], cancelled["end"]) == ("CANCELLED", 3, at(5))


def test_node_feed_hides_other_slices_from_the_public(lab: Lab, pki: DemoPki) -> None:
    public = events(get(lab, "/node/n1.ics"))
    assert set(public) == {lab.demo_lease, lab.other_lease}
    for event in public.values():
        assert str(event["summary"]).startswith("booked") and event["description"] == ""
    assert public[lab.other_lease]["start"] == at(6) and public[lab.other_lease]["end"] == at(9)

    alice = events(get(lab, "/node/n1.ics", "alice", pki))
    assert "demo" in str(alice[lab.demo_lease]["summary"])
    assert alice[lab.other_lease]["summary"] == "booked: n1" and OTHER not in str(alice[lab.other_lease])

    operator = events(get(lab, f"/node/{node_urn('n1')}.ics", "carol", pki))
    assert OTHER in str(operator[lab.other_lease]["description"])


def test_external_holds_are_in_the_node_feed(lab: Lab, pki: DemoPki) -> None:
    public = events(get(lab, "/node/u1.ics"))
    (event,) = public.values()
    assert event["summary"] == "reserved in the testbed: u1" and "oar:12" not in str(event["description"])
    (operator,) = events(get(lab, "/node/u1.ics", "carol", pki)).values()
    assert "oar:12" in str(operator["description"])


def test_slice_feed_is_for_members(lab: Lab, pki: DemoPki) -> None:
    anonymous = get(lab, f"/slice/{DEMO}.ics")
    assert anonymous.status == 403 and b"without a certificate" in anonymous.body
    assert b"sfa-omf calendar feed-url" in anonymous.body
    bob = get(lab, f"/slice/{DEMO}.ics", "bob", pki)
    assert bob.status == 403 and b"urn:publicid:IDN+testbed+user+bob" in bob.body
    assert get(lab, "/slice/secret.ics", "alice", pki).status == 403  # not hers: the short name is not resolved
    assert set(events(get(lab, f"/slice/{OTHER}.ics", "carol", pki))) == {lab.other_lease}


def test_user_feed_by_token(lab: Lab) -> None:
    token = FeedTokens(lab.database).issue(ALICE)
    feed = events(get(lab, f"/feed/{token}.ics"))
    assert set(feed) == {lab.demo_lease} and ALICE in str(feed[lab.demo_lease]["description"])
    FeedTokens(lab.database).issue(ALICE)  # a new address retires the old
    gone = get(lab, f"/feed/{token}.ics")
    assert gone.status == 404 and b"ask for a new one" in gone.body
    nobody = FeedTokens(lab.database).issue("urn:publicid:IDN+testbed+user+bob")
    assert events(get(lab, f"/feed/{nobody}.ics")) == {}


def bars_of(page: str) -> dict[str, list[tuple[str, float, float, str, list[list[str]]]]]:
    """node -> [(lease, left, width, kind, details)] as the page states them (details: the page's JSON block)."""
    block = re.search(r'<script id="lease-details" type="application/json">(.*?)</script>', page, re.S)
    assert block is not None
    details = json.loads(block.group(1))
    found: dict[str, list[tuple[str, float, float, str, list[list[str]]]]] = {}
    for row in re.finditer(r'<div class="row node[^"]*" data-node="([^"]+)"(.*?)</div>\s*</div>', page, re.S):
        for bar in re.finditer(
            r'<div class="bar (\w+)" style="left: ([0-9.]+)%; width: ([0-9.]+)%" data-lease="([^"]+)">', row.group(2)
        ):
            lease = bar.group(4)
            found.setdefault(row.group(1), []).append(
                (lease, float(bar.group(2)), float(bar.group(3)), bar.group(1), details[lease])
            )
    return found


def test_gantt_bars_match_the_calendar(lab: Lab, pki: DemoPki) -> None:
    answer = get(lab, "/", "alice", pki, view="day")
    assert answer.status == 200
    page = answer.body.decode()
    bars = bars_of(page)
    day = (at(-8), at(16))  # NOW is 08:00 UTC: the day view starts at midnight
    for row in Timeline(lab.database).bookings(*day):
        left, width = gantt.place(row.start, row.end, *day)
        assert (row.lease_id, left, width) in [(b[0], b[1], b[2]) for b in bars[row.node]]
    assert len(functools.reduce(operator.iadd, bars.values(), [])) == 4
    mine = next(b for b in bars[node_urn("n1")] if b[0] == lab.demo_lease)
    assert mine[3] == "mine" and ["slice", DEMO] in mine[4]
    other = next(b for b in bars[node_urn("n1")] if b[0] == lab.other_lease)
    assert other[3] == "other" and [k for k, _ in other[4]] == ["window"] and OTHER not in page
    assert 'id="whoami" class="user"' in page and ALICE in page
    assert f'style="left: {gantt.place(lab.now, lab.now, *day)[0]}%"' in page  # the now line


def test_gantt_public_admin_and_filters(lab: Lab, pki: DemoPki) -> None:
    public = get(lab, "/").body.decode()
    assert "anonymous (public view)" in public and DEMO not in public and "alice" not in public
    assert all(b[3] != "mine" for bars in bars_of(public).values() for b in bars)
    operator = get(lab, "/", "carol", pki).body.decode()
    assert 'class="admin"' in operator and DEMO in operator and OTHER in operator
    assert 'class="row node down"' in operator and "maintenance" in operator
    usrp = bars_of(get(lab, "/", pool="usrp").body.decode())
    assert list(usrp) == [node_urn("u1")] and usrp[node_urn("u1")][0][3] == "external"
    week = get(lab, "/", "carol", pki, view="week", hw="icarus").body.decode()
    assert 'data-node="' + node_urn("u1") + '"' not in week and 'data-node="' + node_urn("m1") + '"' in week
    # m1's pool is not federated: only operators see it, as the advertisement leaves it out
    assert node_urn("m1") not in public and 'value="hidden"' not in public and 'value="hidden"' in operator
    assert get(lab, "/node/m1").status == 404 and get(lab, "/node/m1", "carol", pki).status == 200


def test_node_page_shows_the_advertised_free_windows(lab: Lab, pki: DemoPki) -> None:
    page = get(lab, f"/node/{node_urn('n1')}", "alice", pki).body.decode()  # the server hands paths unquoted
    windows = re.findall(r'<li data-start="([^"]+)" data-end="([^"]+)"', page)
    advertised = lab.web.availability.free_windows(lab.now, lab.now + timedelta(days=2), 3, [node_urn("n1")])
    assert windows == [(w.start.isoformat(), w.end.isoformat()) for w in advertised[node_urn("n1")]]
    assert windows[0] == (at(0).isoformat(), at(2).isoformat())
    assert "cpu" in page and "icarus" in page and DEMO in page and "booked" in page and OTHER not in page


def test_bad_requests_say_what_to_do(lab: Lab, pki: DemoPki) -> None:
    cases = {
        ("/", "view", "month"): (400, "use view=day or view=week"),
        ("/", "start", "tomorrow"): (400, "give a day as YYYY-MM-DD"),
        ("/", "pool", "nope"): (400, "pools: default, usrp"),
        ("/", "hw", "gpu"): (400, "types: icarus, usrp2"),
        ("/node/nope", "", ""): (404, "no node 'nope' here"),
        ("/node/nope.ics", "", ""): (404, "no node 'nope' here"),
        ("/elsewhere", "", ""): (404, "the calendar is at /calendar/"),
        ("/feed/guess.ics", "", ""): (404, "no feed has this address"),
        ("/static/../app.py", "", ""): (404, "nothing at"),
    }
    for (path, key, value), (status, message) in cases.items():
        answer = get(lab, path, **({key: value} if key else {}))
        assert (answer.status, answer.content_type) == (status, "text/html; charset=utf-8"), path
        assert message in unescape(answer.body.decode()), (path, answer.body[-300:])


def test_an_untrusted_certificate_gets_the_public_view_and_the_reason(lab: Lab, pki: DemoPki) -> None:
    slice_chain = pki.slice_chain  # a GID, trusted, but of a slice: not a user
    answer = lab.web.handle(WebRequest(path="/", caller_chain=slice_chain))
    assert answer.status == 200 and b"names no GENI user" in answer.body and b"anonymous (public view)" in answer.body
    key = new_private_key()  # a self-made "alice" that no trusted authority issued
    stranger = create_gid(ALICE, key.public_key(), key)
    answer = lab.web.handle(WebRequest(path="/", caller_chain=(stranger,)))
    assert b"your certificate is not trusted here" in answer.body and b'class="user"' not in answer.body
