"""A leader that is stopped (SIGSTOP) or hangs while its host runs on: the host's kernel still answers the database's
keepalives, so only the session's idle_session_timeout frees the lock. Another process takes the background tasks
over; the stopped one, resumed, steps down at its next check, starts no task before it, and does not lead again while
the other does. With real processes: a Leadership in a child process, and two ``sfa-omf serve`` hosts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from sfa_omf.cluster.leadership import (
    LOCK_KEY,
    Leadership,
    PeriodicTask,
    PostgresLock,
    check_period_s,
    idle_session_timeout_ms,
)
from tests.cluster.harness import REPO, Lab, Serve, make_lab, request, window
from tests.postgres import empty_postgres

TAKEOVER_S = 1.5
WAIT_S = 60.0  # a bound on waiting for something that must happen (a hang is a failure), not a timing assertion

# A contender in a process of its own: its task records each run's start (the child's clock, epoch seconds) in the
# table runs, and it prints its leadership log lines.
CHILD = """
import logging, sys, time
from sqlalchemy import create_engine, text
from sfa_omf.cluster.leadership import Leadership, PeriodicTask, PostgresLock
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
url, takeover_s = sys.argv[1], float(sys.argv[2])
engine = create_engine(url, isolation_level="AUTOCOMMIT")
def run():
    started = time.time()
    with engine.connect() as connection:
        connection.execute(text("INSERT INTO runs (who, started) VALUES ('child', :s)"), {"s": started})
leadership = Leadership(PostgresLock(url, takeover_s), takeover_s)
leadership.register(PeriodicTask("record", 0.05, run))
leadership.start()
sys.stdin.read()  # until the test closes it
leadership.stop()
"""


class ChildLines:
    """The standard error lines of a child process, collected as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._process = process
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, needle: str, count: int = 1) -> None:
        deadline = time.monotonic() + WAIT_S
        while sum(needle in line for line in self.lines) < count:
            assert self._process.poll() is None, f"the child ended: {self.lines}"
            assert time.monotonic() < deadline, f"no {count} line(s) with {needle!r} within {WAIT_S} s: {self.lines}"
            time.sleep(0.05)


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT_S} s"
        time.sleep(0.05)


def lock_holders(url: str) -> list[str]:
    """The application names of this database's sessions holding the leadership lock now."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT activity.application_name FROM pg_locks AS locks "
                    "JOIN pg_stat_activity AS activity ON activity.pid = locks.pid "
                    "WHERE locks.locktype = 'advisory' AND locks.granted "
                    "AND ((locks.classid::bigint << 32) | locks.objid::bigint) = :key "
                    "AND locks.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"key": LOCK_KEY},
            ).all()
    finally:
        engine.dispose()
    return [str(name) for (name,) in rows]


@pytest.fixture
def url() -> Iterator[str]:
    url = empty_postgres()
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE runs (id serial PRIMARY KEY, who text NOT NULL, started float NOT NULL)"))
    engine.dispose()
    yield url


def test_the_lock_session_has_an_idle_timeout_below_the_takeover_time() -> None:
    for takeover_s in (1, 3, 15, 60):
        timeout_ms = idle_session_timeout_ms(takeover_s)
        # Longer than the leader's checks are apart (a live leader is never idle that long), and short enough that
        # a standby's next try comes within the takeover time.
        assert check_period_s(takeover_s) * 1000 < timeout_ms
        assert timeout_ms + check_period_s(takeover_s) * 1000 <= takeover_s * 1000


def test_a_stopped_leader_is_replaced_and_once_resumed_runs_no_task_and_does_not_lead_again(url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(TAKEOVER_S)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = ChildLines(child)
    other_runs: list[float] = []
    other = Leadership(PostgresLock(url, TAKEOVER_S), TAKEOVER_S)
    other.register(PeriodicTask("record", 0.05, lambda: other_runs.append(time.time())))
    stopped = False
    try:
        lines.wait_for("now leads the background tasks")
        other.start()
        child.send_signal(signal.SIGSTOP)
        stopped = True
        # The child's host answers keepalives for it: only the idle timeout frees its lock.
        wait_for(lambda: other.is_leader, "a takeover from the stopped leader")
        wait_for(lambda: len(other_runs) >= 3, "the new leader running its task")

        resumed_at = time.time()
        child.send_signal(signal.SIGCONT)
        stopped = False
        lines.wait_for("lost the leadership of the background tasks")
        # A few more of the child's check periods: it must not lead again, the other still leads.
        settled_at = time.monotonic()
        wait_for(lambda: time.monotonic() - settled_at > 3 * check_period_s(TAKEOVER_S), "three check periods")
        assert sum("now leads" in line for line in lines.lines) == 1, lines.lines
        assert other.is_leader
        holders = lock_holders(url)
        assert len(holders) == 1 and holders[0].endswith(f":{os.getpid()}"), holders

        engine = create_engine(url)
        with engine.connect() as connection:
            late = connection.execute(
                text("SELECT count(*) FROM runs WHERE who = 'child' AND started >= :resumed"), {"resumed": resumed_at}
            ).scalar()
            before = connection.execute(text("SELECT count(*) FROM runs WHERE who = 'child'")).scalar()
        engine.dispose()
        assert before, "the child never ran its task while it led"
        # (Here the resumed child's next check usually comes before its task is due; the guard that keeps a task
        # from starting before that check is what test_no_task_starts_while_the_lock_is_unconfirmed... isolates.)
        assert late == 0, "the resumed leader started a task while the other process led"
    finally:
        if stopped:
            child.send_signal(signal.SIGCONT)
        other.stop()
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class SlowCheckLock(PostgresLock):
    """The real advisory lock, whose check of the held lock waits (once ``slow`` is set) until ``answer`` is set: what
    a leader sees when its process was stopped right before a check, or the database's answer is late."""

    def __init__(self, url: str, takeover_s: float) -> None:
        super().__init__(url, takeover_s)
        self.slow = threading.Event()
        self.waiting = threading.Event()
        self.answer = threading.Event()

    def still_held(self) -> bool:
        if self.slow.is_set():
            self.waiting.set()
            self.answer.wait()
        return super().still_held()


def test_no_task_starts_while_the_lock_is_unconfirmed_for_longer_than_the_session_may_live(url: str) -> None:
    runs: list[float] = []
    lock = SlowCheckLock(url, TAKEOVER_S)
    leadership = Leadership(lock, TAKEOVER_S)
    leadership.register(PeriodicTask("count", 0.01, lambda: runs.append(time.monotonic())))
    leadership.start()
    try:
        assert leadership.wait_leader(WAIT_S)
        wait_for(lambda: len(runs) >= 3, "the task running")
        lock.slow.set()
        assert lock.waiting.wait(WAIT_S)
        # The check is late by two of its periods: the session may have been closed for idleness by now (another
        # process may lead): tasks have stopped starting, and none starts while the answer does not come.
        late = time.monotonic()
        wait_for(lambda: time.monotonic() - late > 2 * check_period_s(TAKEOVER_S), "two check periods")
        seen = len(runs)
        wait_for(lambda: time.monotonic() - late > 4 * check_period_s(TAKEOVER_S), "two more check periods")
        assert len(runs) == seen, "tasks started while the lock was not confirmed"
        # The answer: the session was closed meanwhile (idle too long), so this process steps down, takes the lock
        # again (nobody else contends) and its task runs again.
        lock.answer.set()
        wait_for(lambda: len(runs) > seen, "the task running again once the lock is confirmed")
    finally:
        lock.answer.set()
        leadership.stop()


SERVE_TAKEOVER_S = 3


def test_a_stopped_serve_leader_is_replaced_by_the_other_host_which_runs_the_background_work(
    tmp_path: Path,
) -> None:
    lab: Lab = make_lab(tmp_path, empty_postgres(), 1)
    environment = {"SFA_OMF_LEADER_TAKEOVER_S": str(SERVE_TAKEOVER_S), "SFA_OMF_ALLOCATION_TTL_S": "1"}
    leader = Serve(lab, tmp_path, "host-a", "--workers", "1", **environment)
    standby: Serve | None = None
    stopped = False
    try:
        leader.wait_ready()
        leader.wait_for_line("now leads the background tasks")
        standby = Serve(lab, tmp_path, "host-b", "--workers", "1", **environment)
        standby.wait_ready()
        urn, credential = lab.slices[0]
        client = standby.client(lab)
        answer = client.Allocate(urn, [credential], request(window(days_ahead=20, hour=5)), {})
        assert answer["code"]["geni_code"] == 0, answer

        leader.process.send_signal(signal.SIGSTOP)  # --workers 1: the process is the worker that leads
        stopped = True
        # How soon is the configuration's promise (leader_takeover_s), not timed here.
        standby.wait_for_line("now leads the background tasks")
        standby.wait_for_line("released 1 allocation(s) that were not provisioned in time")
        assert client.Status([urn], [credential], {})["value"]["geni_slivers"] == []

        leader.process.send_signal(signal.SIGCONT)
        stopped = False
        leader.wait_for_line("lost the leadership of the background tasks")
        settled_at = time.monotonic()
        wait_for(lambda: time.monotonic() - settled_at > 3 * check_period_s(SERVE_TAKEOVER_S), "three checks")
        assert sum("now leads" in line for line in leader.lines) == 1, leader.lines
        holders = lock_holders(lab.database_url)
        assert len(holders) == 1 and holders[0].endswith(f":{standby.process.pid}"), holders
        assert standby.stop() == 0
        assert leader.stop() == 0
    finally:
        if stopped:
            leader.process.send_signal(signal.SIGCONT)
        leader.stop()
        if standby is not None:
            standby.stop()


class AlwaysSlowCheckLock(PostgresLock):
    """The real advisory lock whose every check of the held lock answers, true, ``delay_s`` late: a database (or a
    process) so slow that no check can confirm the lock in time for a task to start."""

    def __init__(self, url: str, takeover_s: float, delay_s: float) -> None:
        super().__init__(url, takeover_s)
        self.delay_s = delay_s
        self.slow = threading.Event()

    def still_held(self) -> bool:
        if self.slow.is_set() and self._connection is not None:
            # On the session itself, so that it stays busy, never idle: the database is slow, the process alive.
            self._connection.execute(text("SELECT pg_sleep(:s)"), {"s": self.delay_s})
        return super().still_held()


def test_a_leader_whose_checks_always_answer_too_late_hands_the_lead_to_a_standby(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its checks say the lock is held, but too late for any task to start (1.6 check periods): rather than hold the
    lock and run nothing, it hands the lead over after ``takeover_s`` without a confirmation; the standby runs."""
    slow_runs: list[float] = []
    standby_runs: list[float] = []
    lock = AlwaysSlowCheckLock(url, TAKEOVER_S, 1.6 * check_period_s(TAKEOVER_S))
    slow = Leadership(lock, TAKEOVER_S)
    slow.register(PeriodicTask("count", 0.01, lambda: slow_runs.append(time.monotonic())))
    standby = Leadership(PostgresLock(url, TAKEOVER_S), TAKEOVER_S)
    standby.register(PeriodicTask("count", 0.01, lambda: standby_runs.append(time.monotonic())))
    slow.start()
    try:
        assert slow.wait_leader(WAIT_S)
        wait_for(lambda: len(slow_runs) >= 3, "the task running")
        standby.start()
        lock.slow.set()
        wait_for(lambda: len(standby_runs) >= 3, "the standby running the task")
        assert any("hands the lead over" in record.getMessage() for record in caplog.records)
    finally:
        lock.slow.clear()
        slow.stop()
        standby.stop()
