"""Status answers from a slice's leases kept while the calendar is unchanged (calendar/kept_reads.py), on SQLite and
PostgreSQL: polled, it sends no statement; every write of the process is seen by the Status that follows it, in any
thread, while other threads write and poll at once; a write of another connection (another process) is seen too."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar import changes as changes_module
from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.times import utcnow
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.calendar.test_renew_path import _statements_starting
from tests.conftest import DemoPki

NODES = ("n1", "n2", "n3", "n4")
ROUNDS = 15
WAIT_LIMIT_S = 30.0  # for the other connection's notification (a hang, not a time measured)


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on(request.param, tmp_path, pki, *(NodeSpec(node_urn(n), n) for n in NODES)) as made:
        yield made


def slot(hours_ahead: int) -> tuple[datetime, datetime]:
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours_ahead)
    return start, start + timedelta(hours=1)


def test_status_polled_sends_no_statement_until_the_slice_changes(aggregate: Aggregate, pki: DemoPki) -> None:
    alice = pki.users["alice"]
    expires = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn).expires
    start, end = slot(3)
    aggregate.bookings.book(pki.slice_urn, expires, [BookingRequest(node_urn("n1"), start, end)])

    def status() -> list[str]:
        answer = aggregate.status(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
        return [sliver["geni_sliver_urn"] for sliver in answer["geni_slivers"]]

    (sliver,) = status()
    deadline = time.monotonic() + WAIT_LIMIT_S
    while True:  # (on PostgreSQL the booking's own notification arrives a moment after it: one read more)
        with _statements_starting(aggregate.database, "") as sent:
            assert status() == [sliver]
        if not sent:
            break
        assert time.monotonic() < deadline, f"Status always sends statements: {sent}"
        time.sleep(0.01)
    with _statements_starting(aggregate.database, "") as sent:
        for _ in range(5):
            assert status() == [sliver]
    assert sent == []


def test_every_write_is_seen_by_the_next_status_whatever_the_threads(aggregate: Aggregate, pki: DemoPki) -> None:
    """Threads each book a node of the slice, check Status shows it, cancel, check Status no longer does, while the
    others do the same: a kept read is never answered after a write that ended before the Status began."""
    alice = pki.users["alice"]
    expires = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn).expires
    failures: list[str] = []

    def in_status(sliver_urn: str) -> bool:
        answer = aggregate.status(alice.chain, [pki.slice_urn], [alice.slice_cred], {})
        return sliver_urn in {sliver["geni_sliver_urn"] for sliver in answer["geni_slivers"]}

    def work(index: int, node: str) -> None:
        try:
            for round_number in range(ROUNDS):
                start, end = slot(3 + index)
                (lease,) = aggregate.bookings.book(
                    pki.slice_urn, expires, [BookingRequest(node_urn(node), start, end)]
                ).leases
                if not in_status(lease.slivers[0].urn):
                    failures.append(f"{node} round {round_number}: booked, not in Status")
                aggregate.bookings.cancel(lease.id)
                if in_status(lease.slivers[0].urn):
                    failures.append(f"{node} round {round_number}: cancelled, still in Status")
        except Exception as exc:  # a thread's failure fails the test
            failures.append(f"{node}: {exc!r}")

    threads = [threading.Thread(target=work, args=(index, node)) for index, node in enumerate(NODES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


def booked_by_another_process(aggregate: Aggregate, expires: datetime, node: str, hours_ahead: int) -> str:
    """Book ``node`` for the demo slice through another connection (as another process would): its sliver's URN."""
    other = Database(aggregate.database.url)
    try:
        start, end = slot(hours_ahead)
        result = Bookings(other, Policy(), "testbed").book(
            "urn:publicid:IDN+testbed+slice+demo", expires, [BookingRequest(node_urn(node), start, end)]
        )
    finally:
        other.dispose()
    return result.leases[0].slivers[0].urn


def test_a_booking_by_another_process_is_seen(
    aggregate: Aggregate, pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status naming the slice: within SQLITE_LOOK_S on SQLite, once the notification arrives on PostgreSQL. Status
    naming the new sliver: at once on both (read with its slice, fresh), even while the slice's leases are kept and
    the notification has not arrived (held back here: on a busy host it waits for the interpreter lock, tens of
    ms)."""
    alice = pki.users["alice"]
    expires = aggregate.authorize("Allocate", alice.chain, [alice.slice_cred], pki.slice_urn).expires
    start, end = slot(3)
    aggregate.bookings.book(pki.slice_urn, expires, [BookingRequest(node_urn("n1"), start, end)])

    def slivers(urns: list[str]) -> list[str]:
        answer = aggregate.status(alice.chain, urns, [alice.slice_cred], {})
        return sorted(str(sliver["geni_sliver_urn"]) for sliver in answer["geni_slivers"])

    (first,) = slivers([pki.slice_urn])
    deadline = time.monotonic() + WAIT_LIMIT_S
    while True:  # until the slice's leases are kept (the first booking's own notification has come)
        with _statements_starting(aggregate.database, "") as sent:
            slivers([pki.slice_urn])
        if not sent:
            break
        assert time.monotonic() < deadline, "the slice's leases are never kept"
        time.sleep(0.01)
    held_back: list[bool] = []
    changed = changes_module._Listener.changed
    monkeypatch.setattr(changes_module._Listener, "changed", lambda listener, listening: held_back.append(listening))
    second = booked_by_another_process(aggregate, expires, "n2", 5)
    assert slivers([second]) == [second]  # named: fresh, at once
    if aggregate.database.is_sqlite:
        monkeypatch.setattr(changes_module._Listener, "changed", changed)
        while slivers([pki.slice_urn]) != sorted([first, second]):  # the file is asked once in SQLITE_LOOK_S
            assert time.monotonic() < deadline, "the other process's booking was never seen"
            time.sleep(0.005)
        return
    while not held_back:  # the notification comes, and is held back
        assert time.monotonic() < deadline, "the other process's booking was never notified"
        time.sleep(0.005)
    assert all(held_back)
    assert slivers([pki.slice_urn]) == [first]  # the slice named: as kept, until the notification arrives
    monkeypatch.setattr(changes_module._Listener, "changed", changed)
    aggregate.database.changes._listener.changed(listening=True)  # type: ignore[union-attr]  # now it arrives
    assert slivers([pki.slice_urn]) == sorted([first, second])
