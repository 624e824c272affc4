"""Request reading, as a hunt found it wrong (session 20): an SFA lease's duration counted in the aggregate's grain
on a node with its own; SFA leases of other slices (sent back from an advertisement) read as the caller's; a
manifest sent back as a request refused; a node URN whose authority came in another case taken as ours by the reader
but refused by the booking; start_time="0" (IoT-LAB's "as soon as possible") read as 1970."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rspec.dialects import sfa
from rspec.document import load
from rspec.parse_request import parse_request
from rspec.problems import RSpecError
from rspec.reading import Reader
from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import format_time, utcnow
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki
from tests.rspec.conftest import POLICY
from tests.sshkeys import ssh_key

GENI = "http://www.geni.net/resources/rspec/3"
OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
V3 = {"geni_rspec_version": {"type": "GENI", "version": "3"}}
OTHER_SLICE = "urn:publicid:IDN+testbed+slice+other"
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    """Nodes n1, n2 in the aggregate's grain (30 minutes) and "big" in a grain of its own (one hour)."""
    nodes = [NodeSpec(node_urn(name), name) for name in ("n1", "n2")] + [NodeSpec(node_urn("big"), "big", grain_s=3600)]
    with aggregate_on(request.param, tmp_path, pki, *nodes) as made:
        yield made


def _hour(hours: int) -> datetime:
    """A whole hour ``hours`` from now."""
    return utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours)


def _epoch(when: datetime) -> int:
    return int(when.timestamp())


def _request(body: str) -> str:
    return f'<rspec type="request" xmlns="{GENI}" xmlns:ol="{OL}">{body}</rspec>'


def _ol_lease(label: str, start: datetime) -> str:
    """An ol:lease of one hour from ``start``."""
    end = start + timedelta(hours=1)
    return f'<ol:lease client_id="{label}" valid_from="{format_time(start)}" valid_until="{format_time(end)}"/>'


def _sfa_lease(component_id: str, start: datetime | None, slice_id: str | None = None) -> str:
    """An SFA lease of two grains on one node."""
    slice_attribute = f' slice_id="{slice_id}"' if slice_id else ""
    start_attribute = f' start_time="{_epoch(start)}"' if start else ""
    return f'<lease{slice_attribute}{start_attribute} duration="2"><node component_id="{component_id}"/></lease>'


def _allocate(aggregate: Aggregate, pki: DemoPki, rspec: str) -> dict[str, Any]:
    alice = pki.users["alice"]
    return aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, {})


def _refusal(aggregate: Aggregate, pki: DemoPki, rspec: str) -> GeniError:
    with pytest.raises(GeniError) as refused:
        _allocate(aggregate, pki, rspec)
    return refused.value


def _slots(aggregate: Aggregate, slice_urn: str) -> list[tuple[datetime, datetime, tuple[str, ...]]]:
    return sorted((lease.start, lease.end, lease.nodes) for lease in aggregate.bookings.leases(slice_urn=slice_urn))


def _book_for_other_slice(aggregate: Aggregate, pki: DemoPki, node: str, start: datetime) -> LeaseRecord:
    alice = pki.users["alice"]
    expires = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn, {}).expires
    wanted = [BookingRequest(node_urn(node), start, start + timedelta(hours=1))]
    (lease,) = aggregate.bookings.book(OTHER_SLICE, expires, wanted).leases
    return lease


def _view_sent_back(aggregate: Aggregate, pki: DemoPki, list_leases: str, added: str) -> str:
    """sfi's workflow: the advertisement (``list_leases`` view) another user sees, made a request, ``added`` in it."""
    bob = pki.users["bob"]
    advertised = aggregate.list_resources(bob.chain, [bob.user_cred], {**V3, "list_leases": list_leases})
    request = advertised.split("?>", 1)[1].replace('type="advertisement"', 'type="request"')
    return request.replace("</rspec>", f"{added}</rspec>")


# -- 1. an SFA lease's duration counts grains of its nodes' own grain -------------------------------------------------


def test_an_sfa_duration_counts_grains_of_the_nodes_own_grain(aggregate: Aggregate, pki: DemoPki) -> None:
    """ "big" is advertised with <granularity grain="3600"/>: duration="2" on it was booked as 2 x 30 min = 1 h."""
    start = _hour(3)
    _allocate(
        aggregate,
        pki,
        _request(f'<lease start_time="{_epoch(start)}" duration="2"><node component_id="{node_urn("big")}"/></lease>'),
    )
    assert _slots(aggregate, pki.slice_urn) == [(start, start + timedelta(hours=2), (node_urn("big"),))]


def test_an_sfa_lease_over_nodes_of_different_grains_is_refused_naming_them(aggregate: Aggregate, pki: DemoPki) -> None:
    start = _hour(3)
    body = (
        f'<lease start_time="{_epoch(start)}" duration="2"><node component_id="{node_urn("big")}"/>'
        f'<node component_id="{node_urn("n1")}"/></lease>'
    )
    refused = _refusal(aggregate, pki, _request(body))
    assert refused.reason == Reason.BAD_ARGS
    assert f"{node_urn('big')} (3600 s), {node_urn('n1')} (1800 s)" in refused.message
    assert _slots(aggregate, pki.slice_urn) == []


# -- 2. SFA leases of other slices are left out -----------------------------------------------------------------------


def test_other_slices_leases_sent_back_from_an_advertisement_are_left_out(aggregate: Aggregate, pki: DemoPki) -> None:
    """sfi's workflow: `sfi resources -l leases`, add one's own lease, allocate. The other slice's lease on n1 (same
    slot) was merged into the caller's and refused (n1 is booked), or booked for the caller when n1 was free."""
    start = _hour(3)
    _book_for_other_slice(aggregate, pki, "n1", start)
    request = _view_sent_back(aggregate, pki, "leases", _sfa_lease(node_urn("n2"), start, pki.slice_urn))
    assert f'slice_id="{OTHER_SLICE}"' in request  # the view sfi users edit holds the other slice's lease
    _allocate(aggregate, pki, request)
    assert _slots(aggregate, pki.slice_urn) == [(start, start + timedelta(hours=1), (node_urn("n2"),))]


def test_an_sfa_lease_of_the_calls_slice_or_of_none_is_the_callers(aggregate: Aggregate, pki: DemoPki) -> None:
    """The call's slice in another case of prefix and type is the same URN; a lease without slice_id is the caller's;
    another slice's lease on a free node is not booked for the caller."""
    start = _hour(3)
    shouted = pki.slice_urn.replace("urn:publicid:IDN", "URN:PUBLICID:IDN").replace("+slice+", "+SLICE+")
    body = (
        _sfa_lease(node_urn("n1"), start, shouted)
        + _sfa_lease(node_urn("n1"), start + timedelta(hours=2))
        + _sfa_lease(node_urn("n2"), start, OTHER_SLICE)
    )
    _allocate(aggregate, pki, _request(body))
    assert _slots(aggregate, pki.slice_urn) == [
        (start, start + timedelta(hours=1), (node_urn("n1"),)),
        (start + timedelta(hours=2), start + timedelta(hours=3), (node_urn("n1"),)),
    ]


def test_an_sfa_lease_naming_the_calls_slice_by_its_hrn_is_the_callers(aggregate: Aggregate, pki: DemoPki) -> None:
    """sfi may write the slice's HRN: the caller's lease, booked for the window it asks."""
    start = _hour(3)
    body = f'<node client_id="n1" component_id="{node_urn("n1")}"/>' + _sfa_lease(node_urn("n1"), start, "testbed.demo")
    _allocate(aggregate, pki, _request(body))
    assert _slots(aggregate, pki.slice_urn) == [(start, start + timedelta(hours=1), (node_urn("n1"),))]


@pytest.mark.parametrize("spelling", ["urn:publicid:IDN+testbed+slice+Demo", "urn:publicid:IDN+TestBed+slice+demo"])
def test_a_slice_id_differing_in_case_is_another_slice_and_its_node_is_not_booked_from_now(
    aggregate: Aggregate, pki: DemoPki, spelling: str
) -> None:
    """URNs compare with authority and name exactly (docs/trust.md): ...+slice+Demo is another slice. Its lease is
    left out, the node it names is not booked from now instead (it was, answering 0), and the refusal says why."""
    start = _hour(3)
    body = f'<node client_id="n1" component_id="{node_urn("n1")}"/>' + _sfa_lease(node_urn("n1"), start, spelling)
    refused = _refusal(aggregate, pki, _request(body))
    assert refused.reason == Reason.BAD_ARGS
    assert f"names another slice (slice_id '{spelling}')" in refused.message
    assert _slots(aggregate, pki.slice_urn) == []


def test_a_plain_node_beside_an_sfa_lease_is_booked_from_now_as_ever(aggregate: Aggregate, pki: DemoPki) -> None:
    """A <node> without lease and without an advertisement's <available> is asked for from now, SFA leases or not."""
    start = _hour(3)
    body = f'<node client_id="n2" component_id="{node_urn("n2")}"/>' + _sfa_lease(node_urn("n1"), start, pki.slice_urn)
    _allocate(aggregate, pki, _request(body))
    booked = _slots(aggregate, pki.slice_urn)
    assert (start, start + timedelta(hours=1), (node_urn("n1"),)) in booked
    assert [nodes for _, _, nodes in booked] == [(node_urn("n2"),), (node_urn("n1"),)], "n2 from now, then n1"


def test_a_node_of_ours_beside_an_sfa_lease_of_another_aggregates_node_is_booked_from_now(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """omni sends a slice's whole request to each aggregate: an SFA lease naming only another aggregate's node books
    nothing here, and our plain node is booked from now (it was left out: nothing booked, answering 0)."""
    elsewhere, its_manager = "urn:publicid:IDN+elsewhere+node+x", "urn:publicid:IDN+elsewhere+authority+am"
    body = (
        f'<node client_id="n1" component_id="{node_urn("n1")}"/>'
        f'<node client_id="x" component_id="{elsewhere}" component_manager_id="{its_manager}"/>'
        + _sfa_lease(elsewhere, _hour(3), pki.slice_urn)
    )
    _allocate(aggregate, pki, _request(body))
    assert [nodes for _, _, nodes in _slots(aggregate, pki.slice_urn)] == [(node_urn("n1"),)]


def test_a_node_only_another_slices_lease_names_is_not_booked_from_now(aggregate: Aggregate, pki: DemoPki) -> None:
    """sfi's -l all view sent back: every advertised <node>, other slices' leases, and the caller's lease on n2. The
    nodes only the other slice's lease names are its booking shown, not nodes asked for from now."""
    start = _hour(3)
    body = (
        f'<node client_id="n1" component_id="{node_urn("n1")}"/><node client_id="n2" component_id="{node_urn("n2")}"/>'
        + _sfa_lease(node_urn("n1"), start + timedelta(hours=2), OTHER_SLICE)
        + _sfa_lease(node_urn("n2"), start, pki.slice_urn)
    )
    _allocate(aggregate, pki, _request(body))
    assert _slots(aggregate, pki.slice_urn) == [(start, start + timedelta(hours=1), (node_urn("n2"),))]


def test_a_request_whose_sfa_leases_all_name_other_slices_is_refused_saying_so(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    start = _hour(3)
    body = f'<node client_id="n1" component_id="{node_urn("n1")}"/>' + _sfa_lease(node_urn("n1"), start, OTHER_SLICE)
    refused = _refusal(aggregate, pki, _request(body))
    assert refused.reason == Reason.BAD_ARGS
    assert f"names another slice (slice_id '{OTHER_SLICE}')" in refused.message
    assert f'write slice_id="{pki.slice_urn}"' in refused.message
    assert _slots(aggregate, pki.slice_urn) == []


def test_sfis_all_view_sent_back_with_ones_own_lease_books_only_that_lease(aggregate: Aggregate, pki: DemoPki) -> None:
    """`sfi resources -l all`, one's own lease added, allocate: the view lists every node (n1 with the other slice's
    booking as an ol:lease and an SFA lease, n2 and big free). Only the caller's lease is booked: not the other
    slice's booking (it was read as the caller's and refused 7), nor the free nodes from now."""
    start = _hour(3)
    _book_for_other_slice(aggregate, pki, "n1", start + timedelta(hours=3))
    _allocate(aggregate, pki, _view_sent_back(aggregate, pki, "all", _sfa_lease(node_urn("n2"), start, pki.slice_urn)))
    assert _slots(aggregate, pki.slice_urn) == [(start, start + timedelta(hours=1), (node_urn("n2"),))]


def test_a_request_of_other_slices_ol_leases_only_is_refused_saying_so(aggregate: Aggregate, pki: DemoPki) -> None:
    """An advertisement's ol:lease of another slice's booking, sent back alone: nothing of the caller's to book."""
    other = _book_for_other_slice(aggregate, pki, "n1", _hour(3))
    body = (
        f'<ol:lease id="{other.id}" valid_from="{format_time(other.start)}" valid_until="{format_time(other.end)}"/>'
        f'<node client_id="n1" component_id="{node_urn("n1")}"><ol:lease_ref id_ref="{other.id}"/></node>'
    )
    refused = _refusal(aggregate, pki, _request(body))
    assert refused.reason == Reason.BAD_ARGS
    assert f"another slice's current booking ({other.id})" in refused.message
    assert _slots(aggregate, pki.slice_urn) == []


def test_a_node_added_under_another_slices_lease_id_is_booked_as_a_new_lease(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """An advertisement's ol:lease of another slice's booking on n1, with a new node n2 put under it: n1 is that
    slice's booking shown (left out), n2 the caller's, booked in that window as a new lease."""
    other = _book_for_other_slice(aggregate, pki, "n1", _hour(3))
    body = (
        f'<ol:lease id="{other.id}" valid_from="{format_time(other.start)}" valid_until="{format_time(other.end)}"/>'
        f'<node client_id="n1" component_id="{node_urn("n1")}"><ol:lease_ref id_ref="{other.id}"/></node>'
        f'<node client_id="n2" component_id="{node_urn("n2")}"><ol:lease_ref id_ref="{other.id}"/></node>'
    )
    _allocate(aggregate, pki, _request(body))
    assert _slots(aggregate, pki.slice_urn) == [(other.start, other.end, (node_urn("n2"),))]
    assert [lease.nodes for lease in aggregate.bookings.leases(slice_urn=OTHER_SLICE)] == [(node_urn("n1"),)]


def test_another_slices_booking_sent_back_after_it_ended_is_not_booked_for_the_caller(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """sfi's `-l all` view, sent back after the other slice's lease on n1 ended: its ol:lease (id, window) is still
    that slice's booking, not a label under which n1 is booked for the caller."""
    start = _hour(3)
    other = _book_for_other_slice(aggregate, pki, "n1", start)
    aggregate.bookings.cancel(other.id)  # ...after the view was fetched
    body = (
        f'<ol:lease id="{other.id}" valid_from="{format_time(other.start)}" valid_until="{format_time(other.end)}"/>'
        f'<node client_id="n1" component_id="{node_urn("n1")}"><ol:lease_ref id_ref="{other.id}"/></node>'
        + _sfa_lease(node_urn("n2"), start + timedelta(hours=2), pki.slice_urn)
    )
    _allocate(aggregate, pki, _request(body))
    assert _slots(aggregate, pki.slice_urn) == [
        (start + timedelta(hours=2), start + timedelta(hours=3), (node_urn("n2"),))
    ]


def test_with_no_calls_slice_leases_of_one_slot_are_grouped_by_slice() -> None:
    body = "".join(
        f'<lease slice_id="urn:publicid:IDN+testbed+slice+{name}" start_time="1796119200" duration="2">'
        f'<node component_id="{node_urn(name)}"/></lease>'
        for name in ("a", "b")
    )
    document = load(_request(body))
    reader = Reader(document)
    leases = sfa.read_leases(reader, document.root, POLICY.grain)
    assert reader.problems == []
    assert [lease.component_ids for lease in leases] == [(node_urn("a"),), (node_urn("b"),)]


# -- 3. a manifest sent back is a request ---------------------------------------------------------------------------


def _as_request(manifest: str) -> str:
    return manifest.split("?>", 1)[1].replace('type="manifest"', 'type="request"')


def test_a_described_manifest_sent_back_with_a_new_lease_books_only_the_new_one(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """docs/experimenters.md §4: "send the manifest back with them". The manifest's <host>, sliver_id on <node> and
    username on <login> were refused (code 1) whatever was added."""
    alice = pki.users["alice"]
    first = _hour(2)
    body = (
        _ol_lease("a", first)
        + f'<node client_id="x" component_id="{node_urn("n1")}" exclusive="true"><ol:lease_ref id_ref="a"/></node>'
    )
    _allocate(aggregate, pki, _request(body))
    aggregate.provision(
        alice.chain,
        [pki.slice_urn],
        [alice.slice_cred],
        {**V3, "geni_users": [{"urn": alice.chain[0].urn, "keys": [ssh_key("alice")]}]},
    )
    manifest = aggregate.describe(alice.chain, [pki.slice_urn], [alice.slice_cred], V3)["geni_rspec"]
    assert "<host " in manifest and " sliver_id=" in manifest and " username=" in manifest
    later = _hour(5)
    added = (
        _ol_lease("b", later)
        + f'<node client_id="y" component_id="{node_urn("n2")}"><ol:lease_ref id_ref="b"/></node></rspec>'
    )
    _allocate(aggregate, pki, _as_request(manifest).replace("</rspec>", added))
    assert _slots(aggregate, pki.slice_urn) == [
        (first, first + timedelta(hours=1), (node_urn("n1"),)),
        (later, later + timedelta(hours=1), (node_urn("n2"),)),
    ]


def test_a_manifest_with_lease_refs_sliver_ids_and_sfa_leases_sent_back_books_nothing_twice(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """The manifest's shape to come: one <node> per client_id with an ol:lease_ref per lease, sliver_id on ol:lease,
    and SFA's <lease> elements for the same leases. Sent back as it is, it names only what the slice holds: nothing
    is booked again (the SFA leases are those ol leases, not second bookings of their slots)."""
    first, later = _hour(2), _hour(5)
    body = (
        _ol_lease("a", first)
        + _ol_lease("b", later)
        + f'<node client_id="x" component_id="{node_urn("n1")}" exclusive="true">'
        '<ol:lease_ref id_ref="a"/><ol:lease_ref id_ref="b"/></node>'
    )
    _allocate(aggregate, pki, _request(body))
    held = sorted(aggregate.bookings.leases(slice_urn=pki.slice_urn), key=lambda lease: lease.start)
    ol_leases = "".join(
        f'<ol:lease id="{lease.id}" client_id="{label}" sliver_id="{lease.slivers[0].urn}" '
        f'valid_from="{format_time(lease.start)}" valid_until="{format_time(lease.end)}"/>'
        for lease, label in zip(held, "ab", strict=True)
    )
    refs = "".join(f'<ol:lease_ref id_ref="{lease.id}"/>' for lease in held)
    sfa_leases = "".join(
        f'<lease slice_id="{pki.slice_urn}" start_time="{_epoch(lease.start)}" duration="2">'
        f'<node component_id="{node_urn("n1")}"/></lease>'
        for lease in held
    )
    manifest_back = (
        f'<rspec type="request" xmlns="{GENI}" xmlns:ol="{OL}">{ol_leases}'
        f'<node client_id="x" component_id="{node_urn("n1")}" component_manager_id="{aggregate.settings.urn}" '
        f'component_name="n1" exclusive="true" sliver_id="{held[0].slivers[0].urn}">{refs}<host name="n1"/></node>'
        f"{sfa_leases}</rspec>"
    )
    before = _slots(aggregate, pki.slice_urn)
    _allocate(aggregate, pki, manifest_back)
    assert _slots(aggregate, pki.slice_urn) == before


# -- 4. a node URN's authority in another case ------------------------------------------------------------------------


def test_a_node_urn_with_its_authority_in_another_case_is_booked_as_ours(aggregate: Aggregate, pki: DemoPki) -> None:
    """The reader took urn:publicid:IDN+TESTBED+node+n2 as this aggregate's node; booking refused it ("not a node of
    ours", code 1). Its grain is the node's too."""
    start = _hour(2)
    body = (
        _ol_lease("a", start)
        + '<node client_id="z" component_id="urn:publicid:IDN+TESTBED+node+n2"><ol:lease_ref id_ref="a"/></node>'
        + _sfa_lease("URN:PUBLICID:IDN+Testbed+NODE+big", start)
    )
    _allocate(aggregate, pki, _request(body))
    assert _slots(aggregate, pki.slice_urn) == [
        (start, start + timedelta(hours=1), (node_urn("n2"),)),
        (start, start + timedelta(hours=2), (node_urn("big"),)),
    ]


def test_a_node_name_keeps_its_case(aggregate: Aggregate, pki: DemoPki) -> None:
    start = _hour(2)
    body = _sfa_lease("urn:publicid:IDN+testbed+node+N1", start)
    refused = _refusal(aggregate, pki, _request(body))
    assert "urn:publicid:IDN+testbed+node+N1 is not a node of ours" in refused.message


# -- 5. start_time="0" -------------------------------------------------------------------------------------------------


def test_start_time_zero_is_refused_saying_to_leave_it_out() -> None:
    """IoT-LAB's "as soon as possible" was read as 1970 and answered "window already over" (code 7)."""
    body = f'<lease start_time="0" duration="2"><node component_id="{node_urn("n1")}"/></lease>'
    with pytest.raises(RSpecError) as refused:
        parse_request(_request(body), now=NOW, policy=POLICY)
    assert refused.value.reason == Reason.BAD_ARGS
    assert 'start_time="0" is not read as "as soon as possible" here: leave start_time out' in refused.value.message


def test_an_sfa_lease_without_start_time_is_booked_in_the_earliest_free_slot(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """What the refusal of start_time="0" tells to do: n1 is another slice's in the second hour from now, so two
    grains (one hour) without start_time go before it if they fit, else right after it."""
    taken = _book_for_other_slice(aggregate, pki, "n1", _hour(1))
    _allocate(aggregate, pki, _request(f'<lease duration="2"><node component_id="{node_urn("n1")}"/></lease>'))
    ((start, end, nodes),) = _slots(aggregate, pki.slice_urn)
    assert nodes == (node_urn("n1"),) and end - start == timedelta(hours=1)
    assert end <= taken.start or start == taken.end


def test_schema_accepts_what_a_manifest_carries() -> None:
    """Every manifest-only item a Describe manifest holds (sliver_id, <host>, <login username>) reads as a request."""
    body = (
        f'<node client_id="x" component_id="{node_urn("n1")}" sliver_id="urn:publicid:IDN+testbed+sliver+1">'
        '<services><login authentication="ssh-keys" hostname="n1" port="22" username="alice"/></services>'
        '<host name="n1"/></node>'
    )
    request = parse_request(_request(body), now=NOW, policy=POLICY)
    assert [node.component_id for node in request.nodes] == [node_urn("n1")]


def test_an_sfa_lease_showing_an_ol_lease_from_its_floored_first_grain_is_that_lease() -> None:
    """SFA's view of a lease booked from now (10:07:13 until 11:00) starts at the grain it began in (10:00) for two
    grains; sent back with the ol:lease, it is that lease, not a second booking overlapping it."""
    lease_id = "0b6c3f5e-2a39-4c1e-9a57-3f1d2f0c9b11"
    body = (
        f'<ol:lease id="{lease_id}" client_id="a" valid_from="2026-11-30T10:07:13Z" '
        'valid_until="2026-11-30T11:00:00Z"/>'
        f'<node client_id="x" component_id="{node_urn("n1")}"><ol:lease_ref id_ref="{lease_id}"/></node>'
        f'<lease start_time="{_epoch(datetime(2026, 11, 30, 10, 0, tzinfo=UTC))}" duration="2">'
        f'<node component_id="{node_urn("n1")}"/></lease>'
    )
    request = parse_request(_request(body), now=NOW, policy=POLICY)
    assert [(lease.existing_id, lease.nodes) for lease in request.leases] == [(lease_id, ("x",))]
