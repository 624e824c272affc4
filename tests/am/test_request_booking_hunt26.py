"""Booking what a request reads, as a hunt found it wrong (session 26): SFA leases with no start of one duration
merged into one slot (a free node waited for a busy one); an advertisement sent back with one ol:lease booked every
other node it listed from now; an ol:lease with no start and a duration off the nodes' grain rounded up silently
(refused with a start); the grain refusal's example ("on the hour or half past") wrong for nodes of an hour."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.errors import Reason
from sfa_omf.times import format_time, utcnow
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki
from tests.rspec.test_request_reading_hunt import _allocate, _refusal, _slots

GENI = "http://www.geni.net/resources/rspec/3"
OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
V3 = {"geni_rspec_version": {"type": "GENI", "version": "3"}}
OTHER_SLICE = "urn:publicid:IDN+testbed+slice+other"


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    """Nodes n1, n2, n3 in the aggregate's grain (30 minutes) and "big" in a grain of its own (one hour)."""
    nodes = [NodeSpec(node_urn(name), name) for name in ("n1", "n2", "n3")]
    with aggregate_on(request.param, tmp_path, pki, *nodes, NodeSpec(node_urn("big"), "big", grain_s=3600)) as made:
        yield made


def _hour(hours: int) -> datetime:
    """A whole hour ``hours`` from now."""
    return utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours)


def _request(body: str) -> str:
    return f'<rspec type="request" xmlns="{GENI}" xmlns:ol="{OL}">{body}</rspec>'


def _book_for_other_slice(aggregate: Aggregate, pki: DemoPki, node: str, start: datetime, end: datetime) -> None:
    alice = pki.users["alice"]
    expires = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn, {}).expires
    aggregate.bookings.book(OTHER_SLICE, expires, [BookingRequest(node_urn(node), start, end)])


def _ol_lease_on(node: str, lease: str) -> str:
    return f'{lease}<node client_id="{node}" component_id="{node_urn(node)}"><ol:lease_ref id_ref="l"/></node>'


def test_sfa_leases_without_a_start_are_placed_each_on_its_own(aggregate: Aggregate, pki: DemoPki) -> None:
    """Two <lease duration="2"> without start_time, one on n1 (free) and one on n2 (busy for 5 hours): merged into one
    slot, n1 was booked 5 hours later with n2. Each is its own slot; one <lease> listing both is still one."""
    _book_for_other_slice(aggregate, pki, "n2", _hour(0), _hour(5))
    body = "".join(f'<lease duration="2"><node component_id="{node_urn(name)}"/></lease>' for name in ("n1", "n2"))
    _allocate(aggregate, pki, _request(body))
    ((n1_start, n1_end, _),) = [slot for slot in _slots(aggregate, pki.slice_urn) if slot[2] == (node_urn("n1"),)]
    assert n1_start <= _hour(1) and n1_end - n1_start == timedelta(hours=1)  # the first slot boundary from now
    assert (_hour(5), _hour(6), (node_urn("n2"),)) in _slots(aggregate, pki.slice_urn)


def test_one_sfa_lease_without_a_start_listing_two_nodes_is_one_slot(aggregate: Aggregate, pki: DemoPki) -> None:
    _book_for_other_slice(aggregate, pki, "n2", _hour(0), _hour(5))
    nodes = "".join(f'<node component_id="{node_urn(name)}"/>' for name in ("n1", "n2"))
    _allocate(aggregate, pki, _request(f'<lease duration="2">{nodes}</lease>'))
    assert _slots(aggregate, pki.slice_urn) == [(_hour(5), _hour(6), (node_urn("n1"), node_urn("n2")))]


def test_an_advertisement_sent_back_with_an_ol_lease_books_only_that_lease(aggregate: Aggregate, pki: DemoPki) -> None:
    """An advertisement made a request, one <ol:lease> and an <ol:lease_ref> in n1 added: every other node it
    listed was booked from now too."""
    bob = pki.users["bob"]
    advertised = aggregate.list_resources(bob.chain, [bob.user_cred], V3)
    request = advertised.split("?>", 1)[1].replace('type="advertisement"', 'type="request"')
    start = _hour(3)
    lease = f'<ol:lease xmlns:ol="{OL}" client_id="mine" valid_from="{format_time(start)}" duration="3600"/>'
    n1 = re.escape(node_urn("n1"))
    request = re.sub(
        f'(<node [^>]*component_id="{n1}"[^>]*>)', rf'\1<ol:lease_ref xmlns:ol="{OL}" id_ref="mine"/>', request
    )
    assert request.count("<ol:lease_ref") == 1 and request.count("<available") == 4
    _allocate(aggregate, pki, request.replace("</rspec>", f"{lease}</rspec>"))
    assert _slots(aggregate, pki.slice_urn) == [(start, start + timedelta(hours=1), (node_urn("n1"),))]


def test_an_ol_lease_without_a_start_lasts_whole_slots(aggregate: Aggregate, pki: DemoPki) -> None:
    """duration="3000" on a node of 30-minute slots was booked as an hour; with valid_from it is refused (rule
    grain). Refused either way, naming the grain and the whole durations on either side."""
    refused = _refusal(aggregate, pki, _request(_ol_lease_on("n1", '<ol:lease client_id="l" duration="3000"/>')))
    assert refused.reason == Reason.BAD_ARGS
    assert refused.message == (
        f"{node_urn('n1')}: booked in slots of 30 minutes, and a duration of 3000 s is not a whole number of them; "
        "ask for 1800 s (30 minutes) or 3600 s (60 minutes)"
    )
    short = _refusal(aggregate, pki, _request(_ol_lease_on("big", '<ol:lease client_id="l" duration="600"/>')))
    assert short.message.endswith("ask for 3600 s (60 minutes)")
    with_start = f'<ol:lease client_id="l" valid_from="{format_time(_hour(3))}" duration="3000"/>'
    assert "policy rule grain" in _refusal(aggregate, pki, _request(_ol_lease_on("n1", with_start))).message
    assert _slots(aggregate, pki.slice_urn) == []
    _allocate(aggregate, pki, _request(_ol_lease_on("n1", '<ol:lease client_id="l" duration="3600"/>')))
    ((start, end, _),) = _slots(aggregate, pki.slice_urn)
    assert end - start == timedelta(hours=1)


def test_the_grain_refusal_names_the_times_on_either_side_in_the_nodes_grain(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """It said "(e.g. on the hour or half past)" whatever the grain: half past is refused on a node of an hour."""
    half_past = _hour(3) + timedelta(minutes=30)
    lease = f'<ol:lease client_id="l" valid_from="{format_time(half_past)}" duration="3600"/>'
    message = _refusal(aggregate, pki, _request(_ol_lease_on("big", lease))).message
    assert "half past" not in message
    assert (
        f"start {format_time(half_past)} is not: {format_time(_hour(3))} or {format_time(_hour(4))} is; "
        f"end {format_time(half_past + timedelta(hours=1))} is not: {format_time(_hour(4))} or "
        f"{format_time(_hour(5))} is"
    ) in message
