"""Delete of an allocation in one statement (issue 15): on PostgreSQL, when the slivers named are all of one allocated
lease of the slice the call's credential names, the caller is authorized on that slice and one statement cancels the
lease (only if it is that slice's and holds them all). Every other Delete takes the usual path and answers or refuses
exactly as before, the one statement having written nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.records import BookingRequest, LeaseRecord, NodeSpec
from sfa_omf.errors import GeniError
from sfa_omf.times import utcnow
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.calendar.test_renew_path import _provisioning_writer_holding, _statements_starting, _wait_for_a_lock_wait
from tests.conftest import DemoPki

OTHER_SLICE = "urn:publicid:IDN+testbed+slice+other"


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, *(NodeSpec(node_urn(name), name) for name in ("n1", "n2"))) as made:
        yield made


def _book(aggregate: Aggregate, pki: DemoPki, slice_urn: str, nodes: tuple[str, ...], hour: int = 2) -> LeaseRecord:
    alice = pki.users["alice"]
    expires = aggregate.authorize("Delete", alice.chain, [alice.slice_cred], pki.slice_urn, {}).expires
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hour)
    requests = [BookingRequest(node_urn(node), start, start + timedelta(hours=1)) for node in nodes]
    (lease,) = aggregate.bookings.book(slice_urn, expires, requests).leases
    return lease


def _state(aggregate: Aggregate) -> tuple[object, ...]:
    """Every lease and sliver as stored, and the generation."""
    with aggregate.bookings.database.read() as session:
        generation = read_generation(session)
    return (tuple(aggregate.bookings.leases(active_only=False)), generation)


def _words(statements: list[str]) -> list[str]:
    return [statement.split()[0].upper() for statement in statements]


def _refusals(
    aggregate: Aggregate, monkeypatch: pytest.MonkeyPatch, delete: Callable[[], object]
) -> tuple[GeniError, GeniError]:
    """The refusal of ``delete`` as the aggregate gives it, then as the usual path alone gives it (the one statement
    turned off): each with nothing changed."""
    before = _state(aggregate)
    found = []
    for usual_only in (False, True):
        if usual_only:
            monkeypatch.setattr(aggregate, "_delete_allocation_at_once", lambda *_args: None)
        with pytest.raises(GeniError) as refused:
            delete()
        found.append(refused.value)
        assert _state(aggregate) == before
    return found[0], found[1]


def test_a_delete_of_an_allocation_is_one_statement_and_answers_as_before(
    aggregate: Aggregate, pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two allocations alike (same slot, a node each): the first deleted by its sliver URN through the one statement,
    the second by the usual path alone. Both answers are the same but for the sliver URNs."""
    alice = pki.users["alice"]
    at_once = _book(aggregate, pki, pki.slice_urn, ("n1",))
    usual = _book(aggregate, pki, pki.slice_urn, ("n2",))
    with _statements_starting(aggregate.bookings.database, "") as sent:
        answer = aggregate.delete(alice.chain, [at_once.slivers[0].urn], [alice.slice_cred], {})
    if not aggregate.bookings.database.is_sqlite:
        assert _words(sent) == ["WITH"], sent  # the one statement: no read of the slivers' slice
    (left,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert left.id == usual.id
    (cancelled,) = [lease for lease in aggregate.bookings.leases(active_only=False) if lease.id == at_once.id]
    assert cancelled.state == "cancelled" and [s.allocation_state for s in cancelled.slivers] == ["geni_unallocated"]
    monkeypatch.setattr(aggregate, "_delete_allocation_at_once", lambda *_args: None)
    usual_answer = aggregate.delete(alice.chain, [usual.slivers[0].urn], [alice.slice_cred], {})
    assert [item.pop("geni_sliver_urn") for item in answer] == [at_once.slivers[0].urn]
    assert [item.pop("geni_sliver_urn") for item in usual_answer] == [usual.slivers[0].urn]
    assert answer == usual_answer
    assert answer[0]["geni_allocation_status"] == "geni_unallocated"


def test_slivers_of_two_leases_take_the_usual_path(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    first = _book(aggregate, pki, pki.slice_urn, ("n1",), hour=2)
    second = _book(aggregate, pki, pki.slice_urn, ("n2",), hour=2)
    named = [first.slivers[0].urn, second.slivers[0].urn]
    answer = aggregate.delete(alice.chain, named, [alice.slice_cred], {})
    assert sorted(item["geni_sliver_urn"] for item in answer) == sorted(named)
    assert aggregate.bookings.leases(slice_urn=pki.slice_urn) == []


def test_a_sliver_of_another_slice_is_refused_as_before_and_nothing_changes(
    aggregate: Aggregate, pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The credential names the demo slice; the sliver is another slice's. The one statement writes nothing, and the
    usual path refuses: the credential is not for the slivers' slice."""
    alice = pki.users["alice"]
    theirs = _book(aggregate, pki, OTHER_SLICE, ("n1",))
    refused, usual = _refusals(
        aggregate, monkeypatch, lambda: aggregate.delete(alice.chain, [theirs.slivers[0].urn], [alice.slice_cred], {})
    )
    assert (refused.code, refused.message) == (usual.code, usual.message)
    assert OTHER_SLICE in refused.message, refused.message


def test_an_unknown_sliver_is_refused_as_before(
    aggregate: Aggregate, pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = pki.users["alice"]
    _book(aggregate, pki, pki.slice_urn, ("n1",))
    unknown = "urn:publicid:IDN+testbed+sliver+no-such-sliver"
    refused, usual = _refusals(
        aggregate, monkeypatch, lambda: aggregate.delete(alice.chain, [unknown], [alice.slice_cred], {})
    )
    assert (refused.code, refused.message) == (usual.code, usual.message)
    assert refused.code == 12, refused  # SEARCHFAILED


def test_a_caller_without_the_right_is_refused_as_before(
    aggregate: Aggregate, pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob presents alice's slice credential: not his. Refused as by the usual path, nothing written."""
    alice, bob = pki.users["alice"], pki.users["bob"]
    lease = _book(aggregate, pki, pki.slice_urn, ("n1",))
    refused, usual = _refusals(
        aggregate, monkeypatch, lambda: aggregate.delete(bob.chain, [lease.slivers[0].urn], [alice.slice_cred], {})
    )
    assert (refused.code, refused.message) == (usual.code, usual.message)
    assert "not to the caller" in refused.message, refused.message


def test_a_provisioned_lease_takes_the_usual_path(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    lease = _book(aggregate, pki, pki.slice_urn, ("n1",))
    aggregate.bookings.mark_provisioned(lease.id)
    with _statements_starting(aggregate.bookings.database, "") as sent:
        answer = aggregate.delete(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})
    assert [item["geni_sliver_urn"] for item in answer] == [lease.slivers[0].urn]
    assert aggregate.bookings.leases(slice_urn=pki.slice_urn) == []
    if not aggregate.bookings.database.is_sqlite:
        assert _words(sent) == ["WITH", "SELECT", "WITH"], sent  # tried, wrote nothing; read, then cancelled


@pytest.mark.parametrize("aggregate", ["postgresql"], indirect=True)
def test_an_allocation_provisioned_while_the_statement_waits_is_not_cancelled_by_it(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """A Provision holds the lease (its row locked, written provisioned) when the one statement runs: the statement
    waits, finds the lease provisioned, writes nothing and answers None; the caller then takes the usual path."""
    lease = _book(aggregate, pki, pki.slice_urn, ("n1",))
    answers: list[LeaseRecord | None] = []
    with _provisioning_writer_holding(aggregate.bookings.database, lease):
        cancelling = threading.Thread(
            target=lambda: answers.append(
                aggregate.bookings.cancel_allocated_holding(pki.slice_urn, [lease.slivers[0].urn])
            )
        )
        cancelling.start()
        waiting = _wait_for_a_lock_wait(aggregate.bookings.database)
    cancelling.join(timeout=30)
    assert waiting.startswith("WITH cancelled"), waiting
    assert answers == [None]
    (kept,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert kept.state == "provisioned" and [s.allocation_state for s in kept.slivers] == ["geni_provisioned"]


@pytest.mark.parametrize("aggregate", ["postgresql"], indirect=True)
def test_the_statement_cancels_only_a_lease_of_the_slice_holding_every_sliver_named(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    mine = _book(aggregate, pki, pki.slice_urn, ("n1", "n2"), hour=2)
    other = _book(aggregate, pki, pki.slice_urn, ("n1",), hour=4)
    theirs = _book(aggregate, pki, OTHER_SLICE, ("n2",), hour=4)
    before = _state(aggregate)
    cancel = aggregate.bookings.cancel_allocated_holding
    assert cancel(pki.slice_urn, [mine.slivers[0].urn, other.slivers[0].urn]) is None  # two leases
    assert cancel(pki.slice_urn, [theirs.slivers[0].urn]) is None  # another slice's
    assert cancel(OTHER_SLICE, [mine.slivers[0].urn]) is None  # named with the wrong slice
    assert cancel(pki.slice_urn, [mine.slivers[0].urn, "urn:publicid:IDN+testbed+sliver+none"]) is None
    assert cancel(pki.slice_urn, []) is None
    assert _state(aggregate) == before
    cancelled = cancel(pki.slice_urn, [sliver.urn for sliver in mine.slivers])
    assert cancelled is not None and cancelled.id == mine.id and cancelled.state == "cancelled"
    assert [(s.urn, s.allocation_state) for s in cancelled.slivers] == [
        (s.urn, "geni_unallocated") for s in mine.slivers
    ]
    assert cancel(pki.slice_urn, [mine.slivers[0].urn]) is None  # no longer active
    with aggregate.bookings.database.read() as session:
        assert read_generation(session) == before[1] + 1


def test_a_delete_checks_the_call_once_where_the_one_statement_does_not_apply(
    aggregate: Aggregate, pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the one statement is not tried, so the call is authorized once, by the usual path; on PostgreSQL
    once, before the one statement, when it applies."""
    alice = pki.users["alice"]
    lease = _book(aggregate, pki, pki.slice_urn, ("n1",))
    checks: list[str | None] = []
    authorize = aggregate.authorize

    def counted(method: str, *args: Any, **kwargs: Any) -> Any:
        checks.append(args[2] if len(args) > 2 else None)
        return authorize(method, *args, **kwargs)

    monkeypatch.setattr(aggregate, "authorize", counted)
    aggregate.delete(alice.chain, [lease.slivers[0].urn], [alice.slice_cred], {})
    assert checks == [pki.slice_urn]
    assert aggregate.bookings.leases(slice_urn=pki.slice_urn) == []
