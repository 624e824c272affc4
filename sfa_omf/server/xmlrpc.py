"""XML-RPC over HTTPS with Twisted: limits, the caller's chain, and a bounded thread pool for the synchronous core.

The transport knows nothing of GENI: it unmarshals the call, hands (caller chain, method, params) to a handler in a
worker thread, and marshals what comes back. A handler's answer is plain Python data; a handler that raises is a bug,
answered with an XML-RPC fault and logged with its traceback, and the server keeps serving.

Limits: a request body larger than ``max_body_bytes`` is refused before it is read; XML with a DOCTYPE or entity
declaration is refused before it is parsed; at most ``pool`` threads run calls at once and the rest wait their turn,
while the reactor keeps accepting and answering (a slow client only holds its own connection).
"""

from __future__ import annotations

import logging
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.parsers.expat import ExpatError

from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import http, resource, server

from sfa_omf.server.tls import peer_chain
from sfa_omf.trust.gid import GidChain
from sfa_omf.xmlsafe import UnsafeXml, XmlLimits, refuse_declarations

log = logging.getLogger("sfa_omf.server")

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
FAULT_TOOBIG = 6
FAULT_BADARGS = 1
FAULT_SERVERERROR = 5


@dataclass(frozen=True)
class CallContext:
    """Who is calling, as plain data: the TLS client chain (leaf first), the peer address and the URL path."""

    caller_chain: GidChain
    peer: str
    path: str


Handler = Callable[[CallContext, str, tuple[Any, ...]], Any]


class LimitedRequest(server.Request):
    """Refuses a body over the site's limit as soon as its length is known (or as chunks exceed it)."""

    max_body_bytes = DEFAULT_MAX_BODY_BYTES
    _received = 0
    _too_big = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body_bytes:
            self._too_big = True
            length = 0  # do not buffer what we will refuse
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._too_big or self._received > self.max_body_bytes:
            self._too_big = True
            return
        super().handleContentChunk(data)


class XmlRpcResource(resource.Resource):
    """One XML-RPC endpoint (path). POST only."""

    isLeaf = True

    def __init__(self, handler: Handler, pool: ThreadPool, reactor: Any, max_body_bytes: int) -> None:
        super().__init__()
        self.handler = handler
        self.pool = pool
        self.reactor = reactor
        self.limits = XmlLimits(max_bytes=max_body_bytes)

    def render_GET(self, request: server.Request) -> bytes:
        request.setResponseCode(http.NOT_ALLOWED)
        request.setHeader(b"allow", b"POST")
        return b"This is an XML-RPC endpoint: POST a methodCall.\n"

    def render_POST(self, request: server.Request) -> Any:
        if getattr(request, "_too_big", False):
            return _fault(request, FAULT_TOOBIG, f"request body over the limit of {self.limits.max_bytes} bytes")
        body = request.content.read() if request.content is not None else b""
        try:
            refuse_declarations(body, self.limits, what="XML-RPC request")
            params, method = xmlrpc.client.loads(body, use_builtin_types=False)
        except UnsafeXml as exc:
            return _fault(request, FAULT_BADARGS, str(exc))
        except (ExpatError, ValueError, TypeError, xmlrpc.client.ResponseError) as exc:
            return _fault(request, FAULT_BADARGS, f"not an XML-RPC methodCall: {exc}")
        if not method:
            return _fault(request, FAULT_BADARGS, "the XML-RPC call names no method")
        context = CallContext(
            caller_chain=peer_chain(request.transport.getHandle()),  # type: ignore[union-attr]
            peer=str(request.getClientAddress()),
            path=request.path.decode("latin-1"),
        )
        deferred = deferToThreadPool(self.reactor, self.pool, self.handler, context, method, params)
        # addCallback then addErrback: a result that cannot be marshalled is an internal error too, never a hang.
        deferred.addCallback(
            lambda result: _respond(request, xmlrpc.client.dumps((result,), methodresponse=True, allow_none=True))
        )
        deferred.addErrback(lambda failure: _internal_error(request, method, failure))
        return server.NOT_DONE_YET


def _respond(request: server.Request, body: str) -> None:
    if request.finished or request.channel is None:
        return  # the client went away
    request.setHeader(b"content-type", b"text/xml; charset=utf-8")
    request.write(body.encode("utf-8"))
    request.finish()


def _fault(request: server.Request, code: int, message: str) -> bytes:
    request.setHeader(b"content-type", b"text/xml; charset=utf-8")
    return xmlrpc.client.dumps(xmlrpc.client.Fault(code, message), methodresponse=True).encode("utf-8")


def _internal_error(request: server.Request, method: str, failure: Failure) -> None:
    if request.finished or request.channel is None:
        return
    if isinstance(failure.value, xmlrpc.client.Fault):  # a handler's deliberate refusal (the SFA registry's way)
        _respond(request, xmlrpc.client.dumps(failure.value, methodresponse=True))
        return
    log.error("%s failed: %s", method, failure.getTraceback())
    fault = xmlrpc.client.Fault(FAULT_SERVERERROR, f"internal error in {method}; the operator's log has the details")
    _respond(request, xmlrpc.client.dumps(fault, methodresponse=True))


def make_site(
    routes: dict[bytes, XmlRpcResource], default: XmlRpcResource, max_body_bytes: int, timeout_s: float
) -> server.Site:
    """A Site serving ``routes`` by path; any other path (``/``, ``/RPC2``) goes to ``default``."""

    class Root(resource.Resource):
        def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
            return routes.get(path, default)

        def render(self, request: server.Request) -> Any:
            return default.render(request)

    class Request(LimitedRequest):
        pass

    Request.max_body_bytes = max_body_bytes
    site = server.Site(Root(), timeout=timeout_s)
    site.requestFactory = Request
    site.displayTracebacks = False
    return site
