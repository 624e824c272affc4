"""The calendar's database: SQLite (embedded default) or PostgreSQL, sessions for reading and for writing, migrations.

SQLite: WAL, a busy timeout, and every *write* unit of work starts with ``BEGIN IMMEDIATE``, so the write lock is
held before anything is checked — check-and-insert is one step across threads and processes. Reads start a deferred
transaction and never block writers (WAL).

PostgreSQL: the exclusion constraint (migration 0001) makes an overlapping booking impossible whatever the
application does; ``is_overlap_violation`` recognises its error so the caller can answer with a clear conflict.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, Executable, create_engine, event, make_url, text
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction
from sqlalchemy.pool import QueuePool
from sqlalchemy.util.concurrency import in_greenlet

from sfa_omf.calendar.changes import CalendarChanges
from sfa_omf.calendar.fence import QUERY_CANCELED, check_term, fence_term
from sfa_omf.calendar.generation import bump_generation
from sfa_omf.calendar.plain_statements import PlainStatement, run_plain
from sfa_omf.errors import GeniError, Reason
from sfa_omf.waits import pause

log = logging.getLogger("sfa_omf.calendar")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# PostgreSQL: deadlock (two racers each waiting on the other's row), serialization failure, lock not available.
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
RETRY_ATTEMPTS = 6
#: Tries of a write that requests at the same moment may race on a unique row (a user's new feed token, leases' first
#: revisions, a subscription change): each try after the first sees the rows of the requests that won before.
RACE_ATTEMPTS = 20
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: How long opening a PostgreSQL connection may take (libpq's connect_timeout) before the command or the call fails:
#: a server, or anything else, that accepts the connection and never answers would otherwise hold it for ever.
CONNECT_TIMEOUT_S = 5
#: A serving process (``statement_timeout_s``) waits for any answer of PostgreSQL this much longer than the database's
#: own statement_timeout, then gives the connection up (_answer_bounded_class): a database that hangs without closing
#: its connections (stopped, a storage stall: the kernel still acknowledges, so neither keepalives nor the TCP user
#: timeout fire, and the statement_timeout is the stopped server's to enforce) must not hold a call for as long. The
#: margin lets a statement the server cancels in time answer BUSY with the server's own words first.
NO_ANSWER_MARGIN_S = 5.0
#: How long the ping of a pooled connection idle for a while (_ping_if_idle) waits for its answer: the pool replaces a
#: connection that does not answer (and opening one is bounded by CONNECT_TIMEOUT_S).
PING_LIMIT_S = 2.0
OVERLAP_CONSTRAINT = "sliver_no_overlap"
#: PostgreSQL advisory lock of schema migrations (Database.upgrade): one at a time across hosts. The aggregate's other
#: process-wide keys are 0x5FA0_3F00_xxxx too: cluster/leadership.py (LOCK_KEY, STARTUP_KEY) and calendar/agents.py
#: (TESTBED_ADDITIONS_KEY); the keys of URNs are 32-bit hashes (calendar/queries.py), below all of them.
MIGRATION_KEY = 0x5FA0_3F00_DB06


T = TypeVar("T")


class TransientConflict(Exception):
    """Concurrent writers collided (a deadlock the database broke, a serialization failure); the unit of work was
    rolled back and is safe to run again from the start."""


def sqlite_url(path: str) -> str:
    return f"sqlite:///{Path(path).resolve()}"


DEFAULT_CONNECTIONS = 5  # SQLAlchemy's own default: enough for a command or a test's few threads
OVERFLOW_CONNECTIONS = 10

WROTE = "sfa_omf_wrote"  # Session.info key: this unit of work changed something
BUMPED = "sfa_omf_bumped"  # Session.info key: one of its statements bumped the generation (generation.bump_after)


class CalendarSession(Session):
    """A session that notes whether it changed anything (an ORM flush, or an INSERT/UPDATE/DELETE statement), so
    that a writing unit of work bumps the calendar's generation in its own transaction (calendar/generation.py)."""


@event.listens_for(CalendarSession, "after_flush")
def _note_flush(session: Session, _context: UOWTransaction) -> None:
    session.info[WROTE] = True


@event.listens_for(CalendarSession, "do_orm_execute")
def _note_statement(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info[WROTE] = True


class Database:
    """One database, shared by every thread of a process. ``write()`` and ``read()`` give sessions."""

    def __init__(
        self,
        url: str,
        echo: bool = False,
        connections: int = DEFAULT_CONNECTIONS,
        statement_timeout_s: int | None = None,
    ) -> None:
        """``connections``: how many connections the pool keeps open, at least as many as threads use the database
        at once (a server: its call threads). Beyond it, each unit of work opens a connection and closes it after
        (on PostgreSQL a server process started and ended per call); up to ``OVERFLOW_CONNECTIONS`` more at once.
        ``statement_timeout_s`` (PostgreSQL; a serving process: [sfa_omf] database_timeout_s): how long one
        statement may run, its lock waits included, before the database cancels it and the call answers BUSY; and,
        NO_ANSWER_MARGIN_S later, how long any exchange with the database (a statement, a commit) may wait for its
        answer before the connection is given up and the call answers DBERROR (a database that hangs). None:
        unbounded (commands, which an operator can interrupt)."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        sizes = _pool_sizes(url, connections)
        if self.is_sqlite:
            engine: Engine = create_engine(
                url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **sizes
            )
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)
            path = _sqlite_file(url)
            if path is not None:
                event.listen(engine, "do_connect", functools.partial(_make_private_file, path))
        else:
            connect_args = {**_connect_timeout_args(url), **_bounded_wait_args(url, statement_timeout_s)}
            engine = create_engine(url, echo=echo, connect_args=connect_args, **sizes)
            bound_answers(engine, answer_limit_s(url, statement_timeout_s))
            _watch_postgres(engine, url, statement_timeout_s)
        # PostgreSQL, in a call answered in the reactor thread (waits.py): the same database through asynchronous
        # connections, made at the first such call (_in_reactor_engines).
        self._reactor_engines: _Engines | None = None
        self._reactor_engine_args = (echo, sizes, statement_timeout_s)
        self._sync_engines = _Engines.of(engine, self.is_sqlite)
        # SQLite has one writer at a time; threads of this process waiting for BEGIN IMMEDIATE would poll with
        # SQLite's busy handler (sleeps of up to 100 ms), so they queue on a lock here instead and get the database
        # as soon as it is free. Other processes still wait in BEGIN IMMEDIATE. PostgreSQL writers run in parallel.
        self._local_writers = threading.RLock() if self.is_sqlite else None
        # PostgreSQL: the writes of a background task's thread are fenced by its leadership term (calendar/fence.py);
        # SQLite has one process, which always leads: nothing to fence.
        self._fences = not self.is_sqlite
        # Told of every writing unit of work of this process as it ends, after its commit (kept_reads.py).
        self.changes = (
            CalendarChanges(url, True, _sqlite_file(url))
            if self.is_sqlite
            else CalendarChanges(url, False, None, {**_connect_timeout_args(url), **_bounded_wait_args(url, None)})
        )

    @property
    def engine(self) -> Engine:
        """The engine of the calling code: on PostgreSQL, in a call answered in the reactor thread, the one of
        asynchronous connections (its statements wait without blocking the reactor); else the usual one."""
        return self._engines().engine

    @property
    def _writer(self) -> Engine:
        return self._engines().writer

    @property
    def _single_reader(self) -> Engine:
        return self._engines().single_reader

    def _engines(self) -> _Engines:
        if self.is_sqlite or not in_greenlet():
            return self._sync_engines
        return self._reactor_engines or self._in_reactor_engines()

    def _in_reactor_engines(self) -> _Engines:
        """The asynchronous connections' engines, made at the first call answered in the reactor thread (only that
        thread makes them: no lock), bounded and watched as the usual one is."""
        from sqlalchemy.ext.asyncio import create_async_engine

        echo, sizes, statement_timeout_s = self._reactor_engine_args
        connect_args: dict[str, Any] = {
            **_connect_timeout_args(self.url),
            **_bounded_wait_args(self.url, statement_timeout_s),
            "async_creator_fn": _async_answer_bounded_connect(answer_limit_s(self.url, statement_timeout_s)),
        }
        engine = create_async_engine(self.url, echo=echo, connect_args=connect_args, **sizes).sync_engine
        _watch_postgres(engine, self.url, statement_timeout_s)
        self._reactor_engines = _Engines.of(engine, False)
        return self._reactor_engines

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A unit of work that may write: committed at the end, rolled back on any exception. If it changed
        anything, the calendar's generation is bumped in the same transaction (caches of answers key on it).
        Write through the session (ORM objects or ``session.execute``), or through ``connection_of(session,
        writes=True)``, never ``session.connection()`` alone: only the session's events tell that something was
        written.

        In a background task's thread (``fence.fenced``, PostgreSQL) it first checks the leadership term, in the same
        transaction: LeadershipLost, nothing written, when another process leads since. Other threads run no
        statement more."""
        term = fence_term() if self._fences else None
        try:
            with (
                _queued(self._local_writers),
                _database_errors(),
                CalendarSession(self._writer, expire_on_commit=False) as session,
                session.begin(),
            ):
                if term is not None:
                    check_term(session.connection(), term)
                yield session
                session.flush()
                if session.info.get(WROTE) and not session.info.get(BUMPED):
                    bump_generation(session)
        finally:
            self.changes.wrote()

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A unit of work of Core statements on one connection, without an ORM session (0.06-0.1 ms less than
        ``write()`` a unit on SQLite, measured on the cancel): begun as ``write()`` begins (BEGIN IMMEDIATE on
        SQLite), committed at the end, rolled back on any exception. No event sees its statements: the caller bumps
        the generation in it (``generation.bump_on``) when it wrote. Fenced as ``write()`` is."""
        term = fence_term() if self._fences else None
        try:
            with _queued(self._local_writers), _database_errors(), self._writer.begin() as connection:
                if term is not None:
                    check_term(connection, term)
                yield connection
        finally:
            self.changes.wrote()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with _database_errors(), Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def fetch_all(
        self, statement: Executable | PlainStatement[Any], parameters: Mapping[str, Any] | None = None
    ) -> Sequence[Sequence[Any]]:
        """The rows of one read-only statement, without a session or a transaction around it: the read units of
        work of every call (a slice's leases, its slivers' slices) are one statement each, which the database
        answers from one snapshot anyway; on PostgreSQL this is one round trip instead of BEGIN, query, COMMIT.
        A ``PlainStatement`` runs on the driver's cursor (plain_statements.py)."""
        return self._alone(statement, parameters or {})

    def write_alone(
        self, statement: Executable | PlainStatement[Any], parameters: Mapping[str, Any] | None = None
    ) -> Sequence[Sequence[Any]]:
        """PostgreSQL: one writing statement as a unit of work of its own (autocommit: no BEGIN and COMMIT, one round
        trip instead of three), answering its rows. The statement must bump the generation itself when it writes
        (generation.bump_after): ``write()``'s bump is not there. A failure raises as in ``write()``. In a background
        task's thread (``fence.fenced``) it runs in a transaction after the leadership term's check instead (as
        ``write_connection()``): LeadershipLost, nothing written, when another process leads since."""
        if self.is_sqlite:
            raise ValueError("write_alone is for PostgreSQL (an SQLite writer must begin with BEGIN IMMEDIATE)")
        term = fence_term()
        try:
            if term is not None:
                return self._fenced_alone(statement, parameters or {}, term)
            return self._alone(statement, parameters or {})
        finally:
            self.changes.wrote()

    def _fenced_alone(
        self, statement: Executable | PlainStatement[Any], parameters: Mapping[str, Any], term: int
    ) -> Sequence[Sequence[Any]]:
        """``write_alone``'s statement in a transaction of its own, after the check of the leadership ``term``."""
        executable = statement.statement if isinstance(statement, PlainStatement) else statement
        with _database_errors(), self._writer.begin() as connection:
            check_term(connection, term)
            result = connection.execute(executable, parameters)
            return result.all() if result.returns_rows else []

    def _alone(
        self, statement: Executable | PlainStatement[Any], parameters: Mapping[str, Any]
    ) -> Sequence[Sequence[Any]]:
        engine = self.engine  # (once: the property looks at the calling greenlet)
        compiled = statement.compiled_for(engine.dialect) if isinstance(statement, PlainStatement) else None
        if compiled is None:
            executable = statement.statement if isinstance(statement, PlainStatement) else statement
            with _database_errors(), self._single_reader.connect() as connection:
                return connection.execute(executable, parameters).all()
        with _database_errors():
            pooled = self._pooled(engine)
            try:
                if self.is_sqlite:  # in autocommit already (_sqlite_connect): one statement, one implicit transaction
                    return run_plain(pooled, compiled, parameters, engine.dialect, engine.dispatch, None)
                # (The DBAPI connection, not the driver's: an asynchronous one sets autocommit through its adapter.)
                driver: Any = pooled.dbapi_connection
                driver.autocommit = True  # as the AUTOCOMMIT isolation level of _single_reader sets it
                try:
                    return run_plain(pooled, compiled, parameters, engine.dialect, engine.dispatch, None)
                finally:
                    if pooled.is_valid:
                        driver.autocommit = False
            finally:
                pooled.close()

    def _pooled(self, engine: Engine) -> Any:
        """A pooled DBAPI connection of ``engine``; a database that cannot be reached raises as ``Engine.connect``
        would (SQLAlchemy's DBAPIError: DBERROR, never the driver's own exception)."""
        dialect = engine.dialect
        try:
            return engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc

    def upgrade(self, force: bool = True) -> tuple[str | None, str]:
        """Bring the schema to the newest migration (``sfa-omf db upgrade``); says so in the log when it migrates.
        Answers the migration it was at (None: empty) and the one it is at now.

        ``force`` False (``db upgrade`` without ``--force``), on PostgreSQL: a schema that needs migrating is refused
        (GeniError DATABASE, nothing changed) while other sfa-omf processes are connected (``serving_sessions``):
        two versions must never share the database (docs/operators.md, Upgrades).

        Alembic's own INFO lines are not wanted at every start (sfa-omf's logging keeps them at WARNING): one line of
        ours tells when a migration really runs. On PostgreSQL, upgrades run one at a time (MIGRATION_KEY, held until
        the migration commits): a second ``db upgrade`` started meanwhile (another host) waits, then finds the schema
        current. On SQLite the database's write lock, taken first, does the same.
        """
        from alembic import command  # Alembic is needed only here: commands that only read need not import it
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        # The writers' engine: on SQLite it begins with BEGIN IMMEDIATE, so a second upgrade waits for the first.
        with (
            _advising(),
            self._connected(self._writer) as connection,
            _database_errors(),
            connection.begin(),
            # A migration may take long on a large calendar, and waits for another host's: not bounded.
            _answers_unbounded(connection),
        ):
            if not self.is_sqlite:
                connection.execute(text("SET LOCAL statement_timeout = 0"))
                _one_migration_at_a_time(connection)
            current = MigrationContext.configure(connection).get_current_revision()
            head = head_revision()
            if current is not None and not is_known_revision(current):
                raise GeniError(Reason.DATABASE, f"{unknown_revision_message(self.url, current)} (nothing was changed)")
            if current != head and not force and not self.is_sqlite:
                serving = serving_sessions(connection)
                if serving:
                    raise GeniError(
                        Reason.DATABASE,
                        f"the calendar database {make_url(self.url).render_as_string(hide_password=True)} is "
                        f"still used by {len(serving)} sfa-omf process{'es' if len(serving) > 1 else ''} "
                        f"({', '.join(serving)}): stop every `sfa-omf serve` on every host first (an older version "
                        "must never run on the migrated database), then run `sfa-omf db upgrade` again (--force "
                        f"migrates anyway); nothing was changed, it is still at migration {current}",
                    )
            if current != head:
                log.info("migrating the calendar database from %s to %s", current or "an empty schema", head)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        return current, head

    def require_current_schema(self) -> None:
        """For the operator's commands other than ``db upgrade``: the schema must be this sfa-omf's newest migration.

        An empty database (or an SQLite file not there yet) is created, as these commands always did on a first run.
        A schema at another migration is refused (GeniError DATABASE, nothing written): migrating it is ``sfa-omf db
        upgrade``'s work alone, as an operator decides, never a side effect of a command run while servers of the
        older version still use the database (a rolling upgrade).
        """
        if self._stored_revision() == newest_migration_file():
            return  # the usual case on SQLite, read without importing Alembic (0.2 s of a light command's start-up)
        with _advising():
            current = self.schema_revision()
        if current is None:
            self.upgrade()
            return
        head = head_revision()
        if current == head:
            return
        shown = make_url(self.url).render_as_string(hide_password=True)
        if not is_known_revision(current):
            raise GeniError(Reason.DATABASE, unknown_revision_message(self.url, current))
        raise GeniError(
            Reason.DATABASE,
            f"the calendar database {shown} is at migration {current}, this sfa-omf needs {head}: stop every "
            "`sfa-omf serve` on every host first (two versions must never share the database), then run "
            "`sfa-omf db upgrade`, then start them; nothing was changed",
        )

    def _stored_revision(self) -> str | None:
        """SQLite: the migration the file records, read with one plain statement; None when it cannot be read that
        way (no file yet, no such table), and on PostgreSQL, whose reads ``schema_revision`` bounds in time."""
        if not self.is_sqlite:
            return None
        path = make_url(self.url).database
        if path and path != ":memory:" and not Path(path).exists():
            return None  # (connecting would create the file)
        try:
            with self.engine.connect() as connection:
                return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:
            return None

    def schema_revision(self, connect_timeout_s: int = CONNECT_TIMEOUT_S) -> str | None:
        """The database's migration (None: an empty database, or an SQLite file that does not exist yet).

        Reads only: a missing SQLite file is not created. Raises DatabaseUnreachable when the database cannot be
        opened (within ``connect_timeout_s`` on PostgreSQL, or the URL's own ``?connect_timeout=N``; an SQLite file
        whose directory does not exist, or that is not a database), GeniError(DATABASE) when it cannot be read.
        """
        from alembic.runtime.migration import MigrationContext

        if self.is_sqlite:
            path = make_url(self.url).database
            if path and path != ":memory:" and not Path(path).exists():
                if not Path(path).resolve().parent.is_dir():
                    # Not "empty, run db upgrade": db upgrade could not create the file either.
                    raise DatabaseUnreachable(self.url, "unable to open database file")
                return None
            engine = self.engine
        else:
            # The URL's own ?connect_timeout=N wins, as for the engine (_connect_timeout_args): the driver's
            # arguments would override it.
            url_sets_it = "connect_timeout" in make_url(self.url).query
            connect_args = {} if url_sets_it else {"connect_timeout": connect_timeout_s}
            engine = create_engine(self.url, connect_args=connect_args)
        try:
            with self._connected(engine) as connection, _database_errors():
                return MigrationContext.configure(connection).get_current_revision()
        finally:
            if engine is not self.engine:
                engine.dispose()

    @contextmanager
    def _connected(self, engine: Engine) -> Iterator[Connection]:
        """A connection of ``engine`` (this database), closed at the end; DatabaseUnreachable when it cannot be
        opened."""
        try:
            connection = engine.connect()
        except DBAPIError as exc:
            raise DatabaseUnreachable(self.url, str(exc.orig)) from exc
        with connection:
            yield connection

    def dispose(self) -> None:
        self.changes.close()
        self._sync_engines.engine.dispose()
        if self._reactor_engines is not None:
            # (Closing an asynchronous connection awaits: outside the reactor's loop the pool only lets them go.)
            self._reactor_engines.engine.dispose(close=False)


@dataclass(frozen=True)
class _Engines:
    """One engine and its two faces: for writing units of work, and for single statements without a transaction."""

    engine: Engine
    writer: Engine
    single_reader: Engine

    @staticmethod
    def of(engine: Engine, is_sqlite: bool) -> _Engines:
        # One statement alone sees one snapshot: no BEGIN and COMMIT around it (on PostgreSQL one round trip). SQLite
        # connections are in autocommit already (_sqlite_connect) and _sqlite_begin skips BEGIN for these; asking
        # SQLAlchemy for AUTOCOMMIT there would set pysqlite's own transaction handling back on at check-in.
        single = {"sfa_omf_single_read": True} if is_sqlite else {"isolation_level": "AUTOCOMMIT"}
        return _Engines(engine, engine.execution_options(sfa_omf_write=True), engine.execution_options(**single))


def _watch_postgres(engine: Engine, url: str, statement_timeout_s: int | None) -> None:
    """A PostgreSQL engine's connections: their statement_timeout, and a ping of those idle for a while. (No pre-ping
    per checkout, a round trip on every unit of work: a connection is pinged only when it has been idle long enough
    for the server to have gone away meanwhile, _ping_if_idle.)"""
    if statement_timeout_s is not None and not _sets_statement_timeout(url):
        event.listen(engine, "connect", functools.partial(_bound_statements, statement_timeout_s))
    event.listen(engine, "connect", _note_idle)
    event.listen(engine, "checkin", _note_idle)
    event.listen(engine, "checkout", _ping_if_idle)


class DatabaseUnreachable(GeniError):
    """The calendar's database could not be opened: a PostgreSQL server down, refusing or silent, a wrong URL, an
    SQLite file in a directory that does not exist or that is not an SQLite database.

    ``message`` is the database's own words, as for any failure of the database; ``advice`` names the database and
    says what to do, for the operator's commands and ``sfa-omf serve``'s checks (``opening_advice``).
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(Reason.DATABASE, f"the calendar database failed: {reason}")
        self.advice = opening_advice(url, reason)


def opening_advice(url: str, reason: str) -> str:
    """One line after "the calendar database ": which database could not be opened, why (``reason``: the database's
    words) and what to do."""
    parsed = make_url(url)
    reason = " ".join(reason.split())  # drivers answer on several lines
    if parsed.get_backend_name() != "sqlite":
        shown = parsed.render_as_string(hide_password=True)
        return f"{shown} cannot be reached: {reason}; start it, or fix [sfa_omf] database_url / [sfa_db]"
    path = parsed.database or ":memory:"
    directory = Path(path).resolve().parent
    if path != ":memory:" and not directory.is_dir():
        return (
            f"{path} cannot be created: its directory {directory} does not exist; create it (mkdir -p {directory}, "
            "owned by the user running sfa-omf), or fix [sfa_omf] database_url"
        )
    if "file is not a database" in reason:  # SQLite's words for SQLITE_NOTADB
        return (
            f"{path} is not an SQLite database ({reason}); fix [sfa_omf] database_url, or move the file aside "
            "(sfa-omf db upgrade then creates an empty calendar there)"
        )
    full = _full_file_system(directory) if path != ":memory:" else None
    if full is not None:  # SQLite says "disk I/O error" (it cannot make its -wal or -shm file): not a permission
        return (
            f"{path} cannot be opened: {reason}; the file system holding {directory} is full ({full}): free space "
            "there, then start again"
        )
    return (
        f"{path} cannot be opened: {reason}; the user running sfa-omf must be able to read and write it and its "
        "directory, or fix [sfa_omf] database_url"
    )


#: Free space under which the file system of an SQLite calendar that cannot be opened is said to be full: SQLite
#: needs room for its journal (-wal) and shared memory (-shm) files to open it at all.
FULL_BELOW_BYTES = 1024 * 1024


def _full_file_system(directory: Path) -> str | None:
    """How little room the file system holding ``directory`` has ("N bytes free", "no inodes free") when it is full
    (under FULL_BELOW_BYTES, or no inode left), else None (or when it cannot be asked)."""
    try:
        found = os.statvfs(directory)
    except OSError:
        return None
    # root may use the blocks and inodes reserved for root (ext4's 5 %): only for root are they free.
    root = os.geteuid() == 0
    free = (found.f_bfree if root else found.f_bavail) * found.f_frsize
    # (0 inodes in all: a file system that does not count them, as btrfs)
    no_inodes = found.f_files > 0 and (found.f_ffree if root else found.f_favail) == 0
    if free >= FULL_BELOW_BYTES and not no_inodes:
        return None
    return f"{free} bytes free" + (", no inodes free" if no_inodes else "")


@contextmanager
def _advising() -> Iterator[None]:
    """For the operator's commands: a database that cannot be opened is refused naming it and what to do (the
    DBERROR prefix kept, as for every failure of the database)."""
    try:
        yield
    except DatabaseUnreachable as exc:
        raise GeniError(Reason.DATABASE, f"the calendar database failed: {exc.advice}") from exc


def _connect_timeout_args(url: str) -> dict[str, int]:
    """The driver's arguments bounding how long opening a PostgreSQL connection may take: CONNECT_TIMEOUT_S, unless
    the URL sets its own (``?connect_timeout=N``)."""
    if "connect_timeout" in make_url(url).query:
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT_S}


#: TCP keepalives of PostgreSQL connections (idle, interval, count): a database host that vanished while a statement
#: ran (a network cut, a crash) is noticed within about 25 s instead of the kernel's two hours.
KEEPALIVES = (10, 5, 3)


def _bounded_wait_args(url: str, statement_timeout_s: int | None) -> dict[str, int]:
    """The driver's arguments bounding how long a statement may wait: TCP keepalives always (unless the URL sets
    its own); with ``statement_timeout_s``, a TCP user timeout as long (data the database never acknowledges). The
    statement_timeout itself is set on each new connection (_bound_statements): libpq's ``options`` parameter would
    replace the operator's own (PGOPTIONS, a service file's search_path)."""
    query = make_url(url).query
    args: dict[str, int] = {}
    if "keepalives" not in query:
        idle, interval, count = KEEPALIVES
        args.update(keepalives=1, keepalives_idle=idle, keepalives_interval=interval, keepalives_count=count)
    if statement_timeout_s is not None and "tcp_user_timeout" not in query:
        args["tcp_user_timeout"] = statement_timeout_s * 1000
    return args


def _sets_statement_timeout(url: str) -> bool:
    """True when the operator sets statement_timeout for the connections already: in the URL's ``options`` or in
    PGOPTIONS (theirs wins)."""
    own = make_url(url).query.get("options", "")
    options = " ".join(own) if isinstance(own, tuple) else own
    return "statement_timeout" in options or "statement_timeout" in os.environ.get("PGOPTIONS", "")


#: statement_timeout as PostgreSQL reads it in options (a number, in ms unless a unit follows).
_STATEMENT_TIMEOUT = re.compile(r"statement_timeout\s*=\s*'?\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\b")
_TIMEOUT_UNITS_S = {"us": 1e-6, "ms": 1e-3, "": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def answer_limit_s(url: str, statement_timeout_s: int | None) -> float | None:
    """How long a serving process waits for any answer of PostgreSQL (_answer_bounded_class): NO_ANSWER_MARGIN_S
    more than the statement_timeout its connections have, the operator's when they set one (the URL's options or
    PGOPTIONS win, docs/configuration.md: a longer one lets long statements run; 0, or one that cannot be read, no
    bound), else ``statement_timeout_s``; None (no bound) for commands."""
    if statement_timeout_s is None:
        return None
    if not _sets_statement_timeout(url):
        return statement_timeout_s + NO_ANSWER_MARGIN_S
    own = make_url(url).query.get("options", "")
    options = f"{' '.join(own) if isinstance(own, tuple) else own} {os.environ.get('PGOPTIONS', '')}"
    found = _STATEMENT_TIMEOUT.findall(options)
    if not found:
        return None
    number, unit = found[-1]  # (the last one set wins, as in PostgreSQL)
    theirs_s = float(number) * _TIMEOUT_UNITS_S[unit]
    return None if theirs_s == 0 else max(theirs_s, statement_timeout_s) + NO_ANSWER_MARGIN_S


def _bound_statements(statement_timeout_s: int, dbapi_connection: Any, _record: Any) -> None:
    """A new connection's statement_timeout (Database's ``statement_timeout_s``), set for its session."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True  # nothing left open: the pool hands it over outside a transaction
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET statement_timeout = {int(statement_timeout_s) * 1000}")
        finally:
            cursor.close()
    finally:
        dbapi_connection.autocommit = autocommit


#: The attribute of an answer-bounded psycopg connection (_answer_bounded_class) that holds its limit (None: none).
_ANSWER_LIMIT = "sfa_omf_answer_limit_s"


@functools.cache
def _answer_bounded_class() -> type[Any] | None:
    """psycopg's connection, bounding how long each exchange with the database (a statement, a commit, a rollback)
    waits for its answer: its ``sfa_omf_answer_limit_s``, None for no bound. When the limit passes, the connection is
    closed on this side and the statement raises OperationalError (the pool then discards the connection, as for a
    database gone). psycopg's own wait with a deadline does it (no thread, nothing on the hot path but the deadline):
    the database's statement_timeout cannot end a wait on a server that does not run, nor TCP timeouts one whose
    kernel acknowledges. None when psycopg is too old to bound its waits (3.3 bounds them)."""
    import psycopg
    from psycopg import errors

    wait_timeout: type[BaseException] | None = getattr(errors, "_WaitTimeout", None)
    if wait_timeout is None or "timeout" not in psycopg.Connection.wait.__code__.co_varnames:
        log.warning(
            "psycopg %s cannot bound its waits (3.3 can): a database that hangs holds calls", psycopg.__version__
        )
        return None
    timed_out = wait_timeout
    no_answer = _no_answer_class()

    class AnswerBounded(psycopg.Connection[Any]):
        sfa_omf_answer_limit_s: float | None = None

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            limit = self.sfa_omf_answer_limit_s
            if limit is None or timeout is not None:  # (psycopg's own bounded waits: a cancellation's)
                return super().wait(gen, interval, timeout)
            try:
                return super().wait(gen, interval, limit)
            except timed_out as exc:
                # The exchange is cut halfway: the connection cannot be used any more; closing it here also tells a
                # database that resumes to end its session (its transaction rolled back, unless its COMMIT was sent).
                self.pgconn.finish()
                raise no_answer(_no_answer_words(limit)) from exc

    return AnswerBounded


@functools.cache
def _no_answer_class() -> type[Exception]:
    import psycopg

    class NoAnswer(psycopg.OperationalError):
        """The database did not answer within the connection's limit: the connection was closed."""

    return NoAnswer


def _no_answer_words(limit_s: float) -> str:
    return f"no answer from the database within {limit_s:g} s (it, or its host, hangs); its connection was closed"


def _async_answer_bounded_connect(limit_s: float | None) -> Callable[..., Any]:
    """psycopg's asynchronous connect (the engine's ``async_creator_fn``), its connections bounded as
    _answer_bounded_class bounds the others: each exchange with the database waits ``limit_s`` at most for its answer
    (None: no bound, but a pooled connection's ping has one). psycopg 3.3's ``AsyncConnection.wait`` takes the
    deadline (requirements: psycopg >= 3.3)."""
    import psycopg
    from psycopg import errors

    timed_out: type[BaseException] = errors._WaitTimeout
    no_answer = _no_answer_class()

    class AsyncAnswerBounded(psycopg.AsyncConnection[Any]):
        sfa_omf_answer_limit_s: float | None = None

        async def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            limit = self.sfa_omf_answer_limit_s
            if limit is None or timeout is not None:  # (psycopg's own bounded waits: a cancellation's)
                return await super().wait(gen, interval, timeout)
            try:
                return await super().wait(gen, interval, limit)
            except timed_out as exc:
                self.pgconn.finish()  # (cut halfway: as _answer_bounded_class does)
                raise no_answer(_no_answer_words(limit)) from exc

    async def connect(*args: Any, **kwargs: Any) -> Any:
        connection = await AsyncAnswerBounded.connect(*args, **kwargs)
        connection.sfa_omf_answer_limit_s = limit_s
        return connection

    return connect


def bound_answers(engine: Engine, limit_s: float | None) -> None:
    """Make ``engine`` (PostgreSQL) open answer-bounded connections (_answer_bounded_class): each exchange with the
    database waits ``limit_s`` at most for its answer (None: no bound, but a pooled connection's ping has one)."""

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        bounded = _answer_bounded_class()
        if bounded is None:
            return None  # (psycopg's own connect)
        connection = bounded.connect(*cargs, **cparams)
        connection.sfa_omf_answer_limit_s = limit_s
        return connection


@contextmanager
def _answers_unbounded(connection: Connection) -> Iterator[None]:
    """No bound on the answers on ``connection`` for the block (a migration's, which may take long); its limit back
    after, for the pool's next user."""
    driver = connection.connection.driver_connection
    limit = getattr(driver, _ANSWER_LIMIT, None)
    if limit is None:
        yield
        return
    setattr(driver, _ANSWER_LIMIT, None)
    try:
        yield
    finally:
        setattr(driver, _ANSWER_LIMIT, limit)


def unknown_revision_message(url: str, revision: str) -> str:
    """The refusal of a database at ``revision``, a migration this sfa-omf does not have (``is_known_revision``): a
    newer sfa-omf migrated it, and ``db upgrade`` cannot help."""
    shown = make_url(url).render_as_string(hide_password=True)
    return (
        f"the calendar database {shown} is at migration {revision}, which this sfa-omf (newest migration "
        f"{head_revision()}) does not know: a newer sfa-omf migrated it; run that version"
    )


def is_known_revision(revision: str) -> bool:
    """True when ``revision`` is one of this sfa-omf's migrations."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory(str(MIGRATIONS)).get_revision(revision) is not None
    except CommandError:
        return False


def serving_sessions(connection: Connection) -> list[str]:
    """The other sfa-omf processes connected to this PostgreSQL database (each serving process holds a leadership
    session named ``sfa-omf ...``: cluster/leadership.py), each as ``application_name from client_addr (pid N)``."""
    rows = connection.execute(
        text(
            "SELECT application_name, client_addr, pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'sfa-omf %' AND pid <> pg_backend_pid() ORDER BY application_name, pid"
        )
    ).all()
    return [f"{name} from {address or 'a local socket'} (pid {pid})" for name, address, pid in rows]


def _one_migration_at_a_time(connection: Connection) -> None:
    """Take MIGRATION_KEY for the rest of the migration's transaction (PostgreSQL), saying so when another process
    holds it. Taken before the schema's revision is read: read committed, the waiter then sees the other's work."""
    if connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": MIGRATION_KEY}).scalar():
        return
    log.warning("another sfa-omf is migrating the calendar database: waiting for it to finish")
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_KEY})


def newest_migration_file() -> str:
    """The revision of the newest migration, from the migrations' file names (``NNNN_what.py`` holds revision
    ``NNNN``, a test checks it against Alembic's head): without importing Alembic."""
    return max(path.name.split("_", 1)[0] for path in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def head_revision() -> str:
    """The newest migration this version of sfa-omf brings."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None, "the migrations folder holds no migration"
    return head


def _pool_sizes(url: str, connections: int) -> dict[str, int]:
    """The pool's sizes for ``create_engine``: for a pool that keeps connections (PostgreSQL, an SQLite file); none
    for an in-memory SQLite database, whose pool holds one connection per thread (it takes no sizes)."""
    parsed = make_url(url)
    dialect = cast(type[DefaultDialect], parsed.get_dialect())
    if not issubclass(dialect.get_pool_class(parsed), QueuePool):
        return {}
    return {"pool_size": connections, "max_overflow": OVERFLOW_CONNECTIONS}


def _locked_busy(words: str) -> GeniError:
    """SQLite's write lock held by another writer for longer than the busy timeout (another process's long write,
    an operator's sqlite3 shell in a transaction): BUSY, as PostgreSQL's statement_timeout answers the same wait."""
    return GeniError(
        Reason.BUSY,
        f"the calendar database is locked by another writer ({words}, for over {SQLITE_BUSY_TIMEOUT_MS // 1000} s): "
        "nothing was changed, try again",
    )


def _is_sqlite_busy(error: BaseException | None) -> bool:
    """True for SQLite's SQLITE_BUSY ("database is locked"), its extended codes included."""
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code: int | None = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_BUSY
    return "database is locked" in str(error)


@contextmanager
def _queued(writers: threading.RLock | None) -> Iterator[None]:
    """Wait for this process's SQLite writers' lock, as long as SQLite's busy timeout would have waited, and answer
    as SQLite would then (the database is locked: BUSY) rather than wait for ever."""
    if writers is None:
        yield
        return
    if not writers.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
        raise _locked_busy("busy with this process's other writers")
    try:
        yield
    finally:
        writers.release()


#: The SQLite calendar's mode: it holds users' e-mail addresses, webhook URLs (with their tokens) and the outbox. Its
#: -wal and -shm files take the same (SQLite gives them the database file's mode).
SQLITE_FILE_MODE = 0o600


def _sqlite_file(url: str) -> str | None:
    """The file an SQLite URL names; None for an in-memory database or a ``file:`` URI (left to SQLite)."""
    parsed = make_url(url)
    path = parsed.database
    if not path or path == ":memory:" or "uri" in parsed.query:
        return None
    return path


def _make_private_file(path: str, *_connect: Any) -> None:
    """Before SQLite opens ``path``: make it, empty (an empty file is an empty database), with SQLITE_FILE_MODE
    whatever the umask, when it does not exist; SQLite itself would make it 0644, readable by every local user."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, SQLITE_FILE_MODE)
    except OSError:  # there already (the usual case); or a directory missing or not writable, as SQLite then says
        return
    try:
        os.fchmod(descriptor, SQLITE_FILE_MODE)
    finally:
        os.close(descriptor)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own transaction handling would defer it).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    options = connection.get_execution_options()
    if options.get("sfa_omf_single_read", False):
        return  # one statement: SQLite runs it in its own implicit read transaction
    immediate = options.get("sfa_omf_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


#: A pooled PostgreSQL connection idle longer than this is pinged before use (a restarted server, a dropped
#: connection); one used a moment ago is not, so busy servers pay no round trip for it.
PING_AFTER_IDLE_S = 1.0
_IDLE_SINCE = "sfa_omf_idle_since"


def _note_idle(_dbapi_connection: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    idle_since = record.info.get(_IDLE_SINCE)
    if idle_since is not None and time.monotonic() - idle_since < PING_AFTER_IDLE_S:
        return
    # (An asynchronous connection's adapter holds the driver's connection, which holds the limit.)
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    bounded = hasattr(driver, _ANSWER_LIMIT)
    limit = getattr(driver, _ANSWER_LIMIT, None)
    if bounded:  # a ping answers at once, or the connection is replaced (a database that hangs: opening one fails)
        setattr(driver, _ANSWER_LIMIT, PING_LIMIT_S if limit is None else min(limit, PING_LIMIT_S))
    try:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # the ping must not leave a transaction open
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
        finally:
            dbapi_connection.autocommit = autocommit
    except Exception as exc:
        raise DisconnectionError(f"a pooled connection failed its ping: {exc}") from exc  # the pool replaces it
    finally:
        if bounded:
            setattr(driver, _ANSWER_LIMIT, limit)


def connection_of(session: Session, writes: bool = False, bumps: bool = False) -> Connection:
    """The unit of work's connection, for statements that answer plain rows (never ORM objects) on hot paths: a
    statement run on it costs 0.01-0.06 ms less than through ``session.execute`` (no ORM execution machinery; an
    ORM-enabled select the most), measured on SQLite. ``writes``: the caller writes through it, which the session's
    events do not see: noted, so that ``Database.write()`` bumps the generation. ``bumps``: the caller's statement
    writes and bumps the generation itself (``generation.bump_after``): ``Database.write()`` does not bump it again,
    whatever else the unit of work writes (one bump a unit of work, committed with all of it)."""
    if writes or bumps:
        session.info[WROTE] = True
    if bumps:
        session.info[BUMPED] = True
    return session.connection()


def is_overlap_violation(error: IntegrityError) -> bool:
    """True when PostgreSQL refused a row because of the no-overlap exclusion constraint."""
    original = error.orig
    return getattr(original, "sqlstate", None) == "23P01" or OVERLAP_CONSTRAINT in str(original)


@contextmanager
def _database_errors() -> Iterator[None]:
    """A database that is down or failing becomes DBERROR with the database's own words, never a traceback."""
    try:
        yield
    except IntegrityError:
        raise  # the calendar turns these into conflicts
    except DBAPIError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate in TRANSIENT_SQLSTATES:
            raise TransientConflict(str(exc.orig)) from exc
        if sqlstate == QUERY_CANCELED:
            # statement_timeout (Database's statement_timeout_s), or an operator's pg_cancel_backend: the
            # transaction is rolled back whole.
            raise GeniError(
                Reason.BUSY,
                f"the calendar database did not answer in time ({str(exc.orig).strip()}): a row this call needs is "
                "locked by another session, or the database is overloaded; nothing was changed, try again",
            ) from exc
        if _is_sqlite_busy(exc.orig):
            raise _locked_busy(str(exc.orig)) from exc
        raise GeniError(Reason.DATABASE, f"the calendar database failed: {exc.orig}") from exc


def retry_transient(unit_of_work: Callable[[], T], attempts: int = RETRY_ATTEMPTS) -> T:
    """Run a whole unit of work again when concurrent writers collided; BUSY when they keep colliding."""
    for attempt in range(attempts):
        try:
            return unit_of_work()
        except TransientConflict as exc:
            if attempt == attempts - 1:
                raise GeniError(
                    Reason.BUSY, f"the calendar is busy with concurrent bookings ({exc}); try again"
                ) from exc
            pause(random.uniform(0, 0.01 * (2**attempt)))  # back off, with jitter so racers separate
    raise AssertionError("unreachable")


def retry_raced(unit_of_work: Callable[[], T], what: str, attempts: int = RACE_ATTEMPTS) -> T:
    """Run a unit of work again when a concurrent request inserted a row it meant to insert (PostgreSQL refuses the
    second row of a unique key: IntegrityError): the next try sees that row and takes it into account. BUSY naming
    ``what`` when every try lost its race."""
    for attempt in range(attempts):
        try:
            return unit_of_work()
        except IntegrityError as exc:
            if attempt == attempts - 1:
                raise GeniError(
                    Reason.BUSY, f"{what} collided with concurrent requests {attempts} times in a row; try again"
                ) from exc
    raise AssertionError("unreachable")
