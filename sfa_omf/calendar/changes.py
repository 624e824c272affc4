"""Whether the calendar may have changed since a moment, told without a statement on the caller's path.

``CalendarChanges.token()`` answers a change token: when two tokens taken at two moments are equal, no write was
committed to the calendar in between, by this process or any other. A reader that keeps what it read (kept_reads.py)
takes a token *before* reading, keeps the token with the rows, and uses them again only while the token is the same:
a write committed meanwhile makes the kept rows unused, never wrongly used (as for the generation: generation.py).

Where the token comes from:

- This process's writes: ``Database`` calls ``wrote()`` when each of its writing units of work ends (committed or
  rolled back: counting one that wrote nothing costs a read, never a stale answer), before the call that wrote answers.
- Other processes' and hosts' on PostgreSQL: every unit of work that writes bumps the generation in its transaction,
  and a trigger on the generation's rows (migration 0035) sends a notification on ``CHANNEL`` when that transaction
  commits. One thread per process LISTENs on a connection of its own and counts them. A notification arrives after
  its transaction committed, so a call here in between is answered as the calendar was before that write. How long
  that is depends on this process's load: the listening thread waits its turn for the interpreter lock (measured
  with another process writing and a machine loaded by tests: 4-41 ms, median 11, with one thread polling; median 29
  ms and up to 151 ms with eight). Status naming slivers does not wait for it (aggregate.py reads them fresh).
  While that thread is not listening (starting, the connection lost and being opened again) there is no token
  (None): callers read the database. A connection cut silently (this host cut off from the database's) is noticed
  by TCP keepalives, as the calendar's other connections (``connect_args``: database.py's).
- Other processes' on SQLite (commands an operator runs beside ``serve``): ``PRAGMA data_version`` on a connection of
  the calling thread's own, which changes whenever another connection commits to the file. It is a statement, but
  one that reads no table (SQLite answers it from the WAL index in memory). It is asked once in SQLITE_LOOK_S at
  most, whatever the rate of calls: a statement is a wait that hands the interpreter lock over, which cost Status
  with 8 clients about a tenth of its throughput when asked on every call (docs/benchmarks.md, "thirty-fifth
  session"). Another process's commit is seen within SQLITE_LOOK_S, as another host's on PostgreSQL is once its
  notification arrives.

Why: a Status's one read of the calendar costs the server more than the rest of the call (docs/benchmarks.md,
"thirty-fourth session"): not the statement's work but waiting for its answer while the call threads and the reactor
hand the interpreter lock to each other.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Hashable
from time import monotonic
from typing import Any

log = logging.getLogger("sfa_omf.calendar")

#: The channel the generation's trigger (migration 0035) notifies on.
CHANNEL = "sfa_omf_calendar"
#: SQLite: how long a look at the file's data_version is believed before a token asks again, in seconds (another
#: process's commit is seen within it; the notification's delay on PostgreSQL is of the same order).
SQLITE_LOOK_S = 0.02
#: How long the listening thread waits for notifications before it looks whether it should stop.
LISTEN_POLL_S = 1.0
#: Waits before opening the listening connection again after it failed: doubling from the first to the last.
RECONNECT_FIRST_S = 0.5
RECONNECT_LAST_S = 10.0
#: The numbers of listeners' versions and of SQLite's asking connections: never the same twice in a process (a
#: forked child goes on from its parent's count), so a token of an earlier listener or connection never matches.
_VERSIONS = itertools.count()


class CalendarChanges:
    """Change tokens for one database (see the module's docstring). ``url``: the database's SQLAlchemy URL;
    ``sqlite_path``: its file on SQLite (None: a database with no file, which gets no token); ``connect_args``: the
    driver's arguments for the listening connection on PostgreSQL (its connect timeout and TCP keepalives)."""

    def __init__(
        self, url: str, is_sqlite: bool, sqlite_path: str | None, connect_args: dict[str, Any] | None = None
    ) -> None:
        self._url = url
        self._connect_args = connect_args or {}
        self._is_sqlite = is_sqlite
        self._sqlite_path = sqlite_path
        # Each write sets a number never used before (next() is atomic under the interpreter lock): two threads may set
        # theirs in either order, but a token seen again means that no write ended in between.
        self._local_writes = itertools.count(1)
        self._local = 0
        # SQLite: each thread asks data_version on a connection of its own (no lock to queue on). A connection's
        # numbers are its own, so they are not the token: the first thread to see its number change after another
        # process's commit moves ``_sqlite_seen`` on (_VERSIONS), and every thread's first look after that commit does.
        self._threads = threading.local()
        self._sqlite_connections: list[sqlite3.Connection] = []
        self._sqlite_seen = next(_VERSIONS)
        self._sqlite_looked_until = 0.0  # (monotonic) the last look at data_version stands until then
        self._listener: _Listener | None = None
        self._lock = threading.Lock()  # the listener's start; the list of SQLite connections
        self._closed = False
        _EVERY.add(self)

    def wrote(self) -> None:
        """A writing unit of work of this process ended: every token taken before it differs from those after."""
        self._local = next(self._local_writes)

    def token(self) -> Hashable | None:
        """The calendar's change token now; None when changes cannot be told here (read the database)."""
        if self._closed:
            return None
        local = self._local  # (first: a write of this process that ends meanwhile changes the token)
        if self._is_sqlite:
            seen = self._sqlite_changes()
            return None if seen is None else (local, seen)
        listener = self._listener
        if listener is None:
            listener = self._start_listener()
        version = listener.version
        return None if version is None else (local, version)

    def close(self) -> None:
        """No tokens any more; the listening thread ends (within LISTEN_POLL_S) and closes its connection."""
        self._closed = True
        if self._listener is not None:
            self._listener.stop.set()
        with self._lock:
            connections, self._sqlite_connections = self._sqlite_connections, []
        for connection in connections:
            connection.close()

    def _sqlite_changes(self) -> int | None:
        """A number that changed since any earlier answer if another connection committed in between (the calling
        thread's connection's data_version moved since the thread last looked), the last look's within SQLITE_LOOK_S
        of it; None when the file cannot be asked."""
        if self._sqlite_path is None:
            return None
        now = monotonic()
        if now < self._sqlite_looked_until:
            return self._sqlite_seen
        threads = self._threads
        try:
            connection: sqlite3.Connection | None = getattr(threads, "connection", None)
            if connection is None:
                # check_same_thread off only so that close() may close it from another thread.
                connection = sqlite3.connect(self._sqlite_path, isolation_level=None, check_same_thread=False)
                with self._lock:
                    self._sqlite_connections.append(connection)
                threads.connection, threads.version = connection, None
            version = connection.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            log.debug("no change token from %s: %s", self._sqlite_path, exc)
            return None
        if version != threads.version:  # (a first look too: what happened before it is unknown)
            threads.version = version
            self._sqlite_seen = next(_VERSIONS)
        # From the moment before the look: a commit after it is seen by the next look, SQLITE_LOOK_S later at most.
        self._sqlite_looked_until = now + SQLITE_LOOK_S
        return self._sqlite_seen

    def _start_listener(self) -> _Listener:
        with self._lock:
            if self._listener is None:
                listener = _Listener(_libpq_url(self._url), self._connect_args)
                # The thread holds the listener, not this object: a database dropped (tests make many) ends it.
                thread = threading.Thread(
                    target=_listen, args=(listener, weakref.ref(self)), name="sfa-omf-calendar-changes", daemon=True
                )
                thread.start()
                self._listener = listener
            return self._listener


#: Every CalendarChanges of the process: a child made by fork() has none of their threads or connections.
_EVERY: weakref.WeakSet[CalendarChanges] = weakref.WeakSet()


def _forget_after_fork() -> None:
    for changes in list(_EVERY):
        changes._listener = None  # (its thread is the parent's: the child starts its own when asked)
        changes._lock = threading.Lock()
        changes._threads = threading.local()  # (the parent's connections: SQLite's must not be used across fork())
        changes._sqlite_connections = []


os.register_at_fork(after_in_child=_forget_after_fork)


class _Listener:
    """What the listening thread shares with the callers: ``version`` (None while not listening)."""

    def __init__(self, conninfo: str, connect_args: dict[str, Any]) -> None:
        self.conninfo = conninfo
        self.connect_args = connect_args
        self.version: int | None = None
        self.stop = threading.Event()

    def changed(self, listening: bool) -> None:
        # A new number whether listening or not: a token taken before a gap never equals one after it (_VERSIONS).
        number = next(_VERSIONS)
        self.version = number if listening else None


def _listen(listener: _Listener, owner: weakref.ref[CalendarChanges]) -> None:
    """The listening thread: LISTEN on CHANNEL, count the notifications; open the connection again when it fails."""
    import psycopg

    wait_s = RECONNECT_FIRST_S
    warned = False
    while not listener.stop.is_set() and owner() is not None:
        try:
            with psycopg.connect(
                listener.conninfo, autocommit=True, application_name="sfa-omf calendar changes", **listener.connect_args
            ) as connection:
                connection.execute(f"LISTEN {CHANNEL}")
                if warned:
                    log.warning("listening for calendar changes again: Status answers may be kept again")
                    warned = False
                listener.changed(listening=True)  # (anything may have changed while it was not listening)
                wait_s = RECONNECT_FIRST_S
                while not listener.stop.is_set() and owner() is not None:
                    for _notification in connection.notifies(timeout=LISTEN_POLL_S):
                        listener.changed(listening=True)
        except Exception as exc:  # any failure of the connection: no token until it listens again
            listener.changed(listening=False)
            if not warned:
                log.warning(
                    "not listening for calendar changes (%s): every Status reads the database until it listens again",
                    str(exc).strip() or type(exc).__name__,
                )
                warned = True
            listener.stop.wait(wait_s)
            wait_s = min(wait_s * 2, RECONNECT_LAST_S)
    listener.changed(listening=False)


def _libpq_url(url: str) -> str:
    """The SQLAlchemy URL of a PostgreSQL database as libpq's (psycopg's) connection string."""
    from sqlalchemy import make_url

    parsed: Any = make_url(url).set(drivername="postgresql")
    return str(parsed.render_as_string(hide_password=False))
