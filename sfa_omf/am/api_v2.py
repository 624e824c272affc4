"""AM API v2 as XML-RPC methods (omni -V2, older sfi.py): an adapter over the same Aggregate as AM API v3.

v2 speaks of a slice's sliver as a whole: CreateSliver both allocates and provisions, SliverStatus, RenewSliver,
DeleteSliver and Shutdown name the slice URN. ListResources of a slice with nothing here answers an empty manifest
(as v3 Describe does); SliverStatus, RenewSliver and DeleteSliver of it are refused (SEARCHFAILED). Answers use the
same envelope as v3 and every refusal is an envelope with its GENI code, never an XML-RPC fault (also a method name
that is no name and a caller without a client certificate, refused by the transport through ApiEndpoint.refuse); one
log line per call (method, caller URN, slice, geni_code, ms). Only a body that is no methodCall, or one over the size
limit, is a fault: there is no call to answer.

GetTicket is refused (UNSUPPORTED): CreateSliver books the time slot directly and this aggregate signs no tickets.

v2 has no allocated-but-not-provisioned sliver. A sliver allocated and not provisioned (by AM API v3's Allocate, or
GetTicket) shows in SliverStatus as ``unknown`` while it may still be provisioned, ``failed`` once its time to be
provisioned is over, each with a geni_error saying so (the states themselves stay those of sfa_omf/am/states.py);
RenewSliver renews the slice's provisioned slivers only, and refuses a slice holding nothing else.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sfa_omf.am import contract
from sfa_omf.am.aggregate import LAPSED_ALLOCATION, Aggregate
from sfa_omf.am.dispatch import ApiEndpoint, Method
from sfa_omf.am.states import Allocation, Operational
from sfa_omf.calendar.booking import allocation_expiry_s
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.calendar.records import LeaseRecord
from sfa_omf.errors import GeniError, Reason
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.times import format_time, parse_time

log = logging.getLogger("sfa_omf.am")

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
    """The advertisement, or with geni_slice_urn the slice's manifest: an empty manifest (success) for a slice with
    no slivers here (never booked, or all deleted), as AM API v3 Describe answers and as the GENI acceptance tests
    in strict mode require of v2 (the slice credential already proves the slice exists)."""
    credentials, options = params
    urn = options.get("geni_slice_urn")
    if urn is None:
        return am.list_resources(ctx.caller_chain, credentials, options)
    return str(am.describe(ctx.caller_chain, [urn], credentials, options, method="ListResources")["geni_rspec"])


def create_sliver(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> str:
    """Allocate and provision what the RSpec asks for, or nothing: a failure gives back what this call booked and
    puts the slice's users back (Aggregate.create_sliver)."""
    slice_urn, credentials, rspec, users, options = params
    if options.get("geni_best_effort"):  # v2 answers a manifest only: it could not say which nodes were left out
        raise GeniError(
            Reason.BAD_ARGS,
            "AM API v2 CreateSliver books all or nothing; use AM API v3 Allocate with geni_best_effort, "
            "or call CreateSliver without it",
        )
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
    now = am.clock()
    resources = []
    for sliver in slivers:
        error = sliver.get("geni_error", "")
        if sliver["geni_allocation_status"] == Allocation.UNALLOCATED and LAPSED_ALLOCATION in error:
            status, error = _unprovisioned_allocation(sliver, now)  # not provisioned in time, not yet released
        elif sliver["geni_allocation_status"] == Allocation.UNALLOCATED:
            status = "unknown"
        elif sliver["geni_allocation_status"] == Allocation.ALLOCATED:
            status, error = _unprovisioned_allocation(sliver, now)
        else:
            status = V2_STATUS.get(sliver["geni_operational_status"], "unknown")
        resources.append(
            {
                "geni_urn": sliver["geni_sliver_urn"],
                "geni_status": status,
                "geni_error": error,
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


def _unprovisioned_allocation(sliver: dict[str, Any], now: datetime) -> tuple[str, str]:
    """The v2 status and geni_error of a sliver allocated (AM API v3, GetTicket) and not provisioned: ``unknown``
    while it may still be provisioned (a v2 client waits on configuring/notready, never on this), ``failed`` once its
    time to be provisioned is over (the sweep releases it within a minute)."""
    expires = min(parse_time(sliver["geni_expires"]), parse_time(sliver.get("geni_end_time", sliver["geni_expires"])))
    if expires <= now:
        return "failed", (
            "allocated (AM API v3 Allocate or GetTicket) and not provisioned in time: the allocation lapsed at "
            f"{format_time(expires)} and is being released; CreateSliver to book it again"
        )
    return "unknown", (
        "allocated (AM API v3 Allocate or GetTicket) and not provisioned: Provision it (AM API v3), or CreateSliver "
        f"the same request, before {format_time(expires)}, or the allocation is released then"
    )


def _shut_down(am: Aggregate, slice_urn: str) -> bool:
    try:
        return am.slices.get(slice_urn).shut_down
    except GeniError as error:
        if error.reason != Reason.NOT_FOUND:
            raise
        return False


def renew_sliver(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> bool:
    """Renew the slice's provisioned slivers, as a Renew naming the slice (a lease that starts or ends after the
    time asked for keeps its end, Aggregate.renew). Its slivers allocated (AM API v3, GetTicket) and not provisioned are
    left as they are (v2 has no such sliver: True would promise a lease the sweep releases in minutes) and logged; a
    slice holding only those is refused, saying until when they can be provisioned."""
    slice_urn, credentials, expiration, options = params
    leases = am.bookings.leases(slice_urn=slice_urn)
    allocations = [lease for lease in leases if lease.state == "allocated"]
    if not allocations:
        renewed = am.renew(ctx.caller_chain, [slice_urn], credentials, expiration, options)
    else:
        provisioned = [sliver.urn for lease in leases if lease.state == "provisioned" for sliver in lease.slivers]
        if not provisioned:
            am.authorize("Renew", ctx.caller_chain, credentials, slice_urn, options)  # (a stranger learns nothing)
            why = _allocations_not_renewed(allocations, am.clock())
            raise GeniError(
                Reason.NOT_FOUND,
                f"slice {slice_urn} has no provisioned slivers here to renew (AM API v2 renews those only): {why}",
            )
        renewed = am.renew(ctx.caller_chain, provisioned, credentials, expiration, options, slice_named=True)
        why = _allocations_not_renewed(allocations, am.clock())
        log.info("RenewSliver of %s renewed its provisioned slivers only: %s", slice_urn, why)
    if not renewed:
        raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has no slivers here to renew")
    return True


def _allocation_expires(lease: LeaseRecord) -> datetime:
    """When an allocated lease's time to be provisioned is over (as the calendar reckons it)."""
    return from_s(allocation_expiry_s([to_s(sliver.expires) for sliver in lease.slivers], to_s(lease.end)))


def _allocations_not_renewed(allocations: list[LeaseRecord], now: datetime) -> str:
    """Why RenewSliver leaves these allocations (AM API v3's or GetTicket's, not provisioned) as they are, and what to
    do."""
    expiries = [_allocation_expires(lease) for lease in allocations]
    live = [expires for expires in expiries if expires > now]
    if not live:
        return (
            "its slivers allocated (AM API v3 Allocate or GetTicket) were not provisioned in time: the allocation "
            f"lapsed at {format_time(max(expiries))} and is being released; CreateSliver to book them again"
        )
    return (
        "its slivers allocated (AM API v3 Allocate or GetTicket) and not provisioned are not renewed: the allocation "
        f"expires at {format_time(min(live))} unless provisioned (Provision through AM API v3, or CreateSliver the "
        "same request), then RenewSliver"
    )


def delete_sliver(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> bool:
    slice_urn, credentials, options = params
    deleted = am.delete(ctx.caller_chain, [slice_urn], credentials, options)
    if not deleted:
        raise GeniError(Reason.NOT_FOUND, f"slice {slice_urn} has no slivers here to delete")
    return True


def shutdown(am: Aggregate, ctx: CallContext, params: tuple[Any, ...]) -> bool:
    slice_urn, credentials, options = params
    return am.shutdown(ctx.caller_chain, slice_urn, credentials, options)


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

    #: Answered in the reactor thread (XmlRpcResource): GetVersion reads no database and waits for nothing, so it
    #: answers (and the monitoring probe with it) while every call thread waits for the database.
    inline_methods = frozenset({"GetVersion"})

    def __init__(self, aggregate: Aggregate) -> None:
        super().__init__(aggregate, 2, METHODS, contract.V2)
