"""The OMF backend's test lab: an aggregate (``type = omf``) served over real TLS, FRCP over the real RabbitMQ
(SFA_OMF_TEST_RABBITMQ_URL) with topics of its own per test, and the stand-ins for the Ruby controllers
(user_factory; cm_factory and frisbee_factory) doing their work in a throwaway directory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pika
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.database import sqlite_url
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import Settings, read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import build_aggregate, start_aggregate
from sfa_omf.testbed.omf.backend import OmfTestbed
from sfa_omf.testbed.omf.frcp import FrcpMessage, SignatureChecker, Signer, encode
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.roots import load_trusted_roots
from tests.testbed.omf.node_controllers_standin import NodeControllersStandIn
from tests.testbed.omf.user_factory_standin import UserFactoryStandIn
from tests.tls_harness import proxy

NODES = ("node1", "node2")
SLICE = "urn:publicid:IDN+lab+slice+demo"
ANN = "urn:publicid:IDN+lab+user+ann"
IMAGE = "baseline.ndz"


def node_urn(name: str) -> str:
    return f"urn:publicid:IDN+lab+node+{name}"


NODE = node_urn("node1")


@dataclass
class Lab:
    directory: Path
    settings: Settings
    chain: str
    key: str
    slice_cred: str


def make_lab(directory: Path) -> Lab:
    report = init_directory(str(directory), "lab", ("ann",))
    sfi = Path(report.sfi_dirs["ann"])
    return Lab(
        directory,
        read_config(str(directory / "sfa-omf.conf")),
        str(sfi / "lab.ann.user.gid"),
        str(sfi / "lab.ann.pkey"),
        (sfi / "lab.ann-lab.demo.slice.cred").read_text(),
    )


@dataclass
class Running:
    am: Any
    standin: UserFactoryStandIn
    nodes: NodeControllersStandIn
    root: Path
    aggregate: Any
    settings: Settings

    @property
    def backend(self) -> OmfTestbed:
        backend = self.aggregate.backend
        assert isinstance(backend, OmfTestbed)
        return backend

    def at(self, moment: datetime) -> None:
        """Move the aggregate's and the slot keeper's clocks to ``moment``."""
        self.aggregate.clock = lambda: moment
        assert self.backend.slots is not None
        self.backend.slots.clock = lambda: moment


def serve(running_reactor: Any, lab: Lab, tmp_path: Path, url: str, **frcp: Any) -> Iterator[Running]:
    """The lab's aggregate with its stand-ins; ``frcp`` overrides settings (frcp_timeout_s, frcp_amqp_url...)."""
    prefix = uuid.uuid4().hex[:8]  # topics of this test only: other engineers use the same broker
    wanted: dict[str, Any] = {
        "frcp_amqp_url": url,
        "frcp_user_factory": f"user_factory-{prefix}",
        "frcp_cm_factory": f"cm_factory-{prefix}",
        "frcp_frisbee_factory": f"frisbee_factory-{prefix}",
        "frcp_timeout_s": 20,
        "frcp_boot_timeout_s": 20,
        "frcp_slot_period_s": 3600,  # the server's own pass runs once at start; the tests run the others
        **frcp,
    }
    settings = replace(
        lab.settings, aggregate_type="omf", database_url=sqlite_url(str(tmp_path / "calendar.sqlite")), **wanted
    )
    authority = LocalAuthority.load(str(lab.directory), "lab")
    checker = SignatureChecker(load_trusted_roots(settings.trusted_roots_dir))
    standin = UserFactoryStandIn(
        url, wanted["frcp_user_factory"], tmp_path / "root", Signer(authority.key, authority.chain, "uf"), checker
    )
    nodes = NodeControllersStandIn(
        url,
        wanted["frcp_cm_factory"],
        wanted["frcp_frisbee_factory"],
        tmp_path / "testbed",
        Signer(authority.key, authority.chain, "cm"),
        checker,
    )
    standin.start()
    nodes.start()
    (tmp_path / "testbed" / "images" / IMAGE).write_bytes(b"an image of the baseline system\n" * 64)
    aggregate = build_aggregate(settings)
    assert isinstance(aggregate.backend, OmfTestbed) and aggregate.backend.user_factory is not None
    for name in NODES:
        aggregate.inventory.add_node(NodeSpec(node_urn(name), name, disk_images=({"name": IMAGE},)))
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)
    try:
        yield Running(
            proxy(f"https://127.0.0.1:{server.port_number}/", lab.chain, lab.key),
            standin,
            nodes,
            tmp_path / "root",
            aggregate,
            settings,
        )
    finally:
        blockingCallFromThread(running_reactor, server.stop)
        standin.stop()
        nodes.stop()


#: The hour the running test began in (conftest.py sets it for each test): the tests book slot_start() and read it
#: again later, by which time the clock may have passed the hour.
_test_hour: datetime | None = None


def begin_test_hour() -> None:
    """Count this test's slots from the hour it begins in (conftest.py, before each test)."""
    global _test_hour
    _test_hour = utcnow().replace(minute=0, second=0, microsecond=0)


def end_test_hour() -> None:
    global _test_hour
    _test_hour = None


def slot_start() -> datetime:
    """The start of the slot the tests book: two hours after the hour the test began in."""
    hour = _test_hour if _test_hour is not None else utcnow().replace(minute=0, second=0, microsecond=0)
    return hour + timedelta(hours=2)


def rspec(images: dict[str, str] | None = None) -> str:
    """One lease two hours ahead on ``images``' nodes (name -> image, "" for none); node1 alone by default."""
    images = images if images is not None else {"node1": ""}
    start = slot_start()
    window = (format_time(start), format_time(start + timedelta(hours=1)))
    nodes = "".join(
        f'<node client_id="{name}" component_id="{node_urn(name)}" exclusive="true">'
        + (f'<sliver_type name="raw-pc"><disk_image name="{image}"/></sliver_type>' if image else "")
        + '<ol:lease_ref id_ref="l"/></node>'
        for name, image in images.items()
    )
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{window[0]}" valid_until="{window[1]}"/>{nodes}</rspec>'
    )


def users(*keys: str) -> dict[str, Any]:
    return {"geni_users": [{"urn": ANN, "keys": list(keys)}]}


def slivers(running: Running, lab: Lab) -> list[dict[str, Any]]:
    status = running.am.Status([SLICE], [lab.slice_cred], {})
    assert status["code"]["geni_code"] == 0, status["output"]
    return list(status["value"]["geni_slivers"])


def allocation_states(running: Running, lab: Lab) -> list[str]:
    return [sliver["geni_allocation_status"] for sliver in slivers(running, lab)]


def publish_signed(url: str, topic: str, signer: Signer, message: FrcpMessage) -> None:
    """Publish ``message`` signed by ``signer`` on ``topic`` of the real broker at ``url``, as a controller (or
    someone posing as one) would."""
    body, content_type = encode(message, signer)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().basic_publish(
            exchange=topic,
            routing_key="o.info",
            body=body,
            properties=pika.BasicProperties(content_type=content_type, message_id=message.mid),
        )
    finally:
        connection.close()
