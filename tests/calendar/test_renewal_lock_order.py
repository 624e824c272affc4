"""PostgreSQL: a renewal of several leases locks their rows in id order, whatever the order the caller names them
in, as every other writer of several leases must: locked in the caller's order, two writers that name the same
leases in other orders each held one the other waited for (a deadlock)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, LeaseRecord
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, fresh_database, node_urn

ALICE = "urn:publicid:IDN+testbed+user+alice"
LOCK_LEASE = text("SELECT id FROM lease WHERE id = :lease_id FOR UPDATE")
# NOWAIT: a lease row held by the waiting renewal is refused at once (55P03) instead of a deadlock that PostgreSQL
# would break after its deadlock_timeout by failing the renewal, which retry_transient would then run again unseen.
LOCK_LEASE_NOWAIT = text("SELECT id FROM lease WHERE id = :lease_id FOR UPDATE NOWAIT")
# pg_locks, read live (pg_stat_activity would be read once per transaction): a lock someone waits for that this
# session holds.
WAITING_FOR_THIS_SESSION = text(
    "SELECT count(*) FROM pg_locks WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
)


def wait_until_another_waits_for(connection: Connection) -> None:
    """Polls until another session waits for a lock ``connection`` holds (a bound on the tries, not a timing
    threshold: a renewal that never waits fails the test)."""
    for _ in range(3000):
        if connection.execute(WAITING_FOR_THIS_SESSION).scalar_one():
            return
        threading.Event().wait(0.01)
    pytest.fail("the renewal never waited for the lease row the test holds")


@pytest.mark.parametrize(
    "policy",
    [Policy(), Policy(max_hours_per_day_per_user=24)],
    ids=["without-limits", "with-limits"],  # with a limit, the renewal takes the slice's and owner's locks first
)
def test_a_renewal_of_several_leases_locks_them_in_id_order(policy: Policy, tmp_path: Path) -> None:
    database = fresh_database("postgresql", tmp_path)
    try:
        calendar = Calendar(database, policy)
        calendar.add_nodes("n1", "n2")
        booked = [
            calendar.bookings.book(
                SLICE, SLICE_EXPIRES, [BookingRequest(node_urn(node), at(2), at(3))], owner_urn=ALICE
            ).leases[0]
            for node in ("n1", "n2")
        ]
        lower, higher = sorted(lease.id for lease in booked)
        renewed: list[LeaseRecord] = []
        failed: list[BaseException] = []

        def renew_higher_first() -> None:
            try:
                renewed.extend(calendar.bookings.renew_all([(higher, at(4), "up"), (lower, at(5), "up")]))
            except BaseException as exc:  # (seen by the test's thread below)
                failed.append(exc)

        with database.engine.connect() as other_writer:
            other_writer.execute(LOCK_LEASE, {"lease_id": lower})
            renewal = threading.Thread(target=renew_higher_first)
            renewal.start()
            wait_until_another_waits_for(other_writer)
            # The renewal waits for the lower id's row: in id order it has locked nothing of these leases yet, so
            # the other writer gets the higher one too and finishes.
            locked = other_writer.execute(LOCK_LEASE_NOWAIT, {"lease_id": higher}).all()
            assert locked == [(higher,)]
            other_writer.commit()
        renewal.join()
        assert failed == []
        # The answer keeps the caller's order.
        assert [(record.id, record.end) for record in renewed] == [(higher, at(4)), (lower, at(5))]
        stored = {lease.id: lease.end for lease in calendar.bookings.leases(slice_urn=SLICE)}
        assert stored == {higher: at(4), lower: at(5)}
    finally:
        database.dispose()
