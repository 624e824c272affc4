"""The web calendar's answers (sans-IO, real database, real GIDs as viewers): feeds parsed back with the icalendar
parser and compared with the calendar, privacy, the Gantt layout, and every bad request answered clearly."""

from __future__ import annotations

import functools
import json
import logging
import operator
import re
from collections.abc import Callable
from datetime import timedelta
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from icalendar import Calendar

from sfa_omf.am.caller_keys import RegisteredKeys
from sfa_omf.calendar.database import Database, TransientConflict
from sfa_omf.calendar.feeds import FeedTokens, LeaseRevisions
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.calendar.timeline import Timeline
from sfa_omf.errors import GeniError, Reason
from sfa_omf.registry.records import Record, Records
from sfa_omf.trust.gid import chain_pem
from sfa_omf.trust.pki import create_gid, new_private_key
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from sfa_omf.web import gantt
from sfa_omf.web.app import RETRY_AFTER_S, WebCalendar, WebRequest, WebResponse, WebSettings
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki
from tests.postgres import empty_postgres
from tests.web.conftest import ALICE, DEMO, EXPIRES, OTHER, Lab, at


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
            r'<div class="bar (\w+)(?: ended)?" style="left: ([0-9.]+)%; width: ([0-9.]+)%" data-lease="([^"]+)">',
            row.group(2),
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
        ("/", "start", "9999-12-31"): (400, "give a day from 2000-01-01 to 2999-12-31"),
        ("/", "start", "0001-01-01"): (400, "give a day from 2000-01-01 to 2999-12-31"),
        ("/", "start", "1999-12-31"): (400, "give a day from 2000-01-01 to 2999-12-31"),
        ("/", "start", "3000-01-01"): (400, "give a day from 2000-01-01 to 2999-12-31"),
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
        assert (answer.status, answer.content_type) == (status, "text/html; charset=utf-8"), (path, value)
        assert message in unescape(answer.body.decode()), (path, answer.body[-300:])
    for first_or_last in ("2000-01-01", "2999-12-31"):  # the ends of the range work, in either view
        for view in ("week", "day"):
            page = get(lab, "/", start=first_or_last, view=view)
            assert page.status == 200
            # Its day links lead to pages that answer (a link past the range is left out).
            nav = re.search(r"<nav>(.*?)</nav>", page.body.decode(), re.DOTALL)
            assert nav is not None
            links = [parse_qs(unescape(query)) for query in re.findall(r'href="\?([^"]*)"', nav.group(1))]
            assert len(links) == 2, (first_or_last, view)  # today and one of earlier/later
            for query in links:
                assert get(lab, "/", **{name: values[0] for name, values in query.items()}).status == 200, query


def test_an_untrusted_certificate_gets_the_public_view_and_the_reason(lab: Lab, pki: DemoPki) -> None:
    slice_chain = pki.slice_chain  # a GID, trusted, but of a slice: not a user
    answer = lab.web.handle(WebRequest(path="/", caller_chain=slice_chain))
    assert answer.status == 200 and b"names no GENI user" in answer.body and b"anonymous (public view)" in answer.body
    key = new_private_key()  # a self-made "alice" that no trusted authority issued
    stranger = create_gid(ALICE, key.public_key(), key)
    answer = lab.web.handle(WebRequest(path="/", caller_chain=(stranger,)))
    assert b"your certificate is not trusted here" in answer.body and b'class="user"' not in answer.body


def test_a_removed_or_replaced_local_users_certificate_gets_the_public_view(lab: Lab, pki: DemoPki) -> None:
    """The registry's word on its users' keys (am/caller_keys.py), as on the AM API: alice's GID stays valid for years
    after the registry removed her, and must not keep showing her slices (nor get her feed tokens)."""
    records = Records(lab.database)
    records.import_authority(pki.authority)  # what sfa-omf serve does at start
    lab.web.registered_keys = RegisteredKeys(records, "testbed", ttl_s=0)
    assert DEMO in get(lab, "/", "alice", pki).body.decode(), "the control: her slice, with her registered GID"
    # The record goes (retire=False keeps her slice membership: the viewer rule alone must hide the slice).
    assert records.remove("testbed.alice", retire=False)
    removed = get(lab, "/", "alice", pki).body.decode()
    assert "is no longer registered here" in unescape(removed) and "anonymous (public view)" in removed
    assert DEMO not in removed
    key = new_private_key()  # the name registered again for another person (another key)
    newcomer = create_gid(ALICE, key.public_key(), pki.authority.key, issuer=pki.authority.chain[0])
    records.add(Record("testbed.alice", "user", ALICE, chain_pem((newcomer, *pki.authority.chain))))
    replaced = get(lab, "/", "alice", pki).body.decode()
    assert "registered here with another certificate" in unescape(replaced) and DEMO not in replaced
    assert DEMO in lab.web.handle(WebRequest(path="/", caller_chain=(newcomer, *pki.authority.chain))).body.decode()


@pytest.mark.parametrize(
    "url",
    ["sqlite:///{tmp}/no-such-directory/calendar.sqlite", "postgresql+psycopg://calendar:secret@127.0.0.1:1/nodb"],
)
def test_a_database_that_cannot_answer_is_503_without_its_details(
    url: str, tmp_path: Path, pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(url.format(tmp=tmp_path))
    web = WebCalendar(database, CredentialVerifier(pki.roots, VerdictCache()), WebSettings(host="am.testbed.example"))
    try:
        for path in ("/", "/node/n1.ics", "/feed/" + "A" * 43 + ".ics"):
            with caplog.at_level(logging.WARNING, logger="sfa_omf.web"):
                answer = web.handle(WebRequest(path=path))
            assert (answer.status, answer.headers) == (503, {"Retry-After": str(RETRY_AFTER_S)}), path
            page = unescape(answer.body.decode())
            assert "try again in a minute" in page
            for detail in ("127.0.0.1", "port 1", "refused", "no-such-directory", "unable to open", "database failed"):
                assert detail not in page, (path, detail)
            assert "the calendar database failed" in caplog.text  # the operator's log has the database's words
            # A private feed's token is its owner's secret (only its SHA-256 is stored): never in the log.
            assert "A" * 43 not in caplog.text
            assert ("/feed/<token>.ics" in caplog.text) == path.startswith("/feed/")
            caplog.clear()
    finally:
        database.dispose()


def test_a_query_the_database_refuses_is_500_not_retry_later(
    tmp_path: Path, pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    """A PostgreSQL without the calendar's tables (never migrated) refuses the query itself (ProgrammingError):
    retrying changes nothing, so it is 500 with its traceback in the log, not 503."""
    database = Database(empty_postgres())
    web = WebCalendar(database, CredentialVerifier(pki.roots, VerdictCache()), WebSettings(host="am.testbed.example"))
    try:
        with caplog.at_level(logging.ERROR, logger="sfa_omf.web"):
            answer = web.handle(WebRequest(path="/"))
    finally:
        database.dispose()
    assert (answer.status, answer.headers) == (500, {})
    assert "the operator's log has the details" in unescape(answer.body.decode())
    assert "does not exist" not in answer.body.decode()
    (record,) = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert "does not exist" in record.getMessage() and record.exc_info is not None


def test_busy_is_503_bad_input_400_and_the_unexpected_500(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(error: Exception) -> Callable[[], object]:
        def nodes() -> object:
            raise error

        return nodes

    cases: list[tuple[Exception, int, str]] = [
        (GeniError(Reason.BUSY, "collided at 10.0.0.7"), 503, "try again in a minute"),
        (TransientConflict("deadlock detected at 10.0.0.7"), 503, "try again in a minute"),
        (GeniError(Reason.BAD_ARGS, "give a URN"), 400, "give a URN"),
        (GeniError(Reason.NOT_FOUND, "no node n9 here"), 404, "no node n9 here"),  # (removed while answering)
        (GeniError(Reason.SERVER_ERROR, "bug at 10.0.0.7"), 500, "the operator's log has the details"),
        (RuntimeError("bug at 10.0.0.7"), 500, "the operator's log has the details"),
    ]
    for error, status, message in cases:
        monkeypatch.setattr(lab.web.timeline, "nodes", failing(error))
        answer = get(lab, "/")
        assert answer.status == status, error
        assert message in unescape(answer.body.decode()) and "10.0.0.7" not in answer.body.decode(), error
        assert ("Retry-After" in answer.headers) == (status == 503)


def test_feeds_read_more_leases_than_one_statement_takes(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    # PostgreSQL takes at most 65 535 parameters a statement: a feed of more leases is read in chunks.
    timeline = Timeline(lab.database)
    every = timeline.bookings(include_inactive=True)
    assert len({row.lease_id for row in every}) >= 2
    with monkeypatch.context() as tiny:  # a chunk per lease: the merged rows are put back in the read's order
        tiny.setattr("sfa_omf.calendar.timeline.IN_LIST_LIMIT", 1)
        assert timeline.bookings(lease_ids={row.lease_id for row in every}, include_inactive=True) == every
    many = {row.lease_id for row in every} | {f"no-such-lease-{number}" for number in range(66_000)}
    assert timeline.bookings(lease_ids=many, include_inactive=True) == every
    revisions = LeaseRevisions(lab.database)
    first = revisions.observe(dict.fromkeys(many, "a"))  # all new: recorded
    assert len(first) == len(many) and {revision.sequence for revision in first.values()} == {0}
    assert revisions.observe(dict.fromkeys(many, "a")) == first  # all known: read back, nothing written


def test_feeds_name_nodes_of_private_pools_only_to_operators_and_the_slice_members(lab: Lab, pki: DemoPki) -> None:
    lab.inventory.create_pool("secretpool", federated=False)
    lab.inventory.add_node(NodeSpec(node_urn("hid1"), "hid1", pool="secretpool", hardware_type="x"))
    both = [BookingRequest(node_urn("u1"), at(10), at(12)), BookingRequest(node_urn("hid1"), at(10), at(12))]
    other = lab.bookings.book(OTHER, EXPIRES, both, owner_urn="").leases[0]
    mine = [BookingRequest(node_urn("n2"), at(13), at(14)), BookingRequest(node_urn("hid1"), at(13), at(14))]
    demo = lab.bookings.book(DEMO, EXPIRES, mine, owner_urn=ALICE).leases[0]
    token = FeedTokens(lab.database).issue(ALICE)
    assert get(lab, "/node/hid1.ics").status == 404
    for path, who in (("/node/u1.ics", None), ("/node/u1.ics", "alice"), ("/node/n2.ics", None)):
        answer = get(lab, path, who, pki)
        assert b"hid1" not in answer.body, (path, who)
        assert other.id in events(answer) or demo.id in events(answer), (path, who)
    # A member's feeds show their own slice's lease whole, its private node too: it is no secret to them.
    for path, who in (("/node/n2.ics", "alice"), (f"/slice/{DEMO}.ics", "alice"), (f"/feed/{token}.ics", None)):
        assert "hid1" in str(events(get(lab, path, who, pki))[demo.id]["summary"]), (path, who)
    assert events(get(lab, "/node/u1.ics"))[other.id]["summary"] == "booked: u1"
    assert "n2" in str(events(get(lab, f"/slice/{DEMO}.ics", "alice", pki))[demo.id]["description"])
    operator = events(get(lab, "/node/u1.ics", "carol", pki))[other.id]
    assert "hid1" in str(operator["summary"]) and node_urn("hid1") in str(operator["description"])


def test_gantt_shows_ended_bookings_as_taken_not_cancelled_ones(lab: Lab, pki: DemoPki) -> None:
    lab.bookings.mark_provisioned(lab.demo_lease)
    lab.clock[0] = at(5)  # the demo lease (at(2)-at(4)) is over
    assert [lease.id for lease in lab.bookings.retire_ended()] == [lab.demo_lease]
    lab.bookings.cancel(lab.other_lease)
    for who in (None, "alice", "carol"):
        page = get(lab, "/", who, pki, start=f"{lab.now:%Y-%m-%d}").body.decode()
        on_n1 = {bar[0] for bar in bars_of(page).get(node_urn("n1"), [])}
        assert on_n1 == {lab.demo_lease}, who  # ended: still drawn; cancelled: free again
        assert re.search(rf'class="bar \w+ ended"[^>]*data-lease="{lab.demo_lease}"', page), who
    assert lab.demo_lease in events(get(lab, "/node/n1.ics"))  # as the node's feed has it


def test_gantt_links_keep_pool_and_hardware_names_whole(lab: Lab) -> None:
    lab.inventory.create_pool("R&D #2")
    lab.inventory.add_node(NodeSpec(node_urn("r1"), "r1", pool="R&D #2", hardware_type="b210+gps 100%"))
    page = get(lab, "/", pool="R&D #2", hw="b210+gps 100%", view="week", start="2026-03-10").body.decode()
    links = {
        unescape(text).split()[-1 if "earlier" in text else 0]: unescape(query)
        for query, text in re.findall(r'<a href="\?([^"]*)">([^<]+)</a>', page)
    }
    days = {"earlier": "2026-03-03", "today": f"{lab.now:%Y-%m-%d}", "later": "2026-03-17"}
    assert set(links) == set(days)
    for word, query in links.items():
        wanted = {"view": "week", "start": days[word], "pool": "R&D #2", "hw": "b210+gps 100%"}
        assert parse_qs(query) == {key: [value] for key, value in wanted.items()}, word
        assert get(lab, "/", **wanted).status == 200


def test_a_feed_without_events_still_holds_a_component(lab: Lab) -> None:
    # RFC 5545 3.4: a VCALENDAR holds at least one component; an empty feed carries UTC's VTIMEZONE.
    lab.inventory.add_node(NodeSpec(node_urn("e1"), "e1", pool="default", hardware_type="icarus"))
    nobody = FeedTokens(lab.database).issue("urn:publicid:IDN+testbed+user+bob")
    for path in ("/node/e1.ics", f"/feed/{nobody}.ics"):
        answer = get(lab, path)
        assert events(answer) == {}
        calendar = Calendar.from_ical(answer.body)
        (timezone,) = calendar.subcomponents
        assert (timezone.name, str(timezone["tzid"])) == ("VTIMEZONE", "UTC")
        (standard,) = timezone.subcomponents
        assert standard.name == "STANDARD"
        assert standard.decoded("tzoffsetfrom") == standard.decoded("tzoffsetto") == timedelta(0)
    with_events = Calendar.from_ical(get(lab, "/node/n1.ics").body)
    assert {component.name for component in with_events.subcomponents} == {"VEVENT"}  # as before
