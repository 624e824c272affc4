"""A call answered in the reactor thread ([sfa_omf] calls_in_reactor) runs in a greenlet of an asyncio loop: on
PostgreSQL its statements go through asynchronous connections and wait without blocking the loop, with the same
statement_timeout; ``waits.blocking`` runs work in another thread and ``waits.pause`` sleeps, both letting the loop
run meanwhile. Outside a greenlet everything is as before (the usual engine, work in the calling thread).

The loop here is a plain asyncio loop in the test's thread, as the asyncio reactor's is in the server's."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from sqlalchemy import Integer, column, func, select, table, text

from sfa_omf.calendar.database import Database, retry_transient
from sfa_omf.calendar.plain_statements import PlainStatement
from sfa_omf.waits import blocking, in_reactor_call, pause
from tests.greenlet_loop import Ticks, in_greenlet
from tests.postgres import empty_postgres

T = TypeVar("T")
N = column("n", Integer)
ALL_N = select(N).select_from(table("t", N)).order_by(N)


@pytest.fixture
def database() -> Iterator[Database]:
    database = Database(empty_postgres(), connections=4, statement_timeout_s=7)
    with database.write() as session:
        session.execute(text("CREATE TABLE t (n integer PRIMARY KEY)"))
    try:
        yield database
    finally:
        database.dispose()


def ticks_while(work: Callable[[], object]) -> int:
    """How often the loop ran a ticker of its own (every 10 ms) while ``work`` ran in a greenlet of it."""
    ticks = Ticks()
    in_greenlet(work, ticks)
    return ticks.count


def test_in_a_greenlet_the_statements_go_through_asynchronous_connections(database: Database) -> None:
    assert not in_reactor_call() and not database.engine.dialect.is_async

    def work() -> tuple[bool, bool, list[int]]:
        with database.write() as session:
            session.execute(text("INSERT INTO t VALUES (1), (2)"))
        written = database.write_alone(text("INSERT INTO t VALUES (3) RETURNING n"))
        plain = database.fetch_all(PlainStatement(ALL_N))  # on the driver's cursor
        core = database.fetch_all(ALL_N)  # through a connection of the engine
        rows = [n for (n,) in plain] + [n for (n,) in core]
        return in_reactor_call(), database.engine.dialect.is_async, rows + [n for (n,) in written]

    inside, is_async, rows = in_greenlet(work)
    assert inside and is_async
    assert rows == [1, 2, 3, 1, 2, 3, 3]
    # The same rows from the usual engine: one database.
    assert [n for (n,) in database.fetch_all(PlainStatement(ALL_N))] == [1, 2, 3]


def test_a_statement_waiting_in_a_greenlet_lets_the_loop_run(database: Database) -> None:
    """pg_sleep(0.5) in the greenlet: the loop's ticker ran meanwhile (a blocking wait would have held it)."""
    assert ticks_while(lambda: database.fetch_all(select(func.pg_sleep(0.5)))) >= 5


def test_the_asynchronous_connections_have_the_statement_timeout(database: Database) -> None:
    """The same bound as the usual connections: the database cancels a statement after statement_timeout_s."""

    def timeout() -> str:
        with database.read() as session:
            return str(session.execute(text("SHOW statement_timeout")).scalar_one())

    assert in_greenlet(timeout) == "7s" == timeout()


def test_blocking_work_runs_in_another_thread_and_the_loop_runs_meanwhile() -> None:
    here = threading.get_ident()
    ran_in: list[int] = []

    def work() -> str:
        ran_in.append(threading.get_ident())
        threading.Event().wait(0.3)  # (a blocking wait, as a testbed's HTTP request)
        return "done"

    assert ticks_while(lambda: blocking(work)) >= 5
    assert ran_in[0] != here
    assert blocking(work) == "done" and ran_in[1] == here  # outside a greenlet: called directly


def test_a_failure_of_blocking_work_is_raised_in_the_greenlet() -> None:
    def failing() -> None:
        raise ValueError("the testbed said no")

    with pytest.raises(ValueError, match="the testbed said no"):
        in_greenlet(lambda: blocking(failing))


def test_pause_in_a_greenlet_lets_the_loop_run() -> None:
    assert ticks_while(lambda: pause(0.3)) >= 5


def test_a_transient_conflict_retried_in_a_greenlet_backs_off_without_holding_the_loop(database: Database) -> None:
    """retry_transient's back-off sleeps are pauses: a unit of work that collides twice, then succeeds."""
    from sfa_omf.calendar.database import TransientConflict

    tries: list[int] = []

    def unit() -> int:
        tries.append(1)
        if len(tries) < 3:
            raise TransientConflict("deadlock detected")
        return len(tries)

    assert in_greenlet(lambda: retry_transient(unit)) == 3
