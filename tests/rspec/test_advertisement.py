"""Advertisements: inventory, bookings as ol leases, availability now and ahead, SFA's lease view."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from rspec.advertisement import lease_view, write_advertisement
from rspec.model import (
    AdvertisedNode,
    Advertisement,
    Booking,
    DiskImage,
    FreeWindow,
    Horizon,
    LeaseView,
    Location,
    SliverType,
)
from rspec.validate import validate
from sfa_omf.errors import BadArgs
from tests.rspec.conftest import CM, IMAGE, node_urn

NOW = datetime(2026, 12, 1, 10, 15, tzinfo=UTC)
H = timedelta(hours=1)
GRAIN = timedelta(minutes=30)
NS = {"g": "http://www.geni.net/resources/rspec/3", "ol": "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"}
NS["av"] = "http://sfa-omf.org/rspec/ext/availability/1"
SLICE = "urn:publicid:IDN+onelab:inria+slice+myslice"


def inventory_node(name: str, **changes: object) -> AdvertisedNode:
    node = AdvertisedNode(
        component_id=node_urn(name),
        component_manager_id=CM,
        component_name=name,
        hardware_types=("pc-x86",),
        sliver_types=(SliverType("raw-pc", (DiskImage(IMAGE, os="Linux", version="22.04", default=True),), True),),
        location=Location("FR", 48.71, 2.21),
    )
    return dataclasses.replace(node, **changes)  # type: ignore[arg-type]


NODES = (
    inventory_node("node1"),  # booked now
    inventory_node("node2"),  # booked later only
    inventory_node("node3", in_service=False),  # maintenance
    inventory_node("node4", exclusive=False),  # shared: booked all the same (the calendar books every node whole)
)
BOOKINGS = (
    Booking(
        "lease-now", NOW - 15 * 60 * timedelta(seconds=1), NOW + 45 * timedelta(minutes=1), (node_urn("node1"),), SLICE
    ),
    Booking(
        "lease-later",
        NOW + 3 * H + 45 * timedelta(minutes=1),
        NOW + 5 * H + 45 * timedelta(minutes=1),
        (node_urn("node1"), node_urn("node2")),
        SLICE,
    ),
    Booking("lease-past", NOW - 5 * H, NOW - 15 * timedelta(minutes=1), (node_urn("node2"),), SLICE),
    Booking("lease-shared", NOW - H, NOW + H, (node_urn("node4"),)),
)
WINDOWS = {
    node_urn("node1"): tuple(FreeWindow(NOW + (2 * i + 1) * H, NOW + (2 * i + 2) * H) for i in range(12)),
    node_urn("node2"): (FreeWindow(NOW, NOW + 3 * H),),
}
AD = Advertisement(NODES, BOOKINGS, NOW, GRAIN, Horizon(NOW, NOW + 24 * H, 10), WINDOWS, NOW + H)


def xml(view: LeaseView = LeaseView.GENI, ad: Advertisement = AD) -> etree._Element:
    return etree.fromstring(write_advertisement(ad, view))


def test_geni_view_is_valid_against_ours_and_the_geni_base_schema() -> None:
    data = write_advertisement(AD)
    assert validate(data) == []
    assert validate(data, geni_base=True) == []


@pytest.mark.parametrize("view", [LeaseView.SFA_ALL, LeaseView.SFA_LEASES])
def test_sfa_views_are_valid_against_ours(view: LeaseView) -> None:
    data = write_advertisement(AD, view)
    assert validate(data) == []
    assert {p.element for p in validate(data, geni_base=True)} <= {"lease", "granularity"}


def test_nodes() -> None:
    root = xml()
    node = root.find("g:node", NS)
    assert node is not None
    assert dict(node.items()) == {
        "component_id": node_urn("node1"),
        "component_manager_id": CM,
        "component_name": "node1",
        "exclusive": "true",
    }
    assert node.find("g:hardware_type", NS).get("name") == "pc-x86"  # type: ignore[union-attr]
    sliver = node.find("g:sliver_type", NS)
    assert sliver is not None and sliver.get("name") == "raw-pc" and sliver.get("default") == "true"
    image = sliver.find("g:disk_image", NS)
    assert image is not None and dict(image.items()) == {
        "name": IMAGE,
        "os": "Linux",
        "version": "22.04",
        "default": "true",
    }
    assert node.find("g:location", NS).attrib == {"country": "FR", "latitude": "48.71", "longitude": "2.21"}  # type: ignore[union-attr]
    assert node.find("av:granularity", NS).get("grain") == "1800"  # type: ignore[union-attr]
    assert root.get("generated") == "2026-12-01T10:15:00Z" and root.get("expires") == "2026-12-01T11:15:00Z"


def test_available_now_honours_current_bookings_and_maintenance() -> None:
    root = xml()
    now = {n.get("component_name"): n.find("g:available", NS).get("now") for n in root.iterfind("g:node", NS)}  # type: ignore[union-attr]
    assert now == {"node1": "false", "node2": "true", "node3": "false", "node4": "false"}


def test_bookings_are_ol_leases_without_slice_identity_and_without_stale_ones() -> None:
    root = xml()
    leases = [(e.get("id"), dict(e.attrib)) for e in root.iterfind("ol:lease", NS)]
    assert [lease_id for lease_id, _ in leases] == ["lease-shared", "lease-now", "lease-later"]
    assert dict(leases[1][1]) == {
        "id": "lease-now",
        "valid_from": "2026-12-01T10:00:00Z",
        "valid_until": "2026-12-01T11:00:00Z",
    }
    assert SLICE.encode() not in write_advertisement(AD)
    refs = {
        n.get("component_name"): [r.get("id_ref") for r in n.iterfind("ol:lease_ref", NS)]
        for n in root.iterfind("g:node", NS)
    }
    assert refs == {
        "node1": ["lease-now", "lease-later"],
        "node2": ["lease-later"],
        "node3": [],
        "node4": ["lease-shared"],
    }


def test_next_free_windows_within_the_horizon() -> None:
    root = xml()
    horizon = root.find("av:horizon", NS)
    assert horizon is not None
    assert dict(horizon.items()) == {
        "start": "2026-12-01T10:15:00Z",
        "end": "2026-12-02T10:15:00Z",
        "max_windows": "10",
    }
    node1, node2, node3, _ = root.iterfind("g:node", NS)
    windows = [(w.get("start"), w.get("end")) for w in node1.iterfind("av:free", NS)]
    assert len(windows) == 10  # twelve given, ten shown
    assert windows[0] == ("2026-12-01T11:15:00Z", "2026-12-01T12:15:00Z")
    assert [(w.get("start"), w.get("end")) for w in node2.iterfind("av:free", NS)] == [
        ("2026-12-01T10:15:00Z", "2026-12-01T13:15:00Z")
    ]
    assert node3.find("av:free", NS) is None


def test_a_node_may_have_its_own_grain() -> None:
    ad = Advertisement((inventory_node("node1", grain=timedelta(hours=1)), inventory_node("node2")), (), NOW, GRAIN)
    root = xml(LeaseView.SFA_ALL, ad)
    grains = [
        (
            n.xpath("string(av:granularity/@grain)", namespaces=NS),
            n.xpath("string(g:granularity/@grain)", namespaces=NS),
        )
        for n in root.iterfind("g:node", NS)
    ]
    assert grains == [("3600", "3600"), ("1800", "1800")]


def test_no_horizon_no_availability() -> None:
    ad = Advertisement(NODES, BOOKINGS, NOW, GRAIN)
    data = write_advertisement(ad)
    assert b"av:free" not in data and b"av:horizon" not in data
    assert validate(data, geni_base=True) == []


def test_sfa_lease_view() -> None:
    root = xml(LeaseView.SFA_ALL)
    leases = [
        (lease.get("slice_id"), lease.get("start_time"), lease.get("duration"), [n.get("component_id") for n in lease])
        for lease in root.iterfind("g:lease", NS)
    ]
    start = int(BOOKINGS[0].start.timestamp())
    # lease-shared, 09:15 to 11:15 (off the 30-minute grain), is shown as the grains it touches: 09:00, five grains.
    assert leases == [
        (None, str(int((BOOKINGS[3].start - 15 * timedelta(minutes=1)).timestamp())), "5", [node_urn("node4")]),
        (SLICE, str(start), "2", [node_urn("node1")]),
        (SLICE, str(int(BOOKINGS[1].start.timestamp())), "4", [node_urn("node1"), node_urn("node2")]),
    ]
    exclusive = [n.find("g:granularity", NS) is not None for n in root.iterfind("g:node", NS)]
    assert exclusive == [True, True, True, False]
    only = xml(LeaseView.SFA_LEASES)
    assert [e.tag.split("}")[1] for e in only] == ["lease", "lease", "lease"]


def test_sfa_leases_of_one_slot_and_slice_are_grouped() -> None:
    bookings = (
        Booking("a", NOW + H, NOW + 2 * H, (node_urn("node1"),), SLICE),
        Booking("b", NOW + H, NOW + 2 * H, (node_urn("node2"),), SLICE),
    )
    root = xml(LeaseView.SFA_LEASES, Advertisement(NODES, bookings, NOW, GRAIN))
    (lease,) = root
    assert [n.get("component_id") for n in lease] == [node_urn("node1"), node_urn("node2")]


@pytest.mark.parametrize(
    ("option", "view"),
    [
        (None, LeaseView.GENI),
        ("resources", LeaseView.GENI),
        ("all", LeaseView.SFA_ALL),
        ("leases", LeaseView.SFA_LEASES),
    ],
)
def test_list_leases_option(option: str | None, view: LeaseView) -> None:
    assert lease_view(option) is view


def test_bad_list_leases_option() -> None:
    with pytest.raises(BadArgs, match="expected 'resources', 'leases' or 'all'"):
        lease_view("everything")


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=12)
texts = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cn")), max_size=20)  # what XML can carry
times = st.integers(min_value=0, max_value=200).map(lambda k: NOW + k * GRAIN)


@st.composite
def advertisements(draw: st.DrawFn) -> Advertisement:
    ids = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    nodes = tuple(
        AdvertisedNode(
            f"urn:publicid:IDN+t+node+{name}",
            CM,
            draw(texts),
            exclusive=draw(st.booleans()),
            hardware_types=tuple(draw(st.lists(texts.filter(bool), max_size=2))),
            sliver_types=tuple(
                SliverType(s, tuple(DiskImage(i, description=draw(texts)) for i in draw(st.lists(names, max_size=2))))
                for s in draw(st.lists(names, max_size=2))
            ),
            in_service=draw(st.booleans()),
        )
        for name in ids
    )
    bookings = []
    for index in range(draw(st.integers(0, 5))):
        start = draw(times)
        length = draw(st.integers(1, 10)) * GRAIN
        held = draw(st.lists(st.sampled_from([n.component_id for n in nodes]), min_size=1, max_size=3, unique=True))
        bookings.append(Booking(f"lease-{index}", start, start + length, tuple(held), draw(st.none() | names)))
    windows = {
        n.component_id: tuple(FreeWindow(t, t + GRAIN) for t in sorted(set(draw(st.lists(times, max_size=4)))))
        for n in nodes
    }
    return Advertisement(nodes, tuple(bookings), NOW, GRAIN, Horizon(NOW, NOW + 200 * GRAIN, 3), windows)


@settings(max_examples=60, deadline=None)
@given(advertisements(), st.sampled_from(list(LeaseView)))
def test_every_advertisement_we_write_is_valid(ad: Advertisement, view: LeaseView) -> None:
    data = write_advertisement(ad, view)
    assert validate(data) == []
    if view is LeaseView.GENI:
        assert validate(data, geni_base=True) == []


@settings(max_examples=60, deadline=None)
@given(advertisements(), st.sampled_from(list(LeaseView)), st.booleans(), st.integers(1, 4))
def test_chunked_writing_gives_the_bytes_of_one_tree(
    ad: Advertisement, view: LeaseView, pretty: bool, chunk_elements: int
) -> None:
    # The writer serializes the root's children a few at a time; the document must be that of one tree (one chunk
    # is the one tree serialized: _ChunkedRoot.finish).
    one_tree = write_advertisement(ad, view, pretty, chunk_elements=10**9)
    assert write_advertisement(ad, view, pretty, chunk_elements=chunk_elements) == one_tree
    # ... which is what lxml writes for the whole parsed document (pretty printing ends it with a newline, which
    # parsing drops; the rest, whitespace included, is kept as text).
    reserialized = etree.tostring(etree.fromstring(one_tree), encoding="UTF-8", xml_declaration=True)
    assert reserialized + (b"\n" if pretty else b"") == one_tree


def test_chunks_hold_one_element_at_least() -> None:
    with pytest.raises(ValueError, match="chunk_elements=0"):
        write_advertisement(AD, chunk_elements=0)


def test_image_text_that_xml_cannot_hold_does_not_fail_the_advertisement() -> None:
    """An operator's image description with a control character (an ANSI colour pasted from a terminal) made lxml
    raise, and every ListResources answered an internal error."""
    image = DiskImage("ubuntu", os="Ubuntu\x00", version="22.04\x0c", description="\x1b[1mLTS\x1b[0m\ttab\uffff")
    node = AdvertisedNode(
        "urn:publicid:IDN+omf:testbed+node+n1",
        CM,
        "n1",
        sliver_types=(SliverType("raw-pc", disk_images=(image,)),),
    )
    data = write_advertisement(Advertisement((node,), (), NOW, timedelta(minutes=30)))
    assert validate(data) == []
    disk = etree.fromstring(data).find(".//{http://www.geni.net/resources/rspec/3}disk_image")
    assert disk is not None
    assert (disk.get("os"), disk.get("version"), disk.get("description")) == (
        "Ubuntu\ufffd",
        "22.04\ufffd",
        "\ufffd[1mLTS\ufffd[0m\ttab\ufffd",
    )
