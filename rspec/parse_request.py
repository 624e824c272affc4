"""Request RSpec -> Request, whichever way the client wrote its time slots:

- ol leases: top-level <ol:lease> and <ol:lease_ref> in nodes (omf_sfa, jFed, MySlice);
- SFA leases: top-level <lease start_time duration><node component_id/></lease>, in GENI's namespace or none (sfi);
- no time in the RSpec: geni_start_time/geni_end_time Allocate options (omni), else the operator's default duration
  from now (a ``from_now`` lease with no start: from now when the nodes are free, else as soon as possible).

Dialects may be mixed. A node is booked in every lease that names it; a node no lease names goes into the options'
slot or the default one. Nothing is booked here: the request is checked against the schema, then read, and every
problem found (line, column, element, what was expected) is raised together in one RSpecError.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from lxml import etree

from rspec.dialects import ol, options, sfa
from rspec.document import Document, RSpecLimits, load
from rspec.model import CONTAINER_SLIVER_TYPE, MAX_INSTANCE_COUNT, Request, RequestLease, RequestNode
from rspec.namespaces import geni, inst
from rspec.problems import Problem, RSpecError
from rspec.reading import Reader
from rspec.schemas import Schema, schema_problems
from sfa_omf.times import as_utc

WHAT = "request RSpec"
_ASCII_COUNT = re.compile(r"^[0-9]{1,9}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class KnownNode:
    """One of this aggregate's nodes, as its calendar holds it: its component_id as spelt there, and its grain."""

    component_id: str
    grain: timedelta


#: Given the component_ids a request names for this aggregate, the nodes it holds among them, by the component_id as
#: the request wrote it (found whatever the case of the URN's prefix, authority and type).
NodeLookup = Callable[[frozenset[str]], Mapping[str, KnownNode]]


@dataclass(frozen=True)
class RequestPolicy:
    """The operator's choices that reading a request depends on, and the aggregate's nodes it reads them against."""

    # How long a node is booked when the client gives no time at all.
    default_duration: timedelta = timedelta(hours=1)
    # SFA leases count their duration in grains of their nodes' own grain (advertised as <granularity grain=.../>):
    # this one for a node ``known_nodes`` does not give (every node, without it).
    grain: timedelta = timedelta(minutes=30)
    limits: RSpecLimits = field(default_factory=RSpecLimits)
    # This aggregate's URN. omni and jFed send a slice's whole request to each of its aggregates: a node naming
    # another component manager is another aggregate's, and is left out (with the SFA leases' mentions of it).
    # None reads every node.
    component_manager_id: str | None = None
    # This aggregate's nodes (their grains, and their component_ids as the calendar spells them): None reads every
    # component_id as written, in ``grain``.
    known_nodes: NodeLookup | None = None


@dataclass
class _Node:
    element: etree._Element | None  # None for a node only an SFA lease names
    node: RequestNode
    refs: list[tuple[etree._Element, str]]


def parse_request(
    data: bytes | str,
    *,
    now: datetime,
    policy: RequestPolicy | None = None,
    allocate_options: Mapping[str, object] | None = None,
    slice_urn: str | None = None,
) -> Request:
    """Read a request RSpec (and the Allocate options that may carry its times) for the slice ``slice_urn`` (SFA
    leases naming another slice are left out; None reads them all). Raise RSpecError (BADARGS; TOOBIG for an
    oversized document) listing every problem, or return the Request."""
    policy = policy or RequestPolicy()
    now = as_utc(now)
    document = load(data, policy.limits, WHAT)
    _check_root(document)
    found = schema_problems(document, Schema.REQUEST, policy.limits.max_problems)
    if len(found) >= policy.limits.max_problems:  # reading on would only find more
        raise RSpecError(found, WHAT)
    reader = Reader(document, policy.limits.max_problems)
    nodes, elsewhere, other_managers = _read_nodes(reader, policy.component_manager_id)
    if reader.full:  # the rest would only add to a list already long enough
        raise RSpecError(_merge(found, reader.problems)[: policy.limits.max_problems], WHAT)
    for link in document.root.iterchildren(geni("link")):
        reader.report(link, "this aggregate has no links: remove the <link> elements")
    ol_leases = ol.read_leases(reader, document.root)
    ol.report_foreign_leases(reader, document.root)
    sfa_asked = sfa.without_nodes(sfa.read_asked(reader, document.root, slice_urn), elsewhere)
    known = _known_nodes(policy, nodes, sfa_asked)
    nodes = [_spelt_as_known(node, known) for node in nodes]
    sfa_asked = sfa.with_component_ids(sfa_asked, {named: node.component_id for named, node in known.items()})
    grain_of = {node.component_id: node.grain for node in known.values()}
    sfa_leases = sfa.in_grains(reader, sfa_asked, grain_of, policy.grain)
    option_problems: list[Problem] = []
    slot = options.read_slot(allocate_options, now, policy.default_duration, option_problems)
    others = sfa.other_slices_leases(document.root, slice_urn) if slice_urn is not None else []
    not_from_now = _not_from_now(document.root, nodes, others)
    fallback = slot or options.Slot(None, policy.default_duration, True)
    leases = _assemble(reader, nodes, ol_leases, sfa_leases, fallback, not_from_now)
    if not leases:
        _report_nothing_to_book(reader, slice_urn, others, not_from_now)
    _check_overlaps(reader, nodes, leases)
    problems = _merge(found, reader.problems) + option_problems
    if problems:
        raise RSpecError(problems[: policy.limits.max_problems], WHAT)
    return Request(
        nodes=tuple(n.node for n in nodes),
        leases=_in_time_order(lease for lease, _ in leases),
        left_to_others=tuple(sorted(other_managers)),
    )


def _not_from_now(root: etree._Element, nodes: list[_Node], others: list[sfa.OtherSliceLease]) -> set[str]:
    """The nodes (client_ids) not booked from now for want of a lease: a node another slice's SFA lease names (that
    slice's booking, shown), and, in a request with leases (SFA or ol: an advertisement sent back, every node it
    listed, with the leases one added), a node that carries what an advertisement lists (<available>). A plain
    <node> with no lease is booked from now, as ever."""
    others_nodes = {c for lease in others for c in lease.component_ids}
    with_leases = any(True for _ in root.iterchildren(sfa.LEASE, ol.LEASE))
    return {
        n.node.client_id
        for n in nodes
        if n.node.component_id in others_nodes or (with_leases and _listed_by_an_advertisement(n.element))
    }


def _report_nothing_to_book(
    reader: Reader, slice_urn: str | None, others: list[sfa.OtherSliceLease], not_from_now: set[str]
) -> None:
    """Why a request that names nodes books none of them, when it is other slices' leases or an advertisement's
    listing (a request naming no node at all is refused by the aggregate, which says so)."""
    if others:
        named = ", ".join(sorted({repr(lease.slice_id) for lease in others}))
        reader.report(
            others[0].element,
            f"every SFA lease of this request names another slice (slice_id {named}) than the one called for "
            f'({slice_urn}): nothing to book; write slice_id="{slice_urn}" on your leases, or leave slice_id out',
        )
    elif not_from_now:
        listed = ", ".join(sorted(not_from_now)[:5]) + (", ..." if len(not_from_now) > 5 else "")
        reader.report(
            reader.document.root,
            f"nothing to book: no lease names the nodes this request lists as an advertisement lists them ({listed}); "
            "add a lease for each node you want (an SFA <lease> with your slice_id, or an <ol:lease>)",
        )


def _check_root(document: Document) -> None:
    root = document.root
    if root.tag == "RSpec" or root.tag == geni("RSpec"):
        message = 'SFA v1 RSpecs (<RSpec type="SFA">) are not read here: send a GENI v3 request RSpec'
        raise RSpecError([document.problem(root, message)], WHAT)
    if root.tag != geni("rspec"):
        message = f'expected <rspec type="request" xmlns="{geni("")[1:-1]}">'
        raise RSpecError([document.problem(root, message)], WHAT)
    kind = root.get("type")
    if kind != "request":
        message = f'type="{kind}": expected type="request"' if kind else 'attribute type="request" is missing'
        raise RSpecError([document.problem(root, message)], WHAT)


def _read_nodes(reader: Reader, manager: str | None) -> tuple[list[_Node], set[str], set[str]]:
    """The nodes for this aggregate (``manager``; None: every node), the component_ids of the others' and the
    component_manager_ids they name."""
    nodes: list[_Node] = []
    elsewhere: set[str] = set()
    other_managers: set[str] = set()
    where: dict[str, etree._Element] = {}
    for element in reader.document.root.iterchildren(geni("node")):
        if reader.full:
            break
        client_id = reader.text(element, "client_id")
        component_id = reader.text(element, "component_id")
        if client_id is None:
            if component_id is None:
                reader.report(element, "a node needs a client_id (GENI) or a component_id (SFA)")
                continue
            client_id = component_id  # SFA names nodes by component_id
        if client_id in where:
            line, _ = reader.document.position(where[client_id])
            reader.report(element, f"client_id {client_id!r} is already used by the node on line {line}")
            continue
        where[client_id] = element
        component_manager_id = reader.text(element, "component_manager_id")
        if component_manager_id is not None and _another_aggregates(component_manager_id, manager):
            if component_id is not None and manager is not None and _authority(component_id) == _authority(manager):
                # A node of ours said to be another's (a stale or mistyped manager): left out, it would go unbooked
                reader.report(
                    element,
                    f"node {component_id} is this aggregate's, but its component_manager_id names "
                    f"{component_manager_id}: write {manager}",
                )
                continue
            if component_id is not None:
                elsewhere.add(component_id)
            other_managers.add(component_manager_id)
            continue
        hardware = _single(reader, element, "hardware_type")
        sliver = _single(reader, element, "sliver_type")
        image = _single(reader, sliver, "disk_image") if sliver is not None else None
        node = RequestNode(
            client_id=client_id,
            component_id=component_id,
            component_manager_id=component_manager_id,
            component_name=reader.text(element, "component_name"),
            exclusive=reader.boolean(element, "exclusive"),
            hardware_type=reader.text(hardware, "name", required=True) if hardware is not None else None,
            sliver_type=reader.text(sliver, "name", required=True) if sliver is not None else None,
            disk_image=reader.text(image, "name", required=True) if image is not None else None,
            instance_count=_instance_count(reader, sliver) if sliver is not None else None,
        )
        nodes.append(_Node(element, node, ol.read_refs(reader, element)))
    return nodes, elsewhere, other_managers


def _another_aggregates(named: str, ours: str | None) -> bool:
    """Whether a node's component_manager_id names another aggregate than ours (None: every node is ours): another
    authority, whatever the case and the manager's type (SFA writes ``+authority+cm``, GENI ``+authority+am``, for
    one aggregate)."""
    return ours is not None and _authority(named) != _authority(ours)


def _authority(urn: str) -> str:
    """``urn:publicid:idn+<authority>`` of an authority's or a node's URN (lowercase), else the whole URN."""
    parts = urn.strip().lower().split("+")
    return "+".join(parts[:2]) if len(parts) == 4 and parts[2] in ("authority", "node") else urn.strip().lower()


def _known_nodes(
    policy: RequestPolicy, nodes: list[_Node], sfa_leases: list[sfa.SfaLeaseAsked]
) -> Mapping[str, KnownNode]:
    """The aggregate's nodes among those the request names (one look-up for them all), by the component_id as
    written. Looked up: the nodes of SFA leases (their grains count the leases' durations), and nodes whose URN is
    not spelled as this aggregate spells its nodes (a prefix or authority in another case). A request naming its
    nodes as the advertisement does, with ol leases, is read without a look-up: Allocate's booking finds them."""
    if policy.known_nodes is None:
        return {}
    spelt_as_ours = _node_prefix(policy.component_manager_id)
    named = {
        n.node.component_id
        for n in nodes
        if n.node.component_id is not None
        and not (spelt_as_ours is not None and n.node.component_id.startswith(spelt_as_ours))
    }
    named.update(c for lease in sfa_leases for c in lease.component_ids)
    return policy.known_nodes(frozenset(named)) if named else {}


def _node_prefix(manager: str | None) -> str | None:
    """``urn:publicid:IDN+<authority>+node+``, as the aggregate whose URN is ``manager`` spells its nodes' URNs;
    None when that is not known."""
    parts = manager.split("+") if manager is not None else []
    if len(parts) != 4 or parts[0] != "urn:publicid:IDN" or parts[2] != "authority":
        return None
    return f"{parts[0]}+{parts[1]}+node+"


def _spelt_as_known(node: _Node, known: Mapping[str, KnownNode]) -> _Node:
    """The node with its component_id as the aggregate spells it (a URN's authority may come in another case)."""
    found = known.get(node.node.component_id or "")
    if found is None or found.component_id == node.node.component_id:
        return node
    return _Node(node.element, replace(node.node, component_id=found.component_id), node.refs)


def _instance_count(reader: Reader, sliver: etree._Element) -> int | None:
    """inst:count on a <sliver_type name="lxc">: 1 to MAX_INSTANCE_COUNT containers (1 when absent)."""
    value = sliver.get(inst("count"))
    kind = sliver.get("name")
    if kind != CONTAINER_SLIVER_TYPE:
        if value is not None:
            reader.report(sliver, f'inst:count applies to <sliver_type name="{CONTAINER_SLIVER_TYPE}"> only')
        return None
    if value is None:
        return 1
    # ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and other scripts' digits.
    if not _ASCII_COUNT.match(value.strip()) or not 1 <= int(value) <= MAX_INSTANCE_COUNT:
        reader.report(sliver, f"inst:count={value!r}: a number of containers from 1 to {MAX_INSTANCE_COUNT}")
        return None
    return int(value)


def _single(reader: Reader, parent: etree._Element, local: str) -> etree._Element | None:
    """The one child ``local`` of ``parent`` (a request asks for one sliver type, one image...)."""
    found = list(parent.iterchildren(geni(local)))
    for extra in found[1:]:
        reader.report(extra, f"a request gives at most one <{local}> per <{reader_name(parent)}>")
    return found[0] if found else None


def reader_name(element: etree._Element) -> str:
    """An element's local name, for messages."""
    return etree.QName(element).localname


def _assemble(
    reader: Reader,
    nodes: list[_Node],
    ol_leases: list[ol.OlLease],
    sfa_leases: list[sfa.SfaLease],
    fallback: options.Slot,
    not_from_now: set[str],
) -> list[tuple[RequestLease, etree._Element | None]]:
    """The leases with their nodes (client_ids in node order), each with its element for messages. A node no lease
    books is booked in ``fallback`` (from now, or the Allocate options' window), but for those of ``not_from_now``
    (client_ids), left out."""
    by_name: dict[str, int] = {}
    for index, lease in enumerate(ol_leases):
        for name in lease.names:
            if name in by_name and ol_leases[by_name[name]].element is not lease.element:
                reader.report(lease.element, f"another ol:lease is already named {name!r}")
            by_name.setdefault(name, index)
    members: list[set[str]] = [set() for _ in ol_leases]
    covered: set[str] = set()
    for node in nodes:
        for element, id_ref in node.refs:
            if id_ref not in by_name:
                reader.report(element, f"no ol:lease in this request has client_id or id {id_ref!r}")
                continue
            members[by_name[id_ref]].add(node.node.client_id)
            covered.add(node.node.client_id)

    order = {n.node.client_id: i for i, n in enumerate(nodes)}

    def in_order(client_ids: set[str]) -> tuple[str, ...]:
        return tuple(sorted(client_ids, key=order.__getitem__))

    result: list[tuple[RequestLease, etree._Element | None]] = []
    for lease, client_ids in zip(ol_leases, members, strict=True):
        if client_ids:  # a lease no node refers to books nothing
            booked = RequestLease(lease.start, lease.duration, in_order(client_ids), lease.existing_id, lease.client_id)
            result.append((booked, lease.element))
    by_component: dict[str, str] = {}
    for node in nodes:
        if node.node.component_id is not None:
            by_component.setdefault(node.node.component_id, node.node.client_id)
    # A manifest sent back may write each of the slice's leases both ways (ol:lease, and SFA's <lease> for sfi
    # users): an SFA lease's node that an ol:lease books until the same end, from a start within the SFA lease's
    # first grain (SFA's view floors a partial first grain), is that booking, not a second one.
    # The ol leases' starts by node and end, sorted: each SFA lease's node is looked up in log time (a scan of the
    # node's every ol lease made a manifest of thousands of leases written both ways take a minute).
    component_of = {n.node.client_id: n.node.component_id for n in nodes}
    ol_starts: dict[tuple[str | None, datetime], list[datetime]] = {}
    for booked, _ in result:
        if booked.start is not None and booked.end is not None:
            for client_id in booked.nodes:
                ol_starts.setdefault((component_of[client_id], booked.end), []).append(booked.start)
    for starts in ol_starts.values():
        starts.sort()
    for asked in sfa_leases:
        end = asked.start + asked.duration if asked.start is not None else None
        repeated = {c for c in asked.component_ids if end and _written_as_ol(asked, ol_starts.get((c, end)))}
        sfa_lease = replace(asked, component_ids=tuple(c for c in asked.component_ids if c not in repeated))
        if not sfa_lease.component_ids:
            continue
        # A node added for a component is named by it: that name must not be another node's client_id already.
        named = [c for c in sfa_lease.component_ids if c not in by_component and c in order]
        for component_id in named:
            reader.report(
                sfa_lease.element,
                f"this lease books component {component_id}, which is the client_id of a node of this request "
                f'without that component_id: give that node component_id="{component_id}", or another client_id',
            )
        if named:
            continue
        client_ids = {_node_for_component(nodes, by_component, c, order) for c in sfa_lease.component_ids}
        covered |= client_ids
        result.append((RequestLease(sfa_lease.start, sfa_lease.duration, in_order(client_ids)), sfa_lease.element))
    uncovered = {n.node.client_id for n in nodes} - covered - not_from_now
    if uncovered:
        rest = RequestLease(fallback.start, fallback.duration, in_order(uncovered), from_now=fallback.from_now)
        result.append((rest, None))
    return result


def _listed_by_an_advertisement(element: etree._Element | None) -> bool:
    """Whether a request's <node> carries what only an advertisement writes (<available>): one sent back as sfi users
    send back `sfi resources -l all`, listing every node."""
    return element is not None and element.find(geni("available")) is not None


def _written_as_ol(lease: sfa.SfaLease, ol_starts: list[datetime] | None) -> bool:
    """Whether an SFA lease is, for one node, one of the node's ol leases written in SFA's view: ``ol_starts`` are
    the sorted starts of the node's ol leases that end when it does; one must be within its first grain."""
    if lease.start is None or not ol_starts:
        return False
    first = bisect.bisect_left(ol_starts, lease.start)
    return first < len(ol_starts) and ol_starts[first] < lease.start + lease.grain


def _node_for_component(
    nodes: list[_Node], by_component: dict[str, str], component_id: str, order: dict[str, int]
) -> str:
    """The client_id of the (first) node with this component_id, adding one when only an SFA lease names it."""
    if component_id not in by_component:
        nodes.append(_Node(None, RequestNode(client_id=component_id, component_id=component_id, exclusive=True), []))
        by_component[component_id] = component_id
        order[component_id] = len(order)
    return by_component[component_id]


def _check_overlaps(
    reader: Reader, nodes: list[_Node], leases: list[tuple[RequestLease, etree._Element | None]]
) -> None:
    """One node cannot be booked twice at the same time, even by one request. A node is its component, or for an
    unbound node (no component_id) the request's node itself."""
    component = {
        n.node.client_id: (n.node.component_id, "node") if n.node.component_id else (n.node.client_id, "client node")
        for n in nodes
    }
    elements = {n.node.client_id: n.element for n in nodes}
    slots: dict[tuple[str, str], list[tuple[datetime, datetime, etree._Element | None]]] = {}
    # Bookings with no start are placed by the aggregate one at a time from the calendar, blind to the request's
    # other bookings: a node booked so and booked again by the same request would clash with itself (answered as
    # "booked during ..." by another, which it is not).
    unplaced: dict[tuple[str, str], list[etree._Element | None]] = {}
    times_booked: dict[tuple[str, str], int] = {}
    for lease, element in leases:
        for client_id in lease.nodes:
            key = component[client_id]
            times_booked[key] = times_booked.get(key, 0) + 1
            if lease.start is None or lease.end is None:
                unplaced.setdefault(key, []).append(element if element is not None else elements[client_id])
            else:
                slots.setdefault(key, []).append((lease.start, lease.end, element))
    for (name, kind), where in unplaced.items():
        if times_booked[(name, kind)] > 1:
            for element in dict.fromkeys(w for w in where if w is not None):
                reader.report(
                    element,
                    f"{kind} {name} is booked here with no start time and booked again by this request: give each "
                    "of its slots a start time, or ask for it once",
                )
    for (name, kind), spans in slots.items():
        spans.sort(key=lambda span: (span[0], span[1]))
        latest_end = spans[0][1]
        for start, end, element in spans[1:]:
            if start < latest_end and element is not None:
                reader.report(element, f"this lease overlaps another lease of {kind} {name}")
            latest_end = max(latest_end, end)


def _in_time_order(leases: Iterable[RequestLease]) -> tuple[RequestLease, ...]:
    """Leases in the order of their start (as-soon-as-possible ones last), whatever order the document had."""
    return tuple(sorted(leases, key=lambda lease: (lease.start is None, lease.start or _EPOCH, lease.duration)))


def _merge(schema: list[Problem], read: list[Problem]) -> list[Problem]:
    """Reader problems are the precise ones; drop schema problems about an element the reader already reported."""
    places = {(p.line, p.column) for p in read}
    return sorted(read + [p for p in schema if (p.line, p.column) not in places])
