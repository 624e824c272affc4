"""The agent API's body limits, over real TLS on 127.0.0.1: its own ([sfa_agents] max_body_bytes for a call's JSON,
max_file_bytes for a staged-out file), not the XML-RPC one ([sfa_omf] max_request_bytes), applied as soon as a
request's length is known, and refused with the API's own 413 JSON, never with an XML-RPC fault."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import socket
import ssl
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from sfa_omf.agents.node import KEY, enrol
from sfa_omf.agents.staging import FileStore
from sfa_omf.calendar.agents import Agents
from sfa_omf.times import utcnow
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import SLICE, book_now
from tests.sshkeys import ssh_key

#: How long the test waits for an answer before it fails (a bound for failing, not a measured threshold): without
#: the limit at the request's length, the server would wait for a body that never comes.
ANSWER_WAIT_S = 30


def _agent_request(
    lab: Lab, state: Path, method: str, path: str, declared_bytes: int, body: bytes = b"", sha256: str = ""
) -> tuple[int, dict[str, object]]:
    """Send the head of a request to /agents/v1/``path`` declaring ``declared_bytes`` of body, then ``body`` (which
    may be shorter: nothing, to see the server answer from the head alone), with the agent's certificate in ``state``;
    (status, JSON answer), read until the server closes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(lab.root)
    context.load_cert_chain(str(state / "node.gid"), str(state / KEY))
    head = (
        f"{method} /agents/v1/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Length: {declared_bytes}\r\n" + (f"X-Content-SHA256: {sha256}\r\n" if sha256 else "") + "\r\n"
    )
    with (
        socket.create_connection(("127.0.0.1", lab.server.port_number), timeout=ANSWER_WAIT_S) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(head.encode("ascii"))
        if body:
            # Refused from the head, the server may close before the whole body is sent.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                tls.sendall(body)
        answer = b""
        while True:
            try:
                piece = tls.recv(65536)
            except (ConnectionResetError, ssl.SSLError):  # the server's close of a body it did not read
                break
            if not piece:
                break
            answer += piece
    response = http.client.HTTPResponse(_Received(answer))  # type: ignore[arg-type]  # it needs only makefile()
    response.begin()
    payload = response.read()
    assert payload.startswith(b"{"), f"not a JSON answer: {answer[:300]!r}"
    return response.status, json.loads(payload)


class _Received:
    """The bytes an answer came in, for http.client to read them as from a socket (chunked or not)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def test_an_oversized_heartbeat_is_413_json_and_writes_nothing(lab: Lab, tmp_path: Path) -> None:
    # An XML-RPC limit small enough for the test to send a body over it: the agent API must not use it.
    lab.settings = replace(lab.settings, max_request_bytes=256 * 1024)
    lab.restart()
    enrolled = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    # A lost agent's heartbeat is written at once (its node back in service): what a heartbeat read would write.
    later = Agents(lab.aggregate.database, clock=lambda: utcnow() + timedelta(seconds=lab.settings.agent_timeout_s + 1))
    assert later.sweep_lost(lab.settings.agent_timeout_s) == [enrolled.node]

    body = b"{" + b" " * (300 * 1024) + b"}"  # over both max_body_bytes (64 KiB) and max_request_bytes
    status, answer = _agent_request(lab, tmp_path / "a1", "POST", "heartbeat", len(body), body)
    assert (status, answer["error"]) == (413, "too_big"), answer
    assert f"at most {lab.settings.agent_max_body_bytes} bytes ([sfa_agents] max_body_bytes)" in str(answer["message"])
    assert [agent.lost for agent in lab.agents.list_agents()] == [True]
    assert lab.aggregate.inventory.get_node(enrolled.node).state == "lost"

    status, answer = _agent_request(lab, tmp_path / "a1", "POST", "heartbeat", 2, b"{}")
    assert status == 200, answer
    assert [agent.lost for agent in lab.agents.list_agents()] == [False]


def test_a_file_within_max_file_bytes_but_over_max_request_bytes_is_kept(lab: Lab, tmp_path: Path) -> None:
    lab.settings = replace(lab.settings, max_request_bytes=256 * 1024, agent_max_file_bytes=512 * 1024)
    lab.restart()
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    book_now(lab, ssh_key("ann@laptop"))
    (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)

    data = b"r" * (400 * 1024)
    sha256 = hashlib.sha256(data).hexdigest()
    path = f"files/{lease.id}/out/results.bin"
    status, answer = _agent_request(lab, tmp_path / "a1", "PUT", path, len(data), data, sha256)
    assert status == 200, answer
    store = FileStore(str(lab.directory / "agent_files"), lab.settings.agent_max_file_bytes)
    assert [(kept.name, kept.size, kept.sha256) for kept in store.list(lease.id, "pc1", "out")] == [
        ("results.bin", len(data), sha256)
    ]


def test_a_file_over_max_file_bytes_is_refused_from_the_head_alone(lab: Lab, tmp_path: Path) -> None:
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    book_now(lab, ssh_key("ann@laptop"))
    (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
    too_big = lab.settings.agent_max_file_bytes + 1  # under max_request_bytes (4 MiB): only the file limit refuses

    # Only the head is sent: the answer comes without the body (else the read waits and the test fails).
    path = f"files/{lease.id}/out/results.bin"
    status, answer = _agent_request(lab, tmp_path / "a1", "PUT", path, too_big, sha256="0" * 64)
    assert (status, answer["error"]) == (413, "too_big"), answer
    message = str(answer["message"])
    assert f"the request declares {too_big} bytes" in message
    assert f"at most {lab.settings.agent_max_file_bytes} bytes ([sfa_agents] max_file_bytes" in message
    store = FileStore(str(lab.directory / "agent_files"), lab.settings.agent_max_file_bytes)
    assert store.list(lease.id, "pc1", "out") == []

    # A call's JSON body over max_body_bytes is refused from its head too (it was read whole before the 413).
    status, answer = _agent_request(lab, tmp_path / "a1", "POST", "heartbeat", lab.settings.agent_max_body_bytes + 1)
    assert (status, answer["error"]) == (413, "too_big"), answer
