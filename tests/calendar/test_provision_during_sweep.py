"""A Provision asked while its allocation is in its time provisions it, however long the testbed takes: the sweep of
unprovisioned allocations (``expire_unprovisioned``, every minute) runs meanwhile and leaves it, because the
Provision held it in the database before the testbed's work (``Bookings.hold_for_provision``: a row of its own in
``provision_hold``; the allocation's expiry is never changed by it). One Provision of an allocation at a time: a
second one (a double click, a retry) is refused BUSY before any testbed work. A Provision ends its own hold, but
keeps it for a lease the testbed may still hold (a time-out, a job maybe made: OAR's reconciler adopts it). The hold
is bounded (``PROVISION_HOLD_S``): an allocation whose Provision died midway is swept after it. One the sweep did
expire is refused with SEARCHFAILED ("Allocate again"), as a lapsed allocation is."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.booking import PROVISION_HOLD_S
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.models import ProvisionHoldRow
from sfa_omf.calendar.records import LeaseRecord, NodeSpec
from sfa_omf.errors import GeniCode, GeniError, Reason
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import utcnow
from tests.am.conftest import aggregate_on
from tests.am.test_create_sliver_retries import timed_request
from tests.am.test_lapsed_allocations import book, stored
from tests.am.test_unit_of_work import FaultInjectingTestbed
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(
        request.param, tmp_path, pki, NodeSpec(node_urn("n1"), "n1"), NodeSpec(node_urn("n2"), "n2")
    ) as made:
        yield made


def set_clock(aggregate: Aggregate, now: datetime) -> None:
    """The aggregate's clock and its calendar's read ``now``."""
    aggregate.clock = lambda: now
    aggregate.bookings.clock = lambda: now


def in_three_hours() -> datetime:
    """A slot's start three hours ahead: its allocation's time (``allocation_ttl_s``) ends long before it."""
    return utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=3)


def hold_rows(aggregate: Aggregate) -> list[tuple[str, str, int]]:
    """Every row of ``provision_hold``: (lease id, token, held until)."""
    with aggregate.database.read() as session:
        rows = session.execute(select(ProvisionHoldRow.lease_id, ProvisionHoldRow.token, ProvisionHoldRow.held_until_s))
        return sorted((lease_id, token, held_until_s) for lease_id, token, held_until_s in rows)


def swept_ids(aggregate: Aggregate) -> list[str]:
    """What a run of the sweep expires now."""
    return [expired.id for expired in aggregate.bookings.expire_unprovisioned()]


def past_the_allocations_time(aggregate: Aggregate, booked_at: datetime) -> datetime:
    """A minute after the time to provision an allocation booked at ``booked_at`` is over."""
    return booked_at + timedelta(seconds=aggregate.policy.allocation_ttl_s + 60)


class SlowTestbedWithSweepStandIn(FaultInjectingTestbed):
    """Stands in for a testbed whose work for a Provision outlasts what was left of the allocation's time, with the
    server's minute sweep running meanwhile (from another thread or process): that moment cannot be caught on
    demand with a real testbed. Its ``provision`` moves the clock past the allocation's expiry and runs the sweep."""

    def __init__(self, aggregate: Aggregate) -> None:
        super().__init__()
        self.aggregate = aggregate
        self.swept: list[str] = []

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        super().provision(lease, owner, accounts)
        set_clock(self.aggregate, past_the_allocations_time(self.aggregate, utcnow()))
        self.swept = swept_ids(self.aggregate)


def test_a_provision_asked_in_time_is_not_undone_by_the_sweep(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    lease = book(aggregate, pki, "n1", in_three_hours())
    testbed = SlowTestbedWithSweepStandIn(aggregate)
    aggregate.backend = testbed

    aggregate.provision(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})

    assert testbed.swept == [], "the sweep left the allocation its Provision held"
    assert stored(aggregate, lease.id).state == "provisioned"
    assert testbed.provisioned == {lease.id}, "the testbed's work stays"
    assert hold_rows(aggregate) == [], "the Provision ended its hold"


def test_an_allocation_whose_provision_died_is_swept_after_the_hold(aggregate: Aggregate, pki: DemoPki) -> None:
    asked_at = utcnow()
    lease = book(aggregate, pki, "n1", in_three_hours())
    aggregate.bookings.hold_for_provision([lease.id], asked_at)  # ...and the process providing it dies here

    assert stored(aggregate, lease.id).slivers[0].expires == lease.slivers[0].expires, "a hold changes no expiry"
    set_clock(aggregate, past_the_allocations_time(aggregate, asked_at))
    assert swept_ids(aggregate) == []
    set_clock(aggregate, asked_at + timedelta(seconds=PROVISION_HOLD_S))
    assert swept_ids(aggregate) == [lease.id]


def test_a_failed_provision_ends_its_hold(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    lease = book(aggregate, pki, "n1", in_three_hours())
    testbed = FaultInjectingTestbed()
    testbed.fail_on["provision"] = 1
    aggregate.backend = testbed

    with pytest.raises(GeniError):
        aggregate.provision(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})

    assert hold_rows(aggregate) == []
    assert stored(aggregate, lease.id).slivers[0].expires == lease.slivers[0].expires
    set_clock(aggregate, lease.slivers[0].expires)
    assert swept_ids(aggregate) == [lease.id], "the sweep takes it at its own expiry"


def test_an_allocation_the_sweep_expired_is_refused_with_searchfailed(aggregate: Aggregate, pki: DemoPki) -> None:
    asked_at = utcnow()
    lease = book(aggregate, pki, "n1", in_three_hours())
    set_clock(aggregate, past_the_allocations_time(aggregate, asked_at))
    assert swept_ids(aggregate) == [lease.id]

    for call in (
        lambda: aggregate.bookings.mark_provisioned_all([lease.id], pki.slice_urn),
        lambda: aggregate.bookings.hold_for_provision([lease.id], asked_at),  # read allocated, swept before the hold
    ):
        with pytest.raises(GeniError) as refused:
            call()
        assert refused.value.reason == Reason.NOT_FOUND  # geni_code 12 SEARCHFAILED
        assert "not provisioned in time" in refused.value.message and "Allocate again" in refused.value.message
    assert hold_rows(aggregate) == []


@pytest.mark.parametrize("second_asked_earlier_by_s", [0, 2], ids=["asked_in_the_same_second", "asked_earlier"])
def test_a_second_provision_of_a_held_allocation_is_refused_busy_and_cannot_end_the_others_hold(
    aggregate: Aggregate, pki: DemoPki, second_asked_earlier_by_s: int
) -> None:
    """A double click or a retry while the first Provision is at work (asked in the same second, or asked earlier
    but reaching the calendar later): refused, writing nothing. Once the first failed, a retry holds the allocation,
    and the first's end (again, late) leaves the retry's hold: the sweep leaves the allocation the retry works on."""
    lease = book(aggregate, pki, "n1", in_three_hours())
    first_asked = utcnow()
    second_asked = first_asked - timedelta(seconds=second_asked_earlier_by_s)
    first = aggregate.bookings.hold_for_provision([lease.id], first_asked)
    held_by_the_first = hold_rows(aggregate)

    with pytest.raises(GeniError) as refused:
        aggregate.bookings.hold_for_provision([lease.id], second_asked)
    assert refused.value.code == GeniCode.BUSY  # 14
    assert f"lease {lease.id} is being provisioned by another call; ask Status" in refused.value.message
    assert hold_rows(aggregate) == held_by_the_first, "the refusal wrote nothing"

    aggregate.bookings.end_provision_hold(first)  # the first Provision failed
    retry = aggregate.bookings.hold_for_provision([lease.id], second_asked)
    aggregate.bookings.end_provision_hold(first)  # (its end once more: it is not the retry's)
    assert [token for _, token, _ in hold_rows(aggregate)] == [retry.token]
    set_clock(aggregate, past_the_allocations_time(aggregate, first_asked))
    assert swept_ids(aggregate) == [], "the retry is at work on it"


class DoubleClickDuringProvisionStandIn(FaultInjectingTestbed):
    """Stands in for a testbed while a second Provision of the same allocation (a double click) reaches the aggregate
    during the first one's testbed work, from another connection: that moment cannot be caught on demand with real
    parts. Its first ``provision`` makes the lease and then asks the aggregate for the second Provision of that
    lease's sliver ``double_clicked`` (what it answers is kept); the first Provision's next lease (``failing``)
    fails."""

    def __init__(self, aggregate: Aggregate, pki: DemoPki, double_clicked: str, failing: str) -> None:
        super().__init__()
        self.aggregate = aggregate
        self.pki = pki
        self.double_clicked = double_clicked
        self.failing = failing
        self.second_answer: GeniError | None = None

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        if lease.id == self.failing:
            self.calls["provision"] = self.calls.get("provision", 0) + 1
            raise GeniError(Reason.UNAVAILABLE, "injected failure of provision")
        super().provision(lease, owner, accounts)
        if self.calls["provision"] == 1:
            alice = self.pki.users["alice"]
            try:
                self.aggregate.provision(alice.chain, [self.double_clicked], [alice.slice_cred], {})
            except GeniError as refused:
                self.second_answer = refused


def test_a_provision_while_another_is_at_work_does_no_testbed_work_and_is_not_undone_by_its_failure(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    alice = pki.users["alice"]
    first = book(aggregate, pki, "n1", in_three_hours())
    second = book(aggregate, pki, "n2", in_three_hours() + timedelta(hours=1))
    testbed = DoubleClickDuringProvisionStandIn(aggregate, pki, first.slivers[0].urn, second.id)
    aggregate.backend = testbed

    with pytest.raises(GeniError) as failed:
        aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})

    assert "injected failure" in failed.value.message
    # The first Provision undid its own work, and nobody else's: the calendar and the testbed agree.
    assert {stored(aggregate, lease.id).state for lease in (first, second)} == {"allocated"}
    assert testbed.provisioned == set()
    assert testbed.second_answer is not None, "the second Provision was refused"
    assert testbed.second_answer.code == GeniCode.BUSY
    assert testbed.calls["provision"] == 2, "the testbed was asked once a lease (by the first Provision only)"
    assert hold_rows(aggregate) == []


class TimesOutStandIn(FaultInjectingTestbed):
    """Stands in for a testbed that does not answer a Provision (OAR's time-out, or an answer lost after the job may
    have been made), with ``late``: once the allocation's time is over. A real OAR cannot be made to time out on
    demand at that moment. Its first ``provision`` (with ``late``, moving the clock a minute past the allocation's
    expiry) raises ``error``; the next ones work."""

    def __init__(self, aggregate: Aggregate, error: GeniError, late: bool) -> None:
        super().__init__()
        self.aggregate = aggregate
        self.error = error
        self.late = late

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        if not self.calls:
            self.calls["provision"] = 1
            if self.late:
                set_clock(self.aggregate, past_the_allocations_time(self.aggregate, utcnow()))
            raise self.error
        super().provision(lease, owner, accounts)


def may_have_made_it(kind: str) -> GeniError:
    """A Provision's failure after which the testbed may hold the lease: OAR's time-out or its proxy's 502, each
    marked ``maybe_made`` as OAR's backend marks them when it keeps the job's row for its reconciler."""
    if kind == "timed_out":
        error = GeniError(Reason.TIMEDOUT, "OAR did not answer within 30 s")
    else:
        error = GeniError(Reason.UNAVAILABLE, "OAR's proxy answered 502 Bad Gateway")
    error.maybe_made = True
    return error


@pytest.mark.parametrize("failure", ["timed_out", "maybe_made"])
def test_a_provision_the_testbed_may_have_made_keeps_its_hold_for_the_reconciler(
    aggregate: Aggregate, pki: DemoPki, failure: str
) -> None:
    alice = pki.users["alice"]
    asked_at = utcnow()
    set_clock(aggregate, asked_at)
    lease = book(aggregate, pki, "n1", in_three_hours())
    aggregate.backend = TimesOutStandIn(aggregate, may_have_made_it(failure), late=True)

    with pytest.raises(GeniError):
        aggregate.provision(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})

    assert swept_ids(aggregate) == [], "left to OAR's reconciler, which adopts the job it may have made"
    assert stored(aggregate, lease.id).state == "allocated"
    set_clock(aggregate, asked_at + timedelta(seconds=PROVISION_HOLD_S))
    assert swept_ids(aggregate) == [lease.id], "the hold lapses"


@pytest.mark.parametrize("failure", ["timed_out", "maybe_made"])
def test_a_provision_retried_after_a_time_out_is_not_refused(aggregate: Aggregate, pki: DemoPki, failure: str) -> None:
    """The hold a timed-out Provision keeps names no Provision at work: a retry in the allocation's time is not
    refused BUSY, takes the hold over (the testbed takes over the job the first may have made) and provisions it."""
    alice = pki.users["alice"]
    set_clock(aggregate, utcnow())
    lease = book(aggregate, pki, "n1", in_three_hours())
    testbed = TimesOutStandIn(aggregate, may_have_made_it(failure), late=False)
    aggregate.backend = testbed
    with pytest.raises(GeniError):
        aggregate.provision(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})

    aggregate.provision(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})

    assert stored(aggregate, lease.id).state == "provisioned"
    assert testbed.provisioned == {lease.id}
    assert hold_rows(aggregate) == []


class RenewAndStatusDuringProvisionStandIn(FaultInjectingTestbed):
    """Stands in for a slow testbed during whose work for a Provision the experimenter asks Status and Renews the
    allocation (a minute before its time is over), and which then fails past the allocation's first expiry: the
    moment cannot be caught on demand with a real testbed. It keeps Status's and Renew's answers."""

    def __init__(self, aggregate: Aggregate, pki: DemoPki, sliver_urn: str, booked_at: datetime) -> None:
        super().__init__()
        self.aggregate = aggregate
        self.pki = pki
        self.sliver_urn = sliver_urn
        self.booked_at = booked_at
        self.status_expires = ""
        self.renewed_expires = ""

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        alice = self.pki.users["alice"]
        ttl = timedelta(seconds=self.aggregate.policy.allocation_ttl_s)
        set_clock(self.aggregate, self.booked_at + ttl - timedelta(seconds=60))
        status = self.aggregate.status(alice.chain, [self.sliver_urn], [alice.slice_cred], {})
        self.status_expires = status["geni_slivers"][0]["geni_expires"]
        (renewed,) = self.aggregate.renew(alice.chain, [self.sliver_urn], [alice.slice_cred], lease.end, {})
        self.renewed_expires = renewed["geni_expires"]
        set_clock(self.aggregate, past_the_allocations_time(self.aggregate, self.booked_at))
        raise GeniError(Reason.UNAVAILABLE, "the testbed does not answer")


def test_a_renew_during_a_provision_stands_when_the_provision_fails(aggregate: Aggregate, pki: DemoPki) -> None:
    """Status during the Provision shows the allocation's own expiry (not the hold's end); a Renew meanwhile is kept
    when the Provision fails, and the sweep takes the allocation only at the renewed expiry."""
    alice = pki.users["alice"]
    booked_at = utcnow()
    set_clock(aggregate, booked_at)
    lease = book(aggregate, pki, "n1", in_three_hours())
    sliver_urn = lease.slivers[0].urn
    before = aggregate.status(alice.chain, [sliver_urn], [alice.slice_cred], {})["geni_slivers"][0]["geni_expires"]
    testbed = RenewAndStatusDuringProvisionStandIn(aggregate, pki, sliver_urn, booked_at)
    aggregate.backend = testbed

    with pytest.raises(GeniError):
        aggregate.provision(alice.chain, [sliver_urn], [alice.slice_cred], {})

    assert testbed.status_expires == before, "Status shows the allocation's own expiry during a Provision"
    after = aggregate.status(alice.chain, [sliver_urn], [alice.slice_cred], {})["geni_slivers"][0]["geni_expires"]
    assert after == testbed.renewed_expires != before, "the Renew stands"
    assert swept_ids(aggregate) == []
    renewed = stored(aggregate, lease.id).slivers[0].expires
    set_clock(aggregate, renewed)
    assert swept_ids(aggregate) == [lease.id]


def test_a_time_out_after_which_the_testbed_holds_nothing_leaves_the_allocation_to_the_sweep(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """A time-out not marked ``maybe_made`` (OMF: no reconciler adopts anything; OAR: no job row kept) keeps no
    hold: the allocation, past its time, is the sweep's at once, not an hour later."""
    alice = pki.users["alice"]
    set_clock(aggregate, utcnow())
    lease = book(aggregate, pki, "n1", in_three_hours())
    aggregate.backend = TimesOutStandIn(aggregate, GeniError(Reason.TIMEDOUT, "no answer in time"), late=True)

    with pytest.raises(GeniError):
        aggregate.provision(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})

    assert hold_rows(aggregate) == []
    assert swept_ids(aggregate) == [lease.id]


def test_the_reconciler_ends_the_hold_left_for_it_and_no_provisions(aggregate: Aggregate, pki: DemoPki) -> None:
    """``end_testbed_hold`` (OAR's reconciler, once it adopted the job or found OAR never got it) ends the hold a
    failed Provision left to the testbed, and never the hold of a Provision at work."""
    alice = pki.users["alice"]
    asked_at = utcnow()
    set_clock(aggregate, asked_at)
    left = book(aggregate, pki, "n1", in_three_hours())
    at_work = book(aggregate, pki, "n2", in_three_hours())
    aggregate.backend = TimesOutStandIn(aggregate, may_have_made_it("timed_out"), late=False)
    with pytest.raises(GeniError):
        aggregate.provision(alice.chain, [left.slivers[0].urn], [alice.slice_cred], {})
    working = aggregate.bookings.hold_for_provision([at_work.id], asked_at)

    round_started = asked_at + timedelta(seconds=1)
    aggregate.bookings.end_testbed_hold(left.id, round_started)
    aggregate.bookings.end_testbed_hold(at_work.id, round_started)

    assert [(lease_id, token) for lease_id, token, _ in hold_rows(aggregate)] == [(at_work.id, working.token)]
    set_clock(aggregate, past_the_allocations_time(aggregate, asked_at))
    assert swept_ids(aggregate) == [left.id], "the allocation left to the testbed is the sweep's again"


def test_lapsed_holds_are_removed_by_the_sweep(aggregate: Aggregate, pki: DemoPki) -> None:
    """A hold whose Provision died, on a lease since deleted (nothing else removes it), is gone after the sweep
    that runs once it lapsed; a live hold stays."""
    alice = pki.users["alice"]
    asked_at = utcnow()
    set_clock(aggregate, asked_at)
    deleted = book(aggregate, pki, "n1", in_three_hours())
    aggregate.bookings.hold_for_provision([deleted.id], asked_at)  # ...and the Provision dies
    aggregate.delete(alice.chain, [deleted.slivers[0].urn], [alice.slice_cred], {})
    later = asked_at + timedelta(seconds=PROVISION_HOLD_S)
    live = book(aggregate, pki, "n2", in_three_hours())
    live_hold = aggregate.bookings.hold_for_provision([live.id], asked_at + timedelta(seconds=1))

    set_clock(aggregate, later)
    swept_ids(aggregate)

    assert [token for _, token, _ in hold_rows(aggregate)] == [live_hold.token]


def test_a_sweep_that_ends_nothing_leaves_the_calendars_generation(aggregate: Aggregate, pki: DemoPki) -> None:
    """The sweep removes lapsed holds every minute: that is no change of what the calendar answers, so the
    generation (every cached answer's key) stays, with or without a lapsed hold to remove."""
    alice = pki.users["alice"]
    asked_at = utcnow()
    set_clock(aggregate, asked_at)
    lease = book(aggregate, pki, "n1", in_three_hours())
    aggregate.bookings.hold_for_provision([lease.id], asked_at)  # ...and the Provision dies
    aggregate.delete(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})  # no lease is due any more
    set_clock(aggregate, asked_at + timedelta(seconds=PROVISION_HOLD_S))  # the hold lapsed
    with aggregate.database.read() as session:
        before = read_generation(session)

    assert swept_ids(aggregate) == []
    swept_ids(aggregate)

    with aggregate.database.read() as session:
        assert read_generation(session) == before
    assert hold_rows(aggregate) == []


def test_a_provision_cut_short_is_refused_saying_that_delete_frees_the_allocation(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """A Provision whose process died after taking its hold: a retry is told, besides waiting, to Delete and
    Allocate again; once the allocation's own time is over, Provision and Allocate say it is held until the hold's
    end (not "released within a minute") and that a Delete frees it now, which it does."""
    alice = pki.users["alice"]
    asked_at = utcnow()
    set_clock(aggregate, asked_at)
    lease = book(aggregate, pki, "n1", in_three_hours())
    aggregate.bookings.hold_for_provision([lease.id], asked_at)  # ...and the process providing it dies here
    urns = [lease.slivers[0].urn]

    with pytest.raises(GeniError) as busy:
        aggregate.provision(alice.chain, urns, [alice.slice_cred], {})
    assert busy.value.code == GeniCode.BUSY
    assert "Delete the allocation (DeleteSliver on AM API v2 deletes the whole slice's slivers) and Allocate" in (
        busy.value.message
    )

    set_clock(aggregate, past_the_allocations_time(aggregate, asked_at))
    with pytest.raises(GeniError) as lapsed:
        aggregate.provision(alice.chain, urns, [alice.slice_cred], {})
    assert lapsed.value.reason == Reason.NOT_FOUND
    assert "within a minute" not in lapsed.value.message
    assert "held by a Provision until" in lapsed.value.message and "Delete the allocation" in lapsed.value.message
    with pytest.raises(GeniError) as clash:
        aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], timed_request(("n1",), lease.start), {})
    assert "in a minute" not in clash.value.message
    assert f"n1 by lease {lease.id}, held until" in clash.value.message and "Delete them" in clash.value.message

    aggregate.delete(alice.chain, urns, [alice.slice_cred], {})
    aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], timed_request(("n1",), lease.start), {})


def test_the_reconciler_ends_no_hold_left_after_its_round_began(aggregate: Aggregate, pki: DemoPki) -> None:
    """A reconciler's round acts on what it read at its start: the hold a newer Provision left meanwhile (asked
    after the round began, failed ``maybe_made``) is the next round's, not ended on the round's stale read."""
    alice = pki.users["alice"]
    asked_at = utcnow()
    set_clock(aggregate, asked_at)
    lease = book(aggregate, pki, "n1", in_three_hours())
    aggregate.backend = TimesOutStandIn(aggregate, may_have_made_it("maybe_made"), late=False)
    with pytest.raises(GeniError):
        aggregate.provision(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})
    left = hold_rows(aggregate)

    aggregate.bookings.end_testbed_hold(lease.id, asked_at - timedelta(minutes=1))

    assert hold_rows(aggregate) == left != [], "a hold left after the round began is kept"
    aggregate.bookings.end_testbed_hold(lease.id, asked_at + timedelta(minutes=1))
    assert hold_rows(aggregate) == []


def test_lapsed_allocations_a_hold_keeps_are_not_said_to_be_released_within_a_minute(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """Renew and the calendar's own Provision check say what keeps a lapsed allocation: a Provision cut short (held
    until T), or a failed Provision's job the testbed may have made (kept for the testbed until T at the latest)."""
    alice = pki.users["alice"]
    asked_at = utcnow()
    set_clock(aggregate, asked_at)
    cut_short = book(aggregate, pki, "n1", in_three_hours())
    aggregate.bookings.hold_for_provision([cut_short.id], asked_at)  # ...and the process providing it dies here
    left = book(aggregate, pki, "n2", in_three_hours())
    aggregate.backend = TimesOutStandIn(aggregate, may_have_made_it("maybe_made"), late=False)
    with pytest.raises(GeniError):
        aggregate.provision(alice.chain, [left.slivers[0].urn], [alice.slice_cred], {})
    set_clock(aggregate, past_the_allocations_time(aggregate, asked_at))
    expected = {cut_short.id: "is held by a Provision until", left.id: "is kept for the testbed, which may have made"}

    for lease in (cut_short, left):
        with pytest.raises(GeniError) as renewed:
            aggregate.renew(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], lease.end, {})
        with pytest.raises(GeniError) as provisioned:
            aggregate.bookings.mark_provisioned(lease.id)
        for refused in (renewed.value, provisioned.value):
            assert refused.reason == Reason.NOT_FOUND
            assert "within a minute" not in refused.message and expected[lease.id] in refused.message
    with pytest.raises(GeniError) as provision:
        aggregate.provision(alice.chain, [left.slivers[0].urn], [alice.slice_cred], {})
    assert expected[left.id] in provision.value.message


def test_allocate_says_which_lapsed_allocations_a_provision_holds_and_which_are_kept_for_the_testbed(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """Allocate's note on a clash with the slice's own lapsed allocations words each hold as what it is: a Provision
    cut short holds one; the other is kept for the testbed after a Provision that failed (not "held by a
    Provision", which would have the experimenter wait for a call that is over)."""
    alice = pki.users["alice"]
    asked_at = utcnow()
    set_clock(aggregate, asked_at)
    window = in_three_hours()
    cut_short = book(aggregate, pki, "n1", window)
    aggregate.bookings.hold_for_provision([cut_short.id], asked_at)  # ...and the process providing it dies here
    left = book(aggregate, pki, "n2", window)
    aggregate.backend = TimesOutStandIn(aggregate, may_have_made_it("maybe_made"), late=False)
    with pytest.raises(GeniError):
        aggregate.provision(alice.chain, [left.slivers[0].urn], [alice.slice_cred], {})
    set_clock(aggregate, past_the_allocations_time(aggregate, asked_at))

    with pytest.raises(GeniError) as clash:
        aggregate.allocate(
            alice.chain, pki.slice_urn, [alice.slice_cred], timed_request(("n1", "n2"), cut_short.start), {}
        )

    note = clash.value.message
    held, _, kept = note.partition("kept for the testbed")
    assert f"n1 by lease {cut_short.id}, held until" in held and "held by a Provision" in held
    assert f"n2 by lease {left.id}, kept until" in kept and "at the latest" in kept and "Delete them" in kept
    assert f"n2 by lease {left.id}" not in held, "the testbed's hold is not worded as a Provision's"
