"""A stop loses no answer with ``serve --workers N`` either: a call in progress may wait on the database for up to
[sfa_omf] database_timeout_s (a lock another session holds) before it answers, and the master waits for its workers
longer than that (workers.stop_timeout_s) before it kills one. It used to kill them after a fixed 20 s, below the
default database_timeout_s (30 s): the client of such a call got no answer.

Real ``sfa-omf serve --workers 2`` on PostgreSQL with database_timeout_s = 25 (from the environment, as the master
and its workers read it), a real TLS client, and ``LOCK TABLE`` held by a connection of the test's own for the whole
stop: the call answers BUSY once its statement reaches the bound, nothing written."""

from __future__ import annotations

import signal
from pathlib import Path

from sqlalchemy import create_engine, text

from sfa_omf.cluster.workers import stop_timeout_s
from sfa_omf.errors import GeniCode
from tests.cluster.harness import Lab, Serve
from tests.cluster.test_stop_keeps_answers import (
    WAIT_S,
    ConnectionKeepingTransport,
    TablesLocked,
    allocate_in_background,
    lab,  # noqa: F401  (the fixtures of that module, used here)
    lock,  # noqa: F401
)
from tests.tls_harness import client_context

DATABASE_TIMEOUT_S = 25  # longer than the master's old fixed stop timeout (20 s)


def test_sigterm_to_the_master_waits_for_a_call_waiting_on_a_lock(lab: Lab, tmp_path: Path, lock: TablesLocked) -> None:  # noqa: F811
    server = Serve(lab, tmp_path, "workers", "--workers", "2", SFA_OMF_DATABASE_TIMEOUT_S=str(DATABASE_TIMEOUT_S))
    try:
        server.wait_ready()
        lock.take()
        thread, outcome = allocate_in_background(
            server, lab, ConnectionKeepingTransport(context=client_context(*lab.ann))
        )
        lock.wait_for_a_waiting_call()
        server.process.send_signal(signal.SIGTERM)
        server.wait_for_line("aggregate stopping: listening no more; answering the 1 call(s) in progress first")
        # The lock stays held: the call's statement ends at database_timeout_s, and the call answers then.
        thread.join(DATABASE_TIMEOUT_S + WAIT_S)
        assert not thread.is_alive(), "the Allocate got no answer"
        [answer] = outcome
        assert isinstance(answer, dict), f"the Allocate's client got no answer: {answer!r}"
        assert answer["code"]["geni_code"] == GeniCode.BUSY, answer
        assert server.process.wait(stop_timeout_s(DATABASE_TIMEOUT_S) + WAIT_S) == 0
        assert not [line for line in server.lines if "did not stop within" in line], server.lines
    finally:
        lock.release()
        server.stop()
    engine = create_engine(lab.database_url)
    try:
        with engine.connect() as connection:  # BUSY wrote nothing
            assert connection.execute(text("SELECT count(*) FROM lease")).scalar_one() == 0
    finally:
        engine.dispose()
