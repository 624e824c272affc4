"""Bulk node import from a file (``sfa-omf node import --from-file nodes.csv|nodes.json``): thousands of nodes in a
few write units of work with multi-row statements, instead of one unit of work (and one process) per node.

Formats. JSON: a list of objects whose keys are NodeSpec's fields (``component_id`` required; ``component_name``,
``pool``, ``hardware_type``, ``exclusive``, ``grain_s``, ``properties`` (an object), ``disk_images`` (a list of
objects with ``name`` and optional ``os``, ``version``, ``description``)). CSV: a header row; the columns
``component_id`` (required), ``component_name``, ``pool``, ``hardware_type``, ``exclusive`` (true/false),
``grain_s``, ``disk_images`` (``NAME[:OS[:VERSION]]`` separated by ``;``); every other column is a property.

Re-running updates: a node already in the inventory (same component id) gets the fields the file gives (a field
the file leaves out keeps its value; its state, usable or maintenance, is never touched); a node is never added
twice (one an older import stored under another spelling of its URN is updated; two entries that are one node are
refused, naming both). Rows are locked in id order across the whole import, so two imports at once (or an import
and a booking) wait for each other, and a collision the database reports is retried (``retry_transient``). The whole
file is checked before anything is written (component ids as ``sfa-omf node add`` checks them, text as
``Inventory.add_node`` does: ``inventory.check_node_fields``), and the nodes are written in one unit of work, so a
bad line, or a refusal while writing, changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sfa_omf.calendar.database import Database, TransientConflict, retry_transient
from sfa_omf.calendar.inventory import DEFAULT_POOL, NODE_NAME, check_node_fields, node_urn
from sfa_omf.calendar.models import Node, Pool, Sliver
from sfa_omf.calendar.policy import Policy
from sfa_omf.errors import BadArgs, GeniError, Reason
from sfa_omf.times import utcnow
from sfa_omf.xrn import is_urn, parse_urn

CHUNK = 1000  # nodes per statement (bounded statements and parameter lists), and a progress step
FIELDS = ("component_name", "pool", "hardware_type", "exclusive", "grain_s", "properties", "disk_images")
CSV_COLUMNS = frozenset({"component_id", *FIELDS})
IMAGE_KEYS = frozenset({"name", "os", "version", "description"})


@dataclass(frozen=True)
class NodeEntry:
    """One node of the file: its component id and the fields the file gives for it (FIELDS' names)."""

    component_id: str
    given: Mapping[str, Any]
    where: str  # "nodes.csv line 12", for messages


@dataclass
class BulkImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    pools_created: list[str] = field(default_factory=list)


def read_node_file(path: str | Path, authority_hrn: str | None = None) -> list[NodeEntry]:
    """The nodes a .csv or .json file describes, checked (BadArgs names the line or item at fault).
    ``authority_hrn``: this aggregate's authority; every component id must then be one of its nodes (a URN or a bare
    name, as ``sfa-omf node add`` takes them). None: any authority, the URN's grammar and node name still checked."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark (as spreadsheets write) is not a column
    except (OSError, UnicodeDecodeError) as exc:
        raise BadArgs(f"cannot read {path}: {exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            entries = list(_json_entries(text, path.name, authority_hrn))
        elif path.suffix.lower() == ".csv":
            entries = list(_csv_entries(text, path.name, authority_hrn))
        else:
            raise BadArgs(f"{path.name}: the node file must end in .csv or .json")
    except RecursionError as exc:
        raise BadArgs(f"{path.name}: nested too deeply to read (a node's values nest a few levels at most)") from exc
    refuse_twice(entries)
    return entries


def refuse_twice(entries: Sequence[NodeEntry]) -> None:
    """BadArgs naming both places when two entries are one node (their component ids, canonical, are equal)."""
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.component_id in seen:
            raise BadArgs(
                f"{entry.where}: {entry.component_id} is in the file twice (first at {seen[entry.component_id]})"
            )
        seen[entry.component_id] = entry.where


def _json_entries(text: str, name: str, authority_hrn: str | None) -> Iterator[NodeEntry]:
    try:
        items = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadArgs(f"{name}: not JSON ({exc})") from exc
    except BadArgs as exc:  # _no_constant's
        raise BadArgs(f"{name}: {exc.message}") from exc
    if not isinstance(items, list):
        raise BadArgs(f"{name}: expected a list of node objects")
    for index, item in enumerate(items):
        where = f"{name} item {index}"
        if not isinstance(item, dict):
            raise BadArgs(f"{where}: expected an object")
        unknown = set(item) - CSV_COLUMNS
        if unknown:
            raise BadArgs(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(CSV_COLUMNS))})"
            )
        yield check_entry(item, where, authority_hrn)


def _no_constant(constant: str) -> Any:
    """NaN, Infinity and -Infinity are not JSON (Python's reader takes them): no node's value is one."""
    raise BadArgs(f"{constant} is not a number JSON allows: give a finite number or a string")


def _csv_entries(text: str, name: str, authority_hrn: str | None) -> Iterator[NodeEntry]:
    # Lines end only at \n, \r or \r\n (newline=""): str.splitlines would also end one at \x0c, \x1c or \u2028
    # inside a cell, making two nodes of one line.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        yield from _csv_rows(reader, name, authority_hrn)
    except csv.Error as exc:  # e.g. a cell over the csv module's field size limit
        # (line_num counts the lines read whole: the one at fault is the next)
        raise BadArgs(f"{name} line {reader.line_num + 1}: not CSV ({exc})") from exc


def _csv_rows(reader: csv.DictReader[str], name: str, authority_hrn: str | None) -> Iterator[NodeEntry]:
    if reader.fieldnames is None or "component_id" not in reader.fieldnames:
        raise BadArgs(f"{name}: the first line must name the columns, component_id among them")
    twice = sorted({column for column in reader.fieldnames if reader.fieldnames.count(column) > 1})
    if twice:
        raise BadArgs(f"{name} line 1: the column(s) {', '.join(map(repr, twice))} are named twice: name each once")
    for row in reader:
        where = f"{name} line {reader.line_num}"
        if None in row:
            raise BadArgs(f"{where}: more values than columns")
        item: dict[str, Any] = {}
        properties: dict[str, str] = {}
        for column, value in row.items():
            assert column is not None
            value = (value or "").strip()
            if column not in CSV_COLUMNS:
                if value:
                    properties[column] = value
            elif column == "disk_images":
                item[column] = [_csv_image(image, where) for image in value.split(";") if image.strip()]
            elif column == "exclusive":
                if value.lower() not in ("true", "false", ""):
                    raise BadArgs(f"{where}: exclusive is {value!r}; write true or false")
                if value:
                    item[column] = value.lower() == "true"
            elif column == "grain_s":
                if value:
                    item[column] = _integer(value, where)
            elif value or column == "component_id":
                item[column] = value
        if properties or any(column not in CSV_COLUMNS for column in reader.fieldnames):
            item["properties"] = properties
        yield check_entry(item, where, authority_hrn)


def _csv_image(text: str, where: str) -> dict[str, str]:
    name, _, rest = text.strip().partition(":")
    os_name, _, version = rest.partition(":")
    if not name:
        raise BadArgs(f"{where}: disk image {text!r} has no name (NAME[:OS[:VERSION]])")
    return {"name": name, "os": os_name, "version": version}


def _integer(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise BadArgs(f"{where}: grain_s is {value!r}, not a number of seconds") from exc


def check_entry(item: Mapping[str, Any], where: str, authority_hrn: str | None = None) -> NodeEntry:
    """Check one node's fields; the same rules whatever the format. The component id becomes its canonical spelling
    (``inventory.node_urn`` under ``authority_hrn``, as ``sfa-omf node add`` makes it), so that two spellings of one
    URN are one node."""
    component_id = _component_id(item.get("component_id"), where, authority_hrn)
    given = {key: item[key] for key in FIELDS if key in item}
    for key in ("component_name", "pool", "hardware_type"):
        if key in given and not isinstance(given[key], str):
            raise BadArgs(f"{where}: {key} must be text")
    if "component_name" in given and not given["component_name"]:
        raise BadArgs(f"{where}: component_name is empty")
    if "exclusive" in given and not isinstance(given["exclusive"], bool):
        raise BadArgs(f"{where}: exclusive must be true or false")
    grain = given.get("grain_s")
    if "grain_s" in given and (isinstance(grain, bool) or not isinstance(grain, int) or grain <= 0):
        raise BadArgs(f"{where}: grain_s must be a positive number of seconds")
    if "properties" in given and not isinstance(given["properties"], dict):
        raise BadArgs(f"{where}: properties must be an object")
    images = given.get("disk_images", [])
    if not isinstance(images, list) or not all(
        isinstance(image, dict)
        and set(image) <= IMAGE_KEYS
        and isinstance(image.get("name"), str)
        and image["name"]
        and all(isinstance(value, str) for value in image.values())
        for image in images
    ):
        raise BadArgs(f"{where}: disk_images must be a list of {{name, os, version, description}} with a name")
    check_node_fields({"component_id": component_id, **given}, where)
    return NodeEntry(component_id, given, where)


def _component_id(value: Any, where: str, authority_hrn: str | None) -> str:
    """The canonical node URN of a file's component_id (see check_entry), or BadArgs naming ``where``."""
    example = "urn:publicid:IDN+<authority>+node+<name>"
    if not isinstance(value, str):
        raise BadArgs(f"{where}: component_id {value!r} is not a node URN ({example})")
    check_node_fields({"component_id": value}, where)  # control characters and length, before any parsing
    try:
        if authority_hrn is not None:
            return node_urn(value, authority_hrn)
        if not is_urn(value):
            raise BadArgs(f"{value!r} is not a node URN ({example})")
        urn = parse_urn(value)
    except BadArgs as exc:
        raise BadArgs(f"{where}: component_id {exc.message}") from exc
    if urn.type != "node" or not NODE_NAME.fullmatch(urn.name):
        raise BadArgs(
            f"{where}: component_id {value!r} is not a node URN ({example}; a name of letters, digits and . _ ~ - %)"
        )
    return str(urn)


def import_nodes(
    database: Database,
    entries: Sequence[NodeEntry],
    policy: Policy | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> BulkImportReport:
    """Add the entries' nodes that the inventory lacks and update the others, in one unit of work (CHUNK nodes per
    statement): a refusal anywhere changes nothing.

    Pools must exist, except the default pool, which is created (federated) as ``Inventory.add_node`` does.
    Everything is checked before the first write: an unknown pool changes nothing. A node's grain does not change
    while a booking holds it now or later (its leases could not be renewed on the new grain): BadArgs names them.
    """
    policy = policy or Policy()
    refuse_twice(entries)  # every caller's entries (a broker's nodes too): two INSERTs of one id would fail late
    with database.read() as session:
        pools = _pool_ids(session)
    missing = sorted({entry.given.get("pool", DEFAULT_POOL) for entry in entries} - set(pools) - {DEFAULT_POOL})
    if missing:
        raise GeniError(Reason.NOT_FOUND, f"there is no pool {missing[0]!r}: create it first (sfa-omf pool create)")
    now_s = int(utcnow().timestamp())

    def unit_of_work() -> BulkImportReport:
        report = BulkImportReport()  # afresh on each attempt: a retried attempt counts from nothing
        with database.write() as session:
            pool_ids = _pools(session, report)
            stored = stored_nodes(session)
            # Rows locked in id order across the whole import (not file order, chunk by chunk): two imports, or an
            # import and a booking (which locks in id order too), wait for each other instead of deadlocking.
            rows = _lock_rows(
                session, sorted({stored[entry.component_id][1] for entry in entries if entry.component_id in stored})
            )
            for first in range(0, len(entries), CHUNK):
                chunk = entries[first : first + CHUNK]
                _write_chunk(session, chunk, stored, rows, pool_ids, policy, report, now_s)
                progress(first + len(chunk), len(entries))
        return report

    report = retry_transient(unit_of_work)  # a deadlock or serialization failure left: run it again, then BUSY
    if not entries:
        progress(0, 0)
    return report


def stored_nodes(session: Session) -> dict[str, tuple[str, int]]:
    """Every stored node by its canonical component id: its id as stored, and its row id. Nodes stored before the
    import made ids canonical keep the file's spelling (``urn:publicid:idn+...``, ``...+NODE+...``): an entry of
    that node must update that row, not add a second node of the same machine."""
    stored: dict[str, tuple[str, int]] = {}
    for component_id, node_id in session.execute(select(Node.component_id, Node.id).order_by(Node.id)):
        try:
            canonical = str(parse_urn(component_id))
        except BadArgs:  # not a URN (stored by hand long ago): only its exact spelling finds it
            canonical = component_id
        if canonical not in stored or component_id == canonical:  # the canonical spelling first, else the oldest
            stored[canonical] = (component_id, node_id)
    return stored


def _lock_rows(session: Session, node_ids: Sequence[int]) -> dict[int, Any]:
    """The nodes' rows by id, locked FOR UPDATE in id order (CHUNK ids per statement)."""
    rows: dict[int, Any] = {}
    for first in range(0, len(node_ids), CHUNK):
        for row in session.execute(
            select(
                Node.id,
                Node.component_id,
                Node.component_name,
                Node.pool_id,
                Node.hardware_type,
                Node.exclusive,
                Node.grain_s,
                Node.properties,
                Node.disk_images,
            )
            .where(Node.id.in_(node_ids[first : first + CHUNK]))
            .order_by(Node.id)
            .with_for_update()
        ):
            rows[row.id] = row
    return rows


def _pool_ids(session: Session) -> dict[str, int]:
    return {name: pool_id for name, pool_id in session.execute(select(Pool.name, Pool.id))}


def _pools(session: Session, report: BulkImportReport) -> dict[str, int]:
    pools = _pool_ids(session)
    if DEFAULT_POOL not in pools:
        session.execute(insert(Pool).values(name=DEFAULT_POOL, federated=True, description=""))
        pools = _pool_ids(session)
        report.pools_created.append(DEFAULT_POOL)
    return pools


def _write_chunk(
    session: Session,
    chunk: Sequence[NodeEntry],
    stored: Mapping[str, tuple[str, int]],
    rows: Mapping[int, Any],
    pool_ids: Mapping[str, int],
    policy: Policy,
    report: BulkImportReport,
    now_s: int,
) -> None:
    """One multi-row INSERT for the new nodes, one executemany UPDATE for the changed ones (after refusing a grain
    change of a node a booking holds now or later). ``stored``: stored_nodes; ``rows``: _lock_rows'."""
    new_rows: list[dict[str, Any]] = []
    changed_rows: list[dict[str, Any]] = []
    regrained: dict[int, tuple[NodeEntry, int]] = {}  # node id: its entry, its grain now
    for entry in chunk:
        values = _column_values(entry.given, pool_ids)
        found = stored.get(entry.component_id)
        row = rows.get(found[1]) if found is not None else None  # None: removed meanwhile, added again
        if row is None:
            new_rows.append(
                {
                    "component_id": entry.component_id,
                    "component_name": entry.component_id.rsplit("+", 1)[-1],
                    "pool_id": pool_ids[DEFAULT_POOL],
                    "hardware_type": "",
                    "exclusive": True,
                    "grain_s": policy.default_grain_s,
                    "properties": {},
                    "disk_images": [],
                    "state": "usable",
                    **values,
                }
            )
            continue
        if {key: getattr(row, key) for key in values} == values:
            report.unchanged += 1
            continue
        changed_rows.append({"id": row.id, **values})
        if "grain_s" in values and values["grain_s"] != row.grain_s:
            regrained[row.id] = (entry, row.grain_s)
    _refuse_held_grain_changes(session, regrained, now_s)
    # Through the session (not its connection): the unit of work must see that it wrote, to bump the generation.
    if new_rows:
        try:
            session.execute(insert(Node), new_rows)
        except IntegrityError as exc:
            # Another import (or node add) committed one of these nodes after this one read the inventory (the file
            # has each node once, checked): run it again, it then updates that node.
            raise TransientConflict(f"a node of the file was added meanwhile ({exc.orig})") from exc
        report.added += len(new_rows)
    if changed_rows:
        session.execute(update(Node), changed_rows)  # bulk UPDATE by primary key, grouped by the columns given
        report.updated += len(changed_rows)


def _refuse_held_grain_changes(session: Session, regrained: Mapping[int, tuple[NodeEntry, int]], now_s: int) -> None:
    """BadArgs when a node whose grain the file changes is held by a booking now or later (its rows are locked: a
    booking waits for this unit of work). The bookings' slots are on the old grain: every Renew would be refused."""
    if not regrained:
        return
    held = session.execute(
        select(Sliver.node_id, func.count(Sliver.id), func.min(Sliver.lease_id))
        .where(Sliver.node_id.in_(list(regrained)), Sliver.holds_node.is_(True), Sliver.end_s > now_s)
        .group_by(Sliver.node_id)
    ).all()
    if not held:
        return
    node_id, count, lease_id = min(held, key=lambda row: regrained[row[0]][0].where)
    entry, grain_s = regrained[node_id]
    others = f" and {count - 1} other(s)" if count > 1 else ""
    raise BadArgs(
        f"{entry.where}: grain_s {entry.given['grain_s']} would change the grain ({grain_s} s) of "
        f"{entry.component_id}, which lease {lease_id}{others} hold(s) now or later ({len(held)} node(s) of the file "
        "so): their slots are on the old grain and could no longer be renewed. Keep its grain_s until they end, or "
        "cancel them first (`sfa-omf slice shutdown SLICE_URN` cancels all of a slice's leases and refuses it new "
        "ones until `sfa-omf slice release SLICE_URN`); nothing was imported"
    )


def _column_values(given: Mapping[str, Any], pool_ids: Mapping[str, int]) -> dict[str, Any]:
    """The given fields as node columns (a pool name becomes its pool_id)."""
    values: dict[str, Any] = {}
    for key, value in given.items():
        if key == "pool":
            values["pool_id"] = pool_ids[value]
        elif key == "disk_images":
            values[key] = [dict(image) for image in value]
        elif key == "properties":
            values[key] = dict(value)
        else:
            values[key] = value
    return values
