"""The web calendar over HTTPS: a Twisted resource at /calendar that hands each GET to ``WebCalendar`` in the
thread pool (the calendar reads the database) and writes its answer. Nothing Twisted goes further."""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import http, resource, server

from sfa_omf.server.tls import peer_chain
from sfa_omf.web.app import WebCalendar, WebRequest, WebResponse

log = logging.getLogger("sfa_omf.server")

#: Headers every answer carries: no framing by other sites, no sniffing, scripts and styles from this server only.
SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
}


class WebCalendarResource(resource.Resource):
    """GET (and HEAD) only; the path below /calendar, the query and the TLS client chain go to the calendar."""

    isLeaf = True

    def __init__(self, calendar: WebCalendar, pool: ThreadPool, reactor: Any) -> None:
        super().__init__()
        self.calendar = calendar
        self.pool = pool
        self.reactor = reactor

    def render_GET(self, request: server.Request) -> Any:
        path = "/" + "/".join(part.decode("utf-8", "replace") for part in request.postpath or [])
        query = {
            key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
            for key, values in (request.args or {}).items()
            if values
        }
        handle = request.transport.getHandle() if request.transport is not None else None
        web_request = WebRequest(path=path, query=query, caller_chain=peer_chain(handle) if handle else ())
        deferred = deferToThreadPool(self.reactor, self.pool, self.calendar.handle, web_request)
        deferred.addCallback(lambda answer: _write(request, answer))
        deferred.addErrback(lambda failure: _failed(request, failure))
        return server.NOT_DONE_YET

    def render_POST(self, request: server.Request) -> bytes:
        request.setResponseCode(http.NOT_ALLOWED)
        request.setHeader(b"allow", b"GET")
        return b"The calendar is read with GET.\n"


def _write(request: server.Request, answer: WebResponse) -> None:
    if request.finished or request.channel is None:
        return
    request.setResponseCode(answer.status)
    request.setHeader(b"content-type", answer.content_type.encode("ascii"))
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)
    request.write(answer.body)
    request.finish()


def _failed(request: server.Request, failure: Failure) -> None:
    log.error("web calendar request %s failed: %s", request.uri, failure.getTraceback())
    _write(
        request,
        WebResponse(500, "text/plain; charset=utf-8", b"internal error; the operator's log has the details\n"),
    )
