"""The agent trusts the aggregate only: a node or a user of our authority holds a certificate chaining to the same
root, and serving HTTPS with it must not make an agent create accounts for it (real TLS on loopback)."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sfa_omf.agents.host import DirectoryHost
from sfa_omf.agents.node import CONFIG, KEY, Agent, Client, ServerNotTrusted, enrol
from tests.agents.conftest import Lab
from tests.sshkeys import ssh_key

AGGREGATE = "urn:publicid:IDN+lab+authority+am"
WORK = {
    "active": [
        {
            "lease_id": "00000000-0000-0000-0000-000000000000",
            "slice": "urn:publicid:IDN+lab+slice+evil",
            "reported": "",
            "accounts": [{"login": "evil", "ssh_keys": [ssh_key("attacker")]}],
            "stage_in": [],
        }
    ],
    "finished": [],
}


@contextmanager
def impostor(cert_path: str, key_path: str) -> Iterator[str]:
    """An HTTPS server answering every request with WORK, presenting this certificate; yields its URL."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        body = json.dumps(WORK).encode()
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    _read_request(tls)
                    tls.sendall(
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body
                    )
            except OSError:
                pass  # the client hung up after the handshake: it refused us

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        done.set()
        thread.join()
        listener.close()


def _read_request(tls: ssl.SSLSocket) -> None:
    """Read a whole request (closing with unread bytes would reset the connection, losing the answer)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            raise ConnectionError("the client hung up")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0
    )
    while len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            raise ConnectionError("the client hung up")
        body += chunk


def _agent_at(state: Path, server: str, tmp_path: Path) -> Agent:
    config = json.loads((state / CONFIG).read_text())
    config["server"] = server
    (state / CONFIG).write_text(json.dumps(config))
    return Agent(str(state), DirectoryHost(str(tmp_path / "root"), str(state)))


def test_enrolment_pins_the_aggregate_and_a_node_cannot_pose_as_it(lab: Lab, tmp_path: Path) -> None:
    victim, other = tmp_path / "pc1", tmp_path / "pc2"
    enrol(lab.url, lab.invite(), lab.root, str(victim), "pc1")
    enrol(lab.url, lab.invite(), lab.root, str(other), "pc2")
    assert json.loads((victim / CONFIG).read_text())["server_urn"] == AGGREGATE
    # The real aggregate passes.
    assert Agent(str(victim), DirectoryHost(str(tmp_path / "root"), str(victim))).run_once()["active"] == []
    with impostor(str(other / "node.gid"), str(other / KEY)) as url:
        agent = _agent_at(victim, url, tmp_path)
        with pytest.raises(ServerNotTrusted, match="urn:publicid:IDN\\+lab\\+node\\+pc2"):
            agent.run_once()
        # A client without a pin (as at enrolment) refuses a node too.
        client = Client(url, str(victim / "node.gid"), str(victim / KEY), lab.root)
        with pytest.raises(ServerNotTrusted):
            client.call("GET", "work")
        # And enrolling with it writes nothing.
        with pytest.raises(ServerNotTrusted):
            enrol(url, "token", lab.root, str(tmp_path / "pc3"), "pc3")
        assert not (tmp_path / "pc3" / CONFIG).exists()
    assert DirectoryHost(str(tmp_path / "root"), str(victim)).logins() == []


def test_a_user_cannot_pose_as_the_aggregate_even_to_an_agent_enrolled_before_the_pin(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "pc1"
    enrol(lab.url, lab.invite(), lab.root, str(state), "pc1")
    # A state directory written before the aggregate's URN was kept: it is derived from the node's URN.
    config = json.loads((state / CONFIG).read_text())
    del config["server_urn"]
    (state / CONFIG).write_text(json.dumps(config))
    agent = Agent(str(state), DirectoryHost(str(tmp_path / "root"), str(state)))
    assert agent.server_urn == AGGREGATE
    assert agent.run_once()["active"] == []
    user = (str(lab.sfi / "lab.ann.user.gid"), str(lab.sfi / "lab.ann.pkey"))
    with impostor(*user) as url, pytest.raises(ServerNotTrusted, match="user"):
        _agent_at(state, url, tmp_path).run_once()
    assert DirectoryHost(str(tmp_path / "root"), str(state)).logins() == []
