"""No double booking, ever: threads and processes race for the same node and time on SQLite and PostgreSQL;
exactly one wins every round. And random sequences of book/renew/cancel never leave two overlapping bookings, while
free-window answers match a brute-force oracle (hypothesis)."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import timedelta
from itertools import combinations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from sfa_omf.calendar.booking import BookingConflict, Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import Lease, Node, Slice, Sliver
from sfa_omf.calendar.policy import PolicyViolation
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.errors import GeniError
from tests.calendar import racers
from tests.calendar.conftest import NOW, SLICE_EXPIRES, Calendar, at, node_urn

ROUNDS = 12


def held(database: Database) -> list[tuple[int, int, int]]:
    with database.read() as session:
        rows = session.execute(
            select(Sliver.node_id, Sliver.start_s, Sliver.end_s).where(Sliver.holds_node.is_(True))
        ).all()
        return [(node, start, end) for node, start, end in rows]


def assert_no_overlap(database: Database) -> None:
    for (node_a, start_a, end_a), (node_b, start_b, end_b) in combinations(held(database), 2):
        assert not (node_a == node_b and start_a < end_b and start_b < end_a), "two bookings overlap"


def test_threads_race(calendar: Calendar) -> None:
    contenders = 8
    barrier = threading.Barrier(contenders)
    wins = [[False] * ROUNDS for _ in range(contenders)]
    errors: list[BaseException] = []

    def run(contender: int) -> None:
        try:
            for round_number in range(ROUNDS):
                start, end = racers.window(round_number, contender, contenders)
                barrier.wait(timeout=60)
                try:
                    calendar.bookings.book(
                        f"urn:publicid:IDN+testbed+slice+t{contender}",
                        SLICE_EXPIRES,
                        [BookingRequest(node_urn("n1"), start, end)],
                    )
                    wins[contender][round_number] = True
                except BookingConflict:
                    pass
        except BaseException as exc:  # reported below: a thread must not fail silently
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for round_number in range(ROUNDS):
        assert sum(wins[c][round_number] for c in range(contenders)) == 1, f"round {round_number}"
    assert len(held(calendar.database)) == ROUNDS
    assert_no_overlap(calendar.database)


def test_processes_race(calendar: Calendar) -> None:
    contenders = 4
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(contenders)
        with context.Pool(contenders) as pool:
            results = pool.starmap(
                racers.race,
                [(calendar.database.url, i, contenders, ROUNDS, node_urn("n1"), barrier) for i in range(contenders)],
            )
    for round_number in range(ROUNDS):
        assert sum(result[round_number] for result in results) == 1, f"round {round_number}"
    assert len(held(calendar.database)) == ROUNDS
    assert_no_overlap(calendar.database)


# -- random operation sequences (hypothesis) ----------------------------------------------------------------------
NODES = ("n1", "n2", "n3")
operation = st.one_of(
    st.tuples(st.just("book"), st.sampled_from(NODES), st.integers(0, 20), st.integers(1, 6)),
    st.tuples(st.just("renew"), st.integers(0, 30), st.integers(1, 26), st.just(0)),
    st.tuples(st.just("cancel"), st.integers(0, 30), st.just(0), st.just(0)),
)


def _reset(database: Database) -> None:
    with database.write() as session:
        for table in (Sliver, Lease, Slice):
            session.execute(delete(table))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(operation, min_size=1, max_size=14))
def test_random_sequences_keep_the_invariants(
    calendar: Calendar, operations: list[tuple[str, object, int, int]]
) -> None:
    _reset(calendar.database)
    bookings: Bookings = calendar.bookings
    lease_ids: list[str] = []
    for kind, first, second, third in operations:
        try:
            if kind == "book":
                result = bookings.book(
                    "urn:publicid:IDN+testbed+slice+p",
                    SLICE_EXPIRES,
                    [BookingRequest(node_urn(str(first)), at(second), at(second + third))],
                )
                lease_ids += [lease.id for lease in result.leases]
            elif kind == "renew" and lease_ids:
                lease = bookings.leases(active_only=False)
                chosen = lease_ids[int(str(first)) % len(lease_ids)]
                start = next(item.start for item in lease if item.id == chosen)
                bookings.renew(chosen, max(start + timedelta(hours=1), at(second)))
            elif kind == "cancel" and lease_ids:
                bookings.cancel(lease_ids[int(str(first)) % len(lease_ids)])
        except (BookingConflict, PolicyViolation, GeniError):
            pass  # refusals are fine; what matters is what is left in the database
        assert_no_overlap(calendar.database)
    # Free windows equal what a brute-force look at every half hour says.
    horizon = at(30)
    answer = calendar.availability.free_windows(NOW, horizon, count=100)
    with calendar.database.read() as session:
        ids = dict(session.execute(select(Node.component_id, Node.id)).all())
    taken = held(calendar.database)
    for name in NODES:
        node_id = ids[node_urn(name)]
        expected, run = [], None
        for step in range(0, 61):
            slot = int(NOW.timestamp()) + step * 1800
            free = step < 60 and not any(n == node_id and s < slot + 1800 and slot < e for n, s, e in taken)
            if free and run is None:
                run = slot
            if not free and run is not None:
                expected.append((run, slot))
                run = None
        got = [(int(w.start.timestamp()), int(w.end.timestamp())) for w in answer[node_urn(name)]]
        assert got == expected
