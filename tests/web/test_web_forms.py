"""The viewer's own page, /calendar/me (sans-IO, real database, real GIDs): users opt in and out of notification
channels and make or close their private feed themselves; every POST that does not come from our own page for this
certificate's user is refused and changes nothing (web/forms.py)."""

from __future__ import annotations

import re
from html import unescape

import pytest

from sfa_omf.calendar.feeds import FeedTokens
from sfa_omf.calendar.outbox import Outbox
from sfa_omf.web.app import WebRequest, WebResponse
from sfa_omf.web.forms import FormOrigin, form_token
from tests.conftest import DemoPki
from tests.web.conftest import ALICE, DEMO, Lab

HOST = "am.testbed.example:12346"
OURS = FormOrigin(fetch_site="same-origin", origin=f"https://{HOST}", host=HOST)


def page(lab: Lab, pki: DemoPki, who: str | None = "alice") -> WebResponse:
    chain = pki.users[who].chain if who else ()
    return lab.web.handle(WebRequest(path="/me", caller_chain=chain))


def token_of(answer: WebResponse) -> str:
    found = re.search(r'name="token" value="([0-9a-f]+)"', answer.body.decode())
    assert found is not None
    return found.group(1)


def post(
    lab: Lab, pki: DemoPki, path: str, form: dict[str, str], who: str | None = "alice", came_from: FormOrigin = OURS
) -> WebResponse:
    chain = pki.users[who].chain if who else ()
    return lab.web.handle(WebRequest(path=path, caller_chain=chain, method="POST", form=form, came_from=came_from))


def text(answer: WebResponse) -> str:
    return unescape(answer.body.decode())


def test_a_user_opts_in_changes_and_opts_out(lab: Lab, pki: DemoPki) -> None:
    mine = page(lab, pki)
    assert mine.status == 200 and ALICE in text(mine) and DEMO in text(mine)  # her slice's feed is linked
    assert 'name="address" required value="alice@testbed.example.org"' in text(mine)  # her GID's e-mail, offered
    token = token_of(mine)
    subscribe = {"token": token, "channel": "email", "action": "subscribe", "address": "alice@example.org"}
    done = post(lab, pki, "/me/notify", subscribe)
    assert done.status == 200 and "You will be told by e-mail at alice@example.org." in text(done)
    hook = {**subscribe, "channel": "webhook", "address": "https://hooks.example.org/alice"}
    # Our pages' Referrer-Policy makes browsers send "Origin: null" from them; Sec-Fetch-Site decides.
    assert post(lab, pki, "/me/notify", hook, came_from=FormOrigin("same-origin", "null", HOST)).status == 200
    post(lab, pki, "/me/notify", {**subscribe, "address": "a.l@example.org"})  # a new address replaces the old
    assert sorted(Outbox(lab.database).subscriptions([ALICE])[ALICE]) == [
        ("email", "a.l@example.org"),
        ("webhook", "https://hooks.example.org/alice"),
    ]
    assert "a.l@example.org" in text(page(lab, pki))
    off = post(lab, pki, "/me/notify", {"token": token, "channel": "email", "action": "unsubscribe"})
    assert "You will no longer be told by e-mail." in text(off)
    again = post(lab, pki, "/me/notify", {"token": token, "channel": "email", "action": "unsubscribe"})
    assert "You were not subscribed to e-mail." in text(again)
    assert Outbox(lab.database).subscriptions([ALICE])[ALICE] == [("webhook", "https://hooks.example.org/alice")]


def test_a_user_makes_and_closes_their_private_feed(lab: Lab, pki: DemoPki) -> None:
    token = token_of(page(lab, pki))
    made = post(lab, pki, "/me/feed", {"token": token, "action": "new"})
    found = re.search(rf'id="feed-url"><a href="https://{HOST}/calendar/feed/([^"]+)\.ics"', made.body.decode())
    assert made.status == 200 and found is not None
    assert FeedTokens(lab.database).user_of(found.group(1)) == ALICE
    feed = lab.web.handle(WebRequest(path=f"/feed/{found.group(1)}.ics"))
    assert feed.status == 200 and lab.demo_lease.encode() in feed.body
    closed = post(lab, pki, "/me/feed", {"token": token, "action": "close"})
    assert "Your private feed is closed." in text(closed)
    assert FeedTokens(lab.database).user_of(found.group(1)) is None
    assert "You had no private feed." in text(post(lab, pki, "/me/feed", {"token": token, "action": "close"}))


def refusals(token: str, bobs: str) -> list[tuple[str, dict[str, str], str | None, FormOrigin, int, str]]:
    """(path, form, who, where from, status, words of the answer) of every class of bad POST."""
    good = {"token": token, "channel": "email", "action": "subscribe", "address": "alice@example.org"}
    hook = {**good, "channel": "webhook"}
    return [
        ("/me/notify", good, None, OURS, 403, "present their GENI user certificate"),
        ("/me/notify", good, "alice", FormOrigin("cross-site", "https://evil.example", HOST), 403, "another site"),
        ("/me/notify", good, "alice", FormOrigin("same-site", "", HOST), 403, "another site"),
        ("/me/notify", good, "alice", FormOrigin("", "https://evil.example", HOST), 403, "from https://evil.example"),
        ("/me/notify", good, "alice", FormOrigin("", "", HOST), 403, "neither"),
        ("/me/notify", good, "alice", FormOrigin("", "null", HOST), 403, "from null"),
        ("/me/notify", {**good, "token": ""}, "alice", OURS, 403, "token is missing or not yours"),
        ("/me/notify", {**good, "token": bobs}, "alice", OURS, 403, "token is missing or not yours"),
        ("/me/feed", {"token": bobs, "action": "new"}, "alice", OURS, 403, "token is missing or not yours"),
        ("/me/notify", {**good, "channel": "sms"}, "alice", OURS, 400, "channel='sms': one of email, webhook"),
        ("/me/notify", {**good, "address": "not mail"}, "alice", OURS, 400, "is not an e-mail address"),
        ("/me/notify", {**good, "channel": "webhook"}, "alice", OURS, 400, "is not a webhook URL"),
        ("/me/notify", {**good, "address": "alice@example.org,bob@example.org"}, "alice", OURS, 400, "not an e-mail"),
        ("/me/notify", {**good, "address": "alice@example.org>"}, "alice", OURS, 400, "not an e-mail address"),
        ("/me/notify", {**hook, "address": "http://hooks.example.org/a"}, "alice", OURS, 400, "must be an https://"),
        ("/me/notify", {**hook, "address": "https://127.0.0.1:8080/a"}, "alice", OURS, 400, "not 127.0.0.1"),
        ("/me/notify", {**hook, "address": "https://[::1]/a"}, "alice", OURS, 400, "not ::1"),
        ("/me/notify", {**hook, "address": "https://10.1.2.3/a"}, "alice", OURS, 400, "not 10.1.2.3"),
        ("/me/notify", {**hook, "address": "https://169.254.169.254/x"}, "alice", OURS, 400, "a public address"),
        ("/me/notify", {**hook, "address": "https://db.localhost/a"}, "alice", OURS, 400, "not db.localhost"),
        ("/me/notify", {**good, "action": "delete"}, "alice", OURS, 400, "subscribe or unsubscribe"),
        ("/me/feed", {"token": token, "action": "share"}, "alice", OURS, 400, "new or close"),
        ("/", good, "alice", OURS, 405, "is read with GET"),
        ("/me", good, "alice", OURS, 405, "is read with GET"),
    ]


@pytest.mark.parametrize("case", range(24))
def test_bad_posts_are_refused_and_change_nothing(lab: Lab, pki: DemoPki, case: int) -> None:
    token = token_of(page(lab, pki))
    bobs = token_of(page(lab, pki, "bob"))
    feed = FeedTokens(lab.database).issue(ALICE)
    path, form, who, came_from, status, words = refusals(token, bobs)[case]
    answer = post(lab, pki, path, form, who, came_from)
    assert answer.status == status and words in text(answer), text(answer)
    assert Outbox(lab.database).subscriptions([ALICE]) == {}
    assert FeedTokens(lab.database).user_of(feed) == ALICE, "her feed still works"


def test_the_page_needs_a_certificate(lab: Lab, pki: DemoPki) -> None:
    anonymous = page(lab, pki, None)
    assert anonymous.status == 403 and "present their GENI user certificate" in text(anonymous)
    assert form_token(b"k", ALICE) != form_token(b"k", "urn:publicid:IDN+testbed+user+bob")
    assert len(refusals("t", "b")) == 24, "each refusal has its case in the test above"
    gantt = lab.web.handle(WebRequest(path="/", caller_chain=pki.users["alice"].chain))
    assert 'id="my-page" href="/calendar/me"' in gantt.body.decode()
    assert b'id="my-page"' not in lab.web.handle(WebRequest(path="/")).body


def test_the_address_on_record_shows_as_on_and_turning_it_off_holds(lab: Lab, pki: DemoPki) -> None:
    """With [sfa_notify] email_by_default, a user who chose nothing gets e-mail at the address on record (here the
    registry's record): the page says so, and "turn off" keeps an opt-out."""
    from dataclasses import replace

    from sfa_omf.registry.records import Record, Records

    Records(lab.database).add(Record("testbed.alice", "user", ALICE, "", email="ann@lab.example.org"))
    assert "off" in text(page(lab, pki)).split('class="address">')[1][:5], "without the option: off"
    lab.web.settings = replace(lab.web.settings, email_by_default=True)
    mine = page(lab, pki)
    assert 'class="address">ann@lab.example.org (the address on record)</td>' in text(mine)
    off = post(lab, pki, "/me/notify", {"token": token_of(mine), "channel": "email", "action": "unsubscribe"})
    assert "You will no longer be told by e-mail." in text(off)
    assert 'class="address">off</td>' in text(off)
    assert Outbox(lab.database).email_defaults([ALICE]) == {}
