"""Manifest -> manifest RSpec: the slice's leases (ol:lease with id, the client's client_id, sliver_id and times),
its nodes (one per client_id and node, with sliver_id, an ol:lease_ref per lease holding it, host and login
services). SFA's <lease> elements can be added for sfi users."""

from __future__ import annotations

from datetime import timedelta

from lxml import etree

from rspec.model import Manifest, ManifestSliver
from rspec.namespaces import OL, geni, ol
from rspec.writing import new_root, serialize, sfa_lease_slot, xsd_boolean
from sfa_omf.times import format_time


def write_manifest(manifest: Manifest, sfa_leases: bool = False, pretty: bool = True) -> bytes:
    """The manifest RSpec. Without SFA leases it is valid against the GENI v3 base schema and ours; with them
    (which need ``manifest.slice_urn`` and ``manifest.grain``), against ours."""
    root = new_root("manifest", manifest.generated, {"ol": OL}, manifest.expires)
    for lease in manifest.leases:
        element = etree.SubElement(root, ol("lease"), id=lease.id)
        if lease.client_id is not None:
            element.set("client_id", lease.client_id)
        if lease.sliver_id is not None:
            element.set("sliver_id", lease.sliver_id)
        element.set("valid_from", format_time(lease.start))
        element.set("valid_until", format_time(lease.end))
    for sliver in manifest.slivers:
        _write_sliver(root, sliver)
    if sfa_leases:
        _write_sfa_leases(root, manifest)
    return serialize(root, pretty)


def _write_sliver(root: etree._Element, sliver: ManifestSliver) -> None:
    element = etree.SubElement(
        root,
        geni("node"),
        client_id=sliver.client_id,
        component_id=sliver.component_id,
        component_manager_id=sliver.component_manager_id,
    )
    if sliver.component_name is not None:
        element.set("component_name", sliver.component_name)
    element.set("exclusive", xsd_boolean(sliver.exclusive))
    element.set("sliver_id", sliver.sliver_id)
    if sliver.sliver_type is not None:
        sliver_type = etree.SubElement(element, geni("sliver_type"), name=sliver.sliver_type)
        if sliver.disk_image is not None:
            etree.SubElement(sliver_type, geni("disk_image"), name=sliver.disk_image)
    for lease_id in sliver.lease_ids:
        etree.SubElement(element, ol("lease_ref"), id_ref=lease_id)
    if sliver.logins:
        services = etree.SubElement(element, geni("services"))
        for login in sliver.logins:
            etree.SubElement(
                services,
                geni("login"),
                authentication=login.authentication,
                hostname=login.hostname,
                port=str(login.port),
                username=login.username,
            )
    if sliver.hostname is not None:
        etree.SubElement(element, geni("host"), name=sliver.hostname)


def _write_sfa_leases(root: etree._Element, manifest: Manifest) -> None:
    """SFA's <lease> per lease and grain of its nodes (a node's own grain, else the manifest's), as the
    advertisement writes them (``sfa_lease_slot``)."""
    if manifest.grain is None:
        raise ValueError("SFA leases in a manifest need the grain (Manifest.grain)")
    own_grain: dict[str, timedelta] = {}
    slivers_of: dict[str, list[ManifestSliver]] = {}  # by lease id, in the manifest's order: one pass, not one a lease
    for sliver in manifest.slivers:
        if sliver.grain is not None:  # (a container's sliver names no grain: its node's sliver does)
            own_grain.setdefault(sliver.component_id, sliver.grain)
        for lease_id in dict.fromkeys(sliver.lease_ids):
            slivers_of.setdefault(lease_id, []).append(sliver)
    for lease in manifest.leases:
        by_grain: dict[timedelta, dict[str, None]] = {}  # nodes: an ordered set
        for sliver in slivers_of.get(lease.id, ()):
            grain = own_grain.get(sliver.component_id, manifest.grain)
            by_grain.setdefault(grain, {})[sliver.component_id] = None
        for grain, nodes in by_grain.items():
            start_time, grains = sfa_lease_slot(lease.start, lease.end, grain)
            element = etree.SubElement(root, geni("lease"))
            if manifest.slice_urn is not None:
                element.set("slice_id", manifest.slice_urn)
            element.set("start_time", str(start_time))
            element.set("duration", str(grains))
            for component_id in nodes:
                etree.SubElement(element, geni("node"), component_id=component_id)
