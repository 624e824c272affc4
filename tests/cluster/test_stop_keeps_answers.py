"""A clean stop (SIGTERM: ``systemctl stop``/``restart``, or the master stopping a worker) answers the calls in
progress before it ends, and refuses new connections at once: real ``sfa-omf serve`` processes on PostgreSQL, real
TLS clients, a call held in progress by a table lock this test takes.

The stop used to hold the reactor thread while the calls finished: their answers queued behind it, and Twisted's
shutdown closed every connection before writing them. The booking was made, its client never heard of it, and
xmlrpc.client's one retry got "connection refused", or, from another worker, its own booking as a conflict.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.cluster.harness import NODE, STOP_TIMEOUT_S, Lab, Serve, make_lab, request, window
from tests.postgres import empty_postgres
from tests.tls_harness import client_context

WAIT_S = 60  # bounds on things that must happen (a hang is a failure), generous for a loaded machine


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return make_lab(tmp_path, empty_postgres(), 1)


class ConnectionKeepingTransport(xmlrpc.client.SafeTransport):
    """xmlrpc.client's TLS transport, keeping its connection at hand (the test learns which worker accepted it), and
    bounding its waits (a hang is a failure)."""

    connection: Any = None

    def make_connection(self, host: Any) -> Any:
        self.connection = super().make_connection(host)
        self.connection.timeout = WAIT_S
        return self.connection


def client(server: Serve, lab: Lab, transport: ConnectionKeepingTransport | None = None) -> Any:
    """ann's XML-RPC client of ``server``'s aggregate, as sfi.py makes it (xmlrpc.client over TLS)."""
    chosen = transport or ConnectionKeepingTransport(context=client_context(*lab.ann))
    return xmlrpc.client.ServerProxy(server.url, transport=chosen, allow_none=True)


class TablesLocked:
    """``LOCK TABLE lease, sliver`` held on a connection of the test's own from ``take()`` until ``release()``: an
    Allocate waits behind it, in progress, for as long as the test wants."""

    def __init__(self, database_url: str) -> None:
        self.engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
        self.connection: Any = None

    def take(self) -> None:
        self.connection = self.engine.connect()
        self.connection.execute(text("BEGIN"))
        self.connection.execute(text("LOCK TABLE lease, sliver IN ACCESS EXCLUSIVE MODE"))

    def wait_for_a_waiting_call(self) -> None:
        """Return once another session of this database waits for the lock (the call is in progress)."""
        deadline = time.monotonic() + WAIT_S
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        with self.engine.connect() as watcher:
            while watcher.execute(query).scalar_one() == 0:
                assert time.monotonic() < deadline, "no call came to wait behind the lock"
                time.sleep(0.05)

    def release(self) -> None:
        """Let the waiting call go on (again: nothing; a test that failed first releases it too)."""
        if self.connection is not None and not self.connection.closed:
            self.connection.execute(text("COMMIT"))
            self.connection.close()
        self.engine.dispose()


@pytest.fixture
def lock(lab: Lab) -> Iterator[TablesLocked]:
    held = TablesLocked(lab.database_url)
    yield held
    held.release()  # else the next test's schema reset would wait for it for ever


def allocate_in_background(server: Serve, lab: Lab, transport: ConnectionKeepingTransport) -> tuple[Any, list[Any]]:
    """Allocate node n1 for slice s0 in a thread, on a connection made first (GetVersion); the thread and the list
    that gets its answer (or the exception)."""
    aggregate = client(server, lab, transport)
    assert aggregate.GetVersion()["code"]["geni_code"] == 0  # the connection the Allocate then goes on
    urn, credential = lab.slices[0]
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(aggregate.Allocate(urn, [credential], request(window(days_ahead=20, hour=7)), {}))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, outcome


def assert_answered_with_the_booking(thread: threading.Thread, outcome: list[Any]) -> None:
    thread.join(WAIT_S)
    assert not thread.is_alive(), "the Allocate got no answer"
    [answer] = outcome
    assert isinstance(answer, dict), f"the Allocate's client got no answer: {answer!r}"
    assert answer["code"]["geni_code"] == 0, answer
    [sliver] = answer["value"]["geni_slivers"]
    assert sliver["geni_allocation_status"] == "geni_allocated"
    assert NODE in answer["value"]["geni_rspec"]


def refused(port: int) -> bool:
    """A new TCP connection to ``port`` on 127.0.0.1 is refused, or cut at once (one the kernel queued as listening
    stopped); False when it is kept open with nothing said (a TLS server waits for the client's hello) for WAIT_S."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as connection:
            return connection.recv(1) == b""
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except OSError:  # the timeout: accepted, and left waiting
        return False


@pytest.mark.parametrize("in_reactor", [False, True], ids=["call threads", "calls_in_reactor"])
def test_sigterm_answers_the_call_in_progress_and_refuses_new_connections(
    lab: Lab, tmp_path: Path, lock: TablesLocked, in_reactor: bool
) -> None:
    """Also with ``[sfa_omf] calls_in_reactor``, where the Allocate waits in the reactor thread (awaiting the
    database): the reactor still answers other calls meanwhile, and the stop waits for that call as for a thread's."""
    server = Serve(lab, tmp_path, "one", **({"SFA_OMF_CALLS_IN_REACTOR": "yes"} if in_reactor else {}))
    try:
        server.wait_ready()
        if in_reactor:
            server.wait_for_line("Allocate, Delete and Status answered in the reactor thread")
        lock.take()
        thread, outcome = allocate_in_background(
            server, lab, ConnectionKeepingTransport(context=client_context(*lab.ann))
        )
        lock.wait_for_a_waiting_call()
        assert client(server, lab).GetVersion()["code"]["geni_code"] == 0  # (answered while the Allocate waits)
        server.process.send_signal(signal.SIGTERM)
        server.wait_for_line("aggregate stopping: listening no more; answering the 1 call(s) in progress first")
        # Both ports at once, while the call is still in progress: a new client is refused, not left hanging.
        assert refused(server.aggregate_port)
        assert refused(server.registry_port)
        with pytest.raises(ConnectionRefusedError):
            client(server, lab).GetVersion()
        assert server.process.poll() is None  # still answering its call
        lock.release()
        assert_answered_with_the_booking(thread, outcome)
        assert server.process.wait(STOP_TIMEOUT_S) == 0
    finally:
        lock.release()
        server.stop()


def test_sigterm_to_one_worker_answers_its_call_in_progress(lab: Lab, tmp_path: Path, lock: TablesLocked) -> None:
    server = Serve(lab, tmp_path, "workers", "--workers", "2")
    try:
        server.wait_ready()
        line = server.wait_for_line("worker processes (pids ")
        pids = [int(pid) for pid in line.split("(pids ")[1].rstrip(")").split()]
        lock.take()
        transport = ConnectionKeepingTransport(context=client_context(*lab.ann))
        thread, outcome = allocate_in_background(server, lab, transport)
        lock.wait_for_a_waiting_call()
        holder = worker_holding(pids, server.aggregate_port, transport.connection.sock.getsockname()[1])
        os.kill(holder, signal.SIGTERM)
        server.wait_for_line("aggregate stopping: listening no more; answering the 1 call(s) in progress first")
        # New connections go to the other worker meanwhile.
        assert client(server, lab).GetVersion()["code"]["geni_code"] == 0
        lock.release()
        assert_answered_with_the_booking(thread, outcome)
        server.wait_for_line(f"(pid {holder})")  # the master saw it end, and replaced it
        urn, credential = lab.slices[0]
        status = client(server, lab).Status([urn], [credential], {})
        assert [sliver["geni_allocation_status"] for sliver in status["value"]["geni_slivers"]] == ["geni_allocated"]
    finally:
        lock.release()
        assert server.stop() == 0


def worker_holding(pids: list[int], server_port: int, client_port: int) -> int:
    """Which of the workers ``pids`` holds the accepted end of the client's connection from ``client_port``: the
    socket's inode in /proc/net/tcp, found among each worker's open files."""
    sockets = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local_port, remote_port) == (server_port, client_port):
            sockets.add(f"socket:[{fields[9]}]")
    for pid in pids:
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(descriptor) in sockets:
                    return pid
            except OSError:  # closed meanwhile
                continue
    raise AssertionError(f"no worker of {pids} holds the connection from port {client_port}")
