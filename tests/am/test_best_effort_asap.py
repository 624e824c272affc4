"""AM API v3 Allocate with geni_best_effort of a lease with no start time (booked as soon as possible) that names a
node in maintenance, or lost: the lease's usable nodes are booked at the earliest slot where they are all free, and
the down nodes come back as refused slivers, as a best-effort booking reports any refused node (geni_error, no
sliver URN). Before, the whole request was refused (geni_code 7) before anything was booked. Without
geni_best_effort the request is still refused whole, writing nothing; with it, a request of which nothing at all can
be booked is refused whole too, naming every node it could not book. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.models import Node
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.times import format_time, parse_time, utcnow
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki

BEST_EFFORT = {"geni_best_effort": True}
OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
OTHER_SLICE = "urn:publicid:IDN+testbed+slice+other"
#: What a refused node's geni_error says, by the node's state (Bookings' words for a node that takes no booking).
WHY = {"maintenance": "is in maintenance", "lost": "has lost contact (its agent is silent)"}


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    nodes = (NodeSpec(node_urn(name), name) for name in ("n1", "n2", "n3"))
    with aggregate_on(request.param, tmp_path, pki, *nodes) as made:
        yield made


def untimed_request(nodes: tuple[str, ...], timed: tuple[str, datetime] | None = None) -> str:
    """``nodes`` with no time at all (one lease, from now, the default duration); ``timed``: and one more node in an
    ol:lease of an hour from the given start."""
    written = "".join(f'<node client_id="{name}" component_id="{node_urn(name)}" exclusive="true"/>' for name in nodes)
    if timed is not None:
        name, start = timed
        written += (
            f'<ol:lease client_id="l" valid_from="{format_time(start)}" '
            f'valid_until="{format_time(start + timedelta(hours=1))}"/>'
            f'<node client_id="{name}" component_id="{node_urn(name)}" exclusive="true">'
            '<ol:lease_ref id_ref="l"/></node>'
        )
    return f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" xmlns:ol="{OL}">{written}</rspec>'


def allocate(aggregate: Aggregate, pki: DemoPki, rspec: str, options: dict[str, Any]) -> dict[str, Any]:
    alice = pki.users["alice"]
    return aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, options)


def book_for_another_slice(aggregate: Aggregate, pki: DemoPki, node: str, start: datetime, end: datetime) -> None:
    """Another slice's lease on ``node`` (``start`` now: from now)."""
    alice = pki.users["alice"]
    verified = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn, {})
    requests = [BookingRequest(node_urn(node), start, end, from_now=start <= utcnow())]
    aggregate.bookings.book(OTHER_SLICE, verified.expires, requests, owner_urn=verified.owner_urn)


def put_down(aggregate: Aggregate, node: str, state: str) -> None:
    """``node`` in maintenance (as an operator puts it) or lost (as node agents' silence leaves it)."""
    if state == "maintenance":
        aggregate.inventory.set_state(node_urn(node), state)
        return
    with aggregate.bookings.database.write() as session:
        session.execute(update(Node).where(Node.component_id == node_urn(node)).values(state=state))


def stored(aggregate: Aggregate) -> list[LeaseRecord]:
    return aggregate.bookings.leases(active_only=False)


def refused_writing_nothing(aggregate: Aggregate, call: Callable[[], object]) -> GeniError:
    before = stored(aggregate)
    with pytest.raises(GeniError) as refused:
        call()
    assert stored(aggregate) == before
    return refused.value


def refused_slivers(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [sliver for sliver in answer["geni_slivers"] if not sliver["geni_sliver_urn"]]


def booked_slivers(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [sliver for sliver in answer["geni_slivers"] if sliver["geni_sliver_urn"]]


@pytest.mark.parametrize("state", ["maintenance", "lost"])
def test_best_effort_books_the_usable_nodes_of_a_lease_with_no_time(
    aggregate: Aggregate, pki: DemoPki, state: str
) -> None:
    """n2 is down and n3 is another slice's for two hours: n1 and n3 are booked together when n3 is free, and n2 is
    reported refused for that window."""
    now = utcnow().replace(microsecond=0)
    n3_free_from = now.replace(minute=0, second=0) + timedelta(hours=2)
    book_for_another_slice(aggregate, pki, "n3", now, n3_free_from)
    put_down(aggregate, "n2", state)
    rspec = untimed_request(("n1", "n2", "n3"))

    # All or nothing, as before: refused whole, nothing written.
    refusal = refused_writing_nothing(aggregate, lambda: allocate(aggregate, pki, rspec, {}))
    assert refusal.code == GeniCode.REFUSED, refusal
    assert refusal.message.startswith(f"nothing was booked: {node_urn('n2')} {WHY[state]}"), refusal.message

    answer = allocate(aggregate, pki, rspec, BEST_EFFORT)
    (lease,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert sorted(sliver.node for sliver in lease.slivers) == [node_urn("n1"), node_urn("n3")]
    assert lease.start == n3_free_from and lease.end == n3_free_from + timedelta(hours=1)
    assert sorted((s["geni_sliver_urn"], s["geni_allocation_status"]) for s in booked_slivers(answer)) == sorted(
        (sliver.urn, "geni_allocated") for sliver in lease.slivers
    )
    assert refused_slivers(answer) == [
        {
            "geni_sliver_urn": "",
            "geni_component_id": node_urn("n2"),
            "geni_expires": "",
            "geni_allocation_status": "geni_unallocated",
            "geni_operational_status": "geni_pending_allocation",
            "geni_error": f"{node_urn('n2')} {WHY[state]}",
            "geni_start_time": format_time(lease.start),
            "geni_end_time": format_time(lease.end),
        }
    ]


def test_a_lease_with_no_time_all_down_is_reported_when_another_lease_books(aggregate: Aggregate, pki: DemoPki) -> None:
    """n2 (down) alone is booked as soon as possible, n1 in a lease of its own with a time: n1 is booked, n2 is
    reported refused for the hour from now it was asked for."""
    put_down(aggregate, "n2", "maintenance")
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    rspec = untimed_request(("n2",), timed=("n1", start))

    refusal = refused_writing_nothing(aggregate, lambda: allocate(aggregate, pki, rspec, {}))
    assert refusal.code == GeniCode.REFUSED, refusal
    assert refusal.message.startswith(f"nothing was booked: {node_urn('n2')} is in maintenance"), refusal.message

    before = utcnow().replace(microsecond=0)
    answer = allocate(aggregate, pki, rspec, BEST_EFFORT)
    (lease,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert [sliver.node for sliver in lease.slivers] == [node_urn("n1")]
    assert (lease.start, lease.end) == (start, start + timedelta(hours=1))
    assert [s["geni_sliver_urn"] for s in booked_slivers(answer)] == [lease.slivers[0].urn]
    (down,) = refused_slivers(answer)
    assert down["geni_component_id"] == node_urn("n2") and down["geni_allocation_status"] == "geni_unallocated"
    assert down["geni_error"] == f"{node_urn('n2')} is in maintenance"
    asked_from, asked_until = parse_time(down["geni_start_time"]), parse_time(down["geni_end_time"])
    assert before <= asked_from <= utcnow() and asked_until - asked_from == timedelta(hours=1)


def test_best_effort_books_nothing_when_nothing_can_be_booked(aggregate: Aggregate, pki: DemoPki) -> None:
    """As when Bookings refuses every requested node: refused whole (geni_code 7) naming every node it could not book
    (here n1, another slice's at the time asked, and n2, down), nothing written."""
    put_down(aggregate, "n2", "maintenance")
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    book_for_another_slice(aggregate, pki, "n1", start, start + timedelta(hours=1))

    alone = refused_writing_nothing(aggregate, lambda: allocate(aggregate, pki, untimed_request(("n2",)), BEST_EFFORT))
    assert alone.code == GeniCode.REFUSED, alone
    assert alone.message.startswith(f"nothing was booked: {node_urn('n2')} is in maintenance"), alone.message

    rspec = untimed_request(("n2",), timed=("n1", start))
    both = refused_writing_nothing(aggregate, lambda: allocate(aggregate, pki, rspec, BEST_EFFORT))
    assert both.code == GeniCode.REFUSED, both
    assert f"{node_urn('n1')} is booked during" in both.message, both.message
    assert f"{node_urn('n2')} is in maintenance" in both.message, both.message
    assert aggregate.bookings.leases(slice_urn=pki.slice_urn) == []


def test_an_unknown_node_with_no_time_is_refused_as_before_with_best_effort(aggregate: Aggregate, pki: DemoPki) -> None:
    put_down(aggregate, "n2", "maintenance")
    rspec = untimed_request(("n1", "n2", "n9"))
    refusal = refused_writing_nothing(aggregate, lambda: allocate(aggregate, pki, rspec, BEST_EFFORT))
    assert refusal.code == GeniCode.BADARGS, refusal  # as a request with a window is refused (one code, one text)
    assert refusal.message.startswith(f"nothing was booked: {node_urn('n9')} is not a node of ours"), refusal.message
