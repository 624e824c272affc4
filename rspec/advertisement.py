"""Advertisement -> advertisement RSpec: the inventory, existing bookings (ol leases without slice identity,
ol:lease_ref on the nodes they hold), "available now" as the bookings and other holds (``held_now``) say, and each
node's next free windows in sfa-omf's availability extension. SFA's lease view (list_leases) adds SFA's <lease>
elements and <granularity>.

Bookings that have ended are left out; the caller passes only live ones (not cancelled).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

from lxml import etree

from rspec.model import AdvertisedNode, Advertisement, Booking, FreeWindow, LeaseView
from rspec.namespaces import AVAILABILITY, OL, av, geni, ol
from rspec.writing import new_root, serialize, sfa_lease_slot, xml_text, xsd_boolean
from sfa_omf.errors import BadArgs
from sfa_omf.times import as_utc, format_time

# Tags, made once: an advertisement of 10 000 nodes makes hundreds of thousands of elements.
_NODE = geni("node")
_HARDWARE_TYPE = geni("hardware_type")
_SLIVER_TYPE = geni("sliver_type")
_DISK_IMAGE = geni("disk_image")
_LOCATION = geni("location")
_AVAILABLE = geni("available")
_GRANULARITY = geni("granularity")
_LEASE = geni("lease")
_OL_LEASE = ol("lease")
_OL_LEASE_REF = ol("lease_ref")
_AV_HORIZON = av("horizon")
_AV_FREE = av("free")
_AV_GRANULARITY = av("granularity")

CHUNK_ELEMENTS = 256  # top-level elements per small tree: a few hundred KB, whatever the advertisement's size


def lease_view(list_leases: object) -> LeaseView:
    """The view SFA's list_leases option asks for: None or "resources" (GENI), "all", "leases"."""
    if list_leases is None or list_leases == "resources":
        return LeaseView.GENI
    if list_leases == "all":
        return LeaseView.SFA_ALL
    if list_leases == "leases":
        return LeaseView.SFA_LEASES
    raise BadArgs(f"list_leases={list_leases!r}: expected 'resources', 'leases' or 'all'")


def write_advertisement(
    ad: Advertisement,
    view: LeaseView = LeaseView.GENI,
    pretty: bool = True,
    chunk_elements: int = CHUNK_ELEMENTS,
    held_now: Collection[str] = frozenset(),
) -> bytes:
    """The advertisement RSpec. The GENI view is valid against the GENI v3 base schema and ours; the SFA views are
    valid against ours (SFA's lease elements are in GENI's namespace, as SFA writes them).

    A node is ``<available now="true"/>`` when in service and held at ``ad.now`` neither by one of ``ad.bookings``
    nor by a window in ``held_now`` (component ids of the nodes the calendar holds at ``ad.now``: its bookings and the
    external reservations it mirrors, which are no bookings; a set, looked up once per node).

    Times in ``ad`` must be aware (UTC or any offset); they are written in UTC. The root's children are written
    ``chunk_elements`` at a time into small trees (``_ChunkedRoot``); the bytes do not depend on it.
    """
    now = as_utc(ad.now)
    live = sorted((b for b in ad.bookings if b.end > now), key=lambda b: (b.start, b.id))
    namespaces = {"ol": OL, "av": AVAILABILITY} if view is not LeaseView.SFA_LEASES else {}
    root = _ChunkedRoot(lambda: new_root("advertisement", now, namespaces, ad.expires), pretty, chunk_elements)
    if view is not LeaseView.SFA_LEASES:
        _write_geni_view(root, ad, live, now, held_now, with_sfa_granularity=view is LeaseView.SFA_ALL)
    if view is not LeaseView.GENI:
        _write_sfa_leases(root, live, ad)
    return root.finish()


class _ChunkedRoot:
    """The root's children written in bounded chunks: each chunk a small tree under a fresh copy of the root, serialized
    and cut down to its children's text, then all of them joined between the root's start and end tags. The bytes are
    those of the whole tree serialized at once, provided every namespace used below the root is declared on it (lxml
    names an undeclared one ns0, ns1, ... by a counter per document, which each chunk would start again) and the
    root's children are elements only (each is then indented the same way in a chunk as in the whole); a document of
    one chunk is the one tree serialized. The tree held at once stays small whatever the advertisement's size: one
    tree for 10 000 nodes held libxml2 nodes several times the 25 MB document's size.

    ``parent()`` gives the element to add the next top-level child under; a chunk is serialized when the next one
    is asked for, so the previous child's own subelements are complete by then."""

    def __init__(self, make_root: Callable[[], etree._Element], pretty: bool, chunk_elements: int) -> None:
        if chunk_elements < 1:
            raise ValueError(f"chunk_elements={chunk_elements}: at least 1")
        self._make_root = make_root
        self._pretty = pretty
        self._chunk_elements = chunk_elements
        self._root = make_root()
        self._children = 0
        self._head = b""
        self._bodies: list[bytes] = []

    def parent(self) -> etree._Element:
        """The element under which to add the next top-level child."""
        if self._children == self._chunk_elements:
            self._cut()
            self._root = self._make_root()
            self._children = 0
        self._children += 1
        return self._root

    def finish(self) -> bytes:
        """The whole document, as ``serialize`` of one tree holding every child writes it."""
        if not self._bodies:  # one chunk (or an empty root, written as <rspec .../>): the one tree itself
            return serialize(self._root, self._pretty)
        tail = self._cut()
        return b"".join((self._head, *self._bodies, tail))

    def _cut(self) -> bytes:
        """Serialize the current chunk and keep its children's text; returns the root's end tag (with newline)."""
        data = serialize(self._root, self._pretty)
        # The root's start tag ends at the first ">" after the XML declaration (attribute values escape ">").
        start_tag_end = data.index(b">", data.index(b"?>") + 2) + 1
        if self._pretty:
            start_tag_end += 1  # its newline
        end_tag = b"</rspec>\n" if self._pretty else b"</rspec>"
        if not self._head:
            self._head = data[:start_tag_end]
        self._bodies.append(data[start_tag_end : len(data) - len(end_tag)])
        return end_tag


class _Times(dict[datetime, str]):
    """RFC 3339 text of each time, formatted once: an advertisement repeats the same slot boundaries many times."""

    def __missing__(self, moment: datetime) -> str:
        text = self[moment] = format_time(moment)
        return text


def _write_geni_view(
    root: _ChunkedRoot,
    ad: Advertisement,
    live: list[Booking],
    now: datetime,
    held_now: Collection[str],
    with_sfa_granularity: bool,
) -> None:
    times = _Times()
    held: dict[str, list[Booking]] = defaultdict(list)
    booked_now: set[str] = set()
    refs: dict[str, dict[str, str]] = {}
    for booking in live:
        etree.SubElement(
            root.parent(), _OL_LEASE, id=booking.id, valid_from=times[booking.start], valid_until=times[booking.end]
        )
        refs[booking.id] = {"id_ref": booking.id}
        covers_now = booking.start <= now  # live: it ends after now
        for component_id in booking.component_ids:
            held[component_id].append(booking)
            if covers_now:
                booked_now.add(component_id)
    windows: dict[FreeWindow, dict[str, str]] = {}
    if ad.horizon is not None:
        etree.SubElement(
            root.parent(),
            _AV_HORIZON,
            start=times[ad.horizon.start],
            end=times[ad.horizon.end],
            max_windows=str(ad.horizon.max_windows),
        )
    grains: dict[timedelta, dict[str, str]] = {}
    for node in ad.nodes:
        bookings = held.get(node.component_id, [])
        # Every booking holds its nodes whole, exclusive="false" or not: the calendar refuses a second slice's
        # overlapping booking of any node (calendar/booking.py).
        available = node.in_service and node.component_id not in booked_now and node.component_id not in held_now
        element = _write_node(root.parent(), node, available)
        if node.exclusive:
            grain = node.grain or ad.grain
            if grain not in grains:
                grains[grain] = {"grain": str(_seconds(grain))}
            etree.SubElement(element, _AV_GRANULARITY, grains[grain])
            if with_sfa_granularity:
                etree.SubElement(element, _GRANULARITY, grains[grain])
        for booking in bookings:
            etree.SubElement(element, _OL_LEASE_REF, refs[booking.id])
        if ad.horizon is not None:
            for window in ad.free_windows.get(node.component_id, ())[: ad.horizon.max_windows]:
                attributes = windows.get(window)
                if attributes is None:
                    attributes = windows[window] = {"start": times[window.start], "end": times[window.end]}
                etree.SubElement(element, _AV_FREE, attributes)


def _write_node(root: etree._Element, node: AdvertisedNode, available: bool) -> etree._Element:
    element = etree.SubElement(
        root,
        _NODE,
        component_id=node.component_id,
        component_manager_id=node.component_manager_id,
        component_name=node.component_name,
        exclusive=xsd_boolean(node.exclusive),
    )
    for hardware_type in node.hardware_types:
        etree.SubElement(element, _HARDWARE_TYPE, name=hardware_type)
    for sliver_type in node.sliver_types:
        sliver = etree.SubElement(element, _SLIVER_TYPE, name=sliver_type.name)
        if sliver_type.default:
            sliver.set("default", "true")
        for image in sliver_type.disk_images:
            disk = etree.SubElement(sliver, _DISK_IMAGE, name=image.name)
            for name in ("os", "version", "description"):
                value = getattr(image, name)
                if value is not None:
                    disk.set(name, xml_text(value))  # free text that operators type
            if image.default:
                disk.set("default", "true")
    if node.location is not None:
        location = etree.SubElement(element, _LOCATION, country=node.location.country)
        if node.location.latitude is not None:
            location.set("latitude", str(node.location.latitude))
        if node.location.longitude is not None:
            location.set("longitude", str(node.location.longitude))
    etree.SubElement(element, _AVAILABLE, now=xsd_boolean(available))
    return element


def _write_sfa_leases(root: _ChunkedRoot, live: list[Booking], ad: Advertisement) -> None:
    """SFA's view: one <lease> per (slice_id, start, end, grain), the nodes it holds inside. Its duration counts
    grains of its nodes' own grain (advertised per node as <granularity>), so a booking holding nodes of two grains is
    two SFA leases; ``sfa_lease_slot`` writes the slot."""
    own_grain = {node.component_id: node.grain for node in ad.nodes if node.grain is not None}
    groups: dict[tuple[str | None, datetime, datetime, timedelta], dict[str, None]] = {}  # nodes: an ordered set
    for booking in live:
        for component_id in booking.component_ids:
            grain = own_grain.get(component_id, ad.grain)
            groups.setdefault((booking.slice_urn, booking.start, booking.end, grain), {})[component_id] = None
    for (slice_urn, start, end, grain), nodes in groups.items():
        start_time, grains = sfa_lease_slot(start, end, grain)
        lease = etree.SubElement(root.parent(), _LEASE)
        if slice_urn is not None:
            lease.set("slice_id", slice_urn)
        lease.set("start_time", str(start_time))
        lease.set("duration", str(grains))
        for component_id in nodes:
            etree.SubElement(lease, _NODE, component_id=component_id)


def _seconds(span: timedelta) -> int:
    return int(span.total_seconds())
