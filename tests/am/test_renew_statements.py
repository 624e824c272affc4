"""Renew reads once what it authorizes, answers and checks (issue 15): on PostgreSQL a Renew of one lease by its
sliver URNs is that read and the renewal's one statement; on both databases it answers and writes what it did
when the renewal ran from its own read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.times import format_time, utcnow
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.calendar.test_renew_path import _statements_starting
from tests.conftest import DemoPki


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, NodeSpec(node_urn("n1"), "n1")) as made:
        yield made


def test_a_renew_by_sliver_urn_reads_once_and_writes_once(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    expires = aggregate.authorize("Renew", alice.chain, [alice.slice_cred], pki.slice_urn, {}).expires
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    (lease,) = aggregate.bookings.book(
        pki.slice_urn, expires, [BookingRequest(node_urn("n1"), start, start + timedelta(hours=1))]
    ).leases
    sliver = lease.slivers[0].urn
    new_end = start + timedelta(hours=3)
    with _statements_starting(aggregate.database, "") as sent:
        (answer,) = aggregate.renew(alice.chain, [sliver], [alice.slice_cred], format_time(new_end), {})
    words = [statement.split()[0].upper() for statement in sent]
    if not aggregate.database.is_sqlite:
        assert words == ["SELECT", "WITH"], words  # the call's read, then the renewal's one statement
    assert answer["geni_sliver_urn"] == sliver
    assert answer["sfa_omf_renewal"].startswith(
        f"lease {lease.id} extended: it now ends at {format_time(new_end)} (was {format_time(lease.end)})"
    )
    (stored,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert stored.end == new_end and [found.end for found in stored.slivers] == [new_end]
