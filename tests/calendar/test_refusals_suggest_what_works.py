"""Refusals that advise what to do advise something that works (the session 32 client hunt, with omni and sfi):

- a request with no time for a node busy until after the slice credential expires was refused "the window for
  <node> ends after the slice credential expires; renew the slice at its authority first" (a policy refusal, as if
  the request had been too long), where the node's booking is the cause: the refusal is a conflict that names the
  node, until when it is booked, that this is after the expiry, and how far to renew the slice;
- a Renew over the maximum duration (or past the slice's expiry) advised the end that rule allows, which the next
  booking of the lease's node (or a fair-use limit) then refused: it advises the latest end every check allows, the
  end geni_extend_alap reaches, names what stops the lease there, and a Renew to that end succeeds.

Through the calendar, and the no-time request through AM API v3 over TLS; on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.booking import BookingConflict
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.intervals import align_down
from sfa_omf.calendar.policy import Policy, PolicyViolation
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.errors import GeniCode, Reason
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.am.conftest import listen_v2_and_v3
from tests.calendar.conftest import NOW, SLICE, SLICE_EXPIRES, Calendar, at, fresh_database, node_urn
from tests.conftest import DemoPki
from tests.tls_harness import Listener, proxy

OTHER = "urn:publicid:IDN+testbed+slice+other"
OWNER = "urn:publicid:IDN+testbed+user+alice"
GRAIN = timedelta(minutes=30)  # the default grain: Policy().default_grain_s
HOUR = 3600


def advised_end(message: str) -> datetime:
    """The end a refusal advises ("it may end at T at the latest")."""
    found = re.search(r"it may end at (\S+) at the latest", message)
    assert found is not None, message
    return datetime.fromisoformat(found.group(1).replace("Z", "+00:00"))


def stored_end(calendar: Calendar, lease_id: str) -> datetime:
    (lease,) = [found for found in calendar.bookings.leases() if found.id == lease_id]
    return lease.end


# -- a request with no time, for a node busy until after the slice credential expires ----------------------------
def test_a_no_time_request_for_a_node_busy_past_the_slice_expiry_is_a_conflict_saying_how_far_to_renew(
    calendar: Calendar,
) -> None:
    """The hunt's case: node3 booked by another slice until 09:30, the slice credential expiring at 09:01:13, a
    request with no time at 08:11: refused 7 "the window ends after the slice credential expires" (its earliest
    slot, 09:30..10:30, went to the booking uncut). A conflict now, naming the node, until when it is booked, that
    this is after the expiry, and that renewing the slice to 10:30 books it (it does)."""
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [BookingRequest(node_urn("n3"), NOW, at(1.5))])
    calendar.now = now = NOW + timedelta(minutes=11)
    expires = at(1) + timedelta(seconds=73)

    with pytest.raises(BookingConflict) as refused:
        calendar.availability.earliest_slot(HOUR, now, nodes=[node_urn("n3")], from_now=True, ends_by=expires)

    message = refused.value.message
    assert refused.value.reason == Reason.BOOKING_CONFLICT and refused.value.code == GeniCode.REFUSED, message
    assert (
        f"{node_urn('n3')} is booked until {format_time(at(1.5))}, after the slice credential expires "
        f"({format_time(expires)}): its earliest free slot is {format_time(at(1.5))}..{format_time(at(2.5))}; "
        f"renew the slice at its authority until {format_time(at(2.5))} or later, or pick another node"
    ) in message, message
    assert "renew the slice at its authority first" not in message, message
    # The same request on a free node is cut at the expiry, as the tutorial says.
    free = calendar.availability.earliest_slot(HOUR, now, nodes=[node_urn("n1")], from_now=True, ends_by=expires)
    assert (free.start, free.end) == (now, at(1))
    # With the slice renewed as advised, the busy node's earliest slot is booked whole.
    renewed = at(2.5)
    slot = calendar.availability.earliest_slot(HOUR, now, nodes=[node_urn("n3")], from_now=True, ends_by=renewed)
    assert (slot.start, slot.end) == (at(1.5), at(2.5))
    booked = calendar.bookings.book(SLICE, renewed, [BookingRequest(node_urn("n3"), slot.start, slot.end)])
    assert [(lease.start, lease.end) for lease in booked.leases] == [(at(1.5), at(2.5))]


def test_a_node_free_too_close_to_the_expiry_for_a_slot_and_a_request_with_a_duration_say_so_too(
    calendar: Calendar,
) -> None:
    """Booked until 09:00 with the credential expiring at 09:01:13: the slot after it does not fit (the refusal
    does not say 09:00 is after 09:01:13). A request with a duration and no start (not cut at the expiry) whose
    earliest slot starts after the expiry is refused the same way."""
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [BookingRequest(node_urn("n3"), NOW, at(1))])
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), NOW, at(2))])
    calendar.now = now = NOW + timedelta(minutes=11)
    expires = at(1) + timedelta(seconds=73)

    with pytest.raises(BookingConflict) as close:
        calendar.availability.earliest_slot(HOUR, now, nodes=[node_urn("n3")], from_now=True, ends_by=expires)
    with pytest.raises(BookingConflict) as with_duration:
        calendar.availability.earliest_slot(HOUR, now, nodes=[node_urn("n2")], ends_by=expires)

    assert (
        f"{node_urn('n3')} is booked until {format_time(at(1))}, too close to when the slice credential expires "
        f"({format_time(expires)}) for a slot of 30 minutes to fit"
    ) in close.value.message, close.value.message
    assert f"renew the slice at its authority until {format_time(at(2))} or later" in close.value.message
    assert with_duration.value.reason == Reason.BOOKING_CONFLICT, with_duration.value.message
    assert (
        f"{node_urn('n2')} is booked until {format_time(at(2))}, after the slice credential expires "
        f"({format_time(expires)})"
    ) in with_duration.value.message, with_duration.value.message


def test_nodes_free_alone_but_not_together_before_the_expiry_are_named_with_their_bookings(
    calendar: Calendar,
) -> None:
    """n1 is free for an hour from 08:30, n2 from 09:30, but not both until 10:00, the last boundary before the
    expiry (10:10): neither alone is the cause, so both are named with their bookings, and the slot they share."""
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), NOW, at(0.5))])
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1.5), at(2))])
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(0.5), at(1.5))])
    expires = at(2) + timedelta(minutes=10)

    with pytest.raises(BookingConflict) as refused:
        calendar.availability.earliest_slot(
            HOUR, NOW, nodes=[node_urn("n1"), node_urn("n2")], from_now=True, ends_by=expires
        )

    message = refused.value.message
    assert refused.value.reason == Reason.BOOKING_CONFLICT, message
    assert (
        f"{node_urn('n1')} is booked during {format_time(NOW)}..{format_time(at(0.5))}, "
        f"{format_time(at(1.5))}..{format_time(at(2))}; {node_urn('n2')} is booked during "
        f"{format_time(at(0.5))}..{format_time(at(1.5))}"
    ) in message, message
    assert (
        f"the earliest slot where these nodes are all free is {format_time(at(2))}..{format_time(at(3))}, too close "
        f"to when the slice credential expires ({format_time(expires)}) for a slot of 30 minutes to fit; renew the "
        f"slice at its authority until {format_time(at(3))} or later, or pick other nodes"
    ) in message, message


# -- a Renew's refusal that advises an end ---------------------------------------------------------------------
def test_a_renewal_over_the_maximum_advises_the_end_the_next_booking_allows_and_that_end_renews(
    calendar: Calendar,
) -> None:
    """The hunt's case: lease A on n2 until 09:30, another slice's lease B on n2 two days on, 12:00..13:00. A Renew
    to 14 days on was refused for the maximum duration advising 7 days on, which B's booking refused in turn."""
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), NOW, at(1.5))]).leases
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(52), at(53))])

    with pytest.raises(PolicyViolation) as refused:
        calendar.bookings.renew(lease.id, NOW + timedelta(days=14))

    message = refused.value.message
    assert refused.value.rule == "max_duration" and "longer than the maximum of 7 days" in message, message
    assert (
        f"it may end at {format_time(at(52))} at the latest, as {node_urn('n2')} is booked from "
        f"{format_time(at(52))} by another lease (ask for that end, or for geni_extend_alap"
    ) in message, message
    calendar.bookings.renew(lease.id, advised_end(message))
    assert stored_end(calendar, lease.id) == at(52)


def test_a_renewal_over_the_maximum_advises_the_end_a_fair_use_limit_allows(database: Database) -> None:
    """With max_node_hours_ahead_per_user at 48, the 7 days the maximum allows are refused by the fair-use limit:
    the refusal advises the end the limit allows (two days from now), naming it."""
    calendar = Calendar(database, Policy(max_node_hours_ahead_per_user=48))
    calendar.add_nodes("n1")
    booked = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), NOW, at(1))], OWNER)
    (lease,) = booked.leases

    with pytest.raises(PolicyViolation) as refused:
        calendar.bookings.renew(lease.id, NOW + timedelta(days=10))

    message = refused.value.message
    assert refused.value.rule == "max_duration", message
    assert f"it may end at {format_time(at(48))} at the latest, as {OWNER} may hold at most 48 node-hours" in message
    assert "max_node_hours_ahead_per_user" in message, message
    calendar.bookings.renew(lease.id, advised_end(message))
    assert stored_end(calendar, lease.id) == at(48)


def test_a_renewal_past_the_slice_expiry_advises_an_end_before_the_next_booking(calendar: Calendar) -> None:
    """A renewal rounded up past the slice's expiry (11:10) advised the last boundary before it (11:00), in n1's next
    booking (10:00..11:00): it advises 10:00, naming the booking; a lease that booking follows at once cannot be
    extended, and the refusal says so instead of advising an end."""
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), NOW, at(1.5))]).leases
    (adjacent,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n3"), NOW, at(1))]).leases
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(2), at(3))])
    calendar.bookings.book(OTHER, SLICE_EXPIRES, [BookingRequest(node_urn("n3"), at(1), at(2))])
    expires = at(3) + timedelta(minutes=10)

    with pytest.raises(PolicyViolation) as refused:
        calendar.bookings.renew(lease.id, at(3) + timedelta(minutes=5), rounding="up", slice_expires=expires)
    with pytest.raises(PolicyViolation) as kept:
        calendar.bookings.renew(adjacent.id, at(3) + timedelta(minutes=5), rounding="up", slice_expires=expires)

    message = refused.value.message
    assert refused.value.rule == "slice_expiry", message
    assert f"ask for {format_time(at(3))} at most" not in message, message
    assert (
        f"it may end at {format_time(at(2))} at the latest, as {node_urn('n1')} is booked from {format_time(at(2))}"
    ) in message, message
    assert (
        f"it cannot end later than it does ({format_time(at(1))}), as {node_urn('n3')} is booked from "
        f"{format_time(at(1))}"
    ) in kept.value.message, kept.value.message
    calendar.bookings.renew(lease.id, advised_end(message), slice_expires=expires)
    assert stored_end(calendar, lease.id) == at(2)


# -- the no-time request through AM API v3 over TLS -------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, listener: Listener, pki: DemoPki, tmp_path: Path
) -> Iterator[tuple[Aggregate, str]]:
    """An aggregate with nodes n1 and n3 serving AM API v3 over TLS: it and its URL."""
    roots_dir = tmp_path / "trusted_roots"
    shutil.copytree(pki.directory / "trusted_roots", roots_dir)
    database = fresh_database(request.param, tmp_path)
    try:
        aggregate = Aggregate(
            AggregateSettings(authority_hrn="testbed"),
            database,
            CredentialVerifier(load_trusted_roots(str(roots_dir)), VerdictCache()),
        )
        for name in ("n1", "n3"):
            aggregate.inventory.add_node(NodeSpec(node_urn(name), name))
        yield aggregate, listen_v2_and_v3(listener, aggregate, pki, 4)
    finally:
        database.dispose()


def test_omnis_allocate_with_no_time_of_a_node_busy_past_the_expiry_is_refused_as_a_conflict(
    served: tuple[Aggregate, str], pki: DemoPki
) -> None:
    """omni -V3 allocate with a plain RSpec (no time) and a slice credential that expires in an hour, of a node
    another slice holds for two hours: 7, the conflict's words; of a free node, the lease ends at the expiry."""
    aggregate, url = served
    alice = pki.users["alice"]
    credential = pki.authority.credential(alice.chain, pki.authority.issued_chain("testbed.demo"), timedelta(hours=1))
    expires = aggregate.authorize("Allocate", alice.chain, [credential], pki.slice_urn).expires
    start = from_s(align_down(to_s(utcnow()), int(GRAIN.total_seconds())))
    busy_until = start + timedelta(hours=2)
    aggregate.bookings.book(OTHER, busy_until, [BookingRequest(node_urn("n3"), start, busy_until)])
    client = proxy(url, str(alice.sfi_dir / "testbed.alice.user.gid"), str(alice.sfi_dir / "testbed.alice.pkey"))
    wrapped = [{"geni_type": "geni_sfa", "geni_version": "3", "geni_value": credential}]

    def allocate(node: str) -> dict[str, object]:
        rspec = (
            '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
            f'<node client_id="{node}" component_id="{node_urn(node)}" exclusive="true"/></rspec>'
        )
        answer: dict[str, object] = client.Allocate(pki.slice_urn, wrapped, rspec, {})
        return answer

    busy = allocate("n3")

    output = str(busy["output"])
    assert busy["code"] == {"geni_code": GeniCode.REFUSED, "am_type": "sfa-omf", "am_code": GeniCode.REFUSED}, busy
    assert (
        f"{node_urn('n3')} is booked until {format_time(busy_until)}, after the slice credential expires "
        f"({format_time(expires)})"
    ) in output, output
    assert f"until {format_time(busy_until + timedelta(hours=1))} or later, or pick another node" in output, output
    assert aggregate.bookings.leases(slice_urn=pki.slice_urn) == []
    free = allocate("n1")
    assert free["code"] == {"geni_code": 0, "am_type": "sfa-omf", "am_code": 0}, free
    (lease,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert lease.end == from_s(align_down(to_s(expires), int(GRAIN.total_seconds())))
