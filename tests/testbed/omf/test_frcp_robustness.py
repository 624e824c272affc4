"""FRCP under messages the aggregate did not ask for, over the real RabbitMQ with the stand-ins for cm_factory and
frisbee_factory (conformance fixtures for the Ruby controllers): an unreadable signed message (ts "inf", a content
nested too deep) does not stop a slot pass; a frisbee client's EXIT that comes while the aggregate waits for another
client's CREATION.OK, or before its own, is not lost; cm_factory's refusal is reported in its words; a signed
request carries exp and jti, and a copy replayed after exp is refused."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pika
import pytest

from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.testbed.omf.controllers import Controllers
from sfa_omf.testbed.omf.frcp import (
    INFORM_CLOCK_SKEW_S,
    TOKEN_LIFETIME_MAX_S,
    TOKEN_LIFETIME_MIN_S,
    BadMessage,
    ControllerSigners,
    FrcpClient,
    FrcpMessage,
    SignatureChecker,
    Signer,
    address,
    decode,
    encode,
    new_message,
)
from sfa_omf.testbed.omf.slot_records import READY
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import chain_pem, load_gid_chain_file
from sfa_omf.trust.pki import load_private_key_file
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key
from tests.testbed.omf.node_controllers_standin import NodeControllersStandIn
from tests.testbed.omf.omf_lab import IMAGE, Lab, Running, slot_start
from tests.testbed.omf.test_slots import pass_at, provisioned

STEP_WAIT_S = 60  # how long a helper thread waits for the stand-in to reach a step (a bound, not a measure)


def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition()`` holds (the stand-in works in its own thread)."""
    deadline = time.monotonic() + STEP_WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"the stand-in never {what}")
        time.sleep(0.05)


def _crafted(signer_key: Any, chain_pem_text: str, content: str) -> bytes:
    """A JWT signed by a trusted certificate (an experimenter's: any has one) whose cnt is ``content``."""
    return jwt.encode({"cnt": content, "iss": "ann", "crt": chain_pem_text}, signer_key, algorithm="RS256").encode()


def _publish(url: str, topic: str, bodies: list[tuple[bytes, str]]) -> None:
    """Publish ``bodies`` (body, content type) in this order on ``topic`` (one connection: RabbitMQ keeps it)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for body, content_type in bodies:
            channel.basic_publish(
                exchange=topic,
                routing_key="o.info",
                body=body,
                properties=pika.BasicProperties(content_type=content_type),
            )
    finally:
        connection.close()


# -- 1. one unreadable message -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "document",
    [
        {"op": "inform", "mid": "m", "src": "s", "ts": "inf"},
        {"op": "inform", "mid": "m", "src": "s", "ts": 1e999},
        {"op": "inform", "mid": "m", "src": "s", "ts": "nan"},
    ],
)
def test_a_ts_that_is_no_moment_is_a_bad_message(document: dict[str, object]) -> None:
    with pytest.raises(BadMessage, match="not a finite number of seconds"):
        FrcpMessage.from_json(document)


def test_content_nested_too_deep_is_a_bad_message(pki: DemoPki) -> None:
    user = pki.users["alice"]
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(BadMessage, match="the signed content is not JSON"):
        decode(_crafted(user.key, chain_pem(user.chain), deep), "jwt", SignatureChecker(pki.roots))
    with pytest.raises(BadMessage, match="not JSON"):
        decode(b"{" + b'"a":[' * 100_000, "text/json", None)


def test_an_unreadable_signed_message_does_not_stop_the_slot_pass(
    running: Running, lab: Lab, rabbitmq_url: str
) -> None:
    """While the pass waits for cm_factory's STATUS, an experimenter publishes on its topic messages signed with her
    own certificate that no decoder can read (ts "inf", a content nested 100000 deep); then cm_factory answers. The
    pass drops them and starts the lease."""
    lease = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
    running.nodes.silent.add("node1")  # cm_factory's answer is published below, after the crafted messages
    key = load_private_key_file(lab.key)
    ann_chain = chain_pem(load_gid_chain_file(lab.chain))
    infinite = json.dumps({"op": "inform", "mid": "x", "ts": "inf", "src": "amqp://h/frcp.x", "props": {}})
    controller = LocalAuthority.load(str(lab.directory), "lab")  # the stand-ins' signer (omf_lab.serve)
    cm_topic = running.settings.frcp_cm_factory
    status = new_message(
        "inform",
        address("127.0.0.1", cm_topic),
        {"node_name": "node1", "current": "booting", "desired": "running"},
        itype="STATUS",
    )

    def cm_factory_busy() -> None:
        _until(lambda: ("on", "node1") in running.nodes.steps, "was asked to switch node1 on")
        _publish(
            rabbitmq_url,
            cm_topic,
            [
                (_crafted(key, ann_chain, infinite), "jwt"),
                (_crafted(key, ann_chain, "[" * 100_000 + "]" * 100_000), "jwt"),
                (encode(status, Signer(controller.key, controller.chain, "cm"))[0], "jwt"),
            ],
        )

    helper = threading.Thread(target=cm_factory_busy, daemon=True)
    helper.start()
    report = pass_at(running, slot_start())
    helper.join()
    assert report.started == [lease] and report.failed == []
    record = running.backend.slots.records.get(lease) if running.backend.slots is not None else None
    assert record is not None and record.phase == READY


# -- 2. frisbee clients' informs -------------------------------------------------------------------------------------
def test_frisbee_exits_before_or_during_another_creation_are_kept(running: Running, lab: Lab) -> None:
    """frisbee_factory answers node2's client creation only after both clients wrote their disks: node1's EXIT
    arrives while the aggregate waits for node2's CREATION.OK, node2's before it. Both count: the nodes are loaded,
    taken off PXE and switched on, the start recorded as done."""
    lease = provisioned(running, lab, {"node1": IMAGE, "node2": IMAGE}, ssh_key("ann@laptop"))
    running.nodes.late_creation.add("node2")
    report = pass_at(running, slot_start())
    assert report.started == [lease] and report.failed == [], running.backend.slots
    steps = running.nodes.steps
    assert {("written", "node1"), ("written", "node2")} <= set(steps)
    assert steps.index(("written", "node2")) < steps.index(("start_without_pxe", "node1"))
    assert {("start_without_pxe", "node1"), ("start_without_pxe", "node2"), ("on", "node1"), ("on", "node2")} <= set(
        steps
    )


# -- 3. cm_factory's refusals ----------------------------------------------------------------------------------------
@dataclass
class NodeLab:
    standin: NodeControllersStandIn
    controllers: Controllers
    controller: Signer
    url: str


@pytest.fixture
def node_lab(pki: DemoPki, tmp_path: Path, rabbitmq_url: str) -> Iterator[NodeLab]:
    """cm_factory and frisbee_factory stand-ins on topics of this test, and the aggregate's Controllers (2 s for a
    node to answer)."""
    prefix = uuid.uuid4().hex[:8]
    controller = Signer(pki.authority.key, pki.authority.chain, "cm")
    standin = NodeControllersStandIn(
        rabbitmq_url, f"cm-{prefix}", f"fr-{prefix}", tmp_path / "testbed", controller, SignatureChecker(pki.roots)
    )
    standin.start()
    checker = SignatureChecker(pki.roots, controllers=ControllerSigners("testbed"))
    am = Signer(pki.authority.key, pki.authority.chain, "am")
    client = FrcpClient(rabbitmq_url, signer=am, checker=checker, topic=f"am-{prefix}", timeout_s=10)
    try:
        yield NodeLab(standin, Controllers(client, f"cm-{prefix}", f"fr-{prefix}", 2), controller, rabbitmq_url)
    finally:
        standin.stop()


def test_a_refusal_with_no_success_after_it_is_reported_in_its_words(node_lab: NodeLab) -> None:
    node_lab.standin.fail[("node1", "on")] = ("AUTH", "You don't have a valid lease for node1")
    outcome = node_lab.controllers.power(["node1"], "on")["node1"]
    assert not outcome.ok and not outcome.timed_out
    assert outcome.reason == "cm_factory could not switch on: You don't have a valid lease for node1"


# -- 4. replays ----------------------------------------------------------------------------------------------------
def test_a_signed_message_carries_exp_and_a_random_jti(pki: DemoPki) -> None:
    signer = Signer(pki.authority.key, pki.authority.chain, "am")
    message = new_message("configure", "amqp://h/frcp.t", {"state": {"node": "node1", "status": "off"}})
    claims = [
        jwt.decode(signer.sign(message, lifetime_s), options={"verify_signature": False})
        for lifetime_s in (0, 120, 10**6)
    ]
    assert [claim["exp"] - claim["iat"] for claim in claims] == [TOKEN_LIFETIME_MIN_S, 120, TOKEN_LIFETIME_MAX_S]
    assert len({claim["jti"] for claim in claims}) == 3
    assert all(json.loads(claim["cnt"]) == message.to_json() for claim in claims)


def test_an_expired_message_is_refused(pki: DemoPki) -> None:
    signer = Signer(pki.authority.key, pki.authority.chain, "am")
    message = new_message("configure", "amqp://h/frcp.t", {"state": {"node": "node1", "status": "off"}})
    token = signer.sign(message, 60)
    claims = jwt.decode(token, options={"verify_signature": False})
    expiry = datetime.fromtimestamp(claims["exp"], utcnow().tzinfo)
    within = SignatureChecker(pki.roots, clock=lambda: expiry + timedelta(seconds=INFORM_CLOCK_SKEW_S))
    assert within.verify(token).message == message
    after = SignatureChecker(pki.roots, clock=lambda: expiry + timedelta(seconds=INFORM_CLOCK_SKEW_S + 1))
    with pytest.raises(BadMessage, match="expired"):
        after.verify(token)
    with pytest.raises(BadMessage, match="exp 'soon' is not a number"):
        within.verify(
            jwt.encode(
                {**jwt.decode(token, options={"verify_signature": False}), "exp": "soon"},
                pki.authority.key,
                algorithm="RS256",
            )
        )


def test_a_request_replayed_after_its_exp_is_refused(node_lab: NodeLab, pki: DemoPki) -> None:
    """Someone keeps the aggregate's signed "switch node1 off" from cm_factory's topic and publishes it again once
    it expired: cm_factory (the stand-in checks signatures, and exp, as ours does) refuses it; node1 stays on."""
    shift = [timedelta(0)]
    node_lab.standin.checker = SignatureChecker(pki.roots, clock=lambda: utcnow() + shift[0])
    connection = pika.BlockingConnection(pika.URLParameters(node_lab.url))
    try:
        channel = connection.channel()
        channel.exchange_declare(
            exchange=node_lab.standin.topic, exchange_type="topic", durable=False, auto_delete=True
        )
        eavesdropper = channel.queue_declare(queue="", exclusive=True).method.queue
        channel.queue_bind(queue=eavesdropper, exchange=node_lab.standin.topic, routing_key="o.op")
        assert node_lab.controllers.power(["node1"], "off")["node1"].ok
        _, _, captured = channel.basic_get(eavesdropper, auto_ack=True)
        assert captured is not None
        assert node_lab.controllers.power(["node1"], "on")["node1"].ok
        claims = jwt.decode(captured, options={"verify_signature": False})
        shift[0] = timedelta(seconds=claims["exp"] - time.time() + INFORM_CLOCK_SKEW_S + 1)  # the stand-in's now
        judged = len(node_lab.standin.refused) + len(node_lab.standin.handled)
        channel.basic_publish(
            exchange=node_lab.standin.topic,
            routing_key="o.op",
            body=captured,
            properties=pika.BasicProperties(content_type="jwt"),
        )
    finally:
        connection.close()
    _until(lambda: len(node_lab.standin.refused) + len(node_lab.standin.handled) > judged, "judged the replay")
    assert [step for step in node_lab.standin.steps if step[1] == "node1"] == [("off", "node1"), ("on", "node1")]
    assert node_lab.standin.power["node1"] == "on"
    assert any("expired" in reason for reason in node_lab.standin.refused)
