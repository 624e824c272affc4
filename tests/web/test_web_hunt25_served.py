"""Defects of the web calendar found by the hunt of session 25, over the real TLS server (and Debian's chromium for
the pages):

- The anonymous node page showed every node property, also the LAN address and group name the aggregate stores at
  an agent's enrolment (a volunteer's home network): those are for operators only now.
- An external reservation that ran vanished from the Gantt: it is drawn faded as the testbed's.
- No HTTP validators: feeds and pages had no ETag and a calendar client's poll always got the whole feed again; a 200
  answer to GET or HEAD carries a strong ETag now, and a matching If-None-Match is answered 304 without a body.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from sfa_omf.calendar.external import ExternalHold, ExternalHolds
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.times import utcnow
from tests.web.served import Served
from tests.web.test_browser import browser  # noqa: F401  # the chromium fixture
from tests.web.test_web_http_layer import SECURITY, exchange

VOLUNTEER = "urn:publicid:IDN+lab+node+vol1"
#: What calendar/agents.py stores for an agent's node (besides what the agent describes itself, e.g. its CPU).
ENROLLED = {"cpu": "8 cores", "local_address": "192.168.17.23", "lan_group": "dana-home-lab"}
FEED = "/calendar/node/vol1/feed.ics"


def volunteer(served: Served) -> None:
    served.aggregate.inventory.add_node(NodeSpec(VOLUNTEER, "vol1", hardware_type="agent", properties=ENROLLED))


def test_the_node_page_shows_the_lan_address_and_group_to_operators_only(
    served: Served,
    browser: Any,  # noqa: F811
) -> None:
    volunteer(served)
    origin = served.url.rstrip("/")
    anonymous = browser.new_context(ignore_https_errors=True)
    page = anonymous.new_page()
    assert page.goto(f"{served.url}calendar/node/vol1").status == 200
    shown = page.inner_text("#properties")
    assert "8 cores" in shown, "what the agent describes stays public"
    for hidden in ("local_address", "192.168.17.23", "lan_group", "dana-home-lab"):
        assert hidden not in shown and hidden not in page.content(), hidden
    anonymous.close()

    gid, key = served.files("ben")  # the operator ([sfa_web] admins)
    operator = browser.new_context(
        ignore_https_errors=True, client_certificates=[{"origin": origin, "certPath": gid, "keyPath": key}]
    )
    page = operator.new_page()
    assert page.goto(f"{served.url}calendar/node/vol1").status == 200
    shown = page.inner_text("#properties")
    assert "192.168.17.23" in shown and "dana-home-lab" in shown and "8 cores" in shown
    operator.close()


def test_an_external_reservation_that_ran_is_drawn_faded(served: Served, browser: Any) -> None:  # noqa: F811
    """An OAR job on vol1 started 2 h ago and was to end in an hour; it ended now (OAR lists it no more)."""
    volunteer(served)
    now = utcnow().replace(microsecond=0)
    holds = ExternalHolds(served.aggregate.database, "lab")
    holds.sync("oar", [ExternalHold("oar:40", (VOLUNTEER,), now - timedelta(hours=2), now + timedelta(hours=1))])
    assert holds.sync("oar", []).ended == ["oar:40"]
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    assert page.goto(f"{served.url}calendar/?view=day&start={now:%Y-%m-%d}").status == 200
    bar = page.locator(f".row.node[data-node='{VOLUNTEER}'] .bar")
    assert bar.count() == 1, "the reservation's time was taken: it stays on the Gantt"
    assert bar.get_attribute("class") == "bar external ended" and bar.inner_text() == "reserved"
    assert bar.evaluate("element => getComputedStyle(element).opacity") == "0.45"
    context.close()
    status, _, body = served.get(FEED)
    assert status == 200 and b"STATUS:CONFIRMED" in body and b"SUMMARY:reserved in the testbed: vol1" in body


def test_feeds_and_pages_carry_an_etag_and_answer_304_when_it_matches(served: Served) -> None:
    volunteer(served)
    status, headers, body = exchange(served, "GET", FEED)
    tag = headers.get("etag", "")
    assert status == 200 and tag == f'"{hashlib.sha256(body).hexdigest()[:32]}"', headers
    assert headers["cache-control"] == "no-cache"

    for method in ("GET", "HEAD"):
        for asked in (tag, f'"something else", W/{tag}', "*"):
            status, again, rest = exchange(served, method, FEED, headers={"If-None-Match": asked})
            assert (status, rest) == (304, b""), (method, asked)
            assert again["etag"] == tag and again["cache-control"] == "no-cache"
            assert all(name in again for name in SECURITY)
    status, _, same = exchange(served, "GET", FEED, headers={"If-None-Match": '"something else"'})
    assert (status, same) == (200, body)

    # A lease on the node: a new feed. The operator's is another body (the slice named): another ETag.
    expires = utcnow() + timedelta(days=3)
    soon = utcnow().replace(hour=9, minute=0, second=0, microsecond=0) + timedelta(days=1)
    served.aggregate.bookings.book(
        "urn:publicid:IDN+lab+slice+demo", expires, [BookingRequest(VOLUNTEER, soon, soon + timedelta(hours=1))]
    )
    status, changed, new_body = exchange(served, "GET", FEED, headers={"If-None-Match": tag})
    assert status == 200 and changed["etag"] not in ("", tag), "the feed changed: the whole of it, a new ETag"
    status, operator, operator_body = exchange(served, "GET", FEED, "ben", headers={"If-None-Match": changed["etag"]})
    assert status == 200 and operator_body != new_body and operator["etag"] != changed["etag"]
    assert operator["cache-control"] == "no-store"
    status, again, rest = exchange(served, "GET", FEED, "ben", headers={"If-None-Match": operator["etag"]})
    assert (status, rest, again["etag"], again["cache-control"]) == (304, b"", operator["etag"], "no-store")

    status, headers, script = exchange(served, "GET", "/calendar/static/calendar.js")
    assert status == 200 and headers["etag"] == f'"{hashlib.sha256(script).hexdigest()[:32]}"'
    assert exchange(served, "GET", "/calendar/static/calendar.js", headers={"If-None-Match": headers["etag"]})[0] == 304
    status, headers, page = exchange(served, "GET", "/calendar/node/vol1")
    assert status == 200 and headers["etag"] == f'"{hashlib.sha256(page).hexdigest()[:32]}"'
    status, headers, _ = exchange(served, "GET", "/calendar/node/nowhere", headers={"If-None-Match": "*"})
    assert status == 404 and "etag" not in headers, "only a page or feed that is there has a validator"
