"""The common part of the STAND-INs for OMF 6's Ruby resource controllers (user_factory, cm_factory,
frisbee_factory), which cannot be installed here (RubyGems is not reachable). Conformance fixtures written from the
documented messages (/work/shared/reference/omf.md), not ports of their code.

A stand-in speaks real FRCP over the real RabbitMQ: its topics are topic exchanges, it listens with routing key
``o.*``, informs on its own topics (``o.info``), checks every request's JWT signature against trusted roots (an
unsigned, tampered or untrusted message is refused and answered with nothing, as the Ruby controllers drop it) and
signs its informs. It runs in a thread of its own; work it must do later (a node booting, a disk being written) is
queued with ``later`` and done by that thread, since a pika connection belongs to one thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pika

from sfa_omf.testbed.omf.accounts import account_of
from sfa_omf.testbed.omf.frcp import (
    BadMessage,
    FrcpMessage,
    SignatureChecker,
    SignedBy,
    Signer,
    address,
    declare_topic,
    decode,
    encode,
    new_message,
)


class FrcpStandIn:
    """A stand-in controller's loop (see the module docstring); subclasses answer requests in ``work``."""

    def __init__(self, url: str, topic: str, signer: Signer, checker: SignatureChecker) -> None:
        self.url = url
        self.topic = topic
        self.signer = signer
        self.checker = checker
        self.refused: list[str] = []  # why each refused message was refused
        self.handled: list[FrcpMessage] = []
        self.signers: list[str] = []  # the account (subject emailAddress) of each accepted signer
        self.host = pika.URLParameters(url).host
        self._later: list[tuple[float, Callable[[], None]]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"standin-{topic}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(timeout=60):
            raise RuntimeError(f"the {type(self).__name__} did not come up")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def work(self, topic: str, message: FrcpMessage) -> FrcpMessage | None:
        """The inform answering a request received on ``topic`` (None: answer nothing now)."""
        raise NotImplementedError

    def topics(self) -> list[str]:
        """The topics served from the start."""
        return [self.topic]

    # -- helpers for subclasses -------------------------------------------------------------------------------
    def listen(self, topic: str) -> None:
        declare_topic(self.channel, topic)
        self.channel.queue_bind(queue=self.queue, exchange=topic, routing_key="o.*")

    def unlisten(self, topic: str) -> None:
        self.channel.queue_unbind(queue=self.queue, exchange=topic, routing_key="o.*")

    def later(self, delay_s: float, action: Callable[[], None]) -> None:
        self._later.append((time.monotonic() + delay_s, action))

    def publish(self, topic: str, inform: FrcpMessage) -> None:
        body, content_type = encode(inform, self.signer)
        self.channel.basic_publish(
            exchange=topic,
            routing_key="o.info",
            body=body,
            properties=pika.BasicProperties(content_type=content_type, message_id=inform.mid),
        )

    def inform(
        self, request: FrcpMessage | None, itype: str, props: dict[str, Any], topic: str | None = None
    ) -> FrcpMessage:
        """An inform from ``topic`` (ours by default) answering ``request`` (None: no cid, as cm_factory's)."""
        cid = request.mid if request is not None else None
        return new_message("inform", address(self.host, topic or self.topic), props, cid=cid, itype=itype)

    # -- the loop ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        self.channel = connection.channel()
        self.queue = self.channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
        for topic in self.topics():
            self.listen(topic)
        self._ready.set()
        try:
            for method, properties, body in self.channel.consume(self.queue, auto_ack=True, inactivity_timeout=0.05):
                if self._stop.is_set():
                    break
                if method is not None:
                    self._handle(method.exchange, body, properties.content_type)
                self._run_due()
            self.channel.cancel()
        finally:
            connection.close()

    def _run_due(self) -> None:
        now = time.monotonic()
        due = [entry for entry in self._later if entry[0] <= now]
        self._later = [entry for entry in self._later if entry[0] > now]
        for _, action in sorted(due, key=lambda entry: entry[0]):
            action()

    def _handle(self, topic: str, body: bytes, content_type: str | None) -> None:
        try:
            decoded = decode(body, content_type, self.checker)
        except BadMessage as exc:
            self.refused.append(str(exc))
            return
        assert isinstance(decoded, SignedBy)  # a checker is always set: only signed messages get here
        message = decoded.message
        if message.op == "inform":
            return  # our own informs, and other controllers'
        self.handled.append(message)
        self.signers.append(account_of(decoded.signer.certificate))
        try:
            reply = self.work(topic, message)
        except (OSError, ValueError) as exc:
            reply = self.inform(message, "ERROR", {"reason": str(exc)}, topic)
        if reply is not None:
            self.publish(topic, reply)
