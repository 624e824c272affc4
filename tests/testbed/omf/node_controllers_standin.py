"""STAND-IN for OMF 6's cm_factory and frisbee_factory resource controllers (Ruby, nitos_testbed_rc), which cannot be
installed here (RubyGems is not reachable). A conformance fixture written from their documented messages
(/work/shared/reference/omf.md), not a port of their code. It speaks real FRCP over the real RabbitMQ, signed and
checked (frcp_standin.py).

Instead of chassis-manager cards, PXE symlinks and disks, it keeps each node's power state and writes a loaded image
into ``<root>/disks/<node>`` (the image's bytes, read from ``<root>/images/<image>``), and journals every step in
``steps`` in the order it happened, so a test can check what a real testbed would have been asked to do.

- cm_factory topic: ``configure {state: {node, status}}`` -> STATUS {node_name, current, desired} on its topic, no
  cid (on: booting/running; off: running/stopped; reset: resetted/resetted; start_on_pxe: pxe_on/pxe_on;
  start_without_pxe: pxe_off/pxe_off), or ERROR {event_type, exit_code -1, node_name, msg};
- frisbee_factory topic: ``request {ports}`` -> STATUS {ports}; ``create {type: frisbeed, image, port}`` and
  ``create {type: frisbee, port, node_topic}`` -> CREATION.OK {res_id}; a frisbee client then informs, on its own
  topic and a moment later (writing a disk takes time), STDOUT {node, msg: "50%"} and EXIT {node, msg};
  ``release {rid}`` -> RELEASED. A create's ``uid`` names the child (its topic), as OMF 6's resource proxies do.

``fail[(node, status)] = (event_type, msg)`` makes cm_factory answer that error; a node in ``silent`` is never
answered (a controller that hangs); ``foreign_error[node] = (event_type, msg)``: when a request about the node comes,
cm_factory first informs that error about it, as its refusal of someone else's request about the node (no cid: it
reads like a refusal of ours), and answers the request itself ``FOREIGN_ERROR_LEAD_S`` later;
``frisbee_fail[node] = msg`` makes that node's disk write fail.
``late_creation`` (node names): frisbee_factory answers the creation of those nodes' clients only once every client
created so far has finished writing (a busy factory, and the CREATION.OK race omf_sfa's users met): their EXITs come
before that CREATION.OK, and the earlier clients' EXITs while the aggregate waits for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sfa_omf.testbed.omf.frcp import FrcpMessage, SignatureChecker, Signer, address, topic_of
from tests.testbed.omf.frcp_standin import FrcpStandIn

#: cm_factory's status -> the (current, desired) it informs when done.
CM_ANSWERS = {
    "on": ("booting", "running"),
    "off": ("running", "stopped"),
    "reset": ("resetted", "resetted"),
    "start_on_pxe": ("pxe_on", "pxe_on"),
    "start_without_pxe": ("pxe_off", "pxe_off"),
}
POWER_AFTER = {"on": "on", "off": "off", "reset": "on", "start_on_pxe": "on", "start_without_pxe": "on"}
FIRST_PORT = 7000
WRITE_DELAY_S = 0.2
#: How long after a foreign error (``foreign_error``) cm_factory answers the request it is working on.
FOREIGN_ERROR_LEAD_S = 0.3


class NodeControllersStandIn(FrcpStandIn):
    """cm_factory on ``cm_topic`` and frisbee_factory on ``frisbee_topic`` (see the module docstring)."""

    def __init__(
        self, url: str, cm_topic: str, frisbee_topic: str, root: Path, signer: Signer, checker: SignatureChecker
    ) -> None:
        super().__init__(url, cm_topic, signer, checker)
        self.frisbee_topic = frisbee_topic
        self.root = root
        self.power: dict[str, str] = {}
        self.steps: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], tuple[str, str]] = {}
        self.silent: set[str] = set()
        self.foreign_error: dict[str, tuple[str, str]] = {}
        self.frisbee_fail: dict[str, str] = {}
        self.servers: dict[str, tuple[str, int]] = {}  # frisbeed child topic -> (image, port)
        self.clients: dict[str, tuple[str, int]] = {}  # frisbee child topic -> (node, port)
        self.late_creation: set[str] = set()
        self._writing: set[str] = set()  # frisbee clients still writing
        self._held_creations: list[FrcpMessage] = []  # CREATION.OKs held back (late_creation)
        self._next_port = FIRST_PORT

    def start(self) -> None:
        (self.root / "disks").mkdir(parents=True, exist_ok=True)
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        super().start()

    def work(self, topic: str, message: FrcpMessage) -> FrcpMessage | None:
        if topic == self.topic:
            return self._cm(message)
        if topic == self.frisbee_topic:
            return self._frisbee(message)
        return self.inform(message, "ERROR", {"reason": f"{message.op} is not served on {topic}"}, topic)

    def topics(self) -> list[str]:
        return [self.topic, self.frisbee_topic]

    # -- cm_factory -----------------------------------------------------------------------------------------
    def _cm(self, message: FrcpMessage) -> FrcpMessage | None:
        state = message.props.get("state")
        if message.op != "configure" or not isinstance(state, dict):
            return self.inform(message, "ERROR", {"reason": "cm_factory configures state {node, status}"})
        node, status = str(state.get("node", "")), str(state.get("status", ""))
        self.steps.append((status, node))
        if node in self.silent:
            return None
        if node in self.foreign_error:
            event_type, msg = self.foreign_error[node]
            props_of_refusal = {"event_type": event_type, "exit_code": "-1", "node_name": node, "msg": msg}
            self.publish(self.topic, self.inform(None, "ERROR", props_of_refusal))
            answer = self._cm_answer(node, status)
            self.later(FOREIGN_ERROR_LEAD_S, lambda: self.publish(self.topic, answer))
            return None
        return self._cm_answer(node, status)

    def _cm_answer(self, node: str, status: str) -> FrcpMessage:
        """cm_factory's inform after doing ``status`` on ``node`` (or its refusal, ``fail``)."""
        if (node, status) in self.fail:
            event_type, msg = self.fail[(node, status)]
            props: dict[str, Any] = {"event_type": event_type, "exit_code": "-1", "node_name": node, "msg": msg}
            return self.inform(None, "ERROR", props)
        if status not in CM_ANSWERS:
            return self.inform(None, "WARN", {"reason": f"Cannot switch node to unknown state '{status}'!"})
        self.power[node] = POWER_AFTER[status]
        current, desired = CM_ANSWERS[status]
        return self.inform(None, "STATUS", {"node_name": node, "current": current, "desired": desired})

    # -- frisbee_factory ------------------------------------------------------------------------------------
    def _frisbee(self, message: FrcpMessage) -> FrcpMessage | None:
        props = message.props
        if message.op == "request" and "ports" in props:
            port, self._next_port = self._next_port, self._next_port + 1
            self.steps.append(("ports", str(port)))
            return self.inform(message, "STATUS", {"ports": port}, self.frisbee_topic)
        if message.op == "create" and props.get("type") == "frisbeed":
            image = str(props.get("image", ""))
            if not (self.root / "images" / image).is_file():
                return self.inform(message, "CREATION.FAILED", {"reason": f"no image {image}"}, self.frisbee_topic)
            child = f"frisbeed-{len(self.servers)}-{self.frisbee_topic}"
            self.servers[child] = (image, int(props.get("port", 0)))
            self.steps.append(("frisbeed", image))
            return self._created(message, child)
        if message.op == "create" and props.get("type") == "frisbee":
            node = str(props.get("node_topic", ""))
            child = str(props.get("uid") or f"frisbee-{node}-{self.frisbee_topic}")
            self.clients[child] = (node, int(props.get("port", 0)))
            self.steps.append(("frisbee", node))
            self.listen(child)
            self._writing.add(child)
            self.later(WRITE_DELAY_S, lambda: self._write_disk(child))
            if node in self.late_creation:
                self._held_creations.append(self._created(message, child))
                return None
            return self._created(message, child)
        if message.op == "release":
            child = topic_of(message.rid or "")
            # The step names the kind released (a client's topic may be the uid its create gave).
            kind = "frisbeed" if child in self.servers else "frisbee" if child in self.clients else child.split("-")[0]
            self.servers.pop(child, None)
            self.clients.pop(child, None)
            self.steps.append(("release", kind))
            return self.inform(message, "RELEASED", {"res_id": message.rid}, self.frisbee_topic)
        return self.inform(message, "ERROR", {"reason": f"frisbee_factory does not {message.op} {sorted(props)}"})

    def _created(self, message: FrcpMessage, child: str) -> FrcpMessage:
        return self.inform(message, "CREATION.OK", {"res_id": address(self.host, child)}, self.frisbee_topic)

    def _write_disk(self, child: str) -> None:
        """What the frisbee client on the node does: receive the image from frisbeed's port, write the disk; then
        the CREATION.OKs held back (late_creation) go out once no client is writing any more."""
        self._write_disk_now(child)
        self._writing.discard(child)
        if not self._writing:
            for created in self._held_creations:
                self.publish(self.frisbee_topic, created)
            self._held_creations.clear()

    def _write_disk_now(self, child: str) -> None:
        node, port = self.clients.get(child, ("", 0))
        served = [image for image, server_port in self.servers.values() if server_port == port]
        progress = {"status_type": "FRISBEE", "event": "STDOUT", "node": node, "msg": "50%"}
        self.publish(child, self.inform(None, "STATUS", progress, child))
        if node in self.frisbee_fail or not served:
            reason = self.frisbee_fail.get(node, f"no frisbeed serves port {port}")
            failed = {"event_type": "FRISBEE", "exit_code": "-1", "node": node, "msg": reason}
            self.publish(child, self.inform(None, "ERROR", failed, child))
            return
        (self.root / "disks" / node).write_bytes((self.root / "images" / served[0]).read_bytes())
        self.steps.append(("written", node))
        done = {"status_type": "FRISBEE", "event": "EXIT", "node": node, "msg": f"Wrote {served[0]}"}
        self.publish(child, self.inform(None, "STATUS", done, child))
