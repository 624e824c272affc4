"""A clean stop (SIGTERM) with a second call pipelined behind the call in progress on one kept-alive TLS connection
(HTTP/1.1 pipelining): the first call is answered, and the second is never run and then lost. The answer to the
first says ``Connection: close`` and the connection closes after it, before the second call is read: its client
knows it never ran and may send it again elsewhere. A real ``sfa-omf serve`` on PostgreSQL, a raw TLS client, the
first call held in progress by a table lock the test takes.

The stop used to read the pipelined call once the first was answered and hand it to the call threads, which no
longer took calls: the connection was cut at the end of the stop with no answer, and no sign whether it ran.
"""

from __future__ import annotations

import http.client
import io
import signal
import socket
import ssl
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.cluster.harness import NODE, STOP_TIMEOUT_S, Lab, Serve, make_lab, request, window
from tests.cluster.test_stop_keeps_answers import WAIT_S, TablesLocked
from tests.postgres import empty_postgres
from tests.tls_harness import client_context


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return make_lab(tmp_path, empty_postgres(), 2)


@pytest.fixture
def lock(lab: Lab) -> Iterator[TablesLocked]:
    held = TablesLocked(lab.database_url)
    yield held
    held.release()  # else the next test's schema reset would wait for it for ever


def allocate_request(port: int, lab: Lab, slice_number: int, hour: int, padding: int = 0) -> bytes:
    """The HTTP/1.1 request of an Allocate of node n1 for slice s<slice_number>, at ``hour`` 20 days from now; its body
    followed by ``padding`` blank lines (XML allows white space after the root element)."""
    urn, credential = lab.slices[slice_number]
    params = (urn, [credential], request(window(days_ahead=20, hour=hour)), {})
    body = xmlrpc.client.dumps(params, "Allocate", allow_none=True).encode("utf-8") + b"\n" * padding
    head = f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode("ascii") + body


def read_until_closed(connection: ssl.SSLSocket) -> bytes:
    """All the server sends until it closes the connection (or cuts it)."""
    received = b""
    while True:
        try:
            piece = connection.recv(65536)
        except (ConnectionResetError, ssl.SSLError):  # cut rather than closed: what came is what there is
            return received
        if not piece:
            return received
        received += piece


class _Stream(io.BytesIO):
    """Bytes already received, read response after response: HTTPResponse closes its stream after each."""

    def close(self) -> None:
        pass


class _Received:
    """What http.client.HTTPResponse reads a response from (its socket): bytes already received."""

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream

    def makefile(self, mode: str) -> _Stream:
        return self.stream


def responses(received: bytes) -> list[tuple[http.client.HTTPResponse, bytes]]:
    """The HTTP responses in ``received``, one after the other, with their bodies."""
    stream = _Stream(received)
    found = []
    while stream.tell() < len(received):
        response = http.client.HTTPResponse(_Received(stream))  # type: ignore[arg-type]  # reads only makefile()
        response.begin()
        found.append((response, response.read()))
    return found


def booked_slices(database_url: str) -> list[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT slice.urn FROM lease JOIN slice ON slice.id = lease.slice_id"))
            return sorted(row[0] for row in rows)
    finally:
        engine.dispose()


def assert_allocated(body: bytes) -> None:
    [answer], _ = xmlrpc.client.loads(body)
    assert answer["code"]["geni_code"] == 0, answer
    assert NODE in answer["value"]["geni_rspec"]


#: Twisted reads up to 16 KiB ahead of the request in progress, then stops reading the connection until it is
#: answered (HTTPChannel._optimisticEagerReadSize): a pipelined call either fits in that or holds the connection paused,
#: unwatched by the reactor while the call in progress runs.
PADDINGS = {"read_ahead": 0, "connection_paused": 32 * 1024}


@pytest.mark.parametrize("padding", PADDINGS.values(), ids=list(PADDINGS))
def test_sigterm_answers_the_call_in_progress_and_never_loses_the_call_pipelined_behind_it(
    lab: Lab, tmp_path: Path, lock: TablesLocked, padding: int
) -> None:
    server = Serve(lab, tmp_path, "one")
    try:
        server.wait_ready()
        lock.take()
        raw = socket.create_connection(("127.0.0.1", server.aggregate_port), timeout=WAIT_S)
        with client_context(*lab.ann).wrap_socket(raw) as connection:
            first = allocate_request(server.aggregate_port, lab, 0, hour=7)
            second = allocate_request(server.aggregate_port, lab, 1, hour=9, padding=padding)
            connection.sendall(first + second)  # pipelined: the second goes before the first is answered
            lock.wait_for_a_waiting_call()
            server.process.send_signal(signal.SIGTERM)
            server.wait_for_line("aggregate stopping: listening no more; answering the 1 call(s) in progress first")
            lock.release()
            received = read_until_closed(connection)
        assert server.process.wait(STOP_TIMEOUT_S) == 0
        answers = responses(received)
        assert answers, "the call in progress got no answer"
        (first_response, first_body), *rest = answers
        assert first_response.status == 200
        assert_allocated(first_body)
        ann_s0, ann_s1 = lab.slices[0][0], lab.slices[1][0]
        if rest:  # the pipelined call was answered: it ran, and its client was told
            [(second_response, second_body)] = rest
            assert second_response.status == 200
            assert_allocated(second_body)
            assert booked_slices(lab.database_url) == sorted([ann_s0, ann_s1])
        else:  # refused by the close after the first answer, which says so: it never ran
            assert first_response.getheader("Connection") == "close"
            assert booked_slices(lab.database_url) == [ann_s0]
    finally:
        lock.release()
        server.stop()
