"""Images through the AM API v3 over real TLS on loopback: advertised per node, an unknown or unfit image refused at
Allocate with the labels that node can run (nothing booked), the image recorded on the lease and shown by
Describe/Provision, the backend told per node what to install, and the image kept while the lease uses it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.images.provisioning import PERJOB
from sfa_omf.images.store import ImageStore
from sfa_omf.server.tls import ServerTls
from sfa_omf.server.xmlrpc import XmlRpcResource, make_site
from sfa_omf.testbed.embedded import EmbeddedTestbed
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.conftest import DemoPki
from tests.images.conftest import image_file
from tests.tls_harness import Listener, proxy, reactor

GENI_V3 = {"type": "GENI", "version": "3"}
GENI = "{http://www.geni.net/resources/rspec/3}"


def node_urn(name: str) -> str:
    return f"urn:publicid:IDN+testbed+node+{name}"


@dataclass
class Site:
    url: str
    aggregate: Aggregate
    store: ImageStore
    backend: EmbeddedTestbed

    def alice(self, pki: DemoPki) -> Any:
        sfi = pki.users["alice"].sfi_dir
        return proxy(self.url, str(sfi / "testbed.alice.user.gid"), str(sfi / "testbed.alice.pkey"))


@pytest.fixture
def site(listener: Listener, pki: DemoPki, tmp_path: Path) -> Site:
    """node1, node2 (icarus; node2 declares its own image "vendor") and big1 (server); images deb12 (any node) and
    srv (server nodes only); the embedded backend in perjob mode."""
    roots_dir = tmp_path / "trusted_roots"
    shutil.copytree(pki.directory / "trusted_roots", roots_dir)
    database = Database(sqlite_url(str(tmp_path / "am.sqlite")))
    database.upgrade()
    store = ImageStore(database, tmp_path / "images")
    store.add(image_file(tmp_path / "d.img", 5000), "deb12", "root", utcnow(), os_name="Debian", version="12")
    store.add(image_file(tmp_path / "s.img", 5000, seed=3), "srv", "root", utcnow(), hardware_types=["server"])
    backend = EmbeddedTestbed(database, PERJOB)
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed"),
        database,
        CredentialVerifier(load_trusted_roots(str(roots_dir)), VerdictCache()),
        backend=backend,
        images=store,
    )
    aggregate.inventory.add_node(NodeSpec(node_urn("node1"), "node1", hardware_type="icarus"))
    aggregate.inventory.add_node(
        NodeSpec(node_urn("node2"), "node2", hardware_type="icarus", disk_images=({"name": "vendor", "os": "Ubuntu"},))
    )
    aggregate.inventory.add_node(NodeSpec(node_urn("big1"), "big1", hardware_type="server"))
    site = make_site(
        {}, XmlRpcResource(ApiV3(aggregate), listener.pool(4), reactor, 4 * 1024 * 1024), 4 * 1024 * 1024, 60
    )
    tls = ServerTls(str(pki.directory / "aggregate" / "am.pkey"), str(pki.directory / "aggregate" / "am.gid"))
    return Site(f"https://127.0.0.1:{listener.listen(site, tls)}/", aggregate, store, backend)


def request(nodes: dict[str, str], hours_from_now: int = 2) -> str:
    """nodes: name -> image label ("" for none), in one lease."""
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours_from_now)
    node_xml = "".join(
        f'<node client_id="{name}" component_id="{node_urn(name)}" exclusive="true">'
        + (f'<sliver_type name="raw-pc"><disk_image name="{image}"/></sliver_type>' if image else "")
        + '<ol:lease_ref id_ref="l1"/></node>'
        for name, image in nodes.items()
    )
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l1" valid_from="{format_time(start)}" '
        f'valid_until="{format_time(start + timedelta(hours=1))}"/>{node_xml}</rspec>'
    )


def cred(xml: str) -> dict[str, str]:
    return {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": xml}


def ok(answer: dict[str, Any]) -> Any:
    assert answer["code"]["geni_code"] == 0, answer["output"]
    return answer["value"]


def images_by_node(document: str) -> dict[str, dict[str, str | None]]:
    """component_name -> {image name: os} from an advertisement or manifest."""
    root = etree.fromstring(document.encode())
    return {
        node.get("component_name") or node.get("client_id"): {
            image.get("name"): image.get("os") for image in node.iter(f"{GENI}disk_image")
        }
        for node in root.iter(f"{GENI}node")
    }


def test_images_are_advertised_on_the_nodes_able_to_run_them(site: Site, pki: DemoPki) -> None:
    user = pki.users["alice"]
    ad = ok(site.alice(pki).ListResources([cred(user.user_cred)], {"geni_rspec_version": GENI_V3}))
    assert images_by_node(ad) == {
        "big1": {"deb12": "Debian", "srv": None},
        "node1": {"deb12": "Debian"},
        "node2": {"vendor": "Ubuntu", "deb12": "Debian"},
    }


@pytest.mark.parametrize(
    ("nodes", "words"),
    [
        (
            {"node1": "nope"},
            ["unknown disk image 'nope' for node1", "can run (as ListResources advertises them): deb12"],
        ),
        ({"node1": "deb12", "node2": "gone"}, ["unknown disk image 'gone' for node2", "deb12, vendor"]),
        ({"node1": "srv"}, ["disk image 'srv' does not run on node1 (hardware type icarus", "runs on server"]),
        ({"node1": "vendor"}, ["unknown disk image 'vendor' for node1"]),
    ],
)
def test_an_image_the_node_cannot_run_is_refused_and_nothing_is_booked(
    site: Site, pki: DemoPki, nodes: dict[str, str], words: list[str]
) -> None:
    user = pki.users["alice"]
    answer = site.alice(pki).Allocate(pki.slice_urn, [cred(user.slice_cred)], request(nodes), {})
    assert answer["code"]["geni_code"] == GeniCode.BADARGS, answer
    for word in words:
        assert word in answer["output"], answer["output"]
    assert "Nothing was booked" in answer["output"]
    assert site.aggregate.bookings.leases(active_only=False) == []


def test_the_image_is_recorded_provisioned_described_and_kept_while_used(site: Site, pki: DemoPki) -> None:
    user = pki.users["alice"]
    client = site.alice(pki)
    allocated = ok(
        client.Allocate(
            pki.slice_urn, [cred(user.slice_cred)], request({"node1": "deb12", "big1": "deb12", "node2": ""}), {}
        )
    )
    assert images_by_node(allocated["geni_rspec"]) == {"node1": {"deb12": None}, "big1": {"deb12": None}, "node2": {}}
    provisioned = ok(client.Provision([pki.slice_urn], [cred(user.slice_cred)], {"geni_rspec_version": GENI_V3}))
    assert {s["geni_allocation_status"] for s in provisioned["geni_slivers"]} == {"geni_provisioned"}
    (lease,) = site.aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert {sliver.node: sliver.disk_image for sliver in lease.slivers} == {
        node_urn("node1"): "deb12",
        node_urn("big1"): "deb12",
        node_urn("node2"): "",
    }
    # The backend was told, node by node, what to install (perjob: every node asking for an image).
    plan = {step.node: (step.image, step.reprovision) for step in site.backend.deployments[lease.id]}
    assert plan == {
        node_urn("node1"): ("deb12", True),
        node_urn("big1"): ("deb12", True),
        node_urn("node2"): ("", False),
    }
    described = ok(client.Describe([pki.slice_urn], [cred(user.slice_cred)], {"geni_rspec_version": GENI_V3}))
    assert images_by_node(described["geni_rspec"])["node1"] == {"deb12": None}

    with pytest.raises(GeniError) as refused:
        site.store.remove("deb12", utcnow())
    assert lease.id in refused.value.message
    ok(client.Delete([pki.slice_urn], [cred(user.slice_cred)], {}))
    assert site.store.remove("deb12", utcnow()).label == "deb12"  # nothing uses it any more


def test_an_image_removed_while_allocating_fails_the_call_and_books_nothing(
    site: Site, pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The removal comes between Allocate's check and its booking (injected: the two race otherwise)."""
    user = pki.users["alice"]
    book = site.aggregate.bookings.book

    def removal_first(*args: Any, **kwargs: Any) -> Any:
        site.store.remove("deb12", utcnow())
        return book(*args, **kwargs)

    monkeypatch.setattr(site.aggregate.bookings, "book", removal_first)
    answer = site.alice(pki).Allocate(pki.slice_urn, [cred(user.slice_cred)], request({"node1": "deb12"}), {})
    assert answer["code"]["geni_code"] == GeniCode.BADARGS, answer
    assert "unknown disk image 'deb12'" in answer["output"]
    assert site.aggregate.bookings.leases() == []
