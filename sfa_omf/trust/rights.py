"""Rights: which privilege in a credential allows which operation, and which operation each API method needs.

The privilege names and most operation names are SFA's (sfa/trust/rights.py); gcf's operation names
(deleteslice, getsliceresources, shutdown) are included so that rights mean the same whichever tool issued them.
Where SFA and the GENI rules in our reference disagree we follow the reference: ``info`` grants read access to a
slice (listing, describe, status), ``control`` includes ``stopslice`` so a slice owner may Shutdown.
"""

from __future__ import annotations

from collections.abc import Iterable

ANY_OPERATION = "*"

#: privilege -> operations it allows.
PRIVILEGE_OPERATIONS: dict[str, frozenset[str]] = {
    "authority": frozenset({"register", "remove", "update", "resolve", "list", "getcredential", ANY_OPERATION}),
    "refresh": frozenset({"remove", "update"}),
    "resolve": frozenset({"resolve", "list", "getcredential"}),
    "sa": frozenset(
        {
            "getticket",
            "redeemslice",
            "redeemticket",
            "createslice",
            "createsliver",
            "deleteslice",
            "deletesliver",
            "updateslice",
            "getsliceresources",
            "loanresources",
            "stopslice",
            "startslice",
            "renewsliver",
            "resetslice",
            "listslices",
            "listnodes",
            "getpolicy",
            "sliverstatus",
            "shutdown",
        }
    ),
    "embed": frozenset(
        {
            "getticket",
            "redeemslice",
            "redeemticket",
            "createslice",
            "createsliver",
            "renewsliver",
            "deleteslice",
            "deletesliver",
            "updateslice",
            "sliverstatus",
            "getsliceresources",
            "shutdown",
        }
    ),
    "bind": frozenset({"getticket", "loanresources", "redeemticket"}),
    "control": frozenset(
        {
            "updateslice",
            "createslice",
            "createsliver",
            "renewsliver",
            "sliverstatus",
            "stopslice",
            "startslice",
            "deleteslice",
            "deletesliver",
            "resetslice",
            "getsliceresources",
            "getgids",
            "shutdown",
        }
    ),
    "info": frozenset({"listslices", "listnodes", "getpolicy", "getsliceresources", "sliverstatus"}),
    "ma": frozenset({"setbootstate", "getbootstate", "reboot", "getgids", "gettrustedcerts"}),
    "operator": frozenset({"gettrustedcerts", "getgids"}),
    ANY_OPERATION: frozenset({"createsliver", "deletesliver", "sliverstatus", "renewsliver", "shutdown"}),
}

#: The privileges an authority gives each kind of credential it issues (SFA's determine_rights).
DEFAULT_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "user": ("refresh", "resolve", "info"),
    "slice": ("refresh", "embed", "bind", "control", "info"),
    "authority": ("authority", "sa", "ma"),
    "authority+sa": ("authority", "sa"),
    "authority+am": ("authority", "ma"),
    "node": ("operator",),
}

#: AM API method -> the operation its credential must allow (v3 and v2 names, and SFA's own).
METHOD_OPERATIONS: dict[str, str] = {
    "ListResources": "listnodes",
    "Describe": "listnodes",
    "Allocate": "createsliver",
    "Provision": "createsliver",
    "PerformOperationalAction": "createsliver",
    "Status": "sliverstatus",
    "Delete": "deletesliver",
    "Renew": "renewsliver",
    "Shutdown": "stopslice",
    "CreateSliver": "createsliver",
    "SliverStatus": "sliverstatus",
    "RenewSliver": "renewsliver",
    "DeleteSliver": "deletesliver",
    "ListSlices": "listslices",
    "GetTicket": "getticket",
}


def operations_of(privilege: str) -> frozenset[str]:
    return PRIVILEGE_OPERATIONS.get(privilege.lower(), frozenset())


def allows(privileges: Iterable[str], operation: str) -> bool:
    """True when one of the privileges allows the operation ("authority" allows everything)."""
    wanted = operation.lower()
    for privilege in privileges:
        operations = operations_of(privilege)
        if ANY_OPERATION in operations and privilege.lower() != ANY_OPERATION:
            return True
        if wanted in operations:
            return True
    return False


def covers(parent_privilege: str, child_privilege: str) -> bool:
    """True when everything child_privilege allows, parent_privilege allows too (the delegation subset rule)."""
    parent_ops = operations_of(parent_privilege)
    child_ops = operations_of(child_privilege)
    if parent_privilege.lower() == child_privilege.lower():
        return True
    if ANY_OPERATION in parent_ops and parent_privilege.lower() != ANY_OPERATION:
        return True
    return bool(child_ops) and child_ops <= parent_ops
