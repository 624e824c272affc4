"""A PostgreSQL that hangs without closing its connections (its processes stopped, as in a storage stall: the kernel
still acknowledges, so neither TCP keepalives nor the TCP user timeout fire, and the stopped server enforces no
statement_timeout) must not hold a call: a serving process gives each exchange up after ``statement_timeout_s`` +
NO_ANSWER_MARGIN_S (DBERROR), the pool discards that connection, and the first call after the database resumes
works. The leadership's check answers within its own limit too.

Each test runs a private PostgreSQL cluster of its own (initdb, a free port), frozen with SIGSTOP for FREEZE_S (far
longer than the limits): a call that comes back while the unfreezer's flag is still unset was bounded by the client,
not by the freeze's end. The cluster is always resumed and stopped. Skipped where PostgreSQL's server binaries are not
installed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from sfa_omf.calendar import database as database_module
from sfa_omf.calendar.database import Database
from sfa_omf.cluster.leadership import PostgresLock
from sfa_omf.errors import GeniCode, GeniError
from tests.greenlet_loop import Ticks, in_greenlet

#: How long a freeze lasts at most: far beyond every limit under test (6 s, 2 s + 5 s, 2 s), so that a call back
#: before it ends was bounded by the client.
FREEZE_S = 60.0


class Cluster:
    """A private PostgreSQL cluster: its URL, and its processes to freeze."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def pids(self) -> list[int]:
        """The postmaster and its children (its backends, its background processes)."""
        postmaster = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            if int(fields[1]) == postmaster:
                children.append(int(stat.split("/")[2]))
        return [postmaster, *children]

    def signal(self, signum: int) -> None:
        for pid in self.pids():
            with suppress(ProcessLookupError):  # (ended meanwhile)
                os.kill(pid, signum)

    @contextmanager
    def frozen(self) -> Iterator[threading.Event]:
        """The cluster stopped (SIGSTOP) for FREEZE_S at most; the event is set when it is resumed."""
        thawed = threading.Event()

        def thaw() -> None:
            self.signal(signal.SIGCONT)
            thawed.set()

        self.signal(signal.SIGSTOP)
        timer = threading.Timer(FREEZE_S, thaw)
        timer.start()
        try:
            yield thawed
        finally:
            timer.cancel()
            thaw()


def _server_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    initdb, pg_ctl = _server_binary("initdb"), _server_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    as_root = os.geteuid() == 0

    def run(command: list[str]) -> None:
        # PostgreSQL refuses to run as root: as its own user then.
        subprocess.run(["runuser", "-u", "postgres", "--", *command] if as_root else command, check=True, timeout=120)

    directory = Path(tempfile.mkdtemp(prefix="sfa-omf-frozen-"))
    if as_root:
        os.chown(directory, pwd.getpwnam("postgres").pw_uid, -1)
    port = _free_port()
    data = str(directory / "data")
    run([initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"])
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
    run([pg_ctl, "-D", data, "-o", options, "-l", str(directory / "log"), "-w", "start"])
    cluster = Cluster(directory, port)
    try:
        yield cluster
    finally:
        cluster.signal(signal.SIGCONT)  # (a stopped server cannot stop)
        run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"])
        shutil.rmtree(directory, ignore_errors=True)


def backend_pid(database: Database) -> int:
    with database.read() as session:
        pid: int = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        return pid


def refused_while_frozen(cluster: Cluster, call: Callable[[], object], what: str) -> GeniError:
    """``call``'s refusal, made while the database is frozen (asserted: before the unfreezer resumed it)."""
    with cluster.frozen() as thawed:
        with pytest.raises(GeniError) as refusal:
            call()
        assert not thawed.is_set(), f"the {what} waited for the database to resume"
    return refusal.value


def test_a_statement_on_a_pooled_connection_answers_while_the_database_hangs(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call's statement goes out on a pooled connection (no ping: used a moment ago) to a database that stopped:
    it answers DBERROR within statement_timeout_s + NO_ANSWER_MARGIN_S, long before the database resumes; that
    connection is discarded (the next call has a new session), and the first call after the database resumes works."""
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE_S", 3600.0)  # this test's path: the statement, not a ping
    database = Database(cluster.url, connections=1, statement_timeout_s=1)
    try:
        before = backend_pid(database)
        refused = refused_while_frozen(cluster, lambda: backend_pid(database), "call")
        assert refused.code == GeniCode.DBERROR and "no answer from the database" in refused.message
        assert backend_pid(database) != before  # the connection given up was discarded; the call after works
    finally:
        database.dispose()


def test_a_plain_statement_answers_while_the_database_hangs(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for the one-statement reads of the hot path (fetch_all of a plain statement, on the driver's cursor:
    Status's): DBERROR while frozen, the connection discarded, the next call works."""
    from sfa_omf.calendar.plain_statements import PlainStatement

    monkeypatch.setattr(database_module, "PING_AFTER_IDLE_S", 3600.0)
    database = Database(cluster.url, connections=1, statement_timeout_s=1)
    statement = PlainStatement(select(func.pg_backend_pid()))
    try:
        [(before,)] = database.fetch_all(statement)
        assert statement.compiled_for(database.engine.dialect) is not None  # (on the driver's cursor indeed)
        refused = refused_while_frozen(cluster, lambda: database.fetch_all(statement), "call")
        assert refused.code == GeniCode.DBERROR and "no answer from the database" in refused.message
        [(after,)] = database.fetch_all(statement)
        assert after != before
    finally:
        database.dispose()


def test_a_statement_in_a_reactor_call_answers_while_the_database_hangs(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a call answered in the reactor thread ([sfa_omf] calls_in_reactor): its statements go through
    asynchronous connections, bounded alike (DBERROR while frozen, the connection discarded, the next call works);
    and the loop kept running while the statement waited."""
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE_S", 3600.0)
    database = Database(cluster.url, connections=1, statement_timeout_s=1)
    ticks = Ticks()
    try:
        before = in_greenlet(lambda: backend_pid(database))
        call = lambda: in_greenlet(lambda: backend_pid(database), ticks, 0.05)  # noqa: E731
        refused = refused_while_frozen(cluster, call, "reactor call")
        assert refused.code == GeniCode.DBERROR and "no answer from the database" in refused.message
        assert ticks.count >= 20  # (the bound is 6 s: the loop ran all along)
        assert in_greenlet(lambda: backend_pid(database)) != before
    finally:
        database.dispose()


def test_the_checkout_ping_of_an_idle_connection_answers_while_the_database_hangs(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection idle for a while is pinged at checkout: to a stopped database the ping waits PING_LIMIT_S,
    the pool replaces the connection, opening one fails (connect_timeout): DBERROR, long before the database resumes;
    the first call after it resumes works on a new connection."""
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE_S", 0.0)  # every checkout pings
    database = Database(cluster.url, connections=1, statement_timeout_s=1)
    try:
        before = backend_pid(database)
        refused = refused_while_frozen(cluster, lambda: backend_pid(database), "checkout")
        assert refused.code == GeniCode.DBERROR
        assert backend_pid(database) != before
    finally:
        database.dispose()


def test_the_leadership_check_answers_while_the_database_hangs(cluster: Cluster) -> None:
    """The leader's check of its lock on a stopped database answers False (the lock given up) within its limit (2/3
    of takeover_s), not when the database resumes; after it resumes, the lock is taken again on a new session."""
    lock = PostgresLock(cluster.url, takeover_s=3)
    try:
        assert lock.try_acquire() and lock.still_held()
        with cluster.frozen() as thawed:
            held = lock.still_held()
            answered_while_frozen = not thawed.is_set()
        assert answered_while_frozen, "the leadership check waited for the database to resume"
        assert held is False
        assert lock.try_acquire() and lock.still_held()
    finally:
        lock.release()
