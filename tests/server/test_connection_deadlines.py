"""No client holds a connection of a TLS listener for ever by sending a byte now and then, or nothing at all: real
listeners from make_site on 127.0.0.1 (as serve makes them, also on an inherited socket as a worker of serve
--workers does), real TLS clients, and clients written byte by byte over plain sockets.

Each test configures its bound short (about a second) and the bounds it must not rely on long (60 s); it then waits
at most WAIT_S for the server to close, which the server does either at the configured bound or not at all within the
wait. "Closed" is checked on both sides: the client sees the end of the connection and the listener holds none.
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.server import app
from sfa_omf.server import xmlrpc as xmlrpc_server
from sfa_omf.server.tls import ServerTls
from sfa_omf.server.xmlrpc import (
    DEFAULT_CLOSE_GRACE_S,
    DEFAULT_HANDSHAKE_DEADLINE_S,
    CallContext,
    XmlRpcResource,
    make_site,
)
from tests.conftest import DemoPki
from tests.tls_harness import Listener, client_context, proxy, reactor

WAIT_S = 20.0  # how long a test waits for the server to close (the bound under test is about 1 s)
LONG_S = 60.0  # the bounds a test must not be rescued by
DRIP_PERIOD_S = 0.2  # a byte this often: far within any idle timeout
BIG_ANSWER_CHARACTERS = 4 * 1024 * 1024  # a large advertisement RSpec, say
SLOW_READER_BYTES_PER_S = 1_000_000  # the big answer then takes about 4 s: several close graces of 1 s


def echo(context: CallContext, method: str, params: tuple[Any, ...]) -> Any:
    """The method's name back; ``Big`` is answered with a string of BIG_ANSWER_CHARACTERS."""
    if method == "Big":
        return "x" * BIG_ANSWER_CHARACTERS
    return {"method": method}


def alice_files(pki: DemoPki) -> tuple[str, str]:
    sfi = pki.users["alice"].sfi_dir
    return str(sfi / "testbed.alice.user.gid"), str(sfi / "testbed.alice.pkey")


def site_and_tls(
    listener: Listener,
    pki: DemoPki,
    handshake_deadline_s: float = LONG_S,
    timeout_s: float = LONG_S,
    request_deadline_s: float = LONG_S,
    close_grace_s: float = LONG_S,
) -> tuple[Any, ServerTls]:
    endpoint = XmlRpcResource(echo, listener.pool(2), reactor, 100_000)
    site = make_site(
        {},
        endpoint,
        max_body_bytes=100_000,
        timeout_s=timeout_s,
        request_deadline_s=request_deadline_s,
        handshake_deadline_s=handshake_deadline_s,
        close_grace_s=close_grace_s,
    )
    tls = ServerTls(str(pki.directory / "aggregate" / "am.pkey"), str(pki.directory / "aggregate" / "am.gid"))
    return site, tls


def serve(listener: Listener, pki: DemoPki, **bounds: float) -> tuple[Any, int]:
    """A listener as the tests' harness makes it (reactor.listenSSL, as serve without workers): (port, number)."""
    number = listener.listen(*site_and_tls(listener, pki, **bounds))
    return listener.ports[-1], number


@pytest.fixture
def inherited(listener: Listener, pki: DemoPki) -> Iterator[Callable[..., tuple[Any, int]]]:
    """Serve as a worker of ``serve --workers`` does: app.listen_tls on a listening socket bound elsewhere."""
    ports: list[Any] = []

    def start(**bounds: float) -> tuple[Any, int]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bound:
            bound.bind(("127.0.0.1", 0))
            bound.listen(16)
            site, tls = site_and_tls(listener, pki, **bounds)
            port = blockingCallFromThread(reactor, app.listen_tls, 0, site, tls, "127.0.0.1", bound.fileno())
        ports.append(port)
        return port, int(port.getHost().port)

    yield start
    for port in ports:
        blockingCallFromThread(reactor, port.stopListening)


def server_connections(port: Any) -> int:
    """The connections the listener still holds (its TLS factory registers each until it is lost)."""
    return int(blockingCallFromThread(reactor, lambda: len(port.factory.protocols)))


def listener_lets_go(port: Any) -> bool:
    """True as soon as the listener holds no connection, False if it still holds one after WAIT_S."""
    give_up = time.monotonic() + WAIT_S
    while server_connections(port):
        if time.monotonic() > give_up:
            return False
        time.sleep(0.05)
    return True


def drip_until_closed(connection: socket.socket, drip: Callable[[], bytes]) -> tuple[bool, bytes]:
    """Send what ``drip`` gives every DRIP_PERIOD_S until the server closes the connection or WAIT_S has passed:
    (closed by the server, the bytes the server sent)."""
    connection.settimeout(DRIP_PERIOD_S)
    received = b""
    give_up = time.monotonic() + WAIT_S
    while time.monotonic() < give_up:
        try:
            connection.sendall(drip())
            data = connection.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset by the server
            return True, received
        if not data:
            return True, received
        received += data
    return False, received


def client_hello() -> bytes:
    """The first flight of a real TLS client (Python's ssl), to be sent a byte at a time."""
    context = client_context(None, None)
    engine = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        engine.do_handshake()
    return outgoing.read()


class RawTlsClient:
    """A TLS client over a plain socket and memory BIOs, so that the test decides what goes on the wire and when: it
    never answers the server's close_notify (a real client does; a hostile one need not)."""

    def __init__(self, port_number: int, pki: DemoPki) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port_number), timeout=WAIT_S)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.engine = client_context(*alice_files(pki)).wrap_bio(self.incoming, self.outgoing)
        while True:
            try:
                self.engine.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.socket.sendall(self.outgoing.read())
                self.incoming.write(self.socket.recv(65536))
        self.socket.sendall(self.outgoing.read())  # the client's Finished

    def records(self, data: bytes) -> bytes:
        """``data`` as TLS records, ready for the wire."""
        self.engine.write(data)
        return self.outgoing.read()

    def decrypt(self, wire: bytes) -> bytes:
        """What the server said in ``wire`` (up to its close_notify)."""
        self.incoming.write(wire)
        said = b""
        while True:
            try:
                piece = self.engine.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return said
            if not piece:  # the server's close_notify
                return said
            said += piece


def test_a_handshake_dripped_a_byte_at_a_time_is_cut_off_at_the_handshake_deadline(
    listener: Listener, pki: DemoPki
) -> None:
    """Each byte comes far within the idle timeout, and the handshake would take 100 s at this pace: only the
    handshake deadline (1 s from the accept) ends it."""
    port, number = serve(listener, pki, handshake_deadline_s=1.0)
    hello = iter(client_hello())
    with socket.create_connection(("127.0.0.1", number)) as dripping:
        closed, _ = drip_until_closed(dripping, lambda: bytes([next(hello)]))
    assert closed, f"the server let a handshake drip for {WAIT_S:g} s"
    assert listener_lets_go(port)
    assert proxy(f"https://127.0.0.1:{number}", *alice_files(pki)).After()["method"] == "After"


@pytest.mark.parametrize("how", ["listenSSL", "inherited socket (serve --workers)"])
def test_a_connection_that_never_begins_its_handshake_is_cut_off_at_the_handshake_deadline(
    listener: Listener, pki: DemoPki, inherited: Callable[..., tuple[Any, int]], how: str
) -> None:
    port, number = (
        serve(listener, pki, handshake_deadline_s=1.0) if how == "listenSSL" else inherited(handshake_deadline_s=1.0)
    )
    with socket.create_connection(("127.0.0.1", number)) as silent:
        closed, received = drip_until_closed(silent, lambda: b"")
    assert closed and received == b"", f"a silent connection was still open after {WAIT_S:g} s"
    assert listener_lets_go(port)
    assert proxy(f"https://127.0.0.1:{number}", *alice_files(pki)).After()["method"] == "After"


def test_a_finished_handshake_is_not_cut_off_by_the_handshake_deadline(listener: Listener, pki: DemoPki) -> None:
    """The deadline ends with the handshake: a client that connects and calls only later is served."""
    _, number = serve(listener, pki, handshake_deadline_s=1.0)
    connection = http.client.HTTPSConnection("127.0.0.1", number, context=client_context(*alice_files(pki)))
    connection.connect()
    time.sleep(2.0)  # twice the handshake deadline
    body = xmlrpc.client.dumps((), "Later").encode()
    connection.request("POST", "/", body=body, headers={"Content-Type": "text/xml"})
    assert xmlrpc.client.loads(connection.getresponse().read())[0][0]["method"] == "Later"
    connection.close()


def test_a_connection_silent_after_its_handshake_is_closed_at_the_idle_timeout(
    listener: Listener, pki: DemoPki
) -> None:
    """The idle timer runs from the accept (no handshake byte restarts it); the client then does not answer the
    server's close_notify, and is cut off after the close grace."""
    port, number = serve(listener, pki, timeout_s=1.0, close_grace_s=1.0)
    client = RawTlsClient(number, pki)
    with client.socket:
        closed, _ = drip_until_closed(client.socket, lambda: b"")
    assert closed
    assert listener_lets_go(port)


@pytest.mark.parametrize("line_end", [b"\r", b"\n"])
def test_line_ends_dripped_after_the_handshake_are_cut_off_at_the_request_deadline(
    listener: Listener, pki: DemoPki, line_end: bytes
) -> None:
    """Lone CRs or LFs never make a line (up to 16 KiB) and each restarted the idle timeout, while the request
    deadline waited for a byte that is not a line end: they held a connection for ever."""
    port, number = serve(listener, pki, request_deadline_s=1.0, close_grace_s=1.0)
    client = RawTlsClient(number, pki)
    with client.socket:
        closed, wire = drip_until_closed(client.socket, lambda: client.records(line_end))
    assert closed, f"the server let line ends drip for {WAIT_S:g} s"
    assert client.decrypt(wire).startswith(b"HTTP/1.1 408 "), wire[:100]
    assert listener_lets_go(port)
    assert proxy(f"https://127.0.0.1:{number}", *alice_files(pki)).After()["method"] == "After"


def test_a_client_that_ignores_the_close_after_a_408_and_drips_on_is_cut_off(listener: Listener, pki: DemoPki) -> None:
    """After the 408 the server's TLS close waited for the client's close_notify, and every byte the client went on
    sending restarted the idle timeout: the connection was held for ever. Now it is cut off a close grace later."""
    port, number = serve(listener, pki, request_deadline_s=1.0, close_grace_s=1.0)
    client = RawTlsClient(number, pki)
    client.socket.sendall(client.records(b"POST / HTTP/1.1\r\nHost: x\r\n"))
    with client.socket:
        closed, wire = drip_until_closed(client.socket, lambda: client.records(b"a"))
    assert closed, f"the server held the connection for {WAIT_S:g} s after its 408"
    assert client.decrypt(wire).startswith(b"HTTP/1.1 408 "), wire[:100]
    assert listener_lets_go(port)


def test_the_bounds_serve_uses_by_default(listener: Listener) -> None:
    site = make_site({}, XmlRpcResource(echo, listener.pool(1), reactor, 1024), 1024, 120)
    assert site.protocol.handshake_deadline_s == DEFAULT_HANDSHAKE_DEADLINE_S == 30.0  # type: ignore[attr-defined]
    assert site.protocol.close_grace_s == DEFAULT_CLOSE_GRACE_S == 15.0  # type: ignore[attr-defined]


def ask_for_the_big_answer(port_number: int, pki: DemoPki, request_head: str) -> ssl.SSLSocket:
    """A TLS connection that has sent ``request_head`` and a call of ``Big``, with a small receive buffer (a slow
    link): what the server sends beyond it waits until the client reads."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # before connecting, so that the window is small
    raw.connect(("127.0.0.1", port_number))
    connection = client_context(*alice_files(pki)).wrap_socket(raw)
    body = xmlrpc.client.dumps((), "Big").encode()
    head = f"{request_head}\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n"
    connection.sendall(head.encode() + body)
    return connection


class Received:
    """Bytes received, as http.client.HTTPResponse reads a socket."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def read_slowly_until_closed(connection: ssl.SSLSocket) -> bytes:
    """All the server sends until it closes (or cuts off) the connection, read at SLOW_READER_BYTES_PER_S."""
    connection.settimeout(WAIT_S)
    received = b""
    while True:
        try:
            piece = connection.recv(16 * 1024)
        except OSError:  # cut off (reset)
            return received
        if not piece:
            return received
        received += piece
        time.sleep(len(piece) / SLOW_READER_BYTES_PER_S)


@pytest.mark.parametrize(
    ("request_head", "timeout_s"),
    [
        ("POST / HTTP/1.0", LONG_S),  # Python 2's xmlrpclib (old sfi.py, omni): closed once the answer is buffered
        ("POST / HTTP/1.1\r\nConnection: close", LONG_S),  # the same, asked for
        ("POST / HTTP/1.1", 1.0),  # kept alive: the idle timeout closes it while the answer is still on its way
    ],
    ids=["HTTP/1.0", "Connection: close", "kept alive, idle timeout during the answer"],
)
def test_a_slow_reader_gets_all_of_a_large_answer_the_server_closes_after_it(
    listener: Listener, pki: DemoPki, request_head: str, timeout_s: float
) -> None:
    """Twisted closes such a connection as soon as the whole answer is buffered, which may be long before the
    client has it: the close grace (1 s here, the answer takes about 4 s) counts only while no byte of it leaves.
    It cut the answer off one grace after the close (so after 15 s of a large answer over a slow link)."""
    port, number = serve(listener, pki, timeout_s=timeout_s, close_grace_s=1.0)
    with ask_for_the_big_answer(number, pki, request_head) as connection:
        received = read_slowly_until_closed(connection)
    response = http.client.HTTPResponse(Received(received))  # type: ignore[arg-type]
    response.begin()
    body = response.read()  # up to the close (HTTP/1.0), or its chunks (HTTP/1.1): IncompleteRead if a chunk is cut
    assert response.status == 200, received[:100]
    assert body.endswith(b"</methodResponse>\n"), f"the answer was cut off after {len(body)} bytes"
    assert xmlrpc.client.loads(body)[0][0] == "x" * BIG_ANSWER_CHARACTERS
    assert listener_lets_go(port)


def test_a_client_that_takes_none_of_its_answer_is_cut_off_after_the_close_grace(
    listener: Listener, pki: DemoPki
) -> None:
    """The other side of the grace counting only while bytes leave: a client that reads nothing of its answer (and
    never closes) does not hold the connection; it is cut off once a grace has passed with nothing taken."""
    port, number = serve(listener, pki, close_grace_s=1.0)
    with ask_for_the_big_answer(number, pki, "POST / HTTP/1.0"):
        assert listener_lets_go(port), f"the server still held a client reading nothing after {WAIT_S:g} s"


@pytest.mark.parametrize(
    ("request_head", "timeout_s"),
    [("POST / HTTP/1.0", LONG_S), ("POST / HTTP/1.1", 1.0)],
    ids=["HTTP/1.0", "kept alive, idle timeout during the answer"],
)
def test_a_client_that_takes_its_answer_a_trickle_at_a_time_is_let_go_only_as_long_as_the_answer_takes(
    listener: Listener, pki: DemoPki, monkeypatch: pytest.MonkeyPatch, request_head: str, timeout_s: float
) -> None:
    """Progress restarts the close grace, but not for ever: a closed connection's answer gets as long as it takes at
    the slowest rate honest clients have (SLOWEST_DOWNLOAD_BYTES_PER_S, 1 MB/s here: about 5 s), then the connection
    is cut off. A client taking 16 KiB per grace would otherwise hold it for minutes (hours for a slower trickle).
    A kept-alive connection is no way around it: its idle timeout counts from the last byte the client sent (the
    answer's bytes do not restart it), and the close it makes is bounded the same way."""
    monkeypatch.setattr(xmlrpc_server, "SLOWEST_DOWNLOAD_BYTES_PER_S", 1_000_000)
    port, number = serve(listener, pki, close_grace_s=1.0, timeout_s=timeout_s)
    began = time.monotonic()
    with ask_for_the_big_answer(number, pki, request_head) as connection:
        connection.settimeout(WAIT_S)
        received = 0
        while time.monotonic() - began < 3 * WAIT_S:
            try:
                piece = connection.recv(16 * 1024)
            except OSError:  # cut off
                break
            if not piece:
                break
            received += len(piece)
            time.sleep(0.5)  # 16 KiB per half grace: progress at every check, 4 MiB would take over 2 minutes
    assert time.monotonic() - began < 3 * WAIT_S, "the trickling client still held the connection"
    assert received < BIG_ANSWER_CHARACTERS, "the whole answer was taken: the trickle was not slow enough to test"
    assert listener_lets_go(port)
