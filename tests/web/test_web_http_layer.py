"""The web calendar's HTTP layer over the real HTTPS server (and the date field in Debian's chromium): methods and
their 405s, the headers of every answer (security, Cache-Control), bodies over the form limit refused before they
are read, a node whose name ends in .ics, and typing a day into the filter form."""

from __future__ import annotations

import http.client
import re
import socket
import ssl
from typing import Any
from urllib.parse import quote, urlencode

from sfa_omf.calendar.feeds import FeedTokens
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.web.forms import MAX_FORM_BYTES
from tests.tls_harness import client_context
from tests.web.served import Served
from tests.web.test_browser import browser  # noqa: F401  # the chromium fixture (skipped without one)

ANN = "urn:publicid:IDN+lab+user+ann"
SECURITY = ("content-security-policy", "x-content-type-options", "referrer-policy")
FORM = "application/x-www-form-urlencoded"


def exchange(
    served: Served,
    method: str,
    path: str,
    user: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers by lower-case name, body) of one HTTPS request, with the user's certificate if named."""
    chain, key = served.files(user) if user else (None, None)
    host, port = served.url.removeprefix("https://").rstrip("/").split(":")
    connection = http.client.HTTPSConnection(host, int(port), context=client_context(chain, key), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()
    finally:
        connection.close()


def head_only(served: Served, head: bytes) -> bytes:
    """Send a request's head only (no byte of the body it declares) and read the answer until the server closes."""
    host, port = served.url.removeprefix("https://").rstrip("/").split(":")
    with (
        socket.create_connection((host, int(port)), timeout=30) as raw,
        client_context(None, None).wrap_socket(raw) as tls,
    ):
        tls.sendall(head)
        answer = b""
        try:
            while chunk := tls.recv(65536):
                answer += chunk
        except (ssl.SSLError, ConnectionResetError):  # the server closed without waiting for the body
            pass
        return answer


def test_every_other_method_is_told_which_ones_the_address_takes(served: Served) -> None:
    for method in ("PUT", "DELETE", "OPTIONS", "PATCH"):
        for path, allow in (
            ("/calendar/", "GET, HEAD"),
            ("/calendar/node/n1", "GET, HEAD"),
            ("/calendar/me/notify", "POST"),
        ):
            status, headers, body = exchange(served, method, path)
            assert (status, headers.get("allow")) == (405, allow), (method, path, body)
            assert all(name in headers for name in SECURITY), (method, path)
    status, headers, _ = exchange(served, "POST", "/calendar/", body=b"a=b", headers={"Content-Type": FORM})
    assert (status, headers.get("allow")) == (405, "GET, HEAD")
    status, headers, _ = exchange(served, "GET", "/calendar/me/notify", "ann")
    assert (status, headers.get("allow")) == (405, "POST")


def test_refusals_of_a_form_carry_the_security_headers(served: Served) -> None:
    status, headers, body = exchange(
        served, "POST", "/calendar/me/notify", "ann", b"a=b", {"Content-Type": "text/plain"}
    )
    assert status == 415 and headers["content-type"].startswith("text/html") and b"is sent as" in body
    assert all(name in headers for name in SECURITY) and headers["cache-control"] == "no-store"
    status, headers, body = exchange(
        served, "POST", "/calendar/me/notify", "ann", b"x" * (MAX_FORM_BYTES + 1), {"Content-Type": FORM}
    )
    assert status == 413 and headers["content-type"].startswith("text/html") and b"Back to the calendar" in body
    assert all(name in headers for name in SECURITY) and headers["cache-control"] == "no-store"


def test_a_body_over_the_form_limit_is_refused_before_it_is_read(served: Served) -> None:
    """A declared length over the web's form limit (and over the XML-RPC limit: 5 MB) is answered 413 in HTML at
    once, without a byte of the body sent; a chunked body is cut off where it passes the limit."""
    for length in (MAX_FORM_BYTES + 1, 5_000_000):
        answer = head_only(
            served,
            f"POST /calendar/me/notify HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\n"
            f"Content-Length: {length}\r\n\r\n".encode(),
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 "), answer[:300]
        assert b"content-type: text/html" in head.lower() and b"x-content-type-options: nosniff" in head.lower()
        assert b"a form is at most" in body and b"<methodResponse>" not in body
    chunk = b"x" * (MAX_FORM_BYTES + 1)
    answer = head_only(
        served,
        f"POST /calendar/me/notify HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"{len(chunk):x}\r\n".encode()
        + chunk
        + b"\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413 ") and b"text/html" in answer, answer[:300]


def test_answers_say_how_they_may_be_cached(served: Served) -> None:
    token = FeedTokens(served.aggregate.database).issue(ANN)
    for path, user, expected in (
        ("/calendar/", None, "no-cache"),
        ("/calendar/static/calendar.js", None, "max-age=300"),  # the same for everyone
        ("/calendar/static/calendar.js", "ann", "max-age=300"),  # also to a certificate's holder
        ("/calendar/static/calendar.css", "ann", "max-age=300"),
        ("/calendar/", "ann", "no-store"),  # the certificate's user's slices
        ("/calendar/me", "ann", "no-store"),  # the form token, the addresses
        (f"/calendar/feed/{token}.ics", None, "no-store"),  # a secret address
        ("/calendar/nothing", None, "no-cache"),
    ):
        status, headers, _ = exchange(served, "GET", path, user)
        assert headers.get("cache-control") == expected, (path, user, status)
        assert all(name in headers for name in SECURITY), path


def test_a_node_whose_name_ends_in_ics_has_its_page_and_its_feed(served: Served) -> None:
    urn = "urn:publicid:IDN+lab+node+cam.ics"
    served.aggregate.inventory.add_node(NodeSpec(urn, "cam.ics"))
    served.aggregate.inventory.add_node(NodeSpec("urn:publicid:IDN+lab+node+n1", "n1"))
    for path in ("/calendar/node/cam.ics", f"/calendar/node/{quote(urn, safe='')}"):  # the Gantt links the URN
        status, headers, body = exchange(served, "GET", path)
        assert status == 200 and headers["content-type"].startswith("text/html") and b"<h1>cam.ics</h1>" in body
    for path in ("/calendar/node/cam.ics.ics", f"/calendar/node/{quote(urn, safe='')}.ics", "/calendar/node/n1.ics"):
        status, headers, body = exchange(served, "GET", path)
        assert status == 200 and headers["content-type"].startswith("text/calendar"), path
    assert exchange(served, "GET", "/calendar/node/nothing.ics")[0] == 404


def calendar_name(feed: bytes) -> bytes:
    """The X-WR-CALNAME of a feed: whose feed it is."""
    return re.search(rb"X-WR-CALNAME:([^\r\n]*)", feed).group(1)  # type: ignore[union-attr]


def test_a_node_page_links_its_own_feed_whatever_other_nodes_are_named(served: Served) -> None:
    """Nodes cam and cam.ics: cam's former feed address (cam.ics, or its URN + .ics) is cam.ics's page and URN; each
    page links node/<URN>/feed.ics, its own feed. The former address still answers the feed of a node it alone
    names (n1.ics)."""
    for name in ("cam", "cam.ics", "n1"):
        served.aggregate.inventory.add_node(NodeSpec(f"urn:publicid:IDN+lab+node+{name}", name))
    for name in ("cam", "cam.ics"):
        _, _, page = exchange(served, "GET", f"/calendar/node/{quote(name, safe='')}")
        link = re.search(rb'href="([^"]*)">iCal feed of this node<', page).group(1).decode()  # type: ignore[union-attr]
        assert link == f"/calendar/node/{quote(f'urn:publicid:IDN+lab+node+{name}', safe='')}/feed.ics"
        for path in (link, f"/calendar/node/{quote(name, safe='')}/feed.ics"):
            status, headers, feed = exchange(served, "GET", path)
            assert status == 200 and headers["content-type"].startswith("text/calendar"), path
            assert calendar_name(feed) == f"{name} (127.0.0.1)".encode(), (path, feed[:300])
    status, _, feed = exchange(served, "GET", "/calendar/node/n1.ics")  # a subscription made before
    assert status == 200 and calendar_name(feed) == b"n1 (127.0.0.1)"
    for path in ("/calendar/node/nothing/feed.ics", "/calendar/node/cam/feed.txt", "/calendar/node/cam/x/feed.ics"):
        assert exchange(served, "GET", path)[0] == 404, path


def test_a_bad_day_in_the_address_answers_a_page_back_to_the_calendar(served: Served) -> None:
    status, _, body = exchange(served, "GET", "/calendar/?" + urlencode({"view": "day", "start": "0002-12-03"}))
    assert status == 400 and b'<a id="back" href="/calendar/">' in body


def test_typing_a_day_sends_it_once_whole(served: Served, browser: Any) -> None:  # noqa: F811
    """A person types the year digit by digit (chromium's field is 0002-12-03 after the first): nothing is sent
    until Enter, or until the field loses focus; then the whole day, answered 200."""
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    assert page.goto(f"{served.url}calendar/?start=2026-12-03").status == 200
    sent: list[str] = []
    answered: list[int] = []
    page.on("request", lambda request: sent.append(request.url) if "/calendar/?" in request.url else None)
    page.on("response", lambda response: answered.append(response.status) if "/calendar/?" in response.url else None)
    field = page.locator("input[name=start]")
    field.click()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")  # the year
    page.keyboard.type("2027", delay=50)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "start=2027-12-03" in page.url and [url.split("start=")[1][:10] for url in sent] == ["2027-12-03"]
    assert answered == [200]
    field = page.locator("input[name=start]")
    field.click()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.type("2028", delay=50)
    with page.expect_navigation():
        page.click("p.legend")  # elsewhere: the field loses focus
    assert [url.split("start=")[1][:10] for url in sent] == ["2027-12-03", "2028-12-03"] and answered == [200, 200]
    context.close()


def test_a_day_picked_with_the_mouse_is_sent_at_once(served: Served, browser: Any) -> None:  # noqa: F811
    """A click on the field's picker icon, then a day in chromium's popup: the popup sets the value and fires input
    and change while the field keeps the focus (Playwright cannot reach the native popup: the same events are
    fired). The day is sent then, not only once the user clicks elsewhere, also after a key was pressed in it."""
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    assert page.goto(f"{served.url}calendar/?start=2026-12-03").status == 200
    field = page.locator("input[name=start]")
    box = field.bounding_box()
    assert box is not None
    field.click()
    page.keyboard.press("ArrowRight")  # a key pressed in the field first (to the month): the pick still counts
    page.mouse.click(box["x"] + box["width"] - 10, box["y"] + box["height"] / 2)  # the picker icon
    assert page.evaluate("document.activeElement.name") == "start"
    with page.expect_navigation():
        field.evaluate(
            "f => { f.value = '2026-12-10'; f.dispatchEvent(new Event('input', {bubbles: true}));"
            " f.dispatchEvent(new Event('change', {bubbles: true})); }"
        )
    assert "start=2026-12-10" in page.url
    context.close()


def _year_typed(context: Any, url: str) -> tuple[Any, list[str]]:
    """A calendar page of 2026-12-03 whose date field got the year 2027 typed (not sent yet), and the list the
    calendar's requests from then on are added to."""
    page = context.new_page()
    page.goto(f"{url}calendar/?start=2026-12-03")
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if "/calendar/?" in request.url else None)
    page.locator("input[name=start]").click()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")  # the year
    page.keyboard.type("2027", delay=50)
    return page, sent


def test_a_typed_day_is_sent_once_when_the_field_is_left_with_tab(served: Served, browser: Any) -> None:  # noqa: F811
    """Leaving the date field with the keyboard sends the day typed, once (only a press on Show leaves the sending
    to the button, whose own submission the field's would cancel)."""
    context = browser.new_context(ignore_https_errors=True)
    page, sent = _year_typed(context, served.url)
    page.keyboard.press("Tab")  # to the field's own picker button: still in the field, nothing sent
    assert page.evaluate("document.activeElement.name") == "start" and sent == [], sent
    with page.expect_navigation():
        page.keyboard.press("Tab")  # out of the field
    assert "start=2027-12-03" in page.url and len(sent) == 1, sent
    context.close()


def test_the_filters_have_a_show_button(served: Served, browser: Any) -> None:  # noqa: F811
    """A visible "Show" button sends the filters: after a day typed (one request, not a second one for the blur on
    the way), and in a browser without JavaScript."""
    context = browser.new_context(ignore_https_errors=True)
    page, sent = _year_typed(context, served.url)
    with page.expect_navigation():
        page.get_by_role("button", name="Show").click()
    assert "start=2027-12-03" in page.url and len(sent) == 1, sent
    context.close()
    context = browser.new_context(ignore_https_errors=True, java_script_enabled=False)
    page = context.new_page()
    page.goto(f"{served.url}calendar/?start=2026-12-03")
    page.locator("input[name=start]").fill("2026-12-24")
    with page.expect_navigation():
        page.get_by_role("button", name="Show").click()
    assert "start=2026-12-24" in page.url
    context.close()
