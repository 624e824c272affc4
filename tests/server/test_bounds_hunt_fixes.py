"""The bounds hunt's findings at the TLS listeners, against real listeners from make_site (as serve makes them) on
127.0.0.1, real TLS clients and plain sockets:

- requests pipelined by a client that reads nothing were all run and their answers buffered (gigabytes): the next
  pipelined request now waits while over ``max_unsent_bytes`` are unsent, over ``max_pipelined`` waiting close the
  connection, and a client taking nothing for ``stall_deadline_s`` is cut off;
- connections were not capped: now per peer address and per listener (a peer over its cap is turned away, another
  peer is still served), and a request's line and headers have a short deadline of their own;
- XML-RPC bodies were parsed in the reactor thread, and before a caller without a client certificate was refused.

Counts, not timings: what the server rendered is counted by the test's own route (a real resource of the site).
"""

from __future__ import annotations

import re
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.web import resource as web_resource
from twisted.web import server as web_server

from sfa_omf.server import app
from sfa_omf.server import xmlrpc as xmlrpc_server
from sfa_omf.server.fd_limits import connections_allowed, raise_open_file_limit
from sfa_omf.server.tls import ServerTls
from sfa_omf.server.xmlrpc import CallContext, XmlRpcResource, make_site
from tests.conftest import DemoPki
from tests.server import test_startup
from tests.server.test_connection_deadlines import RawTlsClient, drip_until_closed, listener_lets_go
from tests.server.test_startup import Server
from tests.tls_harness import Listener, client_context, proxy, reactor

WAIT_S = 20.0  # how long a test waits for what must happen (the bounds under test are about a second)
LONG_S = 60.0  # the bounds a test must not be rescued by
BIG_ANSWER_BYTES = 512 * 1024


def echo(context: CallContext, method: str, params: tuple[Any, ...]) -> Any:
    return {"method": method}


class Counting(web_resource.Resource):
    """A route answering GET /count/<n> with ``n``, then ``size`` bytes, from a thread as the web calendar does; it
    counts what it rendered."""

    isLeaf = True

    def __init__(self, pool: Any, size: int) -> None:
        super().__init__()
        self.pool = pool
        self.size = size
        self.rendered: list[bytes] = []
        self.lock = threading.Lock()

    def render_GET(self, request: web_server.Request) -> Any:
        name = request.postpath[0] if request.postpath else b""
        with self.lock:
            self.rendered.append(name)
        answer = deferToThreadPool(reactor, self.pool, lambda: name + b":" + b"x" * self.size + b"\n")

        def done(body: bytes) -> None:
            if not request.finished and request.channel is not None:
                request.setHeader(b"content-type", b"text/plain")
                request.setHeader(b"content-length", b"%d" % len(body))
                request.write(body)
                request.finish()

        answer.addCallback(done)
        return web_server.NOT_DONE_YET

    def count(self) -> int:
        with self.lock:
            return len(self.rendered)


def listen(listener: Listener, pki: DemoPki, route: web_resource.Resource | None = None, **bounds: Any) -> Any:
    """A listener serving echo at / and ``route`` at /count, with these bounds (the others long): its port."""
    endpoint = XmlRpcResource(echo, listener.pool(2), reactor, 100_000)
    settings: dict[str, Any] = {
        "timeout_s": LONG_S,
        "request_deadline_s": LONG_S,
        "close_grace_s": LONG_S,
        "handshake_deadline_s": LONG_S,
        **bounds,
    }
    site = make_site({b"count": route} if route is not None else {}, endpoint, max_body_bytes=100_000, **settings)
    tls = ServerTls(
        str(pki.directory / "aggregate" / "am.pkey"),
        str(pki.directory / "aggregate" / "am.gid"),
        require_client_certificate=False,  # as the aggregate's listener with the web calendar
    )
    listener.listen(site, tls)
    return listener.ports[-1]


def alice(pki: DemoPki) -> tuple[str, str]:
    sfi = pki.users["alice"].sfi_dir
    return str(sfi / "testbed.alice.user.gid"), str(sfi / "testbed.alice.pkey")


def connect(number: int, pki: DemoPki | None = None, source: str = "127.0.0.1", small_window: bool = False) -> Any:
    """A TLS connection from ``source`` (with alice's certificate when ``pki``); ``small_window``: a client that
    takes little at a time, as one reading nothing."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if small_window:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(WAIT_S)
    raw.bind((source, 0))
    raw.connect(("127.0.0.1", number))
    return client_context(*(alice(pki) if pki is not None else (None, None))).wrap_socket(raw)


def pipelined(names: list[str]) -> bytes:
    return b"".join(f"GET /count/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for name in names)


def wait_for(condition: Any, what: str) -> None:
    give_up = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < give_up, f"not within {WAIT_S:g} s: {what}"
        time.sleep(0.05)


def read_answers(connection: ssl.SSLSocket, count: int) -> list[bytes]:
    """The first word of each of ``count`` answers read in order (the /count route's name)."""
    stream = connection.makefile("rb")
    names = []
    for _ in range(count):
        status = stream.readline()
        assert status.startswith(b"HTTP/1.1 200"), status
        length = 0
        while (line := stream.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = stream.read(length)
        names.append(body.split(b":", 1)[0])
    return names


def test_requests_pipelined_by_a_client_reading_nothing_wait_for_it_to_take_the_answers(
    listener: Listener, pki: DemoPki
) -> None:
    """12 requests for 512 KiB each, pipelined, nothing read: all 12 were rendered and 6 MiB buffered. Now those
    started stop once over 1 MiB is unsent; when the client reads, every answer comes, in order."""
    route = Counting(listener.pool(4), BIG_ANSWER_BYTES)
    port = listen(listener, pki, route)
    number = int(port.getHost().port)
    names = [str(index) for index in range(12)]
    with connect(number, small_window=True) as connection:
        connection.sendall(pipelined(names))
        wait_for(lambda: route.count() >= 2, "the first requests rendered")
        time.sleep(3.0)  # what would be rendered next has had ample time
        started = route.count()
        assert started <= 4, f"{started} of 12 rendered for a client that took nothing"
        assert read_answers(connection, len(names)) == [name.encode() for name in names]
    assert route.count() == len(names)


def test_a_stop_closes_a_connection_whose_next_pipelined_request_is_held(listener: Listener, pki: DemoPki) -> None:
    """A held request is not in progress: a stop (stop_serving's close_after_answer) closes its connection at once
    instead of waiting for an answer that is not coming."""
    route = Counting(listener.pool(4), BIG_ANSWER_BYTES)
    port = listen(listener, pki, route)
    with connect(int(port.getHost().port), small_window=True) as connection:
        connection.sendall(pipelined([str(index) for index in range(6)]))
        channels = blockingCallFromThread(reactor, app._channels_of, [port])
        assert len(channels) == 1
        wait_for(lambda: blockingCallFromThread(reactor, lambda: channels[0]._held), "a request held")
        blockingCallFromThread(reactor, channels[0].close_after_answer)
        assert blockingCallFromThread(reactor, lambda: channels[0]._closing)


def test_a_client_pipelining_more_than_the_cap_is_closed_after_its_first_answer(
    listener: Listener, pki: DemoPki
) -> None:
    """500 GETs pipelined in one go (the hunt: 66 KB sent per connection) were all rendered; over 16 waiting, the
    connection is closed after the answer in progress, and few are rendered."""
    route = Counting(listener.pool(4), 100)
    port = listen(listener, pki, route, max_pipelined=16)
    number = int(port.getHost().port)
    with connect(number, small_window=True) as connection:
        connection.sendall(pipelined([str(index) for index in range(500)]))
        received = b""
        while True:
            try:
                piece = connection.recv(65536)
            except TimeoutError:
                pytest.fail(f"the connection was still open after {WAIT_S:g} s ({route.count()} rendered)")
            except (ssl.SSLError, OSError):
                break
            if not piece:
                break
            received += piece
    assert route.count() <= 17, f"{route.count()} rendered"
    assert received.count(b"HTTP/1.1 200") == route.count()
    assert listener_lets_go(port)


def test_a_pipelining_client_within_the_cap_that_reads_gets_every_answer_in_order(
    listener: Listener, pki: DemoPki
) -> None:
    route = Counting(listener.pool(4), 1000)
    port = listen(listener, pki, route)
    names = [str(index) for index in range(16)]
    with connect(int(port.getHost().port)) as connection:
        connection.sendall(pipelined(names))
        assert read_answers(connection, len(names)) == [name.encode() for name in names]
        connection.sendall(pipelined(["again"]))
        assert read_answers(connection, 1) == [b"again"]


def test_a_client_that_takes_none_of_its_pipelined_answers_is_cut_off_at_the_stall_deadline(
    listener: Listener, pki: DemoPki
) -> None:
    """Idle timeout, request deadline and close grace are all long: only the stall deadline ends it."""
    route = Counting(listener.pool(4), BIG_ANSWER_BYTES)
    port = listen(listener, pki, route, stall_deadline_s=1.0)
    with connect(int(port.getHost().port), small_window=True) as connection:
        connection.sendall(pipelined([str(index) for index in range(6)]))
        wait_for(lambda: route.count() >= 1, "the first request rendered")
        assert listener_lets_go(port), f"a client taking nothing was still connected after {WAIT_S:g} s"


def turned_away(number: int, pki: DemoPki | None = None, source: str = "127.0.0.1") -> bool:
    """Is a new connection closed by the server (at its handshake, or before any answer to a request)?"""
    try:
        with connect(number, pki, source) as connection:
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return connection.recv(1024) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_a_peer_over_its_connection_cap_is_turned_away_and_another_peer_is_served(
    listener: Listener, pki: DemoPki
) -> None:
    """8 connections from 127.0.0.1 (its cap): a 9th from it is closed at once; 127.0.0.2 (another peer address) is
    served meanwhile, and 127.0.0.1 again once its connections are closed."""
    port = listen(listener, pki, max_connections_per_peer=8)
    number = int(port.getHost().port)
    held = [connect(number) for _ in range(8)]
    try:
        assert turned_away(number), "a 9th connection from 127.0.0.1 was served"
        other = connect(number, pki, source="127.0.0.2")
        with other:
            body = xmlrpc.client.dumps((), "GetVersion").encode()
            other.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            assert b"GetVersion" in other.recv(65536)
    finally:
        for connection in held:
            connection.close()
    site = port.factory.wrappedFactory
    wait_for(lambda: blockingCallFromThread(reactor, lambda: site.open_connections) == 0, "the 8 counted as closed")
    assert proxy(f"https://127.0.0.1:{number}", *alice(pki)).After()["method"] == "After"


def test_a_listener_over_its_connection_cap_turns_every_new_connection_away(listener: Listener, pki: DemoPki) -> None:
    port = listen(listener, pki, max_connections=4)
    number = int(port.getHost().port)
    held = [connect(number) for _ in range(4)]
    try:
        assert turned_away(number, pki, source="127.0.0.2"), "a 5th connection was served"
    finally:
        for connection in held:
            connection.close()


def test_headers_dripped_a_byte_at_a_time_are_cut_off_at_the_header_deadline(listener: Listener, pki: DemoPki) -> None:
    """The request deadline (long here, 128 s in serve) was the only bound on a request's headers."""
    port = listen(listener, pki, header_deadline_s=1.0, close_grace_s=1.0)
    client = RawTlsClient(int(port.getHost().port), pki)
    client.socket.sendall(client.records(b"POST / HTTP/1.1\r\n"))
    with client.socket:
        closed, wire = drip_until_closed(client.socket, lambda: client.records(b"X"))
    assert closed, f"headers dripped for {WAIT_S:g} s were not cut off"
    assert client.decrypt(wire).startswith(b"HTTP/1.1 408 "), wire[:100]
    assert listener_lets_go(port)


@pytest.fixture
def parse_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[threading.Thread]]:
    """The threads the transport's methodCall parser ran in (the real parser, run as it is)."""
    threads: list[threading.Thread] = []
    real_loads = xmlrpc_server.loads

    def recording_loads(body: bytes) -> Any:
        threads.append(threading.current_thread())
        return real_loads(body)

    monkeypatch.setattr(xmlrpc_server, "loads", recording_loads)
    yield threads


def test_a_call_is_parsed_in_a_call_thread_not_in_the_reactor_thread(
    listener: Listener, pki: DemoPki, parse_threads: list[threading.Thread]
) -> None:
    port = listen(listener, pki)
    assert proxy(f"https://127.0.0.1:{port.getHost().port}", *alice(pki)).Parsed()["method"] == "Parsed"
    reactor_thread = blockingCallFromThread(reactor, threading.current_thread)
    assert parse_threads and reactor_thread not in parse_threads


def test_a_caller_without_a_certificate_is_refused_before_its_body_is_parsed(
    listener: Listener, pki: DemoPki, parse_threads: list[threading.Thread]
) -> None:
    port = listen(listener, pki)
    with pytest.raises(xmlrpc.client.Fault) as refused:
        proxy(f"https://127.0.0.1:{port.getHost().port}", None, None).GetVersion("x" * 50_000)
    assert refused.value.faultCode == 3 and "no client certificate" in refused.value.faultString
    assert parse_threads == []


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    """In a process started with a soft limit of 256, as systemd's 1024 but lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit here is {hard}")
    code = (
        "import resource; from sfa_omf.server.fd_limits import raise_open_file_limit; "
        "print(raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    ).stdout.split()
    assert output[0] == output[1] != "256"
    assert int(output[1]) == hard or hard == resource.RLIM_INFINITY
    assert raise_open_file_limit() >= soft
    assert connections_allowed(1024) == (1024 - 128) // 2


lab = test_startup.lab  # the initialised directory serve runs on (a fixture)


def test_serve_raises_its_open_files_limit_and_says_so(lab: Path, tmp_path: Path) -> None:
    """A real ``serve`` started with a soft limit of 512 (inherited, as from systemd's default of 1024) serves with
    the hard limit, and its start line says so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 512:
        pytest.skip(f"the hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))  # inherited by the server started now
    try:
        server = Server(lab, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert server.wait_ready() == "READY=1"
        line = server.wait_for_line("serving the SFA Registry API")
        assert f"(open files limit {hard}: at most {min(2048, connections_allowed(hard))} connections" in line
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        assert re.search(rf"Max open files\s+{hard}\s+{hard}", limits), limits
    finally:
        assert server.stop() == 0
