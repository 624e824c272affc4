"""The calendar's hottest statements run straight on the database driver's cursor, with their SQL compiled once.

SQLAlchemy's Core costs 0.08-0.09 ms around every statement it runs (the cache key, the execution context, the result
object), where the driver itself takes 0.01-0.02 ms for a small slice's leases on SQLite: that was half of a Status's
calendar work. A ``PlainStatement`` is an ordinary Core statement, built once at import, whose SQL text and parameter
order are compiled once per dialect; ``run_plain`` hands them to the DBAPI cursor and answers plain tuples.

Only statements that need nothing of SQLAlchemy at execution time go this way: no list parameter expanded into
``IN (...)`` (``listed`` binds a short list one parameter per value instead), and only integer, string, boolean and
JSON columns and parameters, or parameters of no declared type (converted as SQLAlchemy would).
Any other statement is run by SQLAlchemy as before (``compiled_for`` answers None). Errors of the driver are raised as
SQLAlchemy's own exception classes (IntegrityError, OperationalError, ...), a lost connection invalidated in the pool,
so callers handle them exactly as before. The engine's ``before_cursor_execute`` listeners are called with the
statement's SQL and parameters (how tests watch and interleave statements), but with no execution context (None),
and with no connection (None) for ``Database.fetch_all`` and ``write_alone``; ``after_cursor_execute`` and
``handle_error`` are not called.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import JSON, BindParameter, Boolean, Connection, Executable, Integer, String, bindparam
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import Compiled
from sqlalchemy.types import NullType, TypeDecorator, TypeEngine

Convert = Callable[[Any], Any] | None
StatementT = TypeVar("StatementT", bound=Executable)
#: A list of values bound as this many parameters at most (``listed``); longer lists are expanded by SQLAlchemy.
MAX_LISTED = 16


@dataclass(frozen=True)
class CompiledPlain:
    """One statement's SQL for one dialect: the text, how to lay out its parameters, how to convert its columns."""

    sql: str
    names: tuple[str, ...]  # every parameter, in the SQL's order for qmark dialects (SQLite)
    positional: bool  # qmark (SQLite): a tuple of values in that order; else a mapping (pyformat, PostgreSQL)
    defaults: Mapping[str, Any]  # values bound in the statement itself (literals in its WHERE)
    bind_converters: Mapping[str, Callable[[Any], Any]]
    column_converters: tuple[Convert, ...] | None  # None: every column comes from the driver as it is
    # Whether it answers rows (a SELECT, a RETURNING), known from the statement: asking the cursor (psycopg's
    # ``description``) builds a column object per column on every execution (2 us for 1 column, 15 for 10, measured
    # alone). None: ask it.
    returns_rows: bool | None = None

    def arguments(self, parameters: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        values = {**self.defaults, **parameters}
        missing = [name for name in self.names if name not in values]
        if missing:
            raise ValueError(f"a value is required for the parameters {missing} of: {self.sql}")
        for name, convert in self.bind_converters.items():
            values[name] = convert(values[name])
        if self.positional:
            return tuple(values[name] for name in self.names)
        return {name: values[name] for name in self.names}


class PlainStatement(Generic[StatementT]):
    """A Core statement that may be run on the driver's cursor (``run_plain``); compiled lazily, once per dialect.
    ``statement`` is the Core statement itself (to compose others from it)."""

    def __init__(self, statement: StatementT) -> None:
        self.statement = statement
        self._compiled: dict[tuple[Any, ...], CompiledPlain | None] = {}
        self._lock = threading.Lock()

    def compiled_for(self, dialect: Dialect) -> CompiledPlain | None:
        """The statement's SQL for ``dialect``; None when it needs SQLAlchemy to run (see the module's docstring)."""
        # By what decides the text: the database, its driver's parameter style and the server's version (an engine's
        # dialect knows it once connected; a dialect made without a database, as in tests, does not).
        key = (dialect.name, dialect.driver, dialect.paramstyle, getattr(dialect, "server_version_info", None))
        try:
            return self._compiled[key]
        except KeyError:
            with self._lock:
                if key not in self._compiled:
                    self._compiled[key] = _compile(self.statement, dialect)
                return self._compiled[key]

    def __repr__(self) -> str:
        return f"PlainStatement({self.statement})"


def execute_plain(
    connection: Connection, statement: PlainStatement[Any], parameters: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run ``statement`` inside ``connection``'s unit of work (``Database.write_connection``, or ``connection_of`` a
    session's) on the driver's cursor: its rows as tuples. What it writes, the caller tells as for any statement on
    that connection (``connection_of(session, writes=True)``, ``bump_on``)."""
    dialect = connection.dialect
    compiled = statement.compiled_for(dialect)
    if compiled is None:
        return [tuple(row) for row in connection.execute(statement.statement, parameters or {})]
    return run_plain(connection.connection, compiled, parameters or {}, dialect, connection.dispatch, connection)


def listed(name: str, count: int) -> list[BindParameter[Any]] | BindParameter[Any]:
    """The parameters of ``column.in_(...)`` for a list of ``count`` values: one bound parameter each (``name_0``,
    ``name_1``, ...), so that the statement is plain, or one expanding parameter ``name`` for a long list.
    Build statements with it once per count (``functools.lru_cache``); bind with ``listed_values``."""
    if count > MAX_LISTED:
        return bindparam(name, expanding=True)
    return [bindparam(f"{name}_{number}") for number in range(count)]


def listed_count(values: Sequence[Any]) -> int:
    """The count to build a ``listed`` statement with for ``values``: every count past MAX_LISTED shares one (an
    expanding parameter), so a statement cache keyed by it stays bounded."""
    return min(len(values), MAX_LISTED + 1)


def listed_values(name: str, values: Sequence[Any]) -> dict[str, Any]:
    """The parameters ``listed(name, len(values))`` stands for, bound to ``values``."""
    if len(values) > MAX_LISTED:
        return {name: list(values)}
    return {f"{name}_{number}": value for number, value in enumerate(values)}


def run_plain(
    dbapi_connection: Any,
    compiled: CompiledPlain,
    parameters: Mapping[str, Any],
    dialect: Dialect,
    events: Any,
    event_connection: Connection | None,
) -> list[tuple[Any, ...]]:
    """Run one compiled statement on a pooled DBAPI connection (SQLAlchemy's connection fairy, which ``invalidate``
    removes from the pool): its rows as tuples ([] for a statement that answers none). ``events``: the engine's or
    the connection's event dispatch, whose ``before_cursor_execute`` listeners are told of the statement (with
    ``event_connection``, which may be None, and no execution context: see the module's docstring)."""
    arguments = compiled.arguments(parameters)
    cursor = dbapi_connection.cursor()
    try:
        if events.before_cursor_execute:
            events.before_cursor_execute(event_connection, cursor, compiled.sql, arguments, None, False)
        cursor.execute(compiled.sql, arguments)
        returns_rows = compiled.returns_rows
        if returns_rows is None:
            returns_rows = cursor.description is not None
        rows: list[tuple[Any, ...]] = cursor.fetchall() if returns_rows else []
    except dialect.loaded_dbapi.Error as exc:
        lost = dialect.is_disconnect(exc, dbapi_connection, cursor)
        if lost:
            dbapi_connection.invalidate(exc)
        raise DBAPIError.instance(
            compiled.sql,
            arguments,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=lost,
            dialect=dialect,
        ) from exc
    finally:
        with contextlib.suppress(Exception):  # a cursor of a connection that broke: the error above is what matters
            cursor.close()
    converters = compiled.column_converters
    if converters is None:
        return [tuple(row) for row in rows] if rows and not isinstance(rows[0], tuple) else rows
    return [
        tuple(value if convert is None else convert(value) for convert, value in zip(converters, row, strict=True))
        for row in rows
    ]


# NullType: a parameter with no type given, bound as it is. JSON: encoded and decoded by the dialect's own converters
# (SQLite) or by the driver's, which SQLAlchemy configures on every connection it opens (psycopg).
_PLAIN_TYPES = (Integer, String, Boolean, JSON, NullType)


def _plain_type(type_: TypeEngine[Any]) -> bool:
    return isinstance(type_, _PLAIN_TYPES) and not isinstance(type_, TypeDecorator)


def _compile(statement: Executable, dialect: Dialect) -> CompiledPlain | None:
    compiled: Compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    binds = compiled.binds  # type: ignore[attr-defined]
    if any(bind.expanding or bind.literal_execute or not _plain_type(bind.type) for bind in binds.values()):
        return None
    exported = getattr(statement, "exported_columns", None)  # (a SELECT's columns, a RETURNING's, else none)
    columns = [] if exported is None else list(exported)
    if not all(_plain_type(column.type) for column in columns):
        return None
    # The dialect's own implementation of each type converts, as SQLAlchemy's execution would (SQLite's JSON, say).
    bind_converters = {
        name: convert
        for name, bind in binds.items()
        if (convert := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
    }
    column_converters = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns)
    positional = bool(getattr(compiled, "positional", False))
    return CompiledPlain(
        sql=str(compiled),
        names=tuple(compiled.positiontup if positional else binds),  # type: ignore[attr-defined]
        positional=positional,
        defaults={name: bind.effective_value for name, bind in binds.items() if not bind.required},
        bind_converters=bind_converters,
        column_converters=column_converters if any(column_converters) else None,
        # (An INSERT without RETURNING gets its primary key's on PostgreSQL, which SQLAlchemy adds when compiling.)
        returns_rows=None if exported is None else bool(columns or getattr(compiled, "effective_returning", None)),
    )
