"""``serve --workers N`` starting and stopping, on one real PostgreSQL over real TLS: a replacement worker started
while the database refuses connections says so in one line, and the master says it failed to start (it served no
call, it lost none); a connection while the server stops is refused at once, not queued where nobody accepts it; a
stop while the workers start is a stop, not a failure."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, make_url, text

from sfa_omf.cluster.leadership import STARTUP_KEY
from sfa_omf.cluster.workers import STOP_TIMEOUT_S as WORKER_STOP_TIMEOUT_S
from tests.cluster.harness import CONNECTION_ERRORS, START_TIMEOUT_S, STOP_TIMEOUT_S, Lab, Serve, make_lab
from tests.postgres import empty_postgres

#: Only a bound on a connection that hangs (the defect): a refused one ends at once. Below the master's bound on a
#: worker's stop: past it, the held worker is killed and a connection queued at its socket is reset, as if refused.
HANG_GUARD_S = WORKER_STOP_TIMEOUT_S / 2
#: Connections tried while the server stops: one may still reach a worker that has not begun its stop yet.
STOP_CONNECT_TRIES = 20


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return make_lab(tmp_path, empty_postgres(), 1)


@contextmanager
def connected(url: str) -> Iterator[Connection]:
    """An autocommit connection of its own to ``url``."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def worker_pids(server: Serve) -> list[int]:
    """The workers' pids, from the master's line ``serving with N worker processes (pids A B)``."""
    line = server.wait_for_line("worker processes (pids ")
    return [int(pid) for pid in line.split("(pids ")[1].rstrip(")").split()]


def wait_until(what: str, condition: Callable[[], bool], server: Serve) -> None:
    """Until ``condition()``; AssertionError (with the log) when the server exits or START_TIMEOUT_S passes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        assert server.process.poll() is None, f"the server exited while waiting for {what}: {server.lines}"
        assert time.monotonic() < deadline, f"no {what} within {START_TIMEOUT_S} s: {server.lines}"
        time.sleep(0.1)


def test_a_worker_replaced_while_the_database_refuses_connections_says_so_in_one_line(
    lab: Lab, tmp_path: Path, servers: list[Serve]
) -> None:
    server = Serve(lab, tmp_path, "a", "--workers", "2")
    servers.append(server)
    server.wait_ready()
    first, _ = worker_pids(server)
    name = make_url(lab.database_url).database
    admin_url = make_url(lab.database_url).set(database="postgres").render_as_string(hide_password=False)
    with connected(admin_url) as admin:
        # As during a failover: new connections refused, those open (the other worker's) kept.
        admin.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        try:
            seen = len(server.lines)
            os.kill(first, signal.SIGKILL)
            killed = server.wait_for_line(f"worker 1 (pid {first}) ")
            replacement = int(killed.split("started pid ")[1].split()[0])
            ended = server.wait_for_line(f"worker 1 (pid {replacement}) ")
        finally:
            admin.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    assert "was killed by signal 9; its calls in progress were lost" in killed
    # The replacement served no call: it lost none, and the master says why it ended, in the worker's own words.
    assert f"worker 1 (pid {replacement}) failed to start: the calendar database " in ended, ended
    assert "cannot be reached" in ended and "not currently accepting connections" in ended, ended
    assert "calls in progress" not in ended
    window = server.lines[seen : server.lines.index(ended)]
    # The replacement's own lines: neither the master's (sfa_omf.server, no worker number) nor worker 2's.
    own = [line for line in window if line != killed and "[worker 2]" not in line]
    assert len(own) == 1, own
    assert own[0].startswith("sfa-omf: cannot start: the calendar database "), own
    assert "start it, or fix [sfa_omf] database_url" in own[0]
    assert not [line for line in server.lines if "Traceback" in line]


def handshake_refused(port: int, lab: Lab) -> bool:
    """Connect to ``port`` and make a TLS handshake as ann: True when the connection is refused or reset, False when
    a worker still serving answers it; raises TimeoutError when it hangs (HANG_GUARD_S)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(*lab.ann)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD_S) as plain,
            context.wrap_socket(plain) as tls,
        ):
            tls.getpeercert()
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False


def test_a_connection_while_the_workers_stop_is_refused_at_once(lab: Lab, tmp_path: Path, servers: list[Serve]) -> None:
    server = Serve(lab, tmp_path, "a", "--workers", "2")
    servers.append(server)
    server.wait_ready()
    urn, credential = lab.slices[0]
    with connected(lab.database_url) as holder, connected(lab.database_url) as watcher:
        # A call in progress that holds one worker's stop until the test lets it end. Status reads the slice table,
        # which no background task reads: the one waiting for the lock is the call.
        holder.execute(text("BEGIN"))
        holder.execute(text("LOCK TABLE slice IN ACCESS EXCLUSIVE MODE"))
        client = server.client(lab)

        def status() -> None:
            # Its answer is not this test's subject (the stop of one process is tested elsewhere): only that it holds.
            with contextlib.suppress(*CONNECTION_ERRORS):
                client.Status([urn], [credential], {})

        call = threading.Thread(target=status, daemon=True)
        call.start()
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        wait_until("call waiting for the table lock", lambda: bool(watcher.execute(waiting).scalar()), server)
        server.process.send_signal(signal.SIGTERM)
        server.wait_for_line("] stopped", STOP_TIMEOUT_S)  # the idle worker: the stop has begun in both
        # (The aggregate's port: the registry's, in a worker whose aggregate call holds its stop, is the stop of
        # one process's matter.)
        refused = False
        for _ in range(STOP_CONNECT_TRIES):
            refused = handshake_refused(server.aggregate_port, lab)
            if refused:
                break
        assert refused, f"the aggregate's port still served connections during the stop: {server.lines}"
        # Refused while the held call still runs, not reset by the master's kill of its worker.
        assert not [line for line in server.lines if "did not stop within" in line], server.lines
        holder.execute(text("COMMIT"))
    call.join(STOP_TIMEOUT_S)
    server.process.wait(STOP_TIMEOUT_S)  # (a second SIGTERM while it exits would end it with -15)
    assert server.stop() == 0


def test_sigterm_while_the_workers_start_stops_with_a_line_and_status_0(
    lab: Lab, tmp_path: Path, servers: list[Serve]
) -> None:
    with connected(lab.database_url) as holder, connected(lab.database_url) as watcher:
        # The workers' start-up writes wait for this lock: they cannot be ready before the test lets them.
        holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": STARTUP_KEY})
        server = Serve(lab, tmp_path, "a", "--workers", "2")
        servers.append(server)
        # Waiting for the lock the holder took: only this server's workers (pg_locks is the whole PostgreSQL
        # server's, where other tests' processes wait for other advisory locks; one of them satisfied a test for any
        # waiter, and the master got SIGTERM before it had set its handler).
        holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar()
        waiting = text("SELECT count(*) FROM pg_locks WHERE NOT granted AND :holder = ANY(pg_blocking_pids(pid))")
        wait_until(
            "worker waiting for the start-up lock",
            lambda: bool(watcher.execute(waiting, {"holder": holder_pid}).scalar()),
            server,
        )
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(STOP_TIMEOUT_S)
    assert server.stop() == 0, server.lines
    assert [line for line in server.lines if "sfa_omf.server " in line][-1].endswith(" stopped while starting")
    assert not [line for line in server.lines if "Traceback" in line]
