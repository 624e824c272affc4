"""Round trips: a request written in any dialect reads back as the same plain data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rspec.model import CONTAINER_SLIVER_TYPE, Request, RequestLease, RequestNode
from rspec.parse_request import RequestPolicy, parse_request
from rspec.write_request import Dialect, NotExpressible, write_request
from tests.rspec.conftest import CM, NOW

GRAIN = timedelta(minutes=30)
POLICY = RequestPolicy(default_duration=timedelta(hours=3), grain=GRAIN)
BASE = datetime(2026, 12, 1, tzinfo=UTC)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)


@st.composite
def requests(draw: st.DrawFn, bound: bool = True) -> Request:
    """Requests every dialect can say: nodes with component_ids (SFA names nodes by them), every node in a lease,
    fixed leases in separate 10-hour bands (no overlaps), at most one as-soon-as-possible lease, whose nodes are in
    no other lease (its slot is found without knowing of the others)."""
    client_ids = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    nodes = []
    for client_id in client_ids:
        sliver = draw(st.none() | names)
        nodes.append(
            RequestNode(
                client_id=client_id,
                component_id=f"urn:publicid:IDN+omf:testbed+node+{client_id}" if bound or draw(st.booleans()) else None,
                component_manager_id=draw(st.none() | st.just(CM)),
                exclusive=draw(st.none() | st.booleans()),
                hardware_type=draw(st.none() | names),
                sliver_type=sliver,
                disk_image=draw(st.none() | names) if sliver else None,
                # A container sliver type without inst:count asks for one container: the reader says 1.
                instance_count=1 if sliver == CONTAINER_SLIVER_TYPE else None,
            )
        )
    leases = []
    in_asap: list[str] = []
    for band in range(draw(st.integers(1, 4))):
        asap = band == 0 and draw(st.booleans())
        start = None if asap else BASE + band * timedelta(hours=10) + draw(st.integers(0, 4)) * GRAIN
        free = [c for c in client_ids if c not in in_asap]
        if not free:
            break
        members = draw(st.lists(st.sampled_from(free), min_size=1, unique=True))
        if asap:
            in_asap = members
        leases.append(
            RequestLease(start, draw(st.integers(1, 8)) * GRAIN, tuple(sorted(members, key=client_ids.index)))
        )
    uncovered = [c for c in client_ids if not any(c in lease.nodes for lease in leases)]
    if uncovered:
        last = leases[-1]
        widened = tuple(c for c in client_ids if c in last.nodes or c in uncovered)
        leases[-1] = RequestLease(last.start, last.duration, widened)
    leases.sort(key=lambda lease: (lease.start is None, lease.start or BASE, lease.duration))
    return Request(tuple(nodes), tuple(leases))


def read_back(request: Request, dialect: Dialect) -> Request:
    data, options = write_request(request, dialect, GRAIN)
    return parse_request(data, now=NOW, policy=POLICY, allocate_options=options)


@settings(max_examples=150, deadline=None)
@given(requests())
def test_ol_and_sfa_read_back_the_same(request: Request) -> None:
    assert read_back(request, Dialect.OL) == request
    assert read_back(request, Dialect.SFA) == request


@st.composite
def one_slot_requests(draw: st.DrawFn) -> Request:
    """What Allocate options can say: one fixed slot for every node."""
    request = draw(requests())
    start = BASE + draw(st.integers(0, 100)) * GRAIN
    everyone = tuple(node.client_id for node in request.nodes)
    return Request(request.nodes, (RequestLease(start, draw(st.integers(1, 16)) * GRAIN, everyone),))


@settings(max_examples=50, deadline=None)
@given(one_slot_requests())
def test_allocate_options_read_back_the_same(request: Request) -> None:
    assert read_back(request, Dialect.OPTIONS) == request
    assert read_back(request, Dialect.OL) == request
    assert read_back(request, Dialect.SFA) == request


@settings(max_examples=100, deadline=None)
@given(requests(bound=False))
def test_ol_reads_back_unbound_nodes_and_lease_names(request: Request) -> None:
    """Unbound nodes (no component_id: any suitable node) only ol can say; SFA names nodes by component_id."""
    back = read_back(request, Dialect.OL)
    assert back == request
    assert [lease.client_id for lease in back.leases] == [f"lease{i + 1}" for i in range(len(request.leases))]


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 10_000).map(lambda minutes: BASE + timedelta(minutes=minutes)),
    st.integers(-12 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes))),
)
def test_times_with_any_offset_mean_the_same_instant(moment: datetime, zone: timezone) -> None:
    local = moment.astimezone(zone).isoformat()
    naive_utc = moment.replace(tzinfo=None).isoformat()  # no offset: UTC
    for written in (local, naive_utc, moment.isoformat().replace("+00:00", "Z")):
        data = (
            '<rspec xmlns="http://www.geni.net/resources/rspec/3" '
            'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1" type="request">'
            f'<ol:lease client_id="l" valid_from="{written}" duration="1800"/>'
            '<node client_id="n"><ol:lease_ref id_ref="l"/></node></rspec>'
        )
        (lease,) = parse_request(data, now=NOW).leases
        assert lease.start == moment and lease.start.tzinfo == UTC


def test_what_a_dialect_cannot_say_is_refused() -> None:
    unbound = Request((RequestNode("n"),), (RequestLease(BASE, GRAIN, ("n",)),))
    with pytest.raises(NotExpressible, match="component_id"):
        write_request(unbound, Dialect.SFA)
    odd = Request((RequestNode("n", "urn:n"),), (RequestLease(BASE, timedelta(minutes=45), ("n",)),))
    with pytest.raises(NotExpressible, match="whole number of grains"):
        write_request(odd, Dialect.SFA)
    two = Request((RequestNode("n", "urn:n"),), (RequestLease(BASE, GRAIN, ("n",)), RequestLease(None, GRAIN, ("n",))))
    with pytest.raises(NotExpressible, match="one slot"):
        write_request(two, Dialect.OPTIONS)


def test_made_up_lease_names_never_take_a_name_a_lease_has() -> None:
    """An unnamed lease was written as lease<position>, even when another lease had that name: the two leases of
    one name did not read back ("another ol:lease is already named 'lease1'")."""
    nodes = (RequestNode("a", "urn:a"), RequestNode("b", "urn:b"), RequestNode("c", "urn:c"))
    request = Request(
        nodes,
        (
            RequestLease(BASE, GRAIN, ("a",)),
            RequestLease(BASE + GRAIN, GRAIN, ("b",), client_id="lease1"),
            RequestLease(BASE + 2 * GRAIN, GRAIN, ("c",), client_id="lease3"),
        ),
    )
    back = read_back(request, Dialect.OL)
    assert back == request
    assert [lease.client_id for lease in back.leases] == ["lease2", "lease1", "lease3"]
