"""AM API v3 as XML-RPC methods: unpack the arguments as the real clients send them, call the Aggregate, wrap the
answer in the envelope, and log one line per call (method, caller URN, slice, geni_code, milliseconds).

Every refusal is an envelope with its GENI code, never an XML-RPC fault; a bug is logged with its traceback and
answered with SERVERERROR so the server keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.envelope import failure, success
from sfa_omf.errors import BadArgs, GeniCode, GeniError, Reason
from sfa_omf.server.xmlrpc import CallContext

log = logging.getLogger("sfa_omf.am")

Method = Callable[[Aggregate, CallContext, tuple[Any, ...]], Any]


def _options(params: tuple[Any, ...], index: int) -> dict[str, Any]:
    """The options struct at ``index``; absent (sfi's Shutdown sends none) is empty."""
    if len(params) <= index or params[index] is None:
        return {}
    if not isinstance(params[index], dict):
        raise BadArgs(f"argument {index + 1} must be the options struct")
    return dict(params[index])


def _arg(params: tuple[Any, ...], index: int, name: str) -> Any:
    if len(params) <= index:
        raise BadArgs(f"missing argument {index + 1}: {name}")
    return params[index]


def _urns(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadArgs("the first argument must be a list of slice or sliver URNs")
    return value


METHODS: dict[str, Method] = {
    "GetVersion": lambda am, ctx, p: am.get_version(),
    "ListResources": lambda am, ctx, p: am.list_resources(ctx.caller_chain, _arg(p, 0, "credentials"), _options(p, 1)),
    "Describe": lambda am, ctx, p: am.describe(
        ctx.caller_chain, _urns(_arg(p, 0, "urns")), _arg(p, 1, "credentials"), _options(p, 2)
    ),
    "Allocate": lambda am, ctx, p: am.allocate(
        ctx.caller_chain,
        str(_arg(p, 0, "slice URN")),
        _arg(p, 1, "credentials"),
        str(_arg(p, 2, "rspec")),
        _options(p, 3),
    ),
    "Provision": lambda am, ctx, p: am.provision(
        ctx.caller_chain, _urns(_arg(p, 0, "urns")), _arg(p, 1, "credentials"), _options(p, 2)
    ),
    "Status": lambda am, ctx, p: am.status(
        ctx.caller_chain, _urns(_arg(p, 0, "urns")), _arg(p, 1, "credentials"), _options(p, 2)
    ),
    "Renew": lambda am, ctx, p: am.renew(
        ctx.caller_chain,
        _urns(_arg(p, 0, "urns")),
        _arg(p, 1, "credentials"),
        _arg(p, 2, "expiration time"),
        _options(p, 3),
    ),
    "Delete": lambda am, ctx, p: am.delete(
        ctx.caller_chain, _urns(_arg(p, 0, "urns")), _arg(p, 1, "credentials"), _options(p, 2)
    ),
    "PerformOperationalAction": lambda am, ctx, p: am.perform_operational_action(
        ctx.caller_chain,
        _urns(_arg(p, 0, "urns")),
        _arg(p, 1, "credentials"),
        str(_arg(p, 2, "action")),
        _options(p, 3),
    ),
    "Shutdown": lambda am, ctx, p: am.shutdown(
        ctx.caller_chain, str(_arg(p, 0, "slice URN")), _arg(p, 1, "credentials")
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


class ApiV3:
    """The handler the XML-RPC transport calls for AM API v3 endpoints."""

    def __init__(self, aggregate: Aggregate) -> None:
        self.aggregate = aggregate

    def __call__(self, context: CallContext, method: str, params: tuple[Any, ...]) -> Any:
        started = time.perf_counter()
        caller = context.caller_chain[0].urn if context.caller_chain else "-"
        code = GeniCode.SUCCESS
        try:
            implementation = METHODS.get(method)
            if implementation is None:
                raise GeniError(
                    Reason.UNSUPPORTED, f"{method} is not an AM API v3 method here ({', '.join(sorted(METHODS))})"
                )
            value = implementation(self.aggregate, context, params)
            return success(value, geni_api=3) if method == "GetVersion" else success(value)
        except GeniError as error:
            code = error.code
            return failure(error)
        except Exception:
            code = GeniCode.SERVERERROR
            log.exception("%s failed", method)
            return failure(
                GeniError(Reason.SERVER_ERROR, f"internal error in {method}; the operator's log has the details")
            )
        finally:
            log.info(
                "%s caller=%s slice=%s geni_code=%d ms=%.1f",
                method,
                caller,
                _slice_of(method, params),
                int(code),
                (time.perf_counter() - started) * 1000,
            )
