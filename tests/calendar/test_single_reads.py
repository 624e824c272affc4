"""One-statement reads without a transaction around them, and PostgreSQL connections pinged only after being idle
(issue 15): the reads still see committed data only, never take SQLite's write lock, and a pooled connection the
server dropped is replaced, not handed to a call."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from sfa_omf.calendar import database as database_module
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import Node
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, fresh_database, node_urn


def test_fetch_all_reads_committed_rows(calendar: Calendar) -> None:
    calendar.add_nodes("a", "b")
    wanted = select(Node.component_id).where(Node.component_name.in_(["a", "b"])).order_by(Node.component_id)
    assert [row[0] for row in calendar.database.fetch_all(wanted)] == [node_urn("a"), node_urn("b")]
    with pytest.raises(RuntimeError), calendar.database.write() as session:
        session.execute(text("UPDATE node SET hardware_type = 'changed'"))
        # Not committed yet: a one-statement read elsewhere does not see it.
        seen = {row[0] for row in calendar.database.fetch_all(select(Node.hardware_type))}
        assert seen == {"icarus"}
        raise RuntimeError("roll back")
    assert {row[0] for row in calendar.database.fetch_all(select(Node.hardware_type))} == {"icarus"}


def test_the_lease_read_takes_no_write_lock_on_sqlite(tmp_path: Path) -> None:
    calendar = Calendar(fresh_database("sqlite", tmp_path), Policy())
    calendar.add_nodes("a")
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("a"), at(1), at(2))])
    holder = Database(calendar.database.url)
    read: list[int] = []
    try:
        with holder.write() as session:  # holds SQLite's write lock (BEGIN IMMEDIATE) meanwhile
            session.execute(text("UPDATE node SET hardware_type = 'held'"))
            worker = threading.Thread(target=lambda: read.append(len(calendar.bookings.leases(slice_urn=SLICE))))
            worker.start()
            worker.join(timeout=10)
            assert not worker.is_alive(), "the read waited for the writer"
        assert read == [1]
    finally:
        holder.dispose()
        calendar.database.dispose()


def test_sqlite_connections_stay_under_our_transaction_control(tmp_path: Path) -> None:
    """After one-statement reads the pooled SQLite connections still leave BEGIN to us (BEGIN IMMEDIATE for
    writers): pysqlite's own implicit transactions stay off."""
    database = fresh_database("sqlite", tmp_path)
    try:
        for _ in range(3):
            database.fetch_all(select(Node.id))
            with database.engine.connect() as connection:
                raw = connection.connection.dbapi_connection
                assert raw is not None and raw.isolation_level is None and not raw.in_transaction
    finally:
        database.dispose()


@pytest.fixture
def postgresql(tmp_path: Path) -> Iterator[Database]:
    database = fresh_database("postgresql", tmp_path)
    yield database
    database.dispose()


def test_a_pooled_connection_the_server_dropped_is_replaced(
    postgresql: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = postgresql
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE_S", 0.0)  # every checkout pings, as after a long idle
    pid = database.fetch_all(text("SELECT pg_backend_pid()"))[0][0]
    killer = Database(database.url)
    try:
        assert killer.fetch_all(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})[0][0] is True
    finally:
        killer.dispose()
    # The pool's only connection is dead: the ping finds out and the pool opens another.
    assert database.fetch_all(text("SELECT pg_backend_pid()"))[0][0] != pid
    with database.read() as session:
        assert session.scalar(text("SELECT 1")) == 1


def test_a_connection_used_a_moment_ago_is_not_pinged(postgresql: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    database = postgresql
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE_S", 3600.0)
    database.fetch_all(text("SELECT 1"))
    pid = database.fetch_all(text("SELECT pg_backend_pid()"))[0][0]
    killer = Database(database.url)
    try:
        killer.fetch_all(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        killer.dispose()
    # Not pinged: the call meets the dead connection and fails with the database's words (DBERROR), once; the
    # pool then drops it and the next call has a live one.
    with pytest.raises(database_module.GeniError) as failed:
        database.fetch_all(text("SELECT 1"))
    assert failed.value.reason == database_module.Reason.DATABASE
    assert database.fetch_all(text("SELECT 1"))[0][0] == 1
