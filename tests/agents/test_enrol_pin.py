"""Enrolment sends the join token to the aggregate only. Before it has its pin, an agent must not take whatever
chains to the root for the aggregate: a user's, a node's, or another authority's aggregate certificate signed by the
same root. Each impostor is a real TLS server on loopback that uses a token it receives at the real server (an
attacker enrolling a key of its own as the victim's node); the real server's record shows the token unused."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from sfa_omf.agents.node import CONFIG, ServerNotTrusted, enrol, expected_aggregate
from sfa_omf.calendar.agent_models import AgentToken
from sfa_omf.errors import BadArgs
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.trust.gid import chain_pem
from sfa_omf.trust.pki import create_gid, new_private_key, private_key_pem
from tests.agents.conftest import Lab

AGGREGATE = "urn:publicid:IDN+lab+authority+am"


@contextmanager
def thief(lab: Lab, cert_path: str, key_path: str, loot: Path) -> Iterator[tuple[str, list[dict[str, object]]]]:
    """An HTTPS server presenting this certificate; a register request it receives is used at the real server to
    enrol the thief's own key under the requested host name. Yields its URL and the request bodies it received."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()
    received: list[dict[str, object]] = []

    def serve() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    body = json.loads(_read_body(tls))
                    received.append(body)
                    stolen = enrol(lab.url, str(body["token"]), lab.root, str(loot), str(body["hostname"]))
                    answer = json.dumps({"node": stolen.node}).encode()
                    tls.sendall(
                        b"HTTP/1.1 503 Busy\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(answer) + answer
                    )
            except (OSError, ValueError):
                pass  # the agent hung up after the handshake: it refused us

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/", received
    finally:
        done.set()
        thread.join()
        listener.close()


def _read_body(tls: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            raise ConnectionError("the agent hung up")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0
    )
    while len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            raise ConnectionError("the agent hung up")
        body += chunk
    return body


def _token_used(lab: Lab, token: str) -> bool:
    """What the real server recorded of the token: used (by whom, when) or not."""
    with lab.aggregate.database.read() as session:
        used_s = session.scalar(select(AgentToken.used_s).where(AgentToken.id == token.split(".")[0]))
    return used_s is not None


def _certificate_under_the_root(lab: Lab, tmp_path: Path, kind: str) -> tuple[str, str, str]:
    """(certificate chain path, key path, its URN) of a certificate our root signed that is not the aggregate's."""
    if kind == "user":  # ann's, from the sfi directory the lab made: users hold such keys
        return str(lab.sfi / "lab.ann.user.gid"), str(lab.sfi / "lab.ann.pkey"), "urn:publicid:IDN+lab+user+ann"
    authority = LocalAuthority.load(str(lab.directory), "lab")
    if kind == "sub-authority aggregate":  # an aggregate of a sub-authority: an authority+am, not ours
        chain, key = authority.issue_gid("lab.site2", "authority+am")
        assert key is not None
        urn = "urn:publicid:IDN+lab:site2+authority+am"
    else:  # an aggregate of an authority of another name, signed by our root
        key = new_private_key()
        urn = "urn:publicid:IDN+elsewhere+authority+am"
        chain = (create_gid(urn, key.public_key(), authority.key, issuer=authority.chain[0]), *authority.chain)
    assert chain[0].urn == urn
    (tmp_path / "impostor.gid").write_text(chain_pem(chain))
    (tmp_path / "impostor.pkey").write_bytes(private_key_pem(key))
    return str(tmp_path / "impostor.gid"), str(tmp_path / "impostor.pkey"), urn


@pytest.mark.parametrize("kind", ["user", "sub-authority aggregate", "other authority's aggregate"])
def test_the_token_goes_to_the_aggregate_only(lab: Lab, tmp_path: Path, kind: str) -> None:
    cert_path, key_path, urn = _certificate_under_the_root(lab, tmp_path, kind)
    token = lab.invite()
    refused = pytest.raises(ServerNotTrusted, match=urn.replace("+", "\\+"))
    with thief(lab, cert_path, key_path, tmp_path / "thief") as (url, received), refused:
        enrol(url, token, lab.root, str(tmp_path / "pc1"), "pc1")
    assert received == []  # refused after the handshake, before the request
    assert not (tmp_path / "pc1" / CONFIG).exists()
    assert not _token_used(lab, token)
    assert lab.agents.list_agents() == []
    # The token is still good for the real aggregate.
    assert enrol(lab.url, token, lab.root, str(tmp_path / "pc1"), "pc1").node == "urn:publicid:IDN+lab+node+pc1"
    assert json.loads((tmp_path / "pc1" / CONFIG).read_text())["server_urn"] == AGGREGATE


def test_the_invitation_s_aggregate_is_pinned_from_the_first_call(lab: Lab, tmp_path: Path) -> None:
    token = lab.invite()
    # Another aggregate named in the invitation: the real one is refused before the token is sent.
    with pytest.raises(ServerNotTrusted, match="not the aggregate 'urn:publicid:IDN\\+lab:site2\\+authority\\+am'"):
        enrol(
            lab.url,
            token,
            lab.root,
            str(tmp_path / "pc1"),
            "pc1",
            aggregate_urn="urn:publicid:IDN+lab:site2+authority+am",
        )
    assert not _token_used(lab, token)
    # Not an aggregate's URN at all: said before anything is made or sent.
    with pytest.raises(BadArgs, match="not an aggregate's URN"):
        enrol(lab.url, token, lab.root, str(tmp_path / "pc2"), "pc2", aggregate_urn="urn:publicid:IDN+lab+user+ann")
    assert not (tmp_path / "pc2").exists() and not _token_used(lab, token)
    enrolled = enrol(lab.url, token, lab.root, str(tmp_path / "pc1"), "pc1", aggregate_urn=AGGREGATE)
    assert enrolled.node == "urn:publicid:IDN+lab+node+pc1" and _token_used(lab, token)


def test_without_the_invitation_s_urn_the_root_names_the_aggregate(lab: Lab, tmp_path: Path) -> None:
    assert expected_aggregate(lab.root) == AGGREGATE
    assert expected_aggregate(lab.root, "urn:publicid:IDN+lab+authority+am") == AGGREGATE
    # A root file that is a user's certificate names no authority: the agent says what to give instead.
    with pytest.raises(BadArgs, match="not an authority"):
        expected_aggregate(str(lab.sfi / "lab.ann.user.gid"))
    (tmp_path / "garbage.gid").write_text("not a certificate")
    with pytest.raises(BadArgs, match="give --aggregate URN"):
        expected_aggregate(str(tmp_path / "garbage.gid"))
