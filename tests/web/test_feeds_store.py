"""The calendar side of the feeds: the timeline's rows, lease revisions (SEQUENCE) and private feed tokens, on both
databases."""

from __future__ import annotations

import functools
import threading
from datetime import timedelta

import pytest

from sfa_omf.calendar.feeds import FeedTokens, LeaseRevisions
from sfa_omf.calendar.timeline import Timeline
from sfa_omf.errors import GeniError
from tests.calendar.conftest import node_urn
from tests.web.conftest import ALICE, DEMO, OTHER, Lab, at


def test_timeline_rows_are_the_calendars_leases(lab: Lab) -> None:
    timeline = Timeline(lab.database)
    rows = timeline.bookings(at(0), at(24))
    expected = {
        (lease.id, lease.slice_urn, sliver.node, lease.start, lease.end, lease.state)
        for lease in lab.bookings.leases(start=at(0), end=at(24))
        for sliver in lease.slivers
    }
    ours = {(r.lease_id, r.slice_urn, r.node, r.start, r.end, r.state) for r in rows if r.state != "external"}
    assert ours == expected and len(expected) == 3
    external = [r for r in rows if r.state == "external"]
    assert [(r.node, r.start, r.end, r.client_id) for r in external] == [(node_urn("u1"), at(1), at(3), "oar:12")]
    assert [r.node for r in timeline.bookings(at(5), at(24))] == [node_urn("n1")]  # only the other slice's lease


def test_timeline_keeps_cancelled_leases_on_request(lab: Lab) -> None:
    lab.bookings.cancel(lab.other_lease)
    timeline = Timeline(lab.database)
    assert lab.other_lease not in {r.lease_id for r in timeline.bookings()}
    cancelled = [r for r in timeline.bookings(include_inactive=True) if r.lease_id == lab.other_lease]
    assert [r.state for r in cancelled] == ["cancelled"]


def test_slices_and_users(lab: Lab) -> None:
    timeline = Timeline(lab.database)
    assert timeline.slices_of_user(ALICE) == {DEMO}
    assert timeline.slices_of_user("urn:publicid:IDN+testbed+user+bob") == set()
    assert timeline.users_of_slices({DEMO, OTHER}) == {DEMO: [ALICE]}


def test_revisions_rise_only_when_the_lease_changes(lab: Lab) -> None:
    revisions = LeaseRevisions(lab.database, clock=lambda: lab.now)
    first = revisions.observe({lab.demo_lease: "a", lab.other_lease: "x"})
    assert first[lab.demo_lease].sequence == 0 and first[lab.demo_lease].stamp == lab.now
    lab.clock[0] += timedelta(minutes=5)
    assert revisions.observe({lab.demo_lease: "a"}) == {lab.demo_lease: first[lab.demo_lease]}
    changed = revisions.observe({lab.demo_lease: "b", lab.other_lease: "x"})
    assert changed[lab.demo_lease].sequence == 1 and changed[lab.demo_lease].stamp == lab.now
    assert changed[lab.other_lease] == first[lab.other_lease]
    assert revisions.observe({}) == {}


def test_feed_tokens(lab: Lab) -> None:
    tokens = FeedTokens(lab.database)
    token = tokens.issue(ALICE)
    assert len(token) >= 43 and tokens.user_of(token) == ALICE
    newer = tokens.issue(ALICE)
    assert newer != token and tokens.user_of(token) is None and tokens.user_of(newer) == ALICE
    assert tokens.user_of("") is None and tokens.user_of("x" * 500) is None
    assert tokens.revoke(ALICE) and not tokens.revoke(ALICE) and tokens.user_of(newer) is None


def test_a_feed_token_is_for_a_user_urn(lab: Lab) -> None:
    with pytest.raises(GeniError, match="is not a user URN"):
        FeedTokens(lab.database).issue(DEMO)


def test_racing_feeds_record_one_revision(lab: Lab) -> None:
    """Eight feed requests at once see the same new leases: one revision each, sequence 0, no error."""
    from concurrent.futures import ThreadPoolExecutor

    fingerprints = {lab.demo_lease: "a", lab.other_lease: "x"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: LeaseRevisions(lab.database).observe(fingerprints), range(8)))
    assert all(answer == answers[0] for answer in answers)
    assert {revision.sequence for revision in answers[0].values()} == {0}


def test_racing_new_feed_addresses_leave_one_that_works(lab: Lab) -> None:
    """A user asking for a new private feed address twice at once (a double click, or the page and ``sfa-omf
    calendar feed-url``): on PostgreSQL the later insert met the earlier one's row (one token per user) and failed
    with a raw IntegrityError (an internal error). Every request gets an address; exactly one of them works."""
    from concurrent.futures import ThreadPoolExecutor

    tokens = FeedTokens(lab.database)

    def issue(start: threading.Barrier, _: int) -> str:
        start.wait()  # all eight at once
        return tokens.issue(ALICE)

    for _ in range(5):  # a few rounds: the race is the scheduler's
        with ThreadPoolExecutor(8) as pool:
            issued = list(pool.map(functools.partial(issue, threading.Barrier(8)), range(8)))
        assert len(set(issued)) == 8
        assert [token for token in issued if tokens.user_of(token) == ALICE] != []
        assert len([token for token in issued if tokens.user_of(token) is not None]) == 1


def test_racing_feeds_of_overlapping_leases_record_one_revision_each(lab: Lab) -> None:
    """Eight feeds at once, each of a different but overlapping set of new leases (a node's, a slice's, a user's
    feed): on PostgreSQL a second collision (another feed won another of the rows) escaped as an IntegrityError,
    an internal error instead of the feed. Every feed is answered, and each lease has one revision, sequence 0."""
    from concurrent.futures import ThreadPoolExecutor

    def observe(start: threading.Barrier, leases: list[str]) -> dict[str, int]:
        start.wait()  # all eight at once
        return {
            lease: revision.sequence
            for lease, revision in LeaseRevisions(lab.database).observe(dict.fromkeys(leases, "a")).items()
        }

    for round_ in range(10):  # a few rounds: the race is the scheduler's
        leases = [f"lease-{round_}-{index}" for index in range(12)]
        windows = [[leases[(first + step) % 12] for step in (0, 3, 5, 7)] for first in range(8)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(functools.partial(observe, threading.Barrier(8)), windows))
        assert answers == [dict.fromkeys(window, 0) for window in windows]
