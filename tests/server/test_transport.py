"""The XML-RPC/TLS transport over real loopback sockets: any client chain is accepted at the handshake and reaches
the handler intact; limits and hostile bodies are refused; a failing or slow call does not stop the others."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.server import xmlrpc as xmlrpc_module
from sfa_omf.server.tls import ServerTls, peer_chain
from sfa_omf.server.xmlrpc import CallContext, XmlRpcResource, make_site
from tests.conftest import DemoPki
from tests.tls_harness import Listener, client_context, proxy, reactor


def echo(context: CallContext, method: str, params: tuple[Any, ...]) -> Any:
    if method == "Fail":
        raise RuntimeError("a bug in a handler")
    if method == "Sleep":
        time.sleep(float(params[0]))
    return {
        "method": method,
        "params": list(params),
        "path": context.path,
        "chain": [gid.urn for gid in context.caller_chain],
    }


def start(
    listener: Listener, pki: DemoPki, pool_size: int = 4, max_body: int = 1024 * 1024, request_deadline_s: float = 120
) -> str:
    pool = listener.pool(pool_size)
    default = XmlRpcResource(echo, pool, reactor, max_body)
    v2 = XmlRpcResource(echo, pool, reactor, max_body)
    site = make_site(
        {b"am2": v2}, default, max_body_bytes=max_body, timeout_s=30, request_deadline_s=request_deadline_s
    )
    tls = ServerTls(str(pki.directory / "aggregate" / "am.pkey"), str(pki.directory / "aggregate" / "am.gid"))
    return f"https://127.0.0.1:{listener.listen(site, tls)}"


def alice_files(pki: DemoPki) -> tuple[str, str]:
    sfi = pki.users["alice"].sfi_dir
    return str(sfi / "testbed.alice.user.gid"), str(sfi / "testbed.alice.pkey")


def test_the_caller_chain_reaches_the_handler(listener: Listener, pki: DemoPki) -> None:
    url = start(listener, pki)
    answer = proxy(url + "/", *alice_files(pki)).GetVersion({"a": 1}, None)
    assert answer["method"] == "GetVersion" and answer["params"] == [{"a": 1}, None]
    assert answer["chain"] == ["urn:publicid:IDN+testbed+user+alice", "urn:publicid:IDN+testbed+authority+sa"]
    assert answer["path"] == "/"
    assert proxy(url + "/RPC2", *alice_files(pki)).X()["path"] == "/RPC2"
    assert proxy(url + "/am2", *alice_files(pki)).X()["path"] == "/am2"


def test_a_foreign_chain_is_accepted_at_the_handshake(listener: Listener, pki: DemoPki, vectors: Path) -> None:
    """A GID chain from an authority we do not even trust gets through TLS; judging it is the application's job."""
    url = start(listener, pki)
    sfa = vectors / "sfa"
    answer = proxy(url, str(sfa / "gids" / "evil.lab.mallory.gid"), str(sfa / "keys" / "evil.lab.mallory.pkey")).X()
    assert answer["chain"] == [
        "urn:publicid:IDN+evil:lab+user+mallory",
        "urn:publicid:IDN+evil:lab+authority+sa",
        "urn:publicid:IDN+evil+authority+sa",
    ]


def test_each_kept_alive_connection_keeps_its_own_caller(
    listener: Listener, pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's chain is read once per connection (issue 15) and never serves another connection."""
    reads: list[int] = []

    def counted(connection: Any) -> Any:
        reads.append(1)
        return peer_chain(connection)

    monkeypatch.setattr(xmlrpc_module, "peer_chain", counted)
    url = start(listener, pki)
    bob_sfi = pki.users["bob"].sfi_dir
    alice = proxy(url, *alice_files(pki))  # each ServerProxy keeps its HTTP/1.1 connection
    bob = proxy(url, str(bob_sfi / "testbed.bob.user.gid"), str(bob_sfi / "testbed.bob.pkey"))
    for _ in range(3):  # interleaved on two open connections
        assert alice.X()["chain"][0] == "urn:publicid:IDN+testbed+user+alice"
        assert bob.X()["chain"][0] == "urn:publicid:IDN+testbed+user+bob"
    assert len(reads) == 2  # once per connection, not once per call


def test_a_client_without_certificate_is_refused(listener: Listener, pki: DemoPki) -> None:
    url = start(listener, pki)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        proxy(url, None, None).GetVersion()


def raw_post(url: str, pki: DemoPki, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, port = url.removeprefix("https://").split(":")
    connection = http.client.HTTPSConnection(host, int(port), context=client_context(*alice_files(pki)), timeout=30)
    connection.request("POST", "/", body=body, headers={"Content-Type": "text/xml", **(headers or {})})
    response = connection.getresponse()
    return response.status, response.read()


def fault_of(body: bytes) -> xmlrpc.client.Fault:
    with pytest.raises(xmlrpc.client.Fault) as fault:
        xmlrpc.client.loads(body)
    return fault.value


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (
            b"<?xml version='1.0'?><!DOCTYPE m [<!ENTITY a 'aaaa'>]>"
            b"<methodCall><methodName>&a;</methodName></methodCall>",
            1,
            "entity",
        ),
        (b"<?xml version='1.0'?><!DOCTYPE m SYSTEM 'file:///etc/passwd'><methodCall/>", 1, "DOCTYPE"),
        (b"this is not xml", 1, "not an XML-RPC methodCall"),
        (b"<methodCall><params/></methodCall>", 1, "names no method"),
    ],
)
def test_hostile_or_broken_bodies_get_a_fault(
    listener: Listener, pki: DemoPki, body: bytes, code: int, words: str
) -> None:
    url = start(listener, pki)
    status, answer = raw_post(url, pki, body)
    fault = fault_of(answer)
    assert status == 200 and fault.faultCode == code and words in fault.faultString
    assert proxy(url, *alice_files(pki)).Still()["method"] == "Still"


def test_an_oversized_body_is_refused(listener: Listener, pki: DemoPki) -> None:
    url = start(listener, pki, max_body=10_000)
    body = xmlrpc.client.dumps(("x" * 20_000,), "Big").encode()
    status, answer = raw_post(url, pki, body)
    fault = fault_of(answer)
    assert status == 200 and fault.faultCode == 6 and "over the limit of 10000 bytes" in fault.faultString


def test_a_failing_handler_is_a_fault_and_the_server_keeps_serving(listener: Listener, pki: DemoPki) -> None:
    url = start(listener, pki)
    client = proxy(url, *alice_files(pki))
    with pytest.raises(xmlrpc.client.Fault) as fault:
        client.Fail()
    assert fault.value.faultCode == 5 and "operator's log" in fault.value.faultString
    assert client.After()["method"] == "After"


def test_a_stalled_client_does_not_stall_others(listener: Listener, pki: DemoPki) -> None:
    url = start(listener, pki, pool_size=2)
    host, port = url.removeprefix("https://").split(":")
    raw = socket.create_connection((host, int(port)))
    stalled = client_context(*alice_files(pki)).wrap_socket(raw)
    stalled.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n<methodCall>")  # and then nothing
    busy = threading.Thread(target=lambda: proxy(url, *alice_files(pki)).Sleep(1.5))
    busy.start()
    answers = [proxy(url, *alice_files(pki)).Quick()["method"] for _ in range(3)]
    busy.join()
    stalled.close()
    assert answers == ["Quick"] * 3


def test_a_request_dripped_a_byte_at_a_time_is_cut_off_at_its_deadline(listener: Listener, pki: DemoPki) -> None:
    """Each byte comes well within the idle timeout (30 s), so only the request's own deadline (1 s here) ends it:
    the server answers 408 and closes while the client still has bytes to send."""
    url = start(listener, pki, request_deadline_s=1.0)
    host, port = url.removeprefix("https://").split(":")
    dripping = client_context(*alice_files(pki)).wrap_socket(socket.create_connection((host, int(port)), timeout=30))
    dripping.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
    padding = b"X-Padding: " + b"a" * 300  # 60 s of drip at 0.2 s a byte
    dripping.setblocking(False)
    answer = b""
    sent = 0
    with dripping:
        while sent < len(padding) and not answer:
            try:
                dripping.send(padding[sent : sent + 1])
                sent += 1
            except OSError:  # the server closed while we were still sending
                break
            time.sleep(0.2)
            try:
                answer = dripping.recv(4096)
            except (ssl.SSLWantReadError, BlockingIOError):
                pass
            except OSError:
                break
        dripping.setblocking(True)
        dripping.settimeout(30)
        with contextlib.suppress(OSError):
            while chunk := dripping.recv(4096):
                answer += chunk
    assert sent < len(padding), "the server let the request drip to its end"
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert proxy(url, *alice_files(pki)).After()["method"] == "After"


def test_a_kept_alive_connection_idle_past_the_deadline_still_serves(listener: Listener, pki: DemoPki) -> None:
    """The deadline counts from a request's first byte: waiting between calls is the idle timeout's business."""
    url = start(listener, pki, request_deadline_s=1.0)
    host, port = url.removeprefix("https://").split(":")
    connection = http.client.HTTPSConnection(host, int(port), context=client_context(*alice_files(pki)), timeout=30)
    answers = []
    for method in ("First", "Second"):
        connection.request(
            "POST", "/", body=xmlrpc.client.dumps((), method).encode(), headers={"Content-Type": "text/xml"}
        )
        answers.append(xmlrpc.client.loads(connection.getresponse().read())[0][0]["method"])
        time.sleep(2.5)
    connection.close()
    assert answers == ["First", "Second"]


def test_the_deadline_gives_the_largest_body_the_time_it_takes_at_32_kib_per_second(listener: Listener) -> None:
    pool = listener.pool(1)
    default = XmlRpcResource(echo, pool, reactor, 1024)
    for max_body, deadline in ((1024 * 1024, 120.0), (4 * 1024 * 1024, 128.0), (32 * 1024 * 1024, 1024.0)):
        site = make_site({}, default, max_body_bytes=max_body, timeout_s=30)
        assert site.protocol.request_deadline_s == deadline, max_body  # type: ignore[attr-defined]
    assert make_site({}, default, 1024, 30, request_deadline_s=5).protocol.request_deadline_s == 5  # type: ignore[attr-defined]


def test_an_answer_that_cannot_be_marshalled_is_a_fault_not_a_hang(listener: Listener, pki: DemoPki) -> None:
    pool = listener.pool(2)
    site = make_site({}, XmlRpcResource(lambda context, method, params: object(), pool, reactor, 10_000), 10_000, 30)
    tls = ServerTls(str(pki.directory / "aggregate" / "am.pkey"), str(pki.directory / "aggregate" / "am.gid"))
    url = f"https://127.0.0.1:{listener.listen(site, tls)}"
    with pytest.raises(xmlrpc.client.Fault) as fault:
        proxy(url, *alice_files(pki)).Anything()
    assert fault.value.faultCode == 5


def test_a_call_reads_as_the_standard_unmarshaller_reads_it() -> None:
    # Text buffered by expat (an escaped credential arrives in one or two pieces, not one per line and entity): the
    # same values as the stdlib's loads, for text with entities and line ends longer than the buffer too.
    escaped = '<signed-credential xmlns="urn:x">\n  <a b="&amp;">x &lt; y</a>\n</signed-credential>\n' * 2000
    assert len(escaped) > 2 * xmlrpc_module.TEXT_BUFFER_BYTES
    params = (escaped, [{"geni_type": "geni_sfa", "geni_value": escaped}], {"k": ["\u00e9\n", 3, True]})
    body = xmlrpc.client.dumps(params, "Allocate").encode("utf-8")
    assert xmlrpc_module.loads(body) == xmlrpc.client.loads(body)
    assert xmlrpc_module.loads(body) == (params, "Allocate")


@pytest.mark.parametrize("prefix", ["", "x:"])
def test_the_bounds_hold_for_prefixed_tags_too(prefix: str) -> None:
    """The stdlib reads <x:array> as <array>: the depth bound and the <array> without <data> refusal must read it so
    too (prefixed, 100 levels were accepted where plain ones are refused)."""
    array, data, struct = f"{prefix}array", f"{prefix}data", f"{prefix}struct"
    depth = xmlrpc_module.MAX_DEPTH + 1
    deep = f"<value><{array}><{data}>" * depth + "<value><int>1</int></value>" + f"</{data}></{array}></value>" * depth
    deep_struct = (
        f"<value><{struct}><member><name>a</name>" * depth
        + "<value><int>1</int></value>"
        + f"</member></{struct}></value>" * depth
    )
    no_data = f"<value><{array}><value><int>1</int></value></{array}></value>"

    def call(value: str) -> bytes:
        return (
            f"<methodCall><methodName>Status</methodName><params><param>{value}</param></params></methodCall>".encode()
        )

    for value in (deep, deep_struct):
        with pytest.raises(xmlrpc_module.TooDeep):
            xmlrpc_module.loads(call(value))
    with pytest.raises(ValueError, match="without <data>"):
        xmlrpc_module.loads(call(no_data))
