"""The AM API lifecycle hunt's defects (session 25), each as the experimenter meets it:

- Shutdown reads its options: a tool speaking for a user (geni_speaking_for) shuts the user's slice down (v3, v2).
- A Renew that lands while a Provision waits on the testbed: the testbed's reservation follows the renewed end.
- A provisioned lease whose end has passed, before the sweep retires it: Renew, Provision and
  PerformOperationalAction refuse it (12, "ended at"); Status shows it as the states table has an ended slot.
- PerformOperationalAction of nothing is 12; a sliver URN the slice never held here, next to its own, is refused
  by Provision, Renew, Delete and PerformOperationalAction (a sliver deleted already is not).
- A Renew naming the slice never shortens a lease and leaves one that starts after the end asked for as it is;
  geni_extend_alap goes to the end asked for (rounded up as a plain Renew) unless a limit or the next booking of
  one of the lease's nodes comes first; a Renew's conflict and its max_duration refusal say how far it can go.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.outbox import NotifyEvents
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import GidChain
from sfa_omf.trust.speaksfor import issue_speaks_for
from tests.am.conftest import Clock, aggregate_on
from tests.am.test_unit_of_work import FaultInjectingTestbed
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki

OTHER_SLICE = "urn:publicid:IDN+testbed+slice+other"


class RenewRecordingTestbed(FaultInjectingTestbed):
    """The stand-in testbed of test_unit_of_work, also noting the end each reservation was made with or moved to."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: dict[str, datetime] = {}

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        super().provision(lease, owner, accounts)
        self.ends[lease.id] = lease.end

    def renew(self, lease: LeaseRecord, new_end: datetime) -> None:
        super().renew(lease, new_end)
        self.ends[lease.id] = new_end


class SlowTestbedStandIn(RenewRecordingTestbed):
    """Stands in for a slow testbed (OAR or OMF taking seconds to make a reservation): while its provision() works,
    ``meanwhile`` runs once, as another XML-RPC call (the experimenter's Renew) would on another server thread."""

    def __init__(self, meanwhile: Callable[[], object]) -> None:
        super().__init__()
        self.meanwhile: Callable[[], object] | None = meanwhile

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        super().provision(lease, owner, accounts)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, *(NodeSpec(node_urn(n), n) for n in ("n1", "n2", "n3"))) as made:
        made.clock = made.bookings.clock = Clock()
        made.backend = RenewRecordingTestbed()
        yield made


def slot(minutes: int) -> datetime:
    """``minutes`` after the start of the current half-hour slot (0: that start, in the past)."""
    now = utcnow()
    return now.replace(minute=now.minute // 30 * 30, second=0, microsecond=0) + timedelta(minutes=minutes)


def book(
    aggregate: Aggregate, pki: DemoPki, node: str, start: datetime, end: datetime, slice_urn: str = ""
) -> LeaseRecord:
    alice = pki.users["alice"]
    expires = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn).expires
    (lease,) = aggregate.bookings.book(
        slice_urn or pki.slice_urn, expires, [BookingRequest(node_urn(node), start, end)]
    ).leases
    return lease


def stored(aggregate: Aggregate, lease_id: str) -> LeaseRecord:
    (lease,) = [found for found in aggregate.bookings.leases(active_only=False) if found.id == lease_id]
    return lease


def v3(aggregate: Aggregate, chain: GidChain, method: str, *params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = ApiV3(aggregate)(CallContext(chain, "127.0.0.1", "/"), method, params)
    return answer


def v2(aggregate: Aggregate, chain: GidChain, method: str, *params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = ApiV2(aggregate)(CallContext(chain, "127.0.0.1", "/am2"), method, params)
    return answer


def code(answer: dict[str, Any]) -> int:
    return int(answer["code"]["geni_code"])


def urns(lease: LeaseRecord) -> list[str]:
    return [sliver.urn for sliver in lease.slivers]


# -- Shutdown with geni_speaking_for
@pytest.mark.parametrize("api", ["v3", "v2"])
def test_a_tool_speaking_for_a_user_shuts_the_slice_down(aggregate: Aggregate, pki: DemoPki, api: str) -> None:
    """bob's tool, with alice's slice credential and her speaks-for statement, shuts her slice down, as it may call
    every other method for her (Shutdown dropped its options: refused 22, "issued to alice, not to bob")."""
    alice, bob = pki.users["alice"], pki.users["bob"]
    lease = book(aggregate, pki, "n1", slot(60), slot(120))
    statement = issue_speaks_for(alice.key, alice.chain, bob.chain[0], utcnow() + timedelta(hours=1))
    options = {"geni_speaking_for": alice.chain[0].urn}
    call = v3 if api == "v3" else v2

    answer = call(aggregate, bob.chain, "Shutdown", pki.slice_urn, [alice.slice_cred, statement], options)

    assert code(answer) == 0 and answer["value"] is True, answer.get("output")
    assert stored(aggregate, lease.id).state == "cancelled"
    assert aggregate.slices.get(pki.slice_urn).shut_down


# -- a Renew while the testbed provisions
def test_a_renew_while_the_testbed_provisions_moves_the_testbeds_reservation(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """The Renew finds the lease allocated (the Provision has not recorded it yet), so it tells the testbed nothing;
    the Provision, which made the reservation with the old end, moves it to the renewed end once it recorded the
    lease (it used to stay at the old end while the calendar and Status said the new one)."""
    alice = pki.users["alice"]
    lease = book(aggregate, pki, "n1", slot(60), slot(120))
    renewed_to = slot(180)
    answers: list[dict[str, Any]] = []
    testbed = SlowTestbedStandIn(
        lambda: answers.append(
            v3(aggregate, alice.chain, "Renew", urns(lease), [alice.slice_cred], format_time(renewed_to), {})
        )
    )
    aggregate.backend = testbed

    provisioned = v3(aggregate, alice.chain, "Provision", urns(lease), [alice.slice_cred], {})

    assert code(provisioned) == 0 and [code(answer) for answer in answers] == [0]
    assert stored(aggregate, lease.id).end == renewed_to
    assert testbed.ends[lease.id] == renewed_to, "the testbed's reservation ends with the lease"
    (sliver,) = provisioned["value"]["geni_slivers"]
    assert (sliver["geni_allocation_status"], sliver["geni_end_time"]) == ("geni_provisioned", format_time(renewed_to))


def test_a_renew_during_provision_the_testbed_cannot_follow_is_undone(aggregate: Aggregate, pki: DemoPki) -> None:
    """The testbed refuses to move the reservation: the lease keeps the end the testbed holds (a Renew is done whole
    or not at all), the Provision is done, and the slice's users are told the renewal was refused."""
    alice = pki.users["alice"]
    lease = book(aggregate, pki, "n1", slot(60), slot(120))
    testbed = SlowTestbedStandIn(
        lambda: v3(aggregate, alice.chain, "Renew", urns(lease), [alice.slice_cred], format_time(slot(180)), {})
    )
    testbed.fail_on["renew"] = 1
    aggregate.backend = testbed

    provisioned = v3(aggregate, alice.chain, "Provision", urns(lease), [alice.slice_cred], {})

    assert code(provisioned) == 0, provisioned.get("output")
    after = stored(aggregate, lease.id)
    assert (after.state, after.end) == ("provisioned", lease.end)
    assert testbed.ends[lease.id] == lease.end
    events = NotifyEvents(aggregate.database).since(utcnow() - timedelta(hours=1))
    (told,) = [event for event in events if event.event == "renewal_refused"]
    assert f"lease {lease.id} was renewed to" in str(told.payload["reason"])


# -- a lease whose slot is over, before the sweep
def test_a_lease_whose_slot_is_over_is_not_revived(aggregate: Aggregate, pki: DemoPki) -> None:
    """Past its end and before retire_ended: Status shows it ended ((provisioned, slot_ended) -> unallocated), and
    Renew, Provision and PerformOperationalAction refuse it with 12 (Renew used to extend it, answering 0)."""
    alice = pki.users["alice"]
    credentials = [alice.slice_cred]
    lease = book(aggregate, pki, "n1", slot(0), slot(60))
    assert code(v3(aggregate, alice.chain, "Provision", urns(lease), credentials, {})) == 0
    clock = aggregate.clock
    assert isinstance(clock, Clock)
    clock.ahead = lease.end - utcnow() + timedelta(minutes=5)

    status = v3(aggregate, alice.chain, "Status", urns(lease), credentials, {})
    renewed = v3(
        aggregate, alice.chain, "Renew", urns(lease), credentials, format_time(lease.end + timedelta(hours=1)), {}
    )
    provisioned = v3(aggregate, alice.chain, "Provision", urns(lease), credentials, {})
    started = v3(aggregate, alice.chain, "PerformOperationalAction", urns(lease), credentials, "geni_start", {})
    slice_renewed = v3(aggregate, alice.chain, "Renew", [pki.slice_urn], credentials, "+1h", {})

    (sliver,) = status["value"]["geni_slivers"]
    assert (sliver["geni_allocation_status"], sliver["geni_operational_status"]) == (
        "geni_unallocated",
        "geni_pending_allocation",
    )
    assert "ended at" in sliver["geni_error"]
    for answer in (renewed, provisioned, started, slice_renewed):
        assert code(answer) == 12, answer
        assert f"lease {lease.id} ended at {format_time(lease.end)}; Allocate again" in answer["output"]
    assert stored(aggregate, lease.id).end == lease.end
    assert aggregate.retire_ended() == 1


def test_a_renew_of_the_slice_leaves_out_a_lease_whose_slot_is_over(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    ended = book(aggregate, pki, "n1", slot(0), slot(60))
    later = book(aggregate, pki, "n2", slot(120), slot(180))
    assert code(v3(aggregate, alice.chain, "Provision", [pki.slice_urn], [alice.slice_cred], {})) == 0
    clock = aggregate.clock
    assert isinstance(clock, Clock)
    clock.ahead = ended.end - utcnow() + timedelta(minutes=5)

    renewed = v3(aggregate, alice.chain, "Renew", [pki.slice_urn], [alice.slice_cred], format_time(slot(240)), {})

    assert code(renewed) == 0, renewed.get("output")
    assert [answer["geni_sliver_urn"] for answer in renewed["value"]] == urns(later)
    assert (stored(aggregate, ended.id).end, stored(aggregate, later.id).end) == (ended.end, slot(240))


# -- PerformOperationalAction of nothing, slivers never held
def test_an_operational_action_on_no_lease_is_refused(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    lease = book(aggregate, pki, "n1", slot(60), slot(120))
    assert code(v3(aggregate, alice.chain, "Delete", urns(lease), [alice.slice_cred], {})) == 0

    by_slice = v3(
        aggregate, alice.chain, "PerformOperationalAction", [pki.slice_urn], [alice.slice_cred], "geni_start", {}
    )
    by_sliver = v3(
        aggregate, alice.chain, "PerformOperationalAction", urns(lease), [alice.slice_cred], "geni_start", {}
    )

    assert (code(by_slice), code(by_sliver)) == (12, 12)
    assert "has no slivers here" in by_slice["output"]


@pytest.mark.parametrize("method", ["Provision", "Renew", "Delete", "PerformOperationalAction"])
def test_a_sliver_the_slice_never_held_is_refused_next_to_its_own(
    aggregate: Aggregate, pki: DemoPki, method: str
) -> None:
    """A typo or another aggregate's sliver next to a sliver of the slice: refused naming it, nothing changed (it
    used to act on the known one and answer 0)."""
    alice = pki.users["alice"]
    lease = book(aggregate, pki, "n1", slot(60), slot(120))
    bogus = f"urn:publicid:IDN+testbed+sliver+{uuid.uuid4().hex}"
    arguments: dict[str, tuple[Any, ...]] = {
        "Provision": ({},),
        "Renew": (format_time(slot(180)), {}),
        "Delete": ({},),
        "PerformOperationalAction": ("geni_start", {}),
    }

    answer = v3(aggregate, alice.chain, method, [*urns(lease), bogus], [alice.slice_cred], *arguments[method])

    assert code(answer) == 12, answer
    assert bogus in answer["output"] and "nothing was changed" in answer["output"]
    after = stored(aggregate, lease.id)
    assert (after.state, after.end) == ("allocated", lease.end)


def test_a_sliver_deleted_already_is_tolerated_next_to_a_live_one(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    gone = book(aggregate, pki, "n1", slot(60), slot(120))
    live = book(aggregate, pki, "n2", slot(60), slot(120))
    assert code(v3(aggregate, alice.chain, "Delete", urns(gone), [alice.slice_cred], {})) == 0

    renewed = v3(
        aggregate, alice.chain, "Renew", [*urns(gone), *urns(live)], [alice.slice_cred], format_time(slot(180)), {}
    )
    deleted = v3(aggregate, alice.chain, "Delete", [*urns(gone), *urns(live)], [alice.slice_cred], {})

    assert (code(renewed), code(deleted)) == (0, 0), (renewed.get("output"), deleted.get("output"))
    assert stored(aggregate, live.id).state == "cancelled"


# -- Renew naming the slice; geni_extend_alap
@pytest.mark.parametrize("api", ["v3", "v2"])
def test_a_renew_of_the_slice_leaves_a_later_lease_as_it_is(aggregate: Aggregate, pki: DemoPki, api: str) -> None:
    """A running lease and one later today: renewing the slice to 30 minutes past the first's end extends the first
    and leaves the second (it was refused, "cancel it (Delete)"); to an hour into the second, the second is not
    shortened (it was cut to that hour). AM API v2's RenewSliver names the slice."""
    alice = pki.users["alice"]
    running = book(aggregate, pki, "n1", slot(0), slot(60))
    later = book(aggregate, pki, "n2", slot(180), slot(300))
    assert code(v3(aggregate, alice.chain, "Provision", [pki.slice_urn], [alice.slice_cred], {})) == 0

    def renew(to: datetime) -> dict[str, Any]:
        if api == "v2":
            return v2(aggregate, alice.chain, "RenewSliver", pki.slice_urn, [alice.slice_cred], format_time(to), {})
        return v3(aggregate, alice.chain, "Renew", [pki.slice_urn], [alice.slice_cred], format_time(to), {})

    first = renew(slot(90))
    assert code(first) == 0, first.get("output")
    assert (stored(aggregate, running.id).end, stored(aggregate, later.id).end) == (slot(90), later.end)
    second = renew(slot(240))
    assert code(second) == 0, second.get("output")
    assert (stored(aggregate, running.id).end, stored(aggregate, later.id).end) == (slot(240), later.end)
    if api == "v3":
        notes = {answer["geni_sliver_urn"]: answer["sfa_omf_renewal"] for answer in second["value"]}
        assert notes[urns(later)[0]].startswith(f"unchanged: lease {later.id} keeps its end {format_time(later.end)}")
        assert "after the end asked for" in notes[urns(later)[0]]


def test_a_renew_of_the_slice_that_can_extend_nothing_is_refused(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    later = book(aggregate, pki, "n2", slot(180), slot(300))

    answer = v3(aggregate, alice.chain, "Renew", [pki.slice_urn], [alice.slice_cred], format_time(slot(120)), {})

    assert code(answer) == 1
    assert f"lease {later.id} starts at {format_time(later.start)}, after the end asked for" in answer["output"]
    assert stored(aggregate, later.id).end == later.end


def test_alap_on_the_slice_never_shortens_a_later_lease(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    running = book(aggregate, pki, "n1", slot(0), slot(60))
    later = book(aggregate, pki, "n2", slot(180), slot(300))

    answer = v3(
        aggregate,
        alice.chain,
        "Renew",
        [pki.slice_urn],
        [alice.slice_cred],
        format_time(slot(240)),
        {"geni_extend_alap": True},
    )

    assert code(answer) == 0, answer.get("output")
    assert (stored(aggregate, running.id).end, stored(aggregate, later.id).end) == (slot(240), later.end)


def test_alap_rounds_up_as_a_plain_renew_when_nothing_limits_it(aggregate: Aggregate, pki: DemoPki) -> None:
    """20 minutes into the slot after the end: alap ends at that slot's end, as a plain Renew does (it kept the
    lease's end, "leases end on slot boundaries")."""
    alice = pki.users["alice"]
    lease = book(aggregate, pki, "n1", slot(60), slot(120))
    asked = lease.end + timedelta(minutes=20)

    (answer,) = aggregate.renew(
        alice.chain, urns(lease), [alice.slice_cred], format_time(asked), {"geni_extend_alap": True}
    )

    assert stored(aggregate, lease.id).end == lease.end + timedelta(minutes=30)
    assert answer["sfa_omf_renewal"].startswith(f"lease {lease.id} extended"), answer["sfa_omf_renewal"]


def test_alap_stops_at_the_next_booking_of_the_leases_nodes(aggregate: Aggregate, pki: DemoPki) -> None:
    """Another slice books n1 two hours after the lease ends: alap extends to that booking's start (it was refused 7,
    "nothing was booked"); a plain Renew past it is refused naming the lease and how far it can go."""
    alice = pki.users["alice"]
    lease = book(aggregate, pki, "n1", slot(60), slot(120))
    book(aggregate, pki, "n1", slot(240), slot(300), slice_urn=OTHER_SLICE)

    plain = v3(aggregate, alice.chain, "Renew", urns(lease), [alice.slice_cred], "+2d", {})
    alap = v3(aggregate, alice.chain, "Renew", urns(lease), [alice.slice_cred], "+2d", {"geni_extend_alap": True})

    assert code(plain) == 7
    assert f"lease {lease.id} cannot be extended to" in plain["output"]
    assert f"it can be extended to {format_time(slot(240))} at the latest" in plain["output"]
    assert "nothing was booked" not in plain["output"]
    assert code(alap) == 0, alap.get("output")
    assert stored(aggregate, lease.id).end == slot(240)


def test_alap_keeps_a_lease_whose_next_booking_follows_at_once(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    lease = book(aggregate, pki, "n1", slot(60), slot(120))
    book(aggregate, pki, "n1", slot(120), slot(180), slice_urn=OTHER_SLICE)

    (answer,) = aggregate.renew(alice.chain, urns(lease), [alice.slice_cred], "+2d", {"geni_extend_alap": True})

    assert stored(aggregate, lease.id).end == lease.end
    note = answer["sfa_omf_renewal"]
    assert note.startswith(f"unchanged: lease {lease.id} keeps its end"), note
    assert f"{node_urn('n1')} is booked from {format_time(slot(120))}" in note, note


def test_a_renew_over_the_maximum_duration_says_the_latest_end(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    lease = book(aggregate, pki, "n1", slot(60), slot(120))
    latest = lease.start + timedelta(seconds=aggregate.policy.max_duration_s)

    answer = v3(aggregate, alice.chain, "Renew", urns(lease), [alice.slice_cred], "+8d", {})

    assert code(answer) == 7
    assert "longer than the maximum of 7 days" in answer["output"]
    assert f"it may end at {format_time(latest)} at the latest" in answer["output"]
    assert "geni_extend_alap" in answer["output"]
