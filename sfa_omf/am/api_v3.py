"""AM API v3 as XML-RPC methods: unpack the arguments as the real clients send them, call the Aggregate, wrap the
answer in the envelope, and log one line per call (method, caller URN, slice, geni_code, milliseconds).

Every refusal is an envelope with its GENI code, never an XML-RPC fault; a bug is logged with its traceback and
answered with SERVERERROR so the server keeps serving.
"""

from __future__ import annotations

from typing import Any

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.dispatch import ApiEndpoint, Method, argument, options_at
from sfa_omf.errors import BadArgs


def _urns(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadArgs("the first argument must be a list of slice or sliver URNs")
    return value


METHODS: dict[str, Method] = {
    "GetVersion": lambda am, ctx, p: am.get_version(),
    "ListResources": lambda am, ctx, p: am.list_resources(
        ctx.caller_chain, argument(p, 0, "credentials"), options_at(p, 1)
    ),
    "Describe": lambda am, ctx, p: am.describe(
        ctx.caller_chain, _urns(argument(p, 0, "urns")), argument(p, 1, "credentials"), options_at(p, 2)
    ),
    "Allocate": lambda am, ctx, p: am.allocate(
        ctx.caller_chain,
        str(argument(p, 0, "slice URN")),
        argument(p, 1, "credentials"),
        str(argument(p, 2, "rspec")),
        options_at(p, 3),
    ),
    "Provision": lambda am, ctx, p: am.provision(
        ctx.caller_chain, _urns(argument(p, 0, "urns")), argument(p, 1, "credentials"), options_at(p, 2)
    ),
    "Status": lambda am, ctx, p: am.status(
        ctx.caller_chain, _urns(argument(p, 0, "urns")), argument(p, 1, "credentials"), options_at(p, 2)
    ),
    "Renew": lambda am, ctx, p: am.renew(
        ctx.caller_chain,
        _urns(argument(p, 0, "urns")),
        argument(p, 1, "credentials"),
        argument(p, 2, "expiration time"),
        options_at(p, 3),
    ),
    "Delete": lambda am, ctx, p: am.delete(
        ctx.caller_chain, _urns(argument(p, 0, "urns")), argument(p, 1, "credentials"), options_at(p, 2)
    ),
    "PerformOperationalAction": lambda am, ctx, p: am.perform_operational_action(
        ctx.caller_chain,
        _urns(argument(p, 0, "urns")),
        argument(p, 1, "credentials"),
        str(argument(p, 2, "action")),
        options_at(p, 3),
    ),
    "Shutdown": lambda am, ctx, p: am.shutdown(
        ctx.caller_chain, str(argument(p, 0, "slice URN")), argument(p, 1, "credentials")
    ),
}


_URN_LIST_METHODS = frozenset({"Describe", "Provision", "Status", "Renew", "Delete", "PerformOperationalAction"})


def _slice_of(method: str, params: tuple[Any, ...]) -> str:
    """What the call is about, for the log line: the slice URN, or the first sliver URN named."""
    if method in ("Allocate", "Shutdown") and params and isinstance(params[0], str):
        return params[0][:200]
    if method in _URN_LIST_METHODS and params:
        first = params[0][0] if isinstance(params[0], list) and params[0] else params[0]
        return str(first)[:200]
    return "-"


class ApiV3(ApiEndpoint):
    """AM API v3 over the aggregate."""

    def __init__(self, aggregate: Aggregate) -> None:
        super().__init__(aggregate, 3, METHODS, _slice_of)
