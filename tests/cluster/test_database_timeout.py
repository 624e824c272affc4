"""A serving process's statements are bounded on PostgreSQL ([sfa_omf] database_timeout_s): a row that another
session keeps locked (a stopped process, an operator's open psql transaction) makes a call answer BUSY, nothing
written, instead of holding the call and its thread for ever; migrations stay unbounded; connections have TCP
keepalives (a vanished database host)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, func, select, text

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import KEEPALIVES, MIGRATION_KEY, Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.models import Lease
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.config import load_config
from sfa_omf.errors import GeniCode, GeniError, Reason
from sfa_omf.server.app import build_aggregate
from tests.cluster.harness import NODE, Lab, Serve, make_lab, request, window
from tests.moment import NOW
from tests.postgres import empty_postgres

SLICE = "urn:publicid:IDN+lab+slice+held"
HANG_GUARD_S = 60  # a call still waiting after this long is the hang this bound prevents (the bound is 1 s)


@contextmanager
def node_row_locked(url: str, component_id: str) -> Iterator[Connection]:
    """Another session holding the node's row (SELECT ... FOR UPDATE in an open transaction), as a stopped process or
    an operator's psql transaction would; released at the end."""
    engine = create_engine(url)
    try:
        with engine.connect() as holder:
            transaction = holder.begin()
            holder.execute(text("SELECT id FROM node WHERE component_id = :urn FOR UPDATE"), {"urn": component_id})
            yield holder
            transaction.rollback()
    finally:
        engine.dispose()


def leases_in(database: Database) -> int:
    with database.read() as session:
        return int(session.scalar(select(func.count()).select_from(Lease)) or 0)


def test_a_booking_waiting_on_a_locked_node_answers_busy_and_writes_nothing() -> None:
    url = empty_postgres()
    Database(url).upgrade()
    database = Database(url, statement_timeout_s=1)
    try:
        Inventory(database).add_node(NodeSpec(NODE, "n1"))
        bookings = Bookings(database, clock=lambda: NOW)
        wanted = [BookingRequest(NODE, NOW + timedelta(hours=1), NOW + timedelta(hours=2))]
        outcome: list[BaseException | object] = []

        def book() -> None:
            try:
                outcome.append(bookings.book(SLICE, NOW + timedelta(days=30), wanted))
            except BaseException as exc:  # handed to the test's thread
                outcome.append(exc)

        with node_row_locked(url, NODE):
            caller = threading.Thread(target=book, daemon=True)
            caller.start()
            caller.join(HANG_GUARD_S)
            assert not caller.is_alive(), "the booking still waits on the locked row"
        refused = outcome[0]
        assert isinstance(refused, GeniError), refused
        assert refused.reason == Reason.BUSY and refused.code == GeniCode.BUSY
        assert "did not answer in time" in refused.message and "nothing was changed, try again" in refused.message
        assert "statement timeout" in refused.message  # the database's own words
        assert leases_in(database) == 0
        booked = bookings.book(SLICE, NOW + timedelta(days=30), wanted)  # the row free again: booked at once
        assert [lease.slivers[0].node for lease in booked.leases] == [NODE] and leases_in(database) == 1
    finally:
        database.dispose()


def test_a_migration_waiting_for_another_host_is_not_cut_by_the_bound() -> None:
    url = empty_postgres()
    other_host = create_engine(url)
    database = Database(url, statement_timeout_s=1)
    try:
        with other_host.connect() as migrating:
            transaction = migrating.begin()
            migrating.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_KEY})
            # Released 2 s after the upgrade begins to wait: longer than the bound, which must not apply to it.
            release = threading.Timer(2.0, transaction.rollback)
            release.start()
            database.upgrade()
            release.join()
        with database.engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "1s"
            assert connection.execute(text("SELECT count(*) FROM leadership_term")).scalar() == 1
    finally:
        database.dispose()
        other_host.dispose()


def test_connections_have_keepalives_and_the_operators_own_options_win(monkeypatch: pytest.MonkeyPatch) -> None:
    url = empty_postgres()
    # An operator's own options (PGOPTIONS) are kept: libpq's options parameter, had it been used, would replace them.
    monkeypatch.setenv("PGOPTIONS", "-c search_path=public,pg_catalog")
    cases = (
        (Database(url), "0"),  # commands: unbounded, keepalives still
        (Database(url, statement_timeout_s=7), "7s"),
        (Database(f"{url}?options=-c%20statement_timeout%3D3000", statement_timeout_s=7), "3s"),
        (Database(f"{url}?options=-c%20work_mem%3D8MB", statement_timeout_s=7), "7s"),  # its options kept too
    )
    for database, timeout in cases:
        try:
            with database.engine.connect() as connection:
                assert connection.execute(text("SHOW statement_timeout")).scalar() == timeout
                parameters = connection.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
                assert parameters["keepalives_idle"] == str(KEEPALIVES[0])
                assert parameters["keepalives_count"] == str(KEEPALIVES[2])
                if "work_mem" in database.url:
                    assert connection.execute(text("SHOW work_mem")).scalar() == "8MB"
                elif "options" not in database.url:  # (a URL's options replace PGOPTIONS: libpq's rule)
                    assert connection.execute(text("SHOW search_path")).scalar() == "public,pg_catalog"
        finally:
            database.dispose()
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=4000")
    theirs = Database(url, statement_timeout_s=7)
    try:
        with theirs.engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "4s"
    finally:
        theirs.dispose()


def test_the_servers_database_takes_database_timeout_s(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, empty_postgres(), 0)
    environment = {"SFA_OMF_DATABASE_URL": lab.database_url, "SFA_OMF_DATABASE_TIMEOUT_S": "12"}
    settings = load_config(lab.config, environ=environment).settings
    for serving, bound in ((True, "12s"), (False, "0")):  # a command's (node import --from-omf) is not bounded
        aggregate = build_aggregate(settings, upgrade=False, serving=serving)
        try:
            with aggregate.bookings.database.engine.connect() as connection:
                assert connection.execute(text("SHOW statement_timeout")).scalar() == bound
        finally:
            aggregate.bookings.database.dispose()


def test_allocate_over_tls_answers_busy_while_the_node_is_locked_then_books(
    tmp_path: Path, servers: list[Serve]
) -> None:
    lab: Lab = make_lab(tmp_path, empty_postgres(), 1)
    server = Serve(lab, tmp_path, "bounded", SFA_OMF_DATABASE_TIMEOUT_S="1")
    servers.append(server)
    server.wait_ready()
    client = server.client(lab)
    urn, credential = lab.slices[0]
    slot = window(3, 10)
    answers: list[Any] = []
    with node_row_locked(lab.database_url, NODE):
        caller = threading.Thread(
            target=lambda: answers.append(client.Allocate(urn, [credential], request(slot), {})), daemon=True
        )
        caller.start()
        caller.join(HANG_GUARD_S)
        assert not caller.is_alive(), "Allocate still waits on the locked row"
    refused: Any = answers[0]
    assert refused["code"]["geni_code"] == GeniCode.BUSY, refused
    assert "did not answer in time" in refused["output"] and "nothing was changed" in refused["output"]
    calendar = Database(lab.database_url)
    try:
        assert leases_in(calendar) == 0
    finally:
        calendar.dispose()
    booked = client.Allocate(urn, [credential], request(slot), {})
    assert booked["code"]["geni_code"] == 0, booked
