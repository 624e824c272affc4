"""The writes of a background task are fenced by the cluster's durable leadership term (calendar/fence.py): a leader
that lost its lock while its task ran writes nothing once another process took the lock and began its term, through
any of the database's write paths; the new term waits for a write of the old one that holds the term; request
threads write as before, with no statement more. On the real PostgreSQL, the calendar migrated."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import String, column, create_engine, event, insert, table, text

from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.fence import DatabaseTerms, fence_term, fenced, terms_for
from sfa_omf.calendar.plain_statements import PlainStatement
from sfa_omf.cluster.leadership import Leadership, LeadershipLost, PeriodicTask, PostgresLock
from sfa_omf.images import instances as instances_module
from sfa_omf.images.instances import Instances
from tests.postgres import empty_postgres

#: The old leader checks its lock every 10 s: here its keeper does not notice the lost lock before its task writes;
#: the fence alone stops those writes.
OLD_TAKEOVER_S = 30.0
NEW_TAKEOVER_S = 1.5
WAIT_S = 30.0  # a bound on waiting for something that must happen (a hang is a failure), not a timing assertion

RUNS = table("runs", column("who", String))
#: An INSERT as write_alone's callers give it: a PlainStatement.
INSERT_PLAIN = PlainStatement(insert(RUNS).values(who="alone-plain"))


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT_S} s"
        time.sleep(0.02)


@pytest.fixture
def database() -> Iterator[Database]:
    database = Database(empty_postgres())
    database.upgrade()
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE runs (id serial PRIMARY KEY, who text NOT NULL)"))
    yield database
    database.dispose()


def written(database: Database) -> list[str]:
    with database.engine.connect() as connection:
        return [str(who) for (who,) in connection.execute(text("SELECT who FROM runs ORDER BY id"))]


def cluster_term(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(connection.execute(text("SELECT term FROM leadership_term WHERE id = 1")).scalar_one())


def terminate_lock_session(database: Database) -> None:
    """What a database restart, a network cut or an administrator does to the leader's session: closed, its lock
    freed at once."""
    with database.engine.begin() as connection:
        killed = connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND ((classid::bigint << 32) | objid::bigint) = :key AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"key": PostgresLock(database.url).key},
        ).all()
    assert killed == [(True,)]


def leader(database: Database, takeover_s: float, task: Callable[[], object], name: str) -> Leadership:
    leadership = Leadership(PostgresLock(database.url, takeover_s), takeover_s, DatabaseTerms(database.url, takeover_s))
    leadership.register(PeriodicTask(name, 3600, task))
    return leadership


def write_every_way(database: Database, who: str, refusals: list[LeadershipLost]) -> None:
    """Write one row through each of the database's write paths, noting each refusal and going on, as a task that
    catches its failures to log them does."""
    ways: list[Callable[[], object]] = [
        lambda: _write_session(database, who),
        lambda: _write_connection(database, who),
        lambda: database.write_alone(text("INSERT INTO runs (who) VALUES (:who) RETURNING id"), {"who": who}),
        lambda: database.write_alone(INSERT_PLAIN),
    ]
    for way in ways:
        try:
            way()
        except LeadershipLost as lost:
            refusals.append(lost)


def _write_session(database: Database, who: str) -> None:
    with database.write() as session:
        session.execute(text("INSERT INTO runs (who) VALUES (:who)"), {"who": who})


def _write_connection(database: Database, who: str) -> None:
    with database.write_connection() as connection:
        connection.execute(text("INSERT INTO runs (who) VALUES (:who)"), {"who": who})


def test_an_old_leader_s_task_writes_nothing_once_another_process_began_its_term(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A's task starts and waits before its writes; A's lock session is terminated; B takes the lock and begins the
    next term; A's task then writes through write(), write_connection() and write_alone(): each refused, nothing
    written, and A stops leading, saying why."""
    may_write = threading.Event()
    started = threading.Event()
    refusals: list[LeadershipLost] = []

    def old_task() -> None:
        started.set()
        assert may_write.wait(WAIT_S)
        write_every_way(database, "old leader", refusals)

    first = leader(database, OLD_TAKEOVER_S, old_task, "reconcile")
    second = leader(database, NEW_TAKEOVER_S, lambda: None, "reconcile")
    try:
        with caplog.at_level(logging.WARNING, logger="sfa_omf.cluster"):
            first.start()
            assert first.wait_leader(WAIT_S)
            assert started.wait(WAIT_S)
            assert cluster_term(database) == 1
            terminate_lock_session(database)
            second.start()
            assert second.wait_leader(WAIT_S)
            assert cluster_term(database) == 2

            may_write.set()
            wait_for(lambda: not first.is_leader, "the old leader stepping down")
        assert written(database) == [], "a write of the old leader's task committed after another process led"
        assert [(lost.term, lost.current) for lost in refusals] == [(1, 2)] * 4
        assert "this process no longer leads (term 1, the cluster is at term 2): reconcile stops here" in caplog.text
        assert second.is_leader
    finally:
        may_write.set()
        first.stop()
        second.stop()


def test_the_next_term_waits_for_a_write_of_the_old_term_then_the_old_term_writes_nothing(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A's task is in a write (it holds the term) when A's lock session is terminated: B takes the lock but cannot
    begin its term, so does not lead, until that write ends; the write commits (it came before B's term); A's next
    write is refused."""
    holding = threading.Event()
    may_commit = threading.Event()
    may_write_again = threading.Event()
    refusals: list[LeadershipLost] = []

    def old_task() -> None:
        with database.write() as session:
            session.execute(text("INSERT INTO runs (who) VALUES ('before the new term')"))
            holding.set()
            assert may_commit.wait(WAIT_S)
        assert may_write_again.wait(WAIT_S)
        write_every_way(database, "after the new term", refusals)

    first = leader(database, OLD_TAKEOVER_S, old_task, "expiry")
    second = leader(database, NEW_TAKEOVER_S, lambda: None, "expiry")
    try:
        with caplog.at_level(logging.WARNING, logger="sfa_omf.cluster"):
            first.start()
            assert holding.wait(WAIT_S)
            terminate_lock_session(database)
            second.start()
            wait_for(lambda: "a write of the previous leader still holds" in caplog.text, "the new term waiting")
            assert not second.is_leader
            assert cluster_term(database) == 1

            may_commit.set()
            assert second.wait_leader(WAIT_S)
            assert cluster_term(database) == 2
            may_write_again.set()
            wait_for(lambda: not first.is_leader, "the old leader stepping down")
        assert written(database) == ["before the new term"]
        assert [(lost.term, lost.current) for lost in refusals] == [(1, 2)] * 4
        assert "this process no longer leads (term 1, the cluster is at term 2): expiry stops here" in caplog.text
    finally:
        may_commit.set()
        may_write_again.set()
        first.stop()
        second.stop()


def test_request_threads_write_as_before_with_no_statement_more(database: Database) -> None:
    """While a task's thread is fenced (in a write that holds the term, then refused), another thread's writes
    through every path commit, and none of their statements reads the term."""
    statements: list[tuple[int, str]] = []

    def note(_connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append((threading.get_ident(), statement))

    task_holds = threading.Event()
    task_may_end = threading.Event()
    task_refusals: list[LeadershipLost] = []

    def fenced_task() -> None:
        try:
            with fenced(0):  # the term of the migrated calendar: its writes are allowed
                with database.write() as session:
                    session.execute(text("INSERT INTO runs (who) VALUES ('task')"))
                    task_holds.set()
                    assert task_may_end.wait(WAIT_S)
                with fenced(41):  # a term the cluster is not at
                    write_every_way(database, "refused", task_refusals)
        except LeadershipLost as lost:
            task_refusals.append(lost)

    task = threading.Thread(target=fenced_task)
    event.listen(database.engine, "before_cursor_execute", note)
    try:
        task.start()
        assert task_holds.wait(WAIT_S)
        assert fence_term() is None
        refusals: list[LeadershipLost] = []
        write_every_way(database, "request", refusals)
        assert refusals == []
        task_may_end.set()
        task.join(WAIT_S)
    finally:
        task_may_end.set()
        event.remove(database.engine, "before_cursor_execute", note)
    here = threading.get_ident()
    request_statements = [statement for ident, statement in statements if ident == here]
    assert len(request_statements) == 4
    assert not any("leadership_term" in statement for statement in request_statements)
    task_statements = [statement for ident, statement in statements if ident == task.ident]
    assert sum("leadership_term" in statement for statement in task_statements) == 5
    assert [(lost.term, lost.current) for lost in task_refusals] == [(41, 0)] * 5  # 4 ways, then the block's end
    assert written(database) == ["task", "request", "request", "request", "alone-plain"]


def test_each_term_begun_is_the_next_and_names_its_process(database: Database) -> None:
    terms = terms_for(database.url, NEW_TAKEOVER_S)
    assert isinstance(terms, DatabaseTerms)
    try:
        assert [terms.begin_term(), terms.begin_term()] == [1, 2]
    finally:
        terms.close()
    with database.engine.connect() as connection:
        holder, since_s = connection.execute(text("SELECT holder, since_s FROM leadership_term")).one()
    assert holder == terms.holder and holder.endswith(f":{os.getpid()}")
    assert since_s > 0


def test_sqlite_is_not_fenced(tmp_path: Path) -> None:
    """One process, which always leads: a fenced thread's writes run no statement more and are never refused."""
    assert terms_for(sqlite_url(str(tmp_path / "calendar.sqlite")), NEW_TAKEOVER_S) is None
    database = Database(sqlite_url(str(tmp_path / "calendar.sqlite")))
    try:
        database.upgrade()
        with database.engine.begin() as connection:
            connection.execute(text("CREATE TABLE runs (id integer PRIMARY KEY, who text NOT NULL)"))
        statements: list[str] = []
        event.listen(database.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        with fenced(41):
            _write_session(database, "sqlite")
            _write_connection(database, "sqlite")
        assert written(database) == ["sqlite", "sqlite"]
        assert not any("leadership_term" in statement for statement in statements)
    finally:
        database.dispose()


def test_beginning_a_term_waits_at_most_its_lock_timeout_for_a_write_that_holds_the_term(database: Database) -> None:
    """Beginning a term waits at most its lock_timeout for a write that holds the term, then answers None (the
    process tries again at its next check)."""
    terms = DatabaseTerms(database.url, NEW_TAKEOVER_S)
    holder = create_engine(database.url)
    try:
        with holder.begin() as connection:
            connection.execute(text("SELECT term FROM leadership_term WHERE id = 1 FOR SHARE"))
            assert terms.begin_term() is None
        assert terms.begin_term() == 1
    finally:
        terms.close()
        holder.dispose()


def test_a_write_left_idle_by_a_stopped_leader_ends_and_the_next_term_begins(database: Database) -> None:
    """A leader stopped (SIGSTOP, a debugger) inside a fenced write would hold the term for as long as it stays
    stopped: its transaction may stay idle only so long (here 0.5 s), then the database ends it, the next term
    begins, and the stopped write, when it goes on, commits nothing."""
    terms = DatabaseTerms(database.url, NEW_TAKEOVER_S)
    holding = threading.Event()
    resume = threading.Event()
    failures: list[BaseException] = []

    def stopped_inside_a_write() -> None:
        try:
            with fenced(1, idle_ms=500), database.write() as session:
                session.execute(text("INSERT INTO runs (who) VALUES ('stopped leader')"))
                holding.set()
                # Stopped: idle in its transaction meanwhile, for longer than the test waits for the next term.
                assert resume.wait(3 * WAIT_S)
        except Exception as exc:  # the database ended the transaction: its commit fails
            failures.append(exc)

    worker = threading.Thread(target=stopped_inside_a_write)
    try:
        assert terms.begin_term() == 1
        worker.start()
        assert holding.wait(WAIT_S)
        began: list[int | None] = []
        wait_for(lambda: began.append(terms.begin_term()) or began[-1] is not None, "the next term beginning")
        assert began[-1] == 2
        resume.set()
        worker.join(WAIT_S)
        assert len(failures) == 1 and not isinstance(failures[0], LeadershipLost)
        assert written(database) == []
    finally:
        resume.set()
        worker.join(WAIT_S)
        terms.close()


def test_a_task_s_helper_thread_writes_fenced_as_the_task(
    database: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A container start renews its claim from a thread of its own: those writes are the task's, fenced by its term
    (here term 1 while the cluster is at term 0: refused, and the renewals stop, saying so)."""
    monkeypatch.setattr(instances_module, "CLAIM_RENEWAL_S", 0.05)
    start = SimpleNamespace(database=database)  # all the claim renewal uses of Instances
    with (
        caplog.at_level(logging.WARNING, logger="sfa_omf.instances"),
        fenced(1),
        Instances._renewing_claims(start, ["c1"], datetime.now(UTC)),  # type: ignore[arg-type]
    ):
        wait_for(lambda: "is no longer renewed" in caplog.text, "the renewals refused")
    assert "the claim of containers ['c1'] is no longer renewed: this process no longer leads" in caplog.text
