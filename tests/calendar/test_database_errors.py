"""A database that is down answers DBERROR with the database's own words; colliding writers are retried, then BUSY."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database, TransientConflict, retry_raced, retry_transient, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.models import FeedToken
from sfa_omf.calendar.plain_statements import MAX_LISTED
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import GeniCode, GeniError, Reason


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_postgresql_down_is_dberror_with_a_message() -> None:
    database = Database(f"postgresql+psycopg://sfaomf:sfaomf@127.0.0.1:{closed_port()}/nothing")
    with pytest.raises(GeniError) as refusal:
        Inventory(database).list_nodes()
    assert refusal.value.reason == Reason.DATABASE and refusal.value.code == GeniCode.DBERROR
    assert "the calendar database failed" in refusal.value.message
    assert "127.0.0.1" in refusal.value.message or "connect" in refusal.value.message.lower()
    with pytest.raises(GeniError) as status_read:  # a statement on the driver's cursor (plain_statements.py)
        Bookings(database).leases(slice_urn="urn:publicid:IDN+testbed+slice+demo")
    assert status_read.value.code == GeniCode.DBERROR and "the calendar database failed" in status_read.value.message
    many = {f"urn:publicid:IDN+testbed+node+n{number}" for number in range(MAX_LISTED + 1)}
    with pytest.raises(GeniError) as expanded:  # a statement SQLAlchemy runs (a list past MAX_LISTED)
        Inventory(database).list_nodes(component_ids=many)
    assert expanded.value.code == GeniCode.DBERROR and "the calendar database failed" in expanded.value.message


def test_sqlite_file_that_cannot_be_opened() -> None:
    database = Database("sqlite:////nonexistent-directory/calendar.sqlite")
    with pytest.raises(GeniError) as refusal:
        Inventory(database).list_nodes()
    assert refusal.value.code == GeniCode.DBERROR and "unable to open" in refusal.value.message


def test_transient_collisions_are_retried_then_busy() -> None:
    """The real deadlocks are caused in test_concurrency; this pins down the retry rule itself."""
    calls: list[int] = []

    def collides_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientConflict("deadlock detected")
        return "booked"

    assert retry_transient(collides_twice) == "booked" and len(calls) == 3

    def always_collides() -> str:
        raise TransientConflict("deadlock detected")

    with pytest.raises(GeniError) as refusal:
        retry_transient(always_collides, attempts=3)
    assert refusal.value.reason == Reason.BUSY and refusal.value.code == GeniCode.BUSY
    assert "try again" in refusal.value.message


def test_lost_races_on_a_unique_row_are_retried_then_busy(tmp_path: Path) -> None:
    """retry_raced, which the feeds' and the outbox's racing writes share: a real unique-key refusal (SQLite's, as
    PostgreSQL's when a racer inserted the row first) is tried again; when every try loses, BUSY says so."""
    database = Database(sqlite_url(str(tmp_path / "raced.sqlite")))
    database.upgrade()
    with database.write() as session:
        session.add(FeedToken(token_sha256="won", user_urn="urn:publicid:IDN+testbed+user+bob", created_s=0))
    tries: list[str] = []

    def insert(token: str) -> str:
        tries.append(token)
        with database.write() as session:
            session.add(FeedToken(token_sha256=token, user_urn="urn:publicid:IDN+testbed+user+alice", created_s=0))
        return token

    # The racer's row is there for the first two tries (the same key): the third inserts another.
    assert retry_raced(lambda: insert("won" if len(tries) < 2 else "mine"), "a test token") == "mine"
    assert tries == ["won", "won", "mine"]

    tries.clear()
    with pytest.raises(GeniError) as refusal:
        retry_raced(lambda: insert("won"), "a test token", attempts=4)
    assert tries == ["won"] * 4
    assert refusal.value.reason == Reason.BUSY and refusal.value.code == GeniCode.BUSY
    assert "a test token collided with concurrent requests 4 times" in refusal.value.message
    assert "try again" in refusal.value.message
    database.dispose()


def test_a_sqlite_writer_waits_for_another_of_its_process_then_answers_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers of one process queue on a lock (not on SQLite's busy polling), for as long as SQLite's busy timeout,
    then get SQLite's answer: locked, BUSY (try again), and nothing written."""
    from sfa_omf.calendar import database as database_module

    monkeypatch.setattr(database_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    database = Database(sqlite_url(str(tmp_path / "calendar.sqlite")))
    database.upgrade()
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with database.write():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(GeniError) as refusal:
            Inventory(database).add_node(NodeSpec("urn:publicid:IDN+testbed+node+n1", "n1"))
        assert refusal.value.code == GeniCode.BUSY and "locked" in refusal.value.message
    finally:
        release.set()
        holder.join(10)
    assert Inventory(database).list_nodes() == []  # nothing of the refused call was written
    Inventory(database).add_node(NodeSpec("urn:publicid:IDN+testbed+node+n1", "n1"))  # free again: it goes through
    assert [node.component_name for node in Inventory(database).list_nodes()] == ["n1"]
    database.dispose()
