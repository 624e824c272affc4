"""Manifests: the slice's leases and slivers, with login services; what a client's request becomes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from lxml import etree

from rspec.manifest import write_manifest
from rspec.model import Login, Manifest, ManifestLease, ManifestSliver, Request
from rspec.parse_request import parse_request
from rspec.validate import validate
from tests.rspec.conftest import CM, NOW, POLICY, node_urn, read

NS = {"g": "http://www.geni.net/resources/rspec/3", "ol": "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"}
SLICE = "urn:publicid:IDN+onelab:inria+slice+myslice"
LEASE_IDS = ("4d6f2b9e-3c1a-4e5b-9f00-2a7c1d3e5b61", "9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d")


def manifest_for(request: Request) -> Manifest:
    """What the aggregate answers once the request is granted (as am/ will build it from the calendar)."""
    leases = tuple(
        ManifestLease(
            lease_id,
            lease.start,
            lease.end,
            client_id=lease.client_id,
            sliver_id=f"urn:publicid:IDN+omf:testbed+sliver+{lease_id}",
        )
        for lease_id, lease in zip(LEASE_IDS, request.leases, strict=False)
        if lease.start is not None and lease.end is not None
    )
    slivers = tuple(
        ManifestSliver(
            sliver_id=f"urn:publicid:IDN+omf:testbed+sliver+{node.client_id}",
            client_id=node.client_id,
            component_id=node.component_id or node_urn(node.client_id),
            component_manager_id=CM,
            component_name=node.client_id,
            sliver_type=node.sliver_type,
            disk_image=node.disk_image,
            lease_ids=tuple(m.id for m, r in zip(leases, request.leases, strict=False) if node.client_id in r.nodes),
            hostname=f"{node.client_id}.testbed.example.org",
            logins=(Login("myslice", f"{node.client_id}.testbed.example.org"), Login("alice", "gw.example.org", 2222)),
        )
        for node in request.nodes
    )
    return Manifest(slivers, leases, NOW, NOW + timedelta(days=7), SLICE, POLICY.grain)


MANIFEST = manifest_for(parse_request(read("two-slots-ol-jfed.xml"), now=NOW, policy=POLICY))


def test_manifest_is_valid_against_ours_and_the_geni_base_schema() -> None:
    data = write_manifest(MANIFEST)
    assert validate(data) == []
    assert validate(data, geni_base=True) == []


def test_with_sfa_leases_it_is_valid_against_ours() -> None:
    data = write_manifest(MANIFEST, sfa_leases=True)
    assert validate(data) == []
    assert {p.element for p in validate(data, geni_base=True)} == {"lease"}
    root = etree.fromstring(data)
    leases = [(e.get("slice_id"), e.get("start_time"), e.get("duration")) for e in root.iterfind("g:lease", NS)]
    assert leases == [(SLICE, "1796119200", "2"), (SLICE, "1796133600", "4")]


def test_sfa_leases_need_the_grain() -> None:
    with pytest.raises(ValueError, match="grain"):
        write_manifest(Manifest(MANIFEST.slivers, MANIFEST.leases, NOW), sfa_leases=True)


def test_leases_answer_with_the_clients_names() -> None:
    root = etree.fromstring(write_manifest(MANIFEST))
    leases = [dict(e.attrib) for e in root.iterfind("ol:lease", NS)]
    assert leases[0] == {
        "id": LEASE_IDS[0],
        "client_id": "morning",
        "sliver_id": f"urn:publicid:IDN+omf:testbed+sliver+{LEASE_IDS[0]}",
        "valid_from": "2026-12-01T10:00:00Z",
        "valid_until": "2026-12-01T11:00:00Z",
    }
    assert leases[1]["client_id"] == "afternoon"


def test_slivers_with_lease_refs_host_and_logins() -> None:
    root = etree.fromstring(write_manifest(MANIFEST))
    node2 = root.findall("g:node", NS)[1]
    assert node2.get("client_id") == "node2" and node2.get("sliver_id") == "urn:publicid:IDN+omf:testbed+sliver+node2"
    assert node2.get("component_id") == node_urn("node2") and node2.get("exclusive") == "true"
    assert [r.get("id_ref") for r in node2.iterfind("ol:lease_ref", NS)] == list(LEASE_IDS)
    assert node2.find("g:host", NS).get("name") == "node2.testbed.example.org"  # type: ignore[union-attr]
    logins = [dict(e.attrib) for e in node2.iterfind("g:services/g:login", NS)]
    assert logins == [
        {"authentication": "ssh-keys", "hostname": "node2.testbed.example.org", "port": "22", "username": "myslice"},
        {"authentication": "ssh-keys", "hostname": "gw.example.org", "port": "2222", "username": "alice"},
    ]
    image = node2.find("g:sliver_type/g:disk_image", NS)
    assert image is not None and image.get("name") == "urn:publicid:IDN+omf:testbed+image+ubuntu-22.04"
    assert root.get("type") == "manifest" and root.get("expires") == "2026-12-07T09:00:00Z"


def test_an_empty_manifest_is_valid() -> None:
    assert validate(write_manifest(Manifest((), (), NOW))) == []
