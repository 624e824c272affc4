"""The testbed's nodes as registry records: every node of the inventory named under the local authority is a record
of type node with its GID, so that ``sfi.py list -t node AUTH`` and ``sfi.py show AUTH.node1`` answer for them.

Kept in step by the commands that change the inventory (``sfa-omf node add|remove|import``, ``quickstart``) and,
for anything added another way, at every start of the registry. A node GID certifies the node's name; its public key
is the aggregate's (the aggregate acts for its nodes, which hold no SFA key of their own), so issuing one costs a
signature, not a key pair.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import rsa

from sfa_omf.calendar.records import NodeRecord
from sfa_omf.errors import BadArgs, GeniError
from sfa_omf.registry.authority import AuthorityError, LocalAuthority
from sfa_omf.registry.records import Record, Records
from sfa_omf.trust.gid import chain_pem, load_gid_chain_file
from sfa_omf.xrn import is_authority_for, parse_urn

log = logging.getLogger("sfa_omf.registry")


@dataclass
class NodeSync:
    """What a synchronisation did: node HRNs recorded now, nodes left out (not named under the authority), and
    nodes that could not be recorded (component ID, why), which stay in the inventory and are tried again next time."""

    added: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def aggregate_public_key(authority: LocalAuthority) -> rsa.RSAPublicKey:
    """The aggregate's public key (DIR/aggregate/am.gid), which node GIDs carry; the authority's when there is none."""
    path = os.path.join(authority.directory, "aggregate", "am.gid")
    key = load_gid_chain_file(path)[0].certificate.public_key() if os.path.exists(path) else None
    return key if isinstance(key, rsa.RSAPublicKey) else authority.key.public_key()


def node_hrn(component_id: str) -> str | None:
    """The HRN of a node URN (urn:publicid:IDN+testbed+node+node1 -> testbed.node1); None for another kind of name."""
    try:
        urn = parse_urn(component_id)
    except BadArgs:
        return None
    return urn.hrn if urn.type == "node" else None


def record_nodes(authority: LocalAuthority, records: Records, nodes: Iterable[NodeRecord]) -> NodeSync:
    """Make sure each node named under the authority is a registry record of type node with a GID (idempotent: a
    node recorded already, or whose GID was issued already, is not issued another). A node that cannot be recorded is
    logged and reported in ``failed``, never raised: one odd node must not keep the registry from starting."""
    report = NodeSync()
    known = records.recorded_hrns("node")
    public_key = None
    for node in nodes:
        hrn = node_hrn(node.component_id)
        if hrn is None or not is_authority_for(authority.hrn, hrn) or hrn == authority.hrn:
            report.foreign.append(node.component_id)
            continue
        if hrn in known:
            continue
        try:
            if os.path.exists(authority.issued_gid_path(hrn)):
                chain = authority.issued_chain(hrn)
            else:
                public_key = public_key or aggregate_public_key(authority)
                chain, _ = authority.issue_gid(hrn, "node", public_key=public_key)
            records.add(Record(hrn, "node", node.component_id, chain_pem(chain)))
        except (GeniError, AuthorityError, ValueError, OSError) as exc:
            log.warning("node %s is not recorded in the registry of %s: %s", node.component_id, authority.hrn, exc)
            report.failed.append((node.component_id, str(exc)))
            continue
        known.add(hrn)
        report.added.append(hrn)
    return report


def forget_node(authority: LocalAuthority, records: Records, component_id: str) -> bool:
    """The node left the inventory: its record and the record of its GID go too. False: it had no record."""
    hrn = node_hrn(component_id)
    if hrn is None:
        return False
    record = records.get(hrn)
    if record is None or record.type != "node":
        return False
    records.remove(hrn)
    authority.forget(hrn)  # else the next start would import it again from gids/
    return True
