"""A slice's whole request, as omni and jFed send it to each of its aggregates, names other aggregates' nodes: this
aggregate books its own (by their component_manager_id, in GENI's +authority+am or SFA's +authority+cm spelling)
and leaves the others; a request that names none of its nodes is refused, saying so, and writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import GeniCode, GeniError
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki

OURS_AM = "urn:publicid:IDN+testbed+authority+am"
OURS_CM = "urn:publicid:IDN+TESTBED+authority+cm"
WALL = "urn:publicid:IDN+wall2.ilabt.iminds.be+authority+cm"
WALL_NODE = "urn:publicid:IDN+wall2.ilabt.iminds.be+node+n095-01"


def request(*nodes: tuple[str, str, str | None]) -> str:
    """A GENI v3 request of (client_id, component_manager_id, component_id) nodes, with no time (from now)."""
    written = "".join(
        f'<node client_id="{client_id}" component_manager_id="{manager}"'
        + (f' component_id="{component}"' if component else "")
        + ' exclusive="true"/>'
        for client_id, manager, component in nodes
    )
    return f'<rspec xmlns="http://www.geni.net/resources/rspec/3" type="request">{written}</rspec>'


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, *(NodeSpec(node_urn(n), n) for n in ("n1", "n2"))) as made:
        yield made


def allocate(aggregate: Aggregate, pki: DemoPki, rspec: str) -> dict[str, object]:
    alice = pki.users["alice"]
    return aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, {})


def test_the_nodes_of_other_aggregates_are_left_to_them(aggregate: Aggregate, pki: DemoPki) -> None:
    answer = allocate(
        aggregate,
        pki,
        request(("a", OURS_AM, node_urn("n1")), ("b", WALL, WALL_NODE), ("c", OURS_CM, node_urn("n2"))),
    )
    assert aggregate.settings.urn == OURS_AM
    booked = sorted(sliver.node for lease in aggregate.bookings.leases() for sliver in lease.slivers)
    assert booked == [node_urn("n1"), node_urn("n2")]
    manifest = str(answer["geni_rspec"])
    assert 'client_id="a"' in manifest and 'client_id="c"' in manifest and WALL_NODE not in manifest


def test_a_request_naming_none_of_this_aggregates_nodes_is_refused_and_writes_nothing(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    with pytest.raises(GeniError) as refused:
        allocate(aggregate, pki, request(("b", WALL, WALL_NODE)))
    assert refused.value.code == GeniCode.BADARGS
    assert "names no node of this aggregate" in str(refused.value) and WALL in str(refused.value)
    with pytest.raises(GeniError) as empty:
        allocate(aggregate, pki, request())
    assert empty.value.code == GeniCode.BADARGS and "names no node of this aggregate" in str(empty.value)
    assert aggregate.bookings.leases() == []
