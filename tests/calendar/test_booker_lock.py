"""PostgreSQL: a booking takes its booker's advisory lock only when the policy limits node-hours per user (the one
thing that lock keeps consistent). Without that limit, one user's bookings in different slices do not wait for each
other; with it they do, so that each counts the other's hours."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.queries import advisory_key
from sfa_omf.calendar.records import BookingRequest, BookingResult
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, fresh_database, node_urn

ALICE = "urn:publicid:IDN+testbed+user+alice"
OTHER_SLICE = "urn:publicid:IDN+testbed+slice+other"
HOLD_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
# pg_locks, read live: a lock someone waits for that this session holds.
WAITING_FOR_THIS_SESSION = text(
    "SELECT count(*) FROM pg_locks WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
)


def booked_or_waiting(booking: threading.Thread, holder: Connection) -> str:
    """Polls until the booking thread has ended ("booked") or waits for a lock ``holder`` holds ("waiting"); a bound
    on the tries, not a timing threshold (a booking that does neither fails the test)."""
    for _ in range(3000):
        if not booking.is_alive():
            return "booked"
        if holder.execute(WAITING_FOR_THIS_SESSION).scalar_one():
            return "waiting"
        threading.Event().wait(0.01)
    pytest.fail("the booking neither ended nor waited for the lock the test holds")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(Policy(), "booked"), (Policy(max_hours_per_day_per_user=24), "waiting")],
    ids=["without-per-user-limit", "with-per-user-limit"],
)
def test_a_booking_waits_for_its_bookers_lock_only_under_a_per_user_limit(
    policy: Policy, expected: str, tmp_path: Path
) -> None:
    database = fresh_database("postgresql", tmp_path)
    try:
        calendar = Calendar(database, policy)
        calendar.add_nodes("n1", "n2")
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(2), at(3))], owner_urn=ALICE)
        results: list[BookingResult] = []
        failed: list[BaseException] = []

        def book_in_other_slice() -> None:
            try:
                request = BookingRequest(node_urn("n2"), at(2), at(3))
                results.append(calendar.bookings.book(OTHER_SLICE, SLICE_EXPIRES, [request], owner_urn=ALICE))
            except BaseException as exc:  # (seen by the test's thread below)
                failed.append(exc)

        with database.engine.connect() as holder:
            # What a racing booking of Alice's holds while it runs: her lock, until its transaction ends.
            holder.execute(HOLD_LOCK, {"key": advisory_key(ALICE)})
            booking = threading.Thread(target=book_in_other_slice)
            booking.start()
            assert booked_or_waiting(booking, holder) == expected
            holder.commit()
        booking.join()
        assert failed == []
        assert [[sliver.node for sliver in lease.slivers] for lease in results[0].leases] == [[node_urn("n2")]]
        owners = {lease.slice_urn: lease.owner_urn for lease in calendar.bookings.leases()}
        assert owners == {SLICE: ALICE, OTHER_SLICE: ALICE}
    finally:
        database.dispose()
