"""The inventory: pools and nodes. Operators change it; the aggregate reads it."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Select, String, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sfa_omf.calendar.agent_models import Agent
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import Lease, Node, Pool, Sliver, VpnNumberRelease
from sfa_omf.calendar.outbox import LeaseNews, RecordedEvent, add_event, add_lease_event
from sfa_omf.calendar.plain_statements import MAX_LISTED, PlainStatement, listed, listed_count, listed_values
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import NODE_STATES, NodeRecord, NodeSpec, PoolRecord
from sfa_omf.errors import BadArgs, GeniError, Reason
from sfa_omf.times import format_time, utcnow
from sfa_omf.xrn import URN_PREFIX, Urn, is_authority_for, is_urn, join_hrn, parse_urn, split_hrn

DEFAULT_POOL = "default"
#: A node's name in its URN: letters, digits and . _ ~ - % (a host name fits; no spaces, no '+', no ':').
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~%-]*")
#: The longest grain (slot length) a node may have: a year, documented in docs/calendar.md. A grain longer than the
#: policy's longest lease only makes the node unbookable; this bound keeps the column's integer (< 2**31) safe.
MAX_GRAIN_S = 365 * 24 * 3600
#: How deep a property's value may nest lists and objects (a deeper one is no description of a node, and deep
#: nesting would exhaust the recursion of the JSON writers that store and advertise it).
MAX_NESTING = 20


# Column lengths of the node table (models.py): checked before writing, so that a value too long is a message
# naming the field, never a database error (or a half-written import).
def _column_length(name: str) -> int:
    column_type = Node.__table__.c[name].type
    assert isinstance(column_type, String) and column_type.length is not None
    return column_type.length


NODE_TEXT_LIMITS = {name: _column_length(name) for name in ("component_id", "component_name", "hardware_type")}
# What an advertisement (XML 1.0) cannot carry: in names and keys no control character at all (C0, DEL, C1), in
# free text (property values, image descriptions) none but tab and line ends; nowhere a lone surrogate, U+FFFE or
# U+FFFF. One such node would make every ListResources fail.
NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
NOT_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def node_urn(text: str, authority_hrn: str) -> str:
    """The URN of a node this aggregate's authority may name: ``text`` is a node URN under ``authority_hrn``, or a
    bare name made into one (``node1`` -> ``urn:publicid:IDN+<authority>+node+node1``). Raises BadArgs naming what
    is wrong: the URN grammar, a type other than node, another authority, or the dot/colon trap (in a URN the
    authority's levels are joined by ':', a '.' stays inside one level)."""
    authority = split_hrn(authority_hrn)
    example = f"{URN_PREFIX}{':'.join(authority)}+node+node1"
    if not is_urn(text):
        if not NODE_NAME.fullmatch(text):
            raise BadArgs(f"{text!r} is neither a node URN ({example}) nor a node name (letters, digits and . _ ~ - %)")
        return str(Urn(authority=authority, type="node", name=text))
    urn = parse_urn(text)
    if urn.type != "node":
        raise BadArgs(f"{text} names a {urn.type}, not a node: a node URN looks like {example}")
    if not NODE_NAME.fullmatch(urn.name):
        raise BadArgs(f"{text}: the node name {urn.name!r} may hold only letters, digits and . _ ~ - %")
    urn_authority = join_hrn(urn.authority)
    if not is_authority_for(authority_hrn, urn_authority):
        dotted = [part for part in urn.authority if "." in part]
        if dotted and ":".join(urn.authority).replace(".", ":") == ":".join(authority):
            raise BadArgs(
                f"{text}: in a URN the authority's levels are joined by ':', not '.': "
                f"{URN_PREFIX}{':'.join(authority)}+node+{urn.name} is the node of authority {authority_hrn}"
            )
        raise BadArgs(
            f"{text} belongs to authority {urn_authority!r}, not to this aggregate's {authority_hrn!r}: an "
            f"aggregate advertises only its own nodes (e.g. {example})"
        )
    return str(urn)


def check_node_fields(fields: Mapping[str, Any], where: str = "") -> None:
    """Refuse (BadArgs naming the field, after ``where``: a file's line) what a node's row cannot hold or an
    advertisement cannot carry: control characters in its component id, name, hardware type, property keys and
    values or disk images; text longer than its column; a grain outside 1..MAX_GRAIN_S s; a number that is not
    finite. ``fields``: any of NodeSpec's fields by name (``Inventory.add_node`` and the bulk import check alike)."""
    prefix = f"{where}: " if where else ""
    for key, limit in NODE_TEXT_LIMITS.items():
        value = fields.get(key)
        if isinstance(value, str):
            _check_text(value, key, prefix, NOT_IN_NAMES)
            if len(value) > limit:
                raise BadArgs(f"{prefix}{key} is {len(value)} characters long: at most {limit}")
    grain = fields.get("grain_s")
    if grain is not None and (isinstance(grain, bool) or not isinstance(grain, int) or not 1 <= grain <= MAX_GRAIN_S):
        raise BadArgs(
            f"{prefix}grain {grain!r} s: a node's booking slot must be from 1 s to {MAX_GRAIN_S} s (a year), "
            "e.g. 1800 for half-hour slots"
        )
    properties = fields.get("properties")
    if isinstance(properties, Mapping):
        for key, value in properties.items():
            _check_text(str(key), "a property name", prefix, NOT_IN_NAMES)
            _check_value(value, f"property {str(key)!r}", prefix)
    for image in fields.get("disk_images") or ():
        if isinstance(image, Mapping):
            for key, value in image.items():
                refused = NOT_IN_TEXT if key == "description" else NOT_IN_NAMES
                _check_value(value, f"disk image {key}", prefix, refused)


def _check_text(text: str, what: str, prefix: str, refused: re.Pattern[str]) -> None:
    found = refused.search(text)
    if found:
        raise BadArgs(
            f"{prefix}{what} holds the control character U+{ord(found.group()):04X} at position {found.start() + 1} "
            f"({text[:40]!r}): an advertisement cannot carry it; remove it"
        )


def _check_value(value: Any, what: str, prefix: str, refused: re.Pattern[str] = NOT_IN_TEXT, depth: int = 0) -> None:
    """A property's value (or a disk image's field), nested lists and objects included (MAX_NESTING levels)."""
    if depth > MAX_NESTING:
        raise BadArgs(f"{prefix}{what} nests lists or objects more than {MAX_NESTING} levels deep: flatten it")
    if isinstance(value, str):
        _check_text(value, what, prefix, refused)
    elif isinstance(value, float) and not math.isfinite(value):
        raise BadArgs(f"{prefix}{what} is {value}: give a finite number")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_text(str(key), f"{what}'s key", prefix, NOT_IN_NAMES)
            _check_value(item, what, prefix, depth=depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_value(item, what, prefix, depth=depth + 1)


def node_record(node: Node) -> NodeRecord:
    return NodeRecord(
        component_id=node.component_id,
        component_name=node.component_name,
        pool=node.pool.name,
        federated=node.pool.federated,
        hardware_type=node.hardware_type,
        exclusive=node.exclusive,
        properties=dict(node.properties),
        disk_images=tuple(dict(image) for image in node.disk_images),
        grain_s=node.grain_s,
        state=node.state,
    )


# What a NodeRecord is made of, as columns (read paths build records from these without ORM objects).
NODE_COLUMNS = (
    Node.component_id,
    Node.component_name,
    Pool.name,
    Pool.federated,
    Node.hardware_type,
    Node.exclusive,
    Node.properties,
    Node.disk_images,
    Node.grain_s,
    Node.state,
)


def node_record_of_row(
    component_id: str,
    component_name: str,
    pool: str,
    federated: bool,
    hardware_type: str,
    exclusive: bool,
    properties: dict[str, Any],
    disk_images: list[dict[str, str]],
    grain_s: int,
    state: str,
) -> NodeRecord:
    """The record of a row of NODE_COLUMNS (the same record node_record makes of the ORM object)."""
    return NodeRecord(
        component_id=component_id,
        component_name=component_name,
        pool=pool,
        federated=federated,
        hardware_type=hardware_type,
        exclusive=exclusive,
        properties=dict(properties),
        disk_images=tuple(dict(image) for image in disk_images),
        grain_s=grain_s,
        state=state,
    )


#: How many component_ids Inventory.find_nodes looks up in one statement (SQLite bounds a statement's parameters).
_LOOKED_UP_AT_ONCE = 1000


def _loose_urn(text: str) -> tuple[tuple[str, ...], str, str] | None:
    """A node URN as Inventory.find_nodes compares it: authority parts in lower case, type, name as it is; None for
    text that is no URN."""
    if not is_urn(text):
        return None
    try:
        urn = parse_urn(text)
    except BadArgs:
        return None
    return tuple(part.lower() for part in urn.authority), urn.type, urn.name


def find_pool(session: Session, name: str) -> Pool:
    pool = session.scalar(select(Pool).where(Pool.name == name))
    if pool is None:
        raise GeniError(Reason.NOT_FOUND, f"there is no pool {name!r} (sfa-omf pool list shows the pools)")
    return pool


def find_node(session: Session, component_id: str, lock: bool = False) -> Node:
    """The node, or NOT_FOUND. lock=True takes a row lock on PostgreSQL (SQLite's write lock covers it already)."""
    query = select(Node).where(Node.component_id == component_id)
    node = session.scalar(query.with_for_update() if lock else query)
    if node is None:
        raise GeniError(Reason.NOT_FOUND, f"there is no node {component_id} (sfa-omf node list shows the nodes)")
    return node


@functools.lru_cache(maxsize=4 * (MAX_LISTED + 2))
def _node_query(ids_listed: int, by_pool: bool, federated_only: bool) -> PlainStatement[Select[*tuple[Any, ...]]]:
    """``Inventory.list_nodes``'s statement for one combination of filters, with bound parameters, built once.
    ``ids_listed``: how many component ids it names (``listed_values("component_ids", ...)``), 0 for any node."""
    query: Select[*tuple[Any, ...]] = (
        select(*NODE_COLUMNS).join(Pool, Node.pool_id == Pool.id).order_by(Node.component_id)
    )
    if ids_listed:
        query = query.where(Node.component_id.in_(listed("component_ids", ids_listed)))
    if by_pool:
        query = query.where(Pool.name == bindparam("pool"))
    if federated_only:
        query = query.where(Pool.federated.is_(True))
    return PlainStatement(query)


class Inventory:
    """Pools and nodes in one database."""

    def __init__(self, database: Database, policy: Policy | None = None) -> None:
        self.database = database
        self.policy = policy or Policy()

    def create_pool(self, name: str, federated: bool = True, description: str = "") -> PoolRecord:
        """A new pool; BadArgs for an empty name, or one (or a description) an advertisement cannot carry."""
        limit = Pool.__table__.c.name.type.length if isinstance(Pool.__table__.c.name.type, String) else None
        if not name.strip():
            raise BadArgs("a pool needs a name (e.g. lab)")
        _check_text(name, "the pool name", "", NOT_IN_NAMES)
        _check_text(description, "the pool description", "", NOT_IN_TEXT)
        if limit is not None and len(name) > limit:
            raise BadArgs(f"the pool name is {len(name)} characters long: at most {limit}")
        try:
            with self.database.write() as session:
                session.add(Pool(name=name, federated=federated, description=description))
        except IntegrityError as exc:
            raise GeniError(Reason.ALREADY_EXISTS, f"pool {name!r} exists already") from exc
        return PoolRecord(name=name, federated=federated, description=description, node_count=0)

    def list_pools(self) -> list[PoolRecord]:
        with self.database.read() as session:
            rows = session.execute(
                select(Pool, func.count(Node.id)).outerjoin(Node).group_by(Pool.id).order_by(Pool.name)
            ).all()
            return [
                PoolRecord(name=pool.name, federated=pool.federated, description=pool.description, node_count=count)
                for pool, count in rows
            ]

    def add_node(self, spec: NodeSpec) -> NodeRecord:
        """Add a node; its pool is created (federated) when it is the default pool and does not exist yet.
        A grain outside 1..MAX_GRAIN_S is refused (None: the policy's), and so is what check_node_fields refuses."""
        check_node_fields(
            {
                "component_id": spec.component_id,
                "component_name": spec.component_name,
                "hardware_type": spec.hardware_type,
                "properties": spec.properties,
                "disk_images": spec.disk_images,
                "grain_s": spec.grain_s,
            },
            f"node {spec.component_id!r}",  # repr: the id itself may hold the control character refused
        )
        try:
            with self.database.write() as session:
                pool = session.scalar(select(Pool).where(Pool.name == spec.pool))
                if pool is None:
                    if spec.pool != DEFAULT_POOL:
                        raise GeniError(Reason.NOT_FOUND, f"there is no pool {spec.pool!r}: create it first")
                    pool = Pool(name=DEFAULT_POOL, federated=True, description="")
                    session.add(pool)
                node = Node(
                    component_id=spec.component_id,
                    component_name=spec.component_name,
                    hardware_type=spec.hardware_type,
                    exclusive=spec.exclusive,
                    properties=dict(spec.properties),
                    disk_images=[dict(image) for image in spec.disk_images],
                    grain_s=self.policy.default_grain_s if spec.grain_s is None else spec.grain_s,
                    state="usable",
                    pool=pool,
                )
                session.add(node)
                session.flush()
                return node_record(node)
        except IntegrityError as exc:
            raise GeniError(Reason.ALREADY_EXISTS, f"node {spec.component_id} exists already") from exc

    def list_nodes(
        self, pool: str | None = None, federated_only: bool = False, component_ids: set[str] | None = None
    ) -> list[NodeRecord]:
        """Nodes by component id; a column query into records (Describe reads its slice's nodes on every call)."""
        if component_ids is not None and not component_ids:
            return []
        wanted = sorted(component_ids or ())
        ids_listed = 0 if component_ids is None else listed_count(wanted)
        parameters = listed_values("component_ids", wanted)
        if pool is not None:
            parameters["pool"] = pool
        query = _node_query(ids_listed, pool is not None, federated_only)
        return [node_record_of_row(*row) for row in self.database.fetch_all(query, parameters)]

    def find_nodes(self, component_ids: set[str] | frozenset[str]) -> dict[str, NodeRecord]:
        """The nodes these component_ids name, by the id as given: the node of that id, else the one whose URN
        differs from it only in the case of its prefix, authority and type (a request's reader takes such a URN
        as this aggregate's; a node's name keeps its case). Ids naming no node, or several, are left out."""
        asked_ids = sorted(component_ids)
        found: dict[str, NodeRecord] = {}
        for first in range(0, len(asked_ids), _LOOKED_UP_AT_ONCE):  # a statement's parameters are bounded (SQLite)
            chunk = set(asked_ids[first : first + _LOOKED_UP_AT_ONCE])
            found.update((node.component_id, node) for node in self.list_nodes(component_ids=chunk))
        result = {asked: found[asked] for asked in asked_ids if asked in found}
        loose = {asked: key for asked in asked_ids if asked not in found and (key := _loose_urn(asked))}
        if not loose:
            return result
        lowered = sorted({asked.lower() for asked in loose})
        candidates: dict[tuple[tuple[str, ...], str, str] | None, list[NodeRecord]] = {}
        with self.database.read() as session:
            for first in range(0, len(lowered), _LOOKED_UP_AT_ONCE):
                # lower() narrows the rows to read; _loose_urn decides (the name's case counts).
                narrowed = lowered[first : first + _LOOKED_UP_AT_ONCE]
                for row in session.scalars(select(Node).where(func.lower(Node.component_id).in_(narrowed))):
                    candidates.setdefault(_loose_urn(row.component_id), []).append(node_record(row))
        for asked, key in loose.items():
            matching = candidates.get(key, [])
            if len(matching) == 1:
                result[asked] = matching[0]
        return result

    def get_node(self, component_id: str) -> NodeRecord:
        with self.database.read() as session:
            return node_record(find_node(session, component_id))

    def update_node(self, component_id: str, component_name: str, properties: dict[str, Any]) -> NodeRecord:
        """Replace a node's name and properties (an import from the testbed refreshes what it describes)."""
        check_node_fields({"component_name": component_name, "properties": properties}, f"node {component_id!r}")
        with self.database.write() as session:
            node = find_node(session, component_id, lock=True)
            node.component_name = component_name
            node.properties = dict(properties)
            return node_record(node)

    def set_state(self, component_id: str, state: str) -> NodeRecord:
        """An operator's state for the node. ``usable`` for a node whose agent is lost (silent past the time-out,
        maybe while the node was in maintenance: the sweep marks an agent lost once) puts it in ``lost`` instead: it
        becomes usable at its agent's next heartbeat, as any lost node does (calendar/agents.py)."""
        if state not in NODE_STATES:
            raise GeniError(Reason.BAD_ARGS, f"node state {state!r} is not one of {', '.join(NODE_STATES)}")
        with self.database.write() as session:
            node = find_node(session, component_id, lock=True)
            if state == "maintenance" and node.state != "maintenance":
                _tell_maintenance(session, node)
            # The agent's row is read, not locked: a heartbeat locks it with the node's, which this call holds; one
            # committed before this read is seen here, one waiting for the node's lock makes the node usable after.
            if state == "usable" and session.scalar(select(Agent.lost).where(Agent.node_id == node.id)):
                state = "lost"  # (calendar/agents.py's LOST)
            node.state = state
            return node_record(node)

    def remove_node(self, component_id: str) -> None:
        """Remove a node that no current or future booking holds (history of past slivers goes with it)."""
        now_s = int(utcnow().timestamp())
        with self.database.write() as session:
            # Locked as a booking locks it: a booking committed between the count and the delete would go with it.
            node = find_node(session, component_id, lock=True)
            holding = session.scalar(
                select(func.count(Sliver.id)).where(
                    Sliver.node_id == node.id, Sliver.holds_node.is_(True), Sliver.end_s > now_s
                )
            )
            if holding:
                raise GeniError(
                    Reason.BAD_ARGS,
                    f"node {component_id} has {holding} current or future booking(s): wait for them to end, cancel "
                    f"them (`sfa-omf lease list --node {component_id}` names their slices; `sfa-omf slice shutdown "
                    "SLICE_URN` cancels all of a slice's leases and refuses it new ones until `sfa-omf slice release "
                    f"SLICE_URN`), or keep the node and set it to maintenance (`sfa-omf node set-state {component_id} "
                    "maintenance`)",
                )
            for sliver in session.scalars(select(Sliver).where(Sliver.node_id == node.id)):
                session.delete(sliver)
            # Its agent's VPN number is given back with the agent row (a cascade): its quarantine starts here, in
            # the same transaction, not at the revocation of its VPN certificate that follows (calendar/agents.py).
            number = session.scalar(select(Agent.vpn_number).where(Agent.node_id == node.id))
            if number is not None:
                session.merge(VpnNumberRelease(number=number, released_s=now_s))
            session.delete(node)

    def move_node(self, component_id: str, to_pool: str, from_pool: str | None = None) -> NodeRecord:
        """Move a node to another pool; with from_pool, only if it is in that pool now (checked under the lock)."""
        with self.database.write() as session:
            node = find_node(session, component_id, lock=True)
            if from_pool is not None and node.pool.name != from_pool:
                raise GeniError(
                    Reason.BAD_ARGS,
                    f"node {component_id} is in pool {node.pool.name!r}, not {from_pool!r}: nothing was moved",
                )
            node.pool = find_pool(session, to_pool)
            session.flush()
            return node_record(node)


def _tell_maintenance(session: Session, node: Node) -> None:
    """A node going into maintenance: an operators' event, and news to the users of every lease booked on it that is
    not over (their slot is affected), in the unit of work that changes the node's state."""
    now = utcnow()
    now_s = int(now.timestamp())
    affected = session.scalars(
        select(Lease.id)
        .join(Sliver, Sliver.lease_id == Lease.id)
        .where(
            Sliver.node_id == node.id,
            Sliver.holds_node.is_(True),
            Sliver.end_s > now_s,
            Lease.state.in_(("allocated", "provisioned")),
        )
        .order_by(Lease.start_s)
    ).all()
    add_event(
        session,
        RecordedEvent(
            key=f"node_maintenance:{node.component_id}:{now_s}",
            event="node_maintenance",
            slice_urn=None,
            payload={
                "event": "node_maintenance",
                "summary": f"node {node.component_id} was put into maintenance ({len(affected)} booked lease(s) "
                "affected)",
                "node": node.component_id,
                "since": format_time(now),
                "leases": list(affected),
            },
            created=now,
        ),
    )
    reason = (
        f"the operator put node {node.component_id} into maintenance at {format_time(now)}; the booking holds, "
        "but the node may not be available during your slot: ask the operator, or book another node"
    )
    for lease_id in affected:
        news = LeaseNews("node_maintenance", f"{lease_id}:node_maintenance:{node.id}:{now_s}", reason)
        add_lease_event(session, lease_id, news, now)
