"""The web calendar in a real headless browser: Debian's chromium driven by Playwright (its own browser download is
not reachable; scripts/chromium.sh installs Debian's and sets SFA_OMF_TEST_CHROMIUM).

With and without a GENI user certificate (Playwright presents it as the TLS client certificate): who-am-i, bars
where the calendar says (in pixels), privacy, the details panel, the filters, the node page. Screenshots go to
$SFA_OMF_TEST_ARTIFACTS (default ./test-artifacts); docs/web-calendar.png is one of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.calendar.external import ExternalHold, ExternalHolds
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.times import utcnow
from sfa_omf.web import gantt
from tests.requirements import missing
from tests.web.served import Served

CHROMIUM = os.environ.get("SFA_OMF_TEST_CHROMIUM")
ARTIFACTS = Path(os.environ.get("SFA_OMF_TEST_ARTIFACTS", "test-artifacts"))
DEMO = "urn:publicid:IDN+lab+slice+demo"
OTHER = "urn:publicid:IDN+lab+slice+other"


def node(name: str) -> str:
    return f"urn:publicid:IDN+lab+node+{name}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM:
        missing(
            "SFA_OMF_TEST_CHROMIUM is not set: scripts/test.sh installs chromium and sets it",
            "no browser: run scripts/chromium.sh and set SFA_OMF_TEST_CHROMIUM=/usr/bin/chromium",
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def demo_inventory(served: Served) -> tuple[datetime, str, str]:
    """The quickstart's five demo nodes plus a radio pool; ann's slice, another slice, an OAR job, a node down."""
    inventory = served.aggregate.inventory
    for number in range(1, 6):
        inventory.add_node(NodeSpec(node(f"node{number}"), f"node{number}", hardware_type="demo"))
    inventory.create_pool("radio")
    inventory.add_node(NodeSpec(node("usrp1"), "usrp1", pool="radio", hardware_type="usrp2"))
    inventory.set_state(node("node5"), "maintenance")
    day = utcnow().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    bookings = served.aggregate.bookings
    expires = day + timedelta(days=20)
    ann = "urn:publicid:IDN+lab+user+ann"
    mine = bookings.book(
        DEMO,
        expires,
        [
            BookingRequest(node("node1"), day + timedelta(hours=9), day + timedelta(hours=12)),
            BookingRequest(node("node2"), day + timedelta(hours=9), day + timedelta(hours=12)),
        ],
        owner_urn=ann,
        users={ann: []},
    ).leases[0]
    bookings.mark_provisioned(mine.id)
    other = bookings.book(
        OTHER, expires, [BookingRequest(node("node2"), day + timedelta(hours=14), day + timedelta(hours=20))]
    ).leases[0]
    bookings.book(OTHER, expires, [BookingRequest(node("usrp1"), day + timedelta(hours=2), day + timedelta(hours=5))])
    ExternalHolds(served.aggregate.database, "lab").sync(
        "oar", [ExternalHold("oar:7", (node("node3"),), day + timedelta(hours=6), day + timedelta(hours=16))]
    )
    return day, mine.id, other.id


def bar_boxes(page: Any) -> dict[str, tuple[float, float, str, str]]:
    """lease -> (left, width) of its first bar in percent of its track as laid out in pixels, its class, its text."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#gantt .row.node .bar')].map(bar => {
            const track = bar.parentElement.getBoundingClientRect(); const box = bar.getBoundingClientRect();
            return [bar.dataset.lease + '@' + bar.closest('.row').dataset.node,
                    [(box.left - track.left) / track.width * 100, box.width / track.width * 100,
                     bar.className, bar.textContent.trim()]];
        }))"""
    )


def watch(page: Any) -> list[str]:
    """What went wrong while the page loaded, as it happens: a request that failed, an answer >= 400, a script
    error. Asserted empty after each load: a page whose script did not load has bars that do nothing on a click."""
    problems: list[str] = []
    page.on("requestfailed", lambda request: problems.append(f"{request.url} failed: {request.failure}"))
    page.on("response", lambda answer: answer.status >= 400 and problems.append(f"{answer.url}: {answer.status}"))
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    return problems


def details_show(page: Any, text: str) -> None:
    """The details panel shows ``text`` (it is filled by the page's script on the click; waited for, bounded)."""
    from playwright.sync_api import expect

    expect(page.locator("#details")).to_be_visible(timeout=10_000)
    expect(page.locator("#details")).to_contain_text(text, timeout=10_000)


def done_says(page: Any, text: str) -> None:
    """The notice (#done) of the page a form's answer loaded says ``text`` (waited for, bounded)."""
    from playwright.sync_api import expect

    expect(page.locator("#done")).to_contain_text(text, timeout=60_000)


def test_calendar_in_a_browser(served: Served, browser: Any) -> None:
    day, mine, other = demo_inventory(served)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    address = f"{served.url}calendar/?view=day&start={day:%Y-%m-%d}"
    window = (day, day + timedelta(days=1))
    rows = served.aggregate.bookings.leases(start=window[0], end=window[1])
    expected = {
        f"{lease.id}@{sliver.node}": gantt.place(lease.start, lease.end, *window)
        for lease in rows
        for sliver in lease.slivers
    }

    public = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 720})
    page = public.new_page()
    problems = watch(page)
    assert page.goto(address).status == 200
    assert problems == []
    assert page.inner_text("#whoami") == "anonymous (public view)"
    boxes = bar_boxes(page)
    ours = {key: value for key, value in boxes.items() if "external" not in value[2]}
    assert set(ours) == set(expected)
    for key, (left, width, _kind, text) in ours.items():
        assert abs(left - expected[key][0]) < 0.2 and abs(width - expected[key][1]) < 0.2, key
        assert text == "booked"
    assert page.locator(".row.node.down").count() == 1 and page.locator("#gantt .bar.external").count() == 1
    page.screenshot(path=str(ARTIFACTS / "calendar-public.png"), full_page=True)
    page.select_option("select[name=hw]", "usrp2")  # the page's script applies the filter at once
    page.wait_for_url("**hw=usrp2**")
    assert page.locator(".row.node").count() == 1 and page.inner_text(".row.node .name a") == "usrp1"
    public.close()

    gid, key = served.files("ann")
    origin = served.url.rstrip("/")
    ann = browser.new_context(
        ignore_https_errors=True,
        viewport={"width": 1280, "height": 720},
        client_certificates=[{"origin": origin, "certPath": gid, "keyPath": key}],
    )
    page = ann.new_page()
    problems = watch(page)
    assert page.goto(address).status == 200
    assert problems == []
    assert page.inner_text("#whoami") == "urn:publicid:IDN+lab+user+ann"
    boxes = bar_boxes(page)
    assert "mine" in boxes[f"{mine}@{node('node1')}"][2] and boxes[f"{mine}@{node('node1')}"][3] == "demo"
    assert boxes[f"{other}@{node('node2')}"][3] == "booked"
    page.click(f".bar[data-lease='{mine}'] >> nth=0")
    details_show(page, DEMO)
    assert "provisioned" in page.inner_text("#details")
    page.screenshot(path=str(ARTIFACTS / "calendar-ann.png"), full_page=True)
    page.click("text=node1")
    page.wait_for_url("**/calendar/node/**")  # loaded: count() does not wait, the list may not be parsed yet
    assert page.inner_text("h1") == "node1" and page.locator("#free-windows li").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "node-ann.png"), full_page=True)
    ann.close()

    gid, key = served.files("ben")  # the operator ([sfa_web] admins)
    operator = browser.new_context(
        ignore_https_errors=True,
        viewport={"width": 1280, "height": 720},
        client_certificates=[{"origin": origin, "certPath": gid, "keyPath": key}],
    )
    page = operator.new_page()
    problems = watch(page)
    assert page.goto(address).status == 200
    assert problems == []
    assert page.get_attribute("#whoami", "class") == "admin"
    boxes = bar_boxes(page)
    assert boxes[f"{other}@{node('node2')}"][3] == "other" and "mine" not in boxes[f"{mine}@{node('node1')}"][2]
    assert page.locator(".row.node .state").count() == 6  # every node's state, node5's "maintenance" among them
    page.click(f".bar[data-lease='{other}']")
    details_show(page, OTHER)
    page.screenshot(path=str(ARTIFACTS / "calendar-operator.png"), full_page=True)
    operator.close()


def ann_context(served: Served, browser: Any) -> Any:
    gid, key = served.files("ann")
    return browser.new_context(
        ignore_https_errors=True,
        viewport={"width": 1280, "height": 720},
        client_certificates=[{"origin": served.url.rstrip("/"), "certPath": gid, "keyPath": key}],
    )


def test_week_view_now_line_hover_and_pool_filter(served: Served, browser: Any) -> None:
    """The week from today: the red "now" line where the clock is (in pixels), hovering a bar shows its booking,
    the pool filter keeps that pool's nodes, the day view of tomorrow has no "now" line."""
    day, mine, _other = demo_inventory(served)
    today = day - timedelta(days=1)
    context = ann_context(served, browser)
    page = context.new_page()
    assert page.goto(f"{served.url}calendar/?view=week&start={today:%Y-%m-%d}").status == 200
    assert page.locator(".row.axis .tick").count() == 7  # one tick a day
    line = page.evaluate(
        """() => { const track = document.querySelector('#gantt .row.node .track').getBoundingClientRect();
                   const line = document.getElementById('now-line'); const box = line.getBoundingClientRect();
                   return [line.hidden, (box.left - track.left) / track.width * 100]; }"""
    )
    expected = gantt.place(utcnow(), utcnow(), today, today + timedelta(days=7))[0]
    assert line[0] is False and abs(line[1] - expected) < 0.5, (line, expected)  # 0.5 % of a week: 50 minutes
    page.hover(f".bar[data-lease='{mine}'] >> nth=0")
    details_show(page, DEMO)
    page.select_option("select[name=pool]", "radio")
    page.wait_for_url("**pool=radio**")
    assert page.locator(".row.node .name a").all_inner_texts() == ["usrp1"]
    page.screenshot(path=str(ARTIFACTS / "calendar-week-ann.png"), full_page=True)
    assert page.goto(f"{served.url}calendar/?view=day&start={day:%Y-%m-%d}").status == 200
    assert page.evaluate("() => document.getElementById('now-line').hidden") is True
    context.close()


def test_my_page_in_a_browser(served: Served, browser: Any) -> None:
    """ann follows the link from the calendar to her page, turns e-mail notifications on and off, and makes her
    private feed's address, which a client without a certificate reads; the same form sent by another site's page
    in her browser (which presents her certificate there too) is refused and changes nothing."""
    from sfa_omf.calendar.outbox import Outbox

    demo_inventory(served)
    outbox = Outbox(served.aggregate.database)
    context = ann_context(served, browser)
    page = context.new_page()
    assert page.goto(f"{served.url}calendar/").status == 200
    page.click("#my-page")
    page.wait_for_url("**/calendar/me")
    page.fill("tr[data-channel=email] input[name=address]", "ann@example.org")
    page.click("tr[data-channel=email] form.subscribe button")
    page.wait_for_selector("#done")
    assert "ann@example.org" in page.inner_text("#done")
    assert outbox.subscriptions(["urn:publicid:IDN+lab+user+ann"]) == {
        "urn:publicid:IDN+lab+user+ann": [("email", "ann@example.org")]
    }
    assert page.inner_text("tr[data-channel=email] .address") == "ann@example.org"
    page.click("#new-feed button")
    page.wait_for_selector("#feed-url")
    address = page.inner_text("#feed-url")
    page.screenshot(path=str(ARTIFACTS / "me-ann.png"), full_page=True)
    anonymous = browser.new_context(ignore_https_errors=True)
    feed = anonymous.request.get(address)
    assert feed.status == 200 and feed.headers["content-type"].startswith("text/calendar") and b"demo" in feed.body()
    anonymous.close()
    page.click("tr[data-channel=email] form.unsubscribe button")
    # The page with the new feed address has a #done notice too: the unsubscribe's own answer is waited for.
    done_says(page, "You will no longer be told by e-mail")
    assert outbox.subscriptions(["urn:publicid:IDN+lab+user+ann"]) == {}

    token = page.get_attribute("tr[data-channel=email] input[name=token]", "value")
    evil = context.new_page()  # another site's page, in ann's browser: it copies the form, even her token
    evil.set_content(
        f"""<form id="f" method="post" action="{served.url}calendar/me/notify">
            <input name="token" value="{token}"><input name="channel" value="webhook">
            <input name="action" value="subscribe"><input name="address" value="https://evil.example/hook">
            </form>"""
    )
    with evil.expect_navigation():
        evil.evaluate("() => document.getElementById('f').submit()")
    assert "another site" in evil.inner_text("body")
    assert outbox.subscriptions(["urn:publicid:IDN+lab+user+ann"]) == {}
    context.close()
