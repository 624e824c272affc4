"""The bounds of the durable leadership term (calendar/fence.py, cluster/leadership.py), on the real PostgreSQL:

- a process stopped between its UPDATE of the term and its COMMIT does not keep the next term from beginning (its
  transaction may stay idle so long; it has the database's TCP keepalives of the lock's session);
- a task's write that holds the term while it waits for a row (a leader stopped meanwhile) waits so long at most,
  then rolls back (TransientConflict) and releases the term; nothing of that bound stays on the pooled connection;
- beginning a term takes at most its bound in all, even while overlapping writes of the old term hold the row in
  turn;
- a write refused to a process that no longer leads is the task's end, not a failure logged with a traceback (alerts,
  the agents' flush), and a claim renewal that met a busy calendar tries again at the next one;
- after stop(), a keeper's check in flight does not make the process lead again.

Stopped processes are child processes (SIGSTOP), as a stopped leader is in life."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from sqlalchemy import Connection, create_engine, text

from sfa_omf.agents.service import AgentService
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.fence import DatabaseTerms, fenced
from sfa_omf.cluster.leadership import (
    Leadership,
    LeadershipLost,
    PeriodicTask,
    PostgresLock,
    idle_session_timeout_ms,
    keepalive_seconds,
)
from sfa_omf.images import instances as instances_module
from sfa_omf.images.instances import Instances
from sfa_omf.notify.alerts import Alerts
from tests.cluster.harness import REPO
from tests.cluster.test_fenced_writes import wait_for
from tests.postgres import empty_postgres

TAKEOVER_S = 1.5
WAIT_S = 30.0  # a bound on waiting for something that must happen (a hang is a failure), not a timing assertion

# A process that begins a term and is stopped (SIGSTOP) right after its UPDATE ran, before its COMMIT: it first prints
# the settings of its term transaction's session, as the database has them.
STOPPED_BEFORE_COMMIT = """
import json, os, signal, sys
from sqlalchemy import Engine, event
from sfa_omf.calendar.fence import DatabaseTerms
NAMES = ["tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
         "idle_in_transaction_session_timeout"]
def stop_before_commit(_connection, cursor, statement, *_args):
    if statement.startswith("UPDATE leadership_term"):
        rows = cursor.connection.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [NAMES])
        print(json.dumps(dict(rows.fetchall())), flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
event.listen(Engine, "after_cursor_execute", stop_before_commit)
DatabaseTerms(sys.argv[1], float(sys.argv[2])).begin_term()
"""

# A leader whose request holds row 1 (its transaction unbounded, as requests' are) until stdin closes, while its
# background task's write (fenced, so holding the term) waits for that row; the test stops it (SIGSTOP) meanwhile.
TASK_WAITS_FOR_A_ROW = """
import sys, threading
from sqlalchemy import text
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.fence import fenced
url, bound_ms = sys.argv[1], int(sys.argv[2])
database = Database(url)
holding = threading.Event()
def request():
    with database.write() as session:
        session.execute(text("UPDATE runs SET who = 'request' WHERE id = 1"))
        holding.set()
        sys.stdin.read()
thread = threading.Thread(target=request)
thread.start()
assert holding.wait(60)
try:
    with fenced(0, bound_ms), database.write() as session:
        session.execute(text("UPDATE runs SET who = 'task' WHERE id = 1"))
    print("task: written", flush=True)
except Exception as exc:
    print(f"task: {type(exc).__name__}", flush=True)
thread.join()
"""


@pytest.fixture
def database() -> Iterator[Database]:
    database = Database(empty_postgres())
    database.upgrade()
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE runs (id serial PRIMARY KEY, who text NOT NULL)"))
        connection.execute(text("INSERT INTO runs (who) VALUES ('initial')"))
    yield database
    database.dispose()


def cluster_term(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(connection.execute(text("SELECT term FROM leadership_term WHERE id = 1")).scalar_one())


def waiting_for_a_lock(database: Database, query_start: str) -> bool:
    """A session of this database runs a statement beginning with ``query_start`` and waits for a lock."""
    with database.engine.connect() as connection:
        return bool(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND starts_with(query, :start)"
                ),
                {"start": query_start},
            ).scalar()
        )


def begin_term_soon(terms: DatabaseTerms) -> int:
    """The term ``terms`` begins, trying again as the leadership's keeper does (each try is bounded)."""
    began: list[int | None] = []
    wait_for(lambda: began.append(terms.begin_term()) or began[-1] is not None, "the next term beginning")
    term = began[-1]
    assert term is not None
    return term


def child(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def read_line(process: subprocess.Popen[str]) -> str:
    """The child's next line of output (it prints one at most, so no line waits in the pipe's buffer)."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], WAIT_S)
    assert ready, f"the child printed nothing within {WAIT_S} s"
    return process.stdout.readline().strip()


def stopped(process: subprocess.Popen[str]) -> bool:
    with open(f"/proc/{process.pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


def end(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()  # a stopped process is killed too
    process.wait(WAIT_S)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


def test_a_process_stopped_before_the_commit_of_its_term_does_not_keep_the_next_term_from_beginning(
    database: Database,
) -> None:
    """Its UPDATE holds the term row until its transaction ends: the database ends it (idle in transaction for two
    check periods), so another process begins the term (term 1: the stopped one's never committed). Its session has
    the lock's TCP keepalives, for a host that vanishes instead."""
    stopped_process = child(STOPPED_BEFORE_COMMIT, database.url, str(TAKEOVER_S))
    terms = DatabaseTerms(database.url, TAKEOVER_S)
    try:
        settings = json.loads(read_line(stopped_process))
        wait_for(lambda: stopped(stopped_process), "the child stopping itself")

        assert begin_term_soon(terms) == 1
        idle, interval, count = keepalive_seconds(TAKEOVER_S)
        assert settings == {
            "tcp_keepalives_idle": str(idle),
            "tcp_keepalives_interval": str(interval),
            "tcp_keepalives_count": str(count),
            "idle_in_transaction_session_timeout": str(idle_session_timeout_ms(TAKEOVER_S)),
        }
    finally:
        end(stopped_process)
        terms.close()


def test_a_stopped_leader_s_write_waiting_for_a_row_releases_the_term(database: Database) -> None:
    """The task's write holds the term FOR SHARE while it waits for a row that a request of the same (stopped)
    process holds: its lock wait is bounded (1 s here), its transaction rolls back and releases the term, the next
    term begins; resumed, the task's write failed, nothing of it written."""
    stopped_leader = child(TASK_WAITS_FOR_A_ROW, database.url, "1000")
    terms = DatabaseTerms(database.url, TAKEOVER_S)
    try:
        wait_for(lambda: waiting_for_a_lock(database, "UPDATE runs SET who = 'task'"), "the task's write waiting")
        stopped_leader.send_signal(signal.SIGSTOP)

        assert begin_term_soon(terms) == 1

        stopped_leader.send_signal(signal.SIGCONT)
        # Its lock wait failed (TransientConflict), or the database also ended its idle transaction meanwhile.
        assert read_line(stopped_leader) in ("task: TransientConflict", "task: GeniError")
        assert stopped_leader.stdin is not None
        stopped_leader.stdin.close()  # the request commits
        assert stopped_leader.wait(WAIT_S) == 0
        with database.engine.connect() as connection:
            assert connection.execute(text("SELECT who FROM runs WHERE id = 1")).scalar() == "request"
    finally:
        stopped_leader.send_signal(signal.SIGCONT)
        end(stopped_leader)
        terms.close()


def test_a_fenced_write_s_bounds_are_its_transaction_s_alone(database: Database) -> None:
    """Inside a fenced write, its lock waits and its idleness are bounded; the next unit of work on the same pooled
    connection (a request's) has neither bound."""
    names = "SELECT current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout'), "
    pooled = Database(database.url, connections=1)
    try:
        with fenced(0, 1500), pooled.write() as session:
            inside = session.execute(text(names + "pg_backend_pid()")).one()
        with pooled.write() as session:
            after = session.execute(text(names + "pg_backend_pid()")).one()
    finally:
        pooled.dispose()
    assert tuple(inside) == ("1500ms", "1500ms", after[2])
    assert tuple(after[:2]) == ("0", "0")


def test_beginning_a_term_takes_at_most_its_bound_in_all_while_old_writes_hold_the_term_in_turn(
    database: Database,
) -> None:
    """Writes of the old term hold the term FOR SHARE one overlapping the next, each far shorter than the lock
    timeout: the UPDATE waits for one after the other. The whole statement is bounded: beginning the term answers
    None (not now) while they go on, and begins it once they stop."""
    terms = DatabaseTerms(database.url, 15.0)  # lock_timeout_ms: 2.5 s, each write below holds the term 0.1 s
    engine = create_engine(database.url)
    answers: list[int | None] = []
    answered = threading.Event()

    def begin() -> None:
        try:
            answers.append(terms.begin_term())
        finally:
            answered.set()

    def hold_the_term() -> Connection:
        connection = engine.connect()
        connection.execute(text("SELECT term FROM leadership_term WHERE id = 1 FOR SHARE"))
        return connection

    beginner = threading.Thread(target=begin)
    holder = hold_the_term()
    try:
        beginner.start()
        wait_for(lambda: waiting_for_a_lock(database, "UPDATE leadership_term"), "beginning the term waiting")
        deadline = time.monotonic() + WAIT_S
        while not answered.wait(0.1) and time.monotonic() < deadline:
            next_holder = hold_the_term()
            holder.commit()
            holder.close()
            holder = next_holder
        assert answered.is_set(), f"beginning a term still waited after {WAIT_S} s"
        assert answers == [None]
        assert cluster_term(database) == 0
    finally:
        holder.commit()
        holder.close()
        beginner.join(WAIT_S)
        engine.dispose()
    try:
        assert terms.begin_term() == 1
    finally:
        terms.close()


def refused_write(database: Database) -> None:
    """A write of a task whose term the cluster is past: LeadershipLost."""
    with database.write() as session:
        session.execute(text("INSERT INTO runs (who) VALUES ('refused')"))


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]


def test_an_alert_refused_to_a_process_that_no_longer_leads_ends_the_task_without_a_traceback(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Its _record lets LeadershipLost through (pytest.raises inside the fenced block), and logs nothing itself."""
    alerts = Alerts(database)
    refused_inside = pytest.raises(LeadershipLost)
    with caplog.at_level(logging.WARNING), pytest.raises(LeadershipLost), fenced(7), refused_inside:
        alerts.backend_failed("oar", "reconcile the calendar with OAR", "OAR's API did not answer")
    assert errors_logged(caplog) == []


def test_the_agents_flush_refused_to_a_process_that_no_longer_leads_ends_without_a_traceback(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """The VPN files' and the DNS zone's refresh of the heartbeats' flush: a refused write goes on up to the task."""
    vpn = SimpleNamespace(vpn=SimpleNamespace(refresh=lambda: refused_write(database)))
    dns = SimpleNamespace(
        dns=SimpleNamespace(zone="nodes.example.org", published_fingerprint=lambda: "another zone"),
        agents=SimpleNamespace(names=lambda: []),
        _republish_alone=lambda: refused_write(database),
        _dns_refresh_warning="",
    )
    with caplog.at_level(logging.WARNING), pytest.raises(LeadershipLost), fenced(7):
        with pytest.raises(LeadershipLost):
            AgentService._refresh_vpn(vpn)  # type: ignore[arg-type]
        with pytest.raises(LeadershipLost):
            AgentService.refresh_names(dns)  # type: ignore[arg-type]
    assert errors_logged(caplog) == []


def test_a_claim_renewal_that_meets_a_busy_calendar_tries_again_at_the_next(
    database: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The renewals' writes are fenced as their task's (lock waits of 0.2 s here) while another transaction holds the
    term row: each renewal's wait for it fails (TransientConflict); the renewals go on, saying so."""
    monkeypatch.setattr(instances_module, "CLAIM_RENEWAL_S", 0.05)
    start = SimpleNamespace(database=database)  # all the claim renewal uses of Instances
    busy = "could not be renewed (the calendar was busy"
    holder = database.engine.connect()
    try:
        holder.execute(text("SELECT term FROM leadership_term WHERE id = 1 FOR UPDATE"))
        with (
            caplog.at_level(logging.WARNING, logger="sfa_omf.instances"),
            fenced(0, 200),
            Instances._renewing_claims(start, ["c1"], datetime.now(UTC)),  # type: ignore[arg-type]
        ):
            wait_for(lambda: caplog.text.count(busy) >= 2, "two renewals meeting the busy calendar")
    finally:
        holder.rollback()
        holder.close()
    assert errors_logged(caplog) == []


class CheckInFlight(PostgresLock):
    """The real lock, whose keeper's check, once ``armed``, waits for ``proceed`` (with ``inside`` set): a check in
    flight while stop() runs."""

    def __init__(self, url: str, takeover_s: float) -> None:
        super().__init__(url, takeover_s)
        self.armed = threading.Event()
        self.inside = threading.Event()
        self.proceed = threading.Event()

    def still_held(self) -> bool:
        if self.armed.is_set() and threading.current_thread().name == "sfa-omf-leadership":
            self.armed.clear()
            self.inside.set()
            assert self.proceed.wait(WAIT_S)
        return super().still_held()


def test_a_check_in_flight_when_stop_begins_does_not_make_the_process_lead_again(database: Database) -> None:
    takeover_s = 3.0  # a check a second: the first one after start() is the one held in flight
    lock = CheckInFlight(database.url, takeover_s)
    leadership = Leadership(lock, takeover_s, DatabaseTerms(database.url, takeover_s))
    leadership.register(PeriodicTask("t", 3600, lambda: None, at_start=False))
    stopper = threading.Thread(target=leadership.stop)
    try:
        leadership.start()
        assert leadership.wait_leader(WAIT_S)
        lock.armed.set()
        assert lock.inside.wait(WAIT_S)
        stopper.start()
        wait_for(lambda: not leadership.is_leader, "stop() clearing the lead")
        lock.proceed.set()
        stopper.join(WAIT_S)
        assert not stopper.is_alive()
        assert not leadership.is_leader
        assert not leadership.wait_leader(0)
    finally:
        lock.proceed.set()
        if stopper.ident is None:  # never started
            leadership.stop()
