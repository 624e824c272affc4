"""A slice's leases kept between Status calls (calendar/kept_reads.py) while the calendar's change token
(calendar/changes.py) is unchanged: on SQLite and PostgreSQL, a write of this process is seen by the next read, a
write of another connection (another process's, on PostgreSQL another host's) too: within SQLITE_LOOK_S on SQLite
(data_version asked that often at most), once its notification arrives on PostgreSQL; a kept read is never used
after a write that committed while it was read."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from sfa_omf.calendar import changes
from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.changes import CHANNEL, SQLITE_LOOK_S
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.kept_reads import KeptSliceLeases
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, node_urn
from tests.postgres import empty_postgres

OTHER_SLICE = "urn:publicid:IDN+testbed+slice+other"
#: How long a notification may take to reach the listening thread before a test fails (a hang, not a time measured).
NOTICE_LIMIT_S = 30.0


def lease_reads(database: Database) -> list[str]:
    """The SQL of every statement reading a slice's leases on ``database`` from now on (a list that grows)."""
    seen: list[str] = []

    def note(_connection: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if "FROM lease JOIN slice" in statement and "slice.urn =" in statement:
            seen.append(statement)

    event.listen(database.engine, "before_cursor_execute", note)
    return seen


def wait_for_token(database: Database) -> None:
    """Until the database's changes are told (on PostgreSQL the listening thread has started)."""
    deadline = time.monotonic() + NOTICE_LIMIT_S
    while database.changes.token() is None:
        assert time.monotonic() < deadline, "no change token: the calendar's changes are not listened for"
        time.sleep(0.01)


def settled(kept: KeptSliceLeases, slice_urn: str, reads: list[str]) -> list[Any]:
    """The slice's leases once a read of them costs no statement (on PostgreSQL this process's own writes notify it
    too, a moment later: one read more after each)."""
    deadline = time.monotonic() + NOTICE_LIMIT_S
    while True:
        before = len(reads)
        leases = kept.leases(slice_urn)
        if len(reads) == before:
            return leases
        assert time.monotonic() < deadline, "the slice's leases are never kept"
        time.sleep(0.005)


def until(condition: Callable[[], bool], why: str) -> None:
    deadline = time.monotonic() + NOTICE_LIMIT_S
    while not condition():
        assert time.monotonic() < deadline, why
        time.sleep(0.005)


def book(calendar: Calendar, node: str, hours: float = 1) -> None:
    """Book ``node`` for the slice, from ``hours`` ahead for an hour."""
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn(node), at(hours), at(hours + 1))])


def nodes_of(leases: list[Any]) -> list[tuple[str, ...]]:
    return [lease.nodes for lease in leases]


@pytest.fixture
def other(database: Database) -> Iterator[Calendar]:
    """The same calendar through another Database: other connections, as another process's (or host's)."""
    second = Database(database.url)
    yield Calendar(second, Policy())
    second.dispose()


def test_a_slice_read_again_costs_no_statement_until_the_calendar_changes(calendar: Calendar) -> None:
    kept = KeptSliceLeases(calendar.bookings)
    reads = lease_reads(calendar.database)
    wait_for_token(calendar.database)
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
    first = kept.leases(SLICE)
    assert [lease.nodes for lease in first] == [(node_urn("n1"),)]
    assert settled(kept, SLICE, reads) == first
    read_before = len(reads)
    for _ in range(5):
        assert kept.leases(SLICE) == first
    assert len(reads) == read_before
    # A write of this process: seen by the very next read.
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n2"), at(3), at(4))])
    assert [lease.nodes for lease in kept.leases(SLICE)] == [(node_urn("n1"),), (node_urn("n2"),)]
    (lease, _) = settled(kept, SLICE, reads)
    calendar.bookings.cancel(lease.id)
    assert [lease.nodes for lease in kept.leases(SLICE)] == [(node_urn("n2"),)]


def test_a_write_of_another_connection_is_seen(calendar: Calendar, other: Calendar) -> None:
    kept = KeptSliceLeases(calendar.bookings)
    reads = lease_reads(calendar.database)
    wait_for_token(calendar.database)
    book(calendar, "n2", hours=5)
    assert nodes_of(settled(kept, SLICE, reads)) == [(node_urn("n2"),)]
    book(other, "n1")
    both = [(node_urn("n1"),), (node_urn("n2"),)]
    until(lambda: len(kept.leases(SLICE)) == 2, "the other connection's booking was never seen")
    assert nodes_of(kept.leases(SLICE)) == both
    assert nodes_of(settled(kept, SLICE, reads)) == both  # kept again


def test_a_write_committed_while_the_slice_is_read_is_not_missed(
    calendar: Calendar, other: Calendar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token is taken before the read: a booking committed by another connection right after the leases were
    read (what was read does not hold it) makes the next read go to the database. (A token taken after the read
    would keep what was read under the new token: never read again on SQLite.)"""
    kept = KeptSliceLeases(calendar.bookings)
    wait_for_token(calendar.database)
    book(calendar, "n2", hours=5)
    read = calendar.bookings.leases

    def read_then_book(**filters: Any) -> list[Any]:
        found = read(**filters)
        other.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])
        return found

    monkeypatch.setattr(calendar.bookings, "leases", read_then_book)
    assert nodes_of(kept.leases(SLICE)) == [(node_urn("n2"),)]  # read before the booking committed
    monkeypatch.setattr(calendar.bookings, "leases", read)
    until(lambda: len(kept.leases(SLICE)) == 2, "the booking made during the read was never seen")
    assert nodes_of(kept.leases(SLICE)) == [(node_urn("n1"),), (node_urn("n2"),)]


def test_a_rolled_back_write_costs_a_read_never_a_stale_answer(calendar: Calendar) -> None:
    kept = KeptSliceLeases(calendar.bookings)
    reads = lease_reads(calendar.database)
    wait_for_token(calendar.database)
    book(calendar, "n1")
    settled(kept, SLICE, reads)
    read_before = len(reads)
    with pytest.raises(RuntimeError), calendar.database.write():
        raise RuntimeError("the unit of work fails")
    kept.leases(SLICE)
    assert len(reads) == read_before + 1


def test_slices_kept_are_bounded(calendar: Calendar) -> None:
    kept = KeptSliceLeases(calendar.bookings, size=2)
    third = "urn:publicid:IDN+testbed+slice+third"
    for number, slice_urn in enumerate((SLICE, OTHER_SLICE, third)):
        start = at(1 + 2 * number)
        calendar.bookings.book(slice_urn, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), start, at(2 + 2 * number))])
    wait_for_token(calendar.database)
    reads = lease_reads(calendar.database)
    settled(kept, third, reads)  # (the bookings' own notifications come and go on PostgreSQL)
    kept.leases(OTHER_SLICE)
    settled(kept, OTHER_SLICE, reads)
    reads.clear()
    for slice_urn in (SLICE, OTHER_SLICE, SLICE, third):
        kept.leases(slice_urn)
    assert len(reads) == 2  # SLICE read again was kept; the third dropped OTHER_SLICE, kept longest
    kept.leases(SLICE)
    assert len(reads) == 2  # still kept
    kept.leases(OTHER_SLICE)
    assert len(reads) == 3  # dropped when the third slice came


def test_a_slice_holding_nothing_is_read_every_time(calendar: Calendar) -> None:
    """Not kept: an empty answer just after another process booked the slice's first lease would tell the client
    it has nothing (an error for v2's SliverStatus) until the notification arrives."""
    kept = KeptSliceLeases(calendar.bookings)
    reads = lease_reads(calendar.database)
    wait_for_token(calendar.database)
    for _ in range(3):
        assert kept.leases(SLICE) == []
    assert len(reads) == 3


def test_sqlite_is_asked_for_other_processes_writes_once_a_look_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the file's data_version is asked once in SQLITE_LOOK_S at most, however many Status calls take a
    token meanwhile (each ask is a statement, a wait); another connection's commit is seen by the first look after
    it. The clock is the test's: it stands still, then passes the look's time."""
    asked: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)
        connection.set_trace_callback(asked.append)
        return connection

    now = [1000.0]
    monkeypatch.setattr(changes.sqlite3, "connect", traced)
    monkeypatch.setattr(changes, "monotonic", lambda: now[0])
    database = Database(sqlite_url(str(tmp_path / "calendar.sqlite")))
    database.upgrade()
    other = Database(database.url)
    try:
        Calendar(database, Policy()).add_nodes("n1", "n2")
        kept = KeptSliceLeases(Bookings(database))
        book(Calendar(other, Policy()), "n1")
        assert nodes_of(kept.leases(SLICE)) == [(node_urn("n1"),)]
        token = database.changes.token()
        assert token is not None
        for _ in range(100):
            assert database.changes.token() == token
        assert asked == ["PRAGMA data_version"]  # the first look's, believed while the clock stands
        book(Calendar(other, Policy()), "n2", hours=3)
        now[0] += SQLITE_LOOK_S
        assert database.changes.token() != token
        assert asked == ["PRAGMA data_version"] * 2
        assert nodes_of(kept.leases(SLICE)) == [(node_urn("n1"),), (node_urn("n2"),)]
    finally:
        other.dispose()
        database.dispose()


def test_without_a_token_every_read_goes_to_the_database(tmp_path: Path) -> None:
    assert Database("sqlite://").changes.token() is None  # no file to ask
    database = Database(sqlite_url(str(tmp_path / "calendar.sqlite")))
    database.upgrade()
    try:
        calendar = Calendar(database, Policy())
        calendar.add_nodes("n1")
        book(calendar, "n1")
        kept = KeptSliceLeases(calendar.bookings)
        reads = lease_reads(database)
        kept.leases(SLICE)
        kept.leases(SLICE)
        assert len(reads) == 1
        database.dispose()  # no token any more
        assert database.changes.token() is None
        kept.leases(SLICE)
        kept.leases(SLICE)
        assert len(reads) == 3
    finally:
        database.dispose()


def on_listeners(database: Database, what: str) -> list[Any]:
    """``what`` for each session of the database's that listens for its changes (changes.py's application name)."""
    with database.engine.begin() as connection:
        query = (
            f"SELECT {what} FROM pg_stat_activity WHERE application_name = 'sfa-omf calendar changes' "
            "AND datname = current_database()"
        )
        return [row[0] for row in connection.execute(text(query))]


@pytest.fixture
def postgresql_calendar() -> Iterator[Calendar]:
    database = Database(empty_postgres())
    database.upgrade()
    calendar = Calendar(database, Policy())
    calendar.add_nodes("n1", "n2", "n3")
    yield calendar
    database.dispose()


def test_postgresql_listening_lost_reads_the_database_until_it_listens_again(
    postgresql_calendar: Calendar, caplog: pytest.LogCaptureFixture
) -> None:
    """The listening connection is ended by the database (as a restart or an administrator would): meanwhile every
    read goes to the database; a booking made while it was not listening is seen; it listens again by itself, and
    the log says both."""
    caplog.set_level(logging.WARNING, logger="sfa_omf.calendar")
    calendar = postgresql_calendar
    other = Calendar(Database(calendar.database.url), Policy())
    kept = KeptSliceLeases(calendar.bookings)
    reads = lease_reads(calendar.database)
    wait_for_token(calendar.database)
    book(calendar, "n2", hours=5)
    settled(kept, SLICE, reads)
    ended = on_listeners(other.database, "pg_terminate_backend(pid)")
    assert ended and all(ended)
    book(other, "n1")
    until(lambda: len(kept.leases(SLICE)) == 2, "the booking made while not listening was never seen")
    wait_for_token(calendar.database)  # listening again
    assert nodes_of(settled(kept, SLICE, reads)) == [(node_urn("n1"),), (node_urn("n2"),)]  # and kept again
    assert len(on_listeners(other.database, "pid")) == 1
    other.database.dispose()
    said = [record.getMessage() for record in caplog.records if record.name == "sfa_omf.calendar"]
    assert any(line.startswith("not listening for calendar changes (") for line in said), said
    assert "listening for calendar changes again: Status answers may be kept again" in said


def test_postgresql_every_writing_unit_notifies(postgresql_calendar: Calendar) -> None:
    """Migration 0035's trigger: a unit of work that bumps the generation notifies CHANNEL when it commits, and only
    then (a rolled back one does not)."""
    database = postgresql_calendar.database
    import psycopg

    from sfa_omf.calendar.changes import _libpq_url
    from sfa_omf.calendar.models import Pool

    with psycopg.connect(_libpq_url(database.url), autocommit=True) as listening:
        listening.execute(f"LISTEN {CHANNEL}")
        with pytest.raises(RuntimeError), database.write() as session:
            session.add(Pool(name="rolled-back", federated=True, description=""))
            session.flush()
            raise RuntimeError("the unit of work fails")
        assert list(listening.notifies(timeout=0.5)) == []
        with database.write() as session:
            session.add(Pool(name="kept", federated=True, description=""))
        notes = list(listening.notifies(timeout=NOTICE_LIMIT_S, stop_after=1))
        assert [note.channel for note in notes] == [CHANNEL]


def test_a_forked_child_does_not_trust_its_parents_listening(postgresql_calendar: Calendar) -> None:
    """A child made by fork() has no listening thread (only the parent's memory of one): it has no token until its
    own thread listens, and then its own."""
    database = postgresql_calendar.database
    wait_for_token(database)
    parent_token = database.changes.token()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: says what it saw, then exits without running the parent's clean-ups
        try:
            first = database.changes.token()
            deadline = time.monotonic() + NOTICE_LIMIT_S
            later = database.changes.token()
            while later is None and time.monotonic() < deadline:
                time.sleep(0.01)
                later = database.changes.token()
            saw = f"{first is None} {later is not None and later != parent_token}"
        except BaseException as exc:
            saw = f"failed: {exc!r}"
        os.write(write, saw.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as said:
        seen = said.read()
    os.waitpid(child, 0)
    assert seen == "True True"
