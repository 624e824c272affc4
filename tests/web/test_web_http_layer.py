"""The web calendar's HTTP layer over the real HTTPS server (and the date field in Debian's chromium): methods and
their 405s, the headers of every answer (security, Cache-Control), bodies over the form limit refused before they
are read, a node whose name ends in .ics, and typing a day into the filter form."""

from __future__ import annotations

import http.client
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
        ("/calendar/static/calendar.js", None, "no-cache"),
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
