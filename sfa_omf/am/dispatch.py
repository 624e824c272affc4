"""What every AM API endpoint (v2, v3) does around its methods: find the method, unpack arguments, wrap the answer
in the envelope, turn a bug into SERVERERROR (logged with its traceback), and log one line per call: method, caller
URN, slice, geni_code, milliseconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.envelope import failure, success
from sfa_omf.errors import BadArgs, GeniCode, GeniError, Reason
from sfa_omf.server.xmlrpc import CallContext

log = logging.getLogger("sfa_omf.am")

Method = Callable[[Aggregate, CallContext, tuple[Any, ...]], Any]
SliceOf = Callable[[str, tuple[Any, ...]], str]


def options_at(params: tuple[Any, ...], index: int) -> dict[str, Any]:
    """The options struct at ``index``; absent or nil (sfi's Shutdown sends none) is empty."""
    if len(params) <= index or params[index] is None:
        return {}
    if not isinstance(params[index], dict):
        raise BadArgs(f"argument {index + 1} must be the options struct")
    return dict(params[index])


def argument(params: tuple[Any, ...], index: int, name: str) -> Any:
    if len(params) <= index:
        raise BadArgs(f"missing argument {index + 1}: {name}")
    return params[index]


class ApiEndpoint:
    """The handler the XML-RPC transport calls for one AM API version."""

    def __init__(self, aggregate: Aggregate, version: int, methods: Mapping[str, Method], slice_of: SliceOf) -> None:
        self.aggregate = aggregate
        self.version = version
        self.methods = methods
        self.slice_of = slice_of

    def __call__(self, context: CallContext, method: str, params: tuple[Any, ...]) -> Any:
        started = time.perf_counter()
        caller = context.caller_chain[0].urn if context.caller_chain else "-"
        code = GeniCode.SUCCESS
        try:
            implementation = self.methods.get(method)
            if implementation is None:
                known = ", ".join(sorted(self.methods))
                raise GeniError(Reason.UNSUPPORTED, f"{method} is not an AM API v{self.version} method here ({known})")
            value = implementation(self.aggregate, context, params)
            return success(value, geni_api=self.version) if method == "GetVersion" else success(value)
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
                self.slice_of(method, params),
                int(code),
                (time.perf_counter() - started) * 1000,
            )
