"""Bulk node import from a file (``sfa-omf node import --from-file nodes.csv|nodes.json``): thousands of nodes in a
few write units of work with multi-row statements, instead of one unit of work (and one process) per node.

Formats. JSON: a list of objects whose keys are NodeSpec's fields (``component_id`` required; ``component_name``,
``pool``, ``hardware_type``, ``exclusive``, ``grain_s``, ``properties`` (an object), ``disk_images`` (a list of
objects with ``name`` and optional ``os``, ``version``, ``description``)). CSV: a header row; the columns
``component_id`` (required), ``component_name``, ``pool``, ``hardware_type``, ``exclusive`` (true/false),
``grain_s``, ``disk_images`` (``NAME[:OS[:VERSION]]`` separated by ``;``); every other column is a property.

Re-running updates: a node already in the inventory (same component id) gets the fields the file gives (a field
the file leaves out keeps its value; its state, usable or maintenance, is never touched); a node is never added
twice. The whole file is checked before anything is written, so a bad line changes nothing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import DEFAULT_POOL
from sfa_omf.calendar.models import Node, Pool
from sfa_omf.calendar.policy import Policy
from sfa_omf.errors import BadArgs, GeniError, Reason
from sfa_omf.xrn import is_urn, parse_urn

CHUNK = 1000  # nodes per write unit of work: short transactions, and a progress step
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


def read_node_file(path: str | Path) -> list[NodeEntry]:
    """The nodes a .csv or .json file describes, checked (BadArgs names the line or item at fault)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadArgs(f"cannot read {path}: {exc}") from exc
    if path.suffix.lower() == ".json":
        entries = list(_json_entries(text, path.name))
    elif path.suffix.lower() == ".csv":
        entries = list(_csv_entries(text, path.name))
    else:
        raise BadArgs(f"{path.name}: the node file must end in .csv or .json")
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.component_id in seen:
            raise BadArgs(
                f"{entry.where}: {entry.component_id} is in the file twice (first at {seen[entry.component_id]})"
            )
        seen[entry.component_id] = entry.where
    return entries


def _json_entries(text: str, name: str) -> Iterator[NodeEntry]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadArgs(f"{name}: not JSON ({exc})") from exc
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
        yield check_entry(item, where)


def _csv_entries(text: str, name: str) -> Iterator[NodeEntry]:
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "component_id" not in reader.fieldnames:
        raise BadArgs(f"{name}: the first line must name the columns, component_id among them")
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
        yield check_entry(item, where)


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


def check_entry(item: Mapping[str, Any], where: str) -> NodeEntry:
    """Check one node's fields; the same rules whatever the format."""
    component_id = item.get("component_id")
    if not isinstance(component_id, str) or not is_urn(component_id) or parse_urn(component_id).type != "node":
        raise BadArgs(
            f"{where}: component_id {component_id!r} is not a node URN (urn:publicid:IDN+<authority>+node+<name>)"
        )
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
    return NodeEntry(component_id, given, where)


def import_nodes(
    database: Database,
    entries: Sequence[NodeEntry],
    policy: Policy | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> BulkImportReport:
    """Add the entries' nodes that the inventory lacks and update the others, CHUNK nodes per unit of work.

    Pools must exist, except the default pool, which is created (federated) as ``Inventory.add_node`` does.
    Everything is checked before the first write: an unknown pool changes nothing.
    """
    policy = policy or Policy()
    report = BulkImportReport()
    with database.read() as session:
        pools = _pool_ids(session)
    missing = sorted({entry.given.get("pool", DEFAULT_POOL) for entry in entries} - set(pools) - {DEFAULT_POOL})
    if missing:
        raise GeniError(Reason.NOT_FOUND, f"there is no pool {missing[0]!r}: create it first (sfa-omf pool create)")
    for first in range(0, len(entries), CHUNK):
        chunk = entries[first : first + CHUNK]
        with database.write() as session:
            pool_ids = _pools(session, report)
            _write_chunk(session, chunk, pool_ids, policy, report)
        progress(first + len(chunk), len(entries))
    if not entries:
        progress(0, 0)
    return report


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
    session: Session, chunk: Sequence[NodeEntry], pool_ids: Mapping[str, int], policy: Policy, report: BulkImportReport
) -> None:
    """One multi-row INSERT for the new nodes, one executemany UPDATE for the changed ones."""
    existing = {
        row.component_id: row
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
            .where(Node.component_id.in_([entry.component_id for entry in chunk]))
            .with_for_update()
        )
    }
    new_rows: list[dict[str, Any]] = []
    changed_rows: list[dict[str, Any]] = []
    for entry in chunk:
        values = _column_values(entry.given, pool_ids)
        row = existing.get(entry.component_id)
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
    # Through the session (not its connection): the unit of work must see that it wrote, to bump the generation.
    if new_rows:
        session.execute(insert(Node), new_rows)
        report.added += len(new_rows)
    if changed_rows:
        session.execute(update(Node), changed_rows)  # bulk UPDATE by primary key, grouped by the columns given
        report.updated += len(changed_rows)


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
