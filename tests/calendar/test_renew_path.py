"""Renew's and the cancel's statements (calendar/booking.py, issue 15): each sliver's expiry computed by the UPDATE
from its row as it is, the extension's check folded into that UPDATE, the slice's expiry written only when it
changed, a refused renewal writing nothing; on PostgreSQL, a renewal of one lease and a cancel each in one statement
of its own, and renewals that waited for the lease's lock — on SQLite and PostgreSQL unless said otherwise."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import partial

import pytest
from sqlalchemy import event, select, text, update

from sfa_omf.calendar import booking
from sfa_omf.calendar.booking import BookingConflict
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.generation import SHARDS, read_generation
from sfa_omf.calendar.models import Lease, Node, Slice, Sliver
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.queries import to_s
from sfa_omf.calendar.records import BookingRequest, LeaseRecord
from sfa_omf.calendar.slices import Slices
from sfa_omf.errors import GeniError, Reason
from tests.calendar.conftest import NOW, SLICE, SLICE_EXPIRES, Calendar, at, node_urn
from tests.calendar.test_concurrency import assert_no_overlap

TTL = timedelta(seconds=Policy().allocation_ttl_s)


def _stored(calendar: Calendar) -> list[tuple[object, ...]]:
    """Every lease and sliver row, and the slice's expiry: what a call that fails must leave as it was."""
    with calendar.database.read() as session:
        leases = session.execute(select(Lease.id, Lease.state, Lease.end_s).order_by(Lease.id)).all()
        slivers = session.execute(
            select(Sliver.urn, Sliver.end_s, Sliver.expires_s, Sliver.allocation_state).order_by(Sliver.urn)
        ).all()
        slices = session.execute(select(Slice.urn, Slice.expires_s).order_by(Slice.urn)).all()
        return [tuple(row) for row in (*leases, *slivers, *slices)] + [(read_generation(session),)]


@contextmanager
def _statements_starting(database: Database, prefix: str) -> Iterator[list[str]]:
    """The statements run meanwhile whose text starts with ``prefix`` (upper case)."""
    seen: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith(prefix):
            seen.append(statement)

    event.listen(database.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(database.engine, "before_cursor_execute", note)


def test_each_slivers_expiry_follows_its_own_state_and_time(calendar: Calendar) -> None:
    """The UPDATE computes what the Python did: a provisioned sliver expires with the lease; an allocation at
    max(its expiry, now + the allocation's time), but never after the lease's new end."""
    calendar.add_nodes("n4")
    requests = [BookingRequest(node_urn(name), at(1), at(2)) for name in ("n1", "n2", "n3", "n4")]
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, requests).leases
    urns = {sliver.node: sliver.urn for sliver in lease.slivers}
    later = to_s(at(1.5))  # an allocation that was given longer than now + the allocation's time
    with calendar.database.write() as session:
        session.execute(
            update(Sliver).where(Sliver.urn == urns[node_urn("n1")]).values(allocation_state="geni_provisioned")
        )
        session.execute(update(Sliver).where(Sliver.urn == urns[node_urn("n2")]).values(expires_s=later))
    calendar.now = NOW + timedelta(minutes=5)
    renewed = calendar.bookings.renew(lease.id, at(3))
    expiries = {sliver.node: sliver.expires for sliver in renewed.slivers}
    assert expiries == {
        node_urn("n1"): at(3),  # provisioned: the lease's end
        node_urn("n2"): at(1.5),  # its own expiry, later than now + the allocation's time
        node_urn("n3"): calendar.now + TTL,  # now + the allocation's time, later than its expiry
        node_urn("n4"): calendar.now + TTL,
    }
    assert renewed == calendar.bookings.leases(slice_urn=SLICE)[0], "the answer is what the database holds"
    # An allocation's expiry never passes the lease's end: shortened to before now + the allocation's time, the
    # lease's new end is its expiry. (Booked from now 15 minutes into the slot, its allocation expires 25 minutes into
    # it: renewed before that, as an expired allocation is not renewed.)
    calendar.now = NOW + timedelta(minutes=15)
    from_now = BookingRequest(node_urn("n1"), calendar.now, at(1), from_now=True)
    (current,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [from_now]).leases
    calendar.now = NOW + timedelta(minutes=22)
    shortened = calendar.bookings.renew(current.id, at(0.5))
    assert min(sliver.expires for sliver in current.slivers) < at(0.5) < calendar.now + TTL
    assert [(sliver.end, sliver.expires) for sliver in shortened.slivers] == [(at(0.5), at(0.5))]
    assert shortened in calendar.bookings.leases(slice_urn=SLICE)


def test_a_refused_renewal_writes_nothing_not_even_the_new_slice_expiry(calendar: Calendar) -> None:
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    calendar.bookings.book(
        "urn:publicid:IDN+testbed+slice+other",
        SLICE_EXPIRES,
        [BookingRequest(node_urn("n1"), at(3), at(4)), BookingRequest(node_urn("n1"), at(6), at(7))],
    )
    before = _stored(calendar)
    with pytest.raises(BookingConflict) as refusal:
        calendar.bookings.renew(lease.id, at(5), slice_expires=SLICE_EXPIRES + timedelta(days=1))
    (conflict,) = refusal.value.conflicts
    assert (conflict.node, conflict.start, conflict.end) == (node_urn("n1"), at(2), at(5))
    assert conflict.clashing == ((at(3), at(4)),), "only the windows inside the extension are named"
    assert _stored(calendar) == before
    with pytest.raises(GeniError) as past:
        calendar.bookings.renew(lease.id, NOW - timedelta(hours=1), slice_expires=SLICE_EXPIRES + timedelta(days=1))
    assert past.value.reason == Reason.BAD_ARGS
    assert _stored(calendar) == before


@pytest.mark.parametrize("state", ["maintenance", "lost"])
def test_a_node_out_of_use_takes_no_extension_but_its_lease_may_end_earlier(calendar: Calendar, state: str) -> None:
    """As docs/operators.md says: a node in maintenance (or whose agent went silent) is refused to renewals that
    would give it more time, with nothing written; the lease it holds is kept and may be shortened."""
    (lease,) = calendar.bookings.book(
        SLICE,
        SLICE_EXPIRES,
        [BookingRequest(node_urn("n1"), at(1), at(3)), BookingRequest(node_urn("n2"), at(1), at(3))],
    ).leases
    with calendar.database.write() as session:  # as an operator's switch, or node agents' silence, leaves it
        session.execute(update(Node).where(Node.component_id == node_urn("n2")).values(state=state))
    before = _stored(calendar)
    with pytest.raises(BookingConflict) as refusal:
        calendar.bookings.renew(lease.id, at(4), slice_expires=SLICE_EXPIRES)
    (conflict,) = refusal.value.conflicts
    assert (conflict.node, conflict.start, conflict.end) == (node_urn("n2"), at(3), at(4))
    assert conflict.problem == (
        "is in maintenance" if state == "maintenance" else "has lost contact (its agent is silent)"
    )
    assert refusal.value.reason == Reason.BOOKING_CONFLICT
    assert _stored(calendar) == before
    shortened = calendar.bookings.renew(lease.id, at(2), slice_expires=SLICE_EXPIRES)
    assert shortened.end == at(2) and shortened == calendar.bookings.leases(slice_urn=SLICE)[0]


def test_a_renewal_moves_the_generation_by_one_however_many_leases_it_renews(calendar: Calendar) -> None:
    """On PostgreSQL the last renewal's statement bumps the generation itself (the others do not, nor does the
    unit of work's end); on SQLite the unit of work bumps it: one either way."""
    leases = [
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn(name), at(1), at(2))]).leases[0]
        for name in ("n1", "n2", "n3")
    ]

    def generation() -> int:
        with calendar.database.read() as session:
            return read_generation(session)

    before = generation()
    calendar.bookings.renew(leases[0].id, at(3))
    assert generation() == before + 1
    renewed = calendar.bookings.renew_all([(lease.id, at(4), "") for lease in leases])
    assert generation() == before + 2
    assert sorted(renewed, key=lambda lease: lease.id) == sorted(
        calendar.bookings.leases(slice_urn=SLICE), key=lambda lease: lease.id
    )
    assert [lease.end for lease in renewed] == [at(4)] * 3


def test_the_slice_expiry_is_written_only_when_the_credentials_differs(calendar: Calendar) -> None:
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    with _statements_starting(calendar.database, "UPDATE SLICE") as slice_updates:
        calendar.bookings.renew(lease.id, at(3), slice_expires=SLICE_EXPIRES)
        assert slice_updates == [], "the same expiry: not written again"
        calendar.bookings.renew(lease.id, at(4), slice_expires=SLICE_EXPIRES + timedelta(days=2))
        assert len(slice_updates) == 1
    assert Slices(calendar.database).get(SLICE).expires == SLICE_EXPIRES + timedelta(days=2)


def test_renewals_and_cancels_of_one_lease_racing_leave_it_cancelled_and_answer_clearly(calendar: Calendar) -> None:
    """Each round, two threads renew a lease while one cancels it: it ends cancelled, every renewal either
    happened before the cancel or is refused as a renewal of a cancelled lease, and its node is free again."""
    for round_number in range(6):
        base = 10 * round_number
        (lease,) = calendar.bookings.book(
            SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(base + 1), at(base + 2))]
        ).leases
        outcomes = _race(
            [
                (partial(calendar.bookings.renew, lease.id, at(base + 3)), "renewed"),
                (partial(calendar.bookings.renew, lease.id, at(base + 4)), "renewed"),
                (partial(calendar.bookings.cancel, lease.id), "cancelled"),
            ]
        )
        assert outcomes.count("cancelled") == 1 and len(outcomes) == 3, outcomes
        assert set(outcomes) <= {"renewed", "cancelled", "refused: cancelled"}, outcomes
        (stored,) = calendar.bookings.leases(slice_urn=SLICE, start=at(base), end=at(base + 5), active_only=False)
        assert stored.state == "cancelled"
        assert {sliver.allocation_state for sliver in stored.slivers} == {"geni_unallocated"}
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(base + 1), at(base + 5))])
    assert_no_overlap(calendar.database)


def _race(writes: list[tuple[Callable[[], object], str]]) -> list[str]:
    """Run the writes in threads at once: what became of each (its success word, or why it was refused)."""
    barrier = threading.Barrier(len(writes))
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def attempt(write: Callable[[], object], success: str) -> None:
        barrier.wait()
        try:
            write()
            outcomes.append(success)
        except GeniError as exc:
            if exc.reason == Reason.BAD_ARGS and "is cancelled and cannot be renewed" in exc.message:
                outcomes.append("refused: cancelled")
            else:
                errors.append(exc)
        except BaseException as exc:  # reported below: a thread must not fail silently
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=write) for write in writes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return outcomes


@contextmanager
def _provisioning_writer_holding(database: Database, lease: LeaseRecord) -> Iterator[None]:
    """A unit of work holding the lease's row (what Provision does) with its slivers and the lease already written
    provisioned, committed when the block ends."""
    with database.engine.connect() as writer, writer.begin():
        writer.execute(text("SELECT id FROM lease WHERE id = :id FOR UPDATE"), {"id": lease.id})
        writer.execute(
            text("UPDATE sliver SET allocation_state = 'geni_provisioned', expires_s = end_s WHERE lease_id = :id"),
            {"id": lease.id},
        )
        writer.execute(text("UPDATE lease SET state = 'provisioned' WHERE id = :id"), {"id": lease.id})
        yield


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_renewal_that_waited_for_a_provision_gives_the_slivers_the_provisioned_expiry(calendar: Calendar) -> None:
    """PostgreSQL, one lease: the one statement waits for a writer holding the lease (what Provision does), finds
    it no longer as read and writes nothing; the unit of work then renews it as the writer left it (provisioned: the
    slivers live to the new end) and answers that."""
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    answers: list[LeaseRecord] = []
    with _provisioning_writer_holding(calendar.database, lease):
        renewing = threading.Thread(target=lambda: answers.append(calendar.bookings.renew(lease.id, at(3))))
        renewing.start()
        waiting = _wait_for_a_lock_wait(calendar.database)
    renewing.join(timeout=30)
    assert waiting.startswith("WITH lengthened"), waiting
    (renewed,) = answers
    _assert_renewed_as_provisioned(calendar, renewed)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_renewal_of_several_leases_that_waited_for_a_provision_gives_the_provisioned_expiry(
    calendar: Calendar,
) -> None:
    """PostgreSQL, the unit of work (several leases): its locking read waits for the writer holding a lease; its
    joined rows are from before that writer, so the slivers' states are not taken from it: the UPDATE computes each
    expiry from the row the writer left (provisioned: the lease's new end) and answers that row."""
    (held,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    (other,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(1), at(2))]).leases
    answers: list[list[LeaseRecord]] = []
    with _provisioning_writer_holding(calendar.database, held):
        renewing = threading.Thread(
            target=lambda: answers.append(calendar.bookings.renew_all([(held.id, at(3), ""), (other.id, at(3), "")]))
        )
        renewing.start()
        waiting = _wait_for_a_lock_wait(calendar.database)
    renewing.join(timeout=30)
    assert "FOR UPDATE" in waiting, waiting
    (renewed_held, renewed_other) = answers[0]
    assert renewed_held.state == "provisioned" and renewed_other.state == "allocated"
    assert [(s.allocation_state, s.expires) for s in renewed_held.slivers] == [("geni_provisioned", at(3))]
    assert sorted([renewed_held, renewed_other], key=lambda lease: lease.id) == sorted(
        calendar.bookings.leases(slice_urn=SLICE), key=lambda lease: lease.id
    )


def _assert_renewed_as_provisioned(calendar: Calendar, renewed: LeaseRecord) -> None:
    """The renewal answered the lease as a Provision left it (its slivers living to the new end, at(3)), as stored."""
    assert renewed.state == "provisioned"
    assert [(sliver.allocation_state, sliver.expires) for sliver in renewed.slivers] == [("geni_provisioned", at(3))]
    assert renewed == calendar.bookings.leases(slice_urn=SLICE)[0]


def _wait_for_a_lock_wait(database: Database) -> str:
    """Until a session of the test's database waits for a lock (bounded against a hang only, generously: a thread
    starts and reaches the lock on a loaded machine): the statement that waits."""
    # A session's wait event is read live, its state and query from a copy taken a moment before: a session seen
    # waiting with the BEGIN that preceded its statement (psycopg sends BEGIN on its own) is looked at again.
    waiting = (
        "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database() "
        "AND state = 'active' AND query <> 'BEGIN'"
    )
    # Autocommit: in a transaction, pg_stat_activity is read once and then repeated (a snapshot).
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = watcher.execute(text(waiting)).scalar()
            if found:
                return str(found)
            time.sleep(0.05)
    pytest.fail("nothing ever waited for the lease's lock")


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_cancel_is_one_statement_of_its_own_on_postgresql(calendar: Calendar) -> None:
    """The lease, its slivers and the generation's bump in one statement without BEGIN or COMMIT; a lease that is
    not active takes the reading path (nothing bumped: see test_write_path)."""
    (lease,) = calendar.bookings.book(
        SLICE,
        SLICE_EXPIRES,
        [BookingRequest(node_urn("n1"), at(1), at(2)), BookingRequest(node_urn("n2"), at(1), at(2))],
    ).leases
    run: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        run.append(statement.lstrip().split()[0].upper())

    event.listen(calendar.database.engine, "before_cursor_execute", note)
    try:
        cancelled = calendar.bookings.cancel(lease.id)
    finally:
        event.remove(calendar.database.engine, "before_cursor_execute", note)
    assert run == ["WITH"]
    assert cancelled == calendar.bookings.leases(slice_urn=SLICE, active_only=False)[0]
    assert [sliver.node for sliver in cancelled.slivers] == [node_urn("n1"), node_urn("n2")]


def test_write_alone_is_refused_on_sqlite(tmp_path: object) -> None:
    from pathlib import Path

    from sfa_omf.calendar.database import sqlite_url

    database = Database(sqlite_url(str(Path(str(tmp_path)) / "calendar.sqlite")))
    try:
        with pytest.raises(ValueError, match="PostgreSQL"):
            database.write_alone(text("SELECT 1"))
    finally:
        database.dispose()


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_renewal_whose_extension_is_freed_while_it_is_checked_books_it(
    calendar: Calendar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL (READ COMMITTED): the extension's check is the UPDATE's snapshot, who holds it is read in a later
    one. The holder cancelled in between: never a refusal naming nobody; the unit of work runs again and books it."""
    # Each writer bumps a shard of its own: the renewal's transaction holds the shard it bumped until it rolls back,
    # and a cancel drawing the same one (1 time in 32) would wait for it while the test waits for the cancel.
    shards = itertools.count()
    monkeypatch.setattr(booking, "bump_parameters", lambda: {"generation_shard": next(shards) % SHARDS + 1})
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    other_slice = "urn:publicid:IDN+testbed+slice+other"
    (other,) = calendar.bookings.book(other_slice, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(3), at(4))]).leases
    cancelled: list[str] = []

    def cancel_the_holder_first(conn: object, cursor: object, statement: str, *rest: object) -> None:
        if not cancelled and statement.lstrip().upper().startswith("SELECT SLIVER.NODE_ID"):  # who holds the time
            cancelled.append(other.id)
            canceller = threading.Thread(target=lambda: calendar.bookings.cancel(other.id))
            canceller.start()
            canceller.join()

    event.listen(calendar.database.engine, "before_cursor_execute", cancel_the_holder_first)
    try:
        renewed = calendar.bookings.renew(lease.id, at(5))
    finally:
        event.remove(calendar.database.engine, "before_cursor_execute", cancel_the_holder_first)
    assert cancelled == [other.id]  # the race happened where it matters
    assert renewed.end == at(5)


@contextmanager
def _before_the_renewal_statement(database: Database, meanwhile: Callable[[], None]) -> Iterator[list[str]]:
    """Run ``meanwhile`` once, in the renewing thread, just before the one-statement renewal is sent (after its
    read); the statements' first words are noted."""
    run: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        words = statement.split()
        run.append(words[0].upper())
        if words[:2] == ["WITH", "lengthened"] and run.count("WITH") == 1:
            meanwhile()

    event.listen(database.engine, "before_cursor_execute", note)
    try:
        yield run
    finally:
        event.remove(database.engine, "before_cursor_execute", note)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_renewal_of_one_lease_is_a_read_and_one_statement_on_postgresql(calendar: Calendar) -> None:
    """The lease read as last committed, then its UPDATE, its slivers' and the generation's bump in one statement
    without BEGIN or COMMIT; when extending, and when shortening."""
    (lease,) = calendar.bookings.book(
        SLICE,
        SLICE_EXPIRES,
        [BookingRequest(node_urn("n1"), at(1), at(2)), BookingRequest(node_urn("n2"), at(1), at(2))],
    ).leases
    for new_end in (at(4), at(3)):
        generation = _stored(calendar)[-1]
        with _statements_starting(calendar.database, "") as run:
            renewed = calendar.bookings.renew(lease.id, new_end, slice_expires=SLICE_EXPIRES)
        assert [statement.split()[0].upper() for statement in run] == ["SELECT", "WITH"]
        assert renewed == calendar.bookings.leases(slice_urn=SLICE)[0]
        assert renewed.end == new_end and [sliver.end for sliver in renewed.slivers] == [new_end, new_end]
        assert _stored(calendar)[-1] == (generation[0] + 1,)  # type: ignore[operator]


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_lease_provisioned_after_the_renewals_read_is_renewed_as_provisioned(calendar: Calendar) -> None:
    """The one statement writes nothing when the lease is no longer as read; the unit of work then renews it as it
    is (provisioned: its slivers live to the new end) and answers that."""
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases

    def provision() -> None:
        provisioning = threading.Thread(target=lambda: calendar.bookings.mark_provisioned(lease.id))
        provisioning.start()
        provisioning.join(timeout=30)

    with _before_the_renewal_statement(calendar.database, provision) as run:
        renewed = calendar.bookings.renew(lease.id, at(3))
    assert run.count("WITH") == 2, run  # the one statement (nothing written), then the unit of work's
    _assert_renewed_as_provisioned(calendar, renewed)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_an_extension_booked_while_the_renewal_statement_runs_is_refused_and_writes_nothing(
    calendar: Calendar,
) -> None:
    """A booking of the extension that commits after the one statement's snapshot: the exclusion constraint refuses
    the statement whole; the unit of work then names the booking that holds the time. Nothing is written."""
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    other_slice = "urn:publicid:IDN+testbed+slice+other"
    (other,) = calendar.bookings.book(other_slice, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(2), at(3))]).leases
    before = _stored(calendar)
    writer = calendar.database.engine.connect()
    committed: list[bool] = []

    def move_the_other_booking_onto_the_extension() -> None:
        # Uncommitted when the statement takes its snapshot: committed once the statement waits for it.
        transaction = writer.begin()
        writer.execute(
            text("UPDATE sliver SET node_id = (SELECT id FROM node WHERE component_id = :node) WHERE lease_id = :id"),
            {"node": node_urn("n1"), "id": other.id},
        )

        def commit_once_waited_for() -> None:
            _wait_for_a_lock_wait(calendar.database)
            transaction.commit()
            committed.append(True)

        threading.Thread(target=commit_once_waited_for).start()

    try:
        with (
            _before_the_renewal_statement(calendar.database, move_the_other_booking_onto_the_extension),
            pytest.raises(BookingConflict) as refused,
        ):
            calendar.bookings.renew(lease.id, at(3))
    finally:
        writer.close()
    assert committed == [True]
    assert [(conflict.node, conflict.clashing) for conflict in refused.value.conflicts] == [
        (node_urn("n1"), ((at(2), at(3)),))
    ]
    assert _stored(calendar) == before  # (the other booking's move changed its node_id, which _stored does not read)
    assert_no_overlap(calendar.database)


@contextmanager
def _renewal_in_flight(database: Database, lease: LeaseRecord, new_end: int, expires: int) -> Iterator[None]:
    """A renewal's unit of work holding the lease (its row locked, the lease and its slivers written), committed when
    the block ends."""
    with database.engine.connect() as writer, writer.begin():
        writer.execute(text("SELECT id FROM lease WHERE id = :id FOR UPDATE"), {"id": lease.id})
        writer.execute(
            text("UPDATE sliver SET end_s = :end, expires_s = :expires WHERE lease_id = :id"),
            {"id": lease.id, "end": new_end, "expires": expires},
        )
        writer.execute(text("UPDATE lease SET end_s = :end WHERE id = :id"), {"id": lease.id, "end": new_end})
        yield


def _sweep_during(
    database: Database, lease: LeaseRecord, new_end: int, expires: int, sweep: Callable[[], object]
) -> object:
    """Run ``sweep`` while a renewal holds the lease; the renewal commits once the sweep waits for it."""
    swept: list[object] = []
    with _renewal_in_flight(database, lease, new_end, expires):
        sweeping = threading.Thread(target=lambda: swept.append(sweep()))
        sweeping.start()
        waiting = _wait_for_a_lock_wait(database)
    sweeping.join(timeout=30)
    assert "FOR UPDATE" in waiting, waiting  # the sweep waited where it locks what it found due
    (result,) = swept
    return result


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_an_allocation_renewed_while_the_expiry_sweep_runs_is_not_expired(calendar: Calendar) -> None:
    """PostgreSQL: the sweep found the allocation due in its snapshot, but a renewal holding the lease gave it the
    time to be provisioned: once it commits, the sweep sees the renewal and leaves the lease allocated."""
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(2), at(3))]).leases
    calendar.now = NOW + TTL + timedelta(minutes=1)  # its time to be provisioned is over
    renewed_expiry = to_s(calendar.now + TTL)
    expired = _sweep_during(
        calendar.database, lease, to_s(at(4)), renewed_expiry, calendar.bookings.expire_unprovisioned
    )
    assert expired == []
    (stored,) = calendar.bookings.leases(slice_urn=SLICE)
    assert (stored.state, stored.end, [sliver.expires for sliver in stored.slivers]) == (
        "allocated",
        at(4),
        [calendar.now + TTL],
    )


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_lease_renewed_while_the_retirement_sweep_runs_is_not_retired(calendar: Calendar) -> None:
    """PostgreSQL: the sweep found the provisioned lease's slot over in its snapshot, but a renewal holding the lease
    extended it: once it commits, the sweep leaves the lease provisioned, holding its node."""
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    calendar.bookings.mark_provisioned(lease.id)
    calendar.now = at(2)
    retired = _sweep_during(calendar.database, lease, to_s(at(3)), to_s(at(3)), calendar.bookings.retire_ended)
    assert retired == []
    (stored,) = calendar.bookings.leases(slice_urn=SLICE)
    assert (stored.state, stored.end) == ("provisioned", at(3))
    assert {sliver.allocation_state for sliver in stored.slivers} == {"geni_provisioned"}


def test_the_renewal_read_is_the_leases_and_what_the_renewals_own_read_finds(calendar: Calendar) -> None:
    """``leases_for_renewal`` answers the leases ``leases_holding_slivers`` answers, and for each the rows the
    renewal would read itself (slice expiry, each node's grain and state), in the same one query."""
    two_nodes = [BookingRequest(node_urn("n1"), at(1), at(2)), BookingRequest(node_urn("n2"), at(1), at(2))]
    (two,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, two_nodes).leases
    (one,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n3"), at(3), at(4))]).leases
    calendar.inventory.set_state(node_urn("n2"), "maintenance")  # a node's state is part of what is read
    urns = [sliver.urn for lease in (two, one) for sliver in lease.slivers]
    read = calendar.bookings.leases_for_renewal(urns)
    assert read.leases == calendar.bookings.leases_holding_slivers(urns) == [two, one]
    for lease in (two, one):
        own = calendar.database.fetch_all(booking._READ_RENEWED_LEASE, {"lease_id": lease.id})
        assert [tuple(row) for row in read.checks[lease.id]] == [tuple(row) for row in own]
    assert [row.node_state for row in read.checks[two.id]] == ["usable", "maintenance"]
    assert calendar.bookings.leases_for_renewal([]) == booking.RenewalRead([], {})


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_renewal_of_one_lease_read_by_its_call_is_one_statement_on_postgresql(calendar: Calendar) -> None:
    """With the call's own read (``leases_for_renewal``), the renewal sends only its one statement."""
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    read = calendar.bookings.leases_for_renewal([lease.slivers[0].urn])
    with _statements_starting(calendar.database, "") as run:
        (renewed,) = calendar.bookings.renew_all([(lease.id, at(3), "")], SLICE_EXPIRES, read=read)
    assert [statement.split()[0].upper() for statement in run] == ["WITH"]
    assert renewed == calendar.bookings.leases(slice_urn=SLICE)[0] and renewed.end == at(3)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)  # (SQLite's renewals do not take the read)
def test_a_renewal_given_a_read_the_lease_has_changed_since_renews_it_as_it_is(calendar: Calendar) -> None:
    """The call's read is older than the renewal: renewed meanwhile to another end, the lease is renewed from
    where it is now (the one statement, which writes only if the lease is as read, writes nothing); cancelled
    meanwhile, the renewal is refused and writes nothing."""
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    read = calendar.bookings.leases_for_renewal([lease.slivers[0].urn])
    calendar.bookings.renew(lease.id, at(5))
    (renewed,) = calendar.bookings.renew_all([(lease.id, at(3), "")], SLICE_EXPIRES, read=read)
    assert renewed == calendar.bookings.leases(slice_urn=SLICE)[0] and renewed.end == at(3)
    assert [sliver.end for sliver in renewed.slivers] == [at(3)]
    calendar.bookings.cancel(lease.id)
    before = _stored(calendar)
    with pytest.raises(GeniError) as refused:
        calendar.bookings.renew_all([(lease.id, at(4), "")], SLICE_EXPIRES, read=read)
    assert refused.value.reason == Reason.BAD_ARGS and "cancelled" in refused.value.message
    assert _stored(calendar) == before


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_renewal_given_a_read_made_before_its_node_went_into_maintenance_is_refused(calendar: Calendar) -> None:
    """The call's read saw the node usable; switched to maintenance before the renewal's statement, the extension is
    refused all the same (the statement writes nothing, the unit of work names the node) and nothing is written; a
    shortening given the same read is still allowed."""
    (lease,) = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    read = calendar.bookings.leases_for_renewal([lease.slivers[0].urn])
    calendar.inventory.set_state(node_urn("n1"), "maintenance")
    before = _stored(calendar)
    with _statements_starting(calendar.database, "WITH") as tried, pytest.raises(BookingConflict) as refused:
        calendar.bookings.renew_all([(lease.id, at(3), "")], SLICE_EXPIRES, read=read)
    assert len(tried) == 1, "the one statement (nothing written); the unit of work's checks refused before writing"
    assert [(conflict.node, conflict.problem) for conflict in refused.value.conflicts] == [
        (node_urn("n1"), "is in maintenance")
    ]
    assert _stored(calendar) == before
    (shortened,) = calendar.bookings.renew_all([(lease.id, at(1.5), "")], SLICE_EXPIRES, read=read)
    assert shortened.end == at(1.5) == calendar.bookings.leases(slice_urn=SLICE)[0].end
