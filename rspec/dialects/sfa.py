"""SFA's native leases in requests, as sfi users write them:

    <lease slice_id="urn:publicid:IDN+onelab:inria+slice+myslice" start_time="1795316400" duration="2">
      <node component_id="urn:publicid:IDN+omftb+node+node1"/>
    </lease>

start_time is epoch seconds (sfa-omf also reads RFC 3339); duration counts grains, the aggregate's granularity.
A lease without start_time asks for the earliest slot in which all its nodes are free. slice_id is ignored: the
slice is the one the call names. Leases with the same slot are one lease, as SFA groups them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from lxml import etree

from rspec.model import MAX_DURATION
from rspec.namespaces import geni
from rspec.reading import Reader

LEASE = geni("lease")
NODE = geni("node")


@dataclass(frozen=True)
class SfaLease:
    """An SFA lease as read: its first element (for messages), its slot and the component_ids it books."""

    element: etree._Element
    start: datetime | None
    duration: timedelta
    component_ids: tuple[str, ...]


def read_leases(reader: Reader, root: etree._Element, grain: timedelta) -> list[SfaLease]:
    """Every top-level SFA lease of a request, those with the same slot merged; bad ones reported and left out."""
    # Per slot: its first element and its component_ids in order (a dict, so merging thousands of one-node leases of
    # one slot stays linear: a tuple searched and copied for each was quadratic, minutes for a 4 MB request).
    slots: dict[tuple[datetime | None, timedelta], tuple[etree._Element, dict[str, None]]] = {}
    for element in root.iterchildren(LEASE):
        before = len(reader.problems)
        start = reader.epoch_or_rfc3339(element, "start_time")
        grains = reader.positive_int(
            element, "duration", "grains", required=True, maximum=MAX_DURATION // grain if grain else None
        )
        component_ids = [_component_id(reader, node) for node in element.iterchildren(NODE)]
        if not component_ids:
            reader.report(element, 'a lease lists the nodes it books: <node component_id="..."/>')
        if len(reader.problems) > before or grains is None:
            continue
        known = slots.setdefault((start, grains * grain), (element, {}))[1]
        known.update((c, None) for c in component_ids if c is not None)
    return [SfaLease(first, start, duration, tuple(known)) for (start, duration), (first, known) in slots.items()]


def _component_id(reader: Reader, node: etree._Element) -> str | None:
    return reader.text(node, "component_id", required=True)
