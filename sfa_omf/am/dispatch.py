"""What every AM API endpoint (v2, v3) does around its methods: find the method, unpack arguments, wrap the answer
in the envelope, turn a bug into SERVERERROR (logged with its traceback), and log one line per call: method, caller
URN, slice, geni_code, milliseconds, and for a refused call its reason and message. A call that failed for a fault
of the aggregate's own (its calendar database: a full disk, a server down) is logged at WARNING, at most once a minute
per reason: the operator has to act, and a busy aggregate must not flood its log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.am.contract import CREDENTIALS
from sfa_omf.am.envelope import failure, success
from sfa_omf.arguments import Signature
from sfa_omf.errors import GeniCode, GeniError, Reason, logged_refusal
from sfa_omf.log_limits import OncePerPeriod
from sfa_omf.server.xmlrpc import CallContext, shown_method
from sfa_omf.xrn import is_urn, shown_urn

log = logging.getLogger("sfa_omf.am")

#: A method's implementation: called with the arguments its signature has checked and converted.
Method = Callable[[Aggregate, CallContext, tuple[Any, ...]], Any]

#: Reasons that are the aggregate's own fault, not the caller's (errors.py): the operator must act on them.
SERVER_FAULTS = frozenset({Reason.DATABASE})
#: At most one WARNING per reason of SERVER_FAULTS in this many seconds; the calls between are logged at INFO, and
#: counted in the next WARNING.
SERVER_FAULT_WARNING_S = 60.0


class FaultWarnings:
    """Which failed calls of a server fault are logged at WARNING: the first of each reason, then one every
    ``every_s`` seconds; ``clock`` is a seam for tests."""

    def __init__(self, every_s: float = SERVER_FAULT_WARNING_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = {reason: OncePerPeriod(every_s, clock) for reason in SERVER_FAULTS}

    def level(self, reason: Reason) -> tuple[int, int]:
        """The level of this call's line and, for a WARNING, how many calls of the reason were logged at INFO since
        the previous one (0 for an INFO line)."""
        quiet = self._limits[reason].due()
        return (logging.INFO, 0) if quiet is None else (logging.WARNING, quiet)


#: The process's one count (v2 and v3 endpoints together).
FAULT_WARNINGS = FaultWarnings()


def _about(signature: Signature, args: tuple[Any, ...]) -> str:
    """What the call is about, for the log line: the slice URN or the first URN named (checked values only, so
    nothing hostile is ever turned into text here)."""
    if not args:
        return "-"
    if signature.params[0] is CREDENTIALS:
        # ListResources, ListSlices: the first argument is the caller's credentials, never shown in the log; a
        # slice is named only by the geni_slice_urn option (checked as a slice URN by the options' checker).
        options = args[-1] if isinstance(args[-1], dict) else {}
        slice_urn = options.get("geni_slice_urn")
        return slice_urn if isinstance(slice_urn, str) else "-"
    first = args[0]
    if isinstance(first, list) and first and isinstance(first[0], str):
        return first[0]  # (shown_urn cuts a long one, saying so)
    if isinstance(first, str) and is_urn(first):
        return first
    return "-"


class ApiEndpoint:
    """The handler the XML-RPC transport calls for one AM API version: each method's arguments are checked against
    its signature (contract.py) before the method runs; a wrong argument is BADARGS naming it, and nothing runs."""

    def __init__(
        self, aggregate: Aggregate, version: int, methods: Mapping[str, Method], signatures: Mapping[str, Signature]
    ) -> None:
        assert set(methods) == set(signatures), "every method declares its signature"
        self.aggregate = aggregate
        self.version = version
        self.methods = methods
        self.signatures = signatures

    def __call__(self, context: CallContext, method: str, params: tuple[Any, ...]) -> Any:
        started = time.perf_counter()
        caller = shown_urn(context.caller_chain[0].urn if context.caller_chain else None)
        shown = shown_method(method)  # the transport refuses names that are no names; bounded all the same
        code = GeniCode.SUCCESS
        about = "-"
        refusal: GeniError | None = None
        try:
            implementation = self.methods.get(method)
            if implementation is None:
                known = ", ".join(sorted(self.methods))
                raise GeniError(Reason.UNSUPPORTED, f"{shown} is not an AM API v{self.version} method here ({known})")
            args = self.signatures[method].check(params, method)
            about = shown_urn(_about(self.signatures[method], args))
            value = implementation(self.aggregate, context, args)
            return success(value, geni_api=self.version) if method == "GetVersion" else success(value)
        except GeniError as error:
            code, refusal = error.code, error
            return failure(error)
        except Exception:
            code = GeniCode.SERVERERROR
            log.exception("%s failed", shown)
            return failure(
                GeniError(Reason.SERVER_ERROR, f"internal error in {shown}; the operator's log has the details")
            )
        finally:
            self._log_call(shown, caller, about, code, started, refusal)

    def refuse(self, context: CallContext, method: str, error: GeniError) -> dict[str, Any]:
        """The transport's refusal of a call (a method name that is no name, no client certificate) as this API's
        envelope, logged as any call is; ``method`` is shown_method()'s already."""
        caller = shown_urn(context.caller_chain[0].urn if context.caller_chain else None)
        self._log_call(method, caller, "-", error.code, time.perf_counter(), error)
        return failure(error)

    @staticmethod
    def _log_call(
        shown: str, caller: str | None, about: str, code: GeniCode, started: float, refusal: GeniError | None = None
    ) -> None:
        """The one log line of a call; ``shown`` is the method as shown_method() shows it; a refused call's line
        says why (logged_refusal). A server fault's (SERVER_FAULTS) is a WARNING, within FAULT_WARNINGS' limit."""
        level, quiet = logging.INFO, 0
        if refusal is not None and refusal.reason in SERVER_FAULTS:
            level, quiet = FAULT_WARNINGS.level(refusal.reason)
        log.log(
            level,
            "%s caller=%s slice=%s geni_code=%d ms=%.1f%s%s",
            shown,
            caller,
            about,
            int(code),
            (time.perf_counter() - started) * 1000,
            logged_refusal(refusal),
            f" ({quiet} more such failures since the last warning, logged at INFO)" if quiet else "",
        )
