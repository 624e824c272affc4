"""The booking's and the cancel's column write path (calendar/booking.py): the records they answer are what a read
of the database gives back, and threads booking several nodes at once (in every order) while cancelling never
double-book, deadlock into an error, or lose a booking — on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Connection, RootTransaction, event, select, text, update

from sfa_omf.calendar import booking
from sfa_omf.calendar.booking import BookingConflict
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.models import Sliver, UserContact
from sfa_omf.calendar.queries import to_s
from sfa_omf.calendar.records import BookingRequest, BookingResult, LeaseRecord, ManifestNode
from sfa_omf.calendar.slices import Contact, Slices
from sfa_omf.errors import GeniError, Reason
from tests.calendar.conftest import NOW, SLICE, SLICE_EXPIRES, Calendar, at, node_urn
from tests.calendar.test_concurrency import assert_no_overlap, held
from tests.calendar.test_renew_path import _statements_starting, _wait_for_a_lock_wait

#: How long a test waits for another thread's call to queue on a lock it holds: a generous bound against a hang only
#: (the thread starts, gets a connection and reaches the lock on a loaded machine), not a timing threshold.
LOCK_WAIT_BOUND_S = 60


def test_booking_and_cancel_records_are_what_the_database_holds(calendar: Calendar) -> None:
    requests = [
        BookingRequest(node_urn("n3"), at(1), at(2), client_id="c", lease_label="first", disk_image="img"),
        BookingRequest(node_urn("n1"), at(1), at(2), client_id="a", lease_label="first"),
        BookingRequest(node_urn("n2"), at(4), at(6), client_id="b", lease_label="second"),
    ]
    booked = calendar.bookings.book(SLICE, SLICE_EXPIRES, requests, owner_urn="urn:publicid:IDN+testbed+user+alice")
    assert [len(lease.slivers) for lease in booked.leases] == [2, 1]
    assert list(booked.leases) == calendar.bookings.leases(slice_urn=SLICE)
    assert Slices(calendar.database).get(SLICE).expires == SLICE_EXPIRES
    cancelled = calendar.bookings.cancel(booked.leases[0].id)
    assert cancelled.state == "cancelled"
    assert {sliver.allocation_state for sliver in cancelled.slivers} == {"geni_unallocated"}
    assert cancelled in calendar.bookings.leases(slice_urn=SLICE, active_only=False)
    assert calendar.bookings.cancel(booked.leases[0].id) == cancelled  # again: nothing changes
    assert calendar.bookings.leases(slice_urn=SLICE) == [booked.leases[1]]
    # The freed node is bookable again, the other still is not.
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    with pytest.raises(BookingConflict) as refused:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(5), at(7))])
    assert [conflict.node for conflict in refused.value.conflicts] == [node_urn("n2")]


def test_a_renewed_slice_credential_updates_the_slice_expiry(calendar: Calendar) -> None:
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    later = SLICE_EXPIRES + timedelta(days=3)
    calendar.bookings.book(SLICE, later, [BookingRequest(node_urn("n1"), at(3), at(4))])
    assert Slices(calendar.database).get(SLICE).expires == later


def test_threads_booking_and_cancelling_several_nodes_never_double_book(calendar: Calendar) -> None:
    nodes = [node_urn(name) for name in ("n1", "n2", "n3")]
    threads_count, rounds = 8, 12
    kept: dict[str, set[str]] = {}  # the leases each thread believes it holds
    cancelled: set[str] = set()
    booked: list[str] = []  # every lease booked, held or cancelled since
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(contender: int) -> None:
        rng = random.Random(contender)
        mine: set[str] = set()
        try:
            for _ in range(rounds):
                start = at(1 + rng.randrange(6) * 0.5)  # windows of 1-2 h over 4 hours: they overlap a lot
                end = start + timedelta(hours=rng.choice((1, 2)))
                chosen = rng.sample(nodes, rng.choice((1, 2, 3)))  # several nodes, in any order
                try:
                    result = calendar.bookings.book(
                        f"urn:publicid:IDN+testbed+slice+w{contender}",
                        SLICE_EXPIRES,
                        [BookingRequest(node, start, end) for node in chosen],
                    )
                    mine.update(lease.id for lease in result.leases)
                    with lock:
                        booked.extend(lease.id for lease in result.leases)
                except BookingConflict:
                    pass
                if mine and rng.random() < 0.4:
                    gone = rng.choice(sorted(mine))
                    assert calendar.bookings.cancel(gone).state == "cancelled"
                    mine.discard(gone)
                    with lock:
                        cancelled.add(gone)
        except BaseException as exc:  # reported below: a thread must not fail silently
            errors.append(exc)
        with lock:
            kept[str(contender)] = mine

    threads = [threading.Thread(target=run, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert_no_overlap(calendar.database)
    held_leases = {lease.id for lease in calendar.bookings.leases()}
    assert held_leases == set().union(*kept.values())
    assert not held_leases & cancelled
    assert len(held(calendar.database)) == sum(len(lease.slivers) for lease in calendar.bookings.leases())
    assert booked  # the first booking checked, on an empty calendar, cannot have met a conflict
    assert held_leases | cancelled == set(booked)


def test_renew_writes_each_sliver_its_own_expiry(calendar: Calendar) -> None:
    """Slivers of one lease in different allocation states (one provisioned) on nodes whose id order is not their
    URN order: each sliver gets the expiry of its own state, and the answer is what the database holds (a review
    found the statements paired by position, once)."""
    calendar.add_nodes("zz", "aa")  # ids in this order, URNs in the other
    booked = calendar.bookings.book(
        SLICE,
        SLICE_EXPIRES,
        [BookingRequest(node_urn("zz"), at(1), at(2)), BookingRequest(node_urn("aa"), at(1), at(2))],
    )
    lease = booked.leases[0]
    provisioned = next(sliver.urn for sliver in lease.slivers if sliver.node == node_urn("zz"))
    with calendar.database.write() as session:
        session.execute(update(Sliver).where(Sliver.urn == provisioned).values(allocation_state="geni_provisioned"))
    renewed = calendar.bookings.renew(lease.id, at(3))
    assert renewed == calendar.bookings.leases(slice_urn=SLICE)[0]
    expiries = {sliver.node: sliver.expires for sliver in renewed.slivers}
    assert expiries[node_urn("zz")] == at(3), "a provisioned sliver lives to the lease's end"
    assert expiries[node_urn("aa")] < at(3), "an allocation still expires unless provisioned"


def test_renewals_and_bookings_racing_for_one_window_never_double_book(calendar: Calendar) -> None:
    """Renew's column path: a lease renewed into a window while other slices book it. Each round exactly one of
    them gets the window, whoever it is, and the losers are refused as a conflict."""
    for round_number in range(6):
        base = 10 * round_number  # each round on hours of its own
        outcomes = _race_a_renewal_against_bookings(calendar, base)
        assert sorted(outcomes).count("refused") == 3 and len(outcomes) == 4, outcomes
        renewed_end = calendar.bookings.leases(slice_urn=SLICE)[-1].end
        assert renewed_end == (at(base + 3) if "renewed" in outcomes else at(base + 2))
        assert_no_overlap(calendar.database)


def _race_a_renewal_against_bookings(calendar: Calendar, base: float) -> list[str]:
    """One lease of n1 at [base+1, base+2) renewed to base+3 while three slices book [base+2, base+3), all at once:
    what became of each ("renewed", "booked" or "refused")."""
    node = node_urn("n1")
    booked = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node, at(base + 1), at(base + 2))])
    barrier = threading.Barrier(4)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def attempt(write: Callable[[], object], success: str) -> None:
        barrier.wait()
        try:
            write()
            outcomes.append(success)
        except GeniError as exc:  # a conflict seen by the check, or by PostgreSQL's exclusion constraint
            if exc.reason == Reason.BOOKING_CONFLICT:
                outcomes.append("refused")
            else:
                errors.append(exc)
        except BaseException as exc:  # reported below: a thread must not fail silently
            errors.append(exc)

    def renew() -> object:
        return calendar.bookings.renew(booked.leases[0].id, at(base + 3))

    def booking(contender: int) -> Callable[[], object]:
        slice_urn = f"urn:publicid:IDN+testbed+slice+r{contender}"
        return lambda: calendar.bookings.book(
            slice_urn, SLICE_EXPIRES, [BookingRequest(node, at(base + 2), at(base + 3))]
        )

    writes = [(renew, "renewed")] + [(booking(contender), "booked") for contender in range(3)]
    threads = [threading.Thread(target=attempt, args=write) for write in writes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return outcomes


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_cancel_that_waited_for_a_writer_answers_the_slivers_it_wrote(calendar: Calendar) -> None:
    """PostgreSQL: the cancel's UPDATE of the lease waits for the writer holding the row, then re-checks its
    condition on the row that writer left; the slivers' UPDATE ... RETURNING runs after, so the answer has what the
    writer it waited for committed."""
    import time

    from sqlalchemy import text

    booked = calendar.bookings.book(
        SLICE,
        SLICE_EXPIRES,
        [BookingRequest(node_urn("n1"), at(1), at(2)), BookingRequest(node_urn("n2"), at(1), at(2))],
    )
    lease_id = booked.leases[0].id
    answers: list[object] = []
    with calendar.database.engine.connect() as writer:
        with writer.begin():  # what Provision does: the lease locked, its slivers changed, then the commit
            writer.execute(text("SELECT id FROM lease WHERE id = :id FOR UPDATE"), {"id": lease_id})
            writer.execute(
                text("UPDATE sliver SET operational_state = 'geni_ready' WHERE lease_id = :id"), {"id": lease_id}
            )
            cancelling = threading.Thread(target=lambda: answers.append(calendar.bookings.cancel(lease_id)))
            cancelling.start()
            waiting = (
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            # Autocommit: in a transaction, pg_stat_activity is read once and then repeated (a snapshot).
            with calendar.database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
                deadline = time.monotonic() + LOCK_WAIT_BOUND_S  # until the cancel waits for the lease's lock
                while not watcher.execute(text(waiting)).scalar():
                    if time.monotonic() > deadline:
                        pytest.fail("the cancel never waited for the lease's lock")
                    time.sleep(0.05)
        cancelling.join(timeout=30)
    (cancelled,) = answers
    assert isinstance(cancelled, type(booked.leases[0]))
    assert cancelled.state == "cancelled"
    assert {sliver.operational_state for sliver in cancelled.slivers} == {"geni_ready"}


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
@pytest.mark.parametrize("change", ["shut down", "update users", "provision with users"])
def test_a_slice_change_waits_for_a_booking_of_the_slice_under_way(calendar: Calendar, change: str) -> None:
    """Shutdown, geni_update_users and a Provision sending users take the slice's advisory lock, as a booking does:
    a Shutdown meeting a booking under way waits for it (then sees and cancels its lease), and users written by two
    calls are written one after the other."""
    import time

    from sqlalchemy import text

    from sfa_omf.calendar.queries import advisory_key

    slices = Slices(calendar.database)
    booked = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    done: list[str] = []

    def act() -> None:
        try:
            act_once()
        except BaseException as exc:  # seen by the test, not lost with the thread
            done.append(f"failed: {exc!r}")

    def act_once() -> None:
        if change == "shut down":
            slices.set_shut_down(SLICE, True)
        elif change == "provision with users":
            users = {"urn:publicid:IDN+testbed+user+bob": ["ssh-ed25519 AAAA bob"]}
            calendar.bookings.mark_provisioned_all([booked.leases[0].id], SLICE, users)
        else:
            slices.update_users(SLICE, {"urn:publicid:IDN+testbed+user+bob": ["ssh-ed25519 AAAA bob"]})
        done.append(change)

    with calendar.database.engine.connect() as booking, booking.begin():  # a booking of the slice, under way
        booking.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key(SLICE)})
        acting = threading.Thread(target=act)
        acting.start()
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' "
            "AND datname = current_database()"
        )
        # Autocommit: in a transaction, pg_stat_activity is read once and then repeated (a snapshot).
        with calendar.database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
            deadline = time.monotonic() + LOCK_WAIT_BOUND_S
            while not watcher.execute(text(waiting)).scalar():
                if time.monotonic() > deadline:
                    pytest.fail(f"{change} did not wait for the slice's lock: {done}")
                time.sleep(0.05)
        assert done == []  # still waiting while the booking holds the lock
    acting.join(timeout=30)
    assert done == [change]


def test_the_slice_view_of_a_booking_is_what_reads_after_it_give(calendar: Calendar) -> None:
    alice, bob = "urn:publicid:IDN+testbed+user+alice", "urn:publicid:IDN+testbed+user+bob"
    first = calendar.bookings.book(
        SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))], users={alice: ["ssh-ed25519 AAAA a"]}
    )
    assert first.slice_view is None  # only when asked for
    for users in ({}, {bob: ["ssh-ed25519 BBBB b"], alice: ["ssh-ed25519 CCCC c"]}):
        hour = 3 if not users else 5
        booked = calendar.bookings.book(
            SLICE,
            SLICE_EXPIRES,
            [
                BookingRequest(node_urn("n2"), at(hour), at(hour + 1)),
                BookingRequest(node_urn("n3"), at(hour), at(hour + 1)),
            ],
            users=users,
            read_slice=True,
        )
        view = booked.slice_view
        assert view is not None
        assert list(view.leases) == calendar.bookings.leases(slice_urn=SLICE)
        assert view.users == Slices(calendar.database).get(SLICE).users
        listed = calendar.inventory.list_nodes(component_ids={node_urn(name) for name in ("n1", "n2", "n3")})
        assert view.nodes == {node.component_id: ManifestNode(node.component_name, node.exclusive) for node in listed}
    assert [user.user_urn for user in view.users] == [alice, bob]
    assert view.users[0].ssh_keys == ("ssh-ed25519 AAAA a", "ssh-ed25519 CCCC c")


def test_the_slice_view_of_a_one_node_booking_is_what_reads_after_it_give(
    calendar: Calendar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One node: on PostgreSQL the booking's one statement (lease, sliver, bump) also reads the slice's other leases,
    and the booked lease is added to them from what was written. The view is what reads after give, with leases
    before and after the new one and one starting at the same time (ordered by id: the new lease's id is made to
    sort first, before the older one's), and no read after the insert."""
    calendar.add_nodes("n4")
    alice = "urn:publicid:IDN+testbed+user+alice"
    for node, start, end in (("n1", 1, 2), ("n2", 5, 6), ("n3", 3, 4)):
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn(node), at(start), at(end))])
    calendar.bookings.book(  # another slice's lease: not in the view
        "urn:publicid:IDN+testbed+slice+other", SLICE_EXPIRES, [BookingRequest(node_urn("n4"), at(1), at(2))]
    )
    ids = iter(range(1, 100))
    monkeypatch.setattr(booking.uuid, "uuid4", lambda: uuid.UUID(int=next(ids)))  # 00000000-...-000000000001, ...
    with _statements_starting(calendar.database, "") as run:
        booked = calendar.bookings.book(
            SLICE,
            SLICE_EXPIRES,
            [BookingRequest(node_urn("n4"), at(3), at(5), client_id="mine", disk_image="urn:image+one")],
            users={alice: ["ssh-ed25519 AAAA a"]},
            read_slice=True,
        )
    view = booked.slice_view
    assert view is not None
    assert list(view.leases) == calendar.bookings.leases(slice_urn=SLICE)
    assert [lease.start for lease in view.leases] == [at(1), at(3), at(3), at(5)]
    assert view.leases[1] == booked.leases[0]  # its id sorts before the other lease starting at(3)
    assert booked.leases[0] in view.leases
    assert view.users == Slices(calendar.database).get(SLICE).users
    listed = calendar.inventory.list_nodes(component_ids={node_urn(name) for name in ("n1", "n2", "n3", "n4")})
    assert view.nodes == {node.component_id: ManifestNode(node.component_name, node.exclusive) for node in listed}
    statements = [" ".join(text.split()).upper() for text in run]
    if not calendar.database.is_sqlite:
        assert statements[-1].startswith("WITH NEW_LEASE AS"), statements  # nothing read after it
        # The windows the node holds came with its locked row, not in a read of their own.
        assert not [text for text in statements if text.startswith("SELECT SLIVER.NODE_ID")], statements
        assert len([text for text in statements if "FOR UPDATE OF NODE" in text]) == 1, statements


def test_a_cancel_of_a_lease_that_is_not_active_writes_nothing(calendar: Calendar) -> None:
    booked = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    lease_id = booked.leases[0].id
    with calendar.database.read() as session:
        before = read_generation(session)
    calendar.bookings.cancel(lease_id)
    with calendar.database.read() as session:
        assert read_generation(session) == before + 1
    calendar.bookings.cancel(lease_id)
    with calendar.database.read() as session:
        assert read_generation(session) == before + 1, "nothing changed: cached answers stay valid"
    with pytest.raises(GeniError) as missing:
        calendar.bookings.cancel("no-such-lease")
    assert missing.value.reason == Reason.NOT_FOUND


def test_the_callers_contact_is_written_when_it_changed_only(calendar: Calendar) -> None:
    alice = "urn:publicid:IDN+testbed+user+alice"

    def stored() -> list[tuple[str, int]]:
        with calendar.database.read() as session:
            return [tuple(row) for row in session.execute(select(UserContact.gid_email, UserContact.updated_s))]

    upserts: list[str] = []

    def count_upserts(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO USER_CONTACT"):
            upserts.append(statement)

    # On PostgreSQL the booking reads the stored e-mail with its locks and writes only a changed one; SQLite runs
    # the upsert, which changes nothing when the e-mail is the same.
    skips_unchanged = calendar.database.engine.dialect.name == "postgresql"
    event.listen(calendar.database.engine, "before_cursor_execute", count_upserts)
    for hour, email in ((1, "alice@one.example"), (3, "alice@two.example"), (5, "alice@two.example")):
        calendar.now = NOW + timedelta(minutes=hour)
        contact = Contact(alice, email)
        request = [BookingRequest(node_urn("n1"), at(hour), at(hour + 1))]
        upserts.clear()
        calendar.bookings.book(SLICE, SLICE_EXPIRES, request, owner_urn=alice, contact=contact)
        assert len(upserts) == (0 if hour == 5 and skips_unchanged else 1)
        if hour == 1:
            assert stored() == [("alice@one.example", to_s(calendar.now))]
        if hour == 3:
            changed_at = to_s(calendar.now)
            assert stored() == [("alice@two.example", changed_at)]
    event.remove(calendar.database.engine, "before_cursor_execute", count_upserts)
    assert stored() == [("alice@two.example", changed_at)], "the same e-mail again is not rewritten"


def test_the_leases_holding_named_slivers(calendar: Calendar) -> None:
    """Only the active leases holding a named sliver, with all their slivers: not the rest of their slice."""
    other = "urn:publicid:IDN+testbed+slice+other"
    first = calendar.bookings.book(
        SLICE,
        SLICE_EXPIRES,
        [BookingRequest(node_urn("n1"), at(1), at(2)), BookingRequest(node_urn("n2"), at(1), at(2))],
    )
    second = calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(3), at(4))])
    third = calendar.bookings.book(other, SLICE_EXPIRES, [BookingRequest(node_urn("n3"), at(1), at(2))])
    (lease,) = first.leases
    named = lease.slivers[0].urn
    assert calendar.bookings.leases_holding_slivers([named]) == [lease], "its whole lease, not its slice's others"
    both = [named, second.leases[0].slivers[0].urn]
    assert calendar.bookings.leases_holding_slivers(both) == calendar.bookings.leases(slice_urn=SLICE)
    across = [named, third.leases[0].slivers[0].urn]
    assert {found.slice_urn for found in calendar.bookings.leases_holding_slivers(across)} == {SLICE, other}
    calendar.bookings.cancel(lease.id)
    assert calendar.bookings.leases_holding_slivers([named]) == [], "a cancelled lease holds nothing"
    assert calendar.bookings.leases_holding_slivers(["urn:publicid:IDN+testbed+sliver+none"]) == []


def test_a_booking_of_one_node_counts_once_in_the_generation_whatever_else_it_writes(calendar: Calendar) -> None:
    """On PostgreSQL the lease, its sliver and the generation's bump are one statement; the unit of work is still
    counted once when it also writes the new slice, its users and the caller's contact (and on SQLite likewise)."""
    alice = "urn:publicid:IDN+testbed+user+alice"

    def generation() -> int:
        with calendar.database.read() as session:
            return read_generation(session)

    for number, extras in enumerate(
        [
            {},  # the slice exists already (booked below first), nothing else written
            {"users": {alice: ["ssh-ed25519 AAAA a"]}, "contact": Contact(alice, "alice@example.org")},
        ]
    ):
        slice_urn = f"urn:publicid:IDN+testbed+slice+counted{number}"
        if not extras:
            calendar.bookings.book(slice_urn, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
        before = generation()
        with _statements_starting(calendar.database, "") as sent:
            (lease,) = calendar.bookings.book(
                slice_urn, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(3 + number), at(4 + number))], **extras
            ).leases
        statements = [" ".join(statement.split()[:3]).upper() for statement in sent]
        assert generation() == before + 1
        assert calendar.bookings.leases(slice_urn=slice_urn)[-1] == lease
        if not calendar.database.is_sqlite:
            assert "WITH NEW_LEASE AS" in statements
            assert not [text for text in statements if text.startswith(("INSERT INTO LEASE", "INSERT INTO SLIVER"))]
            assert not [text for text in statements if "CALENDAR_GENERATION" in text]
    assert Slices(calendar.database).get("urn:publicid:IDN+testbed+slice+counted1").users[0].user_urn == alice


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_booking_whose_slot_is_taken_before_its_statement_runs_is_refused_naming_the_holder(
    calendar: Calendar,
) -> None:
    """The slot was free when the booking checked it; a sliver that starts holding it commits just before the
    booking's one statement (lease, sliver, bump) runs: the exclusion constraint refuses the statement whole, the
    booking runs again and names the holder; nothing of it is written, the generation not counted."""
    other, generation = _a_released_slot_of_another_slice(calendar)
    tried: list[str] = []

    def take_the_slot(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.startswith("WITH new_lease"):
            tried.append(statement)
            if len(tried) == 1:  # (from another connection, committed: the database sees it, the check did not)
                with calendar.database.engine.begin() as connection:
                    connection.execute(update(Sliver).where(Sliver.lease_id == other.id).values(holds_node=True))

    event.listen(calendar.database.engine, "before_cursor_execute", take_the_slot)
    try:
        with pytest.raises(BookingConflict) as refused:
            calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    finally:
        event.remove(calendar.database.engine, "before_cursor_execute", take_the_slot)
    assert len(tried) == 1, "refused by the constraint once; the second attempt's check saw the holder"
    _assert_refused_for_the_slot_and_nothing_written(calendar, refused.value, generation)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_booking_that_waited_for_a_racers_node_lock_is_refused_naming_the_racer(calendar: Calendar) -> None:
    """The racer holds the node's row (as a booking of it does) and its sliver takes the slot; the booking's locking
    read, which also reads what the node holds, waits for it. The racer commits: the read's snapshot, taken before
    the wait, does not show its sliver, so the booking's insert is refused by the exclusion constraint and the
    booking runs again: it names the racer's slot, writes nothing, and the generation is not counted."""
    other, generation = _a_released_slot_of_another_slice(calendar)
    inserts: list[str] = []
    locking_reads: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.startswith("WITH new_lease"):
            inserts.append(statement)
        if "FOR UPDATE OF node" in statement:
            locking_reads.append(statement)

    refused: list[BaseException] = []

    def book() -> None:
        try:
            calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
        except BaseException as exc:  # (the test thread's outcome, asserted below)
            refused.append(exc)

    event.listen(calendar.database.engine, "before_cursor_execute", note)
    try:
        with calendar.database.engine.connect() as racer, racer.begin():
            racer.execute(text("SELECT id FROM node WHERE component_id = :node FOR UPDATE"), {"node": node_urn("n1")})
            racer.execute(update(Sliver).where(Sliver.lease_id == other.id).values(holds_node=True))
            booking = threading.Thread(target=book)
            booking.start()
            waiting = _wait_for_a_lock_wait(calendar.database)
        booking.join(timeout=30)
    finally:
        event.remove(calendar.database.engine, "before_cursor_execute", note)
    assert "FOR UPDATE OF node" in waiting, waiting
    assert len(inserts) == 1, "refused by the constraint once; the second attempt's read saw the racer"
    assert len(locking_reads) == 2
    (conflict,) = refused
    assert isinstance(conflict, BookingConflict), conflict
    _assert_refused_for_the_slot_and_nothing_written(calendar, conflict, generation)


def _a_released_slot_of_another_slice(calendar: Calendar, node: str = "n1") -> tuple[LeaseRecord, int]:
    """A lease of another slice on ``node`` at(1)..at(2), cancelled (its sliver stays, holding nothing: a test makes
    it hold the slot again to race a booking), and the generation then."""
    other_slice = "urn:publicid:IDN+testbed+slice+other"
    (other,) = calendar.bookings.book(other_slice, SLICE_EXPIRES, [BookingRequest(node_urn(node), at(1), at(2))]).leases
    calendar.bookings.cancel(other.id)
    with calendar.database.read() as session:
        return other, read_generation(session)


def _assert_refused_for_the_slot_and_nothing_written(
    calendar: Calendar, refused: BookingConflict, generation: int
) -> None:
    assert [(found.node, found.clashing) for found in refused.conflicts] == [(node_urn("n1"), ((at(1), at(2)),))]
    assert calendar.bookings.leases(slice_urn=SLICE, active_only=False) == []
    with calendar.database.read() as session:
        assert read_generation(session) == generation
    assert_no_overlap(calendar.database)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_slot_released_while_the_booking_waited_for_the_node_is_booked(calendar: Calendar) -> None:
    """A racer releases the slot's holder and holds the node's row (as moving an external hold does) while the
    booking's locking read waits: that read's snapshot still shows the slot held, so it is read again after the lock
    before refusing anything, and the booking gets the slot."""
    (held,) = calendar.bookings.book(
        "urn:publicid:IDN+testbed+slice+other", SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]
    ).leases
    outcome: list[object] = []

    def book() -> None:
        try:
            outcome.append(calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]))
        except BaseException as exc:  # (the test thread's outcome, asserted below)
            outcome.append(exc)

    with calendar.database.engine.connect() as racer, racer.begin():
        racer.execute(update(Sliver).where(Sliver.lease_id == held.id).values(holds_node=False))
        racer.execute(text("UPDATE lease SET state = 'cancelled' WHERE id = :id"), {"id": held.id})
        racer.execute(text("SELECT id FROM node WHERE component_id = :node FOR UPDATE"), {"node": node_urn("n1")})
        booking = threading.Thread(target=book)
        booking.start()
        waiting = _wait_for_a_lock_wait(calendar.database)
    booking.join(timeout=30)
    assert "FOR UPDATE OF node" in waiting, waiting
    (result,) = outcome
    assert isinstance(result, BookingResult), result
    assert [(lease.start, lease.end) for lease in result.leases] == [(at(1), at(2))]
    assert_no_overlap(calendar.database)


def _race_each_locking_read(
    calendar: Calendar, before_each: list[Callable[[dict[str, LeaseRecord]], str | None]]
) -> tuple[BookingResult, list[str]]:
    """A best-effort booking of n1..n4 at(1)..at(2), each of whose first locking reads is preceded by one of
    ``before_each``, given the released slot of another slice on each node: it may change the calendar (committed at
    once) and answers the node a racer then takes (it holds the node's row and makes that slot hold it again; it
    commits once the booking's read waits for it), or None. Answers the booking and its locking reads."""
    calendar.add_nodes("n4")
    names = ["n1", "n2", "n3", "n4"]
    released = {name: _a_released_slot_of_another_slice(calendar, name)[0] for name in names}
    locking_reads: list[str] = []
    racers: list[threading.Thread] = []
    booking_thread = threading.current_thread()

    def commit_once_waited(racer: Connection, transaction: RootTransaction) -> None:
        try:
            _wait_for_a_lock_wait(calendar.database)
            transaction.commit()
        finally:
            racer.close()  # (rolls back what was not committed: the booking never waits for ever)

    def race(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "FOR UPDATE OF node" not in statement or threading.current_thread() is not booking_thread:
            return
        locking_reads.append(statement)
        if len(locking_reads) > len(before_each):
            return
        name = before_each[len(locking_reads) - 1](released)
        if name is None:
            return
        racer = calendar.database.engine.connect()
        transaction = racer.begin()
        racer.execute(text("SELECT id FROM node WHERE component_id = :node FOR UPDATE"), {"node": node_urn(name)})
        racer.execute(update(Sliver).where(Sliver.lease_id == released[name].id).values(holds_node=True))
        racers.append(threading.Thread(target=commit_once_waited, args=(racer, transaction)))
        racers[-1].start()

    event.listen(calendar.database.engine, "before_cursor_execute", race)
    try:
        result = calendar.bookings.book(
            SLICE, SLICE_EXPIRES, [BookingRequest(node_urn(name), at(1), at(2)) for name in names], best_effort=True
        )
    finally:
        event.remove(calendar.database.engine, "before_cursor_execute", race)
        for racer_thread in racers:
            racer_thread.join(timeout=30)
    assert_no_overlap(calendar.database)
    return result, locking_reads


def _booked_and_refused(result: BookingResult) -> tuple[list[str], list[str]]:
    return (
        sorted(sliver.node for lease in result.leases for sliver in lease.slivers),
        sorted(conflict.node for conflict in result.refused),
    )


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_best_effort_booking_raced_at_every_attempt_is_settled_by_its_second(calendar: Calendar) -> None:
    """Before each of the booking's locking reads a racer takes one more of its nodes and commits while the read
    waits for it. The first attempt's read misses the racer (its snapshot is older), its insert is refused by the
    exclusion constraint; the second books the rest, refusing the two nodes the racers took: two attempts."""
    result, locking_reads = _race_each_locking_read(calendar, [lambda _: "n1", lambda _: "n2"])
    assert len(locking_reads) == 2, locking_reads
    assert _booked_and_refused(result) == ([node_urn("n3"), node_urn("n4")], [node_urn("n1"), node_urn("n2")])


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_an_attempt_after_a_refused_insert_reads_what_the_nodes_hold_after_locking_them(calendar: Calendar) -> None:
    """The first attempt misses a racer on n1 and its insert is refused. Before the second attempt's locking read the
    first racer's slot is released again and another racer takes n2 during the wait: that read shows no clash at all,
    yet the second attempt (reading after the locks) sees n2 taken, books n1, n3, n4 and refuses n2, without a third
    attempt."""

    def release_n1_then_take_n2(released: dict[str, LeaseRecord]) -> str:
        with calendar.database.engine.begin() as connection:
            connection.execute(update(Sliver).where(Sliver.lease_id == released["n1"].id).values(holds_node=False))
        return "n2"

    result, locking_reads = _race_each_locking_read(calendar, [lambda _: "n1", release_n1_then_take_n2])
    assert len(locking_reads) == 2, locking_reads
    assert _booked_and_refused(result) == (
        [node_urn("n1"), node_urn("n3"), node_urn("n4")],
        [node_urn("n2")],
    )


def test_a_refused_booking_reads_the_conflicts_details_once(calendar: Calendar) -> None:
    """A booking of a held slot: on PostgreSQL the clash is read again after the locks before the refusal, and
    the details (when the node is next free, outside labels) are read once, for the clash that stands."""
    calendar.bookings.book(
        "urn:publicid:IDN+testbed+slice+other", SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))]
    )
    with _statements_starting(calendar.database, "") as run, pytest.raises(BookingConflict) as refused:
        calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    assert [(found.node, found.clashing, found.next_free_start) for found in refused.value.conflicts] == [
        (node_urn("n1"), ((at(1), at(2)),), at(2))
    ]
    sliver_reads = [text for text in run if " ".join(text.split()).upper().startswith("SELECT SLIVER.NODE_ID")]
    # The details: what the node holds later (its next free start) and its holds from outside sfa-omf, once each.
    # SQLite's locking read is current; on PostgreSQL the windows are read again after the locks first.
    assert len(sliver_reads) == (2 if calendar.database.is_sqlite else 3), run
