"""Leadership: the aggregate's background tasks run on exactly one process of the whole cluster.

Every serving process (each worker of each host) builds one Leadership over the calendar's database and registers its
periodic tasks with it (expiry of allocations, lease retirement, notifications, testbed reconcilers, lost node
agents...). Only the leader runs them; the others stand by. The rules, all in this module:

- PostgreSQL: the leader is the process whose dedicated connection (never one of the request pool) holds the session
  advisory lock LOCK_KEY, taken with ``pg_try_advisory_lock``. A standby tries every ``check_s`` (takeover_s / 3).
- The lock lives as long as the session. A leader that exits or is killed closes its connection, PostgreSQL frees
  the lock at once, and a standby takes it at its next try. A leader whose host vanishes (no FIN) is noticed by the
  database's TCP keepalives, set on the session so that the lock is freed within about 2/3 of ``takeover_s``; with
  the next try the takeover stays within ``takeover_s``.
- A leader that is stopped (SIGSTOP, a debugger) or wedged while its host still runs would keep the lock for ever:
  the host's kernel answers the keepalives. So the session also has ``idle_session_timeout`` (PostgreSQL 14 and
  newer) of 2/3 of ``takeover_s``: a live leader's check runs every ``check_s`` (takeover_s / 3) and is never idle
  that long; a stopped one's session is closed, the lock freed, and a standby takes it at its next try. Older
  PostgreSQL has no such setting: there a stopped leader keeps the lock until it resumes or dies (logged at start).
- The leader checks its connection every ``check_s``; when the check fails (database restarted, network cut, its
  session closed while the process was stopped) it stops leading at once (no task starts again; a task already
  running finishes) and then tries again like a standby. The client side has keepalives and a TCP user timeout too,
  and gives a query up when no answer came within 2/3 of ``takeover_s`` (a database that hangs while its host
  acknowledges: ``answer_limit_s``), so that a check never hangs longer than the takeover time.
- A task starts only while the lock was confirmed less than ``1.5 * check_s`` ago (counted from when the check was
  sent; the session cannot have been closed for idleness before ``2 * check_s`` after that): a leader resumed after a
  stop starts no task before its next check, which finds the session gone.
- And right before each start, the task asks the database on the lock's connection itself whether this session still
  holds the lock (one round trip; the keeper and the tasks take turns on that connection): the keeper's last check may
  be a period old, and a session closed since (pg_terminate_backend, a database restart) frees the lock at once for a
  standby. Not held, or the check fails: the process stops leading at once, as when the keeper finds it lost.
- Becoming leader starts each task at once (``at_start``) or one period later; losing it stops them. Stopping the
  Leadership starts no task more and waits for running ones (bounded), the keeper checking the lock meanwhile (its
  session must not idle into ``idle_session_timeout``), then releases the lock, so that a clean restart hands over at
  once. A task still running when the wait ends keeps the lock held (logged) until it ends or the process exits: no
  other process starts it meanwhile.
- Each try and check also reads the database's clock and (serve: lock_for) the calendar's migration, in the same
  statement: a process whose clock differs from another live host's by more than clock.MAX_OFFSET_S and is the further
  from the database's (clock.clashing_peer: its tasks would release the other hosts' allocations and end leases at the
  wrong time), or whose code's newest migration is not the calendar's (a newer sfa-omf migrated it), must not lead: it
  does not take the lock, and a leader steps down at once and releases it (logged as an error; standing by, it says
  why every REFUSAL_EVERY_S). It leads again once the cause is gone. A clock off the database's alone (a single host,
  or the database's clock wrong) is only warned of.
- SQLite: there is a single process (``serve`` runs one worker on SQLite); it always leads.

What is fenced: a task that runs when the lock is lost (its session terminated, the database restarted, a network cut)
is not interrupted, and its writes go through connections of the request pool, which know nothing of the lock. So on
PostgreSQL they are fenced by the cluster's durable leadership term (``terms``, a TermKeeper: calendar/fence.py): a
process that has just taken the lock begins the next term in the database before any of its tasks runs (waiting for
writes of the old leader that hold the term, its UPDATE half a check period at most in all: its lock session never idles
into its idle_session_timeout meanwhile; when that is not enough it does not lead yet, keeps the lock and tries again at
its next check), and each write unit of work of a task begins by reading the term, refused (LeadershipLost, nothing
written) once it is not its process's. A task refused so logs it and the process stops leading at once. Neither a
process stopped (or cut off) while it begins its term, nor one stopped while a task's write holds the term (idle, or
waiting for a lock), holds the term for longer than about ``takeover_s``: the database ends those transactions. What is
still not fenced: what the old leader's task did outside the database before its first refused write (an OAR job
submitted, a mail sent), and its reads; tasks stay safe to run twice (each is a transaction on the calendar that
re-reads what it needs). SQLite needs no fence (one process).

This module knows nothing of Twisted: tasks run in threads of their own, one per task.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from sfa_omf.cluster.clock import (
    DATABASE_CLOCK_SQL,
    WARN_OFFSET_S,
    ClockFrames,
    clashing_peer,
    may_clash,
    offset_from,
    refusal_text,
    warning_text,
)

log = logging.getLogger("sfa_omf.cluster")

#: The advisory lock of the aggregate's background tasks (advisory locks are per database: one calendar, one lock).
LOCK_KEY = 0x5FA0_3F00_1EAD
#: The advisory lock of start-up writes (startup_writes).
STARTUP_KEY = 0x5FA0_3F00_57A7
STARTUP_WAIT_S = 60.0
#: PostgreSQL's SQLSTATE of a lock wait that reached lock_timeout.
LOCK_NOT_AVAILABLE = "55P03"
DEFAULT_TAKEOVER_S = 15
#: The first PostgreSQL with idle_session_timeout (what frees a stopped leader's lock).
IDLE_SESSION_TIMEOUT_SINCE = (14,)
#: A task starts only while the lock was confirmed less than this many check periods ago (the module docstring).
CONFIRMED_FOR_CHECKS = 1.5
#: How often a clock offset above clock.WARN_OFFSET_S is logged again while it lasts, and how often a process that
#: must not lead (PostgresLock.refusal) says why while it stands by.
WARN_EVERY_S = 600.0
REFUSAL_EVERY_S = 60.0
#: How long stop() waits for a task that is running; one still running then keeps the lock held until it ends
#: (released at the keeper's next check) or the process exits.
STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class PeriodicTask:
    """Work the leader does every ``period_s`` seconds; ``at_start``: also as soon as it becomes leader."""

    name: str
    period_s: float
    run: Callable[[], object]
    at_start: bool = True


class LeadershipLost(Exception):
    """A write of a background task was refused: the cluster's durable term is no longer the one its process began
    (another process took the lead meanwhile); nothing of that unit of work was written."""

    def __init__(self, term: int, current: int | None) -> None:
        super().__init__(f"this write belongs to leadership term {term}, the cluster is at term {current}: refused")
        self.term = term
        self.current = current


class TermKeeper(Protocol):
    """The cluster's durable leadership terms (calendar/fence.py on PostgreSQL): ``begin_term`` starts the term of a
    process that just took the lock (None: not yet, an old leader's write still holds it; try again later);
    ``fenced(term)`` makes the writes of the block refused (LeadershipLost) once the cluster is past ``term``."""

    def begin_term(self) -> int | None: ...

    def fenced(self, term: int) -> AbstractContextManager[None]: ...


class LeaderLock(Protocol):
    """What makes one process the leader: try to take it, check it is still held, let it go. ``contended``: other
    processes may want it too (then who leads is worth a line in the log)."""

    contended: bool
    #: Why this process must not lead now (its clock too far from another live host's, the calendar migrated by a
    #: newer sfa-omf), found by the last try or check; None: it may.
    refusal: str | None

    def try_acquire(self) -> bool: ...

    def still_held(self) -> bool: ...

    def release(self) -> None: ...


class SoleProcessLock:
    """The one process of an SQLite calendar: always the leader."""

    contended = False
    refusal: str | None = None

    def try_acquire(self) -> bool:
        return True

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        return None


def check_period_s(takeover_s: float) -> float:
    """How often the leader checks its lock, and a standby tries to take it: a third of ``takeover_s``."""
    return max(0.2, takeover_s / 3)


def idle_session_timeout_ms(takeover_s: float) -> int:
    """The leadership session's ``idle_session_timeout``: two check periods (2/3 of ``takeover_s``), so a live
    process, which checks every period, is never idle that long; a standby's next try after it is within
    ``takeover_s``."""
    return int(2 * check_period_s(takeover_s) * 1000)


def keepalive_seconds(takeover_s: float) -> tuple[int, int, int]:
    """TCP keepalive (idle, interval, count) that notice a vanished peer within about 2/3 of ``takeover_s``."""
    idle = max(1, int(takeover_s // 3))
    interval = max(1, int(takeover_s // 9))
    return idle, interval, 3


def bounded_connect_args(takeover_s: float) -> dict[str, int]:
    """libpq's settings for a connection of the leadership (the lock's, the term's): connecting, and noticing a
    vanished database, take a bounded part of ``takeover_s`` (keepalives, TCP user timeout)."""
    idle, interval, count = keepalive_seconds(takeover_s)
    return {
        "connect_timeout": max(1, int(takeover_s // 3)),
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": count,
        "tcp_user_timeout": int(takeover_s * 1000 * 2 / 3),
    }


def answer_limit_s(takeover_s: float) -> float:
    """How long a query of the leadership waits for the database's answer before its connection is given up (the
    check then fails): as long as the TCP user timeout (bounded_connect_args), which covers only data the database
    never acknowledges; this covers a database whose host acknowledges but that does not run (stopped, a storage
    stall)."""
    return takeover_s * 2 / 3


class PostgresLock:
    """A PostgreSQL session advisory lock on a connection of its own (autocommit, keepalives on both sides).

    Each try and each check also reads the database's clock, and the calendar's migration when ``revision`` (this
    sfa-omf's newest) is given, in the same statement (no extra round trip): ``refusal`` says why this process must not
    lead (its clock too far from another live host's, the calendar at another migration); a try then does not take the
    lock (or gives it back at once), and Leadership makes a leader step down.

    The other hosts' clocks: each live serving process records its offset to the database's in its cluster_settings
    row every minute (cluster/agreement.py). They are read only while this host's own offset could clash with one
    (clock.may_clash: above MAX_OFFSET_S / 2, itself warned of), one more statement at such a check; a healthy
    cluster's checks cost nothing more. Read at the check itself rather than cached from the last refresh: a leader
    whose clock jumps steps down within a check period, not a minute later. Compared in every frame of the database's
    clock this lock's checks saw in the last STALE_S (clock.ClockFrames): a step of the database's clock, which moves
    every host's live offset at once while the peers' rows are up to a refresh old, makes no host refuse."""

    contended = True

    def __init__(
        self, url: str, takeover_s: float = DEFAULT_TAKEOVER_S, key: int = LOCK_KEY, revision: str | None = None
    ) -> None:
        self.url = url
        self.key = key
        self.takeover_s = takeover_s
        self.revision = revision
        self.refusal: str | None = None
        #: This host's clock minus the database's, at the last try or check (None before the first).
        self.offset_s: float | None = None
        self._engine: Any = None
        self._connection: Any = None
        self._warned_old_server = False
        self._reads_schema = False  # the database has alembic_version (read at each connection)
        self._reads_peers = False  # the database has cluster_settings (read at each connection)
        self._warned_offset_at = -math.inf
        from sfa_omf.cluster.agreement import STALE_S

        self._frames = ClockFrames(STALE_S)  # the database's clock as this lock's checks saw it

    def _connect(self) -> Any:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        idle, interval, count = keepalive_seconds(self.takeover_s)
        if self._engine is None:
            self._engine = create_engine(
                self.url,
                poolclass=NullPool,
                isolation_level="AUTOCOMMIT",
                connect_args={
                    **bounded_connect_args(self.takeover_s),
                    # Who leads, for operators: SELECT application_name FROM pg_stat_activity (docs/operators.md);
                    # with the migration its code needs (which host still runs an older sfa-omf, db upgrade's refusal).
                    "application_name": _application_name(self.revision),
                },
            )
            from sfa_omf.calendar.database import bound_answers

            bound_answers(self._engine, answer_limit_s(self.takeover_s))
        connection = self._engine.connect()
        try:
            # The database's side of the session: frees the lock when this host vanishes without closing the
            # connection (keepalives), or when this process stops answering on a host that runs on (idle timeout).
            connection.execute(text(f"SET tcp_keepalives_idle = {idle}"))
            connection.execute(text(f"SET tcp_keepalives_interval = {interval}"))
            connection.execute(text(f"SET tcp_keepalives_count = {count}"))
            version = self._engine.dialect.server_version_info or (0,)
            if version >= IDLE_SESSION_TIMEOUT_SINCE:
                connection.execute(text(f"SET idle_session_timeout = {idle_session_timeout_ms(self.takeover_s)}"))
            elif not self._warned_old_server:
                self._warned_old_server = True
                log.warning(
                    "PostgreSQL %s has no idle_session_timeout (14 and newer have): a leader process that is stopped "
                    "or hangs while its host runs on keeps the background tasks until it resumes or is killed",
                    ".".join(str(part) for part in version),
                )
            if self.revision is not None:  # (a bare database, as in some tests, has no migrations to compare)
                self._reads_schema, self._reads_peers = connection.execute(
                    text(
                        "SELECT to_regclass('alembic_version') IS NOT NULL, to_regclass('cluster_settings') IS NOT NULL"
                    )
                ).one()
        except Exception:
            connection.close()
            raise
        return connection

    def try_acquire(self) -> bool:
        if self._connection is not None:
            try:
                return self._try_lock()
            except Exception:
                # Most often a session the database closed while this process was stopped or busy (idle for longer
                # than idle_session_timeout): try once more on a new one.
                self._drop()
        self._connection = self._connect()
        try:
            return self._try_lock()
        except Exception:
            self._drop()
            raise

    def _try_lock(self) -> bool:
        from sqlalchemy import text

        # Not even tried while the last look found this process must not lead: a healthy standby's try must not
        # find it held for a moment.
        sent_at = time.time()
        row = self._connection.execute(
            text(
                f"SELECT CASE WHEN :allowed THEN pg_try_advisory_lock(:key) ELSE false END, {DATABASE_CLOCK_SQL}"
                f"{self._schema_column()}"
            ),
            {"key": self.key, "allowed": self.refusal is None},
        ).one()
        self._judge(sent_at, row, time.time())
        if row[0] and self.refusal is not None:  # it just became unfit: give the lock back at once
            self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            return False
        return bool(row[0])

    def _schema_column(self) -> str:
        return ", (SELECT max(version_num) FROM alembic_version)" if self._reads_schema else ""

    def _judge(self, sent_at: float, row: Any, answered_at: float) -> None:
        """Set ``offset_s`` and ``refusal`` from a try's or check's answer (its clock, maybe its migration), and the
        other live hosts' clocks when this one's may clash with theirs; warn of an offset above WARN_OFFSET_S (every
        WARN_EVERY_S while it lasts)."""
        offset_s = offset_from(sent_at, float(row[1]), answered_at)
        self.offset_s = offset_s
        self._frames.note(offset_s)
        refusal = None
        if self._reads_peers and may_clash(offset_s):
            from sfa_omf.cluster.agreement import peer_clocks

            peers = peer_clocks(self._connection, but=_whoami(), table_known=True)
            peer = clashing_peer(offset_s, peers, self._frames)
            if peer is not None:
                refusal = refusal_text(offset_s, peer)
        if (
            refusal is None
            and abs(offset_s) > WARN_OFFSET_S
            and time.monotonic() - self._warned_offset_at >= WARN_EVERY_S
        ):
            self._warned_offset_at = time.monotonic()
            log.warning("%s", warning_text(offset_s))
        current = row[2] if self._reads_schema else None
        if current is not None and self.revision is not None and current != self.revision:
            refusal = migrated_text(current, self.revision)
        self.refusal = refusal

    def still_held(self) -> bool:
        """True while the session that took the lock is alive and holds it (False, never an exception, otherwise)."""
        from sqlalchemy import text

        if self._connection is None:
            return False
        try:
            sent_at = time.time()
            row = self._connection.execute(
                text(
                    "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                    f"AND granted AND ((classid::bigint << 32) | objid::bigint) = :key), {DATABASE_CLOCK_SQL}"
                    f"{self._schema_column()}"
                ),
                {"key": self.key},
            ).one()
            self._judge(sent_at, row, time.time())
        except Exception as exc:
            log.warning("the leadership connection to the database failed (%s)", _first_line(exc))
            self._drop()
            return False
        return bool(row[0])

    def release(self) -> None:
        """Close the session: PostgreSQL frees the lock with it."""
        self._drop()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # a connection already broken has nothing left to close
                log.debug("closing a broken leadership connection", exc_info=True)


def lock_for(url: str, takeover_s: float = DEFAULT_TAKEOVER_S) -> LeaderLock:
    """The leader lock of a calendar database: PostgreSQL's advisory lock (which checks the host's clock against the
    other hosts' and that the calendar is still at this sfa-omf's newest migration), or the sole process of SQLite."""
    if url.startswith("sqlite"):
        return SoleProcessLock()
    from sfa_omf.calendar.database import newest_migration_file

    return PostgresLock(url, takeover_s, revision=newest_migration_file())


def migrated_text(current: str, revision: str) -> str:
    """Why a process whose code's newest migration is ``revision`` does not lead a calendar at ``current``."""
    if current > revision:  # (revisions are zero-padded numbers: NNNN)
        return (
            f"the calendar was migrated to {current} by a newer sfa-omf (this one's newest migration is {revision}): "
            "upgrade this host"
        )
    return (
        f"the calendar database is at migration {current}, older than this sfa-omf's {revision} (restored from a "
        "backup?): stop every sfa-omf serve, run sfa-omf db upgrade, then start them"
    )


def _application_name(revision: str | None) -> str:
    """The leadership session's name in pg_stat_activity: ``sfa-omf [schema-NNNN ]host:pid`` (63 bytes at most)."""
    schema = f"schema-{revision} " if revision is not None else ""
    return f"sfa-omf {schema}{_whoami()}"[:63]


@contextmanager
def startup_writes(url: str, timeout_s: float = STARTUP_WAIT_S) -> Iterator[None]:
    """Make the start-up writes of this process (the registry's records of the authority and the nodes) one process
    of the cluster at a time: a PostgreSQL advisory lock (STARTUP_KEY) held for the block on a connection of its own.
    Nothing to do on SQLite (one process). Raises StartupError (one line: the problem and the fix) when the database
    cannot be reached (a worker started while it refuses connections, e.g. during a failover: the master checked it
    only before the first workers), or when another process holds the lock longer than ``timeout_s``."""
    if url.startswith("sqlite"):
        yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    from sfa_omf.calendar.database import CONNECT_TIMEOUT_S, NO_ANSWER_MARGIN_S, bound_answers, opening_advice
    from sfa_omf.preflight import StartupError

    # Bounded like every connection the project opens: a database that accepts and never answers must not hang serve,
    # nor one that hangs later (its lock wait is the database's to end: lock_timeout).
    engine = create_engine(
        url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )
    bound_answers(engine, timeout_s + NO_ANSWER_MARGIN_S)
    try:
        try:
            connection = engine.connect()
        except DBAPIError as exc:
            raise StartupError(f"the calendar database {opening_advice(url, str(exc.orig))}") from exc
        with connection:
            try:
                connection.execute(text(f"SET lock_timeout = {int(timeout_s * 1000)}"))
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": STARTUP_KEY})
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:  # the connection failed meanwhile
                    raise StartupError(f"the calendar database {opening_advice(url, str(exc.orig))}") from exc
                raise StartupError(
                    f"another sfa-omf process has been starting for over {timeout_s:g} s on this database "
                    f"({_first_line(exc)}); is one stuck? (SELECT application_name FROM pg_stat_activity)"
                ) from exc
            try:
                yield
            finally:
                try:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": STARTUP_KEY})
                except DBAPIError:  # the connection broke: its session, and the lock with it, are gone anyway
                    log.debug("releasing the start-up lock on a broken connection", exc_info=True)
    finally:
        engine.dispose()


class Leadership:
    """Runs registered periodic tasks while this process is the cluster's leader (see the module docstring)."""

    def __init__(
        self, lock: LeaderLock, takeover_s: float = DEFAULT_TAKEOVER_S, terms: TermKeeper | None = None
    ) -> None:
        """``terms``: the durable terms that fence the tasks' writes (PostgreSQL); None: not fenced (SQLite)."""
        self.lock = lock
        self.terms = terms
        self.takeover_s = takeover_s
        self.check_s = check_period_s(takeover_s)
        self._tasks: list[PeriodicTask] = []
        self._threads: list[threading.Thread] = []
        self._changed = threading.Condition()
        self._leading = False
        self._term = 0  # incremented each time this process becomes leader
        self._durable_term: int | None = None  # the cluster's term this process began (terms), None without terms
        self._waited_for_term = False  # the lock is held but the term could not begin yet (logged once)
        self._confirmed_at = 0.0  # time.monotonic() when the last check that found the lock held was sent
        self._check_wanted = False  # the keeper should check now (a task waits for it, or stop() does)
        self._stopping = False
        # The lock's connection is used by the keeper and by each task right before it starts: one at a time.
        self._lock_in_use = threading.Lock()
        self._keeper: threading.Thread | None = None
        self._refusal_said_at = -math.inf  # time.monotonic() when why this process does not lead was last logged

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def tasks(self) -> tuple[PeriodicTask, ...]:
        return tuple(self._tasks)

    def register(self, task: PeriodicTask) -> None:
        """Run ``task`` whenever this process leads. Register before start()."""
        if self._keeper is not None:
            raise RuntimeError("register tasks before Leadership.start()")
        self._tasks.append(task)

    def start(self) -> None:
        """Start contending for leadership (returns at once; the first try happens in the background)."""
        self._keeper = threading.Thread(target=self._keep, name="sfa-omf-leadership", daemon=True)
        self._keeper.start()
        for task in self._tasks:
            name = f"sfa-omf-task {task.name}"
            thread = threading.Thread(target=self._run_task, args=(task,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_leader(self, timeout_s: float) -> bool:
        """True as soon as this process leads; False when it does not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not self._leading and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return self._leading

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """Stop the tasks (waiting up to ``wait_s`` for one that runs), then give leadership up. A task still running
        after ``wait_s`` keeps the lock held (the keeper goes on checking it, so the session is never idle) until it
        ends or this process exits: another process must not start the same task meanwhile."""
        with self._changed:
            self._stopping = True
            self._leading = False
            self._changed.notify_all()
        if self._keeper is None:  # never started
            self.lock.release()
            return
        deadline = time.monotonic() + wait_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._changed:  # the keeper releases the lock once no task runs: now, unless one outlived the wait
            self._check_wanted = True
            self._changed.notify_all()
        self._keeper.join(max(0.0, deadline - time.monotonic()))
        running = [task.name for task, thread in zip(self._tasks, self._threads, strict=True) if thread.is_alive()]
        if running:
            log.warning(
                "background task %s still running %g s after the stop began: this process keeps the leadership lock "
                "until it ends or the process exits, so that no other process starts it meanwhile",
                ", ".join(running),
                wait_s,
            )

    def _set_leading(self, leading: bool, checked_at: float = 0.0, durable_term: int | None = None) -> bool:
        """Lead, or stop leading; answers whether this process leads now. Once stop() began, never leads again: the
        keeper's check (or term) that was in flight when stop() cleared ``_leading`` must not set it back, the lock
        about to be released."""
        with self._changed:
            if leading and self._stopping:
                return False
            if leading and not self._leading:
                self._term += 1
                self._durable_term = durable_term
            self._leading = leading
            if leading:
                self._confirmed_at = checked_at
            self._changed.notify_all()
            return leading

    def _confirmed(self) -> bool:
        """The lock was found held recently enough for a task to start now (call with ``_changed`` held)."""
        return time.monotonic() - self._confirmed_at < CONFIRMED_FOR_CHECKS * self.check_s

    def _keep(self) -> None:
        """Take the lock when free, check it while held; a failure to reach the database is logged once (before the
        database ever answered: only once it outlasts a check period). Once stopping: keep checking (the session must
        not idle) until no task runs, then release the lock and end."""
        failures = 0  # tries in a row that could not reach the database
        reached = False  # the database answered this keeper at least once
        handed_over_at = -math.inf
        while True:
            try:
                with self._lock_in_use:
                    checked_at = time.monotonic()  # before the check: the session was alive at least from then on
                    if self._stopping:
                        if not any(thread.is_alive() for thread in self._threads):
                            self.lock.release()
                            return
                        self.lock.still_held()  # a task stop() waits for (or gave up on) still runs
                    elif not self._leading:
                        standing_back = time.monotonic() - handed_over_at < self.takeover_s
                        if not standing_back and self.lock.try_acquire() and not self._stopping:
                            began, durable_term = self._begin_term()
                            if began and self._set_leading(True, checked_at, durable_term):
                                level = logging.INFO if self.lock.contended else logging.DEBUG
                                log.log(level, "this process (%s) now leads the background tasks", _whoami())
                        self._say_refusal()
                    elif self.lock.still_held():
                        if self._refused():
                            pass
                        elif self._unconfirmed_for_too_long(checked_at):
                            handed_over_at = time.monotonic()  # (a standby's turn first: no try for takeover_s)
                        else:
                            self._set_leading(True, checked_at)
                    else:
                        self._step_down()
                failures = 0
                reached = True
            except Exception as exc:
                failures += 1
                # Before the database ever answered, this process is starting, and a database down then fails the
                # start itself with one line that says so (startup_writes): a line here too would only repeat it.
                if failures == (1 if reached else 2):
                    log.warning("cannot reach the database for leadership (%s); trying again", _first_line(exc))
            with self._changed:
                if not self._check_wanted:
                    self._changed.wait(self.check_s)
                self._check_wanted = False

    def _begin_term(self) -> tuple[bool, int | None]:
        """Right after the lock was taken, before any task runs: begin the cluster's next durable term (call with
        ``_lock_in_use`` held; its UPDATE waits half a check period at most, DatabaseTerms.lock_timeout_ms). (False,
        None) when it cannot begin yet: writes of the previous leader hold the term; this process keeps the lock and
        tries again at its next check. Without terms: (True, None)."""
        if self.terms is None:
            return True, None
        durable_term = self.terms.begin_term()
        if durable_term is None:
            if not self._waited_for_term:
                self._waited_for_term = True
                log.warning(
                    "this process holds the leadership lock, but a write of the previous leader still holds the "
                    "leadership term: it leads once that write ends (trying again every %g s)",
                    self.check_s,
                )
            return False, None
        self._waited_for_term = False
        return True, durable_term

    def _refused(self) -> bool:
        """After a check found the lock held: when this process must not lead (``lock.refusal``: its clock too far
        from another live host's, the calendar migrated by a newer sfa-omf), stop leading at once and give the lock
        up, so that a standby takes it (call with ``_lock_in_use`` held). True when it did."""
        refusal = self.lock.refusal
        if refusal is None:
            return False
        self._set_leading(False)
        self.lock.release()
        self._refusal_said_at = time.monotonic()
        log.error("this process (%s) stops leading the background tasks: %s", _whoami(), refusal)
        return True

    def _say_refusal(self) -> None:
        """While this process stands by because it must not lead: say why, every REFUSAL_EVERY_S."""
        refusal = self.lock.refusal
        if refusal is None or self._leading or time.monotonic() - self._refusal_said_at < REFUSAL_EVERY_S:
            return
        self._refusal_said_at = time.monotonic()
        log.error("this process (%s) does not lead the background tasks: %s", _whoami(), refusal)

    def _step_down(self) -> None:
        """The lock is lost: no task starts from now on (call with ``_lock_in_use`` held)."""
        self._set_leading(False)
        log.warning("this process lost the leadership of the background tasks; they stop here")

    def _still_leads_now(self, term: int) -> bool:
        """Right before a task starts: does this process still lead in ``term``, its session still holding the lock?
        Asked on the lock's connection itself, because the keeper's last check may be a period old and the session
        closed since (a database restart, pg_terminate_backend), the lock another process's. Not held (or the check
        failed): step down at once, as the keeper does."""
        with self._lock_in_use:
            if self._stopping or not self._leading or self._term != term:
                return False
            try:
                held = self.lock.still_held()
            except Exception as exc:  # still_held answers False rather than raise; should a lock raise, not held
                log.warning("the leadership check failed (%s)", _first_line(exc))
                held = False
            if not held:
                self._step_down()
            elif self._refused():
                return False
            return held

    def _fenced(self, durable_term: int | None) -> AbstractContextManager[None]:
        """Where a task runs: its writes fenced by this process's durable term (none without terms)."""
        if self.terms is None or durable_term is None:
            return nullcontext()
        return self.terms.fenced(durable_term)

    def _lost_term(self, term: int) -> None:
        """A task's write found the cluster past this process's durable term: another process leads. Stop leading
        (no task starts from now on); the keeper then tries the lock again like a standby's."""
        with self._lock_in_use:
            if self._term == term and self._leading:
                self._set_leading(False)

    def _unconfirmed_for_too_long(self, checked_at: float) -> bool:
        """A check answered too late to confirm the lock (the database or this process is that slow): once no check
        has confirmed it for ``takeover_s``, the lock is handed over (released, logged) rather than held by a process
        that may start no task: a standby, maybe on a healthier host, takes it. True when it was."""
        if time.monotonic() - checked_at < CONFIRMED_FOR_CHECKS * self.check_s:
            return False
        unconfirmed_s = time.monotonic() - self._confirmed_at
        if unconfirmed_s < self.takeover_s:
            return False
        log.warning(
            "the database answered the leadership check only %.1f s after it was sent (a task may start only within "
            "%.1f s of one): no task ran for %.1f s, so this process hands the lead over",
            time.monotonic() - checked_at,
            CONFIRMED_FOR_CHECKS * self.check_s,
            unconfirmed_s,
        )
        self._set_leading(False)
        self.lock.release()
        return True

    def _run_task(self, task: PeriodicTask) -> None:
        """Run ``task`` on its period during each term of leadership."""
        term_seen = 0
        due = 0.0
        while True:
            with self._changed:
                while not self._stopping and not self._leading:
                    self._changed.wait()
                if self._stopping:
                    return
                if self._term != term_seen:  # a new term: first run now or one period later
                    term_seen = self._term
                    due = time.monotonic() + (0.0 if task.at_start else task.period_s)
                left = due - time.monotonic()
                if left > 0:
                    self._changed.wait(left)
                    continue
                if not self._confirmed():
                    # Resumed after a stop, or the check is late: the lock may be another process's by now. Ask the
                    # keeper to check at once (once: the other tasks waiting here must not wake each other), and
                    # start the task only after it found the lock held.
                    if not self._check_wanted:
                        self._check_wanted = True
                        self._changed.notify_all()
                    self._changed.wait(self.check_s)
                    continue
                term = self._term
                durable_term = self._durable_term
            if not self._still_leads_now(term):
                continue
            try:
                with self._fenced(durable_term):
                    task.run()
            except LeadershipLost as lost:
                log.warning(
                    "this process no longer leads (term %s, the cluster is at term %s): %s stops here",
                    lost.term,
                    lost.current,
                    task.name,
                )
                self._lost_term(term)
                continue
            except Exception as exc:  # a testbed or a database that is down must not stop the next run
                log.warning("%s failed (%s); will try again in %g s", task.name, _first_line(exc), task.period_s)
            due = time.monotonic() + task.period_s


def _whoami() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    return text.splitlines()[0]
