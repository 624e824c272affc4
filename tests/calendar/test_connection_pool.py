"""The connection pool keeps as many connections as threads use the database at once (issue 15): fewer, and every
unit of work beyond them opened a connection and closed it after (on PostgreSQL a server process per call)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from sfa_omf.calendar.database import DEFAULT_CONNECTIONS, Database, sqlite_url
from sfa_omf.calendar.models import Node
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import BACKGROUND_CONNECTIONS, build_aggregate, database_connections
from tests.postgres import empty_postgres

ROUNDS = 12


def _database(kind: str, tmp_path: Path, connections: int) -> Database:
    url = sqlite_url(str(tmp_path / "pool.sqlite")) if kind == "sqlite" else empty_postgres()
    database = Database(url, connections=connections)
    database.upgrade()
    return database


def _connections_opened(database: Database, threads: int) -> int:
    """How many connections ``threads`` threads open over ``ROUNDS`` rounds in which every thread holds a connection
    at the same time as every other, then every thread has given its connection back."""
    opened: list[Any] = []
    event.listen(database.engine, "connect", lambda dbapi_connection, _record: opened.append(dbapi_connection))
    all_in, all_out = threading.Barrier(threads, timeout=30), threading.Barrier(threads, timeout=30)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(ROUNDS):
                with database.read() as session:
                    session.execute(select(Node.id)).all()
                    all_in.wait()  # every thread holds its connection now
                all_out.wait()  # every connection is back in the pool (or closed, when the pool was full)
        except BaseException as exc:
            failures.append(exc)
            all_in.abort()
            all_out.abort()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not failures, failures
    return len(opened)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_threads_as_many_as_the_pool_keeps_reuse_their_connections(kind: str, tmp_path: Path) -> None:
    database = _database(kind, tmp_path, connections=6)
    database.engine.dispose()  # the migrations' connection is not one the threads open
    try:
        assert _connections_opened(database, threads=6) == 6
    finally:
        database.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_threads_beyond_the_pool_open_a_connection_per_unit_of_work(kind: str, tmp_path: Path) -> None:
    """What a pool too small for the server's threads did (the peer of the test above): the thread beyond it opens
    a connection in every round."""
    database = _database(kind, tmp_path, connections=DEFAULT_CONNECTIONS)
    database.engine.dispose()
    try:
        assert _connections_opened(database, threads=DEFAULT_CONNECTIONS + 1) >= DEFAULT_CONNECTIONS + ROUNDS
    finally:
        database.dispose()


def test_a_server_keeps_a_connection_per_call_thread_and_some_for_the_background(tmp_path: Path) -> None:
    init_directory(str(tmp_path / "lab"), "lab")
    settings = dataclasses.replace(read_config(str(tmp_path / "lab" / "sfa-omf.conf")), threads=5)
    assert database_connections(settings) == 2 * 5 + BACKGROUND_CONNECTIONS
    aggregate = build_aggregate(settings)
    try:
        assert aggregate.database.engine.pool.size() == database_connections(settings)  # type: ignore[attr-defined]
    finally:
        aggregate.database.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_database_still_opens(url: str) -> None:
    """Its pool holds one connection per thread and takes no sizes: they are not passed to it."""
    database = Database(url, connections=6)
    try:
        database.upgrade()
        assert database.fetch_all(select(Node.id)) == []
    finally:
        database.dispose()
