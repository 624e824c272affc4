"""The web calendar on the aggregate's own HTTPS server: bookings made with the AM API over TLS show in the feeds
(parsed back) and the page, renew and delete update them; browsers with and without a certificate; XML-RPC without
a certificate is refused."""

from __future__ import annotations

import http.client
import re
from datetime import timedelta
from html import unescape
from pathlib import Path
from urllib.parse import urlencode

import pytest
from icalendar import Calendar
from sqlalchemy.exc import OperationalError

from sfa_omf.calendar.outbox import Outbox
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.cli import main
from sfa_omf.errors import GeniError, Reason
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.records import Records
from sfa_omf.times import format_time, utcnow
from sfa_omf.web.app import RETRY_AFTER_S, WebCalendar
from tests.tls_harness import client_context, proxy
from tests.web.served import Served

SLICE = "urn:publicid:IDN+lab+slice+demo"
ANN = "urn:publicid:IDN+lab+user+ann"
NODES = ("urn:publicid:IDN+lab+node+n1", "urn:publicid:IDN+lab+node+n2")


def cred(xml: str) -> dict[str, str]:
    return {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": xml}


def request(window: tuple[str, str]) -> str:
    nodes = "".join(
        f'<node client_id="{urn[-2:]}" component_id="{urn}" exclusive="true"><ol:lease_ref id_ref="l"/></node>'
        for urn in NODES
    )
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{window[0]}" valid_until="{window[1]}"/>{nodes}</rspec>'
    )


def ok(answer: dict[str, object]) -> object:
    assert answer["code"]["geni_code"] == 0, answer["output"]  # type: ignore[index]
    return answer["value"]


def feed_events(served: Served, path: str, user: str | None) -> list[dict[str, object]]:
    status, content_type, body = served.get(path, user)
    assert (status, content_type) == (200, "text/calendar; charset=utf-8"), body
    return [
        {
            "uid": str(e["uid"]),
            "start": e.decoded("dtstart"),
            "end": e.decoded("dtend"),
            "status": str(e["status"]),
            "sequence": int(e["sequence"]),
            "summary": str(e["summary"]),
        }
        for e in Calendar.from_ical(body).walk("VEVENT")
    ]


def test_feeds_follow_the_am_api(served: Served) -> None:
    for urn in NODES:
        served.aggregate.inventory.add_node(NodeSpec(urn, urn[-2:], hardware_type="icarus"))
    chain, key = served.files("ann")
    am = proxy(served.url, chain, key)
    credentials = [cred(served.slice_cred("ann"))]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    window = (format_time(start), format_time(start + timedelta(hours=1)))
    ok(am.Allocate(SLICE, credentials, request(window), {}))
    ok(am.Provision([SLICE], credentials, {}))

    (lease,) = served.aggregate.bookings.leases(slice_urn=SLICE)
    (event,) = feed_events(served, f"/calendar/slice/{SLICE}.ics", "ann")
    host = served.aggregate.settings.hostname
    assert event == {
        "uid": f"{lease.id}@{host}",
        "start": lease.start,
        "end": lease.end,
        "status": "CONFIRMED",
        "sequence": 0,
        "summary": "demo: n1, n2",
    }
    (public,) = feed_events(served, "/calendar/node/n1.ics", None)
    assert public["uid"] == event["uid"] and public["summary"] == "booked: n1, n2"

    new_end = format_time(start + timedelta(hours=2))
    ok(am.Renew([SLICE], credentials, new_end, {}))
    (renewed,) = feed_events(served, f"/calendar/slice/{SLICE}.ics", "ann")
    assert (renewed["uid"], renewed["end"], renewed["sequence"]) == (event["uid"], start + timedelta(hours=2), 1)

    ok(am.Delete([SLICE], credentials, {}))
    (deleted,) = feed_events(served, f"/calendar/slice/{SLICE}.ics", "ann")
    assert (deleted["uid"], deleted["status"], deleted["sequence"]) == (event["uid"], "CANCELLED", 2)
    (public_deleted,) = feed_events(served, "/calendar/node/n2.ics", None)
    assert (public_deleted["status"], public_deleted["sequence"]) == ("CANCELLED", 2)

    status, _, body = served.get(f"/calendar/slice/{SLICE}.ics", "cid")  # not a member
    assert status == 403 and b"is for its members" in body
    assert [e["uid"] for e in feed_events(served, f"/calendar/slice/{SLICE}.ics", "ben")] == [event["uid"]]  # admin


def test_private_feed_from_the_command(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.aggregate.inventory.add_node(NodeSpec(NODES[0], "n1"))
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=3)
    lease = served.aggregate.bookings.book(
        SLICE, start + timedelta(days=1), [BookingRequest(NODES[0], start, start + timedelta(hours=1))], owner_urn=ANN
    ).leases[0]
    assert main(["calendar", "feed-url", ANN, "--config", served.config]) == 0
    address = capsys.readouterr().out.splitlines()[0]
    assert address.startswith("https://") and "/calendar/feed/" in address and address.endswith(".ics")
    path = "/calendar/feed/" + address.split("/calendar/feed/")[1]
    (event,) = feed_events(served, path, None)  # a calendar client has no GENI certificate
    assert event["uid"].startswith(lease.id) and event["summary"] == "demo: n1"
    assert main(["calendar", "feed-revoke", ANN, "--config", served.config]) == 0
    assert served.get(path)[0] == 404
    assert main(["calendar", "feed-revoke", ANN, "--config", served.config]) == 1
    assert main(["calendar", "feed-url", SLICE, "--config", served.config]) == 2
    assert "is not a user URN" in capsys.readouterr().err


def test_who_am_i_by_client_certificate(served: Served) -> None:
    status, content_type, body = served.get("/calendar/")
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert b"anonymous (public view)" in body
    assert b"urn:publicid:IDN+lab+user+ann" in served.get("/calendar/", "ann")[2]
    assert b'id="whoami" class="admin"' in served.get("/calendar", "ben")[2]
    status, content_type, script = served.get("/calendar/static/calendar.js")
    assert status == 200 and content_type.startswith("text/javascript") and b"now-line" in script


def test_a_removed_users_certificate_gets_the_public_view_over_tls(served: Served) -> None:
    """The served calendar asks the aggregate's registered-key rule (am/caller_keys.py) who a certificate is."""
    records = Records(served.aggregate.database)
    records.import_authority(LocalAuthority.load(str(Path(served.config).parent), "lab"))  # as serve records them
    served.aggregate.registered_keys.ttl_s = 0  # (no verdict kept from before the removal)
    assert b"urn:publicid:IDN+lab+user+ann" in served.get("/calendar/", "ann")[2]
    assert records.remove("lab.ann")
    body = unescape(served.get("/calendar/", "ann")[2].decode())
    assert "is no longer registered here" in body and "anonymous (public view)" in body


def test_xml_rpc_without_a_certificate_is_refused(served: Served) -> None:
    answer = proxy(served.url, None, None).GetVersion()  # an AM API envelope, as every refusal of the AM
    assert answer["code"]["geni_code"] == 3 and "no client certificate" in answer["output"]
    chain, key = served.files("ann")
    assert proxy(served.url, chain, key).GetVersion()["code"]["geni_code"] == 0


def test_a_user_opts_in_over_tls_with_their_certificate(served: Served) -> None:
    """The forms of /calendar/me over the real HTTPS server: the TLS client certificate is the identity; a POST
    from another site's page, without a certificate, or not a form is refused and changes nothing."""
    origin = served.url.rstrip("/")
    status, _, page = served.get("/calendar/me", "ann")
    assert status == 200 and ANN.encode() in page
    token = re.search(rb'name="token" value="([0-9a-f]+)"', page)
    assert token is not None
    form = urlencode(
        {"token": token.group(1).decode(), "channel": "email", "action": "subscribe", "address": "ann@example.org"}
    ).encode()
    browser = {"Content-Type": "application/x-www-form-urlencoded", "Origin": origin, "Sec-Fetch-Site": "same-origin"}
    outbox = Outbox(served.aggregate.database)

    refused = [
        (
            served.send(
                "POST",
                "/calendar/me/notify",
                "ann",
                form,
                {**browser, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
            ),
            403,
        ),
        (served.send("POST", "/calendar/me/notify", None, form, browser), 403),  # no certificate: no user
        (served.send("POST", "/calendar/me/notify", "cid", form, browser), 403),  # ann's token, cid's certificate
        (served.send("POST", "/calendar/me/notify", "ann", form, {**browser, "Content-Type": "text/plain"}), 415),
        (served.send("POST", "/calendar/me/notify", "ann", b"x" * 9000, browser), 413),
    ]
    for (status, _, body), expected in refused:
        assert status == expected, body
    assert outbox.subscriptions([ANN]) == {}

    status, _, body = served.send("POST", "/calendar/me/notify", "ann", form, browser)
    assert status == 200 and b"ann@example.org" in body, body
    assert outbox.subscriptions([ANN]) == {ANN: [("email", "ann@example.org")]}
    new_feed = urlencode({"token": token.group(1).decode(), "action": "new"}).encode()
    status, _, body = served.send("POST", "/calendar/me/feed", "ann", new_feed, browser)
    address = re.search(rb'id="feed-url"><a href="(https://[^"]+)"', body)
    assert status == 200 and address is not None and address.group(1).decode().startswith(f"{origin}/calendar/feed/")
    assert served.get(address.group(1).decode().removeprefix(origin))[0] == 200  # no certificate needed


def test_a_database_failure_reaches_the_browser_as_503_with_retry_after(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer's own headers cross the HTTPS server: a page whose database fails is 503 with Retry-After, and
    the database's words stay in the log. (The failure is a stand-in raised where the page reads the calendar:
    tests/web/test_web_app.py makes a real one, a PostgreSQL that refuses connections, in-process.)"""

    def database_down(*_args: object, **_kwargs: object) -> None:
        # As Database turns the driver's OperationalError of a refused connection into DBERROR.
        refused = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection to 10.0.0.7 refused"))
        raise GeniError(Reason.DATABASE, "the calendar database failed: connection to 10.0.0.7 refused") from refused

    monkeypatch.setattr(WebCalendar, "gantt_page", database_down)
    host, port = served.url.removeprefix("https://").rstrip("/").split(":")
    connection = http.client.HTTPSConnection(host, int(port), context=client_context(None, None), timeout=30)
    try:
        connection.request("GET", "/calendar/")
        response = connection.getresponse()
        status, retry_after, body = response.status, response.getheader("retry-after"), response.read()
    finally:
        connection.close()
    assert (status, retry_after) == (503, str(RETRY_AFTER_S)), body
    assert b"10.0.0.7" not in body and b"try again" in body
