"""Fencing of the background tasks' writes by the cluster's durable leadership term (PostgreSQL).

The leadership lock (cluster/leadership.py) is a session advisory lock: a task of a leader already running when its
session is lost (terminated, the database restarted, a network cut) would run on, and its writes, made through the
request pool's connections, would commit after another process took the lock and started its own round. The term
fences them:

- ``leadership_term`` holds one row (migration 0028): the term, who began it, when.
- A process that has just taken the lock begins its term before any task runs (``DatabaseTerms.begin_term``): in a
  transaction of its own, ``UPDATE ... SET term = term + 1 ... RETURNING term``, the whole statement taking at most
  ``lock_timeout_ms`` (half a check period: statement_timeout, and lock_timeout). A transaction of the old leader that
  holds the row FOR SHARE (below) makes it wait until it ends, and overlapping ones one after the other; once the new
  term commits, no transaction of an older term can commit a write any more. When the statement times out, the process
  does not lead yet and tries again at its next check (it keeps the lock). The term's own transaction holds the row
  exclusively between its UPDATE and its COMMIT: a process stopped (SIGSTOP) or cut off in between must not keep it for
  ever, so that transaction may stay idle two check periods at most (idle_in_transaction_session_timeout) and its
  connection has the database's TCP keepalives of the lock's connection (a vanished host is noticed as soon).
- Each write unit of work of a background task (``Database.write``, ``write_connection``, ``write_alone``, in the
  task's thread, inside ``fenced(term)``) first reads the term FOR SHARE in its own transaction: not the task's
  term, it raises ``LeadershipLost`` and rolls back, nothing written. The row lock held until the commit is what the
  next term's UPDATE waits for, so that transaction is bounded too (``DatabaseTerms.fenced``: ``takeover_s``): in
  idleness (a leader stopped inside it) and in each of its lock waits (a leader stopped while its task waits for a
  row held by a request of the same process, which waits for ever): its lock wait ends with lock_timeout's error
  (TransientConflict: rolled back, the row released) and the idle transaction is ended by the database.

Request threads never enter ``fenced``: their units of work run no statement more. SQLite has no fencing (one
process, which always leads).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import Connection, text

from sfa_omf.cluster.leadership import (
    LeadershipLost,
    answer_limit_s,
    bounded_connect_args,
    check_period_s,
    idle_session_timeout_ms,
    keepalive_seconds,
)

#: The write of a background task reads the term first, holding the row until it commits; in the same statement, its
#: transaction is bounded (:bound_ms) in idleness and in each lock wait: a leader stopped inside it (SIGSTOP, a
#: debugger), or stopped while its statement waits for a row that another of its transactions holds (a request's,
#: unbounded), would hold the row, and so keep the next leader from beginning its term, until it resumed. Both settings
#: are local to the transaction (set_config's true): nothing is left on the pooled connection for a request's next
#: unit of work. No statement_timeout: a statement that runs (rather than waits) ends by itself, and its transaction
#: then idles into the bound; a task's legitimately long statement must not fail for it.
READ_TERM = text(
    "SELECT term, set_config('idle_in_transaction_session_timeout', :bound_ms, true), "
    "set_config('lock_timeout', :bound_ms, true) FROM leadership_term WHERE id = 1 FOR SHARE"
)
#: The bounds of the transaction that begins a term, all local to it, in one round trip (see the module docstring):
#: the whole UPDATE (:wait_ms, each lock wait too), the idleness of a process stopped before its COMMIT (:idle_ms), and
#: the database's TCP keepalives (those of the lock's session, PostgresLock) for one whose host vanishes meanwhile.
BOUND_TERM_TRANSACTION = text(
    "SELECT set_config('statement_timeout', :wait_ms, true), set_config('lock_timeout', :wait_ms, true), "
    "set_config('idle_in_transaction_session_timeout', :idle_ms, true), "
    "set_config('tcp_keepalives_idle', :keepalives_idle, true), "
    "set_config('tcp_keepalives_interval', :keepalives_interval, true), "
    "set_config('tcp_keepalives_count', :keepalives_count, true)"
)
BEGIN_TERM = text(
    "UPDATE leadership_term SET term = term + 1, holder = :holder, since_s = :since_s WHERE id = 1 RETURNING term"
)
#: PostgreSQL's SQLSTATE of a lock wait that reached lock_timeout.
LOCK_NOT_AVAILABLE = "55P03"
#: PostgreSQL's SQLSTATE of a statement cancelled, here by its statement_timeout.
QUERY_CANCELED = "57014"


class _Fence(threading.local):
    """The term the current thread's writes are fenced by (None: not fenced), and the refusal one of them met."""

    term: int | None = None
    idle_ms: int = 0  # the bound of each transaction's idleness and of each of its lock waits (0: none)
    refused: LeadershipLost | None = None


_fence = _Fence()


def fence_term() -> int | None:
    """The term this thread's writes must belong to; None outside ``fenced`` (request threads)."""
    return _fence.term


def fence_of_this_thread() -> tuple[int, int] | None:
    """This thread's fence (term, idle_ms), for a helper thread of a task to write under (``fenced_as``)."""
    return None if _fence.term is None else (_fence.term, _fence.idle_ms)


@contextmanager
def fenced_as(fence: tuple[int, int] | None) -> Iterator[None]:
    """In a helper thread of a task: its writes fenced as the task's (``fence_of_this_thread`` in the task's thread);
    nothing when the task was not fenced."""
    if fence is None:
        yield
        return
    with fenced(*fence):
        yield


@contextmanager
def fenced(term: int, idle_ms: int = 0) -> Iterator[None]:
    """Fence this thread's writes by ``term`` for the block (``idle_ms``: how long one of its transactions may stay
    idle, and how long each of its lock waits may last (lock_timeout: TransientConflict, rolled back); 0: no bound).
    A write refused in it (``LeadershipLost``) is raised again at the end of the block even when the task caught it
    (the tasks catch their failures to log them), so that the leadership learns of it."""
    outer = (_fence.term, _fence.idle_ms, _fence.refused)
    _fence.term, _fence.idle_ms, _fence.refused = term, idle_ms, None
    try:
        try:
            yield
        except LeadershipLost:
            raise
        except Exception as exc:
            if _fence.refused is not None:
                raise _fence.refused from exc
            raise
        if _fence.refused is not None:
            raise _fence.refused
    finally:
        _fence.term, _fence.idle_ms, _fence.refused = outer


def check_term(connection: Connection, term: int) -> None:
    """First statement of a fenced unit of work (a transaction begun on ``connection``): the cluster's term, read FOR
    SHARE, must be ``term``; else LeadershipLost (the caller's transaction rolls back, nothing written)."""
    current = connection.execute(READ_TERM, {"bound_ms": str(_fence.idle_ms)}).scalar()
    if current != term:
        lost = LeadershipLost(term, None if current is None else int(current))
        _fence.refused = lost
        raise lost


class DatabaseTerms:
    """The leadership's durable terms on a PostgreSQL calendar (cluster/leadership.py's TermKeeper): begins a term
    on a connection of its own (bounded like the lock's), fences a task's writes by it."""

    def __init__(self, url: str, takeover_s: float) -> None:
        self.url = url
        self.takeover_s = takeover_s
        #: How long beginning a term waits, in all, for transactions of the old leader that hold the row (the whole
        #: UPDATE's statement_timeout, and its lock_timeout): half a check period, so that the lock's session, which
        #: idles meanwhile (idle_session_timeout: two check periods), is never closed for it.
        self.lock_timeout_ms = max(1, int(check_period_s(takeover_s) * 1000 / 2))
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._engine: Any = None

    def begin_term(self) -> int | None:
        """Add 1 to the cluster's term for this process and answer it; None when transactions of the previous
        leader hold the row for longer than ``lock_timeout_ms`` in all (try again later). Raises when the database
        fails."""
        from sqlalchemy import create_engine
        from sqlalchemy.exc import DBAPIError
        from sqlalchemy.pool import NullPool

        from sfa_omf.calendar.database import bound_answers  # (database.py imports this module)

        if self._engine is None:
            self._engine = create_engine(
                self.url, poolclass=NullPool, connect_args=bounded_connect_args(self.takeover_s)
            )
            # A database that hangs (acknowledges, never answers) fails the term's update, as it fails the lock's
            # checks, instead of holding the keeper until it resumes.
            bound_answers(self._engine, answer_limit_s(self.takeover_s))
        try:
            with self._engine.begin() as connection:
                connection.execute(BOUND_TERM_TRANSACTION, self._bounds())
                term = connection.execute(BEGIN_TERM, {"holder": self.holder, "since_s": int(time.time())}).scalar()
        except DBAPIError as exc:
            # Not now (a lock wait, or the whole statement, timed out): the process tries again at its next check.
            if getattr(exc.orig, "sqlstate", None) in (LOCK_NOT_AVAILABLE, QUERY_CANCELED):
                return None
            raise
        if term is None:
            raise RuntimeError("the calendar database has no leadership_term row: run `sfa-omf db upgrade`")
        return int(term)

    def _bounds(self) -> dict[str, str]:
        """BOUND_TERM_TRANSACTION's values."""
        idle, interval, count = keepalive_seconds(self.takeover_s)
        return {
            "wait_ms": str(self.lock_timeout_ms),
            "idle_ms": str(idle_session_timeout_ms(self.takeover_s)),
            "keepalives_idle": str(idle),
            "keepalives_interval": str(interval),
            "keepalives_count": str(count),
        }

    def fenced(self, term: int) -> AbstractContextManager[None]:
        """The task's writes fenced by ``term``; each of their transactions may stay idle ``takeover_s`` at most, and
        each of its lock waits may last that long (a stopped leader's transaction then ends, and the next leader
        begins its term within about twice ``takeover_s``)."""
        return fenced(term, int(self.takeover_s * 1000))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def terms_for(url: str, takeover_s: float) -> DatabaseTerms | None:
    """The durable terms of a calendar database's leadership: PostgreSQL's; none on SQLite (one process)."""
    if url.startswith("sqlite"):
        return None
    return DatabaseTerms(url, takeover_s)
