"""``sfa-omf node import --from-omf URL``: a testbed moves from omf_sfa in one command. Its broker's
``GET /resources/nodes`` (each node with its interfaces, cmc and leases) fills the inventory through the bulk import
(calendar/bulk_import.py: re-running updates, never duplicates), and the leases still to come or running are booked
through the calendar as operator leases (inventory.py's book_lease: the same checks as every booking, so no double
booking); a lease already in the calendar (same account, nodes and window) is left alone, so a re-run books nothing
twice. A lease the calendar refuses is reported with its reason; the others are booked.

The broker is read over HTTPS with a client certificate (omf_sfa asks for one), checked against ``ca`` (its
certificate is usually the testbed's own, naming a URN rather than the host: the chain is checked, not the host name),
against the system's CAs and the host name without ``ca``, or not checked at all when the operator says
``insecure``.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sfa_omf.calendar.bulk_import import NodeEntry, check_entry
from sfa_omf.errors import BadArgs, GeniError, Reason
from sfa_omf.times import parse_time
from sfa_omf.xrn import hrn_to_urn, is_urn, join_hrn, parse_urn, split_hrn

#: omf_sfa lease statuses still to be honoured (past and cancelled ones are history).
LIVE_STATUSES = ("pending", "accepted", "active")
MAX_ANSWER_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class BrokerLease:
    """One omf_sfa lease, gathered from the nodes that carry it."""

    uuid: str
    name: str
    valid_from: str
    valid_until: str
    account: Mapping[str, str]
    nodes: tuple[str, ...]  # component ids


@dataclass
class LeaseImportReport:
    booked: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (lease, the calendar's reason)
    skipped: int = 0  # past or cancelled


def nodes_url(url: str) -> str:
    """The broker's node collection from its base URL (``https://host:8001``) or the collection's own."""
    url = url.rstrip("/")
    if not url.startswith("https://"):
        raise BadArgs(f"{url} is not an https:// URL (omf_sfa's brokers speak HTTPS)")
    return url if url.endswith("/resources/nodes") else f"{url}/resources/nodes"


def fetch_nodes(
    url: str, cert: str | None, key: str | None, ca: str | None, insecure: bool, timeout_s: float
) -> list[dict[str, Any]]:
    """The nodes the broker lists; UNAVAILABLE when it cannot be read, BADARGS when the answer is not omf_sfa's."""
    context = ssl.create_default_context(cafile=ca)
    if ca:  # the testbed's own CA: GENI-style certificates name a URN, not the host name
        context.check_hostname = False
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise BadArgs(f"cannot use the client certificate {cert}: {exc}") from exc
    request = urllib.request.Request(nodes_url(url), headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout_s) as answer:
            body = answer.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        refused = f"the broker refused {request.full_url}: HTTP {exc.code} {_reason(exc)}"
        raise GeniError(Reason.UNAVAILABLE, refused) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise GeniError(Reason.UNAVAILABLE, f"cannot read {request.full_url}: {exc}") from exc
    if len(body) > MAX_ANSWER_BYTES:
        raise BadArgs(f"{request.full_url} answered more than {MAX_ANSWER_BYTES} bytes")
    return nodes_of(body, request.full_url)


def nodes_of(body: bytes, where: str) -> list[dict[str, Any]]:
    """The node objects of an omf_sfa answer ({"resource_response": {"resources": [...]}})."""
    try:
        document = json.loads(body)
        resources = document["resource_response"]["resources"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadArgs(f"{where} did not answer omf_sfa's resource_response with resources: {exc}") from exc
    except RecursionError as exc:  # the decoder recurses once per nesting level
        raise BadArgs(
            f"{where} answered JSON nested too deeply to read; omf_sfa's node list is a few levels deep: check that "
            "the URL is the broker's /resources/nodes"
        ) from exc
    if not isinstance(resources, list) or not all(isinstance(node, dict) for node in resources):
        raise BadArgs(f"{where}: resources is not a list of nodes")
    return resources


def node_entries(nodes: Sequence[Mapping[str, Any]], authority_hrn: str, where: str) -> list[NodeEntry]:
    """The inventory's entries for the broker's nodes: its URN (or one under this authority from its name), its
    name, hardware type, and what the controllers read (uuid, hostname, interfaces, cmc) as properties."""
    entries = []
    for index, node in enumerate(nodes):
        name = node.get("name")
        if not isinstance(name, str) or not name:
            raise BadArgs(f"{where} node #{index + 1} has no name")
        urn = node.get("urn")
        component_id = (
            urn
            if isinstance(urn, str) and is_urn(urn)
            else hrn_to_urn(join_hrn([*split_hrn(authority_hrn), name]), "node")
        )
        properties = {key: node[key] for key in ("uuid", "hostname", "interfaces", "cmc") if node.get(key)}
        item: dict[str, Any] = {"component_id": component_id, "component_name": name, "properties": properties}
        if isinstance(node.get("hardware_type"), str):
            item["hardware_type"] = node["hardware_type"]
        if isinstance(node.get("exclusive"), bool):
            item["exclusive"] = node["exclusive"]
        entries.append(check_entry(item, f"{where} node {name}"))
    return entries


def broker_leases(
    nodes: Sequence[Mapping[str, Any]], entries: Sequence[NodeEntry], now: datetime
) -> tuple[list[BrokerLease], int]:
    """The broker's live leases (each once, with all its nodes) and how many were past or cancelled."""
    gathered: dict[str, dict[str, Any]] = {}
    skipped: set[str] = set()
    for node, entry in zip(nodes, entries, strict=True):
        for lease in node.get("leases") or []:
            if not isinstance(lease, dict):
                continue
            key = str(lease.get("uuid") or lease.get("name") or "")
            if not key:
                continue
            if lease.get("status") not in LIVE_STATUSES or _ended(lease, now):
                skipped.add(key)
                continue
            found = gathered.setdefault(key, {**lease, "nodes": []})
            if entry.component_id not in found["nodes"]:
                found["nodes"].append(entry.component_id)
    leases = [
        BrokerLease(
            key,
            str(lease.get("name") or key),
            str(lease.get("valid_from", "")),
            str(lease.get("valid_until", "")),
            _account(lease.get("account")),
            tuple(lease["nodes"]),
        )
        for key, lease in gathered.items()
    ]
    return leases, len(skipped - set(gathered))


def import_leases(
    leases: Sequence[BrokerLease],
    book: Callable[[Mapping[str, Any]], object],
    already: Callable[[Mapping[str, Any]], bool],
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> LeaseImportReport:
    """Book each lease ``already`` does not find in the calendar through ``book`` (both take an omf_sfa lease
    body); a lease whose body the calendar refuses, even to compare it, is reported with the reason."""
    report = LeaseImportReport()
    for done, lease in enumerate(leases, start=1):
        body = lease_body(lease)
        try:
            if already(body):
                report.already.append(lease.uuid)
            else:
                book(body)
                report.booked.append(lease.uuid)
        except GeniError as exc:
            report.refused.append((lease.uuid, exc.message))
        progress(done, len(leases))
    return report


def lease_body(lease: BrokerLease) -> dict[str, Any]:
    """The POST /resources/leases body for a broker's lease (its account by slice URN when it has one)."""
    account: dict[str, str] = {}
    urn = lease.account.get("urn")
    if isinstance(urn, str) and is_urn(urn) and parse_urn(urn).type == "slice":
        account["urn"] = urn
    name = lease.account.get("name")
    if isinstance(name, str) and name:
        account["name"] = name
    return {
        "name": lease.name,
        "valid_from": lease.valid_from,
        "valid_until": lease.valid_until,
        "account_attributes": account,
        "components": [{"urn": node} for node in lease.nodes],
    }


def _account(account: Any) -> dict[str, str]:
    if not isinstance(account, dict):
        return {}
    return {key: value for key, value in account.items() if key in ("name", "urn") and isinstance(value, str)}


def _ended(lease: Mapping[str, Any], now: datetime) -> bool:
    try:
        return parse_time(lease.get("valid_until", "")) <= now
    except BadArgs:
        return False  # the calendar will say what is wrong with it


def _reason(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read())["exception"]["reason"])
    except (ValueError, KeyError, TypeError, OSError, RecursionError):  # its words when they can be read
        return str(error.reason)
