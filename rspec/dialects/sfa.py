"""SFA's native leases in requests, as sfi users write them:

    <lease slice_id="urn:publicid:IDN+onelab:inria+slice+myslice" start_time="1795316400" duration="2">
      <node component_id="urn:publicid:IDN+omftb+node+node1"/>
    </lease>

start_time is epoch seconds (sfa-omf also reads RFC 3339); duration counts grains of its nodes' own grain (a node
may have its own, advertised as <granularity grain="3600"/>; else the aggregate's), so all the nodes of one lease
must have the same grain. A lease without start_time asks for the earliest slot in which all its nodes are free
(start_time="0", IoT-LAB's "as soon as possible", is refused: it would read as 1970). A lease whose slice_id names
another slice than the call's is left out: sfi users send back the other slices' leases an advertisement showed
them. Leases of one slice with the same start and duration are one lease, as SFA groups them; a lease without a
start is one of its own (its nodes share the earliest slot in which all are free, not other leases' nodes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from lxml import etree

from rspec.model import MAX_DURATION
from rspec.namespaces import geni
from rspec.reading import Reader
from sfa_omf.errors import BadArgs
from sfa_omf.xrn import parse_urn

LEASE = geni("lease")
NODE = geni("node")


@dataclass(frozen=True)
class SfaLeaseAsked:
    """An SFA lease element as written: its slot's start, its length in grains of its nodes' grain, the
    component_ids it books, and its slice (None: the call's)."""

    element: etree._Element
    start: datetime | None
    grains: int
    component_ids: tuple[str, ...]
    slice_key: str | None


@dataclass(frozen=True)
class SfaLease:
    """An SFA lease as read: its first element (for messages), its slot, the component_ids it books and their
    grain."""

    element: etree._Element
    start: datetime | None
    duration: timedelta
    component_ids: tuple[str, ...]
    grain: timedelta


def read_leases(reader: Reader, root: etree._Element, grain: timedelta, slice_urn: str | None = None) -> list[SfaLease]:
    """Every top-level SFA lease of a request for the slice ``slice_urn`` (None: every slice's), those of one slice
    with the same start and duration merged, every node counted in ``grain``; bad ones reported and left out."""
    return in_grains(reader, read_asked(reader, root, slice_urn), {}, grain)


@dataclass(frozen=True)
class OtherSliceLease:
    """An SFA lease of another slice than the call's, left out (an advertisement's booking sent back): its element,
    its slice_id and the component_ids it names (its nodes are not booked for the caller either)."""

    element: etree._Element
    slice_id: str
    component_ids: tuple[str, ...]


def read_asked(reader: Reader, root: etree._Element, slice_urn: str | None) -> list[SfaLeaseAsked]:
    """Every top-level SFA lease of a request for the slice ``slice_urn`` (None: every lease, grouped by slice_id)
    as written, those of other slices left out (``other_slices_leases`` gives them); bad ones reported and left
    out."""
    leases = []
    for element in root.iterchildren(LEASE):
        slice_id = reader.text(element, "slice_id")
        if slice_id is not None and slice_urn is not None and not names_the_slice(slice_id, slice_urn):
            continue  # another slice's booking shown to the caller, sent back: not the caller's to book
        before = len(reader.problems)
        if _is_zero(element.get("start_time")):  # IoT-LAB's "as soon as possible", here 1970
            reader.report(
                element,
                'start_time="0" is not read as "as soon as possible" here: leave start_time out to ask for the '
                "earliest slot in which all the lease's nodes are free",
            )
        start = reader.epoch_or_rfc3339(element, "start_time")
        grains = reader.positive_int(element, "duration", "grains", required=True)
        component_ids = [_component_id(reader, node) for node in element.iterchildren(NODE)]
        if not component_ids:
            reader.report(element, 'a lease lists the nodes it books: <node component_id="..."/>')
        if len(reader.problems) > before or grains is None:
            continue
        known = tuple(dict.fromkeys(c for c in component_ids if c is not None))
        # Grouped by slice only when no call names one: then every kept lease is the call's.
        slice_key = slice_id.strip() if slice_id is not None and slice_urn is None else None
        leases.append(SfaLeaseAsked(element, start, grains, known, slice_key))
    return leases


def in_grains(
    reader: Reader, leases: list[SfaLeaseAsked], grain_of: Mapping[str, timedelta], grain: timedelta
) -> list[SfaLease]:
    """The leases with their durations, counted in their nodes' grain (``grain_of``; ``grain`` for a node it does
    not hold), those of one slice with the same start and duration merged (a lease without a start stays one of its
    own: merged, a free node waited for a busy one); a lease whose nodes' grains differ is reported."""
    # Per slot: its first element and its component_ids in order (a dict, so merging thousands of one-node leases of
    # one slot stays linear: a tuple searched and copied for each was quadratic, minutes for a 4 MB request). A slot
    # with no start is its element's.
    slots: dict[
        tuple[str | None, datetime | None, timedelta, timedelta, etree._Element | None],
        tuple[etree._Element, dict[str, None]],
    ] = {}
    for lease in leases:
        grains = {c: grain_of.get(c, grain) for c in lease.component_ids}
        if len(set(grains.values())) > 1:
            named = ", ".join(f"{c} ({int(g.total_seconds())} s)" for c, g in grains.items())
            reader.report(
                lease.element,
                f"duration counts grains of the lease's nodes, but their grains differ: {named}; put the nodes of "
                "each grain in a lease of their own",
            )
            continue
        node_grain = next(iter(grains.values()), grain)
        if node_grain and lease.grains > MAX_DURATION // node_grain:
            reader.report(
                lease.element,
                f"duration={lease.grains} is out of range: at most {MAX_DURATION // node_grain} grains of "
                f"{int(node_grain.total_seconds())} s (ten years)",
            )
            continue
        own = lease.element if lease.start is None else None
        slot = (lease.slice_key, lease.start, lease.grains * node_grain, node_grain, own)
        known = slots.setdefault(slot, (lease.element, {}))[1]
        known.update((c, None) for c in lease.component_ids)
    return [
        SfaLease(first, start, duration, tuple(known), node_grain)
        for (_, start, duration, node_grain, _), (first, known) in slots.items()
    ]


def without_nodes(leases: list[SfaLeaseAsked], left_out: set[str]) -> list[SfaLeaseAsked]:
    """The leases without the nodes ``left_out`` (other aggregates'); a lease left with none books nothing here."""
    if not left_out:
        return leases
    kept = [
        replace(lease, component_ids=tuple(c for c in lease.component_ids if c not in left_out)) for lease in leases
    ]
    return [lease for lease in kept if lease.component_ids]


def with_component_ids(leases: list[SfaLeaseAsked], spelt: Mapping[str, str]) -> list[SfaLeaseAsked]:
    """The leases with their component_ids as the aggregate spells them (``spelt``; others as written)."""
    if not spelt:
        return leases
    return [
        replace(lease, component_ids=tuple(dict.fromkeys(spelt.get(c, c) for c in lease.component_ids)))
        for lease in leases
    ]


def other_slices_leases(root: etree._Element, slice_urn: str) -> list[OtherSliceLease]:
    """The top-level SFA leases of a request whose slice_id names another slice than ``slice_urn``."""
    found = []
    for element in root.iterchildren(LEASE):
        slice_id = element.get("slice_id")
        if slice_id is not None and slice_id.strip() and not names_the_slice(slice_id, slice_urn):
            named = (node.get("component_id") for node in element.iterchildren(NODE))
            found.append(OtherSliceLease(element, slice_id, tuple(c.strip() for c in named if c and c.strip())))
    return found


def names_the_slice(slice_id: str, slice_urn: str) -> bool:
    """Whether an SFA lease's slice_id names the slice ``slice_urn``: its URN as URNs compare here (prefix and type in
    any case, authority and name exactly: ``...+slice+Demo`` is another slice than ``...+slice+demo``), or its HRN
    (``testbed.demo``) exactly."""
    given = slice_id.strip()
    try:
        wanted = parse_urn(slice_urn.strip())
    except BadArgs:
        return given == slice_urn.strip()
    try:
        return parse_urn(given) == wanted
    except BadArgs:  # no URN: an HRN, or text that names no slice
        return given == wanted.hrn


def _is_zero(value: str | None) -> bool:
    """Whether an attribute's value is the number zero ("0", "000")."""
    return value is not None and value.strip() != "" and value.strip().strip("0") == ""


def _component_id(reader: Reader, node: etree._Element) -> str | None:
    return reader.text(node, "component_id", required=True)
