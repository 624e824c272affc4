"""AM API v3 as XML-RPC methods: the arguments, checked by their signatures (contract.V3), go to the Aggregate; the
answer is wrapped in the envelope, and one line is logged per call (method, caller URN, slice, geni_code, ms).

Every refusal is an envelope with its GENI code, never an XML-RPC fault (also a method name that is no name and a
caller without a client certificate, refused by the transport through ApiEndpoint.refuse); a bug is logged with its
traceback and answered with SERVERERROR so the server keeps serving. Only a body that is no methodCall, or one over the
size limit, is a fault: there is no call to answer.
"""

from __future__ import annotations

from sfa_omf.am import contract
from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.dispatch import ApiEndpoint, Method

#: Each method with the arguments its signature (contract.V3) checked: a = (arg1, arg2, ..., options).
METHODS: dict[str, Method] = {
    "GetVersion": lambda am, ctx, a: am.get_version(),
    "ListResources": lambda am, ctx, a: am.list_resources(ctx.caller_chain, a[0], a[1]),
    "Describe": lambda am, ctx, a: am.describe(ctx.caller_chain, a[0], a[1], a[2]),
    "Allocate": lambda am, ctx, a: am.allocate(ctx.caller_chain, a[0], a[1], a[2], a[3]),
    "Provision": lambda am, ctx, a: am.provision(ctx.caller_chain, a[0], a[1], a[2]),
    "Status": lambda am, ctx, a: am.status(ctx.caller_chain, a[0], a[1], a[2]),
    "Renew": lambda am, ctx, a: am.renew(ctx.caller_chain, a[0], a[1], a[2], a[3]),
    "Delete": lambda am, ctx, a: am.delete(ctx.caller_chain, a[0], a[1], a[2]),
    "PerformOperationalAction": lambda am, ctx, a: am.perform_operational_action(ctx.caller_chain, *a),
    "Shutdown": lambda am, ctx, a: am.shutdown(ctx.caller_chain, a[0], a[1], a[2]),
}


class ApiV3(ApiEndpoint):
    """AM API v3 over the aggregate."""

    #: Answered in the reactor thread (XmlRpcResource): GetVersion reads no database and waits for nothing, so it
    #: answers (and the monitoring probe with it) while every call thread waits for the database.
    inline_methods = frozenset({"GetVersion"})

    def __init__(self, aggregate: Aggregate) -> None:
        super().__init__(aggregate, 3, METHODS, contract.V3)
