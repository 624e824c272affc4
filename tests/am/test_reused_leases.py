"""A request that names one of the slice's leases by the id the aggregate gave it (<ol:lease id="..."> as the
manifest shows it, sent back with more leases: sfi.py and omf_sfa users edit the manifest into their next request)
keeps that lease as it is and books only what is new; asked for another window, it is refused with what to do. A
lease of the slice asked for again without its id is refused as a clash, and the refusal says it is the slice's own
lease and how to keep it. On SQLite and PostgreSQL, through Aggregate.allocate as the AM API's Allocate calls it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.errors import GeniError, Reason
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.pki import load_private_key_file
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.am.conftest import Clock
from tests.am.test_unit_of_work import FaultInjectingTestbed, snapshot
from tests.calendar.conftest import fresh_database, node_urn
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key

OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
OTHER_SLICE = "urn:publicid:IDN+testbed+slice+other"


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki, clock: Clock) -> Iterator[Aggregate]:
    database: Database = fresh_database(request.param, tmp_path)
    try:
        made = Aggregate(
            AggregateSettings(authority_hrn="testbed"),
            database,
            CredentialVerifier(pki.roots, VerdictCache()),
            clock=clock,
        )
        made.backend = FaultInjectingTestbed()
        for name in ("n1", "n2", "n3"):
            made.inventory.add_node(NodeSpec(node_urn(name), name))
        yield made
    finally:
        database.dispose()


def slot(hours_from_now: int) -> datetime:
    return utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours_from_now)


def ol_lease(name: str, start: datetime, hours: int = 1, by_id: bool = False) -> str:
    """An ol:lease of ``hours`` from ``start``, named by the aggregate's id (``by_id``) or by a client_id."""
    attribute = "id" if by_id else "client_id"
    end = start + timedelta(hours=hours)
    return f'<ol:lease {attribute}="{name}" valid_from="{format_time(start)}" valid_until="{format_time(end)}"/>'


def ol_node(name: str, lease: str) -> str:
    return f'<node client_id="{name}" component_id="{node_urn(name)}"><ol:lease_ref id_ref="{lease}"/></node>'


def request(*parts: str) -> str:
    body = "".join(parts)
    return f'<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" xmlns:ol="{OL}">{body}</rspec>'


def allocate(aggregate: Aggregate, pki: DemoPki, rspec: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    alice = pki.users["alice"]
    return aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, options or {})


def users_option(pki: DemoPki, name: str) -> dict[str, Any]:
    return {"geni_users": [{"urn": pki.users[name].chain[0].urn, "keys": [ssh_key(name)]}]}


def create_sliver(aggregate: Aggregate, pki: DemoPki, rspec: str) -> Any:
    """AM API v2's CreateSliver, as omni -V2 calls it."""
    alice = pki.users["alice"]
    users = users_option(pki, "alice")["geni_users"]
    params: tuple[Any, ...] = (pki.slice_urn, [alice.slice_cred], rspec, users, {})
    return ApiV2(aggregate)(CallContext(alice.chain, "127.0.0.1", "/am2"), "CreateSliver", params)


def first_lease(aggregate: Aggregate, pki: DemoPki) -> LeaseRecord:
    allocate(aggregate, pki, request(ol_lease("l", slot(2)), ol_node("n1", "l")))
    (lease,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    return lease


def manifest_and_a_new_lease(kept: LeaseRecord) -> str:
    """The manifest's lease on n1 sent back by its id, and a new lease on n2 two hours after it."""
    return request(
        ol_lease(kept.id, slot(2), by_id=True), ol_lease("more", slot(4)), ol_node("n1", kept.id), ol_node("n2", "more")
    )


def windows(aggregate: Aggregate, pki: DemoPki) -> list[tuple[str, datetime, datetime, tuple[str, ...]]]:
    leases = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    return sorted((lease.id, lease.start, lease.end, lease.nodes) for lease in leases)


def test_the_manifest_sent_back_with_a_new_lease_books_only_the_new_one(aggregate: Aggregate, pki: DemoPki) -> None:
    kept = first_lease(aggregate, pki)

    answer = allocate(
        aggregate,
        pki,
        manifest_and_a_new_lease(kept),
    )

    leases = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert len(leases) == 2
    (again,) = [lease for lease in leases if lease.id == kept.id]
    assert again == kept, "the lease named by its id is kept as it was: same window, same sliver"
    (new,) = [lease for lease in leases if lease.id != kept.id]
    assert (new.start, new.end, new.nodes) == (slot(4), slot(5), (node_urn("n2"),))
    slivers = answer["geni_slivers"]
    assert isinstance(slivers, list)
    assert {sliver["geni_sliver_urn"] for sliver in slivers} == {
        sliver.urn for lease in leases for sliver in lease.slivers
    }, "the answer is the slice's manifest: the kept lease and the new one"


def test_the_manifest_sent_back_unchanged_books_nothing_and_answers_the_slice(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    kept = first_lease(aggregate, pki)
    before = snapshot(aggregate, pki.slice_urn)

    answer = allocate(aggregate, pki, request(ol_lease(kept.id, slot(2), by_id=True), ol_node("n1", kept.id)))

    assert snapshot(aggregate, pki.slice_urn) == before
    slivers = answer["geni_slivers"]
    assert isinstance(slivers, list)
    assert [sliver["geni_sliver_urn"] for sliver in slivers] == [kept.slivers[0].urn]


def test_a_node_added_to_a_kept_lease_is_booked_for_its_window(aggregate: Aggregate, pki: DemoPki) -> None:
    kept = first_lease(aggregate, pki)

    allocate(
        aggregate,
        pki,
        request(ol_lease(kept.id, slot(2), by_id=True), ol_node("n1", kept.id), ol_node("n2", kept.id)),
    )

    leases = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert sorted((lease.start, lease.end, lease.nodes) for lease in leases) == [
        (slot(2), slot(3), (node_urn("n1"),)),
        (slot(2), slot(3), (node_urn("n2"),)),
    ]
    assert kept in leases


def test_a_kept_lease_asked_for_another_window_is_refused_with_what_to_do(aggregate: Aggregate, pki: DemoPki) -> None:
    kept = first_lease(aggregate, pki)
    before = snapshot(aggregate, pki.slice_urn)

    with pytest.raises(GeniError) as refused:
        allocate(
            aggregate,
            pki,
            request(
                ol_lease(kept.id, slot(2), hours=2, by_id=True),
                ol_lease("more", slot(5)),
                ol_node("n1", kept.id),
                ol_node("n2", "more"),
            ),
        )

    assert refused.value.reason is Reason.BAD_ARGS
    assert kept.id in refused.value.message and "Renew" in refused.value.message
    assert snapshot(aggregate, pki.slice_urn) == before, "nothing of the request was booked"


def test_an_id_of_another_slices_lease_is_only_a_label(aggregate: Aggregate, pki: DemoPki) -> None:
    """The advertisement shows every lease's id: naming another slice's does not make it the caller's. With its own
    window it is that slice's booking sent back (sfi's `-l all`): left out, and a request of nothing else is refused
    saying so; with another window the id is only a label of the caller's lease."""
    (theirs,) = aggregate.bookings.book(
        OTHER_SLICE, slot(48), [BookingRequest(node_urn("n3"), slot(2), slot(3))]
    ).leases
    before = snapshot(aggregate, pki.slice_urn)

    with pytest.raises(GeniError) as refused:
        allocate(aggregate, pki, request(ol_lease(theirs.id, slot(2), by_id=True), ol_node("n3", theirs.id)))

    assert refused.value.reason is Reason.BAD_ARGS
    assert f"another slice's current booking ({theirs.id})" in refused.value.message
    assert snapshot(aggregate, pki.slice_urn) == before
    allocate(aggregate, pki, request(ol_lease(theirs.id, slot(6), by_id=True), ol_node("n3", theirs.id)))
    ((_, start, end, nodes),) = windows(aggregate, pki)
    assert (start, end, nodes) == (slot(6), slot(7), (node_urn("n3"),)), "a free window is booked for the caller"
    assert aggregate.bookings.leases(slice_urn=OTHER_SLICE) == [theirs]


def test_a_lease_of_the_slice_asked_for_again_without_its_id_is_refused_saying_so(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    kept = first_lease(aggregate, pki)
    before = snapshot(aggregate, pki.slice_urn)

    with pytest.raises(GeniError) as refused:
        allocate(aggregate, pki, request(ol_lease("l", slot(2)), ol_node("n1", "l")))

    assert refused.value.reason is Reason.BOOKING_CONFLICT
    assert f"{node_urn('n1')} by lease {kept.id}" in refused.value.message
    assert "leave it out of the request" in refused.value.message
    assert snapshot(aggregate, pki.slice_urn) == before


def test_the_users_sent_with_a_manifest_that_books_nothing_new_join_the_slice(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    kept = first_lease(aggregate, pki)

    allocate(
        aggregate,
        pki,
        request(ol_lease(kept.id, slot(2), by_id=True), ol_node("n1", kept.id)),
        users_option(pki, "bob"),
    )

    users = {user.user_urn for user in aggregate.slices.get(pki.slice_urn).users}
    assert pki.users["bob"].chain[0].urn in users, "as a booking would have added them"


def test_a_kept_lease_asked_for_as_soon_as_possible_for_another_duration_is_refused(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    kept = first_lease(aggregate, pki)
    before = snapshot(aggregate, pki.slice_urn)
    asap = f'<ol:lease id="{kept.id}" duration="10800"/>'

    with pytest.raises(GeniError) as refused:
        allocate(aggregate, pki, request(asap, ol_node("n1", kept.id), ol_node("n2", kept.id)))

    assert refused.value.reason is Reason.BAD_ARGS and "as soon as possible" in refused.value.message
    assert snapshot(aggregate, pki.slice_urn) == before


def test_an_allocation_not_provisioned_in_time_is_not_kept(aggregate: Aggregate, pki: DemoPki, clock: Clock) -> None:
    """Its time to be provisioned is over: the calendar is releasing it, so keeping it would promise a lease that
    goes within a minute. Its id is a label; the refusal says the time is being released."""
    kept = first_lease(aggregate, pki)
    clock.ahead = timedelta(seconds=aggregate.policy.allocation_ttl_s + 1)
    before = snapshot(aggregate, pki.slice_urn)

    with pytest.raises(GeniError) as refused:
        allocate(aggregate, pki, request(ol_lease(kept.id, slot(2), by_id=True), ol_node("n1", kept.id)))

    assert refused.value.reason is Reason.BOOKING_CONFLICT
    assert "being released" in refused.value.message and "name it by its id" not in refused.value.message
    assert snapshot(aggregate, pki.slice_urn) == before


def test_create_sliver_naming_an_allocation_by_its_id_provisions_it_with_the_new_lease(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    kept = first_lease(aggregate, pki)  # allocated, never provisioned (a v3 Allocate, then a v2 client)

    answer = create_sliver(
        aggregate,
        pki,
        manifest_and_a_new_lease(kept),
    )

    assert answer["code"]["geni_code"] == 0, answer
    leases = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert sorted(lease.state for lease in leases) == ["provisioned", "provisioned"], "the named one too"
    assert kept.id in {lease.id for lease in leases}


def test_create_sliver_of_leases_the_slice_holds_already_is_refused_and_writes_nothing(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    kept = first_lease(aggregate, pki)
    alice = pki.users["alice"]
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
    before = snapshot(aggregate, pki.slice_urn)

    answer = create_sliver(aggregate, pki, request(ol_lease(kept.id, slot(2), by_id=True), ol_node("n1", kept.id)))

    assert answer["code"]["geni_code"] == 17, answer  # ALREADYEXISTS
    assert kept.id in answer["output"] and "new leases alone" in answer["output"]
    assert snapshot(aggregate, pki.slice_urn) == before, "not even the users sent"


def test_get_ticket_of_leases_the_slice_holds_already_is_refused_and_writes_nothing(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """A ticket promises new bookings: naming only the slice's own lease books nothing, so it is refused (17)
    before the users sent join the slice."""
    aggregate.identity = (
        load_private_key_file(str(pki.directory / "aggregate" / "am.pkey")),
        load_gid_chain_file(str(pki.directory / "aggregate" / "am.gid")),
    )
    kept = first_lease(aggregate, pki)
    before = snapshot(aggregate, pki.slice_urn)
    alice = pki.users["alice"]
    bob = users_option(pki, "bob")["geni_users"]
    params: tuple[Any, ...] = (
        pki.slice_urn,
        [alice.slice_cred],
        request(ol_lease(kept.id, slot(2), by_id=True), ol_node("n1", kept.id)),
        bob,
        {},
    )

    answer = ApiV2(aggregate)(CallContext(alice.chain, "127.0.0.1", "/am2"), "GetTicket", params)

    assert answer["code"]["geni_code"] == 17, answer  # ALREADYEXISTS
    assert snapshot(aggregate, pki.slice_urn) == before, "bob did not join the slice"
