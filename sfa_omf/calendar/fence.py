"""Fencing of the background tasks' writes by the cluster's durable leadership term (PostgreSQL).

The leadership lock (cluster/leadership.py) is a session advisory lock: a task of a leader already running when its
session is lost (terminated, the database restarted, a network cut) would run on, and its writes, made through the
request pool's connections, would commit after another process took the lock and started its own round. The term
fences them:

- ``leadership_term`` holds one row (migration 0028): the term, who began it, when.
- A process that has just taken the lock begins its term before any task runs (``DatabaseTerms.begin_term``): in a
  transaction of its own, ``UPDATE ... SET term = term + 1 ... RETURNING term``, waiting at most ``lock_timeout`` for
  the row. A transaction of the old leader that holds the row FOR SHARE (below) makes it wait until it ends; once
  the new term commits, no transaction of an older term can commit a write any more. When the wait times out, the
  process does not lead yet and tries again at its next check (it keeps the lock).
- Each write unit of work of a background task (``Database.write``, ``write_connection``, ``write_alone``, in the
  task's thread, inside ``fenced(term)``) first reads the term FOR SHARE in its own transaction: not the task's
  term, it raises ``LeadershipLost`` and rolls back, nothing written. The row lock held until the commit is what the
  next term's UPDATE waits for.

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

from sfa_omf.cluster.leadership import LeadershipLost, bounded_connect_args, check_period_s

#: The write of a background task reads the term first, holding the row until it commits; in the same statement, its
#: transaction is bounded in idleness (:idle_ms): a leader stopped inside it (SIGSTOP, a debugger) would hold the row,
#: and so keep the next leader from beginning its term, until it resumed.
READ_TERM = text(
    "SELECT term, set_config('idle_in_transaction_session_timeout', :idle_ms, true) "
    "FROM leadership_term WHERE id = 1 FOR SHARE"
)
BEGIN_TERM = text(
    "UPDATE leadership_term SET term = term + 1, holder = :holder, since_s = :since_s WHERE id = 1 RETURNING term"
)
#: PostgreSQL's SQLSTATE of a lock wait that reached lock_timeout.
LOCK_NOT_AVAILABLE = "55P03"


class _Fence(threading.local):
    """The term the current thread's writes are fenced by (None: not fenced), and the refusal one of them met."""

    term: int | None = None
    idle_ms: int = 0
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
    idle; 0: no bound). A write refused in it (``LeadershipLost``) is raised again at the end of the block even when
    the task caught it (the tasks catch their failures to log them), so that the leadership learns of it."""
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
    current = connection.execute(READ_TERM, {"idle_ms": str(_fence.idle_ms)}).scalar()
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
        #: How long beginning a term waits for a transaction of the old leader that holds the row: half a check
        #: period, so that the lock's session, which waits meanwhile, never idles into its idle_session_timeout.
        self.lock_timeout_ms = max(1, int(check_period_s(takeover_s) * 1000 / 2))
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._engine: Any = None

    def begin_term(self) -> int | None:
        """Add 1 to the cluster's term for this process and answer it; None when a transaction of the previous
        leader holds the row longer than ``lock_timeout_ms`` (try again later). Raises when the database fails."""
        from sqlalchemy import create_engine
        from sqlalchemy.exc import DBAPIError
        from sqlalchemy.pool import NullPool

        if self._engine is None:
            self._engine = create_engine(
                self.url, poolclass=NullPool, connect_args=bounded_connect_args(self.takeover_s)
            )
        try:
            with self._engine.begin() as connection:
                connection.execute(text(f"SET LOCAL lock_timeout = {self.lock_timeout_ms}"))
                term = connection.execute(BEGIN_TERM, {"holder": self.holder, "since_s": int(time.time())}).scalar()
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                return None
            raise
        if term is None:
            raise RuntimeError("the calendar database has no leadership_term row: run `sfa-omf db upgrade`")
        return int(term)

    def fenced(self, term: int) -> AbstractContextManager[None]:
        """The task's writes fenced by ``term``; each of their transactions may stay idle ``takeover_s`` at most (a
        stopped leader's then ends, and the next leader begins its term within about twice ``takeover_s``)."""
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
