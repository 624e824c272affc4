"""The testbed's node controllers over FRCP: cm_factory (power, PXE) and frisbee_factory (disk images), as NITOS'
controllers speak them. Neither answers with a cid: their informs name the node (``node_name``, or ``node`` for a
frisbee client), so several nodes are driven at once and each gets its own answer (FrcpSession.about_nodes).

cm_factory: ``configure {state: {node, status}}`` with status on | off | reset | start_on_pxe | start_without_pxe
(then ``last_action`` reset | shutdown); it informs STATUS {node_name, current, desired} (``desired`` running for
on, stopped for off, resetted for reset; ``current`` pxe_on once a node has booted on PXE, pxe_off once it has left
it) or ERROR {event_type AUTH | HTTP | TIME_OUT, node_name, msg}. Since those informs name only the node, a STATUS
answers a request only when it says what was asked (another request's STATUS about the same node, "booting" while
we asked "off", does not) and is not older than the request.

An image load, in this order: frisbee_factory gives a port (``request {ports}``); a frisbeed server is created for
the image on that port; every node boots on PXE (start_on_pxe); a frisbee client per node writes the image (its
informs: STDOUT progress, EXIT at the end); each loaded node boots off its disk again (start_without_pxe,
last_action reset); the clients and the server are released. A node that fails a step is left out of the next ones
and keeps the reason of the step that failed.

A frisbee client starts writing as soon as it exists and informs on its own topic, which may be before its
CREATION.OK reaches us. So we name it ourselves: OMF 6's resource proxies take the ``uid`` a create carries as the
new resource's id and topic (omf_rc AbstractResource#initialize), and we subscribe to that topic before we ask.

cm_factory's informs name only the node, so an ERROR about a node may be its refusal of someone else's request (an
experimenter's omf_ec without a lease, a stray script). Such an error is held for ``foreign_error_grace_s``
(``[sfa_frcp] foreign_error_grace_s``): the STATUS answering our request within it wins; else the error is the node's
answer as soon as the grace ends, not minutes later at ``boot_timeout_s`` (see ``_cm``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sfa_omf.testbed.omf.frcp import (
    FrcpClient,
    FrcpError,
    FrcpMessage,
    FrcpSession,
    FrcpTimeout,
    NodeAnswer,
    topic_of,
)

log = logging.getLogger("sfa_omf.omf.controllers")

#: PerformOperationalAction -> cm_factory status.
POWER_OF_ACTION = {"geni_start": "on", "geni_stop": "off", "geni_restart": "reset"}
#: cm_factory status -> the ``desired`` its STATUS inform carries once it has done it.
DESIRED_OF_STATUS = {"on": "running", "off": "stopped", "reset": "resetted"}
#: The default of ``[sfa_frcp] foreign_error_grace_s`` (sfa_omf/config.py): how long an error about a node, which may
#: be cm_factory refusing someone else's request, waits for the STATUS answering ours before it is the node's answer.
FOREIGN_ERROR_GRACE_S = 5


@dataclass(frozen=True)
class NodeOutcome:
    """How one node came out of a controller step: ``reason`` empty when it went well."""

    node: str
    reason: str = ""
    timed_out: bool = False  # the controller said nothing about the node in time

    @property
    def ok(self) -> bool:
        return not self.reason


class Controllers:
    """cm_factory and frisbee_factory on one AMQP broker. ``boot_timeout_s``: how long a node may take to answer a
    power, PXE or load step (booting and writing a disk take minutes, not the seconds of an account).
    ``foreign_error_grace_s``: how long a cm_factory error about a node waits for our success before it counts."""

    def __init__(
        self,
        client: FrcpClient,
        cm_topic: str,
        frisbee_topic: str,
        boot_timeout_s: float,
        foreign_error_grace_s: float = FOREIGN_ERROR_GRACE_S,
    ) -> None:
        self.client = client
        self.cm_topic = cm_topic
        self.frisbee_topic = frisbee_topic
        self.boot_timeout_s = boot_timeout_s
        self.foreign_error_grace_s = foreign_error_grace_s

    def power(self, nodes: Sequence[str], status: str) -> dict[str, NodeOutcome]:
        """Switch nodes on, off or reset them; each node's outcome. FrcpUnavailable when the broker is down."""
        with self.client.session(self.cm_topic) as session:
            return self._cm(session, nodes, status, f"switch {status}")

    def load_image(self, image: str, nodes: Sequence[str]) -> dict[str, NodeOutcome]:
        """Write ``image`` on the nodes' disks and boot them from it (the order in the module docstring)."""
        with self.client.session(self.frisbee_topic, self.cm_topic) as session:
            try:
                ports = session.request(self.frisbee_topic, "request", {"ports": None})
                port = ports.props.get("ports")
                if not isinstance(port, int) or isinstance(port, bool):
                    return {node: NodeOutcome(node, f"frisbee_factory gave no port ({port!r})") for node in nodes}
                server = session.request(
                    self.frisbee_topic,
                    "create",
                    {"type": "frisbeed", "hrn": "frisbee server", "image": image, "port": port},
                )
            except (FrcpError, FrcpTimeout) as exc:  # no port or no server: no node can be loaded
                return {node: NodeOutcome(node, f"frisbee_factory could not serve {image}: {exc}") for node in nodes}
            children = [str(server.props.get("res_id") or "")]
            try:
                outcomes = self._cm(session, nodes, "start_on_pxe", "boot on PXE", current="pxe_on")
                on_pxe = [node for node in nodes if outcomes[node].ok]
                if on_pxe:
                    outcomes.update(self._frisbee(session, image, port, on_pxe, children))
                loaded = [node for node in on_pxe if outcomes[node].ok]
                if loaded:
                    outcomes.update(
                        self._cm(
                            session, loaded, "start_without_pxe", "boot off PXE", current="pxe_off", last_action="reset"
                        )
                    )
                return outcomes
            finally:
                for child in reversed(children):  # the clients, then the server
                    if child:
                        self._release(session, child)

    # -- steps -------------------------------------------------------------------------------------------------
    def _cm(
        self, session: FrcpSession, nodes: Sequence[str], status: str, what: str, current: str = "", **extra: str
    ) -> dict[str, NodeOutcome]:
        session.subscribe(self.cm_topic)
        sent_ts: int | None = None
        for node in nodes:
            state = {"node": node, "status": status, **extra}
            message = session.message("configure", {"state": state})
            sent_ts = message.ts if sent_ts is None else sent_ts
            session.send(self.cm_topic, message)
        desired = DESIRED_OF_STATUS.get(status, "")

        def done(inform: FrcpMessage) -> bool:
            if inform.itype != "STATUS":
                return False
            if current:
                return inform.props.get("current") == current
            return bool(desired) and inform.props.get("desired") == desired

        # cm_factory sends no cid, so no error naming a node can be proven ours: it may be its refusal of someone
        # else's request (omf_ec without a lease). Each is held for a short grace, in which the STATUS answering
        # our request wins; a real refusal of ours then costs the grace, not boot_timeout_s.
        answers = session.about_nodes(
            nodes,
            done,
            self.boot_timeout_s,
            f"{what} (cm_factory)",
            sent_ts=sent_ts,
            foreign_error_grace_s=self.foreign_error_grace_s,
            peer=self.cm_topic,
        )
        return _outcomes(answers.values(), f"cm_factory could not {what}")

    def _frisbee(
        self, session: FrcpSession, image: str, port: int, nodes: Sequence[str], children: list[str]
    ) -> dict[str, NodeOutcome]:
        """A frisbee client per node writes the image frisbeed serves on ``port``; ``children`` gets each client
        (to release)."""
        outcomes: dict[str, NodeOutcome] = {}
        sent_ts = int(time.time())  # a frisbee client's EXIT comes after its creation
        client_topics: set[str] = set()
        for node in nodes:
            # Our own uid for the client: subscribed before the create, so none of its informs is missed.
            uid = str(uuid.uuid4())
            session.subscribe(uid)
            client_topics.add(uid)
            try:
                client = session.request(
                    self.frisbee_topic,
                    "create",
                    {"type": "frisbee", "uid": uid, "hrn": f"frisbee client {node}", "port": port, "node_topic": node},
                )
            except (FrcpError, FrcpTimeout) as exc:
                outcomes[node] = NodeOutcome(node, f"frisbee could not write the image: {exc}")
                continue
            child = str(client.props.get("res_id") or "")
            if child:
                session.subscribe_address(child)  # where it says it is, should it not have taken our uid
                client_topics.add(topic_of(child))
                children.append(child)

        def ours(inform: FrcpMessage) -> bool:  # an error from one of our clients is the answer about its node
            return topic_of(inform.src) in client_topics

        writing = [node for node in nodes if node not in outcomes]
        answers = session.about_nodes(
            writing,
            _frisbee_finished,
            self.boot_timeout_s,
            f"write {image} (frisbee)",
            sent_ts=sent_ts,
            ours=ours,
            peer=self.frisbee_topic,
        )
        return {**outcomes, **_outcomes(answers.values(), "frisbee could not write the image")}

    def _release(self, session: FrcpSession, child: str) -> None:
        try:
            session.request(self.frisbee_topic, "release", rid=child)
        except (FrcpError, FrcpTimeout) as exc:  # the load is over either way; the controller cleans up its own
            log.warning("frisbee_factory did not release %s: %s", child, exc)


def _frisbee_finished(inform: FrcpMessage) -> bool:
    """A frisbee client's EXIT (a non-zero exit_code is an error: frisbee could not write the disk)."""
    return inform.props.get("event") == "EXIT"


def _outcomes(answers: Iterable[NodeAnswer], failed: str) -> dict[str, NodeOutcome]:
    outcomes = {}
    for answer in answers:
        reason = answer.reason
        if not reason and answer.inform is not None and str(answer.inform.props.get("exit_code", 0)) not in ("0", ""):
            reason = str(answer.inform.props.get("msg") or f"exit code {answer.inform.props['exit_code']}")
        timed_out = answer.inform is None
        outcomes[answer.node] = NodeOutcome(answer.node, f"{failed}: {reason}" if reason else "", timed_out)
    return outcomes


def failures(outcomes: Mapping[str, NodeOutcome]) -> dict[str, str]:
    """The nodes that failed and why."""
    return {node: outcome.reason for node, outcome in outcomes.items() if not outcome.ok}
