"""AM API v2 as XML-RPC methods (omni -V2, older sfi.py): an adapter over the same Aggregate as AM API v3.

v2 speaks of a slice's sliver as a whole: CreateSliver both allocates and provisions, SliverStatus, RenewSliver,
DeleteSliver and Shutdown name the slice URN. Answers use the same envelope as v3 and every refusal is an envelope
with its GENI code, never an XML-RPC fault (also a method name that is no name and a caller without a client
certificate, refused by the transport through ApiEndpoint.refuse); one log line per call (method, caller URN, slice,
geni_code, ms). Only a body that is no methodCall, or one over the size limit, is a fault: there is no call to answer.

GetTicket is refused (UNSUPPORTED): CreateSliver books the time slot directly and this aggregate signs no tickets.
"""

from __future__ import annotations

from typing import Any

from sfa_omf.am import contract
from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.dispatch import ApiEndpoint, Method
from sfa_omf.am.states import Allocation, Operational
from sfa_omf.errors import GeniError, Reason
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.times import format_time, parse_time

#: v3 operational state -> v2 sliver status (ready, notready, configuring, failed, unknown; shutdown for the slice).
V2_STATUS: dict[str, str] = {
    Operational.READY: "ready",
    Operational.READY_BUSY: "ready",
    Operational.CONFIGURING: "configuring",
    Operational.STOPPING: "configuring",
    Operational.NOTREADY: "notready",
    Operational.PENDING_ALLOCATION: "notready",
    Operational.FAILED: "failed",
}


# -- the methods -------------------------------------------------------------------------------------------------
def get_version(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> dict[str, Any]:
    return {**am.get_version(), "geni_api": 2}


def list_resources(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> str:
    credentials, options = params
    urn = options.get("geni_slice_urn")
    if urn is None:
        return am.list_resources(ctx.caller_chain, credentials, options)
    described = am.describe(ctx.caller_chain, [urn], credentials, options)
    if not described["geni_slivers"]:
        raise GeniError(Reason.NOT_FOUND, f"slice {urn} has no slivers here: CreateSliver first")
    return str(described["geni_rspec"])


def create_sliver(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> str:
    """Allocate and provision what the RSpec asks for, or nothing: a failure gives back what this call booked and
    puts the slice's users back (Aggregate.create_sliver)."""
    slice_urn, credentials, rspec, users, options = params
    if users:
        options["geni_users"] = users
    return str(am.create_sliver(ctx.caller_chain, slice_urn, credentials, rspec, options)["geni_rspec"])


def overall_status(statuses: list[str]) -> str:
    """The slice's v2 status from its slivers': failed if any failed, ready if all are, else the least ready."""
    if "failed" in statuses:
        return "failed"
    if statuses and all(status == "ready" for status in statuses):
        return "ready"
    for status in ("configuring", "notready"):
        if status in statuses:
            return status
    return "unknown"


def sliver_status(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> dict[str, Any]:
    slice_urn, credentials, options = params
    slivers = am.status(ctx.caller_chain, [slice_urn], credentials, options)["geni_slivers"]
    if not slivers:
        if _shut_down(am, slice_urn):
            return {"geni_urn": slice_urn, "geni_status": "shutdown", "geni_resources": [], "geni_expires": ""}
        raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has no slivers here (none booked, or all deleted)")
    resources = []
    for sliver in slivers:
        if sliver["geni_allocation_status"] == Allocation.UNALLOCATED:
            status = "unknown"
        else:
            status = V2_STATUS.get(sliver["geni_operational_status"], "unknown")
        resources.append(
            {
                "geni_urn": sliver["geni_sliver_urn"],
                "geni_status": status,
                "geni_error": sliver.get("geni_error", ""),
                "geni_expires": sliver["geni_expires"],
                "geni_start_time": sliver["geni_start_time"],
                "geni_end_time": sliver["geni_end_time"],
            }
        )
    expires = max(parse_time(sliver["geni_expires"]) for sliver in slivers)
    return {
        "geni_urn": slice_urn,
        "geni_status": overall_status([resource["geni_status"] for resource in resources]),
        "geni_resources": resources,
        "geni_expires": format_time(expires),
    }


def _shut_down(am: Aggregate, slice_urn: str) -> bool:
    try:
        return am.slices.get(slice_urn).shut_down
    except GeniError as error:
        if error.reason != Reason.NOT_FOUND:
            raise
        return False


def renew_sliver(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> bool:
    slice_urn, credentials, expiration, options = params
    renewed = am.renew(ctx.caller_chain, [slice_urn], credentials, expiration, options)
    if not renewed:
        raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has no slivers here to renew")
    return True


def delete_sliver(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> bool:
    slice_urn, credentials, options = params
    deleted = am.delete(ctx.caller_chain, [slice_urn], credentials, options)
    if not deleted:
        raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has no slivers here to delete")
    return True


def shutdown(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> bool:
    slice_urn, credentials, _ = params
    return am.shutdown(ctx.caller_chain, slice_urn, credentials)


def list_slices(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> list[str]:
    """The slices with a current or future time slot here (SFA's ListSlices; needs the listslices right)."""
    credentials, options = params
    am.authorize("ListSlices", ctx.caller_chain, credentials, None, options)
    return sorted({lease.slice_urn for lease in am.bookings.leases(start=am.clock())})


def get_ticket(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> str:
    """SFA's GetTicket(slice_urn, creds, rspec, users, options): the slots booked, as the aggregate's signed promise."""
    slice_urn, credentials, rspec, users, options = params
    if users:
        options["geni_users"] = users
    return am.ticket(ctx.caller_chain, slice_urn, credentials, rspec, options)


METHODS: dict[str, Method] = {
    "GetVersion": get_version,
    "ListResources": list_resources,
    "CreateSliver": create_sliver,
    "SliverStatus": sliver_status,
    "RenewSliver": renew_sliver,
    "DeleteSliver": delete_sliver,
    "Shutdown": shutdown,
    "ListSlices": list_slices,
    "GetTicket": get_ticket,
}


class ApiV2(ApiEndpoint):
    """AM API v2 over the aggregate."""

    def __init__(self, aggregate: Aggregate) -> None:
        super().__init__(aggregate, 2, METHODS, contract.V2)
