"""Whose FRCP informs the aggregate believes: only the testbed's controllers', and only informs not older than the
request they answer. Unit checks of the SignatureChecker with real certificates (the local authority's, an account
certificate as accounts.py mints it, a federation root's user and authority), a replayed inform over the real
RabbitMQ, and an experimenter forging cm_factory's STATUS with her testbed account's certificate through the AM API
(the stand-ins for the Ruby controllers are conformance fixtures)."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.testbed.omf.accounts import AccountCertificates
from sfa_omf.testbed.omf.frcp import (
    INFORM_CLOCK_SKEW_S,
    BadMessage,
    ControllerSigners,
    FrcpClient,
    FrcpMessage,
    FrcpTimeout,
    SignatureChecker,
    Signer,
    address,
    encode,
    new_message,
)
from sfa_omf.testbed.omf.slot_records import END_FAILED
from sfa_omf.trust.gid import gid_from_certificate, load_gid_chain
from sfa_omf.trust.pki import create_gid, new_private_key
from sfa_omf.trust.roots import TrustedRoots
from sfa_omf.xrn import hrn_to_urn
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key
from tests.testbed.omf.omf_lab import ANN, SLICE, Lab, Running, publish_signed, serve, slot_start
from tests.testbed.omf.test_slots import pass_at, provisioned


def _status(src_topic: str = "cm_factory", **extra: Any) -> FrcpMessage:
    return new_message(
        "inform", address("127.0.0.1", src_topic), {"node_name": "node1", "desired": "stopped"}, itype="STATUS", **extra
    )


def _token(signer: Signer, message: FrcpMessage) -> str:
    body, _ = encode(message, signer)
    return body.decode("ascii")


def _account_signer(pki: DemoPki) -> Signer:
    """What a slice's user can sign with: the testbed account's key (in its ~/.ssh) and the certificate the aggregate
    minted for it (AccountCertificates), chained to the local authority."""
    certificates = AccountCertificates(pki.authority.key, pki.authority.chain, "testbed", "testbed.example.org")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = certificates.certificate("alice_demo", key.public_key(), hrn_to_urn("testbed.alice_demo", "user"))
    return Signer(key, (gid_from_certificate(certificate), *pki.authority.chain), "alice_demo")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> LocalAuthority:
    """Another authority, ``fed``, whose root the aggregate trusts (a federation partner)."""
    return LocalAuthority.create(str(tmp_path_factory.mktemp("fed") / "fed"), "fed")


def _checker(pki: DemoPki, federation: LocalAuthority, urns: frozenset[str] = frozenset()) -> SignatureChecker:
    roots = TrustedRoots((*pki.roots.anchors, federation.chain[0]))
    return SignatureChecker(roots, controllers=ControllerSigners("testbed", urns))


def test_the_controllers_signer_is_believed(pki: DemoPki, federation: LocalAuthority) -> None:
    """The stand-ins sign with the local authority's own certificate (the default's controllers); the aggregate's
    am certificate names the authority too."""
    checker = _checker(pki, federation)
    inform = _status()
    assert checker.verify(_token(Signer(pki.authority.key, pki.authority.chain, "cm"), inform)).message == inform


def test_an_account_certificate_does_not_answer_for_a_controller(pki: DemoPki, federation: LocalAuthority) -> None:
    checker = _checker(pki, federation)
    signer = _account_signer(pki)
    with pytest.raises(BadMessage, match=r"not by a controller of the testbed"):
        checker.verify(_token(signer, _status()))
    # Its requests still pass the check (the controllers decide whose lease they fall under): only informs answer.
    request = new_message("configure", "amqp://h/frcp.t", {"state": {"node": "node1", "status": "on"}})
    assert checker.verify(_token(signer, request)).message == request


def test_a_federation_signer_does_not_answer_for_a_controller(pki: DemoPki, federation: LocalAuthority) -> None:
    checker = _checker(pki, federation)
    user_key = new_private_key()
    user = create_gid(hrn_to_urn("fed.mallory", "user"), user_key.public_key(), federation.key, federation.chain[0])
    for signer in (
        Signer(user_key, (user, *federation.chain), "mallory"),
        Signer(federation.key, federation.chain, ""),
    ):
        with pytest.raises(BadMessage, match=r"not by a controller of the testbed"):
            checker.verify(_token(signer, _status()))


def test_listed_controllers_answer_besides_the_authoritys_own(pki: DemoPki, federation: LocalAuthority) -> None:
    """[sfa_frcp] controllers adds certificates (here a federation partner's, as a testbed's old CA would certify its
    controllers); an account's still does not answer."""
    cm_key = new_private_key()
    cm_urn = hrn_to_urn("fed.cm_factory", "node")
    cm = create_gid(cm_urn, cm_key.public_key(), federation.key, federation.chain[0])
    cm_signer = Signer(cm_key, (cm, *federation.chain), "cm")
    inform = _status()
    with pytest.raises(BadMessage, match=r"not by a controller of the testbed"):
        _checker(pki, federation).verify(_token(cm_signer, inform))
    checker = _checker(pki, federation, frozenset({cm_urn}))
    assert checker.verify(_token(cm_signer, inform)).message == inform
    assert checker.verify(_token(Signer(pki.authority.key, pki.authority.chain, "cm"), inform)).message == inform
    with pytest.raises(
        BadMessage, match=r"nor in \[sfa_frcp\] controllers \(urn:publicid:IDN\+fed\+node\+cm_factory\)"
    ):
        checker.verify(_token(_account_signer(pki), inform))


def test_an_inform_older_than_the_request_is_ignored(
    pki: DemoPki, federation: LocalAuthority, rabbitmq_url: str
) -> None:
    """A genuine controller's inform replayed (stamped long before the request) answers neither a request by cid
    nor cm_factory's node_name matching; the same inform stamped now does."""
    topic = f"cm_factory-{uuid.uuid4().hex[:8]}"
    controller = Signer(pki.authority.key, pki.authority.chain, "cm")
    client = FrcpClient(rabbitmq_url, checker=_checker(pki, federation), timeout_s=1)
    old = int(time.time()) - 3600
    with client.session() as session:
        session.subscribe(topic)
        request = session.message("configure", {"state": {"node": "node1", "status": "off"}})
        replayed = FrcpMessage(**{**_status(topic, cid=request.mid).__dict__, "ts": old})
        publish_signed(rabbitmq_url, topic, controller, replayed)
        with pytest.raises(FrcpTimeout):
            session.wait(request.mid, 1, None, what="configure on cm_factory", sent_ts=request.ts)
        assert any("before the request it could answer" in reason for reason in session.refused)
        fresh = _status(topic, cid=request.mid)
        publish_signed(rabbitmq_url, topic, controller, fresh)
        assert session.wait(request.mid, 10, None, what="configure on cm_factory", sent_ts=request.ts) == fresh

        no_cid = FrcpMessage(**{**_status(topic).__dict__, "ts": request.ts - INFORM_CLOCK_SKEW_S - 1})
        publish_signed(rabbitmq_url, topic, controller, no_cid)
        answers = session.about_nodes(["node1"], lambda _: True, 1, "switch off", sent_ts=request.ts)
        assert answers["node1"].inform is None and "no answer about node1" in answers["node1"].reason


def test_a_blocked_broker_is_given_up_after_the_timeout() -> None:
    """A configuration check only: a real RabbitMQ resource alarm is not caused here (the broker is shared)."""
    assert FrcpClient("amqp://u:p@127.0.0.1:5672/v", timeout_s=7).parameters.blocked_connection_timeout == 7


def _publish_in_lab(running: Running, signer: Signer, message: FrcpMessage) -> None:
    publish_signed(running.settings.frcp_amqp_url, running.settings.frcp_cm_factory, signer, message)


def test_an_experimenter_cannot_sign_cm_factorys_status_with_her_account(
    running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ann logs into her testbed account and signs, with its key and the certificate the aggregate minted for it,
    cm_factory's "node1 is stopped" while cm_factory says nothing: the aggregate ignores it and the end times out."""
    for running in serve(running_reactor, lab, tmp_path, rabbitmq_url, frcp_boot_timeout_s=2):
        lease = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
        start = slot_start()
        pass_at(running, start)
        home = running.root / "home" / running.aggregate.accounts.login_for(ANN, SLICE)
        key = serialization.load_ssh_private_key((home / ".ssh" / "id_rsa").read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        authority = LocalAuthority.load(str(lab.directory), "lab")
        chain = (*load_gid_chain((home / ".omf" / "user_cert.pem").read_text()), *authority.chain)
        forged = new_message(
            "inform",
            address("127.0.0.1", running.settings.frcp_cm_factory),
            {"node_name": "node1", "current": "running", "desired": "stopped"},
            itype="STATUS",
        )
        running.nodes.silent.add("node1")
        running.nodes.later(0.5, functools.partial(_publish_in_lab, running, Signer(key, chain, "ann"), forged))
        with caplog.at_level(logging.WARNING, logger="sfa_omf.omf.frcp"):
            report = pass_at(running, start + timedelta(hours=1, seconds=1))
        assert report.end_failed == [lease] and report.ended == []
        assert running.backend.slots is not None
        record = running.backend.slots.records.get(lease)
        assert record is not None and record.phase == END_FAILED
        assert "no answer about node1 to switch off" in record.failures["off:node1"]
        assert any("not by a controller of the testbed" in entry.getMessage() for entry in caplog.records)
