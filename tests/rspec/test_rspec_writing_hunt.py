"""Advertisements and manifests as a hunt found them wrong (session 20): an SFA lease's duration written in the
aggregate's grain on a node with its own; a lease booked from now shown ending a grain late in SFA's view; a node
booked in two leases written as two manifest <node>s with one client_id; manifests without SFA's <lease> elements,
the root's expires or the ol:lease's sliver_id."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from rspec.advertisement import write_advertisement
from rspec.manifest import write_manifest
from rspec.model import AdvertisedNode, Advertisement, Booking, LeaseView, Manifest, ManifestLease, ManifestSliver
from rspec.validate import validate
from rspec.writing import sfa_lease_slot
from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.calendar.records import LeaseRecord, NodeSpec
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.times import format_time, parse_time, utcnow
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.am.conftest import Clock, aggregate_on
from tests.calendar.conftest import fresh_database, node_urn
from tests.conftest import DemoPki

GENI = "http://www.geni.net/resources/rspec/3"
OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
NS = {"g": GENI, "ol": OL}
V3 = {"geni_rspec_version": {"type": "GENI", "version": "3"}}
GRAIN_S = 1800  # the aggregate's default grain
CM = "urn:publicid:IDN+testbed+authority+cm"

SfaLease = tuple[str | None, int, int, tuple[str, ...]]  # slice_id, start_time, duration, component_ids


@pytest.fixture
def clock() -> Clock:
    """The aggregate's clock (now, or ``ahead`` of it)."""
    return Clock()


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki, clock: Clock) -> Iterator[Aggregate]:
    """Nodes n1, n2 in the aggregate's grain (30 minutes) and "big" in a grain of its own (one hour), on the
    ``clock`` fixture's time."""
    database = fresh_database(request.param, tmp_path)
    made = Aggregate(
        AggregateSettings(authority_hrn="testbed"),
        database,
        CredentialVerifier(pki.roots, VerdictCache()),
        clock=clock,
    )
    assert made.policy.default_grain_s == GRAIN_S
    for name in ("n1", "n2"):
        made.inventory.add_node(NodeSpec(node_urn(name), name))
    made.inventory.add_node(NodeSpec(node_urn("big"), "big", grain_s=3600))
    try:
        yield made
    finally:
        database.dispose()


def _hour(hours: int) -> datetime:
    """A whole hour ``hours`` from now."""
    return utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours)


def _ol_lease(name: str, start: datetime, hours: int = 1) -> str:
    end = start + timedelta(hours=hours)
    return f'<ol:lease client_id="{name}" valid_from="{format_time(start)}" valid_until="{format_time(end)}"/>'


def _node(client_id: str, name: str, *lease_names: str) -> str:
    refs = "".join(f'<ol:lease_ref id_ref="{lease}"/>' for lease in lease_names)
    return f'<node client_id="{client_id}" component_id="{node_urn(name)}" exclusive="true">{refs}</node>'


def _allocate(aggregate: Aggregate, pki: DemoPki, body: str) -> dict[str, Any]:
    alice = pki.users["alice"]
    rspec = f'<rspec type="request" xmlns="{GENI}" xmlns:ol="{OL}">{body}</rspec>'
    return aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, {})


def _describe(aggregate: Aggregate, pki: DemoPki, **options: Any) -> dict[str, Any]:
    alice = pki.users["alice"]
    return aggregate.describe(alice.chain, [pki.slice_urn], [alice.slice_cred], {**V3, **options})


def _advertised_to_bob(aggregate: Aggregate, pki: DemoPki, list_leases: str) -> str:
    bob = pki.users["bob"]
    return aggregate.list_resources(bob.chain, [bob.user_cred], {**V3, "list_leases": list_leases})


def _sfa_leases(document: str) -> list[SfaLease]:
    root = etree.fromstring(document.encode())
    return sorted(
        (
            lease.get("slice_id"),
            int(lease.get("start_time", "")),
            int(lease.get("duration", "")),
            tuple(node.get("component_id", "") for node in lease.iterfind("g:node", NS)),
        )
        for lease in root.iterfind("g:lease", NS)
    )


def _leases(aggregate: Aggregate, pki: DemoPki) -> list[LeaseRecord]:
    return sorted(aggregate.bookings.leases(slice_urn=pki.slice_urn), key=lambda lease: lease.start)


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


# -- 1. an SFA lease's duration counts grains of its nodes' own grain -------------------------------------------------
def test_an_sfa_lease_counts_grains_of_its_nodes_own_grain(aggregate: Aggregate, pki: DemoPki) -> None:
    """One hour on "big" (one-hour grain) and n1 (30-minute grain) in one ol lease: SFA's view shows two leases, one
    grain of "big" and two of n1. It showed one lease of duration 2 for both, which an sfi user reads as two hours
    on "big"."""
    start = _hour(3)
    _allocate(aggregate, pki, _ol_lease("a", start) + _node("x", "big", "a") + _node("y", "n1", "a"))
    expected = [
        (pki.slice_urn, _epoch(start), 1, (node_urn("big"),)),  # one grain of an hour
        (pki.slice_urn, _epoch(start), 2, (node_urn("n1"),)),  # two grains of 30 minutes
    ]
    assert _sfa_leases(_advertised_to_bob(aggregate, pki, "leases")) == expected
    assert _sfa_leases(_advertised_to_bob(aggregate, pki, "all")) == expected
    assert _sfa_leases(_describe(aggregate, pki, list_leases="all")["geni_rspec"]) == expected


def test_sfa_leases_of_one_slot_are_grouped_by_grain_in_both_writers() -> None:
    """The writers alone: bookings of one slice and slot are one SFA lease per grain of their nodes."""
    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    end = start + timedelta(hours=2)
    nodes = (
        AdvertisedNode(node_urn("big"), CM, "big", grain=timedelta(hours=1)),
        AdvertisedNode(node_urn("n1"), CM, "n1"),
        AdvertisedNode(node_urn("n2"), CM, "n2"),
    )
    slice_urn = "urn:publicid:IDN+testbed+slice+demo"
    bookings = (
        Booking("a", start, end, (node_urn("big"), node_urn("n1")), slice_urn),
        Booking("b", start, end, (node_urn("n2"),), slice_urn),
    )
    ad = Advertisement(nodes, bookings, start - timedelta(hours=1), timedelta(minutes=30))
    data = write_advertisement(ad, LeaseView.SFA_LEASES)
    assert validate(data) == []
    expected = [
        (slice_urn, _epoch(start), 2, (node_urn("big"),)),
        (slice_urn, _epoch(start), 4, (node_urn("n1"), node_urn("n2"))),
    ]
    assert _sfa_leases(data.decode()) == expected
    slivers = tuple(
        ManifestSliver(
            f"urn:sliver+{node.component_name}",
            node.component_name,
            node.component_id,
            CM,
            lease_ids=("a",),
            grain=node.grain,
        )
        for node in nodes
    )
    manifest = Manifest(slivers, (ManifestLease("a", start, end),), start, None, slice_urn, timedelta(minutes=30))
    data = write_manifest(manifest, sfa_leases=True)
    assert validate(data) == []
    assert _sfa_leases(data.decode()) == expected


# -- 2. a lease booked from now (first grain partial) is not shown ending late -----------------------------------------
def test_a_lease_booked_from_now_is_shown_from_its_grain_and_ending_when_it_ends(
    aggregate: Aggregate, pki: DemoPki, clock: Clock
) -> None:
    """Booked at 28 min 38 s past the hour with no time given, the lease runs from then to a grain boundary. SFA's
    view wrote start_time=then and the grains counted from then, rounded up: its end a grain late (by 28 min 38 s).
    It is now written from the start's grain, so the end is the lease's."""
    now = utcnow()
    clock.ahead = now.replace(minute=28, second=38, microsecond=0) + timedelta(hours=1) - now
    _allocate(aggregate, pki, '<node client_id="y" component_id="' + node_urn("n2") + '" exclusive="true"/>')
    (lease,) = _leases(aggregate, pki)
    start_s, end_s = _epoch(lease.start), _epoch(lease.end)
    assert start_s % GRAIN_S and not end_s % GRAIN_S  # booked from now: the first grain partial
    floored = start_s - start_s % GRAIN_S
    grains = (end_s - floored) // GRAIN_S
    expected = [(pki.slice_urn, floored, grains, (node_urn("n2"),))]
    assert _sfa_leases(_advertised_to_bob(aggregate, pki, "leases")) == expected
    assert _sfa_leases(_describe(aggregate, pki, list_leases="leases")["geni_rspec"]) == expected


def test_the_sfa_slot_of_a_span_is_the_grains_it_touches() -> None:
    """The one rule both writers use."""
    grain = timedelta(minutes=30)
    at = datetime(2026, 12, 1, 16, 0, tzinfo=UTC)
    assert sfa_lease_slot(at, at + timedelta(hours=1), grain) == (_epoch(at), 2)
    partial = at + timedelta(minutes=28, seconds=38)
    assert sfa_lease_slot(partial, at + timedelta(minutes=90), grain) == (_epoch(at), 3)  # 16:00 to 17:30
    assert sfa_lease_slot(at, at + timedelta(minutes=10), grain) == (_epoch(at), 1)
    assert sfa_lease_slot(at, at + timedelta(hours=3), timedelta(hours=1)) == (_epoch(at), 3)


# -- 3. one manifest <node> per client_id and node, whatever the number of leases holding it --------------------------
def test_a_node_booked_in_two_leases_is_one_manifest_node_with_both_lease_refs(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """Node x booked in leases a and b: one <node client_id="x"> with two ol:lease_ref (it was two <node>s with the
    same client_id, which jFed and omni match to one request node, and which a manifest sent back repeats). The node
    carries lease a's sliver id; each ol:lease carries its own; geni_slivers keeps one sliver per lease."""
    first, later = _hour(2), _hour(5)
    answer = _allocate(aggregate, pki, _ol_lease("a", first) + _ol_lease("b", later) + _node("x", "n1", "a", "b"))
    lease_a, lease_b = _leases(aggregate, pki)
    (sliver_a,), (sliver_b,) = lease_a.slivers, lease_b.slivers
    for manifest in (answer["geni_rspec"], _describe(aggregate, pki)["geni_rspec"]):
        root = etree.fromstring(manifest.encode())
        (node,) = root.iterfind("g:node", NS)
        assert node.get("client_id") == "x" and node.get("sliver_id") == sliver_a.urn
        assert [ref.get("id_ref") for ref in node.iterfind("ol:lease_ref", NS)] == [lease_a.id, lease_b.id]
        ol_leases = [
            (lease.get("id"), lease.get("client_id"), lease.get("sliver_id")) for lease in root.iterfind("ol:lease", NS)
        ]
        assert ol_leases == [(lease_a.id, "a", sliver_a.urn), (lease_b.id, "b", sliver_b.urn)]
        assert validate(manifest.encode()) == [] and validate(manifest.encode(), geni_base=True) == []
    assert [sliver["geni_sliver_urn"] for sliver in answer["geni_slivers"]] == [sliver_a.urn, sliver_b.urn]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_node_booked_with_another_image_in_each_lease_is_a_manifest_node_each(
    backend: str, tmp_path: Path, pki: DemoPki
) -> None:
    """Node x with ubuntu in lease a and debian in lease b: a <node> holds one image, so each lease's shows in a node
    of its own (merged, lease b's image was hidden, and a manifest sent back asked for ubuntu)."""
    images = ({"name": "ubuntu", "os": "Linux"}, {"name": "debian", "os": "Linux"})
    with aggregate_on(backend, tmp_path, pki, NodeSpec(node_urn("m1"), "m1", disk_images=images)) as made:
        for label, hours, image in (("a", 2, "ubuntu"), ("b", 5, "debian")):
            node = (
                f'<node client_id="x" component_id="{node_urn("m1")}" exclusive="true"><ol:lease_ref id_ref="{label}"/>'
                f'<sliver_type name="raw-pc"><disk_image name="{image}"/></sliver_type></node>'
            )
            _allocate(made, pki, _ol_lease(label, _hour(hours)) + node)
        root = etree.fromstring(_describe(made, pki)["geni_rspec"].encode())

    shown = [
        (node.get("client_id"), [image.get("name") for image in node.iterfind("g:sliver_type/g:disk_image", NS)])
        for node in root.iterfind("g:node", NS)
    ]
    assert shown == [("x", ["ubuntu"]), ("x", ["debian"])]


def test_a_lease_of_several_nodes_names_no_one_sliver(aggregate: Aggregate, pki: DemoPki) -> None:
    """A lease holding two nodes has a sliver per node: its ol:lease names neither (each node names its own)."""
    _allocate(aggregate, pki, _ol_lease("a", _hour(2)) + _node("x", "n1", "a") + _node("y", "n2", "a"))
    root = etree.fromstring(_describe(aggregate, pki)["geni_rspec"].encode())
    (ol_lease,) = root.iterfind("ol:lease", NS)
    assert ol_lease.get("sliver_id") is None
    (lease,) = _leases(aggregate, pki)
    assert sorted(node.get("sliver_id") for node in root.iterfind("g:node", NS)) == sorted(s.urn for s in lease.slivers)


# -- 4. manifests: SFA's leases when asked, the root's expires ---------------------------------------------------------
def test_a_manifest_says_when_its_slivers_expire_and_has_sfa_leases_when_asked(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """The root's expires is the latest of the slivers' geni_expires (allocated: when the allocation lapses;
    provisioned: the lease's end). SFA's <lease> elements come with list_leases "all" or "leases", in Describe and in
    AM API v2's ListResources of the slice; without it the manifest is GENI's alone."""
    first, later = _hour(2), _hour(5)
    _allocate(
        aggregate, pki, _ol_lease("a", first) + _node("x", "n1", "a") + _ol_lease("b", later, 2) + _node("y", "n2", "b")
    )
    allocated = _describe(aggregate, pki)
    latest = max(parse_time(sliver["geni_expires"]) for sliver in allocated["geni_slivers"])
    root = etree.fromstring(allocated["geni_rspec"].encode())
    assert root.get("expires") == format_time(latest)
    assert root.find("g:lease", NS) is None
    assert validate(allocated["geni_rspec"].encode(), geni_base=True) == []

    alice = pki.users["alice"]
    aggregate.provision(alice.chain, [pki.slice_urn], [alice.slice_cred], V3)
    provisioned = _describe(aggregate, pki)
    assert etree.fromstring(provisioned["geni_rspec"].encode()).get("expires") == format_time(
        later + timedelta(hours=2)
    )

    expected = [
        (pki.slice_urn, _epoch(first), 2, (node_urn("n1"),)),
        (pki.slice_urn, _epoch(later), 4, (node_urn("n2"),)),
    ]
    for list_leases in ("all", "leases"):
        described = _describe(aggregate, pki, list_leases=list_leases)["geni_rspec"]
        assert _sfa_leases(described) == expected
        assert validate(described.encode()) == []
    v2 = ApiV2(aggregate)(
        CallContext(alice.chain, "127.0.0.1", "/am2"),
        "ListResources",
        ([alice.slice_cred], {**V3, "geni_slice_urn": pki.slice_urn, "list_leases": "all"}),
    )
    assert v2["code"]["geni_code"] == 0
    assert _sfa_leases(v2["value"]) == expected
    resources = ApiV2(aggregate)(
        CallContext(alice.chain, "127.0.0.1", "/am2"),
        "ListResources",
        ([alice.slice_cred], {**V3, "geni_slice_urn": pki.slice_urn, "list_leases": "resources"}),
    )
    assert _sfa_leases(resources["value"]) == []
