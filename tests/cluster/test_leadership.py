"""Leadership of the background tasks on the real PostgreSQL (advisory lock on connections of their own), and the
sole process of SQLite: exactly one leader runs the tasks; when it stops, or its database session dies, another
process takes over and runs them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from sfa_omf.cluster.leadership import (
    Leadership,
    PeriodicTask,
    PostgresLock,
    SoleProcessLock,
    keepalive_seconds,
    lock_for,
)
from tests.postgres import empty_postgres

TAKEOVER_S = 1.5
WAIT_S = 20.0  # a bound on waiting for something that must happen (a hang is a failure), not a timing assertion


class Counter:
    """A task that counts its runs."""

    def __init__(self) -> None:
        self.runs = 0
        self.ran = threading.Event()

    def __call__(self) -> None:
        self.runs += 1
        self.ran.set()


def contender(url: str, counter: Counter, period_s: float = 0.1) -> Leadership:
    leadership = Leadership(PostgresLock(url, TAKEOVER_S), TAKEOVER_S)
    leadership.register(PeriodicTask("count", period_s, counter))
    return leadership


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT_S} s"
        time.sleep(0.05)


@pytest.fixture
def url() -> Iterator[str]:
    yield empty_postgres()


def test_one_leader_runs_the_tasks_and_another_takes_over_when_it_stops(url: str) -> None:
    counters = [Counter(), Counter(), Counter()]
    contenders = [contender(url, counter) for counter in counters]
    for leadership in contenders:
        leadership.start()
    try:
        wait_for(lambda: any(leadership.is_leader for leadership in contenders), "a leader")
        for _ in range(20):  # sampled over a few check periods: never two leaders, the task only on the leader
            assert sum(leadership.is_leader for leadership in contenders) == 1
            time.sleep(TAKEOVER_S / 10)
        (first,) = [index for index, leadership in enumerate(contenders) if leadership.is_leader]
        assert counters[first].runs > 1
        others = [index for index in range(3) if index != first]
        assert [counters[index].runs for index in others] == [0, 0]

        contenders[first].stop()
        wait_for(lambda: any(contenders[index].is_leader for index in others), "a takeover")
        (second,) = [index for index in others if contenders[index].is_leader]
        assert counters[second].ran.wait(WAIT_S)
        stopped_at = counters[first].runs
        time.sleep(TAKEOVER_S)
        assert counters[first].runs == stopped_at, "a stopped leader ran its task again"
    finally:
        for leadership in contenders:
            leadership.stop()


def test_a_leader_whose_session_dies_steps_down_and_the_lock_goes_to_one_process(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    counters = [Counter(), Counter()]
    contenders = [contender(url, counter) for counter in counters]
    for leadership in contenders:
        leadership.start()
    engine = create_engine(url)
    try:
        wait_for(lambda: any(leadership.is_leader for leadership in contenders), "a leader")
        with caplog.at_level(logging.WARNING, logger="sfa_omf.cluster"), engine.begin() as connection:
            # What a database restart or a cut network does to the leader's session: PostgreSQL frees its lock.
            killed = connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND ((classid::bigint << 32) | objid::bigint) = :key AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"key": PostgresLock(url).key},
            ).all()
            assert killed == [(True,)]
            wait_for(lambda: "lost the leadership" in caplog.text, "the old leader stepping down")
        wait_for(lambda: sum(leadership.is_leader for leadership in contenders) == 1, "one leader again")
        with engine.connect() as connection:
            holders = connection.execute(
                text(  # this database's: other databases of the server (other engineers' tests) hold theirs
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            ).scalar()
        assert holders == 1
    finally:
        for leadership in contenders:
            leadership.stop()
        engine.dispose()


def lock_holders(url: str) -> set[int]:
    """The sessions (backend pids) of this database holding the leadership lock now."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            found = connection.execute(
                text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND ((classid::bigint << 32) | objid::bigint) = :key AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"key": PostgresLock(url).key},
            ).all()
    finally:
        engine.dispose()
    return {int(pid) for (pid,) in found}


def test_stopping_releases_the_lock_at_once(url: str) -> None:
    """The leader's session lets the lock go as stop() returns. (Another process of the server contending on the
    same database may take it right after: only the stopped leader's own session is asked about.)"""
    counter = Counter()
    leadership = contender(url, counter)
    leadership.start()
    assert leadership.wait_leader(WAIT_S)
    (leader,) = lock_holders(url)  # the lock is ours while we lead: exactly one session holds it
    leadership.stop()
    assert leader not in lock_holders(url), "the lock is still held by the stopped leader's session"


def test_a_task_that_fails_runs_again_and_the_others_run(caplog: pytest.LogCaptureFixture) -> None:
    failures = Counter()
    steady = Counter()

    def broken() -> None:
        failures()
        raise RuntimeError("testbed down")

    leadership = Leadership(SoleProcessLock(), TAKEOVER_S)
    leadership.register(PeriodicTask("broken", 0.05, broken))
    leadership.register(PeriodicTask("steady", 0.05, steady))
    with caplog.at_level(logging.WARNING, logger="sfa_omf.cluster"):
        leadership.start()
        try:
            wait_for(lambda: failures.runs >= 3 and steady.runs >= 3, "three runs of each task")
        finally:
            leadership.stop()
    assert "broken failed (testbed down); will try again in 0.05 s" in caplog.text


def test_sqlite_has_one_process_which_leads_at_once() -> None:
    at_start, later = Counter(), Counter()
    lock = lock_for("sqlite:////tmp/calendar.sqlite")
    assert isinstance(lock, SoleProcessLock)
    leadership = Leadership(lock, 60)
    leadership.register(PeriodicTask("at start", 3600, at_start))
    leadership.register(PeriodicTask("after a period", 3600, later, at_start=False))
    leadership.start()
    try:
        assert leadership.wait_leader(WAIT_S)
        assert at_start.ran.wait(WAIT_S)
        assert later.runs == 0  # its first run is one period (an hour) after leadership began
    finally:
        leadership.stop()
    with pytest.raises(RuntimeError, match=r"before Leadership\.start"):
        leadership.register(PeriodicTask("late", 1, at_start))


def test_postgresql_urls_get_the_advisory_lock_and_keepalives_fit_the_takeover_time() -> None:
    assert isinstance(lock_for("postgresql+psycopg://u@127.0.0.1/db", 15), PostgresLock)
    idle, interval, count = keepalive_seconds(15)
    assert (idle, interval, count) == (5, 1, 3)
    assert idle + interval * count < 15  # the database frees a vanished host's lock before the takeover time
    assert keepalive_seconds(1) == (1, 1, 3)  # never zero (zero means the system's default, two hours)


def test_a_leader_whose_session_is_terminated_starts_no_task_once_another_session_holds_the_lock(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """pg_terminate_backend (what a database restart or an administrator does) closes the leader's session and frees
    its lock, which another session takes. The leader's keeper checks only every check period (10 s here): the next
    start of the task (due 0.01 s after its run) comes long before that check, and must find the lock gone."""
    events: list[str] = []
    other_session = create_engine(url, isolation_level="AUTOCOMMIT").connect()

    def terminate_the_leader_once() -> None:
        events.append("the leader's task starts")
        if len(events) > 1:
            return
        (leader_pid,) = lock_holders(url)
        other_session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": leader_pid})
        # Waits until the terminated session is gone and its lock free: then this session holds it.
        other_session.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PostgresLock(url).key})
        events.append("another session holds the lock")

    leader_takeover_s = 30.0  # a check every 10 s: the task's next start comes first
    leader = Leadership(PostgresLock(url, leader_takeover_s), leader_takeover_s)
    leader.register(PeriodicTask("terminate", 0.01, terminate_the_leader_once))
    try:
        with caplog.at_level(logging.WARNING, logger="sfa_omf.cluster"):
            leader.start()
            wait_for(lambda: "another session holds the lock" in events, "the lock taken by another session")
            wait_for(lambda: not leader.is_leader, "the old leader stepping down")
            # (It says so just after it stepped down.)
            wait_for(lambda: "lost the leadership" in caplog.text, "the old leader saying it lost the leadership")
        assert events == ["the leader's task starts", "another session holds the lock"], (
            "the old leader started its task while another session held the lock"
        )
        assert lock_holders(url) == {other_session.execute(text("SELECT pg_backend_pid()")).scalar()}
    finally:
        leader.stop()
        other_session.close()
        other_session.engine.dispose()


class TriesCountingLock(PostgresLock):
    """The real advisory lock, counting the tries that found it taken (a standby's tries come a check period apart)."""

    def __init__(self, url: str, takeover_s: float) -> None:
        super().__init__(url, takeover_s)
        self.failed_tries = 0

    def try_acquire(self) -> bool:
        taken = super().try_acquire()
        if not taken:
            self.failed_tries += 1
        return taken


def test_a_leader_stopped_while_its_task_runs_keeps_the_lock_until_the_task_ends(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """stop() waits for a running task up to its bound and returns; the task runs on, so the lock stays held (its
    session kept busy, never closed for idleness) and the standby starts the same task only after it ended."""
    events: list[str] = []
    task_may_end = threading.Event()

    def long_task() -> None:
        events.append("first's task starts")
        task_may_end.wait(WAIT_S)
        events.append("first's task ends")

    # A longer takeover than the other tests': the stopped leader's keeper must keep its session busy for five of
    # the standby's tries, and a loaded CI machine may delay a check by a good part of a short check period.
    takeover_s = 4.0
    first = Leadership(PostgresLock(url, takeover_s), takeover_s)
    first.register(PeriodicTask("reconcile", 3600, long_task))
    second_lock = TriesCountingLock(url, takeover_s)
    second = Leadership(second_lock, takeover_s)
    second.register(PeriodicTask("reconcile", 3600, lambda: events.append("second's task starts")))
    first.start()
    try:
        wait_for(lambda: events == ["first's task starts"], "the first's task running")
        second.start()
        with caplog.at_level(logging.WARNING, logger="sfa_omf.cluster"):
            first.stop(wait_s=0.1)  # returns (serve's shutdown is bounded) while the task runs on
        assert events == ["first's task starts"]
        # Five more tries of the standby, a check period apart: longer than the first's session would live idle
        # (idle_session_timeout, two check periods) had its keeper stopped checking.
        tries = second_lock.failed_tries
        wait_for(lambda: second_lock.failed_tries >= tries + 5 or second.is_leader, "five tries of the standby")
        assert not second.is_leader, "the standby took the lock while the stopped leader's task still ran"
        task_may_end.set()
        wait_for(lambda: "second's task starts" in events, "the standby running the task once the first's ended")
        assert events == ["first's task starts", "first's task ends", "second's task starts"]
        assert "keeps the leadership lock until it ends" in caplog.text
    finally:
        task_may_end.set()
        first.stop()
        second.stop()
