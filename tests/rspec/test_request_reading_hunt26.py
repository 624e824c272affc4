"""Request reading, as a hunt found it wrong (session 26): a manifest writing thousands of leases both ways (ol and
SFA) read in quadratic time; an advertisement sent back with an ol:lease booked every other node it listed from
now."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

import rspec.parse_request
from rspec.dialects import sfa
from rspec.parse_request import parse_request
from sfa_omf.times import format_time
from tests.rspec.conftest import NOW, POLICY, node_urn

GENI = "http://www.geni.net/resources/rspec/3"
OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
START = datetime(2027, 1, 1, tzinfo=UTC)


def _request(body: str) -> str:
    return f'<rspec type="request" xmlns="{GENI}" xmlns:ol="{OL}">{body}</rspec>'


def _both_ways(count: int, sfa_offset: timedelta) -> str:
    """One node in ``count`` ol leases of 30 minutes an hour apart, and in ``count`` SFA leases of one grain starting
    ``sfa_offset`` after each (0: each ol lease written again in SFA's view, as a manifest sent back does)."""
    ols = "".join(
        f'<ol:lease client_id="l{i}" valid_from="{format_time(START + timedelta(hours=i))}" duration="1800"/>'
        for i in range(count)
    )
    refs = "".join(f'<ol:lease_ref id_ref="l{i}"/>' for i in range(count))
    sfas = "".join(
        f'<lease start_time="{int((START + timedelta(hours=i) + sfa_offset).timestamp())}" duration="1">'
        f'<node component_id="{node_urn("n1")}"/></lease>'
        for i in range(count)
    )
    return _request(f'{ols}<node client_id="a" component_id="{node_urn("n1")}">{refs}</node>{sfas}')


@pytest.fixture
def candidates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many of a node's ol leases each SFA lease's node is compared with."""
    seen: list[int] = []
    compare: Callable[[sfa.SfaLease, list[object] | None], bool] = rspec.parse_request._written_as_ol  # type: ignore[assignment]

    def counting(lease: sfa.SfaLease, windows: list[object] | None) -> bool:
        seen.append(len(windows or []))
        return compare(lease, windows)

    monkeypatch.setattr(rspec.parse_request, "_written_as_ol", counting)
    return seen


def test_an_sfa_lease_is_compared_only_with_the_ol_leases_ending_when_it_does(candidates: list[int]) -> None:
    """Each SFA lease's node was compared with every ol lease of the node: 4 000 leases each way took 6 s, 16 000
    a minute. Looked up by the node and the end, each is compared with the ol leases that may be it."""
    count = 300
    written_twice = parse_request(_both_ways(count, timedelta(0)), now=NOW, policy=POLICY)
    assert len(written_twice.leases) == count  # each SFA lease is its ol lease, written again
    assert len(candidates) == count and max(candidates) == 1
    candidates.clear()
    apart = parse_request(_both_ways(count, timedelta(minutes=30)), now=NOW, policy=POLICY)
    assert len(apart.leases) == 2 * count  # each SFA lease starts when an ol lease ends: a booking of its own
    assert max(candidates) == 0


def test_an_advertisement_sent_back_with_an_ol_lease_books_only_that_lease() -> None:
    """The nodes an advertisement lists (<available>) were left out only beside an SFA <lease>: sent back with one
    <ol:lease> and its <ol:lease_ref> on n1, every other listed node was booked from now."""
    listed = '<available now="true"/><granularity grain="1800"/>'
    lease = f'<ol:lease client_id="mine" valid_from="{format_time(START)}" duration="3600"/>'
    body = (
        f'<node client_id="n1" component_id="{node_urn("n1")}">{listed}<ol:lease_ref id_ref="mine"/></node>'
        f'<node client_id="n2" component_id="{node_urn("n2")}">{listed}</node>'
        f'<node client_id="n3" component_id="{node_urn("n3")}"/>'
    )
    request = parse_request(_request(lease + body), now=NOW, policy=POLICY)
    booked = sorted((lease.start is not None, lease.nodes) for lease in request.leases)
    assert booked == [(False, ("n3",)), (True, ("n1",))], "n2 left out; n3 (no <available>) from now, as ever"
