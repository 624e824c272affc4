"""SQLite's write lock held by another writer for longer than the busy timeout answers BUSY (14, "try again"), as
PostgreSQL's statement_timeout answers the same wait: omni retries BUSY, not DBERROR. Nothing is written."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from sfa_omf.calendar import database as database_module
from sfa_omf.calendar.booking import BookingRequest
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.policy import Policy
from sfa_omf.errors import GeniCode, GeniError
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, node_urn


@pytest.fixture
def calendar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Calendar:
    # A short busy timeout (read when connections open): the test waits for it, not for the 30 s of a server.
    monkeypatch.setattr(database_module, "SQLITE_BUSY_TIMEOUT_MS", 300)
    database = Database(sqlite_url(str(tmp_path / "calendar.sqlite")))
    database.upgrade()
    cal = Calendar(database, Policy())
    cal.add_nodes("n1")
    return cal


def book(calendar: Calendar) -> None:
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2))])


def test_a_booking_while_an_operator_holds_the_write_lock_answers_busy(calendar: Calendar, tmp_path: Path) -> None:
    """An operator's sqlite3 shell in BEGIN IMMEDIATE (another connection: SQLite's own lock, not this process's
    queue) holds the calendar: the booking answers 14 once the busy timeout passes, writes nothing, and goes through
    once the lock is free."""
    shell = sqlite3.connect(str(tmp_path / "calendar.sqlite"), isolation_level=None, timeout=1)
    shell.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(GeniError) as refusal:
            book(calendar)
    finally:
        shell.execute("ROLLBACK")
        shell.close()
    assert refusal.value.code == GeniCode.BUSY
    assert "locked" in refusal.value.message and "nothing was changed, try again" in refusal.value.message
    assert calendar.bookings.leases(slice_urn=SLICE) == []  # nothing of the refused booking was written
    book(calendar)  # the lock free again: the same booking goes through
    assert len(calendar.bookings.leases(slice_urn=SLICE)) == 1
    calendar.database.dispose()


def test_a_writer_queued_behind_one_of_its_process_answers_busy(calendar: Calendar) -> None:
    """A writer of the same process queues on the process's lock (not on SQLite's busy polling) for as long as the
    busy timeout, then answers as SQLite would: BUSY, nothing written."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with calendar.database.write():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(GeniError) as refusal:
            book(calendar)
    finally:
        release.set()
        holder.join(10)
    assert refusal.value.code == GeniCode.BUSY and "nothing was changed, try again" in refusal.value.message
    assert calendar.bookings.leases(slice_urn=SLICE) == []
    calendar.database.dispose()
