"""An FRCP client over AMQP (RabbitMQ), as OMF 6 speaks it, with messages signed as JWT (RS256).

FRCP on AMQP, the facts this module follows:
- A topic X is a RabbitMQ *topic exchange* named X (not durable, auto-delete). A subscriber binds an exclusive,
  auto-delete queue to it with routing key ``o.*``. Requests (create, configure, request, release) are published
  with routing key ``o.op``; informs with ``o.info``.
- A message is JSON: op, mid (a UUID), ts (integer seconds), src (``amqp://<host>/frcp.<topic>``), props, and
  optionally replyto, guard; informs carry cid (the mid they answer) and itype (CREATION.OK, CREATION.FAILED,
  STATUS, RELEASED, ERROR, WARN); release names the child in rid.
- A controller informs on its *own* topic, not on replyto: the client subscribes to the controller's topic before
  it publishes, and matches replies by cid (cm_factory's informs carry none: they are matched on props.node_name).
- Signed messages are a JWT (RS256) whose claims are {cnt: the JSON message, iss: the signer, crt: the signer's
  certificate chain in PEM}; the AMQP content type is then ``jwt`` instead of ``text/json``. The receiver checks
  the chain against its trusted roots and the signature with the leaf's key. Ours also carry the standard JWT
  claims iat, exp (now plus the request's time-out, within ``TOKEN_LIFETIME_*_S``) and jti (random), so
  that a request captured on the broker cannot be replayed later; a message whose exp has passed is refused (OMF's
  controllers sign without exp: a message without one is still accepted).
- Only the testbed's controllers may answer (``ControllerSigners``): a trusted chain is not enough for an inform,
  since the local authority also certifies users and the slices' testbed accounts (whose keys their users can
  read), and federation roots certify their own users. An inform older than the request it would answer (its ts,
  with ``INFORM_CLOCK_SKEW_S`` of tolerance) is ignored too: an old genuine inform replayed proves nothing now.

Errors: FrcpUnavailable (the broker cannot be reached), FrcpTimeout (no matching reply in time), FrcpError (the
controller answered ERROR / CREATION.FAILED / anything "error" or "failed", with its reason). The backend turns
them into GENI errors (11, 8, 2).

The breakers (the aggregate's client has them, sfa_omf/testbed/gate.py's CircuitBreaker): a broker that hangs held
each call for the connection's time-out (pika's ``stack_timeout``, 15 s), a controller that does not answer for the
request's (``timeout_s``; ``boot_timeout_s`` for power and images), however many calls came. So the broker and each
controller (by its topic) have a breaker: a connection that timed out opens the broker's, a request no inform
answered in time its controller's; any answer closes it. While one rests, ``session()`` refuses the sessions that
need it at once with FrcpCircuitOpen (an FrcpUnavailable: nothing is sent, not even a connection tried), so the
calls answer UNAVAILABLE (11) and the slot passes postpone their work. A controller that hangs does not stop the
others (a silent cm_factory leaves Provision's user_factory alone). Failures that come back at once (a refused
connection, the broker closing it) hold no call: they do not feed the breakers, and the broker back is used at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jwt
import pika
import pika.exceptions
from cryptography.hazmat.primitives.asymmetric import rsa
from pika.adapters.utils.connection_workflow import (
    AMQPConnectorException,
    AMQPConnectorPhaseErrorBase,
    AMQPConnectorStackTimeout,
)

from sfa_omf.errors import TrustError
from sfa_omf.testbed.gate import CircuitBreaker, CircuitOpen
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import Gid, GidChain, chain_pem, load_gid_chain
from sfa_omf.trust.roots import TrustedRoots, verify_chain

log = logging.getLogger("sfa_omf.omf.frcp")

REQUEST_OPS = ("create", "configure", "request", "release")
OPS = (*REQUEST_OPS, "inform")
ROUTING_OP = "o.op"
ROUTING_INFO = "o.info"
CONTENT_JSON = "text/json"
CONTENT_JWT = "jwt"
#: How far a controller's clock may lag ours: an inform stamped earlier than this before the request is ignored.
INFORM_CLOCK_SKEW_S = 30
#: A signed message's lifetime (JWT exp - ts) is the request's time-out kept within these bounds: long enough for a
#: receiver whose clock runs a little ahead of ours, short enough that a captured request is useless soon after.
TOKEN_LIFETIME_MIN_S = 60
TOKEN_LIFETIME_MAX_S = 600
#: At most this many informs that no wait has claimed yet are kept per session (a flood must not fill the memory).
UNCLAIMED_INFORMS_MAX = 1000


class FrcpUnavailable(Exception):
    """The AMQP broker cannot be reached (or dropped the connection)."""


class FrcpCircuitOpen(FrcpUnavailable):
    """Not sent: the broker or the controller a session needs timed out moments ago, and its breaker keeps requests
    from it for a cool-down; the message says when it failed, why, and when it is tried again."""


class FrcpTimeout(Exception):
    """No matching reply arrived in time."""


class FrcpError(Exception):
    """The controller answered with an error; ``reason`` is its own words, ``inform`` its whole message."""

    def __init__(self, reason: str, inform: FrcpMessage) -> None:
        super().__init__(reason)
        self.reason = reason
        self.inform = inform


class BadMessage(ValueError):
    """Not an FRCP message (not JSON, fields missing or of the wrong type, a bad signature)."""


@dataclass(frozen=True)
class FrcpMessage:
    """One FRCP message as plain data."""

    op: str
    mid: str
    ts: int
    src: str
    props: dict[str, Any] = field(default_factory=dict)
    cid: str | None = None
    itype: str | None = None
    rid: str | None = None
    replyto: str | None = None
    guard: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The message as FRCP's JSON object (absent optional fields are left out)."""
        document: dict[str, Any] = {"op": self.op, "mid": self.mid, "ts": self.ts, "src": self.src}
        document["props"] = dict(self.props)
        for key in ("cid", "itype", "rid", "replyto", "guard"):
            value = getattr(self, key)
            if value is not None:
                document[key] = value
        return document

    @classmethod
    def from_json(cls, document: Any) -> FrcpMessage:
        """Read one message, or BadMessage saying what is wrong."""
        if not isinstance(document, dict):
            raise BadMessage(f"an FRCP message is a JSON object, not {type(document).__name__}")
        op = document.get("op")
        if op not in OPS:
            raise BadMessage(f"op {op!r} is not one of {', '.join(OPS)}")
        for key in ("mid", "src"):
            if not isinstance(document.get(key), str) or not document[key]:
                raise BadMessage(f"the message has no {key}")
        ts = document.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, int | float | str):
            raise BadMessage("the message has no ts (seconds)")
        try:
            number = float(ts)
        except ValueError as exc:
            raise BadMessage(f"ts {ts!r} is not a number of seconds") from exc
        if not math.isfinite(number):  # "inf", 1e999, "nan": no moment at all
            raise BadMessage(f"ts {ts!r} is not a finite number of seconds")
        seconds = int(number)
        props = document.get("props", {})
        if not isinstance(props, dict):
            raise BadMessage("props is not an object")
        guard = document.get("guard")
        optional = {key: document.get(key) for key in ("cid", "itype", "rid", "replyto")}
        for key, value in optional.items():
            if value is not None and not isinstance(value, str):
                raise BadMessage(f"{key} is not text")
        return cls(
            op=op,
            mid=document["mid"],
            ts=seconds,
            src=document["src"],
            props=props,
            guard=guard if isinstance(guard, dict) else None,
            **optional,
        )

    @property
    def is_error(self) -> bool:
        """FRCP's error informs: ERROR, CREATION.FAILED, or any itype that says error or failed."""
        kind = (self.itype or "").lower()
        return self.op == "inform" and ("error" in kind or "failed" in kind)


def new_message(op: str, src: str, props: Mapping[str, Any] | None = None, **extra: Any) -> FrcpMessage:
    """A fresh message from ``src`` (a new mid, now as ts)."""
    return FrcpMessage(op=op, mid=str(uuid.uuid4()), ts=int(time.time()), src=src, props=dict(props or {}), **extra)


def default_topic() -> str:
    """OMF's own-topic convention for a client: <hostname>-<pid>, dots as dashes."""
    return f"{socket.gethostname()}-{os.getpid()}".replace(".", "-")


def address(host: str, topic: str) -> str:
    """The FRCP address of a topic on an AMQP broker (src, res_id, replyto)."""
    return f"amqp://{host}/frcp.{topic}"


def topic_of(address_or_topic: str) -> str:
    """The topic an address names (``amqp://host/frcp.user_alice`` -> ``user_alice``); a bare topic is kept."""
    tail = address_or_topic.rsplit("/", 1)[-1]
    return tail[len("frcp.") :] if tail.startswith("frcp.") else tail


# -- signing ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signer:
    """Signs messages as OMF does: a JWT (RS256) with the message, the issuer and the signer's certificate chain."""

    key: rsa.RSAPrivateKey
    chain: GidChain
    issuer: str

    def sign(self, message: FrcpMessage, lifetime_s: float = TOKEN_LIFETIME_MIN_S) -> str:
        """The JWT of ``message``: OMF's claims, plus iat (now), exp (valid ``lifetime_s`` from now, kept within
        TOKEN_LIFETIME_MIN_S..TOKEN_LIFETIME_MAX_S) and a random jti, so that it cannot be replayed later."""
        lifetime = int(min(max(lifetime_s, TOKEN_LIFETIME_MIN_S), TOKEN_LIFETIME_MAX_S))
        now = int(time.time())
        claims = {
            "cnt": json.dumps(message.to_json()),
            "iss": self.issuer,
            "crt": chain_pem(self.chain),
            "iat": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.key, algorithm="RS256")


@dataclass(frozen=True)
class SignedBy:
    """A verified message and the certificate that signed it (its emailAddress is OMF's account name)."""

    message: FrcpMessage
    signer: Gid


@dataclass(frozen=True)
class ControllerSigners:
    """Who may sign informs as the testbed's controllers: certificates naming this testbed's authority itself
    (``authority_hrn`` with an authority URN type: the authority's own, the aggregate's; only the operator holds
    their keys), and those the operator lists (``urns``: ``[sfa_frcp] controllers``, URNs, or the subject CN of a
    certificate without a URN), e.g. controllers certified by the testbed's old CA. Never a user's, a slice's, a
    node's, a testbed account's (minted as the user ``<authority>.<login>``) nor a federation root's users."""

    authority_hrn: str
    urns: frozenset[str] = frozenset()

    def refusal(self, signer: Gid) -> str:
        """Why ``signer`` may not answer for the controllers; "" when it may."""
        name = signer.urn or signer.subject_cn
        if name in self.urns:
            return ""
        if signer.hrn == self.authority_hrn and (signer.type or "").startswith("authority"):
            return ""
        listed = f" nor in [sfa_frcp] controllers ({', '.join(sorted(self.urns))})" if self.urns else ""
        return (
            f"the inform is signed by {name!r}, not by a controller of the testbed: not a certificate of the "
            f"authority {self.authority_hrn!r} itself{listed}; a controller certified otherwise is listed in "
            "[sfa_frcp] controllers: ignored"
        )


class SignatureChecker:
    """Checks signed messages: the chain in ``crt`` against the trusted roots, the JWT's signature with its leaf,
    and, with ``controllers``, that an inform comes from one of the testbed's controllers (requests from anyone
    with a trusted chain pass: the controllers decide whose lease a request falls under)."""

    def __init__(
        self, roots: TrustedRoots, clock: Callable[[], datetime] = utcnow, controllers: ControllerSigners | None = None
    ) -> None:
        self.roots = roots
        self.clock = clock
        self.controllers = controllers

    def verify(self, token: str) -> SignedBy:
        """The message a JWT carries, once its signer is trusted and its signature checks; BadMessage if not."""
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            chain = load_gid_chain(str(unverified["crt"]))
        except (jwt.PyJWTError, KeyError, ValueError, TypeError, RecursionError) as exc:
            raise BadMessage(f"not a signed FRCP message: {_brief(exc)}") from exc
        try:
            verify_chain(chain, self.roots, self.clock(), role="FRCP signer")
        except TrustError as exc:
            raise BadMessage(exc.message) from exc
        public_key: Any = chain[0].certificate.public_key()
        try:
            # exp is checked below against our clock (the one the chain is checked with), with some tolerance.
            claims = jwt.decode(token, public_key, algorithms=["RS256"], options={"verify_exp": False})
        except (jwt.PyJWTError, RecursionError) as exc:
            raise BadMessage(f"the signature of the FRCP message does not verify: {_brief(exc)}") from exc
        self._check_expiry(claims)
        content = claims.get("cnt")
        try:
            document = json.loads(content) if isinstance(content, str) else content
        except (ValueError, RecursionError) as exc:  # not JSON, or nested too deep to read
            raise BadMessage(f"the signed content is not JSON: {_brief(exc)}") from exc
        message = FrcpMessage.from_json(document)
        if self.controllers is not None and message.op == "inform":
            refusal = self.controllers.refusal(chain[0])
            if refusal:
                raise BadMessage(refusal)
        return SignedBy(message, chain[0])

    def _check_expiry(self, claims: Mapping[str, Any]) -> None:
        """BadMessage if the JWT's exp has passed (more than INFORM_CLOCK_SKEW_S ago by our clock); a message without
        exp passes (OMF's controllers sign none)."""
        if "exp" not in claims:
            return
        expiry = claims["exp"]
        if isinstance(expiry, bool) or not isinstance(expiry, int | float) or not math.isfinite(expiry):
            raise BadMessage(f"the signed message's exp {expiry!r} is not a number of seconds")
        now = self.clock().timestamp()
        if expiry < now - INFORM_CLOCK_SKEW_S:
            raise BadMessage(
                f"the signed message expired {int(now - expiry)} s ago (exp {int(expiry)}): a replay of an old "
                "message, or the sender's clock is off: refused"
            )


def encode(message: FrcpMessage, signer: Signer | None, lifetime_s: float = TOKEN_LIFETIME_MIN_S) -> tuple[bytes, str]:
    """(AMQP body, content type) of a message, signed (valid ``lifetime_s``, see Signer.sign) when there is a
    signer."""
    if signer is None:
        return json.dumps(message.to_json()).encode("utf-8"), CONTENT_JSON
    return signer.sign(message, lifetime_s).encode("ascii"), CONTENT_JWT


def decode(body: bytes, content_type: str | None, checker: SignatureChecker | None) -> SignedBy | FrcpMessage:
    """Read an AMQP body. With a checker, only signed messages from trusted signers are accepted."""
    text = body.decode("utf-8", "replace").strip()
    signed = content_type == CONTENT_JWT or not text.startswith("{")
    if checker is not None:
        if not signed:
            raise BadMessage("the message is not signed and this endpoint accepts signed messages only")
        return checker.verify(text)
    if signed:
        raise BadMessage("a signed message arrived but no trusted roots are configured to check it")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:  # not JSON, or nested too deep to read
        raise BadMessage(f"not JSON: {_brief(exc)}") from exc
    return FrcpMessage.from_json(document)


# -- the client ---------------------------------------------------------------------------------------------------
def declare_topic(channel: Any, topic: str) -> None:
    """A topic is a topic exchange of that name, not durable and deleted with its last binding (as OMF's)."""
    channel.exchange_declare(exchange=topic, exchange_type="topic", durable=False, auto_delete=True)


class FrcpClient:
    """Talks FRCP to resource controllers through an AMQP broker. Each ``session()`` is one connection (pika's
    connections are not shared between threads, and the aggregate calls from a pool of threads)."""

    def __init__(
        self,
        url: str,
        signer: Signer | None = None,
        checker: SignatureChecker | None = None,
        topic: str | None = None,
        timeout_s: float = 30.0,
        breakers: Callable[[str], CircuitBreaker] | None = None,
    ) -> None:
        """``breakers``: makes the breaker of a peer, given how messages name it (the broker, a controller); None:
        no breakers (every session is tried)."""
        self.url = url
        self.parameters = pika.URLParameters(url)
        self.parameters.connection_attempts = 1
        self.parameters.socket_timeout = min(timeout_s, 10.0)
        # A broker under a resource alarm blocks publishers: give up (FrcpUnavailable) instead of waiting forever.
        self.parameters.blocked_connection_timeout = timeout_s
        self.signer = signer
        self.checker = checker
        self.topic = topic or default_topic()
        self.timeout_s = timeout_s
        self.host = self.parameters.host
        # The aggregate's (make_omf_backend): while the broker or a controller is hung, its sessions are refused.
        self._make_breaker = breakers
        self._breakers: dict[str, CircuitBreaker] = {}
        self._breakers_lock = threading.Lock()

    def breaker(self, peer: str = "") -> CircuitBreaker | None:
        """The breaker of ``peer``: a controller's topic, "" for the broker itself (made when first needed); None
        when the client has no breakers."""
        if self._make_breaker is None:
            return None
        topic = _peer(peer)
        with self._breakers_lock:
            if topic not in self._breakers:
                broker = _safe(self.url)
                words = f"the controller {topic} (on {broker})" if topic else f"the AMQP broker at {broker}"
                self._breakers[topic] = self._make_breaker(words)
            return self._breakers[topic]

    @contextmanager
    def session(self, *peers: str) -> Iterator[FrcpSession]:
        """A connection with our own topic and one reply queue, closed at the end. ``peers``: the topics of the
        controllers it will ask; FrcpCircuitOpen, before connecting, while the broker's or one of theirs' breaker
        rests (see the module docstring)."""
        report = _BreakerReport(self, peers)
        try:
            connection = pika.BlockingConnection(self.parameters)
        except AMQPConnectorStackTimeout as exc:  # it took the connection and never spoke AMQP: hung
            unreachable = FrcpUnavailable(
                f"the AMQP broker at {_safe(self.url)} did not complete the AMQP handshake within "
                f"{self.parameters.stack_timeout:g} s: is it hung?"
            )
            report.broker_failed(str(unreachable), waited=True)
            raise unreachable from exc
        except (pika.exceptions.AMQPError, AMQPConnectorException) as exc:
            # (pika raises the connector's own errors, not AMQPError, for some ways a connection fails)
            unreachable = FrcpUnavailable(f"the AMQP broker at {_safe(self.url)} cannot be reached: {exc!r}")
            report.broker_failed(str(unreachable), waited=_waited(exc))
            raise unreachable from exc
        except OSError as exc:
            unreachable = FrcpUnavailable(f"the AMQP broker at {_safe(self.url)} cannot be reached: {exc}")
            report.broker_failed(str(unreachable), waited=isinstance(exc, TimeoutError))
            raise unreachable from exc
        except BaseException:
            report.ended()
            raise
        report.answered("")  # the broker spoke AMQP
        try:
            yield FrcpSession(self, connection, report)
        except pika.exceptions.AMQPError as exc:
            dropped = FrcpUnavailable(f"the AMQP broker at {_safe(self.url)} failed: {exc!r}")
            report.broker_failed(str(dropped), waited=_waited(exc))
            raise dropped from exc
        finally:
            report.ended()
            try:
                if connection.is_open:
                    connection.close()
            except pika.exceptions.AMQPError:
                pass  # already gone: nothing to close


class _BreakerReport:
    """Admits one session (the broker's breaker, then those of the controllers it will ask) and tells each breaker
    how its requests went. A breaker's first report settles its probe when the session is one; the later ones are
    ordinary requests'. Without breakers it does nothing. A peer is a controller's topic (or address), "" the
    broker."""

    def __init__(self, client: FrcpClient, peers: Collection[str]) -> None:
        self.client = client
        self._probes: dict[str, bool] = {}  # peer -> whether this session is its probe, until its first report
        for peer in dict.fromkeys(("", *(_peer(peer) for peer in peers))):
            breaker = client.breaker(peer)
            if breaker is None:
                continue
            try:
                self._probes[peer] = breaker.admit()
            except CircuitOpen as refused:
                self.ended()  # a probe claimed for another peer lets another session try
                raise FrcpCircuitOpen(refused.message) from None

    def answered(self, peer: str) -> None:
        """``peer`` answered: an inform answered a request, whatever it said ("": the broker spoke AMQP)."""
        breaker = self.client.breaker(peer)
        if breaker is not None:
            breaker.worked(self._take_probe(peer))

    def failed(self, peer: str, why: str) -> None:
        """No inform from ``peer`` answered a request in time (``why``: its words)."""
        breaker = self.client.breaker(peer)
        if breaker is not None:
            breaker.failed(why, self._take_probe(peer))

    def broker_failed(self, why: str, waited: bool) -> None:
        """The broker was out of reach or dropped the connection: a failure that took a time-out (``waited``) opens
        its breaker; one that came back at once held nobody (a probe of the broker then lets another try)."""
        if waited:
            self.failed("", why)
        else:
            self._settle("")

    def ended(self) -> None:
        """The session is over: each probe that learnt nothing lets another session try."""
        for peer in list(self._probes):
            self._settle(peer)

    def _settle(self, peer: str) -> None:
        breaker = self.client.breaker(peer)
        if breaker is not None and self._probes.get(_peer(peer)):
            breaker.abandoned(self._take_probe(peer))

    def _take_probe(self, peer: str) -> bool:
        key = _peer(peer)
        probe = self._probes.get(key, False)
        self._probes[key] = False
        return probe


def _peer(peer: str) -> str:
    """How a peer's breaker is known: a controller by its topic (given as a topic or an address), "" the broker."""
    return topic_of(peer) if peer else ""


def _waited(error: BaseException, depth: int = 0) -> bool:
    """Whether a connection failure took a time-out (pika nests the cause in its own errors), rather than coming
    back at once."""
    if isinstance(error, TimeoutError | AMQPConnectorStackTimeout | pika.exceptions.ConnectionBlockedTimeout):
        return True
    if depth > 4:
        return False
    if isinstance(error, AMQPConnectorPhaseErrorBase):
        return _waited(error.exception, depth + 1)
    return any(isinstance(arg, BaseException) and _waited(arg, depth + 1) for arg in error.args)


class FrcpSession:
    """One conversation with controllers: subscribe to their topics, send requests, wait for the matching inform."""

    def __init__(self, client: FrcpClient, connection: Any, report: _BreakerReport) -> None:
        self.client = client
        self.connection = connection
        self.report = report  # to the breakers: which controller answered, which did not
        self.channel = connection.channel()
        declare_topic(self.channel, client.topic)
        # Exclusive: deleted with the connection. Not auto-delete (OMF's subscribers use it), because this session
        # stops consuming between requests and an auto-delete queue would vanish with its last consumer.
        declared = self.channel.queue_declare(queue="", exclusive=True)
        self.queue: str = declared.method.queue
        self.subscribed: set[str] = set()
        self.subscribe(client.topic)
        self.src = address(client.host, client.topic)
        self.opened_ts = int(time.time())  # no inform older than the session answers anything in it
        self.refused: list[str] = []  # informs dropped (unsigned, untrusted, malformed): for the operator's log
        # Informs read while waiting for something else, for the waits that follow (oldest first, bounded).
        self.unclaimed: deque[FrcpMessage] = deque(maxlen=UNCLAIMED_INFORMS_MAX)

    def subscribe(self, topic: str) -> None:
        """Receive the informs published on ``topic`` (before asking it anything: informs are not queued)."""
        if topic in self.subscribed:
            return
        declare_topic(self.channel, topic)
        self.channel.queue_bind(queue=self.queue, exchange=topic, routing_key="o.*")
        self.subscribed.add(topic)

    def subscribe_address(self, address_or_topic: str) -> None:
        """Subscribe to a resource named by its address (a child's res_id) or topic."""
        self.subscribe(topic_of(address_or_topic))

    def message(self, op: str, props: Mapping[str, Any] | None = None, **extra: Any) -> FrcpMessage:
        """A new request from this session (replies to our own topic)."""
        return new_message(op, self.src, props, replyto=self.src, **extra)

    def send(self, topic: str, message: FrcpMessage) -> None:
        """Publish a request on ``topic`` (routing key o.op; o.info for informs)."""
        # Valid for as long as we wait for its answer: a copy taken off the broker is refused after that.
        body, content_type = encode(message, self.client.signer, self.client.timeout_s)
        self.channel.basic_publish(
            exchange=topic,
            routing_key=ROUTING_INFO if message.op == "inform" else ROUTING_OP,
            body=body,
            properties=pika.BasicProperties(content_type=content_type, message_id=message.mid),
        )

    def request(
        self,
        topic: str,
        op: str,
        props: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
        node_name: str | None = None,
        peer: str | None = None,
        **extra: Any,
    ) -> FrcpMessage:
        """Send ``op`` to ``topic`` and return the inform that answers it: the one whose cid is our mid (or, for
        controllers that send no cid, whose props.node_name is ``node_name``). Error informs raise FrcpError;
        nothing in time raises FrcpTimeout. ``peer``: the controller whose breaker hears of it (by default the
        topic's; a factory's for its child's topic)."""
        if op not in REQUEST_OPS:
            raise ValueError(f"op {op!r} is not one of {', '.join(REQUEST_OPS)}")
        target = topic_of(topic)
        self.subscribe(target)
        message = self.message(op, props, **extra)
        self.send(target, message)
        what = f"{op} on {target}"
        return self.wait(message.mid, timeout_s, node_name, what, message.ts, target if peer is None else peer)

    def wait(
        self,
        mid: str,
        timeout_s: float | None,
        node_name: str | None,
        what: str,
        sent_ts: int | None = None,
        peer: str | None = None,
    ) -> FrcpMessage:
        """The inform answering the request ``mid`` sent at ``sent_ts`` (default: the session's start; older
        informs are ignored), see ``request``. Informs that arrive meanwhile and answer something else are kept for
        the waits that follow (``unclaimed``): a frisbee client's EXIT may come while we wait for another's
        CREATION.OK. ``peer``: the controller whose breaker hears whether it answered (None: none)."""
        limit = self.client.timeout_s if timeout_s is None else timeout_s
        not_before = (self.opened_ts if sent_ts is None else sent_ts) - INFORM_CLOCK_SKEW_S

        def answers(inform: FrcpMessage) -> bool:
            return _answers(inform, mid, node_name) and self._fresh(inform, not_before)

        answer = self._claim(answers) or self._receive(answers, time.monotonic() + limit)
        if answer is None:
            raise self._silence(peer, f"no answer to {what} within {limit:g} s")
        self._heard(peer)
        if answer.is_error:
            raise FrcpError(_reason(answer), answer)
        return answer

    def wait_for(
        self, wanted: Callable[[FrcpMessage], bool], timeout_s: float | None, what: str, peer: str | None = None
    ) -> FrcpMessage:
        """The first inform ``wanted`` accepts, among those kept (``unclaimed``) and then those that arrive; others
        are kept for later waits. FrcpTimeout when none comes in time (errors are returned, not raised). ``peer``:
        the controller whose breaker hears whether it answered (None: none)."""
        limit = self.client.timeout_s if timeout_s is None else timeout_s
        found = self._claim(wanted) or self._receive(wanted, time.monotonic() + limit)
        if found is None:
            raise self._silence(peer, f"no answer to {what} within {limit:g} s")
        self._heard(peer)
        return found

    def _heard(self, peer: str | None) -> None:
        """``peer`` answered: its breaker hears of it."""
        if peer is not None:
            self.report.answered(peer)

    def _silence(self, peer: str | None, words: str) -> FrcpTimeout:
        """The time-out of a request ``peer`` did not answer, told to its breaker."""
        if peer is not None:
            self.report.failed(peer, words)
        return FrcpTimeout(words)

    def about_nodes(
        self,
        nodes: Collection[str],
        done: Callable[[FrcpMessage], bool],
        timeout_s: float | None,
        what: str,
        sent_ts: int | None = None,
        ours: Callable[[FrcpMessage], bool] | None = None,
        foreign_error_grace_s: float | None = None,
        peer: str | None = None,
    ) -> dict[str, NodeAnswer]:
        """For each node, the first inform about it (props.node_name or props.node: cm_factory and frisbee send no
        cid) that ``done`` accepts, or else an error about it; informs that are neither (progress), and informs
        older than the requests (``sent_ts``, default the session's start), are skipped. An error counts at once
        only if ``ours`` says it answers our own request (its cid, the topic of a child we created); any other
        error naming the node may be cm_factory refusing someone else's request, so it is held: if something
        ``done`` accepts comes for the node meanwhile, the node succeeds; else the held error (in its own words) is
        the node's answer once ``foreign_error_grace_s`` have passed since we took it (None: once the time is up).
        A node with no inform at all gets a time-out answer: one slow node does not hide the others'. ``peer``: the
        controller whose breaker hears whether it said anything (None: none)."""
        limit = self.client.timeout_s if timeout_s is None else timeout_s
        not_before = (self.opened_ts if sent_ts is None else sent_ts) - INFORM_CLOCK_SKEW_S
        deadline = time.monotonic() + limit
        answers: dict[str, NodeAnswer] = {}
        held: dict[str, tuple[FrcpMessage, float]] = {}  # node -> (an error that may be another request's, held until)
        waiting = set(nodes)

        def takes(inform: FrcpMessage) -> bool:
            """Whether ``inform`` is about a node we wait for (then noted: an answer, or a held error)."""
            node = _node_of(inform)
            if node not in waiting or not (inform.is_error or done(inform)) or not self._fresh(inform, not_before):
                return False
            if inform.is_error and not (ours is not None and ours(inform)):
                if node not in held:  # the grace runs from the first such error
                    grace_s = limit if foreign_error_grace_s is None else foreign_error_grace_s
                    held[node] = (inform, min(time.monotonic() + grace_s, deadline))
            else:
                answers[node] = NodeAnswer(node, inform, _reason(inform) if inform.is_error else "")
                waiting.discard(node)
            return True

        def answer_held_errors(now: float) -> None:
            """The held errors whose grace has ended become their nodes' answers."""
            for node in [node for node in waiting if node in held and held[node][1] <= now]:
                error = held[node][0]
                answers[node] = NodeAnswer(node, error, _reason(error))
                waiting.discard(node)

        while waiting and self._claim(takes) is not None:
            pass
        while waiting:
            now = time.monotonic()
            answer_held_errors(now)
            if not waiting or now >= deadline:
                break
            # Wake up when the next held error's grace ends, even if nothing arrives.
            self._receive(takes, min([deadline, *(held[node][1] for node in waiting if node in held)]))
        for node in waiting:
            if node in held:
                error = held[node][0]
                answers[node] = NodeAnswer(node, error, _reason(error))
            else:
                answers[node] = NodeAnswer(node, None, f"no answer about {node} to {what} within {limit:g} s")
        # The breaker hears of the controller, not of each node: silence about every node is the controller's (a
        # node that failed to boot while others answered is that node's).
        if any(answer.inform is not None for answer in answers.values()):
            self._heard(peer)
        elif answers:
            self._silence(peer, f"no answer about {', '.join(sorted(answers))} to {what} within {limit:g} s")
        return answers

    def _claim(self, wanted: Callable[[FrcpMessage], bool]) -> FrcpMessage | None:
        """The first kept inform ``wanted`` takes (removed from ``unclaimed``), else None. ``wanted`` is called on
        each kept inform in turn until it takes one; an inform it looked at and refused stays kept."""
        for index, inform in enumerate(self.unclaimed):
            if wanted(inform):
                del self.unclaimed[index]
                return inform
        return None

    def _receive(self, wanted: Callable[[FrcpMessage], bool], deadline: float) -> FrcpMessage | None:
        """Read informs off our queue until ``wanted`` takes one (returned) or ``deadline`` (None). Every inform it
        does not take is kept in ``unclaimed`` for later waits: once read and acknowledged, an inform is nowhere
        else. Messages are acknowledged one by one as they are read, so that those pika holds unread when we stop
        consuming go back to the queue (with auto-ack, they would be lost)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            for method, properties, body in self.channel.consume(
                self.queue, auto_ack=False, inactivity_timeout=remaining
            ):
                if method is None:  # inactivity: the time is up
                    break
                self.channel.basic_ack(method.delivery_tag)
                inform = self._read(body, getattr(properties, "content_type", None))
                # Our own requests come back on the topics we listen to: only informs are kept.
                if inform is not None and inform.op == "inform":
                    if wanted(inform):
                        self.channel.cancel()
                        return inform
                    self.unclaimed.append(inform)
                if time.monotonic() >= deadline:  # a stream of other messages must not keep us past the limit
                    break
            self.channel.cancel()

    def _fresh(self, inform: FrcpMessage, not_before: int) -> bool:
        """Whether an inform that would answer the request is recent enough (stamped at ``not_before`` or later)."""
        if inform.ts >= not_before:
            return True
        reason = (
            f"an inform stamped {inform.ts}, more than {INFORM_CLOCK_SKEW_S} s before the request it could answer "
            "(a replay, or the controller's clock is off): ignored"
        )
        self.refused.append(reason)
        log.warning("dropped an FRCP message: %s", reason)
        return False

    def _read(self, body: bytes, content_type: str | None) -> FrcpMessage | None:
        """The message in an AMQP body, or None (logged, kept in ``refused``) for anything we cannot read: one bad
        message on a topic we listen to must never end a wait (nor a slot pass) with an exception."""
        try:
            decoded = decode(body, content_type, self.client.checker)
        except BadMessage as exc:
            self.refused.append(str(exc))
            log.warning("dropped an FRCP message: %s", exc)
            return None
        except Exception as exc:
            reason = f"unreadable ({type(exc).__name__}: {_brief(exc)})"
            self.refused.append(reason)
            log.warning("dropped an FRCP message: %s", reason)
            return None
        return decoded.message if isinstance(decoded, SignedBy) else decoded


@dataclass(frozen=True)
class NodeAnswer:
    """What a controller said about one node: ``reason`` is empty when it succeeded (``inform`` then is the answer),
    the controller's words (or the time-out) otherwise."""

    node: str
    inform: FrcpMessage | None
    reason: str

    @property
    def ok(self) -> bool:
        return not self.reason


def _reason(inform: FrcpMessage) -> str:
    """The controller's words in an error inform (reason, else msg, else its itype)."""
    return str(inform.props.get("reason") or inform.props.get("msg") or inform.itype or "error")


def _node_of(inform: FrcpMessage) -> str:
    """The node an inform is about: cm_factory names it node_name, a frisbee client node."""
    value = inform.props.get("node_name") or inform.props.get("node") or ""
    return value if isinstance(value, str) else ""


def _answers(inform: FrcpMessage, mid: str, node_name: str | None) -> bool:
    """Whether ``inform`` answers the request ``mid``: by cid, or (no cid) by the node it is about."""
    if inform.cid is not None:
        return inform.cid == mid
    return node_name is not None and inform.props.get("node_name") == node_name


def _brief(error: BaseException) -> str:
    """An exception's words, cut short (a crafted message must not flood the log)."""
    words = str(error)
    return words if len(words) <= 200 else f"{words[:200]}..."


def _safe(url: str) -> str:
    """A broker URL fit for messages: without its password."""
    parameters = pika.URLParameters(url)
    vhost = "" if parameters.virtual_host == "/" else f"/{parameters.virtual_host}"
    return f"amqp://{parameters.host}:{parameters.port}{vhost}"
