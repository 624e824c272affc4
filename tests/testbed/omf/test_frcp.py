"""The FRCP client against a real RabbitMQ (scripts/rabbitmq.sh; URL in SFA_OMF_TEST_RABBITMQ_URL, which
scripts/test.sh and CI always set) and the user_factory stand-in (a conformance fixture standing in for the Ruby
controller): user_factory's whole account flow, signatures both ways, a tampered or untrusted message refused, error
informs, time-outs, a broker that is down, and replies matched by node_name when a controller sends no cid."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pika
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.testbed.omf.frcp import (
    BadMessage,
    FrcpClient,
    FrcpError,
    FrcpMessage,
    FrcpTimeout,
    FrcpUnavailable,
    SignatureChecker,
    Signer,
    address,
    decode,
    encode,
    new_message,
)
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.pki import load_private_key_file
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key
from tests.testbed.omf.user_factory_standin import UserFactoryStandIn


def aggregate_signer(pki: DemoPki) -> Signer:
    """The aggregate's own key and GID (from the local authority), as the OMF backend signs."""
    chain = load_gid_chain_file(str(pki.directory / "aggregate" / "am.gid"))
    return Signer(load_private_key_file(str(pki.directory / "aggregate" / "am.pkey")), chain, chain[0].urn or "")


@dataclass
class Factory:
    standin: UserFactoryStandIn
    client: FrcpClient
    topic: str
    root: Path
    url: str


@pytest.fixture
def factory(pki: DemoPki, tmp_path: Path, rabbitmq_url: str) -> Iterator[Factory]:
    # A topic of its own per test: several people share this RabbitMQ.
    topic = f"user_factory-{uuid.uuid4().hex[:8]}"
    controller = Signer(pki.authority.key, pki.authority.chain, "user_factory")
    standin = UserFactoryStandIn(rabbitmq_url, topic, tmp_path / "root", controller, SignatureChecker(pki.roots))
    standin.start()
    client = FrcpClient(rabbitmq_url, signer=aggregate_signer(pki), checker=SignatureChecker(pki.roots), timeout_s=30)
    try:
        yield Factory(standin, client, topic, tmp_path / "root", rabbitmq_url)
    finally:
        standin.stop()


def test_user_factory_account_flow(factory: Factory, pki: DemoPki) -> None:
    """create user -> configure cert -> release; then create again -> configure auth_keys -> release; deluser."""
    home = factory.root / "home" / "alice_1a2b3c"
    with factory.client.session() as session:
        created = session.request(factory.topic, "create", {"type": "user", "hrn": "alice", "username": "alice_1a2b3c"})
        assert created.itype == "CREATION.OK" and created.props["username"] == "alice_1a2b3c"
        child = created.props["res_id"]
        assert "pub_key" not in created.props  # the key comes in the child's EXIT, once useradd has run
        session.subscribe_address(child)
        exited = session.wait_for(lambda inform: inform.props.get("event") == "EXIT", None, "useradd's EXIT")
        assert (exited.itype, exited.props["status_type"], exited.props["exit_code"]) == ("STATUS", "APP_EVENT", 0)
        assert (home / ".ssh" / "id_rsa").exists()
        # The key pair useradd made, its public half in PEM (as NITOS' user_factory sends it).
        sent = serialization.load_pem_public_key(exited.props["pub_key"].encode("ascii"))
        made = serialization.load_ssh_public_key((home / ".ssh" / "id_rsa.pub").read_bytes())
        assert isinstance(sent, rsa.RSAPublicKey) and isinstance(made, rsa.RSAPublicKey)
        assert sent.public_numbers() == made.public_numbers()
        status = session.request(child, "configure", {"cert": "-----BEGIN CERTIFICATE-----\nX\n"})
        assert status.itype == "STATUS" and status.props["exit_code"] == 0
        assert (home / ".omf" / "user_cert.pem").read_text() == "-----BEGIN CERTIFICATE-----\nX\n"
        assert session.request(factory.topic, "release", rid=child).itype == "RELEASED"

        # Keys at provision time: the same user created again (its key pair is kept), auth_keys overwrite.
        again = session.request(factory.topic, "create", {"type": "user", "username": "alice_1a2b3c"})
        session.subscribe_address(again.props["res_id"])
        exited_again = session.wait_for(lambda inform: inform.props.get("event") == "EXIT", None, "the second EXIT")
        assert exited_again.props["pub_key"] == exited.props["pub_key"]
        keys = [ssh_key("alice@laptop"), ssh_key("alice@desk")]
        session.request(again.props["res_id"], "configure", {"auth_keys": keys})
        assert (home / ".ssh" / "authorized_keys").read_text() == "".join(f"{key}\n" for key in keys)
        session.request(again.props["res_id"], "configure", {"auth_keys": keys[:1]})
        assert (home / ".ssh" / "authorized_keys").read_text() == f"{keys[0]}\n"
        session.request(factory.topic, "release", rid=again.props["res_id"])

        session.request(factory.topic, "configure", {"deluser": {"username": "alice_1a2b3c"}})
        assert not home.exists() and json.loads((factory.root / "passwd.json").read_text()) == {}
    # Every request reached the controller signed (am.gid names no account), and every inform came back signed.
    assert len(factory.standin.signers) == len(factory.standin.handled) == 8 and set(factory.standin.signers) == {""}
    assert factory.standin.refused == [] and session.refused == []


def publish_raw(url: str, topic: str, body: bytes, content_type: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().basic_publish(
            exchange=topic, routing_key="o.op", body=body, properties=pika.BasicProperties(content_type=content_type)
        )
    finally:
        connection.close()


def tampered(token: str) -> str:
    """The same JWT with its content changed (another username) and the original signature."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    content = json.loads(claims["cnt"])
    content["props"]["username"] = "mallory"
    claims["cnt"] = json.dumps(content)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_a_tampered_unsigned_or_untrusted_message_is_refused(factory: Factory, pki: DemoPki, tmp_path: Path) -> None:
    src = address("127.0.0.1", "tester")
    create = new_message("create", src, {"type": "user", "username": "alice"})
    token = aggregate_signer(pki).sign(create)
    publish_raw(factory.url, factory.topic, tampered(token).encode(), "jwt")
    publish_raw(factory.url, factory.topic, encode(create, None)[0], "text/json")
    other = init_directory(str(tmp_path / "elsewhere"), "elsewhere", ())
    assert other is not None
    stranger_chain = load_gid_chain_file(str(tmp_path / "elsewhere" / "aggregate" / "am.gid"))
    stranger = Signer(load_private_key_file(str(tmp_path / "elsewhere" / "aggregate" / "am.pkey")), stranger_chain, "x")
    publish_raw(factory.url, factory.topic, stranger.sign(create).encode(), "jwt")
    # A good request after them: the stand-in handles messages in order, so once it answers, it has judged them.
    with factory.client.session() as session:
        session.request(factory.topic, "create", {"type": "user", "username": "bob"})
    refused = factory.standin.refused
    assert len(refused) == 3
    assert "does not verify" in refused[0]
    assert "accepts signed messages only" in refused[1]
    assert "not one of our" in refused[2]
    assert [message.props["username"] for message in factory.standin.handled] == ["bob"]
    assert not (factory.root / "home" / "mallory").exists() and not (factory.root / "home" / "alice").exists()


def test_an_error_inform_raises_with_the_controllers_reason(factory: Factory) -> None:
    with factory.client.session() as session, pytest.raises(FrcpError) as error:
        session.request(factory.topic, "create", {"type": "user", "username": "Bad Name"})
    assert error.value.inform.itype == "CREATION.FAILED"
    assert error.value.reason == "useradd: invalid user name 'Bad Name'"
    assert not (factory.root / "home").exists()


def test_no_answer_is_a_timeout(pki: DemoPki, rabbitmq_url: str) -> None:
    client = FrcpClient(rabbitmq_url, signer=aggregate_signer(pki), timeout_s=0.5)
    with client.session() as session, pytest.raises(FrcpTimeout, match=r"no answer to create on nobody-\w+ within"):
        session.request(f"nobody-{uuid.uuid4().hex[:8]}", "create", {"type": "user", "username": "x"})


def test_a_broker_that_is_down_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = FrcpClient(f"amqp://guest:secret@127.0.0.1:{port}/%2F", timeout_s=5)
    with pytest.raises(FrcpUnavailable) as down, client.session():
        pass
    assert f"127.0.0.1:{port}" in str(down.value) and "secret" not in str(down.value)


def test_informs_without_cid_match_on_node_name(rabbitmq_url: str) -> None:
    """cm_factory informs carry no cid: the reply for node1 is the one whose props.node_name is node1."""
    topic = f"cm_factory-{uuid.uuid4().hex[:8]}"
    client = FrcpClient(rabbitmq_url)
    with client.session() as session:
        session.subscribe(topic)
        for node in ("node2", "node1"):
            inform = new_message("inform", address("127.0.0.1", topic), {"node_name": node, "current": "on"})
            connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
            try:
                connection.channel().basic_publish(
                    exchange=topic, routing_key="o.info", body=json.dumps({**inform.to_json(), "itype": "STATUS"})
                )
            finally:
                connection.close()
        answer = session.wait("a-mid-nobody-answers", 30, "node1", what="configure on cm_factory")
    assert answer.props == {"node_name": "node1", "current": "on"} and answer.cid is None


def test_messages_round_trip_and_bad_ones_are_named(pki: DemoPki) -> None:
    message = new_message("configure", "amqp://h/frcp.t", {"auth_keys": ["k"]}, replyto="amqp://h/frcp.t")
    assert FrcpMessage.from_json(message.to_json()) == message
    body, content_type = encode(message, aggregate_signer(pki))
    signed = decode(body, content_type, SignatureChecker(pki.roots))
    assert not isinstance(signed, FrcpMessage) and signed.message == message
    claims = jwt.decode(body.decode(), options={"verify_signature": False})
    assert set(claims) == {"cnt", "iss", "crt", "iat", "exp", "jti"} and json.loads(claims["cnt"])["mid"] == message.mid
    for document, words in [
        ([], "a JSON object"),
        ({"op": "explode", "mid": "m", "src": "s", "ts": 1}, "op 'explode'"),
        ({"op": "inform", "src": "s", "ts": 1}, "no mid"),
        ({"op": "inform", "mid": "m", "src": "s", "ts": "soon"}, "not a number"),
        ({"op": "inform", "mid": "m", "src": "s", "ts": 1, "props": []}, "props is not an object"),
    ]:
        with pytest.raises(BadMessage, match=words):
            FrcpMessage.from_json(document)
    with pytest.raises(BadMessage, match="no trusted roots"):
        decode(body, content_type, None)
