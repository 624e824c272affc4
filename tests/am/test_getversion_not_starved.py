"""GetVersion is not starved by calls waiting for the database: with every call thread of a served aggregate blocked
on a lock held on the lease table, GetVersion (AM API v3 and v2) still answers, while those calls are still waiting
(it reads no database, and is answered in the reactor thread). And ``sfa-omf probe`` tells a server that answers
nothing within --timeout from one that refuses the connection."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import RunningServer, build_aggregate, start_aggregate
from sfa_omf.server.call_threads import CallThreads
from tests.postgres import empty_postgres
from tests.tls_harness import client_context

SLICE = "urn:publicid:IDN+lab+slice+demo"
THREADS = 2
STUCK_S = 300  # how long a step may take at most on a loaded machine: never reached unless broken


@dataclass
class BusyAm:
    port: int
    server: RunningServer
    database_url: str
    sfi: Path

    def in_progress(self) -> int:
        """The calls the aggregate's call threads hold (running or waiting for a thread)."""
        pool = self.server.pool
        assert isinstance(pool, CallThreads)
        return pool.in_progress()

    def proxy(self, path: str = "/") -> xmlrpc.client.ServerProxy:
        context = client_context(str(self.sfi / "lab.ann.user.gid"), str(self.sfi / "lab.ann.pkey"))
        return xmlrpc.client.ServerProxy(f"https://127.0.0.1:{self.port}{path}", context=context, allow_none=True)


@pytest.fixture
def busy_am(running_reactor: Any, tmp_path: Path) -> Iterator[BusyAm]:
    report = init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    settings = dataclasses.replace(
        read_config(str(tmp_path / "lab" / "sfa-omf.conf")),
        database_url=empty_postgres(),
        threads=THREADS,  # few call threads, all to be held busy
        database_timeout_s=120,  # the blocked calls wait for the release (without the fix GetVersion waits this long)
    )
    aggregate = build_aggregate(settings)
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)
    try:
        yield BusyAm(server.port_number, server, settings.database_url, Path(report.sfi_dirs["ann"]))
    finally:
        blockingCallFromThread(running_reactor, server.stop)
        aggregate.database.dispose()


def _lock_waiters(connection: Any) -> int:
    """Sessions of this database waiting for a lock (the Status calls blocked on the lease table)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
        "AND pid <> pg_backend_pid()"
    )
    return int(connection.execute(query).scalar_one())


def test_getversion_answers_while_every_call_thread_waits_for_a_locked_table(busy_am: BusyAm) -> None:
    slice_cred = (busy_am.sfi / "lab.ann-lab.demo.slice.cred").read_text()
    credentials = [{"geni_type": "geni_sfa", "geni_version": "3", "geni_value": slice_cred}]
    engine = create_engine(busy_am.database_url)
    answered: list[Any] = []
    blocked: list[threading.Thread] = []
    # Autocommit: in a transaction pg_stat_activity is read once and then repeated (a snapshot), so a watcher that
    # first looked before the calls waited never saw them wait (the loop below ran for ever in a CI run).
    watcher = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as locker:
            locker.begin()
            locker.execute(text("LOCK TABLE lease IN ACCESS EXCLUSIVE MODE"))
            for _ in range(THREADS):
                call = threading.Thread(
                    target=lambda: answered.append(busy_am.proxy().Status([SLICE], credentials, {})), daemon=True
                )
                call.start()
                blocked.append(call)
            # Wait until every call thread holds a Status blocked on the lock (a bound for failing only: a hang must
            # fail the test, not the whole run).
            deadline = time.monotonic() + STUCK_S
            while not (busy_am.in_progress() >= THREADS and _lock_waiters(watcher) >= THREADS):
                assert time.monotonic() < deadline, "the Status calls never waited for the locked table"
                threading.Event().wait(0.05)
            v3 = busy_am.proxy().GetVersion()
            v2 = busy_am.proxy("/am2").GetVersion()
            # Answered while the lock is still held and the Status calls still wait for it in every call thread.
            assert answered == [], "a Status call answered before GetVersion: GetVersion waited for a call thread"
            assert busy_am.in_progress() >= THREADS
            assert _lock_waiters(watcher) >= THREADS
            assert (v3["code"]["geni_code"], v3["geni_api"], v3["value"]["geni_api"]) == (0, 3, 3)
            assert (v2["code"]["geni_code"], v2["geni_api"], v2["value"]["geni_api"]) == (0, 2, 2)
            assert v3["value"]["urn"] == v2["value"]["urn"] == "urn:publicid:IDN+lab+authority+am"
            locker.rollback()  # release: the blocked calls go on
        for call in blocked:
            call.join()
        assert len(answered) == THREADS  # once the lock is released, the blocked calls answer
    finally:
        watcher.close()
        engine.dispose()


def test_probe_of_a_server_answering_nothing_says_so_not_that_it_is_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A listener that accepts connections and answers nothing (a busy server): the probe says it answered nothing
    within --timeout, not "is sfa-omf serve running?" (the message for a refused connection)."""
    with socket.socket() as silent, socket.socket() as closed:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the connections; nothing ever reads or answers them
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        ports = [str(silent.getsockname()[1]), str(closed.getsockname()[1])]
        init = ["init", str(tmp_path / "d"), "--registry-port", ports[0], "--aggregate-port", ports[1]]
        assert main(init) == 0
        capsys.readouterr()
        code = main(["probe", "--config", str(tmp_path / "d" / "sfa-omf.conf"), "--timeout", "1"])
        out = capsys.readouterr().out
    assert code == 1
    assert out.splitlines() == [
        f"registry https://127.0.0.1:{ports[0]}/: answered nothing within --timeout (1 s): it may be busy (or stuck, "
        "or a firewall drops the connection); try again with a longer --timeout, and see its log "
        "(journalctl -u sfa-omf)",
        f"aggregate https://127.0.0.1:{ports[1]}/: no answer ([Errno 111] Connection refused); is sfa-omf serve "
        "running? (systemctl status sfa-omf)",
    ]


def test_only_a_small_getversion_is_read_in_the_reactor_thread() -> None:
    """What the reactor parses holds every connection: a GetVersion body over INLINE_MAX_BODY_BYTES (64 KiB of dateTime
    values took 30 ms to parse) goes to the call threads as any other call; a small one, and only GetVersion, is
    read inline."""
    from sfa_omf.am.api_v3 import ApiV3
    from sfa_omf.server.xmlrpc import INLINE_MAX_BODY_BYTES, XmlRpcResource

    resource = XmlRpcResource(ApiV3.__new__(ApiV3), None, None, 1024 * 1024)  # (the handler is not called here)
    assert resource.inline_methods == {"GetVersion"}
    small = xmlrpc.client.dumps(({"geni_rspec_version": {"type": "GENI", "version": "3"}},), "GetVersion").encode()
    assert len(small) < INLINE_MAX_BODY_BYTES and resource._read_here(small)
    dates = [xmlrpc.client.DateTime("20261204T10:00:00")] * 300
    hostile = xmlrpc.client.dumps(({"x": dates},), "GetVersion").encode()
    assert len(hostile) > INLINE_MAX_BODY_BYTES and not resource._read_here(hostile)
    assert not resource._read_here(xmlrpc.client.dumps(([],), "Status").encode())
