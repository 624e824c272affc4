"""Request -> request RSpec in one dialect: what a client would send. For tests (every dialect must read back to the
same Request) and for tools that prepare requests; the aggregate itself never sends one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum

from lxml import etree

from rspec.model import Request, RequestLease, RequestNode
from rspec.namespaces import OL, geni, inst, ol
from rspec.writing import new_root, serialize, xsd_boolean
from sfa_omf.times import format_time, utcnow

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Dialect(StrEnum):
    """How a request writes its time slots."""

    OL = "ol"  # ol:lease + ol:lease_ref
    SFA = "sfa"  # <lease start_time duration><node component_id/></lease>
    OPTIONS = "options"  # no time in the RSpec; geni_start_time/geni_end_time Allocate options


class NotExpressible(ValueError):
    """The request cannot be written in that dialect (the message says why)."""


def write_request(
    request: Request, dialect: Dialect, grain: timedelta = timedelta(minutes=30), pretty: bool = True
) -> tuple[bytes, dict[str, str]]:
    """The RSpec and the Allocate options that ask for ``request`` in ``dialect``."""
    root = new_root("request", utcnow(), {"ol": OL} if dialect is Dialect.OL else {})
    labels = _labels(request.leases)
    if dialect is Dialect.OL:
        for lease, label in zip(request.leases, labels, strict=True):
            _ol_lease(root, lease, label)
    nodes: dict[str, RequestNode] = {}
    for node in request.nodes:
        element = etree.SubElement(root, geni("node"), client_id=node.client_id)
        for name in ("component_id", "component_manager_id", "component_name"):
            value = getattr(node, name)
            if value is not None:
                element.set(name, value)
        if node.exclusive is not None:
            element.set("exclusive", xsd_boolean(node.exclusive))
        if node.hardware_type is not None:
            etree.SubElement(element, geni("hardware_type"), name=node.hardware_type)
        if node.sliver_type is not None:
            sliver = etree.SubElement(element, geni("sliver_type"), name=node.sliver_type)
            if node.instance_count is not None and node.instance_count != 1:
                sliver.set(inst("count"), str(node.instance_count))
            if node.disk_image is not None:
                etree.SubElement(sliver, geni("disk_image"), name=node.disk_image)
        elif node.disk_image is not None:
            raise NotExpressible(f"node {node.client_id} has a disk image but no sliver type")
        nodes[node.client_id] = node
        if dialect is Dialect.OL:
            for lease, label in zip(request.leases, labels, strict=True):
                if node.client_id in lease.nodes:
                    etree.SubElement(element, ol("lease_ref"), id_ref=lease.existing_id or label)
    if dialect is Dialect.SFA:
        for lease in request.leases:
            _sfa_lease(root, lease, nodes, grain)
    options = _options(request) if dialect is Dialect.OPTIONS else {}
    return serialize(root, pretty), options


def _labels(leases: tuple[RequestLease, ...]) -> list[str]:
    """Each lease's ol client_id: its own, else lease1, lease2... by its position, skipping a name another lease
    already has (two leases of one name would not read back)."""
    taken = {name for lease in leases for name in (lease.client_id, lease.existing_id) if name is not None}
    labels = []
    for i, lease in enumerate(leases):
        label = lease.client_id
        if label is None:
            label, n = f"lease{i + 1}", i + 1
            while label in taken:
                n += 1
                label = f"lease{n}"
            taken.add(label)
        labels.append(label)
    return labels


def _ol_lease(root: etree._Element, lease: RequestLease, label: str) -> None:
    element = etree.SubElement(root, ol("lease"), client_id=label)
    if lease.existing_id is not None:
        element.set("id", lease.existing_id)
    if lease.start is None:
        element.set("duration", str(_whole_seconds(lease.duration)))
    else:
        element.set("valid_from", format_time(lease.start))
        assert lease.end is not None
        element.set("valid_until", format_time(lease.end))


def _sfa_lease(root: etree._Element, lease: RequestLease, nodes: dict[str, RequestNode], grain: timedelta) -> None:
    if lease.existing_id is not None:
        raise NotExpressible("SFA leases cannot re-use an existing lease")
    grains, rest = divmod(lease.duration, grain)
    if rest or grains < 1:
        raise NotExpressible(f"duration {lease.duration} is not a whole number of grains of {grain}")
    element = etree.SubElement(root, geni("lease"), duration=str(grains))
    if lease.start is not None:
        element.set("start_time", str(_whole_seconds(lease.start - _EPOCH)))
    for client_id in lease.nodes:
        component_id = nodes[client_id].component_id
        if component_id is None:
            raise NotExpressible(f"SFA leases name nodes by component_id; node {client_id} has none")
        etree.SubElement(element, geni("node"), component_id=component_id)


def _options(request: Request) -> dict[str, str]:
    if len(request.leases) != 1:
        raise NotExpressible("Allocate options give one slot for the whole request")
    (lease,) = request.leases
    if lease.start is None or lease.end is None or lease.existing_id is not None:
        raise NotExpressible("Allocate options give a fixed slot")
    if set(lease.nodes) != {node.client_id for node in request.nodes}:
        raise NotExpressible("Allocate options book every node of the request")
    # As omni sends them: RFC 3339 with +00:00.
    return {
        "geni_start_time": lease.start.isoformat(timespec="seconds"),
        "geni_end_time": lease.end.isoformat(timespec="seconds"),
    }


def _whole_seconds(span: timedelta) -> int:
    seconds = span.total_seconds()
    if seconds != int(seconds):
        raise NotExpressible(f"{span} is not a whole number of seconds")
    return int(seconds)
