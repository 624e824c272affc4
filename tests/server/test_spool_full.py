"""A request body Twisted keeps in the temporary directory (100 000 bytes or more, or chunked) while that directory is
full, against a real ``sfa-omf serve`` whose $TMPDIR is a small tmpfs written full.

The write failed inside the channel's dataReceived, Twisted's TLS layer fed the bytes again at the close and failed
again, so the connection was never released: 64 such calls from one address locked it out until a restart, and the
stop raised on the leaked channels. Now the call is answered with a GENI server error (nothing done), the operator
is told once which directory is full, and the connection is closed and released.
"""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread
from twisted.web import resource as web_resource
from twisted.web import server as web_server

from sfa_omf.cli import main
from sfa_omf.errors import REASON_CODES, Reason
from sfa_omf.server.tls import ServerTls
from sfa_omf.server.xmlrpc import SPOOLED_BODY_BYTES, LimitedRequest, XmlRpcResource, make_site
from sfa_omf.times import format_time, utcnow
from tests.conftest import DemoPki
from tests.full_disk import fill, small_tmpfs
from tests.server.test_startup import Server
from tests.tls_harness import Listener, client_context, reactor

CALLS_WHILE_FULL = 70  # over the 64 connections an address may hold: leaked ones would lock 127.0.0.1 out
PADDING_BYTES = 150_000  # a body of this makes Twisted keep it in a temporary file
TMPFS_KIB = 2048
CALL_TIMEOUT_S = 60.0  # a call never answered fails the test instead of hanging it
WAIT_S = 60.0  # how long the server may take to close what the clients closed


class TimedTransport(xmlrpc.client.SafeTransport):
    """sfi.py's transport (a client certificate), with a timeout: the unfixed server left calls unanswered."""

    def make_connection(self, host: Any) -> Any:
        connection = super().make_connection(host)
        connection.timeout = CALL_TIMEOUT_S
        return connection


def fresh_proxy(url: str, chain: str, key: str) -> xmlrpc.client.ServerProxy:
    """A client on a connection of its own (each call from 127.0.0.1 counts against its connections)."""
    transport = TimedTransport(context=client_context(chain, key))
    return xmlrpc.client.ServerProxy(url, transport=transport, allow_none=True)


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S:g} s: {what}"
        time.sleep(0.1)


@pytest.fixture
def lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """An initialised directory (authority lab, user ann, the demo slice) with one node, node1."""
    directory = tmp_path / "lab"
    assert main(["init", str(directory), "--authority", "lab", "--user", "ann"]) == 0
    assert main(["node", "add", "node1", "--config", str(directory / "sfa-omf.conf")]) == 0
    capsys.readouterr()
    return directory


def padded_request() -> str:
    """A request RSpec booking node1 in two hours for an hour, with a comment making its call about 150 KB."""
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{format_time(start)}" '
        f'valid_until="{format_time(start + timedelta(hours=1))}"/>'
        '<node client_id="node1" component_id="urn:publicid:IDN+lab+node+node1" exclusive="true">'
        '<ol:lease_ref id_ref="l"/></node>'
        f"<!-- {'x' * PADDING_BYTES} --></rspec>"
    )


def test_a_body_the_full_temporary_directory_cannot_keep_is_refused_and_its_connection_released(
    lab: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sfi = lab / "users" / "ann" / "sfi"
    ann = (str(sfi / "lab.ann.user.gid"), str(sfi / "lab.ann.pkey"))
    slice_cred = (sfi / "lab.ann-lab.demo.slice.cred").read_text()
    slice_urn = "urn:publicid:IDN+lab+slice+demo"
    request = padded_request()
    assert len(request) > SPOOLED_BODY_BYTES
    with small_tmpfs(tmp_path / "spool", TMPFS_KIB) as spool:
        monkeypatch.setenv("TMPDIR", str(spool))  # the server's, inherited from this process's environment
        server = Server(lab, tmp_path)
        try:
            assert server.wait_ready() == "READY=1"
            url = f"https://127.0.0.1:{server.aggregate_port}/"
            # With room, the same large call is served (and Python's tempfile settles on $TMPDIR, which it would
            # pass over for /tmp were it full at its first use).
            big_version = fresh_proxy(url, *ann).GetVersion({"padding": "x" * PADDING_BYTES})
            assert big_version["code"]["geni_code"] == 0
            before = open_descriptors(server.process.pid)

            filler = fill(spool)
            for _ in range(CALLS_WHILE_FULL):
                with pytest.raises(xmlrpc.client.Fault) as refused:
                    fresh_proxy(url, *ann).Allocate(slice_urn, [slice_cred], request, {})
                assert refused.value.faultCode == REASON_CODES[Reason.SERVER_ERROR]
                assert "temporary directory is full" in refused.value.faultString
                assert "nothing was done" in refused.value.faultString
            # Every connection closed and released: the server holds no more descriptors than before.
            wait_for(lambda: open_descriptors(server.process.pid) <= before, "the refused connections' descriptors")

            filler.unlink()
            client = fresh_proxy(url, *ann)
            assert client.GetVersion()["code"]["geni_code"] == 0
            status = client.Status([slice_urn], [slice_cred], {})
            # Nothing was done by the refused calls: the slice holds no sliver.
            assert status["code"]["geni_code"] == 0 and status["value"]["geni_slivers"] == [], status
            booked = fresh_proxy(url, *ann).Allocate(slice_urn, [slice_cred], request, {})
            assert booked["code"]["geni_code"] == 0, booked
            assert server.stop() == 0
        finally:
            if server.process.poll() is None:
                server.stop()
    lines = list(server.lines.queue)
    warnings = [line for line in lines if "cannot keep a request body" in line]
    assert len(warnings) == 1, lines  # one line a minute, not one a call
    assert "WARNING" in warnings[0] and f"temporary directory {spool} " in warnings[0]
    assert "No space left on device" in warnings[0]
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line], lines
    assert not [line for line in lines if "closed at once" in line], lines  # 127.0.0.1 never turned away


class BuggyBodyReading(Exception):
    """Raised by BodyReadingBug: what the channel must survive."""


def test_a_request_whose_reading_raises_is_cut_off_and_its_connection_released(
    listener: Listener, pki: DemoPki
) -> None:
    """Defence in depth: anything raised while a request is read (a stand-in bug: the site's request raising at every
    piece of body sent to /bug) cuts the connection off and releases it. It used to stay counted against its peer for
    ever: Twisted's TLS layer fed the bytes it still held again at the close, which raised again before the channel
    heard of the close."""
    endpoint = XmlRpcResource(lambda context, method, params: {"method": method}, listener.pool(2), reactor, 1 << 20)
    site: Any = make_site({}, endpoint, max_body_bytes=1 << 20, timeout_s=WAIT_S, max_connections_per_peer=2)

    class BodyReadingBug(LimitedRequest):
        def handleContentChunk(self, data: bytes) -> None:
            if self._path() == b"/bug":
                raise BuggyBodyReading("a stand-in for a bug while a body is read")
            super().handleContentChunk(data)

    site.requestFactory = BodyReadingBug
    tls = ServerTls(str(pki.directory / "aggregate" / "am.pkey"), str(pki.directory / "aggregate" / "am.gid"))
    url = f"https://127.0.0.1:{listener.listen(site, tls)}/"
    chain = pki.users["alice"].sfi_dir
    alice = (str(chain / "testbed.alice.user.gid"), str(chain / "testbed.alice.pkey"))
    for _ in range(3):  # over the peer's 2 connections: released ones only leave room
        # A body of several TLS reads: the TLS layer still holds some when the first piece raises.
        with pytest.raises((ConnectionError, OSError, xmlrpc.client.ProtocolError)):
            fresh_proxy(url + "bug", *alice).Echo("x" * PADDING_BYTES)
    wait_for(lambda: blockingCallFromThread(reactor, lambda: site.open_connections) == 0, "the connections released")
    assert fresh_proxy(url, *alice).Echo("fine") == {"method": "Echo"}


class CountingRoute(web_resource.Resource):
    """A route of the test's own, counting what it rendered; ``own_limits``: with body limits of its own, as the node
    agents' API (OwnBodyLimits)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered = 0

    def render_POST(self, request: web_server.Request) -> bytes:
        self.rendered += 1
        return b"rendered"


class OwnLimitsRoute(CountingRoute):
    def body_limit(self, segments: list[bytes]) -> int:
        return 1 << 20

    def largest_body_limit(self) -> int:
        return 1 << 20

    def too_big_answer(self, segments: list[bytes], what: str) -> tuple[bytes, str]:
        return json.dumps({"error": "too_big", "message": what}).encode(), "application/json"


def chunked_post(port: int, pki: DemoPki, path: str) -> tuple[int, str, bytes]:
    """A small chunked POST (Twisted keeps any chunked body in a temporary file): status, content type, body."""
    chain = pki.users["alice"].sfi_dir
    context = client_context(str(chain / "testbed.alice.user.gid"), str(chain / "testbed.alice.pkey"))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=CALL_TIMEOUT_S)
    body = xmlrpc.client.dumps(("x" * 1000,), "Echo").encode()
    connection.request("POST", path, body=iter([body]), headers={"Content-Type": "text/xml"}, encode_chunked=True)
    response = connection.getresponse()
    answer = (response.status, response.getheader("content-type") or "", response.read())
    connection.close()
    return answer


def test_each_route_answers_a_body_it_cannot_keep_in_its_own_form_and_runs_nothing(
    listener: Listener, pki: DemoPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunked body while the temporary directory is full: an XML-RPC fault (GENI server error) at an XML-RPC
    endpoint, the JSON API's JSON, a route with its own limits its agents' JSON 503, the web calendar an HTML 503."""
    calls: list[str] = []
    endpoint = XmlRpcResource(lambda context, method, params: calls.append(method), listener.pool(2), reactor, 1 << 20)
    routes = {b"agents": OwnLimitsRoute(), b"resources": CountingRoute(), b"calendar": CountingRoute()}
    site = make_site(routes, endpoint, max_body_bytes=1 << 20, timeout_s=WAIT_S, json_prefixes=(b"/resources/",))
    tls = ServerTls(str(pki.directory / "aggregate" / "am.pkey"), str(pki.directory / "aggregate" / "am.gid"))
    port = listener.listen(site, tls)
    with small_tmpfs(tmp_path / "spool", 256) as spool:
        monkeypatch.setattr(tempfile, "tempdir", str(spool))  # this process's temporary directory: the listener's
        filler = fill(spool)
        status, kind, body = chunked_post(port, pki, "/")
        assert (status, kind) == (200, "text/xml; charset=utf-8")
        with pytest.raises(xmlrpc.client.Fault) as fault:
            xmlrpc.client.loads(body)
        assert fault.value.faultCode == REASON_CODES[Reason.SERVER_ERROR]
        assert "temporary directory is full" in fault.value.faultString

        status, kind, body = chunked_post(port, pki, "/agents/v1/heartbeat")
        assert (status, kind) == (503, "application/json")
        assert json.loads(body)["error"] == "server_error" and "nothing was done" in json.loads(body)["message"]

        status, kind, body = chunked_post(port, pki, "/resources/nodes")
        assert (status, kind) == (503, "application/json")
        exception = json.loads(body)["exception"]
        assert (exception["code"], exception["geni_code"], exception["geni_reason"]) == (503, 5, "server_error")

        status, kind, body = chunked_post(port, pki, "/calendar/")
        assert (status, kind) == (503, "text/html; charset=utf-8")
        assert b"<h1>503 Service unavailable</h1>" in body and b"temporary directory is full" in body

        filler.unlink()
        status, _kind, body = chunked_post(port, pki, "/resources/nodes")  # room again: served
        assert (status, body) == (200, b"rendered")
    assert calls == [] and [route.rendered for route in routes.values()] == [0, 1, 0]
    wait_for(lambda: blockingCallFromThread(reactor, lambda: site.open_connections) == 0, "the connections released")
