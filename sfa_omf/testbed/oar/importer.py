"""Filling the inventory from OAR's resources (``sfa-omf node import --from-oar``).

OAR lists resources (often one per core); a node is a ``network_address``. Each becomes the node
``<authority>.<network_address>`` (dots in the address escaped, so it stays one name) whose component name is the
address, with the host-level properties OAR knows (those equal on all its resources), minus the ones that change all
the time (state, scheduling dates). Re-running updates what changed and never adds a node twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import GeniError, Reason
from sfa_omf.testbed.oar.client import OarResource
from sfa_omf.xrn import hrn_to_urn, join_hrn, split_hrn

# OAR's bookkeeping, not a description of the node.
VOLATILE_PROPERTIES = frozenset(
    {
        "id",
        "resource_id",
        "state",
        "next_state",
        "state_num",
        "finaud_decision",
        "next_finaud_decision",
        "suspended_jobs",
        "scheduler_priority",
        "last_job_date",
        "available_upto",
        "last_available_upto",
        "expiry_date",
        "drain",
        "desktop_computing",
        "links",
        "api_timestamp",
        "jobs",
    }
)


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0


def node_specs(resources: Sequence[OarResource], authority_hrn: str) -> list[NodeSpec]:
    """One NodeSpec per network address, in address order."""
    by_address: dict[str, list[OarResource]] = {}
    for resource in resources:
        if resource.network_address:
            by_address.setdefault(resource.network_address, []).append(resource)
    specs = []
    for address, members in sorted(by_address.items()):
        shared = {
            key: value
            for key, value in members[0].properties.items()
            if key not in VOLATILE_PROPERTIES and value != "" and all(m.properties.get(key) == value for m in members)
        }
        properties: dict[str, Any] = {**shared, "network_address": address, "oar_resources": len(members)}
        urn = hrn_to_urn(join_hrn([*split_hrn(authority_hrn), address]), "node")
        specs.append(NodeSpec(urn, address, hardware_type=shared.get("hardware_type", ""), properties=properties))
    return specs


def import_nodes(
    inventory: Inventory,
    resources: Sequence[OarResource],
    authority_hrn: str,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> ImportReport:
    """Add the nodes OAR has and the inventory does not; update those whose description changed."""
    report = ImportReport()
    specs = node_specs(resources, authority_hrn)
    existing = {node.component_id: node for node in inventory.list_nodes()}
    for done, spec in enumerate(specs, start=1):
        known = existing.get(spec.component_id)
        if known is None:
            try:
                inventory.add_node(spec)
                report.added.append(spec.component_name)
            except GeniError as exc:
                if exc.reason != Reason.ALREADY_EXISTS:  # added meanwhile by another import: fine
                    raise
        elif known.component_name != spec.component_name or known.properties != spec.properties:
            inventory.update_node(spec.component_id, spec.component_name, dict(spec.properties))
            report.updated.append(spec.component_name)
        else:
            report.unchanged += 1
        progress(done, len(specs))
    return report
